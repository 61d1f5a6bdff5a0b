//! Ciphertexts, encryption, decryption and the homomorphic operations.

use crate::error::{PaillierError, Result};
use crate::keys::{PublicKey, SecretKey, random_below};
use crate::mont::{Elem, Modulus};
use crate::plaintext::{Plaintext, Signed};
use crypto_bigint::{BoxedUint, ConcatenatingMul, Gcd, Resize};
use ethnum::I256;
use rand_core::CryptoRng;
use zeroize::Zeroize;

/// A Paillier ciphertext, kept in the Montgomery domain of N² so that the
/// homomorphic operations cost one multiplication each. It remembers its key,
/// so it can be encoded and compared on its own.
#[derive(Clone)]
pub struct Ciphertext {
    pub(crate) key: PublicKey,
    pub(crate) elem: Elem,
}

impl PartialEq for Ciphertext {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key && self.key.ctx().equal(&self.elem, &other.elem)
    }
}

impl Eq for Ciphertext {}

impl std::fmt::Debug for Ciphertext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes = self.to_bytes();
        let tail = &bytes[bytes.len().saturating_sub(6)..];
        write!(f, "Ciphertext(..{})", hex::encode(tail))
    }
}

/// Encryption noise: an N-th residue `r^N mod N²` (or `h^α` in fixed-base
/// mode), in the Montgomery domain. Anyone who learns it can strip it from
/// the ciphertext, and using it twice links two ciphertexts, so it is
/// consumed by value and zeroized when dropped.
pub struct Noise(pub(crate) Elem);

impl Noise {
    /// The value, leaving an empty shell to be dropped.
    pub(crate) fn into_elem(mut self) -> Elem {
        Elem(std::mem::take(&mut self.0.0))
    }
}

impl Drop for Noise {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl PublicKey {
    pub(crate) fn ctx(&self) -> &Modulus {
        &self.inner.nn_ctx
    }

    /// `g^m = 1 + m·N mod N²` in the Montgomery domain, for m in `[0, N)`.
    pub(crate) fn g_pow(&self, m: &BoxedUint) -> Elem {
        let wide = 2 * self.bits();
        let product = m
            .resize_unchecked(self.bits())
            .concatenating_mul(&self.inner.n)
            .resize_unchecked(wide);
        let value = product.wrapping_add(BoxedUint::one_with_precision(wide));
        self.ctx().enter(&value)
    }

    fn wrap(&self, elem: Elem) -> Ciphertext {
        Ciphertext {
            key: self.clone(),
            elem,
        }
    }

    /// Fresh randomness the textbook way: `r^N mod N²` for uniform r in
    /// Z*_N (a full exponentiation: about 2.4k multiplications modulo N² for
    /// N of 2048 bits). Rests on the decisional composite residuosity
    /// assumption. Variable time only in the public exponent N.
    pub fn fresh_noise<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> Noise {
        let mut noise = self.fresh_noise_many(&mut [rng], 1);
        noise.pop().unwrap_or_else(|| Noise(self.ctx().one()))
    }

    /// `count` values of [`PublicKey::fresh_noise`], the same ones `count`
    /// calls would draw from `rng`, with the exponentiations run eight at a
    /// time where the CPU has AVX-512 IFMA.
    pub fn fresh_noise_batch<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        count: usize,
    ) -> Vec<Noise> {
        self.fresh_noise_many(&mut [rng], count)
    }

    /// Textbook noise, value i drawn from generator `i mod rngs.len()`.
    pub(crate) fn fresh_noise_many<R: CryptoRng + ?Sized>(
        &self,
        rngs: &mut [&mut R],
        count: usize,
    ) -> Vec<Noise> {
        let lanes = rngs.len();
        if lanes == 0 {
            return Vec::new();
        }
        let ctx = self.ctx();
        let mut bases: Vec<Elem> = (0..count)
            .map(|i| {
                let rng = &mut *rngs[i % lanes];
                self.enter_random_unit(rng)
            })
            .collect();
        let exponent = crate::words::u64_words(&self.inner.n);
        let noise = ctx.pow_vartime_many(&bases, &exponent);
        for b in &mut bases {
            b.zeroize();
        }
        noise.into_iter().map(Noise).collect()
    }

    /// A uniform `r` of Z*_N in Montgomery form modulo N², the plain copy
    /// wiped: whoever knows r can strip its noise.
    pub(crate) fn enter_random_unit<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> Elem {
        let mut r = self.random_unit(rng);
        let elem = self.ctx().enter(&r);
        r.zeroize();
        elem
    }

    /// A uniform element of Z*_N: the `r` of textbook noise.
    pub(crate) fn random_unit<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> BoxedUint {
        let n_nz = self.inner.n_odd.as_nz_ref();
        loop {
            let r = random_below(rng, n_nz);
            if r.gcd(&self.inner.n).is_one().to_bool() {
                return r;
            }
        }
    }

    /// The textbook noise `r^N mod N²` for a given `r` in Z*_N, for
    /// known-answer tests and interoperability checks against other
    /// implementations. Never reuse an `r` for real encryptions.
    pub fn noise_from_r(&self, r: &BoxedUint) -> Result<Noise> {
        if r.bit_width_vartime() > self.bits() {
            return Err(PaillierError::PlaintextRange("r is not below N".into()));
        }
        let r = r.clone().resize_unchecked(self.bits());
        if r >= self.inner.n || !r.gcd(&self.inner.n).is_one().to_bool() {
            return Err(PaillierError::PlaintextRange(
                "r is not a unit modulo N".into(),
            ));
        }
        let ctx = self.ctx();
        Ok(Noise(ctx.pow_vartime(&ctx.enter(&r), &self.inner.n)))
    }

    /// Encrypts with the given noise: `(1 + m·N)·noise mod N²`.
    pub fn encrypt_with_noise(&self, m: &Plaintext, noise: Noise) -> Result<Ciphertext> {
        self.check_plaintext(m)?;
        let g = self.g_pow(&m.residue);
        Ok(self.wrap(self.ctx().mul(&g, &noise.0)))
    }

    /// Encrypts a machine integer with the given noise.
    pub fn encrypt_i128(&self, value: i128, noise: Noise) -> Ciphertext {
        let plaintext = self.encode_i128(value);
        let g = self.g_pow(&plaintext.residue);
        self.wrap(self.ctx().mul(&g, &noise.0))
    }

    /// Encrypts with fresh textbook randomness (a full exponentiation).
    pub fn encrypt<R: CryptoRng + ?Sized>(&self, m: &Plaintext, rng: &mut R) -> Result<Ciphertext> {
        let noise = self.fresh_noise(rng);
        self.encrypt_with_noise(m, noise)
    }

    /// The trivial encryption of `m` (noise 1). Not hiding: only for
    /// constants that are public anyway.
    pub fn encrypt_trivial(&self, m: &Plaintext) -> Result<Ciphertext> {
        self.check_plaintext(m)?;
        Ok(self.wrap(self.g_pow(&m.residue)))
    }

    /// The trivial encryption of zero (the identity for [`PublicKey::add`]).
    pub fn zero_ciphertext(&self) -> Ciphertext {
        self.wrap(self.ctx().one())
    }

    /// `[[a + b]]`: one multiplication.
    pub fn add(&self, a: &Ciphertext, b: &Ciphertext) -> Ciphertext {
        self.wrap(self.ctx().mul(&a.elem, &b.elem))
    }

    /// `a ← [[a + b]]` in place.
    pub fn add_assign(&self, a: &mut Ciphertext, b: &Ciphertext) {
        self.ctx().mul_assign(&mut a.elem, &b.elem);
    }

    /// `[[a - b]]`: an inversion and a multiplication.
    pub fn sub(&self, a: &Ciphertext, b: &Ciphertext) -> Ciphertext {
        self.add(a, &self.neg(b))
    }

    /// `[[a + k]]` for a public constant k: one multiplication by `1 + k·N`.
    pub fn add_plain(&self, a: &Ciphertext, k: &Plaintext) -> Result<Ciphertext> {
        self.check_plaintext(k)?;
        Ok(self.wrap(self.ctx().mul(&a.elem, &self.g_pow(&k.residue))))
    }

    /// `[[a + k]]` for a machine-integer constant.
    pub fn add_i128(&self, a: &Ciphertext, k: i128) -> Ciphertext {
        let k = self.encode_i128(k);
        self.wrap(self.ctx().mul(&a.elem, &self.g_pow(&k.residue)))
    }

    /// `[[-a]]`: the inverse modulo N² (variable time; ciphertexts are public).
    pub fn neg(&self, a: &Ciphertext) -> Ciphertext {
        // Every validated ciphertext is a unit, so the inverse exists; a
        // non-unit can only come from a caller mixing keys.
        let inv = self.ctx().invert_vartime(&a.elem, self.inversion());
        self.wrap(inv.unwrap_or_else(|| a.elem.clone()))
    }

    /// `[[k·a]]` for a signed scalar (variable time in k).
    pub fn mul_scalar(&self, a: &Ciphertext, k: I256) -> Ciphertext {
        let Signed {
            negative,
            magnitude,
        } = Signed::from(k);
        self.mul_signed_magnitude(a, negative, &magnitude)
    }

    /// `[[k·a]]` for a machine-integer scalar (variable time in k).
    pub fn mul_i128(&self, a: &Ciphertext, k: i128) -> Ciphertext {
        let base = if k < 0 { self.neg(a) } else { a.clone() };
        self.wrap(self.ctx().pow_u128(&base.elem, k.unsigned_abs()))
    }

    /// `[[k·a]]` for a scalar given as sign and magnitude of any size.
    pub fn mul_signed_magnitude(
        &self,
        a: &Ciphertext,
        negative: bool,
        magnitude: &BoxedUint,
    ) -> Ciphertext {
        let base = if negative { self.neg(a) } else { a.clone() };
        self.wrap(self.ctx().pow_vartime(&base.elem, magnitude))
    }

    /// Re-randomizes: multiplies by fresh noise, so the result cannot be
    /// linked to the input by anyone without the secret key.
    pub fn rerandomize(&self, a: &Ciphertext, noise: Noise) -> Ciphertext {
        self.wrap(self.ctx().mul(&a.elem, &noise.0))
    }

    /// The encryption of zero with the given noise.
    pub fn encrypt_zero(&self, noise: Noise) -> Ciphertext {
        self.wrap(noise.0.clone())
    }

    /// Decodes and validates a ciphertext: exact length, below N², and a
    /// unit modulo N² (coprime with N).
    pub fn ciphertext_from_bytes(&self, bytes: &[u8]) -> Result<Ciphertext> {
        let c = self.parse_in_range(bytes)?;
        self.check_units(std::slice::from_ref(&c))?;
        Ok(c)
    }

    /// Length and range checks, without the unit check.
    fn parse_in_range(&self, bytes: &[u8]) -> Result<Ciphertext> {
        let expected = self.ciphertext_len();
        if bytes.len() != expected {
            return Err(PaillierError::CiphertextLength {
                got: bytes.len(),
                expected,
            });
        }
        let value = BoxedUint::from_be_slice(bytes, 2 * self.bits())
            .map_err(|e| PaillierError::Encoding(format!("ciphertext: {e:?}")))?;
        self.ciphertext_in_range(&value)
    }

    /// Validates a ciphertext given as an integer.
    pub fn ciphertext_from_uint(&self, value: &BoxedUint) -> Result<Ciphertext> {
        let c = self.ciphertext_in_range(value)?;
        self.check_units(std::slice::from_ref(&c))?;
        Ok(c)
    }

    /// Decodes and validates many ciphertexts at once. The unit check, a
    /// gcd with N that costs as much as a hundred multiplications, is done
    /// once for the product of all of them (a product is coprime with N
    /// exactly when every factor is); only when it fails are they checked
    /// one by one to name the culprit.
    pub fn ciphertexts_from_bytes<B: AsRef<[u8]> + Sync>(
        &self,
        items: &[B],
    ) -> Result<Vec<Ciphertext>> {
        use rayon::prelude::*;
        let cts = items
            .par_iter()
            .map(|bytes| self.parse_in_range(bytes.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        self.check_units(&cts)?;
        Ok(cts)
    }

    /// Range check and entry into the Montgomery domain (no unit check).
    fn ciphertext_in_range(&self, value: &BoxedUint) -> Result<Ciphertext> {
        let bits = 2 * self.bits();
        if value.bit_width_vartime() > bits {
            return Err(PaillierError::CiphertextOutOfRange);
        }
        let value = value.resize_unchecked(bits);
        if value >= *self.inner.nn.as_ref() {
            return Err(PaillierError::CiphertextOutOfRange);
        }
        Ok(self.wrap(self.ctx().enter(&value)))
    }

    fn is_unit(&self, value: &BoxedUint) -> bool {
        let reduced = value
            .rem_vartime(self.inner.n_odd.as_nz_ref())
            .resize_unchecked(self.bits());
        // Ciphertexts are public, so the faster variable-time gcd will do.
        reduced.gcd_vartime(&self.inner.n).is_one().to_bool()
    }

    fn check_units(&self, cts: &[Ciphertext]) -> Result<()> {
        let ctx = self.ctx();
        let Some((first, rest)) = cts.split_first() else {
            return Ok(());
        };
        let mut product = first.elem.clone();
        for c in rest {
            ctx.mul_assign(&mut product, &c.elem);
        }
        if self.is_unit(&ctx.retrieve(&product)) {
            return Ok(());
        }
        match cts.iter().position(|c| !self.is_unit(&c.to_uint())) {
            Some(index) if cts.len() > 1 => Err(PaillierError::CiphertextNotUnitAt(index)),
            _ => Err(PaillierError::CiphertextNotUnit),
        }
    }

    pub(crate) fn check_plaintext(&self, m: &Plaintext) -> Result<()> {
        if m.key != *self {
            return Err(PaillierError::KeyMismatch);
        }
        Ok(())
    }
}

impl Ciphertext {
    /// Canonical encoding: big-endian, exactly `2·bits/8` bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_uint().to_be_bytes().to_vec()
    }

    /// The ciphertext as an integer in `[0, N²)`.
    pub fn to_uint(&self) -> BoxedUint {
        self.key
            .ctx()
            .retrieve(&self.elem)
            .resize_unchecked(2 * self.key.bits())
    }

    /// The key this ciphertext belongs to.
    pub fn public_key(&self) -> &PublicKey {
        &self.key
    }
}

impl SecretKey {
    /// Decrypts with the CRT: two exponentiations with exponents of half the
    /// size modulo p² and q². Constant time in the key.
    pub fn decrypt(&self, c: &Ciphertext) -> Result<Plaintext> {
        let public = self.public_key();
        if c.key != *public {
            return Err(PaillierError::KeyMismatch);
        }
        let residue = self
            .crt
            .decrypt(&c.to_uint())
            .resize_unchecked(public.bits());
        Ok(Plaintext {
            key: public.clone(),
            residue,
        })
    }

    /// Decrypts to a machine integer (an error if it does not fit).
    pub fn decrypt_i128(&self, c: &Ciphertext) -> Result<i128> {
        self.decrypt(c)?.to_i128()
    }

    /// Decrypts every ciphertext to what [`SecretKey::decrypt`] gives, with
    /// the exponentiations run eight at a time where the CPU has AVX-512
    /// IFMA, and batches spread over rayon's threads. Fails if any
    /// ciphertext belongs to another key.
    pub fn decrypt_batch(&self, cs: &[Ciphertext]) -> Result<Vec<Plaintext>> {
        use rayon::prelude::*;
        let public = self.public_key();
        if cs.iter().any(|c| c.key != *public) {
            return Err(PaillierError::KeyMismatch);
        }
        let residues: Vec<Vec<BoxedUint>> = cs
            .par_chunks(crate::mont::batch_width())
            .map(|chunk| {
                let values: Vec<BoxedUint> = chunk.iter().map(Ciphertext::to_uint).collect();
                self.crt.decrypt_many(&values)
            })
            .collect();
        Ok(residues
            .into_iter()
            .flatten()
            .map(|residue| Plaintext {
                key: public.clone(),
                residue: residue.resize_unchecked(public.bits()),
            })
            .collect())
    }

    /// Fresh noise through the CRT (two half-size exponentiations), with the
    /// distribution of textbook `r^N mod N²`.
    pub fn crt_noise<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> Noise {
        let mut noise = self.crt_noise_many(&mut [rng], 1);
        noise
            .pop()
            .unwrap_or_else(|| Noise(self.public_key().ctx().one()))
    }

    /// `count` values of [`SecretKey::crt_noise`], the same ones `count`
    /// calls would draw from `rng`, with the exponentiations run eight at a
    /// time where the CPU has AVX-512 IFMA.
    pub fn crt_noise_batch<R: CryptoRng + ?Sized>(&self, rng: &mut R, count: usize) -> Vec<Noise> {
        self.crt_noise_many(&mut [rng], count)
    }

    /// CRT noise, value i drawn from generator `i mod rngs.len()`.
    pub(crate) fn crt_noise_many<R: CryptoRng + ?Sized>(
        &self,
        rngs: &mut [&mut R],
        count: usize,
    ) -> Vec<Noise> {
        let public = self.public_key();
        match self.crt.noise_many(rngs, count) {
            Some(values) => values
                .into_iter()
                .map(|mut v| {
                    let noise = Noise(public.ctx().enter(&v));
                    v.zeroize();
                    noise
                })
                .collect(),
            // Imported keys where q divides p-1 take the textbook route.
            None => public.fresh_noise_many(rngs, count),
        }
    }

    /// Encrypts with CRT noise.
    pub fn encrypt<R: CryptoRng + ?Sized>(&self, m: &Plaintext, rng: &mut R) -> Result<Ciphertext> {
        let noise = self.crt_noise(rng);
        self.public_key().encrypt_with_noise(m, noise)
    }
}
