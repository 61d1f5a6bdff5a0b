//! B's masked replies (Delphi-style preprocessing of the activation
//! rounds): B answers each round in plaintext, every item `v` as `v + μ`
//! with `μ` uniform below `2^(bits(v) + σ)`, and supplies `[[-μ]]` offline
//! with the first-layer masks. A's online correction is then plaintext
//! arithmetic plus one multiplication per group, and B encrypts nothing
//! online.
//!
//! # Why integer masks, not residues mod N
//! Every reply item has a public bound, so a mask `σ` bits wider hides it
//! within `2^-σ`, as `z + ρ` is hidden in the rounds A sends. The masked
//! value then fits 32 bytes instead of a residue of `|N|` bits, and A's
//! correction stays integer arithmetic that the plaintext backend runs
//! unchanged.
//!
//! # Why μ is keyed
//! `μ` is a function of B's secret and (sid, t, stage, position, item): a
//! restarted round gets the identical reply, and the `[[-μ]]` of a
//! repeated mask request hide the same values.

use crate::error::{DecodeError, Result};
use crate::messages::RoundMode;
use crate::params::Params;
use crate::perturb::random_below_pow2;
use crate::prf::{Seed, SessionId};
use crate::round::{RoundShape, round_mode};
use ethnum::I256;
use rand::rngs::ChaCha20Rng;
use rand_core::SeedableRng;
use sha2::{Digest, Sha256};
use veil_model::{ActivationMode, Stage, Topology};
use veil_paillier::SecretKey;

/// Bytes of one masked reply item on the wire (a little-endian I256).
pub(crate) const ITEM_BYTES: usize = 32;

/// B's key for reply masks, derived from its Paillier secret key so that
/// every worker of B (and B after a restart) derives the same masks.
pub(crate) fn reply_key(secret: &SecretKey) -> Seed {
    let bytes = secret.to_bytes();
    let mut h = Sha256::new();
    h.update(b"veil/reply-mask/v1");
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(&bytes[..]);
    Seed::from_bytes(h.finalize().into())
}

/// One activation stage as both servers see it ahead of its round: its
/// shape, and how many groups (real plus dummies) an honest round holds.
#[derive(Clone, Debug)]
pub(crate) struct StagePlan {
    pub stage: usize,
    pub shape: RoundShape,
    pub groups: usize,
}

impl StagePlan {
    /// Reply items of the stage's round, in the order B sends them.
    pub fn items(&self) -> usize {
        self.groups * self.shape.replies_per_group()
    }
}

/// Every activation stage of the model, in order, with its round size: the
/// dummy count is a public function of the real count, so both servers
/// know how many `[[-μ]]` a counter needs.
pub(crate) fn stage_plans(topology: &Topology, params: &Params) -> Result<Vec<StagePlan>> {
    let modes = params.modes(topology);
    topology
        .stages
        .iter()
        .enumerate()
        .filter(|(_, stage)| matches!(stage, Stage::Activation(_)))
        .map(|(s, _)| {
            let mode = round_mode(modes.get(s).copied().unwrap_or(ActivationMode::Permute));
            let shape = RoundShape::new(topology, params, s, mode)?;
            let real = shape.groups.len();
            Ok(StagePlan {
                stage: s,
                groups: real + params.dummies(real),
                shape,
            })
        })
        .collect()
}

/// Bound (bits, signed) of item `item` of a group's reply: `X` first, then
/// one `-s` per slot (blind), or the activation's value (permute).
pub(crate) fn item_bits(shape: &RoundShape, item: usize, fraction_bits: u32) -> u32 {
    match shape.mode {
        // |X| is a truncation of a masked value B range-checked.
        RoundMode::Blind if item == 0 => shape.masked_bits.max(shape.alpha_bits.unwrap_or(0)),
        RoundMode::Blind => 1,
        RoundMode::Permute => (shape.kappa + 1).max(fraction_bits + 2),
    }
}

/// `μ` for every reply item of one round with `groups` groups, in the
/// order B sends them.
pub(crate) fn reply_masks(
    key: &Seed,
    sid: SessionId,
    t: u64,
    plan: &StagePlan,
    groups: usize,
    sigma: u32,
    fraction_bits: u32,
) -> Vec<I256> {
    let (shape, stage) = (&plan.shape, plan.stage);
    let mut label = b"reply".to_vec();
    label.extend_from_slice(&sid.0);
    label.extend_from_slice(&t.to_le_bytes());
    label.extend_from_slice(&(stage as u64).to_le_bytes());
    let mut rng = ChaCha20Rng::from_seed(*key.derive(&label).as_bytes());
    let per_group = shape.replies_per_group();
    let bits: Vec<u32> = (0..per_group)
        .map(|item| item_bits(shape, item, fraction_bits) + sigma)
        .collect();
    (0..groups)
        .flat_map(|_| bits.iter())
        .map(|b| random_below_pow2(&mut rng, *b))
        .collect()
}

pub(crate) fn encode_item(v: I256) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

pub(crate) fn decode_item(bytes: &[u8]) -> Result<I256> {
    let array: [u8; ITEM_BYTES] = bytes.try_into().map_err(|_| DecodeError::ReplyItem {
        got: bytes.len(),
        expected: ITEM_BYTES,
    })?;
    Ok(I256::from_le_bytes(array))
}

/// What B decrypted of one round, hashed: a repeated round must decrypt to
/// the same values, or two answers under one `μ` would give A their
/// difference.
pub(crate) fn round_digest(groups: u32, mode: RoundMode, lists: &[&[I256]]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"veil/round-digest/v1");
    h.update(groups.to_le_bytes());
    h.update([u8::from(mode == RoundMode::Blind)]);
    for list in lists {
        h.update((list.len() as u64).to_le_bytes());
        for v in *list {
            h.update(v.to_le_bytes());
        }
    }
    h.finalize().into()
}
