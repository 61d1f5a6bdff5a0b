//! Paillier encryption (with g = N + 1) on crypto-bigint, as veil's servers
//! need it: key generation, validation and files; decryption and key-owner
//! encryption through the CRT; randomness computed off the critical path
//! (pools, fixed-base tables); homomorphic addition, plaintext addition and
//! signed scalar multiplication; packing many small values into one
//! plaintext; and dot and matrix-vector products as multi-exponentiations.
//! Plaintexts are residues modulo N read as signed integers in (-N/2, N/2).
//! Secret-key arithmetic is constant time and the secret key is zeroized on
//! drop; everything decoded from outside (keys, ciphertexts) is validated.
//!
//! # Batches
//!
//! [`SecretKey::decrypt_batch`], [`SecretKey::crt_noise_batch`],
//! [`PublicKey::fresh_noise_batch`] and [`FixedBaseNoise::noise_batch`] give
//! exactly what the single operations give, with the exponentiations run
//! eight at a time on AVX-512 IFMA (one operation per 64-bit lane, Intel's
//! "multi-buffer" technique); noise pools fill that way. The kernels are
//! written by hand because no maintained Rust crate offers multi-buffer
//! IFMA arithmetic. Without IFMA, or with `VEIL_PORTABLE_ARITH=1`, the
//! batched calls run the single operations one after another.
//!
//! # Randomness
//!
//! The crate offers three sources of encryption noise with different costs
//! and assumptions; see [`randomness`] for which assumption each rests on.

#![warn(missing_docs)]

mod ciphertext;
pub mod counter;
mod crt;
mod error;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
#[cfg(feature = "fixtures")]
#[doc(hidden)]
pub mod fuzzing;
mod keys;
mod mont;
mod multiexp;
mod pack;
mod plaintext;
pub mod randomness;
mod words;

pub use ciphertext::{Ciphertext, Noise};
pub use crypto_bigint::BoxedUint;
pub use error::{PaillierError, Result};
pub use ethnum::I256;
pub use keys::{
    KeySize, PublicKey, SecretKey, generate_keypair, warn_if_exposed, write_secret_file,
};
pub use multiexp::PreparedBases;
pub use pack::{MAX_VALUE_BITS, PackJob, PackLayout};
pub use plaintext::{Plaintext, Signed};
pub use randomness::{FixedBaseNoise, NoisePool, NoiseSource, PoolFiller, PoolStats};
