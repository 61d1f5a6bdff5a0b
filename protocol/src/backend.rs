//! The crypto backend the protocol runs on: real Paillier, or a plaintext
//! stand-in (identity "encryption") that drives the very same protocol code
//! so that whole test sets can be checked in seconds.

use crate::error::{DecodeError, ProtocolError, Result};
use crate::residue::{Residue, Residues};
use ethnum::I256;
use rand::rngs::ChaCha20Rng;
use rand_core::SeedableRng;
use rayon::prelude::*;
use std::sync::{Arc, Mutex};
use veil_paillier::{
    BoxedUint, Ciphertext, FixedBaseNoise, NoisePool, PackJob, PaillierError, PreparedBases,
    PublicKey, SecretKey, Signed,
};

/// The values of one packed ciphertext with their shifts (empty: none)
/// and slot offsets (missing: 0).
#[derive(Debug)]
pub struct PackChunk<'a, C> {
    /// Every value satisfies `|v| < 2^value_bits` (sets the slot width).
    pub value_bits: u32,
    /// Lowest slot first.
    pub values: &'a [C],
    /// Slot i holds `values[i]·2^(shifts[i])`.
    pub shifts: &'a [u32],
    /// Added to each slot.
    pub offsets: &'a [I256],
}

impl<C> Clone for PackChunk<'_, C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C> Copy for PackChunk<'_, C> {}

/// [`PublicOps::seal_packed`] in two steps: each chunk packed, then
/// re-randomized with the backend's noise.
fn pack_then_rerandomize<B: PublicOps + ?Sized>(
    backend: &B,
    chunks: &[PackChunk<'_, B::Ct>],
) -> Result<Vec<B::Ct>> {
    chunks
        .par_iter()
        .map(|chunk| {
            let bits = chunk.value_bits;
            let packed = if chunk.shifts.is_empty() && chunk.offsets.is_empty() {
                backend.pack(bits, chunk.values)?
            } else {
                let zeros = vec![0; chunk.values.len()];
                let shifts = if chunk.shifts.is_empty() {
                    &zeros[..]
                } else {
                    chunk.shifts
                };
                backend.pack_shifted(bits, chunk.values, shifts, chunk.offsets)?
            };
            Ok(backend.rerandomize(&packed))
        })
        .collect()
}

/// What server A (and anyone holding only the public key) can do.
pub trait PublicOps: Send + Sync {
    /// One ciphertext (possibly holding packed values).
    type Ct: Clone + Send + Sync;
    /// Ciphertexts prepared for many dot products over them.
    type Prepared: Send + Sync;
    /// The arithmetic of plain halves: what completes a cipher half
    /// computed offline (see [`crate::residue`]).
    type Residues: PublicOps;

    /// A short name for logs and reports (`"paillier"`, `"plain"`).
    fn name(&self) -> &'static str;
    /// A fresh encryption (new randomness).
    fn encrypt(&self, v: I256) -> Self::Ct;
    /// The trivial encryption of a public constant (no randomness).
    fn constant(&self, v: I256) -> Self::Ct;
    /// `[[a + b]]`.
    fn add(&self, a: &Self::Ct, b: &Self::Ct) -> Self::Ct;
    /// `[[a + k]]` for a public `k`.
    fn add_plain(&self, a: &Self::Ct, k: I256) -> Self::Ct;
    /// `[[k·a]]` for a public `k`.
    fn scale(&self, a: &Self::Ct, k: I256) -> Self::Ct;
    /// The same plaintext under fresh randomness.
    fn rerandomize(&self, a: &Self::Ct) -> Self::Ct;
    /// Prepares `xs` for [`PublicOps::dot`] (inverses for negative weights,
    /// tables for the multi-exponentiation), once for many dot products.
    fn prepare(&self, xs: &[Self::Ct]) -> Result<Self::Prepared>;
    /// `[[Σ w·x_i]]` over prepared ciphertexts.
    fn dot(&self, prepared: &Self::Prepared, terms: &[(u32, i64)]) -> Result<Self::Ct>;
    /// How many values with `|v| < 2^value_bits` fit in one ciphertext.
    fn slots(&self, value_bits: u32) -> Result<usize>;
    /// Packs up to `slots(value_bits)` values into one ciphertext.
    fn pack(&self, value_bits: u32, values: &[Self::Ct]) -> Result<Self::Ct>;
    /// The ciphertext's wire bytes.
    fn encode(&self, c: &Self::Ct) -> Vec<u8>;
    /// Decodes and validates a ciphertext from the wire.
    fn decode(&self, bytes: &[u8]) -> Result<Self::Ct>;
    /// Decodes and validates a message's worth of ciphertexts.
    fn decode_many(&self, items: &[Vec<u8>]) -> Result<Vec<Self::Ct>> {
        items.iter().map(|b| self.decode(b)).collect()
    }
    /// `[[v·2^e]]`.
    fn shift(&self, c: &Self::Ct, e: u32) -> Self::Ct {
        self.scale(c, I256::ONE << e)
    }
    /// Packs like [`PublicOps::pack`], entry i holding
    /// `v_i·2^(shifts[i]) + offsets[i]` (offsets non-negative, below
    /// `2^value_bits`).
    fn pack_shifted(
        &self,
        value_bits: u32,
        values: &[Self::Ct],
        shifts: &[u32],
        offsets: &[I256],
    ) -> Result<Self::Ct>;
    /// Each chunk packed ([`PublicOps::pack_shifted`]; no shifts and no
    /// offsets: [`PublicOps::pack`]) and re-randomized: what A sends B. A
    /// backend may do both in one pass.
    fn seal_packed(&self, chunks: &[PackChunk<'_, Self::Ct>]) -> Result<Vec<Self::Ct>> {
        pack_then_rerandomize(self, chunks)
    }
    /// Work that can be done ahead of time (refilling noise pools), for idle
    /// moments.
    fn precompute(&self) {}
    /// The backend of plain halves. Its packing leaves out the packing
    /// bias, which the cipher half carries.
    fn residues(&self) -> &Self::Residues;
    /// The ciphertext of `cipher`'s plaintext plus `plain`: one
    /// multiplication, no fresh noise (the cipher half brings it).
    fn join(
        &self,
        cipher: &Self::Ct,
        plain: &<Self::Residues as PublicOps>::Ct,
    ) -> Result<Self::Ct>;
}

/// What server B can do on top: decrypt.
pub trait SecretOps: PublicOps {
    /// The plaintext of a ciphertext that holds one value (centred).
    fn decrypt(&self, c: &Self::Ct) -> Result<I256>;
    /// Decrypts a packed ciphertext holding `count` values.
    fn unpack(&self, c: &Self::Ct, value_bits: u32, count: usize) -> Result<Vec<I256>>;

    /// [`SecretOps::decrypt`] of every ciphertext, in parallel.
    fn decrypt_many(&self, cs: &[Self::Ct]) -> Result<Vec<I256>> {
        use rayon::prelude::*;
        cs.par_iter().map(|c| self.decrypt(c)).collect()
    }

    /// [`SecretOps::unpack`] of every ciphertext, `counts[i]` values from
    /// the i-th, in parallel.
    fn unpack_many(
        &self,
        cs: &[Self::Ct],
        value_bits: u32,
        counts: &[usize],
    ) -> Result<Vec<Vec<I256>>> {
        use rayon::prelude::*;
        cs.par_iter()
            .zip(counts)
            .map(|(c, &count)| self.unpack(c, value_bits, count))
            .collect()
    }
}

/// Where a Paillier backend gets fresh encryption noise.
pub enum Noise {
    /// Precomputed textbook or CRT noise (DCR only).
    Pool(NoisePool),
    /// Fixed-base short exponents (DCR plus short-exponent indistinguishability).
    FixedBase(FixedBaseNoise),
    /// Textbook noise computed on the spot (slow; for tests of the choice).
    Textbook,
}

/// The Paillier backend for a party that holds only the public key.
pub struct PaillierPublic {
    key: PublicKey,
    residues: Residues,
    noise: Noise,
    /// Seeds the generator of each fresh noise value (fixed-base and
    /// textbook noise are drawn on the spot).
    seeds: Mutex<ChaCha20Rng>,
}

impl PaillierPublic {
    /// `seed` drives all noise drawn on the spot: from the OS in a server,
    /// fixed in tests and simulations (a pool has its own seed).
    pub fn new(key: PublicKey, noise: Noise, seed: [u8; 32]) -> PaillierPublic {
        PaillierPublic {
            residues: Residues::new(key.n(), key.bits())
                .expect("a Paillier modulus is odd, never zero"),
            key,
            noise,
            seeds: Mutex::new(ChaCha20Rng::from_seed(seed)),
        }
    }

    /// A generator of its own for one noise value, so that the lock is not
    /// held through the exponentiation.
    fn child_rng(&self) -> ChaCha20Rng {
        // A panic while drawing a seed leaves the generator usable.
        let mut seeds = self.seeds.lock().unwrap_or_else(|p| p.into_inner());
        ChaCha20Rng::from_rng(&mut *seeds)
    }

    /// The key encrypted under.
    pub fn key(&self) -> &PublicKey {
        &self.key
    }

    fn fresh(&self) -> veil_paillier::Noise {
        match &self.noise {
            Noise::Pool(pool) => pool.take(),
            Noise::FixedBase(table) => table.noise(&mut self.child_rng()),
            Noise::Textbook => self.key.fresh_noise(&mut self.child_rng()),
        }
    }
}

impl PublicOps for PaillierPublic {
    type Ct = Ciphertext;
    type Prepared = PreparedBases;
    type Residues = Residues;

    fn name(&self) -> &'static str {
        "paillier"
    }

    fn encrypt(&self, v: I256) -> Ciphertext {
        let plaintext = self.key.encode(v);
        // The plaintext was just made under this key, so this cannot fail.
        self.key
            .encrypt_with_noise(&plaintext, self.fresh())
            .unwrap_or_else(|_| self.key.zero_ciphertext())
    }

    fn constant(&self, v: I256) -> Ciphertext {
        let plaintext = self.key.encode(v);
        self.key
            .encrypt_trivial(&plaintext)
            .unwrap_or_else(|_| self.key.zero_ciphertext())
    }

    fn add(&self, a: &Ciphertext, b: &Ciphertext) -> Ciphertext {
        self.key.add(a, b)
    }

    fn add_plain(&self, a: &Ciphertext, k: I256) -> Ciphertext {
        self.key.add(a, &self.constant(k))
    }

    fn scale(&self, a: &Ciphertext, k: I256) -> Ciphertext {
        let s = Signed::from(k);
        self.key.mul_signed_magnitude(a, s.negative, &s.magnitude)
    }

    fn rerandomize(&self, a: &Ciphertext) -> Ciphertext {
        self.key.rerandomize(a, self.fresh())
    }

    fn prepare(&self, xs: &[Ciphertext]) -> Result<PreparedBases> {
        Ok(self.key.prepare_bases(xs)?)
    }

    fn dot(&self, prepared: &PreparedBases, terms: &[(u32, i64)]) -> Result<Ciphertext> {
        let terms: Vec<(usize, i64)> = terms.iter().map(|(i, w)| (*i as usize, *w)).collect();
        Ok(self.key.dot_prepared(prepared, &terms)?)
    }

    fn slots(&self, value_bits: u32) -> Result<usize> {
        Ok(self.key.pack_layout(value_bits)?.slots)
    }

    fn pack(&self, value_bits: u32, values: &[Ciphertext]) -> Result<Ciphertext> {
        let layout = self.key.pack_layout(value_bits)?;
        Ok(self.key.pack(&layout, values)?)
    }

    fn encode(&self, c: &Ciphertext) -> Vec<u8> {
        c.to_bytes()
    }

    fn decode(&self, bytes: &[u8]) -> Result<Ciphertext> {
        Ok(self.key.ciphertext_from_bytes(bytes)?)
    }

    fn decode_many(&self, items: &[Vec<u8>]) -> Result<Vec<Ciphertext>> {
        Ok(self.key.ciphertexts_from_bytes(items)?)
    }

    fn shift(&self, c: &Ciphertext, e: u32) -> Ciphertext {
        let magnitude = BoxedUint::one_with_precision(e + 1).shl(e);
        self.key.mul_signed_magnitude(c, false, &magnitude)
    }

    fn pack_shifted(
        &self,
        value_bits: u32,
        values: &[Ciphertext],
        shifts: &[u32],
        offsets: &[I256],
    ) -> Result<Ciphertext> {
        let layout = self.key.pack_layout(value_bits)?;
        Ok(self
            .key
            .pack_shifted_offset(&layout, values, shifts, offsets)?)
    }

    /// Textbook noise (pooled or not) is made with the packing, its
    /// squarings doing Horner's ([`PublicKey::pack_noised`]): a packed
    /// ciphertext then costs one exponentiation, not two. Fixed-base noise
    /// stays a multiplication after the packing.
    fn seal_packed(&self, chunks: &[PackChunk<'_, Ciphertext>]) -> Result<Vec<Ciphertext>> {
        if matches!(self.noise, Noise::FixedBase(_)) {
            return pack_then_rerandomize(self, chunks);
        }
        let jobs = chunks
            .iter()
            .map(|c| {
                Ok(PackJob {
                    layout: self.key.pack_layout(c.value_bits)?,
                    values: c.values,
                    shifts: c.shifts,
                    offsets: c.offsets,
                })
            })
            .collect::<Result<Vec<PackJob<'_>>>>()?;
        Ok(self.key.pack_noised(&jobs, &mut self.child_rng())?)
    }

    fn precompute(&self) {
        if let Noise::Pool(pool) = &self.noise {
            pool.fill(usize::MAX);
        }
    }

    fn residues(&self) -> &Residues {
        &self.residues
    }

    fn join(&self, cipher: &Ciphertext, plain: &Residue) -> Result<Ciphertext> {
        let plain = self
            .key
            .plaintext_from_residue(&self.residues.reduce(plain))?;
        Ok(self.key.add_plain(cipher, &plain)?)
    }
}

/// The Paillier backend for the key owner (server B).
pub struct PaillierSecret {
    public: PaillierPublic,
    secret: Arc<SecretKey>,
}

impl PaillierSecret {
    /// B's backend with `secret`: noise as `noise` says, drawn from a
    /// generator seeded with `seed` (injected, so runs can be repeated).
    pub fn new(secret: Arc<SecretKey>, noise: Noise, seed: [u8; 32]) -> PaillierSecret {
        PaillierSecret {
            public: PaillierPublic::new(secret.public_key().clone(), noise, seed),
            secret,
        }
    }

    /// The public half of the key.
    pub fn key(&self) -> &PublicKey {
        self.public.key()
    }
}

impl PublicOps for PaillierSecret {
    type Ct = Ciphertext;
    type Prepared = PreparedBases;
    type Residues = Residues;

    fn name(&self) -> &'static str {
        "paillier"
    }
    fn encrypt(&self, v: I256) -> Ciphertext {
        self.public.encrypt(v)
    }
    fn constant(&self, v: I256) -> Ciphertext {
        self.public.constant(v)
    }
    fn add(&self, a: &Ciphertext, b: &Ciphertext) -> Ciphertext {
        self.public.add(a, b)
    }
    fn add_plain(&self, a: &Ciphertext, k: I256) -> Ciphertext {
        self.public.add_plain(a, k)
    }
    fn scale(&self, a: &Ciphertext, k: I256) -> Ciphertext {
        self.public.scale(a, k)
    }
    fn rerandomize(&self, a: &Ciphertext) -> Ciphertext {
        self.public.rerandomize(a)
    }
    fn prepare(&self, xs: &[Ciphertext]) -> Result<PreparedBases> {
        self.public.prepare(xs)
    }
    fn dot(&self, prepared: &PreparedBases, terms: &[(u32, i64)]) -> Result<Ciphertext> {
        self.public.dot(prepared, terms)
    }
    fn slots(&self, value_bits: u32) -> Result<usize> {
        self.public.slots(value_bits)
    }
    fn pack(&self, value_bits: u32, values: &[Ciphertext]) -> Result<Ciphertext> {
        self.public.pack(value_bits, values)
    }
    fn encode(&self, c: &Ciphertext) -> Vec<u8> {
        self.public.encode(c)
    }
    fn decode(&self, bytes: &[u8]) -> Result<Ciphertext> {
        self.public.decode(bytes)
    }
    fn decode_many(&self, items: &[Vec<u8>]) -> Result<Vec<Ciphertext>> {
        self.public.decode_many(items)
    }
    fn shift(&self, c: &Ciphertext, e: u32) -> Ciphertext {
        self.public.shift(c, e)
    }
    fn pack_shifted(
        &self,
        value_bits: u32,
        values: &[Ciphertext],
        shifts: &[u32],
        offsets: &[I256],
    ) -> Result<Ciphertext> {
        self.public
            .pack_shifted(value_bits, values, shifts, offsets)
    }
    fn precompute(&self) {
        self.public.precompute()
    }
    fn residues(&self) -> &Residues {
        self.public.residues()
    }
    fn join(&self, cipher: &Ciphertext, plain: &Residue) -> Result<Ciphertext> {
        self.public.join(cipher, plain)
    }
}

impl SecretOps for PaillierSecret {
    fn decrypt(&self, c: &Ciphertext) -> Result<I256> {
        Ok(self.secret.decrypt(c)?.to_i256()?)
    }

    fn unpack(&self, c: &Ciphertext, value_bits: u32, count: usize) -> Result<Vec<I256>> {
        let layout = self.key().pack_layout(value_bits)?;
        Ok(self.secret.decrypt(c)?.unpack(&layout, count)?)
    }

    /// Eight decryptions at a time on AVX-512 IFMA (the same values).
    fn decrypt_many(&self, cs: &[Ciphertext]) -> Result<Vec<I256>> {
        let plaintexts = self.secret.decrypt_batch(cs)?;
        plaintexts.iter().map(|p| Ok(p.to_i256()?)).collect()
    }

    fn unpack_many(
        &self,
        cs: &[Ciphertext],
        value_bits: u32,
        counts: &[usize],
    ) -> Result<Vec<Vec<I256>>> {
        let layout = self.key().pack_layout(value_bits)?;
        let plaintexts = self.secret.decrypt_batch(cs)?;
        plaintexts
            .iter()
            .zip(counts)
            .map(|(p, &count)| Ok(p.unpack(&layout, count)?))
            .collect()
    }
}

/// A plaintext "ciphertext": the value itself, or packed values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlainCt {
    /// One value.
    Value(I256),
    /// Several values sharing one ciphertext.
    Packed {
        /// The width each value was packed with.
        value_bits: u32,
        /// The values, first slot first.
        values: Vec<I256>,
    },
}

/// Identity encryption with the same packing geometry as a Paillier key of
/// `modulus_bits` bits, so that message shapes match the real backend.
#[derive(Clone, Debug)]
pub struct Plain {
    modulus_bits: u32,
}

impl Default for Plain {
    fn default() -> Self {
        Plain { modulus_bits: 2048 }
    }
}

impl Plain {
    /// The stand-in for a key of `modulus_bits` bits.
    pub fn new(modulus_bits: u32) -> Plain {
        Plain { modulus_bits }
    }

    fn value(c: &PlainCt) -> I256 {
        match c {
            PlainCt::Value(v) => *v,
            // Packed values only travel and get decrypted; arithmetic on
            // them is a protocol bug that the tests must catch, so it yields
            // a value no check would accept.
            PlainCt::Packed { .. } => I256::MIN,
        }
    }
}

/// Slots of `value_bits + 2` bits below a modulus of `modulus_bits` bits,
/// as a Paillier key lays them out.
pub(crate) fn packing_slots(modulus_bits: u32, value_bits: u32) -> Result<usize> {
    if value_bits == 0 || value_bits > veil_paillier::MAX_VALUE_BITS {
        return Err(PaillierError::Packing(format!(
            "value bound of {value_bits} bits is not packable"
        ))
        .into());
    }
    Ok(((modulus_bits - 1) / (value_bits + 2)) as usize)
}

const PLAIN_VALUE: u8 = 1;
const PLAIN_PACKED: u8 = 2;

impl PublicOps for Plain {
    type Ct = PlainCt;
    type Prepared = Vec<I256>;
    type Residues = Plain;

    fn name(&self) -> &'static str {
        "plain"
    }
    fn encrypt(&self, v: I256) -> PlainCt {
        PlainCt::Value(v)
    }
    fn constant(&self, v: I256) -> PlainCt {
        PlainCt::Value(v)
    }
    fn add(&self, a: &PlainCt, b: &PlainCt) -> PlainCt {
        PlainCt::Value(Self::value(a).wrapping_add(Self::value(b)))
    }
    fn add_plain(&self, a: &PlainCt, k: I256) -> PlainCt {
        PlainCt::Value(Self::value(a).wrapping_add(k))
    }
    fn scale(&self, a: &PlainCt, k: I256) -> PlainCt {
        PlainCt::Value(Self::value(a).wrapping_mul(k))
    }
    fn rerandomize(&self, a: &PlainCt) -> PlainCt {
        a.clone()
    }
    fn prepare(&self, xs: &[PlainCt]) -> Result<Vec<I256>> {
        Ok(xs.iter().map(Self::value).collect())
    }
    fn dot(&self, prepared: &Vec<I256>, terms: &[(u32, i64)]) -> Result<PlainCt> {
        let mut acc = I256::ZERO;
        for (i, w) in terms {
            let x = prepared.get(*i as usize).ok_or(ProtocolError::Index {
                what: "term",
                index: *i as usize,
                len: prepared.len(),
            })?;
            acc = acc.wrapping_add(x.wrapping_mul(I256::from(*w)));
        }
        Ok(PlainCt::Value(acc))
    }
    fn slots(&self, value_bits: u32) -> Result<usize> {
        packing_slots(self.modulus_bits, value_bits)
    }
    fn pack(&self, value_bits: u32, values: &[PlainCt]) -> Result<PlainCt> {
        let slots = self.slots(value_bits)?;
        if values.is_empty() {
            return Err(ProtocolError::Superfluous {
                what: "packing of no values",
            });
        }
        if values.len() > slots {
            return Err(ProtocolError::TooLarge {
                what: "values to pack",
                limit: slots as u64,
                got: values.len() as u64,
            });
        }
        Ok(PlainCt::Packed {
            value_bits,
            values: values.iter().map(Self::value).collect(),
        })
    }
    fn pack_shifted(
        &self,
        value_bits: u32,
        values: &[PlainCt],
        shifts: &[u32],
        offsets: &[I256],
    ) -> Result<PlainCt> {
        if shifts.len() != values.len() || offsets.len() > values.len() {
            return Err(if shifts.len() != values.len() {
                ProtocolError::Size {
                    what: "slot shifts",
                    expected: values.len(),
                    got: shifts.len(),
                }
            } else {
                ProtocolError::TooLarge {
                    what: "slot offsets",
                    limit: values.len() as u64,
                    got: offsets.len() as u64,
                }
            });
        }
        let limit = I256::ONE << value_bits.min(254);
        if offsets.iter().any(|o| *o < 0 || *o >= limit) {
            return Err(ProtocolError::Overflow {
                what: "slot offset out of range",
            });
        }
        let shifted: Vec<PlainCt> = values
            .iter()
            .zip(shifts)
            .enumerate()
            .map(|(i, (v, e))| {
                let offset = offsets.get(i).copied().unwrap_or(I256::ZERO);
                self.add_plain(&self.shift(v, *e), offset)
            })
            .collect();
        self.pack(value_bits, &shifted)
    }
    fn encode(&self, c: &PlainCt) -> Vec<u8> {
        let mut out = Vec::new();
        match c {
            PlainCt::Value(v) => {
                out.push(PLAIN_VALUE);
                out.extend_from_slice(&v.to_le_bytes());
            }
            PlainCt::Packed { value_bits, values } => {
                out.push(PLAIN_PACKED);
                out.extend_from_slice(&value_bits.to_le_bytes());
                for v in values {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        out
    }
    fn decode(&self, bytes: &[u8]) -> Result<PlainCt> {
        let (&tag, rest) = bytes.split_first().ok_or(DecodeError::PlainEmpty)?;
        let layout = || DecodeError::PlainLayout {
            tag,
            len: rest.len(),
        };
        let read = |chunk: &[u8]| -> Result<I256> {
            let array: [u8; 32] = chunk.try_into().map_err(|_| layout())?;
            Ok(I256::from_le_bytes(array))
        };
        match tag {
            PLAIN_VALUE if rest.len() == 32 => Ok(PlainCt::Value(read(rest)?)),
            PLAIN_PACKED if rest.len() >= 4 && (rest.len() - 4) % 32 == 0 => {
                let (bits, values) = rest.split_at(4);
                let value_bits = u32::from_le_bytes(bits.try_into().map_err(|_| layout())?);
                let values = values.chunks(32).map(read).collect::<Result<Vec<_>>>()?;
                if values.len() > self.slots(value_bits)? || values.is_empty() {
                    return Err(DecodeError::PlainSlots {
                        values: values.len(),
                        value_bits,
                    }
                    .into());
                }
                Ok(PlainCt::Packed { value_bits, values })
            }
            _ => Err(layout().into()),
        }
    }
    /// Plain halves are plaintext "ciphertexts" too: wrapping arithmetic
    /// modulo 2^256 splits and joins as residues modulo N do.
    fn residues(&self) -> &Plain {
        self
    }
    fn join(&self, cipher: &PlainCt, plain: &PlainCt) -> Result<PlainCt> {
        match (cipher, plain) {
            (PlainCt::Value(c), PlainCt::Value(p)) => Ok(PlainCt::Value(c.wrapping_add(*p))),
            (
                PlainCt::Packed { value_bits, values },
                PlainCt::Packed {
                    value_bits: bits,
                    values: plains,
                },
            ) if value_bits == bits && values.len() == plains.len() => Ok(PlainCt::Packed {
                value_bits: *value_bits,
                values: values
                    .iter()
                    .zip(plains)
                    .map(|(c, p)| c.wrapping_add(*p))
                    .collect(),
            }),
            _ => Err(ProtocolError::Inconsistent(
                "halves of different shapes joined",
            )),
        }
    }
}

impl SecretOps for Plain {
    fn decrypt(&self, c: &PlainCt) -> Result<I256> {
        match c {
            PlainCt::Value(v) => Ok(*v),
            PlainCt::Packed { .. } => Err(ProtocolError::Inconsistent(
                "packed value where a single one was expected",
            )),
        }
    }

    fn unpack(&self, c: &PlainCt, value_bits: u32, count: usize) -> Result<Vec<I256>> {
        match c {
            PlainCt::Packed {
                value_bits: bits,
                values,
            } if *bits == value_bits && values.len() == count => {
                let bound = I256::ONE << value_bits;
                if let Some(i) = values.iter().position(|v| *v >= bound || *v <= -bound) {
                    return Err(PaillierError::Packing(format!(
                        "slot {i} broke its bound 2^{value_bits}"
                    ))
                    .into());
                }
                Ok(values.clone())
            }
            _ => Err(ProtocolError::Packed { count, value_bits }),
        }
    }
}
