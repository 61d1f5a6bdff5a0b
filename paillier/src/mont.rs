//! Montgomery arithmetic modulo an odd number, in radix 2^52.
//!
//! The radix is 2^52 rather than 2^64 so that the AVX-512 IFMA instructions
//! (`vpmadd52luq` / `vpmadd52huq`, eight 52x52-bit products per instruction)
//! can do the work where the CPU has them; elsewhere a portable kernel runs
//! the same algorithm one limb at a time, so both give identical results.
//! crypto-bigint's 64-bit Montgomery multiplication is 2.7x (2048-bit) to
//! 4.7x (4096-bit) slower than the IFMA kernel on the machines veil targets,
//! and decryption and the homomorphic operations are nothing but these
//! multiplications.
//!
//! The kernel is the "almost Montgomery multiplication": with
//! `R = 2^(52·n) > 4m`, inputs below `2m` give an output below `2m`, so no
//! conditional subtraction is needed between operations; values are reduced
//! to `[0, m)` only when they leave the Montgomery domain. Every kernel, the
//! fixed-window exponentiation and the table look-ups are branch-free and
//! have data-independent memory access, so they are fit for secret moduli and
//! exponents. The sliding-window exponentiation is variable time and is only
//! used with public exponents or ones owned by the computing party.
//!
//! Independent exponentiations with one modulus (decryptions, noise) also
//! run eight at a time ([`batch`]): the multi-buffer kernel puts one
//! operation in each 64-bit lane, which keeps the multiply-add units busy
//! where the single-operation kernel waits on its carry chain, for about
//! twice the throughput at 2048 bits.

use crate::counter;
use crate::words::{from_u64_words, u64_words};
use crypto_bigint::{BoxedUint, NonZero, Odd, Resize};
use zeroize::Zeroize;

pub(crate) use batch::batch_width;

pub(crate) const LIMB_BITS: u32 = 52;
const MASK: u64 = (1 << LIMB_BITS) - 1;

/// Which counter a multiplication is charged to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Width {
    /// The ciphertext modulus N².
    Full,
    /// Moduli of N's size (p², q², N).
    Half,
}

type Kernel = fn(&Modulus, &[u64], &[u64], &mut [u64]);

/// A Montgomery context for one odd modulus.
pub(crate) struct Modulus {
    bits: u32,
    /// Limbs that take part in the reduction: `R = 2^(52·n)`.
    n: usize,
    /// Storage length of every element: `n` rounded up to a multiple of 8.
    padded: usize,
    m: Vec<u64>,
    /// `-m^-1 mod 2^52`.
    k0: u64,
    /// `R² mod m`, for entering the Montgomery domain.
    r2: Vec<u64>,
    one: Elem,
    width: Width,
    kernel: Kernel,
    /// The multi-buffer kernels, where the CPU has them.
    batch: Option<batch::Kernels>,
}

impl Drop for Modulus {
    fn drop(&mut self) {
        // Moduli modulo p² and q² are secret; zeroizing the public ones too
        // costs nothing worth avoiding.
        self.m.zeroize();
        self.r2.zeroize();
        self.one.0.zeroize();
        self.k0.zeroize();
    }
}

/// An element in Montgomery form, below `2m`, as `padded` limbs of 52 bits.
#[derive(Clone)]
pub(crate) struct Elem(pub(crate) Vec<u64>);

impl Zeroize for Elem {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

/// Splits little-endian 64-bit words into `count` limbs of 52 bits.
pub(crate) fn words_to_limbs(words: &[u64], count: usize) -> Vec<u64> {
    let word = |i: usize| words.get(i).copied().unwrap_or(0);
    (0..count)
        .map(|j| {
            let bit = j * LIMB_BITS as usize;
            let (w, s) = (bit / 64, bit % 64);
            let low = word(w) >> s;
            let high = if s > 12 { word(w + 1) << (64 - s) } else { 0 };
            (low | high) & MASK
        })
        .collect()
}

/// Joins 52-bit limbs into `count` little-endian 64-bit words (higher limbs
/// must be zero beyond `64·count` bits).
pub(crate) fn limbs_to_words(limbs: &[u64], count: usize) -> Vec<u64> {
    let mut words = vec![0u64; count];
    for (j, &limb) in limbs.iter().enumerate() {
        let bit = j * LIMB_BITS as usize;
        let (w, s) = (bit / 64, bit % 64);
        if let Some(word) = words.get_mut(w) {
            *word |= limb << s;
        }
        if s > 12
            && let Some(word) = words.get_mut(w + 1)
        {
            *word |= limb >> (64 - s);
        }
    }
    words
}

/// All ones when `a == b`, zero otherwise, without branching.
#[inline(always)]
fn ct_eq_mask(a: u64, b: u64) -> u64 {
    let x = a ^ b;
    ((x | x.wrapping_neg()) >> 63).wrapping_sub(1)
}

impl Modulus {
    /// A context for the odd modulus `m` of at most `bits` bits. `bits` is
    /// the public size; the value itself may be secret.
    pub(crate) fn new(m: &BoxedUint, bits: u32, width: Width) -> Modulus {
        let n = (bits as usize + 2).div_ceil(LIMB_BITS as usize);
        let padded = n.div_ceil(8) * 8;
        let mut limbs = words_to_limbs(&u64_words(m), padded);
        // Newton's iteration doubles the correct low bits each step: 1 → 64.
        let m0 = limbs.first().copied().unwrap_or(1);
        let mut inv: u64 = 1;
        for _ in 0..6 {
            inv = inv.wrapping_mul(2u64.wrapping_sub(m0.wrapping_mul(inv)));
        }
        let k0 = inv.wrapping_neg() & MASK;
        let r_bits = (LIMB_BITS as usize * n) as u32;
        let word_count = (bits as usize).div_ceil(64);
        let modulus = m.resize_unchecked(2 * r_bits + 64);
        let nz = Option::<NonZero<BoxedUint>>::from(NonZero::new(modulus)).unwrap_or_else(|| {
            NonZero::new(BoxedUint::one_with_precision(2 * r_bits + 64)).expect("one is nonzero")
        });
        let reduce = |exponent: u32| {
            let power = BoxedUint::one_with_precision(2 * r_bits + 64).shl(exponent);
            let rem = power.rem(&nz);
            let mut words = u64_words(&rem);
            words.truncate(word_count.max(1));
            words_to_limbs(&words, padded)
        };
        let r2 = reduce(2 * r_bits);
        let one = Elem(reduce(r_bits));
        limbs.truncate(padded);
        Modulus {
            bits,
            n,
            padded,
            m: limbs,
            k0,
            r2,
            one,
            width,
            kernel: select_kernel(padded),
            batch: batch::select_kernels(),
        }
    }

    fn word_count(&self) -> usize {
        (self.bits as usize).div_ceil(64)
    }

    #[inline]
    fn amm(&self, a: &[u64], b: &[u64]) -> Vec<u64> {
        let mut out = vec![0u64; self.padded];
        (self.kernel)(self, a, b, &mut out);
        out
    }

    #[inline]
    fn charge(&self, square: bool) {
        match (self.width, square) {
            (Width::Full, false) => counter::full_mul(1),
            (Width::Full, true) => counter::full_sqr(1),
            (Width::Half, _) => counter::half(1),
        }
    }

    pub(crate) fn mul(&self, a: &Elem, b: &Elem) -> Elem {
        self.charge(false);
        Elem(self.amm(&a.0, &b.0))
    }

    pub(crate) fn mul_assign(&self, a: &mut Elem, b: &Elem) {
        self.charge(false);
        let out = self.amm(&a.0, &b.0);
        a.0 = out;
    }

    pub(crate) fn sqr(&self, a: &Elem) -> Elem {
        self.charge(true);
        Elem(self.amm(&a.0, &a.0))
    }

    pub(crate) fn sqr_assign(&self, a: &mut Elem) {
        self.charge(true);
        let out = self.amm(&a.0, &a.0);
        a.0 = out;
    }

    /// The Montgomery form of one.
    pub(crate) fn one(&self) -> Elem {
        self.one.clone()
    }

    /// Enters the Montgomery domain. `x` must be below `2m` (it is reduced
    /// by the caller otherwise).
    pub(crate) fn enter(&self, x: &BoxedUint) -> Elem {
        let limbs = words_to_limbs(&u64_words(x), self.padded);
        self.charge(false);
        Elem(self.amm(&limbs, &self.r2))
    }

    /// Leaves the Montgomery domain: the canonical residue in `[0, m)` as a
    /// `BoxedUint` with the precision of `m`.
    pub(crate) fn retrieve(&self, a: &Elem) -> BoxedUint {
        let mut unit = vec![0u64; self.padded];
        unit[0] = 1;
        self.charge(false);
        let t = self.amm(&a.0, &unit);
        let reduced = self.reduce_below_m(&t);
        from_u64_words(&limbs_to_words(&reduced, self.word_count()))
    }

    /// The canonical limbs of an element (reduced below m): for equality.
    pub(crate) fn canonical(&self, a: &Elem) -> Vec<u64> {
        self.reduce_below_m(&a.0)
    }

    pub(crate) fn equal(&self, a: &Elem, b: &Elem) -> bool {
        self.canonical(a) == self.canonical(b)
    }

    /// `t - m` if `t ≥ m`, else `t`, for `t < 2m`; branch-free.
    fn reduce_below_m(&self, t: &[u64]) -> Vec<u64> {
        let mut diff = vec![0u64; self.padded];
        let mut borrow = 0u64;
        for ((d, &x), &y) in diff.iter_mut().zip(t).zip(&self.m) {
            let v = x.wrapping_sub(y).wrapping_sub(borrow);
            *d = v & MASK;
            borrow = v >> 63;
        }
        // borrow = 1 means t < m: keep t.
        let keep = borrow.wrapping_neg();
        diff.iter()
            .zip(t)
            .map(|(&d, &x)| (x & keep) | (d & !keep))
            .collect()
    }

    /// `base^exp` in constant time for a secret exponent of at most
    /// `exp_bits` bits (given as 64-bit words), with a fixed 5-bit window.
    pub(crate) fn pow_ct(&self, base: &Elem, exp: &[u64], exp_bits: u32) -> Elem {
        const WINDOW: u32 = 5;
        let mut table: Vec<Elem> = Vec::with_capacity(1 << WINDOW);
        table.push(self.one());
        table.push(base.clone());
        for i in 2..(1usize << WINDOW) {
            let next = self.mul(&table[i - 1], base);
            table.push(next);
        }
        let windows = exp_bits.div_ceil(WINDOW);
        let mut acc = self.one();
        let mut selected = Elem(vec![0u64; self.padded]);
        for w in (0..windows).rev() {
            if w + 1 != windows {
                for _ in 0..WINDOW {
                    self.sqr_assign(&mut acc);
                }
            }
            let digit = bits_at(exp, w * WINDOW, WINDOW);
            ct_select_into(&table, digit, &mut selected);
            self.mul_assign(&mut acc, &selected);
        }
        for entry in &mut table {
            entry.zeroize();
        }
        selected.zeroize();
        acc
    }

    /// `base^exp` by left-to-right sliding windows. Variable time in `exp`:
    /// only for exponents that are public or belong to the computing party.
    pub(crate) fn pow_vartime(&self, base: &Elem, exp: &BoxedUint) -> Elem {
        self.pow_words_vartime(base, &u64_words(exp))
    }

    pub(crate) fn pow_words_vartime(&self, base: &Elem, exp: &[u64]) -> Elem {
        self.pow_vartime_with(base, exp, &[])
    }

    /// `base^e` for a machine-word exponent (variable time in `e`).
    pub(crate) fn pow_u128(&self, base: &Elem, e: u128) -> Elem {
        self.pow_words_vartime(base, &[e as u64, (e >> 64) as u64])
    }

    /// The inverse modulo `root²` (this context's modulus, N² of a
    /// Paillier key), variable time: only for public values (ciphertexts).
    /// `None` if `a` is not a unit.
    ///
    /// crypto-bigint's inversion (safegcd) costs about the square of the
    /// size, so this inverts modulo `root` and lifts with one Newton step:
    /// `c·y = 1 + k·root` gives `c·y·(2 - c·y) = 1 - k²·root² ≡ 1`, two
    /// multiplications (negation at N = 2048: 193 µs, against 740 µs for
    /// one inversion modulo N²; `paillier` bench "negate", 2026-11-29).
    pub(crate) fn invert_vartime(&self, a: &Elem, modulus: SquareModulus<'_>) -> Option<Elem> {
        let SquareModulus { root, square } = modulus;
        let precision = square.as_ref().bits_precision();
        let c = self.retrieve(a).resize_unchecked(precision);
        let low = c.rem_vartime(root.as_nz_ref());
        let y: BoxedUint = Option::from(low.invert_odd_mod_vartime(root))?;
        let y = self.enter(&y.resize_unchecked(precision));
        let cy = self.retrieve(&self.mul(a, &y)).resize_unchecked(precision);
        let one = BoxedUint::one_with_precision(precision);
        if cy == one {
            return Some(y);
        }
        // cy ≡ 1 (mod root) and cy ≠ 1, so root < cy < root² and
        // 2 - cy (mod root²) = root² - cy + 2 lies in (0, root²).
        let two = one.wrapping_add(&one);
        let step = square.as_ref().wrapping_sub(&cy).wrapping_add(&two);
        Some(self.mul(&y, &self.enter(&step)))
    }

    /// Inverts every element with one inversion and 3(n-1) multiplications
    /// (Montgomery's trick). `None` if some element is not invertible.
    pub(crate) fn batch_invert_vartime(
        &self,
        values: &[&Elem],
        modulus: SquareModulus<'_>,
    ) -> Option<Vec<Elem>> {
        let (first, rest) = match values.split_first() {
            Some(split) => split,
            None => return Some(Vec::new()),
        };
        let mut prefix: Vec<Elem> = Vec::with_capacity(values.len());
        prefix.push((*first).clone());
        for v in rest {
            let next = self.mul(prefix.last()?, v);
            prefix.push(next);
        }
        let mut inv = self.invert_vartime(prefix.last()?, modulus)?;
        let mut out = vec![Elem(Vec::new()); values.len()];
        for i in (1..values.len()).rev() {
            out[i] = self.mul(&inv, &prefix[i - 1]);
            inv = self.mul(&inv, values[i]);
        }
        out[0] = inv;
        Some(out)
    }
}

/// A modulus `square = root²` with its root: N² and N of a Paillier key.
#[derive(Clone, Copy)]
pub(crate) struct SquareModulus<'a> {
    pub(crate) root: &'a Odd<BoxedUint>,
    pub(crate) square: &'a Odd<BoxedUint>,
}

/// Bits `start..start+len` of a little-endian word slice (len ≤ 32). The
/// position is public; the value may be secret and is read without branches.
pub(crate) fn bits_at(exp: &[u64], start: u32, len: u32) -> u64 {
    let word = |i: usize| exp.get(i).copied().unwrap_or(0);
    let (w, s) = ((start / 64) as usize, start % 64);
    let low = word(w) >> s;
    let high = if s == 0 { 0 } else { word(w + 1) << (64 - s) };
    (low | high) & ((1u64 << len) - 1)
}

fn words_bits(words: &[u64]) -> u32 {
    for (i, w) in words.iter().enumerate().rev() {
        if *w != 0 {
            return 64 * i as u32 + (64 - w.leading_zeros());
        }
    }
    0
}

/// Copies `table[index]` into `out`, reading every entry so that the memory
/// access pattern does not depend on `index`.
pub(crate) fn ct_select_into(table: &[Elem], index: u64, out: &mut Elem) {
    out.0.iter_mut().for_each(|x| *x = 0);
    for (i, entry) in table.iter().enumerate() {
        let mask = ct_eq_mask(i as u64, index);
        for (o, &v) in out.0.iter_mut().zip(&entry.0) {
            *o |= v & mask;
        }
    }
}

/// Window width for a sliding-window exponentiation with `bits` exponent bits.
/// Left-to-right sliding-window recoding of a public exponent of `bits`
/// bits, shared by the single and the batched exponentiation: calls
/// `step(squarings, Some(k))` for each window, meaning "square the
/// accumulator `squarings` times, then multiply by `base^(2k+1)`", and
/// `step(squarings, None)` for trailing zero bits. Variable time in `exp`.
pub(crate) fn sliding_windows(
    exp: &[u64],
    bits: u32,
    window: u32,
    mut step: impl FnMut(u32, Option<usize>),
) {
    let bit = |i: u32| {
        exp.get((i / 64) as usize)
            .is_some_and(|w| (w >> (i % 64)) & 1 == 1)
    };
    let mut pending = 0u32;
    let mut i = i64::from(bits) - 1;
    while i >= 0 {
        if !bit(i as u32) {
            pending += 1;
            i -= 1;
            continue;
        }
        let mut low = (i - i64::from(window) + 1).max(0);
        while !bit(low as u32) {
            low += 1;
        }
        let mut value = 0usize;
        for j in (low..=i).rev() {
            value = (value << 1) | usize::from(bit(j as u32));
        }
        step(pending + (i - low + 1) as u32, Some(value >> 1));
        pending = 0;
        i = low - 1;
    }
    if pending > 0 {
        step(pending, None);
    }
}

fn sliding_window(bits: u32) -> u32 {
    match bits {
        0..=8 => 1,
        9..=24 => 2,
        25..=80 => 3,
        81..=240 => 4,
        241..=672 => 5,
        _ => 6,
    }
}

/// The limb loop shared by both kernels, one limb of `b` at a time:
/// `acc += a·b_i + m·y` with `y` chosen to clear the lowest limb, then a
/// shift down by one limb. Low and high halves of the 104-bit products are
/// added to separate positions, exactly as the IFMA instructions do.
fn amm_portable(modulus: &Modulus, a: &[u64], b: &[u64], out: &mut [u64]) {
    let padded = modulus.padded;
    let m = &modulus.m;
    let mut acc = vec![0u64; padded + 1];
    for &bi in &b[..modulus.n] {
        for j in 0..padded {
            acc[j] = acc[j].wrapping_add(((u128::from(a[j]) * u128::from(bi)) as u64) & MASK);
        }
        let y = (acc[0].wrapping_mul(modulus.k0)) & MASK;
        for j in 0..padded {
            acc[j] = acc[j].wrapping_add(((u128::from(m[j]) * u128::from(y)) as u64) & MASK);
        }
        let carry = acc[0] >> LIMB_BITS;
        for j in 0..padded {
            acc[j] = acc[j + 1];
        }
        acc[padded] = 0;
        acc[0] = acc[0].wrapping_add(carry);
        for j in 0..padded {
            let hi_a = ((u128::from(a[j]) * u128::from(bi)) >> LIMB_BITS) as u64;
            let hi_m = ((u128::from(m[j]) * u128::from(y)) >> LIMB_BITS) as u64;
            acc[j] = acc[j].wrapping_add(hi_a).wrapping_add(hi_m);
        }
    }
    let mut carry = 0u64;
    for (o, &v) in out.iter_mut().zip(&acc[..padded]) {
        let v = v.wrapping_add(carry);
        *o = v & MASK;
        carry = v >> LIMB_BITS;
    }
}

mod batch;
#[cfg(target_arch = "x86_64")]
mod ifma;
#[cfg(target_arch = "x86_64")]
mod ifma_mb;
mod injected;

fn select_kernel(padded: usize) -> Kernel {
    if std::env::var_os("VEIL_PORTABLE_ARITH").is_some() {
        return amm_portable;
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(kernel) = ifma::kernel(padded) {
        return kernel;
    }
    let _ = padded;
    amm_portable
}

#[cfg(test)]
impl Modulus {
    pub(crate) fn with_portable_kernel(mut self) -> Self {
        self.kernel = amm_portable;
        self.batch = None;
        self
    }

    pub(crate) fn uses_portable_kernel(&self) -> bool {
        self.kernel as usize == amm_portable as *const () as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crypto_bigint::ConcatenatingMul;
    use crypto_bigint::{Odd, RandomBits};
    use rand::SeedableRng;
    use rand::rngs::ChaCha20Rng;

    pub(super) fn random_odd(rng: &mut ChaCha20Rng, bits: u32) -> BoxedUint {
        let mut words = u64_words(&BoxedUint::random_bits(rng, bits));
        words[0] |= 1;
        let top = (bits - 1) as usize;
        words[top / 64] |= 1 << (top % 64);
        from_u64_words(&words)
    }

    fn reference_mulmod(a: &BoxedUint, b: &BoxedUint, m: &BoxedUint) -> BoxedUint {
        let bits = m.bits_precision();
        let nz = NonZero::new(m.resize_unchecked(2 * bits)).expect("odd");
        a.resize_unchecked(bits)
            .concatenating_mul(&b.resize_unchecked(bits))
            .resize_unchecked(2 * bits)
            .rem(&nz)
            .resize_unchecked(bits)
    }

    fn check_size(bits: u32, seed: u64) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let m = random_odd(&mut rng, bits);
        let nz = NonZero::new(m.clone()).expect("odd");
        let fast = Modulus::new(&m, bits, Width::Full);
        let slow = Modulus::new(&m, bits, Width::Full).with_portable_kernel();
        for _ in 0..20 {
            let a = BoxedUint::random_bits(&mut rng, bits).rem(&nz);
            let b = BoxedUint::random_bits(&mut rng, bits).rem(&nz);
            let expected = reference_mulmod(&a, &b, &m);
            for ctx in [&fast, &slow] {
                let got = ctx.retrieve(&ctx.mul(&ctx.enter(&a), &ctx.enter(&b)));
                assert_eq!(got, expected, "bits={bits}");
            }
        }
        // Long chains keep values below 2m without reduction.
        let a = BoxedUint::random_bits(&mut rng, bits).rem(&nz);
        let mut x = fast.enter(&a);
        let mut y = slow.enter(&a);
        let mut reference = a.clone();
        for _ in 0..50 {
            x = fast.sqr(&x);
            y = slow.sqr(&y);
            reference = reference_mulmod(&reference, &reference, &m);
        }
        assert_eq!(fast.retrieve(&x), reference);
        assert_eq!(slow.retrieve(&y), reference);
    }

    #[test]
    fn multiplication_matches_crypto_bigint() {
        for (i, bits) in [1024u32, 1536, 2048, 3072, 4096, 6144]
            .into_iter()
            .enumerate()
        {
            check_size(bits, i as u64);
        }
    }

    #[test]
    fn the_ifma_kernel_is_used_where_the_cpu_has_it() {
        let m = random_odd(&mut ChaCha20Rng::seed_from_u64(3), 4096);
        let ctx = Modulus::new(&m, 4096, Width::Full);
        let forced_portable = std::env::var_os("VEIL_PORTABLE_ARITH").is_some();
        #[cfg(target_arch = "x86_64")]
        let ifma =
            std::is_x86_feature_detected!("avx512ifma") && std::is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        let ifma = false;
        assert_eq!(ctx.uses_portable_kernel(), forced_portable || !ifma);
    }

    #[test]
    fn moduli_just_below_the_radix_limit() {
        // m close to 2^(52n-2): the largest for which 4m < R still holds.
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        for bits in [2078u32, 4106] {
            let m = random_odd(&mut rng, bits);
            let ctx = Modulus::new(&m, bits, Width::Full);
            let nz = NonZero::new(m.clone()).expect("odd");
            let a = BoxedUint::random_bits(&mut rng, bits).rem(&nz);
            let b = BoxedUint::random_bits(&mut rng, bits).rem(&nz);
            let got = ctx.retrieve(&ctx.mul(&ctx.enter(&a), &ctx.enter(&b)));
            assert_eq!(got, reference_mulmod(&a, &b, &m));
        }
    }

    #[test]
    fn exponentiations_agree() {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let bits = 2048;
        let m = random_odd(&mut rng, bits);
        let odd = Odd::new(m.clone()).expect("odd");
        let ctx = Modulus::new(&m, bits, Width::Half);
        let nz = NonZero::new(m.clone()).expect("odd");
        let base = BoxedUint::random_bits(&mut rng, bits).rem(&nz);
        let exp = BoxedUint::random_bits(&mut rng, 1024);
        let mont = crypto_bigint::modular::BoxedMontyForm::new(
            base.clone(),
            &crypto_bigint::modular::BoxedMontyParams::new(odd.clone()),
        );
        let expected = mont.pow(&exp).retrieve();
        let b = ctx.enter(&base);
        assert_eq!(
            ctx.retrieve(&ctx.pow_ct(&b, &u64_words(&exp), 1024)),
            expected
        );
        assert_eq!(ctx.retrieve(&ctx.pow_vartime(&b, &exp)), expected);
        assert_eq!(
            ctx.retrieve(&ctx.pow_u128(&b, 0)),
            BoxedUint::one_with_precision(bits)
        );
        assert_eq!(ctx.retrieve(&ctx.pow_u128(&b, 1)), base);
    }

    #[test]
    fn inversion_modulo_a_square_matches_a_direct_inversion() {
        let mut rng = ChaCha20Rng::seed_from_u64(14);
        let root = random_odd(&mut rng, 2048);
        let wide = root.clone().resize_unchecked(4096);
        let square = wide.wrapping_mul(&wide);
        let root = Odd::new(root).expect("odd");
        let square = Odd::new(square).expect("odd");
        let ctx = Modulus::new(square.as_ref(), 4096, Width::Full);
        let nz = NonZero::new(square.as_ref().clone()).expect("odd");
        let modulus = SquareModulus {
            root: &root,
            square: &square,
        };
        let mut values: Vec<Elem> = (0..6)
            .map(|_| ctx.enter(&BoxedUint::random_bits(&mut rng, 4096).rem(&nz)))
            .collect();
        // c ≡ 1 (mod root): its inverse modulo root is 1 and needs the step;
        // 1 itself needs none.
        values.push(ctx.enter(&wide.wrapping_add(BoxedUint::one_with_precision(4096))));
        values.push(ctx.one());
        // The root is random, not prime: a value sharing a factor with it
        // has no inverse either way.
        let mut units = Vec::new();
        for v in &values {
            let direct: Option<BoxedUint> =
                Option::from(ctx.retrieve(v).invert_odd_mod_vartime(&square));
            match (direct, ctx.invert_vartime(v, modulus)) {
                (Some(direct), Some(lifted)) => {
                    assert_eq!(ctx.retrieve(&lifted), direct);
                    units.push(v.clone());
                }
                (None, None) => {}
                _ => panic!("the lifted inversion disagrees on whether a value is a unit"),
            }
        }
        assert!(units.len() >= 5, "{} units", units.len());
        let refs: Vec<&Elem> = units.iter().collect();
        let batch = ctx.batch_invert_vartime(&refs, modulus).expect("units");
        for (v, inv) in units.iter().zip(&batch) {
            assert_eq!(
                ctx.retrieve(&ctx.mul(v, inv)),
                BoxedUint::one_with_precision(4096)
            );
            assert!(ctx.equal(inv, &ctx.invert_vartime(v, modulus).expect("unit")));
        }
        // A multiple of the root is no unit modulo its square.
        assert!(ctx.invert_vartime(&ctx.enter(&wide), modulus).is_none());
    }

    #[test]
    fn limb_conversions_round_trip() {
        let mut rng = ChaCha20Rng::seed_from_u64(13);
        let x = BoxedUint::random_bits(&mut rng, 4096);
        let limbs = words_to_limbs(&u64_words(&x), 80);
        assert!(limbs.iter().all(|l| *l <= MASK));
        assert_eq!(limbs_to_words(&limbs, 64), *u64_words(&x));
    }
}
