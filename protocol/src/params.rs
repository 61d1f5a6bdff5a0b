//! Protocol parameters shared by the three parties.

use crate::error::{ProtocolError, Result};
use crate::messages::RoundMode;
use crate::round::RoundShape;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use veil_model::{ActivationMode, Stage, Topology};

/// The public parameters of a deployment. Device, A and B must agree on
/// them (sessions carry their fingerprint); they are not secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    /// σ: statistical masking parameter; a value below `2^k` masked by a
    /// uniform value below `2^(k+σ)` is within `2^-σ` of uniform.
    pub sigma: u32,
    /// Bits of β' in the blind sign test's multiplier β = β'·2^e: β' is
    /// uniform in `[2^(beta_bits-1), 2^beta_bits)`.
    pub beta_bits: u32,
    /// e is uniform in `[0, beta_log_range)`, so that log2 β spreads evenly
    /// over `[beta_bits-1, beta_bits-1+beta_log_range)`: the blur B faces
    /// when it reads log2|d| from log2|β·d + γ|. Each bit costs a bit of
    /// every packed slot. 96, not 64: comparisons inside mnist-cnn's pooling
    /// windows include exact ties (flat background), which made log2|z|
    /// readable at |Spearman| 0.36 with 64 bits of blur and 0.28 with 96.
    pub beta_log_range: u32,
    /// Dummies per activation round: at least `min_dummies`, and at least
    /// `dummy_permille`/1000 of the real entries.
    pub min_dummies: u32,
    /// Dummies per thousand real entries, when more than `min_dummies`.
    pub dummy_permille: u32,
    /// Pack many values per plaintext on A→B messages.
    pub pack: bool,
    /// Evaluate every activation in permute mode, even where blind mode is
    /// possible (for comparison; blind leaks less).
    pub force_permute: bool,
    /// Frames per session before the device must rekey.
    pub rekey_after: u64,
    /// Frame counters whose first-layer masks A keeps ready ahead of time.
    pub mask_lookahead: u64,
    /// Times B lets A start one frame over; a retried round repeats the
    /// first try exactly, so only a misbehaving A needs more.
    pub max_restarts: u32,
    /// Hide ReLU signs from B: every ReLU group gets a zero slot at a
    /// keyed position, and B compares slots pairwise without knowing which
    /// one is the zero, so it learns neither `z > 0` nor whether a pooling
    /// window's output is 0. Costs one masked entry and one encrypted
    /// selection bit per group (see docs/protocol.md for the figures).
    pub hide_signs: bool,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            sigma: 40,
            beta_bits: 32,
            beta_log_range: 96,
            min_dummies: 4,
            dummy_permille: 125,
            pack: true,
            force_permute: false,
            rekey_after: 1 << 20,
            mask_lookahead: 4,
            max_restarts: 3,
            hide_signs: true,
        }
    }
}

/// The widest value the protocol ever handles, in bits: values travel as
/// 256-bit integers and packed slots are read back as such.
pub const MAX_VALUE_BITS: u32 = 240;

impl Params {
    /// SHA-256 of the parameters: a session names it, so that a server
    /// refuses a device that expects other ones.
    pub fn fingerprint(&self) -> [u8; 32] {
        let bytes =
            bincode::serde::encode_to_vec(self, bincode::config::standard()).unwrap_or_default();
        let mut h = Sha256::new();
        h.update(b"veil/params/v1");
        h.update(bytes);
        h.finalize().into()
    }

    /// Checks that the parameters are usable with this topology: every
    /// masked value stays well inside the 256-bit working width.
    pub fn check(&self, topology: &Topology) -> Result<()> {
        if !(16..=128).contains(&self.sigma) {
            return Err(ProtocolError::Sigma(self.sigma));
        }
        // β' travels as a signed 64-bit weight of a multi-exponentiation.
        if !(8..=62).contains(&self.beta_bits) || !(1..=128).contains(&self.beta_log_range) {
            return Err(ProtocolError::Beta {
                beta_bits: self.beta_bits,
                beta_log_range: self.beta_log_range,
            });
        }
        let input = topology.input_bound_bits + self.sigma + 2;
        if input > 126 {
            return Err(ProtocolError::InputTooWide {
                input_bound_bits: topology.input_bound_bits,
                sigma: self.sigma,
            });
        }
        // The widest value of each round as its shape lays it out (β·d + γ
        // of a blind comparison, z + ρ, α·z + ρ2), plus the σ bits of the
        // mask B's reply adds. This used to be one sum of every term
        // (κ + β + 2w + σ), which refused a first layer with 23 weight bits
        // (253 of 240 bits) whose widest value has 211.
        for (s, stage) in topology.stages.iter().enumerate() {
            if let Stage::Activation(spec) = stage {
                let modes: &[RoundMode] = if spec.kind.supports_blind() {
                    &[RoundMode::Permute, RoundMode::Blind]
                } else {
                    &[RoundMode::Permute]
                };
                for mode in modes {
                    let shape = RoundShape::new(topology, self, s, *mode)?;
                    let widest = shape
                        .value_bits
                        .max(shape.masked_bits)
                        .max(shape.alpha_bits.unwrap_or(0))
                        + self.sigma;
                    if widest > MAX_VALUE_BITS {
                        return Err(ProtocolError::NoRoomForMasks {
                            stage: s,
                            kappa: shape.kappa,
                            needed: widest,
                            available: MAX_VALUE_BITS,
                        });
                    }
                }
            }
        }
        let output_bits = output_bits(topology);
        if output_bits + self.sigma + 3 > MAX_VALUE_BITS {
            return Err(ProtocolError::OutputTooWide { output_bits });
        }
        Ok(())
    }

    /// The parameters as B enforces them (exposed for the shells' logs).
    pub fn describe(&self) -> String {
        format!(
            "σ={} β={} bits·2^[0,{}), dummies ≥{} (+{}‰), packing {}, {}, signs {}",
            self.sigma,
            self.beta_bits,
            self.beta_log_range,
            self.min_dummies,
            self.dummy_permille,
            if self.pack { "on" } else { "off" },
            if self.force_permute {
                "permute everywhere"
            } else {
                "blind where possible"
            },
            if self.hide_signs {
                "hidden"
            } else {
                "shown to B"
            }
        )
    }

    /// The activation modes for this topology.
    pub fn modes(&self, topology: &Topology) -> Vec<ActivationMode> {
        if self.force_permute {
            topology.permute_modes()
        } else {
            topology.default_modes()
        }
    }

    /// Dummies to add to a round of `real` groups.
    pub fn dummies(&self, real: usize) -> usize {
        let fraction = (real * self.dummy_permille as usize).div_ceil(1000);
        fraction.max(self.min_dummies as usize)
    }

    /// The most dummies B accepts in a round of `real` groups.
    pub fn max_dummies(&self, real: usize) -> usize {
        2 * self.dummies(real) + 16
    }
}

/// κ of activation stage `s`: the bound of the linear stage that feeds it.
pub fn pre_activation_bits(topology: &Topology, s: usize) -> Result<u32> {
    match s.checked_sub(1).and_then(|p| topology.stages.get(p)) {
        Some(Stage::Linear(spec)) => Ok(spec.output_bound_bits),
        _ => Err(ProtocolError::ActivationWithoutLinear { stage: s }),
    }
}

/// The bound (bits) of the model's outputs.
pub fn output_bits(topology: &Topology) -> u32 {
    match topology.stages.last() {
        Some(Stage::Linear(spec)) => spec.output_bound_bits,
        Some(Stage::Activation(spec)) => spec.output_bound_bits,
        None => 0,
    }
}
