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
//! layout of Intel's ipp-crypto "mbx" and Paillier library; no maintained
//! Rust crate offers it, hence these hand-written intrinsics (the second and
//! last file of the workspace with `unsafe`, all behind runtime feature
//! detection).

use super::batch::Lane8;
use super::{LIMB_BITS, MASK, Modulus};
use std::arch::x86_64::*;

/// Whether this CPU can run the kernels below.
pub(super) fn available() -> bool {
    std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512ifma")
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
            let mut t = _mm512_madd52lo_epu64(_mm512_load_si512(op), a0, bi);
            // y depends only on the low 52 bits of t, which is all
            // vpmadd52luq reads of it.
            let y = _mm512_madd52lo_epu64(zero, t, k0v);
            t = _mm512_madd52lo_epu64(t, m0, y);
            // The low 52 bits of t are now zero: what is left moves up.
            let mut carry = _mm512_srli_epi64(t, LIMB_BITS);
            let (mut a_prev, mut m_prev) = (a0, m0);
            // Limb j's low halves and limb j-1's high halves land in
            // position j, which after the shift by one limb is j-1.
            for j in 1..n {
                let aj = _mm512_load_si512(ap.add(j));
                let mj = _mm512_set1_epi64(*mp.add(j) as i64);
                let mut t = _mm512_add_epi64(_mm512_load_si512(op.add(j)), carry);
                t = _mm512_madd52lo_epu64(t, aj, bi);
                t = _mm512_madd52lo_epu64(t, mj, y);
                t = _mm512_madd52hi_epu64(t, a_prev, bi);
                t = _mm512_madd52hi_epu64(t, m_prev, y);
                _mm512_store_si512(op.add(j - 1), t);
                carry = zero;
                a_prev = aj;
                m_prev = mj;
            }
            let mut t = _mm512_madd52hi_epu64(carry, a_prev, bi);
            t = _mm512_madd52hi_epu64(t, m_prev, y);
            _mm512_store_si512(op.add(n - 1), t);
        }
        let mask = _mm512_set1_epi64(MASK as i64);
        let mut carry = zero;
        for j in 0..n {
            let v = _mm512_add_epi64(_mm512_load_si512(op.add(j)), carry);
            _mm512_store_si512(op.add(j), _mm512_and_si512(v, mask));
            carry = _mm512_srli_epi64(v, LIMB_BITS);
        }
    }
}

/// `out[j] = table[digits[lane]][j]` lane by lane, reading every entry in
/// full: the addresses touched do not depend on the (secret) digits.
/// Safety: avx512f; every entry of `table` and `out` hold `n` vectors.
#[target_feature(enable = "avx512f")]
unsafe fn select8(table: &[Vec<Lane8>], digits: &Lane8, n: usize, out: &mut [Lane8]) {
    // SAFETY: indices stay below n, which every slice covers (checked by
    // the caller); `Lane8` is 64-byte aligned.
    unsafe {
        let d = _mm512_load_si512(std::ptr::from_ref(digits).cast());
        let op = out.as_mut_ptr().cast::<__m512i>();
        for j in 0..n {
            _mm512_store_si512(op.add(j), _mm512_setzero_si512());
        }
        for (t, entry) in table.iter().enumerate() {
            let hit = _mm512_cmpeq_epu64_mask(d, _mm512_set1_epi64(t as i64));
            let ep = entry.as_ptr().cast::<__m512i>();
            for j in 0..n {
                let v = _mm512_mask_mov_epi64(
                    _mm512_load_si512(op.add(j)),
                    hit,
                    _mm512_load_si512(ep.add(j)),
                );
                _mm512_store_si512(op.add(j), v);
            }
        }
    }
}

/// `out[j] = table[digits[lane]][j]` for a table of ordinary (untransposed)
/// elements shared by all lanes: each entry's limb is broadcast and kept in
/// the lanes whose digit names it. Every entry is read in full. Safety:
/// avx512f; every entry of `table` holds at least `n` limbs, `out` `n`
/// vectors.
#[target_feature(enable = "avx512f")]
unsafe fn select8_shared(table: &[super::Elem], digits: &Lane8, n: usize, out: &mut [Lane8]) {
    // SAFETY: as for `select8`; entries are read through checked lengths.
    unsafe {
        let d = _mm512_load_si512(std::ptr::from_ref(digits).cast());
        let op = out.as_mut_ptr().cast::<__m512i>();
        for j in 0..n {
            _mm512_store_si512(op.add(j), _mm512_setzero_si512());
        }
        for (t, entry) in table.iter().enumerate() {
            let hit = _mm512_cmpeq_epu64_mask(d, _mm512_set1_epi64(t as i64));
            let ep = entry.0.as_ptr();
            for j in 0..n {
                let v =
                    _mm512_mask_set1_epi64(_mm512_load_si512(op.add(j)), hit, *ep.add(j) as i64);
                _mm512_store_si512(op.add(j), v);
            }
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

/// Safe entry point for [`select8`] (see [`mul`]).
pub(super) fn select(table: &[Vec<Lane8>], digits: &Lane8, n: usize, out: &mut [Lane8]) {
    assert!(out.len() >= n && table.iter().all(|e| e.len() >= n));
    // SAFETY: features detected at selection, lengths checked.
    unsafe { select8(table, digits, n, out) }
}

/// Safe entry point for [`select8_shared`] (see [`mul`]).
pub(super) fn select_shared(table: &[super::Elem], digits: &Lane8, n: usize, out: &mut [Lane8]) {
    assert!(out.len() >= n && table.iter().all(|e| e.0.len() >= n));
    // SAFETY: features detected at selection, lengths checked.
    unsafe { select8_shared(table, digits, n, out) }
}
