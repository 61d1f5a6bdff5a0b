//! veil-protocol owns the private inference protocol itself, as
//! deterministic state machines that do no I/O and read no clock: the
//! [`Device`] (session set-up, frame masking, result unmasking), server A
//! ([`ServerA`]: linear layers on ciphertexts, perturbation of every
//! activation round) and server B ([`ServerB`]: first-layer masks, exact
//! activations on perturbed values, the doubly masked result). Around them
//! it defines the messages and their bounded wire encoding, the masks and
//! the PRF that expands session seeds, the frame-counter reservation that
//! keeps counters unique across crashes, the crypto backend (real Paillier
//! or a plaintext stand-in driving the same code), the MQTT topic names,
//! and an in-process [`Engine`] that runs all three roles in one process.
//! Randomness is injected, so every protocol rule is testable in memory
//! with fixed seeds; networking, storage and time belong to the shells
//! (`veil-edge-agent`, `veil-server-a`, `veil-server-b`).

#![warn(
    missing_docs,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

pub mod audit;
mod backend;
pub mod codec;
mod counter;
mod device;
mod engine;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod layout;
mod messages;
pub mod node;
mod params;
mod perturb;
mod prf;
mod reply;
pub mod residue;
mod round;
pub mod route;
mod server_a;
mod server_b;
mod session;
pub mod topics;
pub mod wire;

pub use backend::{Noise, PaillierPublic, PaillierSecret, Plain, PlainCt, PublicOps, SecretOps};
pub use counter::CounterReservation;
pub use device::{Device, DeviceConfig, DeviceSession, Opened};
pub use engine::{CpuClock, Delivery, Engine, EngineStats, Inference, PartyTimes, peer_key};
pub use error::{DecodeError, ProtocolError, Result};
pub use ethnum::I256;
pub use layout::{FrameLayout, InputField, ResultLayout};
pub use messages::{
    Body, Envelope, Frame, FrameResult, MAX_DEVICE_NAME, MAX_LIST_ITEMS, Outgoing, Output,
    PROTOCOL_VERSION, Peer, RejectCode, Round, RoundMode, SessionInit, check_device_name,
};
pub use params::{MAX_VALUE_BITS, Params, output_bits, pre_activation_bits};
pub use prf::{
    MaskKeys, Seed, SessionId, expand, expand_derived, expand_fields, expand_into, label,
};
pub use server_a::{EntryRole, RoundTruth, ServerA, ServerAConfig, frame_rounding};
pub use server_b::{MAX_MASK_REQUEST, ServerB, ServerBConfig};
