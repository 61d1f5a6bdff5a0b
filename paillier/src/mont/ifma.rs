//! The AVX-512 IFMA Montgomery kernel: the same almost-Montgomery
//! multiplication as the portable kernel, eight 52-bit limbs per register.
//!
//! Written by hand because no maintained crate offers 52-bit-radix IFMA
//! Montgomery multiplication in Rust; with [`super::ifma_mb`] it is one of
//! the crate's two files with `unsafe` (intrinsics behind runtime feature
//! detection).

// The workspace denies unsafe code; intrinsics need it (crate doc).
#![allow(unsafe_code)]
// Register arrays are walked in lockstep by index, as the hardware does.
#![allow(clippy::needless_range_loop)]

use super::{LIMB_BITS, MASK, Modulus};
use std::arch::x86_64::*;

/// The IFMA kernel for `8·K` limbs. Safety: the CPU must support
/// avx512f and avx512ifma, and every slice must hold `8·K` limbs.
#[target_feature(enable = "avx512f,avx512ifma")]
unsafe fn amm<const K: usize>(a: &[u64], b: &[u64], m: &[u64], k0: u64, n: usize, out: &mut [u64]) {
    // SAFETY: the caller guarantees the lengths; loads and stores are
    // unaligned and stay inside the slices.
    unsafe {
        let zero = _mm512_setzero_si512();
        let mut av = [zero; K];
        let mut mv = [zero; K];
        for k in 0..K {
            av[k] = _mm512_loadu_si512(a.as_ptr().add(8 * k).cast());
            mv[k] = _mm512_loadu_si512(m.as_ptr().add(8 * k).cast());
        }
        let mut acc = [zero; K];
        let k0v = _mm512_set1_epi64(k0 as i64);
        for i in 0..n {
            let bi = _mm512_set1_epi64(*b.get_unchecked(i) as i64);
            for k in 0..K {
                acc[k] = _mm512_madd52lo_epu64(acc[k], av[k], bi);
            }
            let low = _mm512_broadcastq_epi64(_mm512_castsi512_si128(acc[0]));
            let y = _mm512_madd52lo_epu64(zero, low, k0v);
            for k in 0..K {
                acc[k] = _mm512_madd52lo_epu64(acc[k], mv[k], y);
            }
            let carry = _mm512_maskz_srli_epi64(1, acc[0], LIMB_BITS);
            for k in 0..K - 1 {
                acc[k] = _mm512_alignr_epi64(acc[k + 1], acc[k], 1);
            }
            acc[K - 1] = _mm512_alignr_epi64(zero, acc[K - 1], 1);
            acc[0] = _mm512_add_epi64(acc[0], carry);
            for k in 0..K {
                acc[k] = _mm512_madd52hi_epu64(acc[k], av[k], bi);
            }
            for k in 0..K {
                acc[k] = _mm512_madd52hi_epu64(acc[k], mv[k], y);
            }
        }
        normalize::<K>(&mut acc);
        for k in 0..K {
            _mm512_storeu_si512(out.as_mut_ptr().add(8 * k).cast(), acc[k]);
        }
    }
}

/// Brings every lane below 2^52 without branches. One vector step moves
/// each lane's excess (< 2^12) up one limb; what can still overflow is a
/// lane that was then at least 2^52 (it generates a carry of one) and
/// lanes equal to 2^52-1 pass a carry on. The ripple is computed on
/// bit masks with one integer addition, carry-lookahead style.
#[target_feature(enable = "avx512f,avx512ifma")]
unsafe fn normalize<const K: usize>(acc: &mut [__m512i; K]) {
    let mask = _mm512_set1_epi64(MASK as i64);
    let zero = _mm512_setzero_si512();
    let mut carries = [zero; K];
    for k in 0..K {
        carries[k] = _mm512_srli_epi64(acc[k], LIMB_BITS);
        acc[k] = _mm512_and_si512(acc[k], mask);
    }
    // Lane j receives the carry of lane j-1.
    let mut shifted = [zero; K];
    shifted[0] = _mm512_alignr_epi64(carries[0], zero, 7);
    for k in 1..K {
        shifted[k] = _mm512_alignr_epi64(carries[k], carries[k - 1], 7);
    }
    let mut generate: u128 = 0;
    let mut propagate: u128 = 0;
    for k in 0..K {
        acc[k] = _mm512_add_epi64(acc[k], shifted[k]);
        let g = _mm512_cmpgt_epu64_mask(acc[k], mask);
        let p = _mm512_cmpeq_epu64_mask(acc[k], mask);
        generate |= u128::from(g) << (8 * k);
        propagate |= u128::from(p) << (8 * k);
    }
    let receives = ((generate << 1).wrapping_add(propagate)) ^ propagate;
    let one = _mm512_set1_epi64(1);
    for k in 0..K {
        let bits = (receives >> (8 * k)) as u8;
        acc[k] = _mm512_mask_add_epi64(acc[k], bits, acc[k], one);
        acc[k] = _mm512_and_si512(acc[k], mask);
    }
}

fn run<const K: usize>(modulus: &Modulus, a: &[u64], b: &[u64], out: &mut [u64]) {
    assert!(a.len() == 8 * K && b.len() == 8 * K && out.len() == 8 * K && modulus.m.len() == 8 * K);
    // SAFETY: `select_kernel` only picks this kernel after detecting the
    // features, and the lengths were just checked.
    unsafe { amm::<K>(a, b, &modulus.m, modulus.k0, modulus.n, out) }
}

pub(super) fn kernel(padded: usize) -> Option<super::Kernel> {
    if !(std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512ifma")) {
        return None;
    }
    // K·8 lanes must hold n limbs plus the 128-bit carry masks.
    match padded / 8 {
        3 => Some(run::<3>),
        4 => Some(run::<4>),
        5 => Some(run::<5>),
        6 => Some(run::<6>),
        8 => Some(run::<8>),
        10 => Some(run::<10>),
        12 => Some(run::<12>),
        15 => Some(run::<15>),
        16 => Some(run::<16>),
        _ => None,
    }
}
