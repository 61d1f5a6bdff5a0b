//! The secret-key engine: decryption and encryption noise modulo p² and q²
//! combined by the Chinese remainder theorem.
//!
//! Every operation on secret values is constant time: the exponentiations
//! use the fixed-window ladder of [`crate::mont`], and the small arithmetic
//! (reductions, divisions, modular products) uses crypto-bigint's
//! constant-time `BoxedUint` methods; nothing branches on p, q or values
//! derived from them.

use crate::counter;
use crate::mont::{Modulus, Width};
use crypto_bigint::{BoxedUint, ConcatenatingMul, NonZero, RandomMod, Resize};
use rand_core::CryptoRng;
use zeroize::Zeroize;

/// Precomputed CRT values for N = p·q.
pub(crate) struct Crt {
    bits: u32,
    half_bits: u32,
    p: NonZero<BoxedUint>,
    q: NonZero<BoxedUint>,
    p_minus_1: BoxedUint,
    q_minus_1: BoxedUint,
    pp: NonZero<BoxedUint>,
    qq: NonZero<BoxedUint>,
    pp_ctx: Modulus,
    qq_ctx: Modulus,
    /// `L_p((1+N)^(p-1) mod p²)^-1 mod p`.
    hp: BoxedUint,
    hq: BoxedUint,
    q_inv_p: BoxedUint,
    pp_inv_qq: BoxedUint,
    /// Whether `x^p mod p²` ranges exactly over the N-th residues (see
    /// [`Crt::noise`]); false only for unusual imported keys.
    noise_ok: bool,
}

impl Drop for Crt {
    fn drop(&mut self) {
        self.p.zeroize();
        self.q.zeroize();
        self.p_minus_1.zeroize();
        self.q_minus_1.zeroize();
        self.pp.zeroize();
        self.qq.zeroize();
        self.hp.zeroize();
        self.hq.zeroize();
        self.q_inv_p.zeroize();
        self.pp_inv_qq.zeroize();
        // The Montgomery contexts zeroize themselves.
    }
}

fn nonzero(value: BoxedUint) -> Option<NonZero<BoxedUint>> {
    Option::from(NonZero::new(value))
}

impl Crt {
    /// Builds the engine from distinct odd primes of `half_bits` bits each.
    /// Returns `None` when a required inverse does not exist, which cannot
    /// happen for valid keys.
    pub(crate) fn new(p: &BoxedUint, q: &BoxedUint, half_bits: u32) -> Option<Self> {
        let bits = 2 * half_bits;
        let p = p.resize_unchecked(bits);
        let q = q.resize_unchecked(bits);
        let one = BoxedUint::one_with_precision(bits);
        let pp_value = p.concatenating_mul(&p).resize_unchecked(bits);
        let qq_value = q.concatenating_mul(&q).resize_unchecked(bits);
        let pp_ctx = Modulus::new(&pp_value, bits, Width::Half);
        let qq_ctx = Modulus::new(&qq_value, bits, Width::Half);
        let p_nz = nonzero(p.clone())?;
        let q_nz = nonzero(q.clone())?;
        let pp = nonzero(pp_value.clone())?;
        let qq = nonzero(qq_value)?;
        let n = p.concatenating_mul(&q).resize_unchecked(bits);
        let hp = Self::h(&n, &p_nz)?;
        let hq = Self::h(&n, &q_nz)?;
        let q_inv_p: BoxedUint = Option::from(q.rem(&p_nz).invert_mod(&p_nz))?;
        let pp_inv_qq: BoxedUint = Option::from(pp_value.rem(&qq).invert_mod(&qq))?;
        let p_minus_1 = p.wrapping_sub(&one);
        let q_minus_1 = q.wrapping_sub(&one);
        // Raising to q permutes the order-(p-1) subgroup mod p² only when q
        // does not divide p-1 (and symmetrically).
        let noise_ok = !bool::from(p_minus_1.rem(&q_nz).is_zero())
            && !bool::from(q_minus_1.rem(&p_nz).is_zero());
        Some(Self {
            bits,
            half_bits,
            p: p_nz,
            q: q_nz,
            p_minus_1,
            q_minus_1,
            pp,
            qq,
            pp_ctx,
            qq_ctx,
            hp,
            hq,
            q_inv_p,
            pp_inv_qq,
            noise_ok,
        })
    }

    /// `L_p(g^(p-1) mod p²)^-1 mod p` with `g = N + 1`: since
    /// `(1+N)^(p-1) = 1 + (p-1)·N mod p²`, `L_p` of it is `(p-1)·(N/p) mod p`.
    fn h(n: &BoxedUint, p: &NonZero<BoxedUint>) -> Option<BoxedUint> {
        let (other, _) = n.div_rem(p);
        let p_minus_1 = p
            .as_ref()
            .wrapping_sub(BoxedUint::one_with_precision(n.bits_precision()));
        let lp = p_minus_1.mul_mod(&other.rem(p), p);
        Option::from(lp.invert_mod(p))
    }

    /// `c^exponent mod square` for every `c`, in batches, in standard form.
    fn half_pow_many(
        &self,
        cs: &[BoxedUint],
        square: &NonZero<BoxedUint>,
        ctx: &Modulus,
        exponent: &BoxedUint,
    ) -> Vec<BoxedUint> {
        let bases: Vec<_> = cs
            .iter()
            .map(|c| ctx.enter(&c.rem(square).resize_unchecked(self.bits)))
            .collect();
        // The exponent is p-1, q-1, p or q: this copy is key material.
        let mut exponent = crate::words::u64_words(exponent);
        let out = ctx
            .pow_ct_many(&bases, &[&exponent], self.half_bits)
            .iter()
            .map(|x| ctx.retrieve(x).resize_unchecked(self.bits))
            .collect();
        exponent.zeroize();
        out
    }

    /// `m mod p` from `x = c^(p-1) mod p²`: `L_p(x)·h_p mod p`.
    fn half_finish(&self, x: &BoxedUint, prime: &NonZero<BoxedUint>, h: &BoxedUint) -> BoxedUint {
        counter::half(2);
        let one = BoxedUint::one_with_precision(self.bits);
        let (l, _) = x.wrapping_sub(&one).div_rem(prime);
        l.mul_mod(h, prime)
    }

    /// Decrypts `c` (below N²) to the residue `m` in `[0, N)` with `bits`
    /// precision.
    pub(crate) fn decrypt(&self, c: &BoxedUint) -> BoxedUint {
        self.decrypt_many(std::slice::from_ref(c))
            .pop()
            .unwrap_or_else(|| BoxedUint::zero_with_precision(self.bits))
    }

    /// [`Crt::decrypt`] of every ciphertext, eight exponentiations at a
    /// time where the multi-buffer kernel runs; the same results.
    pub(crate) fn decrypt_many(&self, cs: &[BoxedUint]) -> Vec<BoxedUint> {
        // The two halves are independent: on two threads, a round of a
        // few decryptions (server B's latency on small models) takes half
        // the time; with more ciphertexts than threads, rayon's callers
        // already spread the chunks and the join costs a few microseconds.
        let (mut xp, mut xq) = rayon::join(
            || self.half_pow_many(cs, &self.pp, &self.pp_ctx, &self.p_minus_1),
            || self.half_pow_many(cs, &self.qq, &self.qq_ctx, &self.q_minus_1),
        );
        let out = xp
            .iter()
            .zip(&xq)
            .map(|(xp, xq)| {
                let mp = self.half_finish(xp, &self.p, &self.hp);
                let mq = self.half_finish(xq, &self.q, &self.hq);
                // Garner: m = m_q + q·((m_p - m_q)·q^-1 mod p).
                let diff = mp.sub_mod(&mq.rem(&self.p), &self.p);
                let h = diff.mul_mod(&self.q_inv_p, &self.p);
                self.q
                    .as_ref()
                    .concatenating_mul(&h)
                    .resize_unchecked(self.bits)
                    .wrapping_add(&mq)
            })
            .collect();
        for v in xp.iter_mut().chain(&mut xq) {
            v.zeroize();
        }
        out
    }

    /// `count` uniformly random N-th residues modulo N², value i drawn from
    /// generator `i mod rngs.len()`, in standard form with
    /// `2·bits` precision, or `None` for keys where this shortcut does not
    /// give the right distribution.
    ///
    /// For x uniform in Z*_{p²}, `x^p mod p²` is uniform in the subgroup of
    /// order p-1, which is exactly the set of N-th residues modulo p²
    /// (raising to q permutes it when q does not divide p-1). So the CRT
    /// combination of `x^p mod p²` and `y^q mod q²` has the distribution of
    /// `r^N mod N²` for uniform r, at the price of two exponents of half the
    /// size modulo half-size moduli.
    ///
    /// The exponentiations run in batches of eight where the CPU allows.
    pub(crate) fn noise_many<R: CryptoRng + ?Sized>(
        &self,
        rngs: &mut [&mut R],
        count: usize,
    ) -> Option<Vec<BoxedUint>> {
        if !self.noise_ok {
            return None;
        }
        // x = 0 or a multiple of the prime has probability 2^-1000; such an
        // x still yields a valid (if non-unit) value, never a panic.
        let lanes = rngs.len();
        if lanes == 0 {
            return Some(Vec::new());
        }
        let (mut xp, mut xq): (Vec<_>, Vec<_>) = (0..count)
            .map(|i| {
                let rng = &mut *rngs[i % lanes];
                let xp = BoxedUint::random_mod_vartime(rng, &self.pp);
                let xq = BoxedUint::random_mod_vartime(rng, &self.qq);
                (xp, xq)
            })
            .unzip();
        let mut yp = self.half_pow_many(&xp, &self.pp, &self.pp_ctx, self.p.as_ref());
        let mut yq = self.half_pow_many(&xq, &self.qq, &self.qq_ctx, self.q.as_ref());
        let wide = 2 * self.bits;
        let out = yp
            .iter()
            .zip(&yq)
            .map(|(yp, yq)| {
                let diff = yq.sub_mod(&yp.rem(&self.qq), &self.qq);
                let h = diff.mul_mod(&self.pp_inv_qq, &self.qq);
                let high = self
                    .pp
                    .as_ref()
                    .concatenating_mul(&h)
                    .resize_unchecked(wide);
                high.wrapping_add(yp.resize_unchecked(wide))
            })
            .collect();
        for v in xp.iter_mut().chain(&mut xq).chain(&mut yp).chain(&mut yq) {
            v.zeroize();
        }
        Some(out)
    }
}
