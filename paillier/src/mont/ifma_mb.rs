//! The multi-buffer AVX-512 IFMA kernels: eight independent Montgomery
//! multiplications modulo the same modulus, one per 64-bit lane, with the
//! numbers stored transposed (limb j of all eight in one 512-bit register).
//!
//! The single-operation kernel ([`super::ifma`]) spreads one number's limbs
//! across the lanes, so every limb step waits on a short serial chain (the
//! quotient digit y, the shift across registers). Here each lane is its own
//! multiplication: the shift is a renaming of registers, y is computed for
//! eight operations at once, and the 4·n² multiply-adds of one step are
//! independent of each other, so the multipliers stay busy. This is the
//! layout of Intel's ipp-crypto "mbx" and Paillier library (both C/C++ and
//! assembly); no maintained Rust crate offers multi-buffer IFMA arithmetic,
//! hence these hand-written intrinsics (with [`super::ifma`], the crate's
//! only `unsafe`, all behind runtime feature detection).
//!
//! Measured on the project's 2-core AMD EPYC machine (one 52×52-bit
//! multiply-add per cycle for 512-bit registers): a batch of eight 2048-bit
//! multiplications takes 1.8 µs, which is that throughput bound (4·n² =
//! 6,400 multiply-adds), against 0.42 µs for one with the single-operation
//! kernel; a batch of squares 1.5 µs.

// The workspace denies unsafe code; intrinsics need it (crate doc).
#![allow(unsafe_code)]
use super::batch::Lane8;
use super::{LIMB_BITS, MASK, Modulus};
use std::arch::x86_64::*;

/// Whether this CPU can run the kernels below.
pub(super) fn available() -> bool {
    std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512ifma")
}

/// The quotient digit y that clears position 0 (holding `t`) and what is
/// left of it after `m_0·y`: added to position 1 when there is one, else
/// returned as the carry into the top position. y depends only on the low
/// 52 bits of t, which is all vpmadd52luq reads of it. Safety: avx512f and
/// avx512ifma; `op` points to `n` vectors.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
unsafe fn reduce_low(
    op: *mut __m512i,
    t: __m512i,
    m0: __m512i,
    k0v: __m512i,
    n: usize,
) -> (__m512i, __m512i) {
    let zero = _mm512_setzero_si512();
    let y = _mm512_madd52lo_epu64(zero, t, k0v);
    let carry = _mm512_srli_epi64(_mm512_madd52lo_epu64(t, m0, y), LIMB_BITS);
    if n == 1 {
        return (y, carry);
    }
    // SAFETY: n > 1, so position 1 is inside the caller's n vectors.
    unsafe {
        let t = _mm512_add_epi64(_mm512_load_si512(op.add(1)), carry);
        _mm512_store_si512(op.add(1), t);
    }
    (y, zero)
}

/// Carries every position into the next, leaving limbs below 2^52.
/// Safety: avx512f; `op` points to `n` vectors.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn normalize(op: *mut __m512i, n: usize) {
    let mask = _mm512_set1_epi64(MASK as i64);
    let mut carry = _mm512_setzero_si512();
    for j in 0..n {
        // SAFETY: j < n, inside the caller's vectors.
        unsafe {
            let v = _mm512_add_epi64(_mm512_load_si512(op.add(j)), carry);
            _mm512_store_si512(op.add(j), _mm512_and_si512(v, mask));
            carry = _mm512_srli_epi64(v, LIMB_BITS);
        }
    }
}

/// Eight almost-Montgomery products `a·b·R^-1` (each below `2m` for inputs
/// below `2m`), limb for limb the same integers as the single-operation
/// kernels compute. Safety: the CPU must support avx512f and avx512ifma;
/// `a`, `b` and `out` must hold `n` vectors and `m` at least `n` limbs.
#[target_feature(enable = "avx512f,avx512ifma")]
unsafe fn amm8(a: &[Lane8], b: &[Lane8], m: &[u64], k0: u64, n: usize, out: &mut [Lane8]) {
    // SAFETY: every index is below n, which the caller guarantees each
    // slice covers; `Lane8` is 64-byte aligned, so the aligned loads and
    // stores are valid.
    unsafe {
        let zero = _mm512_setzero_si512();
        let k0v = _mm512_set1_epi64(k0 as i64);
        let ap = a.as_ptr().cast::<__m512i>();
        let bp = b.as_ptr().cast::<__m512i>();
        let op = out.as_mut_ptr().cast::<__m512i>();
        let mp = m.as_ptr();
        for j in 0..n {
            _mm512_store_si512(op.add(j), zero);
        }
        for i in 0..n {
            let bi = _mm512_load_si512(bp.add(i));
            let a0 = _mm512_load_si512(ap);
            let m0 = _mm512_set1_epi64(*mp as i64);
            let t = _mm512_madd52lo_epu64(_mm512_load_si512(op), a0, bi);
            let (y, carry) = reduce_low(op, t, m0, k0v, n);
            let (mut a_prev, mut m_prev) = (a0, m0);
            // Limb j's low halves and limb j-1's high halves land in
            // position j, which after the shift by one limb is j-1.
            for j in 1..n {
                let aj = _mm512_load_si512(ap.add(j));
                let mj = _mm512_set1_epi64(*mp.add(j) as i64);
                let mut t = _mm512_madd52lo_epu64(_mm512_load_si512(op.add(j)), aj, bi);
                t = _mm512_madd52lo_epu64(t, mj, y);
                t = _mm512_madd52hi_epu64(t, a_prev, bi);
                t = _mm512_madd52hi_epu64(t, m_prev, y);
                _mm512_store_si512(op.add(j - 1), t);
                a_prev = aj;
                m_prev = mj;
            }
            let mut t = _mm512_madd52hi_epu64(carry, a_prev, bi);
            t = _mm512_madd52hi_epu64(t, m_prev, y);
            _mm512_store_si512(op.add(n - 1), t);
        }
        normalize(op, n);
    }
}

/// Eight almost-Montgomery squares: the same integers as [`amm8`] with
/// `b = a` (the Montgomery quotient is unique below R) for about 3/4 of its
/// multiply-adds. Row i adds `a_i²` and `2·a_i·a_j` for `j > i` only; every
/// product reaching the digit that row i reduces comes from rows up to i,
/// so the interleaved reduction stays exact. `2·a_j` has 53 bits where
/// IFMA reads 52, so the doubled limbs are taken from `2a` written in
/// 52-bit limbs: `2·Σ_{j>i} a_j·B^j` is `(2a_{i+1} mod B)·B^(i+1)` plus
/// `Σ_{j>i+1} D_j·B^j`, D being the limbs of 2a (the top bit of a_i goes to
/// `D_{i+1}`, not to row i; a < R/2 leaves nothing above the last limb).
/// Safety: the CPU must support avx512f and avx512ifma; `a` must hold `n`
/// vectors, `out` `2n`, `m` at least `n` limbs.
#[target_feature(enable = "avx512f,avx512ifma")]
unsafe fn ams8(a: &[Lane8], m: &[u64], k0: u64, n: usize, out: &mut [Lane8]) {
    // SAFETY: indices stay below n for `a` and `m`, and below 2n for
    // `out`, which the caller guarantees; `Lane8` is 64-byte aligned.
    unsafe {
        let zero = _mm512_setzero_si512();
        let mask = _mm512_set1_epi64(MASK as i64);
        let one = _mm512_set1_epi64(1);
        let k0v = _mm512_set1_epi64(k0 as i64);
        let ap = a.as_ptr().cast::<__m512i>();
        let op = out.as_mut_ptr().cast::<__m512i>();
        let dp = op.add(n);
        let mp = m.as_ptr();
        let mut below = zero;
        for j in 0..n {
            let aj = _mm512_load_si512(ap.add(j));
            let twice = _mm512_or_si512(
                _mm512_slli_epi64(aj, 1),
                _mm512_srli_epi64(below, LIMB_BITS - 1),
            );
            _mm512_store_si512(dp.add(j), _mm512_and_si512(twice, mask));
            _mm512_store_si512(op.add(j), zero);
            below = aj;
        }
        for i in 0..n {
            let ai = _mm512_load_si512(ap.add(i));
            let m0 = _mm512_set1_epi64(*mp as i64);
            let mut t = _mm512_load_si512(op);
            if i == 0 {
                t = _mm512_madd52lo_epu64(t, ai, ai);
            }
            let (y, carry) = reduce_low(op, t, m0, k0v, n);
            // Position p (absolute i + p) moves to p - 1. Below p = i only
            // the reduction adds; at i and i+1 the square a_i²; above, the
            // doubled cross products.
            let mut m_prev = m0;
            macro_rules! reduce {
                ($p:expr) => {{
                    let mj = _mm512_set1_epi64(*mp.add($p) as i64);
                    let mut t = _mm512_madd52lo_epu64(_mm512_load_si512(op.add($p)), mj, y);
                    t = _mm512_madd52hi_epu64(t, m_prev, y);
                    m_prev = mj;
                    t
                }};
            }
            for p in 1..i.min(n) {
                let t = reduce!(p);
                _mm512_store_si512(op.add(p - 1), t);
            }
            if i >= 1 {
                let mut t = reduce!(i);
                t = _mm512_madd52lo_epu64(t, ai, ai);
                _mm512_store_si512(op.add(i - 1), t);
            }
            // 2a_{i+1} mod B: D_{i+1} without the bit a_i carried into it.
            let mut d_prev = zero;
            if i + 1 < n {
                d_prev = _mm512_andnot_si512(one, _mm512_load_si512(dp.add(i + 1)));
                let mut t = reduce!(i + 1);
                t = _mm512_madd52hi_epu64(t, ai, ai);
                t = _mm512_madd52lo_epu64(t, ai, d_prev);
                _mm512_store_si512(op.add(i), t);
            }
            for p in i + 2..n {
                let mut t = reduce!(p);
                let d = _mm512_load_si512(dp.add(p));
                t = _mm512_madd52lo_epu64(t, ai, d);
                t = _mm512_madd52hi_epu64(t, ai, d_prev);
                _mm512_store_si512(op.add(p - 1), t);
                d_prev = d;
            }
            let mut t = _mm512_madd52hi_epu64(carry, m_prev, y);
            t = if i + 1 == n {
                _mm512_madd52hi_epu64(t, ai, ai)
            } else {
                _mm512_madd52hi_epu64(t, ai, d_prev)
            };
            _mm512_store_si512(op.add(n - 1), t);
        }
        normalize(op, n);
    }
}

/// Most table entries the selections below take (their masks live on the
/// stack).
pub(super) const SELECT_MAX_ENTRIES: usize = 256;

/// `out[j] = table[digits[lane]][j]` lane by lane, reading every entry in
/// full: the addresses touched do not depend on the (secret) digits. Limb
/// by limb, so that the selected value stays in registers. Safety: avx512f;
/// every entry of `table` and `out` hold `n` vectors; at most
/// `SELECT_MAX_ENTRIES` entries.
#[target_feature(enable = "avx512f")]
unsafe fn select8(table: &[Vec<Lane8>], digits: &Lane8, n: usize, out: &mut [Lane8]) {
    // SAFETY: indices stay below n, which every slice covers, and below
    // the table length for `hits` and `rows` (checked by the caller);
    // `Lane8` is 64-byte aligned.
    unsafe {
        let d = _mm512_load_si512(std::ptr::from_ref(digits).cast());
        let mut hits = [0u8; SELECT_MAX_ENTRIES];
        let mut rows = [std::ptr::null::<__m512i>(); SELECT_MAX_ENTRIES];
        for (t, entry) in table.iter().enumerate() {
            hits[t] = _mm512_cmpeq_epu64_mask(d, _mm512_set1_epi64(t as i64));
            rows[t] = entry.as_ptr().cast();
        }
        let op = out.as_mut_ptr().cast::<__m512i>();
        let count = table.len();
        for j in 0..n {
            let (mut x0, mut x1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
            let mut t = 0;
            while t + 1 < count {
                x0 = _mm512_mask_mov_epi64(x0, hits[t], _mm512_load_si512(rows[t].add(j)));
                x1 = _mm512_mask_mov_epi64(x1, hits[t + 1], _mm512_load_si512(rows[t + 1].add(j)));
                t += 2;
            }
            if t < count {
                x0 = _mm512_mask_mov_epi64(x0, hits[t], _mm512_load_si512(rows[t].add(j)));
            }
            _mm512_store_si512(op.add(j), _mm512_or_si512(x0, x1));
        }
    }
}

/// `out[j] = table[digits[lane]][j]` for a table of ordinary (untransposed)
/// elements shared by all lanes: each entry's limb is broadcast and kept in
/// the lanes whose digit names it. Every entry is read in full. Safety:
/// avx512f; every entry of `table` holds at least `n` limbs, `out` `n`
/// vectors; at most `SELECT_MAX_ENTRIES` entries.
#[target_feature(enable = "avx512f")]
unsafe fn select8_shared(table: &[super::Elem], digits: &Lane8, n: usize, out: &mut [Lane8]) {
    // SAFETY: as for `select8`; entries are read through checked lengths.
    unsafe {
        let d = _mm512_load_si512(std::ptr::from_ref(digits).cast());
        let mut hits = [0u8; SELECT_MAX_ENTRIES];
        let mut rows = [std::ptr::null::<u64>(); SELECT_MAX_ENTRIES];
        for (t, entry) in table.iter().enumerate() {
            hits[t] = _mm512_cmpeq_epu64_mask(d, _mm512_set1_epi64(t as i64));
            rows[t] = entry.0.as_ptr();
        }
        let op = out.as_mut_ptr().cast::<__m512i>();
        let count = table.len();
        for j in 0..n {
            let (mut x0, mut x1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
            let mut t = 0;
            while t + 1 < count {
                x0 = _mm512_mask_mov_epi64(x0, hits[t], _mm512_set1_epi64(*rows[t].add(j) as i64));
                x1 = _mm512_mask_mov_epi64(
                    x1,
                    hits[t + 1],
                    _mm512_set1_epi64(*rows[t + 1].add(j) as i64),
                );
                t += 2;
            }
            if t < count {
                x0 = _mm512_mask_mov_epi64(x0, hits[t], _mm512_set1_epi64(*rows[t].add(j) as i64));
            }
            _mm512_store_si512(op.add(j), _mm512_or_si512(x0, x1));
        }
    }
}

/// Safe entry point for [`amm8`]; only reachable through a
/// [`super::batch::Kernels`] built after [`available`] returned true.
pub(super) fn mul(modulus: &Modulus, a: &[Lane8], b: &[Lane8], out: &mut [Lane8]) {
    let n = modulus.n;
    assert!(n > 0 && a.len() >= n && b.len() >= n && out.len() >= n && modulus.m.len() >= n);
    // SAFETY: the features were detected before this kernel was selected,
    // and the lengths were just checked.
    unsafe { amm8(a, b, &modulus.m, modulus.k0, n, out) }
}

/// Safe entry point for [`ams8`] (see [`mul`]): the square lands in
/// `out[..n]`; `out` must hold `2n` vectors.
pub(super) fn sqr(modulus: &Modulus, a: &[Lane8], out: &mut [Lane8]) {
    let n = modulus.n;
    assert!(n > 0 && a.len() >= n && out.len() >= 2 * n && modulus.m.len() >= n);
    // SAFETY: the features were detected before this kernel was selected,
    // and the lengths were just checked.
    unsafe { ams8(a, &modulus.m, modulus.k0, n, out) }
}

/// Safe entry point for [`select8`] (see [`mul`]).
pub(super) fn select(table: &[Vec<Lane8>], digits: &Lane8, n: usize, out: &mut [Lane8]) {
    assert!(
        out.len() >= n && table.len() <= SELECT_MAX_ENTRIES && table.iter().all(|e| e.len() >= n)
    );
    // SAFETY: features detected at selection, lengths checked.
    unsafe { select8(table, digits, n, out) }
}

/// Safe entry point for [`select8_shared`] (see [`mul`]).
pub(super) fn select_shared(table: &[super::Elem], digits: &Lane8, n: usize, out: &mut [Lane8]) {
    assert!(
        out.len() >= n && table.len() <= SELECT_MAX_ENTRIES && table.iter().all(|e| e.0.len() >= n)
    );
    // SAFETY: features detected at selection, lengths checked.
    unsafe { select8_shared(table, digits, n, out) }
}
