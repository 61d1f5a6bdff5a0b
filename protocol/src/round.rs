//! The shape of an activation round, computed the same way by A (who builds
//! it) and B (who checks it against the published topology).

use crate::error::{ProtocolError, Result};
use crate::messages::RoundMode;
use crate::params::{Params, pre_activation_bits};
use veil_model::{ActivationKind, ActivationSpec, Stage, Topology};

#[derive(Clone, Debug)]
pub(crate) struct RoundShape {
    pub kind: ActivationKind,
    pub mode: RoundMode,
    /// κ: `|z| < 2^κ` for every real entry.
    pub kappa: u32,
    /// Input indices of each real group (one entry per element, or a
    /// pooling window).
    pub groups: Vec<Vec<u32>>,
    /// Entries per group; short windows are padded.
    pub group_size: usize,
    /// Blind mode: the entries of a group that B may select (the window,
    /// plus the zero slot when [`Params::hide_signs`] applies), each with
    /// a masked value and an encrypted selection bit in the reply.
    pub slots: usize,
    /// Blind mode: one ReLU group slot holds 0 (`hide_signs`).
    pub zero_slot: bool,
    /// What each blinded value compares, in the order A sends them: slot
    /// `i` against slot `j`, or against an implicit 0 (`None`, where the
    /// sign is not hidden). B sees `β·(z_i - z_j) + γ` with fresh β, γ for
    /// every comparison: their outcomes and a blurred magnitude, never a
    /// ratio of two entries.
    pub comparisons: Vec<(usize, Option<usize>)>,
    /// Bound (bits) of `β·(z_i - z_j) + γ` (blind) or `z` (permute) entries.
    pub value_bits: u32,
    /// Bound of `z + ρ`.
    pub masked_bits: u32,
    /// Bound of `α_q·z + ρ'` (blind leaky ReLU only).
    pub alpha_bits: Option<u32>,
    /// Bits of `|α_q|`.
    pub alpha_q_bits: u32,
}

pub(crate) fn activation(topology: &Topology, s: usize) -> Result<&ActivationSpec> {
    match topology.stages.get(s) {
        Some(Stage::Activation(spec)) => Ok(spec),
        _ => Err(ProtocolError::NotActivation { stage: s }),
    }
}

impl RoundShape {
    pub fn new(
        topology: &Topology,
        params: &Params,
        s: usize,
        mode: RoundMode,
    ) -> Result<RoundShape> {
        let spec = activation(topology, s)?;
        if mode == RoundMode::Blind && !spec.kind.supports_blind() {
            return Err(ProtocolError::BlindUnsupported {
                stage: s,
                kind: spec.kind,
            });
        }
        let kappa = pre_activation_bits(topology, s)?;
        let groups: Vec<Vec<u32>> = match (&spec.pool, spec.kind.is_pool()) {
            (Some(pool), true) => pool.windows(),
            (None, true) => {
                return Err(ProtocolError::EmptyPool { stage: s });
            }
            (_, false) => {
                let inputs =
                    u32::try_from(spec.input_len).map_err(|_| ProtocolError::TooLarge {
                        what: "inputs of an activation stage",
                        limit: u64::from(u32::MAX),
                        got: spec.input_len as u64,
                    })?;
                (0..inputs).map(|j| vec![j]).collect()
            }
        };
        let group_size = groups.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let alpha_q_bits = match spec.kind {
            ActivationKind::LeakyRelu { alpha_q } => {
                (64 - alpha_q.unsigned_abs().leading_zeros()).max(1)
            }
            _ => 0,
        };
        let relu_like = matches!(
            spec.kind,
            ActivationKind::Relu | ActivationKind::ReluMaxPool
        );
        let zero_slot = mode == RoundMode::Blind && params.hide_signs && relu_like;
        let implicit_zero = mode == RoundMode::Blind
            && !zero_slot
            && (relu_like || matches!(spec.kind, ActivationKind::LeakyRelu { .. }));
        let slots = group_size + usize::from(zero_slot);
        let comparisons: Vec<(usize, Option<usize>)> = match mode {
            RoundMode::Blind => {
                let pairs = (0..slots).flat_map(|i| (i + 1..slots).map(move |j| (i, Some(j))));
                let against_zero = (0..slots).filter(|_| implicit_zero).map(|i| (i, None));
                pairs.chain(against_zero).collect()
            }
            RoundMode::Permute => Vec::new(),
        };
        let value_bits = match mode {
            RoundMode::Blind => {
                // |z_i - z_j| < 2^(κ+1), |z_i| < 2^κ, and
                // |β·d + γ| < β·(|d| + 1) ≤ 2^(beta_bits + e_max)·|d|.
                let difference = kappa + u32::from(group_size > 1);
                difference + params.beta_bits + params.beta_log_range.saturating_sub(1)
            }
            RoundMode::Permute => kappa + 1,
        };
        let alpha_bits = match (mode, spec.kind) {
            (RoundMode::Blind, ActivationKind::LeakyRelu { .. }) => {
                Some(kappa + alpha_q_bits + params.sigma + 1)
            }
            _ => None,
        };
        Ok(RoundShape {
            kind: spec.kind,
            mode,
            kappa,
            groups,
            group_size,
            slots,
            zero_slot,
            comparisons,
            value_bits,
            masked_bits: kappa + params.sigma + 1,
            alpha_bits,
            alpha_q_bits,
        })
    }

    /// Answers B sends per group: `[[X]]` and one `[[-s]]` per slot in
    /// blind mode, one fresh value in permute mode.
    pub fn replies_per_group(&self) -> usize {
        match self.mode {
            RoundMode::Blind => 1 + self.slots,
            RoundMode::Permute => 1,
        }
    }

    /// Values per group in the round's `values`: one per comparison
    /// (blind), one per window entry (permute).
    pub fn values_per_group(&self) -> usize {
        match self.mode {
            RoundMode::Blind => self.comparisons.len(),
            RoundMode::Permute => self.group_size,
        }
    }

    /// Entries per group in `masked` (and `masked_alpha`): one per slot.
    pub fn masked_per_group(&self) -> usize {
        match self.mode {
            RoundMode::Blind => self.slots,
            RoundMode::Permute => 0,
        }
    }
}

/// Ciphertexts needed for `entries` values of `bits` bits.
pub(crate) fn ciphertext_count(entries: usize, slots: usize, packed: bool) -> usize {
    if packed {
        entries.div_ceil(slots.max(1))
    } else {
        entries
    }
}

/// The mode of each stage as it travels on the wire.
pub(crate) fn round_mode(mode: veil_model::ActivationMode) -> RoundMode {
    match mode {
        veil_model::ActivationMode::Blind => RoundMode::Blind,
        veil_model::ActivationMode::Permute => RoundMode::Permute,
    }
}
