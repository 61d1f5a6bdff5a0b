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
    /// Bound (bits) of `β·z` (blind) or `z` (permute) entries.
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
        _ => Err(ProtocolError::Topology(format!(
            "stage {s} is not an activation"
        ))),
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
            return Err(ProtocolError::Topology(format!(
                "stage {s} ({:?}) cannot run in blind mode",
                spec.kind
            )));
        }
        let kappa = pre_activation_bits(topology, s)?;
        let groups: Vec<Vec<u32>> = match (&spec.pool, spec.kind.is_pool()) {
            (Some(pool), true) => pool.windows(),
            (None, true) => {
                return Err(ProtocolError::Topology(format!(
                    "pooling stage {s} has no windows"
                )));
            }
            (_, false) => (0..spec.input_len as u32).map(|j| vec![j]).collect(),
        };
        let group_size = groups.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let alpha_q_bits = match spec.kind {
            ActivationKind::LeakyRelu { alpha_q } => {
                (64 - alpha_q.unsigned_abs().leading_zeros()).max(1)
            }
            _ => 0,
        };
        let value_bits = match mode {
            RoundMode::Blind => {
                // |β·z + γ| < β·2^κ ≤ 2^(beta_bits + e_max + κ).
                kappa + params.beta_bits + params.beta_log_range.saturating_sub(1)
            }
            // Padding entries hold exactly -2^κ.
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
            value_bits,
            masked_bits: kappa + params.sigma + 1,
            alpha_bits,
            alpha_q_bits,
        })
    }

    /// Answers B sends per group: `[[X]]` and one `[[-s]]` per entry in
    /// blind mode, one fresh value in permute mode.
    pub fn replies_per_group(&self) -> usize {
        match self.mode {
            RoundMode::Blind => 1 + self.group_size,
            RoundMode::Permute => 1,
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
