//! Exponentiations in batches of eight with the same modulus, on the
//! multi-buffer IFMA kernels ([`super::ifma_mb`]) where the CPU has them and
//! one operation after another on the single-operation kernels elsewhere
//! (or with `VEIL_PORTABLE_ARITH=1`).
//!
//! Each batched exponentiation performs, lane by lane, exactly the
//! multiplications of its single-operation counterpart in the same order,
//! and the multi-buffer kernel computes the same integers as the others, so
//! every result is bit-identical to the single-operation one (the tests
//! check it). The constant-time forms select table entries with per-lane
//! masks over the whole table, so lanes may hold different secret
//! exponents.

use super::{Elem, Modulus, bits_at};
use zeroize::Zeroize;

/// Operations per batch: the 64-bit lanes of a 512-bit register.
pub(crate) const LANES: usize = 8;

/// Live lanes from which a batch runs. A batch costs the same whatever
/// its number of live lanes. Modulo N² (79 limbs), where textbook noise
/// gains 1.36-1.38× from batches of eight (docs/results, 2026-11-29
/// 12:30), a batch costs 5.8 single operations, so it starts at six.
/// Modulo p² (40 limbs) a batch of eight costs 4.3 singles (1.8 µs
/// against 0.42 µs, crate README), but B's rounds of three or four
/// decryptions wait on their wall time, not their CPU: with batches from
/// five, pima-mlp's online latency was 8.3-9.1 ms p50 in three runs, from
/// three 6.9-8.4 ms in five (`cargo bench -p veil-bench --bench protocol`,
/// 2026-11-29 14:40-14:55), at the same CPU, so it stays at three.
fn min_lanes(limbs: usize) -> usize {
    if limbs <= 48 { 3 } else { 6 }
}

/// The comb of fixed-base noise gains 1.03-1.10× from a full batch (its
/// cost is table reads): only full batches pay.
const MIN_COMB_LANES: usize = LANES;

/// One limb of eight numbers, aligned for 512-bit loads and stores.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
pub(crate) struct Lane8(pub(crate) [u64; LANES]);

type MulKernel = fn(&Modulus, &[Lane8], &[Lane8], &mut [Lane8]);
type SqrKernel = fn(&Modulus, &[Lane8], &mut [Lane8]);
type SelectKernel = fn(&[Vec<Lane8>], &Lane8, usize, &mut [Lane8]);
type SelectSharedKernel = fn(&[Elem], &Lane8, usize, &mut [Lane8]);

/// The multi-buffer kernels, chosen once per modulus.
#[derive(Clone, Copy)]
pub(crate) struct Kernels {
    mul: MulKernel,
    /// Leaves the square in the first n of 2n vectors.
    sqr: SqrKernel,
    select: SelectKernel,
    select_shared: SelectSharedKernel,
}

/// The multi-buffer kernels if this CPU has them and the portable
/// arithmetic is not forced.
pub(super) fn select_kernels() -> Option<Kernels> {
    if std::env::var_os("VEIL_PORTABLE_ARITH").is_some() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    if super::ifma_mb::available() {
        return Some(Kernels {
            mul: super::ifma_mb::mul,
            sqr: super::ifma_mb::sqr,
            select: super::ifma_mb::select,
            select_shared: super::ifma_mb::select_shared,
        });
    }
    None
}

/// How many operations the batched forms run at once: eight with the
/// multi-buffer kernels, one without (callers split parallel work by it).
pub(crate) fn batch_width() -> usize {
    if select_kernels().is_some() { LANES } else { 1 }
}

fn wipe(v: &mut [Lane8]) {
    for lane in v.iter_mut() {
        lane.0.zeroize();
    }
}

/// Splits `0..count` into batches of at most eight and calls `batched` on
/// those worth batching, `single` on each index of the others.
fn in_batches<T>(
    count: usize,
    kernels: Option<Kernels>,
    min_lanes: usize,
    mut batched: impl FnMut(Kernels, std::ops::Range<usize>) -> Vec<T>,
    mut single: impl FnMut(usize) -> T,
) -> Vec<T> {
    let mut out = Vec::with_capacity(count);
    let mut start = 0;
    while start < count {
        let end = (start + LANES).min(count);
        match kernels {
            Some(k) if end - start >= min_lanes => out.extend(batched(k, start..end)),
            _ => out.extend((start..end).map(&mut single)),
        }
        start = end;
    }
    out
}

/// Eight elements in transposed form with their kernels.
struct Ctx<'a> {
    modulus: &'a Modulus,
    k: Kernels,
    /// Live lanes: multiplications are charged to the counter per lane.
    live: usize,
}

impl Ctx<'_> {
    fn zeros(&self) -> Vec<Lane8> {
        vec![Lane8::default(); self.modulus.n]
    }

    /// Room for a square before its reduction: the accumulator and scratch
    /// buffers of an exponentiation.
    fn wide(&self, mut v: Vec<Lane8>) -> Vec<Lane8> {
        v.resize(2 * self.modulus.n, Lane8::default());
        v
    }

    /// Transposes up to eight elements; missing lanes hold one.
    fn pack<'e>(&self, elems: impl Iterator<Item = &'e Elem>) -> Vec<Lane8> {
        let mut out = self.broadcast(&self.modulus.one);
        for (lane, e) in elems.enumerate().take(LANES) {
            for (limb, &v) in out.iter_mut().zip(&e.0) {
                limb.0[lane] = v;
            }
        }
        out
    }

    fn broadcast(&self, e: &Elem) -> Vec<Lane8> {
        e.0[..self.modulus.n]
            .iter()
            .map(|&v| Lane8([v; LANES]))
            .collect()
    }

    fn unpack(&self, v: &[Lane8]) -> Vec<Elem> {
        (0..self.live)
            .map(|lane| {
                let mut limbs = vec![0u64; self.modulus.padded];
                for (l, limb) in limbs.iter_mut().zip(&v[..self.modulus.n]) {
                    *l = limb.0[lane];
                }
                Elem(limbs)
            })
            .collect()
    }

    fn charge(&self, square: bool) {
        for _ in 0..self.live {
            self.modulus.charge(square);
        }
    }

    fn mul(&self, a: &[Lane8], b: &[Lane8]) -> Vec<Lane8> {
        let mut out = self.zeros();
        self.charge(false);
        (self.k.mul)(self.modulus, a, b, &mut out);
        out
    }

    /// `acc ← acc·b`, through `scratch`.
    fn mul_assign(
        &self,
        acc: &mut Vec<Lane8>,
        b: &[Lane8],
        scratch: &mut Vec<Lane8>,
        square: bool,
    ) {
        self.charge(square);
        (self.k.mul)(self.modulus, acc, b, scratch);
        std::mem::swap(acc, scratch);
    }

    /// `acc ← acc²`, through `scratch`; both must be wide.
    fn sqr_assign(&self, acc: &mut Vec<Lane8>, scratch: &mut Vec<Lane8>) {
        self.charge(true);
        (self.k.sqr)(self.modulus, acc, scratch);
        std::mem::swap(acc, scratch);
    }
}

impl Modulus {
    fn lanes(&self, k: Kernels, live: usize) -> Ctx<'_> {
        Ctx {
            modulus: self,
            k,
            live,
        }
    }

    /// [`Modulus::pow_ct`] of every base, with the exponent `exps[i]` (or
    /// `exps[0]` for all when it is the only one), in batches of eight.
    pub(crate) fn pow_ct_many(&self, bases: &[Elem], exps: &[&[u64]], exp_bits: u32) -> Vec<Elem> {
        let exp = |i: usize| if exps.len() == 1 { exps[0] } else { exps[i] };
        in_batches(
            bases.len(),
            self.batch,
            min_lanes(self.n),
            |k, range| {
                let ctx = self.lanes(k, range.len());
                let lane_exps: Vec<&[u64]> = range.clone().map(exp).collect();
                self.pow_ct8(&ctx, &bases[range], &lane_exps, exp_bits)
            },
            |i| self.pow_ct(&bases[i], exp(i), exp_bits),
        )
    }

    fn pow_ct8(&self, ctx: &Ctx<'_>, bases: &[Elem], exps: &[&[u64]], exp_bits: u32) -> Vec<Elem> {
        const WINDOW: u32 = 5;
        let base = ctx.pack(bases.iter());
        let mut table: Vec<Vec<Lane8>> = Vec::with_capacity(1 << WINDOW);
        table.push(ctx.broadcast(&self.one));
        table.push(base.clone());
        for i in 2..(1usize << WINDOW) {
            let next = ctx.mul(&table[i - 1], &base);
            table.push(next);
        }
        let windows = exp_bits.div_ceil(WINDOW);
        let mut acc = ctx.wide(ctx.broadcast(&self.one));
        let mut scratch = ctx.wide(ctx.zeros());
        let mut selected = ctx.zeros();
        let mut digits = Lane8::default();
        for w in (0..windows).rev() {
            if w + 1 != windows {
                for _ in 0..WINDOW {
                    ctx.sqr_assign(&mut acc, &mut scratch);
                }
            }
            for (d, e) in digits.0.iter_mut().zip(exps) {
                *d = bits_at(e, w * WINDOW, WINDOW);
            }
            (ctx.k.select)(&table, &digits, self.n, &mut selected);
            ctx.mul_assign(&mut acc, &selected, &mut scratch, false);
        }
        let out = ctx.unpack(&acc);
        for entry in &mut table {
            wipe(entry);
        }
        for v in [base, acc, scratch, selected].iter_mut() {
            wipe(v);
        }
        digits.0.zeroize();
        out
    }

    /// [`Modulus::pow_words_vartime`] of every base with one shared public
    /// exponent, in batches of eight: the exponent alone decides the
    /// sequence of operations, so the lanes run it together.
    pub(crate) fn pow_vartime_many(&self, bases: &[Elem], exp: &[u64]) -> Vec<Elem> {
        self.pow_vartime_with_many(bases, exp, &[], true)
    }

    /// [`Modulus::pow_vartime_with`] of every base with one shared public
    /// exponent and each lane's extras, in batches of eight. With
    /// `public_positions` the positions are no secret and lanes share a
    /// multiplication per position; otherwise every extra of every lane
    /// gets a multiplication of its own (the other lanes multiply by one),
    /// so that their number does not depend on where the positions fall.
    pub(crate) fn pow_vartime_with_many(
        &self,
        bases: &[Elem],
        exp: &[u64],
        extras: &[Vec<(u32, &Elem)>],
        public_positions: bool,
    ) -> Vec<Elem> {
        let none: Vec<(u32, &Elem)> = Vec::new();
        let lane_extras = |i: usize| extras.get(i).unwrap_or(&none);
        in_batches(
            bases.len(),
            self.batch,
            min_lanes(self.n),
            |k, range| {
                let ctx = self.lanes(k, range.len());
                let lanes: Vec<&Vec<(u32, &Elem)>> = range.clone().map(lane_extras).collect();
                self.pow_vartime_with8(&ctx, &bases[range], exp, &lanes, public_positions)
            },
            |i| self.pow_vartime_with(&bases[i], exp, lane_extras(i)),
        )
    }

    fn pow_vartime_with8(
        &self,
        ctx: &Ctx<'_>,
        bases: &[Elem],
        exp: &[u64],
        extras: &[&Vec<(u32, &Elem)>],
        public_positions: bool,
    ) -> Vec<Elem> {
        // One list of (lane, extra) in lane order: the schedule's extra i.
        let flat: Vec<(usize, u32, &Elem)> = extras
            .iter()
            .enumerate()
            .flat_map(|(lane, list)| list.iter().map(move |(p, e)| (lane, *p, *e)))
            .collect();
        let positions: Vec<u32> = flat.iter().map(|(_, p, _)| *p).collect();
        let (window, steps) = super::injected::schedule(exp, &positions);
        let base = ctx.pack(bases.iter());
        let mut odd = Vec::with_capacity(1 << (window - 1));
        let mut scratch = ctx.wide(ctx.zeros());
        if window > 1 {
            let mut square = ctx.wide(base.clone());
            ctx.sqr_assign(&mut square, &mut scratch);
            odd.push(base);
            for i in 1..(1usize << (window - 1)) {
                let next = ctx.mul(&odd[i - 1], &square);
                odd.push(next);
            }
            wipe(&mut square);
        } else {
            odd.push(base);
        }
        let one = &self.one;
        // The steps with each run of extras that share a multiplication
        // packed: every lane holds its own factor or one.
        enum Step {
            Window(usize),
            Extras(Vec<Lane8>),
        }
        let mut groups: Vec<(u32, Step)> = Vec::with_capacity(steps.len());
        let mut pending: Option<(u32, [Option<&Elem>; LANES])> = None;
        let flush = |pending: &mut Option<(u32, [Option<&Elem>; LANES])>,
                     groups: &mut Vec<(u32, Step)>| {
            if let Some((p, lanes)) = pending.take() {
                let packed = ctx.pack(lanes.iter().map(|e| e.unwrap_or(one)));
                groups.push((p, Step::Extras(packed)));
            }
        };
        for (position, factor) in steps {
            match factor {
                super::injected::Factor::Window(k) => {
                    flush(&mut pending, &mut groups);
                    groups.push((position, Step::Window(k)));
                }
                super::injected::Factor::Extra(i) => {
                    let Some(&(lane, _, elem)) = flat.get(i) else {
                        continue;
                    };
                    let joins = matches!(&pending, Some((p, lanes))
                        if public_positions && *p == position && lanes[lane].is_none());
                    if !joins {
                        flush(&mut pending, &mut groups);
                        pending = Some((position, [None; LANES]));
                    }
                    if let Some((_, lanes)) = pending.as_mut() {
                        lanes[lane] = Some(elem);
                    }
                }
            }
        }
        flush(&mut pending, &mut groups);
        let mut acc: Option<Vec<Lane8>> = None;
        let mut remaining = 0u32;
        for (position, step) in &groups {
            let factor = match step {
                Step::Window(k) => match odd.get(*k) {
                    Some(f) => f,
                    None => continue,
                },
                Step::Extras(f) => f,
            };
            acc = Some(match acc.take() {
                Some(mut a) => {
                    for _ in *position..remaining {
                        ctx.sqr_assign(&mut a, &mut scratch);
                    }
                    ctx.mul_assign(&mut a, factor, &mut scratch, false);
                    a
                }
                None => ctx.wide(factor.clone()),
            });
            remaining = *position;
        }
        for entry in &mut odd {
            wipe(entry);
        }
        let Some(mut acc) = acc else {
            return ctx.unpack(&ctx.broadcast(&self.one));
        };
        for _ in 0..remaining {
            ctx.sqr_assign(&mut acc, &mut scratch);
        }
        let out = ctx.unpack(&acc);
        wipe(&mut acc);
        wipe(&mut scratch);
        out
    }

    /// The comb evaluation of a fixed-base table (`table[i][d] =
    /// h^(d·2^(window·i))`) at every exponent, in batches of eight:
    /// `acc ← acc·table[i][digit_i]` row by row, each row read in full.
    /// `single` evaluates one exponent the same way with the
    /// single-operation kernel.
    pub(crate) fn comb_many(
        &self,
        table: &[Vec<Elem>],
        window: u32,
        exps: &[&[u64]],
        single: impl Fn(&[u64]) -> Elem,
    ) -> Vec<Elem> {
        in_batches(
            exps.len(),
            self.batch,
            MIN_COMB_LANES,
            |k, range| {
                let ctx = self.lanes(k, range.len());
                let lane_exps = &exps[range];
                let mut acc = ctx.broadcast(&self.one);
                let mut selected = ctx.zeros();
                let mut scratch = ctx.zeros();
                let mut digits = Lane8::default();
                for (i, row) in table.iter().enumerate() {
                    for (d, e) in digits.0.iter_mut().zip(lane_exps) {
                        *d = bits_at(e, i as u32 * window, window);
                    }
                    (ctx.k.select_shared)(row, &digits, self.n, &mut selected);
                    ctx.mul_assign(&mut acc, &selected, &mut scratch, false);
                }
                let out = ctx.unpack(&acc);
                for v in [acc, selected, scratch].iter_mut() {
                    wipe(v);
                }
                digits.0.zeroize();
                out
            },
            |i| single(exps[i]),
        )
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::Width;
    use super::super::tests::random_odd;
    use super::*;
    use crate::words::u64_words;
    use crypto_bigint::{BoxedUint, NonZero, RandomBits};
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::ChaCha20Rng;

    /// A modulus with the dispatched kernels and the same with the portable
    /// ones, and `count` random bases.
    pub(in crate::mont) fn setup(
        bits: u32,
        count: usize,
        seed: u64,
    ) -> ([Modulus; 2], Vec<Elem>, ChaCha20Rng) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let m = random_odd(&mut rng, bits);
        let nz = NonZero::new(m.clone()).expect("odd");
        let ctx = Modulus::new(&m, bits, Width::Half);
        let bases = (0..count)
            .map(|_| ctx.enter(&BoxedUint::random_bits(&mut rng, bits).rem(&nz)))
            .collect();
        let portable = Modulus::new(&m, bits, Width::Half).with_portable_kernel();
        ([ctx, portable], bases, rng)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(6))]

        #[test]
        fn constant_time_batches_match_single(count in 0usize..20, seed in any::<u64>(), shared in any::<bool>()) {
            let (ctxs, bases, mut rng) = setup(1024, count, seed);
            let exps: Vec<BoxedUint> = (0..count.max(1)).map(|_| BoxedUint::random_bits(&mut rng, 500)).collect();
            let words: Vec<_> = exps.iter().map(u64_words).collect();
            let refs: Vec<&[u64]> = if shared { vec![&words[0]] } else { words.iter().map(|w| &w[..]).collect() };
            for ctx in &ctxs {
                let got = ctx.pow_ct_many(&bases, &refs, 500);
                prop_assert_eq!(got.len(), count);
                for (i, g) in got.iter().enumerate() {
                    let e = if shared { refs[0] } else { refs[i] };
                    prop_assert_eq!(&g.0, &ctx.pow_ct(&bases[i], e, 500).0);
                }
            }
        }

        #[test]
        fn shared_exponent_batches_match_single(count in 0usize..20, seed in any::<u64>(), bits in 0u32..700) {
            let (ctxs, bases, mut rng) = setup(2048, count, seed);
            let exp = u64_words(&BoxedUint::random_bits(&mut rng, bits.max(1)));
            for ctx in &ctxs {
                let got = ctx.pow_vartime_many(&bases, &exp);
                prop_assert_eq!(got.len(), count);
                for (g, b) in got.iter().zip(&bases) {
                    prop_assert_eq!(&g.0, &ctx.pow_words_vartime(b, &exp).0);
                }
            }
        }
    }

    #[test]
    fn the_multi_buffer_kernel_is_used_where_the_cpu_has_it() {
        let ([ctx, portable], _, _) = setup(1024, 0, 5);
        let forced_portable = std::env::var_os("VEIL_PORTABLE_ARITH").is_some();
        #[cfg(target_arch = "x86_64")]
        let ifma = super::super::ifma_mb::available();
        #[cfg(not(target_arch = "x86_64"))]
        let ifma = false;
        assert_eq!(ctx.batch.is_some(), ifma && !forced_portable);
        assert!(portable.batch.is_none());
    }

    #[test]
    fn batches_at_paillier_sizes_match_single() {
        // p² for N of 2048 (40 limbs) and N² (79 limbs).
        for (bits, seed) in [(2048u32, 1u64), (4096, 2)] {
            let ([ctx, _], bases, mut rng) = setup(bits, 9, seed);
            let exp = u64_words(&BoxedUint::random_bits(&mut rng, 1024));
            let got = ctx.pow_ct_many(&bases, &[&exp], 1024);
            for (g, b) in got.iter().zip(&bases) {
                assert_eq!(g.0, ctx.pow_ct(b, &exp, 1024).0);
            }
        }
    }
}

#[cfg(test)]
mod timing {
    use super::super::Width;
    use super::*;
    use crate::words::{from_u64_words, u64_words};
    use crypto_bigint::{BoxedUint, RandomBits};
    use rand::SeedableRng;
    use rand::rngs::ChaCha20Rng;

    #[test]
    #[ignore]
    fn time_kernels() {
        for bits in [2048u32, 4096] {
            let mut rng = ChaCha20Rng::seed_from_u64(1);
            let mut w = u64_words(&BoxedUint::random_bits(&mut rng, bits));
            w[0] |= 1;
            let m = from_u64_words(&w);
            let ctx = Modulus::new(&m, bits, Width::Half);
            let k = ctx.batch.unwrap();
            let c = ctx.lanes(k, 8);
            let a: Vec<Lane8> = (0..ctx.n)
                .map(|j| Lane8([j as u64 * 12345 % (1 << 50); 8]))
                .collect();
            let mut acc = a.clone();
            let mut scratch = c.zeros();
            let iters = 100;
            let mut best = f64::MAX;
            for _ in 0..60 {
                let t = std::time::Instant::now();
                for _ in 0..iters {
                    c.mul_assign(&mut acc, &a, &mut scratch, false);
                }
                best = best.min(t.elapsed().as_secs_f64() / f64::from(iters));
            }
            let mut acc = c.wide(a.clone());
            let mut scratch = c.wide(c.zeros());
            let mut bests = f64::MAX;
            for _ in 0..60 {
                let t = std::time::Instant::now();
                for _ in 0..iters {
                    c.sqr_assign(&mut acc, &mut scratch);
                }
                bests = bests.min(t.elapsed().as_secs_f64() / f64::from(iters));
            }
            println!("sqr {:.2} us", bests * 1e6);
            let e = ctx.one();
            let mut x = ctx.one();
            let mut best1 = f64::MAX;
            for _ in 0..60 {
                let t = std::time::Instant::now();
                for _ in 0..iters {
                    ctx.mul_assign(&mut x, &e);
                }
                best1 = best1.min(t.elapsed().as_secs_f64() / f64::from(iters));
            }
            let bases: Vec<Elem> = (0..8)
                .map(|i| ctx.enter(&BoxedUint::from(1234567u64 + i)))
                .collect();
            let exp = u64_words(&BoxedUint::random_bits(&mut rng, 1024));
            let (mut pb, mut ps) = (f64::MAX, f64::MAX);
            for _ in 0..15 {
                let t = std::time::Instant::now();
                let _ = ctx.pow_ct_many(&bases, &[&exp], 1024);
                pb = pb.min(t.elapsed().as_secs_f64());
                let t = std::time::Instant::now();
                for b in &bases {
                    let _ = ctx.pow_ct(b, &exp, 1024);
                }
                ps = ps.min(t.elapsed().as_secs_f64());
            }
            println!(
                "pow_ct 1024-bit x8: batch {:.0} us, single {:.0} us, ratio {:.2}",
                pb * 1e6,
                ps * 1e6,
                ps / pb
            );
            let madds = 4.0 * (ctx.n * ctx.n) as f64;
            println!(
                "bits {bits} n {}: batch {:.2} us ({:.3} ns/madd), single {:.3} us, ratio per op {:.2}",
                ctx.n,
                best * 1e6,
                best * 1e9 / madds,
                best1 * 1e6,
                best1 * 8.0 / best
            );
        }
    }
}
