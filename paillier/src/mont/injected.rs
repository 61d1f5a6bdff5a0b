//! Exponentiation by a public exponent with extra factors riding on its
//! squarings: `base^exp · Π f_i^(2^(s_i))`.
//!
//! Packing values into one ciphertext by Horner's rule squares the
//! accumulator once per bit of the packed plaintext (about 2,000 squarings
//! modulo N² for a full one), and re-randomizing it with textbook noise
//! `r^N` squares once per bit of N: the same number again. A factor
//! multiplied into the noise exponentiation when `s` squarings remain comes
//! out raised to `2^s`, so one pass of squarings does both, and each packed
//! value costs one multiplication.
//!
//! The positions `s_i` may be secret (a comparison's shift `e`): the number
//! of multiplications never depends on them, only the order in which they
//! come.

use super::{Elem, Modulus, sliding_window, sliding_windows, words_bits};

/// What one step multiplies in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Factor {
    /// `base^(2k+1)` from the exponent's sliding windows.
    Window(usize),
    /// Extra factor `i` of the caller's list.
    Extra(usize),
}

/// The exponent's windows and the extras at `positions`, as `(squarings
/// remaining, factor)` from the first multiplication to the last.
pub(super) fn schedule(exp: &[u64], positions: &[u32]) -> (u32, Vec<(u32, Factor)>) {
    let bits = words_bits(exp);
    let window = sliding_window(bits.max(1));
    let mut steps: Vec<(u32, Factor)> = Vec::with_capacity(bits as usize / 4 + positions.len());
    let mut position = bits;
    sliding_windows(exp, bits, window, |squarings, index| {
        position -= squarings;
        if let Some(k) = index {
            steps.push((position, Factor::Window(k)));
        }
    });
    steps.extend(
        positions
            .iter()
            .enumerate()
            .map(|(i, &p)| (p, Factor::Extra(i))),
    );
    // Stable: at one position the windows come first, then the extras in
    // the caller's order, so the batched form repeats the single one.
    steps.sort_by_key(|step| std::cmp::Reverse(step.0));
    (window, steps)
}

impl Modulus {
    /// `base^exp · Π extras[i].1^(2^(extras[i].0))` with `exp` public (left
    /// to right sliding windows, variable time in `exp` only).
    pub(crate) fn pow_vartime_with(
        &self,
        base: &Elem,
        exp: &[u64],
        extras: &[(u32, &Elem)],
    ) -> Elem {
        let positions: Vec<u32> = extras.iter().map(|(p, _)| *p).collect();
        let (window, steps) = schedule(exp, &positions);
        let mut odd = Vec::with_capacity(1 << (window - 1));
        odd.push(base.clone());
        if window > 1 {
            let square = self.sqr(base);
            for i in 1..(1usize << (window - 1)) {
                let next = self.mul(&odd[i - 1], &square);
                odd.push(next);
            }
        }
        let mut acc: Option<Elem> = None;
        let mut remaining = 0u32;
        for (position, factor) in steps {
            let factor = match factor {
                Factor::Window(k) => odd.get(k),
                Factor::Extra(i) => extras.get(i).map(|(_, e)| *e),
            };
            let Some(factor) = factor else { continue };
            acc = Some(match acc.take() {
                Some(mut a) => {
                    for _ in position..remaining {
                        self.sqr_assign(&mut a);
                    }
                    self.mul_assign(&mut a, factor);
                    a
                }
                None => factor.clone(),
            });
            remaining = position;
        }
        for entry in &mut odd {
            zeroize::Zeroize::zeroize(entry);
        }
        match acc {
            Some(mut a) => {
                for _ in 0..remaining {
                    self.sqr_assign(&mut a);
                }
                a
            }
            None => self.one(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::batch::tests::setup;
    use super::*;
    use crate::words::u64_words;
    use crypto_bigint::{BoxedUint, RandomBits};
    use proptest::prelude::*;

    /// `base^exp · Π f^(2^s)` the long way.
    fn reference(ctx: &Modulus, base: &Elem, exp: &[u64], extras: &[(u32, &Elem)]) -> Vec<u64> {
        let mut acc = ctx.pow_words_vartime(base, exp);
        for (s, f) in extras {
            let mut f = (*f).clone();
            for _ in 0..*s {
                ctx.sqr_assign(&mut f);
            }
            ctx.mul_assign(&mut acc, &f);
        }
        ctx.canonical(&acc)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]

        #[test]
        fn extras_come_out_raised_to_their_positions(
            seed in any::<u64>(),
            exp_bits in 0u32..300,
            positions in proptest::collection::vec(0u32..320, 0..6),
        ) {
            let (ctxs, elems, mut rng) = setup(512, 1 + positions.len(), seed);
            let exp = u64_words(&BoxedUint::random_bits(&mut rng, exp_bits.max(1)));
            let exp = if exp_bits == 0 { vec![0u64] } else { exp.to_vec() };
            let extras: Vec<(u32, &Elem)> = positions.iter().copied().zip(&elems[1..]).collect();
            for ctx in &ctxs {
                let got = ctx.pow_vartime_with(&elems[0], &exp, &extras);
                prop_assert_eq!(ctx.canonical(&got), reference(ctx, &elems[0], &exp, &extras));
            }
        }

        #[test]
        fn batches_with_extras_match_single(
            count in 0usize..12,
            seed in any::<u64>(),
            public in any::<bool>(),
            per_lane in 0usize..4,
        ) {
            let (ctxs, elems, mut rng) = setup(1024, count * (1 + per_lane), seed);
            let exp = u64_words(&BoxedUint::random_bits(&mut rng, 1000));
            let (bases, rest) = elems.split_at(count);
            let extras: Vec<Vec<(u32, &Elem)>> = (0..count)
                .map(|i| {
                    (0..per_lane)
                        .map(|k| {
                            // Public positions are equal across lanes.
                            let p = if public { 100 * k as u32 } else { (37 * i as u32 + 101 * k as u32) % 1024 };
                            (p, &rest[i * per_lane + k])
                        })
                        .collect()
                })
                .collect();
            for ctx in &ctxs {
                let got = ctx.pow_vartime_with_many(bases, &exp, &extras, public);
                prop_assert_eq!(got.len(), count);
                for (i, g) in got.iter().enumerate() {
                    prop_assert_eq!(ctx.canonical(g), reference(ctx, &bases[i], &exp, &extras[i]));
                }
            }
        }
    }
}
