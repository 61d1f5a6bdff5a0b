//! The homomorphic laws, encryption paths and packing, on the fixture keys.

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::ChaCha20Rng;
use std::sync::{Arc, OnceLock};
use veil_paillier::fixtures::{key_2048_a, key_2048_b, key_3072};
use veil_paillier::{
    Ciphertext, FixedBaseNoise, I256, NoisePool, PoolFiller, PublicKey, SecretKey,
};

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

fn table() -> &'static FixedBaseNoise {
    static TABLE: OnceLock<FixedBaseNoise> = OnceLock::new();
    TABLE.get_or_init(|| FixedBaseNoise::new(key_2048_a().public_key(), &mut rng(1)))
}

fn enc(public: &PublicKey, v: i128, seed: u64) -> Ciphertext {
    public.encrypt_i128(v, table().noise(&mut rng(seed)))
}

fn dec(secret: &SecretKey, c: &Ciphertext) -> i128 {
    secret.decrypt_i128(c).expect("decrypts to an i128")
}

/// Values near the edges of what the tests feed through i128 arithmetic.
fn value() -> impl Strategy<Value = i128> {
    prop_oneof![
        Just(0i128),
        Just(1),
        Just(-1),
        Just(i128::from(i64::MAX)),
        Just(i128::from(i64::MIN)),
        any::<i64>().prop_map(i128::from),
        (-(1i128 << 100)..(1i128 << 100)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn addition_and_negation(a in value(), b in value(), seed in any::<u64>()) {
        let secret = key_2048_a();
        let public = secret.public_key();
        let ca = enc(public, a, seed);
        let cb = enc(public, b, seed ^ 1);
        prop_assert_eq!(dec(secret, &public.add(&ca, &cb)), a + b);
        prop_assert_eq!(dec(secret, &public.sub(&ca, &cb)), a - b);
        prop_assert_eq!(dec(secret, &public.neg(&ca)), -a);
        prop_assert_eq!(dec(secret, &public.add_i128(&ca, b)), a + b);
        let mut acc = ca.clone();
        public.add_assign(&mut acc, &cb);
        prop_assert_eq!(acc, public.add(&ca, &cb));
    }

    #[test]
    fn scalar_multiplication(a in -(1i128 << 60)..(1i128 << 60), k in any::<i64>(), seed in any::<u64>()) {
        let secret = key_2048_a();
        let public = secret.public_key();
        let ca = enc(public, a, seed);
        let expected = a * i128::from(k);
        prop_assert_eq!(dec(secret, &public.mul_i128(&ca, i128::from(k))), expected);
        prop_assert_eq!(dec(secret, &public.mul_scalar(&ca, I256::from(k))), expected);
    }

    #[test]
    fn dot_products_match_integer_arithmetic(
        values in prop::collection::vec(-(1i128 << 40)..(1i128 << 40), 1..40),
        seed in any::<u64>(),
    ) {
        let secret = key_2048_a();
        let public = secret.public_key();
        let mut r = rng(seed);
        let weights: Vec<i64> = values.iter().map(|_| r.random_range(-(1i64 << 16)..(1i64 << 16))).collect();
        let cts: Vec<Ciphertext> = values.iter().enumerate().map(|(i, v)| enc(public, *v, seed.wrapping_add(i as u64))).collect();
        let expected: i128 = values.iter().zip(&weights).map(|(v, w)| v * i128::from(*w)).sum();
        prop_assert_eq!(dec(secret, &public.dot(&cts, &weights).expect("dot")), expected);
        let prepared = public.prepare_bases(&cts).expect("units");
        let terms: Vec<(usize, i64)> = weights.iter().copied().enumerate().collect();
        prop_assert_eq!(dec(secret, &public.dot_prepared(&prepared, &terms).expect("dot")), expected);
    }

    #[test]
    fn packing_round_trips_at_the_edges(bits in 1u32..120, count in 1usize..20, seed in any::<u64>()) {
        let secret = key_2048_a();
        let public = secret.public_key();
        let layout = public.pack_layout(bits).expect("layout");
        let count = count.min(layout.slots);
        let bound = (1i128 << bits) - 1;
        let mut r = rng(seed);
        let values: Vec<i128> = (0..count)
            .map(|i| match i % 4 {
                0 => bound,
                1 => -bound,
                2 => 0,
                _ => r.random_range(-bound..=bound),
            })
            .collect();
        let cts: Vec<Ciphertext> = values.iter().enumerate().map(|(i, v)| enc(public, *v, seed ^ i as u64)).collect();
        let packed = public.pack(&layout, &cts).expect("pack");
        let unpacked = secret.decrypt(&packed).expect("decrypt").unpack(&layout, count).expect("unpack");
        let expected: Vec<I256> = values.iter().map(|v| I256::from(*v)).collect();
        prop_assert_eq!(&unpacked, &expected);
        let shifts: Vec<u32> = values.iter().map(|v| if v.unsigned_abs() < 1 << (bits / 2) { bits / 2 } else { 0 }).collect();
        let shifted = public.pack_shifted(&layout, &cts, &shifts).expect("pack shifted");
        let unshifted = secret.decrypt(&shifted).expect("decrypt").unpack(&layout, count).expect("unpack");
        let want: Vec<I256> = values.iter().zip(&shifts).map(|(v, e)| I256::from(*v) << *e).collect();
        prop_assert_eq!(unshifted, want);
        let plain = public.pack_plain(&layout, &expected).expect("pack plain");
        prop_assert_eq!(plain.unpack(&layout, count).expect("unpack plain"), expected);
    }
}

#[test]
fn plaintext_range_edges() {
    let secret = key_2048_a();
    let public = secret.public_key();
    let half = public.n().shr(1);
    for negative in [false, true] {
        let edge = veil_paillier::Signed {
            negative,
            magnitude: half.clone(),
        };
        let m = public.encode_signed(&edge).expect("floor(N/2) is in range");
        let c = public.encrypt(&m, &mut rng(3)).expect("encrypts");
        let back = secret.decrypt(&c).expect("decrypts").to_signed();
        // N is odd, so ±floor(N/2) are distinct residues that read back exactly.
        assert_eq!(back.negative, negative);
        assert_eq!(back.magnitude, half);
    }
    let beyond = veil_paillier::Signed {
        negative: false,
        magnitude: public.n().clone(),
    };
    assert!(public.encode_signed(&beyond).is_err());
    let i256_edge = I256::MAX;
    let c = public
        .encrypt(&public.encode(i256_edge), &mut rng(4))
        .expect("encrypts");
    assert_eq!(
        secret
            .decrypt(&c)
            .expect("decrypts")
            .to_i256()
            .expect("fits"),
        i256_edge
    );
    let too_big = public.add(&c, &c);
    assert!(
        secret
            .decrypt(&too_big)
            .expect("decrypts")
            .to_i256()
            .is_err(),
        "2·I256::MAX does not fit"
    );
}

#[test]
fn every_noise_source_encrypts_correctly_and_hides() {
    let secret = key_2048_a();
    let public = secret.public_key();
    let m = public.encode_i128(-123_456_789);
    let mut r = rng(5);
    let pool = NoisePool::new(PoolFiller::Public(public.clone()), 4, 1, [6; 32]);
    let crt_pool = NoisePool::new(
        PoolFiller::Secret(Arc::new(
            SecretKey::from_bytes(&key_2048_a().to_bytes()).expect("copy"),
        )),
        4,
        0,
        [7; 32],
    );
    crt_pool.fill(2);
    let fixed_pool = NoisePool::new(
        PoolFiller::FixedBase(Arc::new(FixedBaseNoise::new(public, &mut r))),
        4,
        0,
        [8; 32],
    );
    let cts = [
        public.encrypt(&m, &mut r).expect("public"),
        secret.encrypt(&m, &mut r).expect("crt"),
        public
            .encrypt_with_noise(&m, table().noise(&mut r))
            .expect("fixed base"),
        public.encrypt_with_noise(&m, pool.take()).expect("pool"),
        public
            .encrypt_with_noise(&m, crt_pool.take())
            .expect("crt pool"),
        public
            .encrypt_with_noise(&m, fixed_pool.take())
            .expect("fixed pool (miss computes inline)"),
    ];
    for (i, c) in cts.iter().enumerate() {
        assert_eq!(dec(secret, c), -123_456_789, "path {i}");
        for other in &cts[..i] {
            assert_ne!(c, other, "two encryptions of one plaintext must differ");
        }
    }
    assert!(crt_pool.stats().hits >= 1);
    assert_eq!(fixed_pool.stats().misses, 1);
    let again = public.rerandomize(&cts[0], table().noise(&mut r));
    assert_ne!(again, cts[0]);
    assert_eq!(dec(secret, &again), -123_456_789);
    assert_eq!(dec(secret, &public.encrypt_zero(table().noise(&mut r))), 0);
}

#[test]
fn a_shared_pool_draws_from_the_same_queue_and_dropping_it_keeps_the_values() {
    let secret = key_2048_a();
    let public = secret.public_key();
    let m = public.encode_i128(42);
    let pool = NoisePool::new(PoolFiller::Public(public.clone()), 4, 0, [9; 32]);
    pool.fill(3);
    let handle = pool.share();
    let c = public
        .encrypt_with_noise(&m, handle.take())
        .expect("shared pool");
    assert_eq!(dec(secret, &c), 42);
    // One queue, one count.
    assert_eq!(pool.stats().hits, 1);
    assert_eq!(pool.stats().available, 2);
    drop(handle);
    assert_eq!(pool.stats().available, 2);
    let _ = pool.take();
    assert_eq!(pool.stats().hits, 2);
}

#[test]
fn matrix_vector_product() {
    let secret = key_2048_a();
    let public = secret.public_key();
    let mut r = rng(6);
    let cols = 50;
    let rows = 7;
    let xs: Vec<i128> = (0..cols)
        .map(|_| r.random_range(-(1i128 << 50)..(1i128 << 50)))
        .collect();
    let mut weights: Vec<i64> = (0..rows * cols)
        .map(|_| r.random_range(-(1i64 << 16)..(1i64 << 16)))
        .collect();
    weights[3] = 0;
    weights[cols..2 * cols].iter_mut().for_each(|w| *w = 0);
    let cts: Vec<Ciphertext> = xs
        .iter()
        .enumerate()
        .map(|(i, x)| enc(public, *x, 100 + i as u64))
        .collect();
    let out = public.matvec(&cts, &weights, rows).expect("matvec");
    for (row, c) in out.iter().enumerate() {
        let expected: i128 = xs
            .iter()
            .zip(&weights[row * cols..(row + 1) * cols])
            .map(|(x, w)| x * i128::from(*w))
            .sum();
        assert_eq!(dec(secret, c), expected, "row {row}");
    }
    assert!(public.matvec(&cts, &weights[1..], rows).is_err());
}

#[test]
fn keys_do_not_mix() {
    let a = key_2048_a();
    let b = key_2048_b();
    let ca = enc(a.public_key(), 5, 7);
    assert!(b.decrypt(&ca).is_err());
    assert_ne!(a.public_key().fingerprint(), b.public_key().fingerprint());
    let cb = b
        .public_key()
        .encrypt_i128(5, b.public_key().fresh_noise(&mut rng(8)));
    assert!(a.public_key().dot(&[ca, cb], &[1, 1]).is_err());
}

#[test]
fn keys_of_3072_bits() {
    let secret = key_3072();
    let public = secret.public_key();
    assert_eq!(public.bits(), 3072);
    assert_eq!(public.ciphertext_len(), 768);
    let mut r = rng(9);
    let table = FixedBaseNoise::new(public, &mut r);
    assert_eq!(table.alpha_bits(), 256);
    let a = public.encrypt_i128(-77, table.noise(&mut r));
    let b = secret
        .encrypt(&public.encode_i128(1 << 90), &mut r)
        .expect("crt");
    let sum = public.add(&public.mul_i128(&a, 3), &b);
    assert_eq!(dec(secret, &sum), (1i128 << 90) - 231);
    let bytes = sum.to_bytes();
    assert_eq!(
        public.ciphertext_from_bytes(&bytes).expect("round trip"),
        sum
    );
}

#[test]
fn key_generation_and_encodings_round_trip() {
    let mut r = rng(10);
    let secret = SecretKey::generate(&mut r, veil_paillier::KeySize::Bits2048).expect("keygen");
    let public = secret.public_key();
    assert_eq!(public.bits(), 2048);
    assert_eq!(public.n().bit_width_vartime(), 2048);
    let decoded = PublicKey::from_bytes(&public.to_bytes()).expect("public decodes");
    assert_eq!(decoded.fingerprint(), public.fingerprint());
    let again = SecretKey::from_bytes(&secret.to_bytes()).expect("secret decodes");
    let c = public.encrypt_i128(31337, public.fresh_noise(&mut r));
    assert_eq!(again.decrypt_i128(&c).expect("decrypts"), 31337);
    assert!(!format!("{secret:?}").contains(&public.n().to_string_radix_vartime(16)[..16]));
}

/// A pool's randomness comes from its seed only: the same seed gives the
/// same ciphertexts whether values come from `fill` or from a miss, and
/// another seed gives others.
#[test]
fn a_seeded_pool_draws_the_same_noise() {
    let public = key_2048_a().public_key().clone();
    let m = public.encode_i128(42);
    let draw = |seed: [u8; 32]| -> Vec<Vec<u8>> {
        let pool = NoisePool::new(PoolFiller::Public(public.clone()), 2, 0, seed);
        pool.fill(2);
        (0..3)
            .map(|_| {
                public
                    .encrypt_with_noise(&m, pool.take())
                    .expect("encrypts")
                    .to_bytes()
            })
            .collect()
    };
    let first = draw([3; 32]);
    assert_eq!(first, draw([3; 32]));
    let other = draw([4; 32]);
    assert!(first.iter().zip(&other).all(|(a, b)| a != b));
}
