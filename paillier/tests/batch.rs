//! The batched operations give exactly what the single ones give, for any
//! number of inputs (full batches of eight, remainders, none). CI runs this
//! file with the dispatched kernels and with `VEIL_PORTABLE_ARITH=1`.

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::ChaCha20Rng;
use std::sync::OnceLock;
use veil_paillier::fixtures::{key_2048_a, key_2048_b, key_3072};
use veil_paillier::{Ciphertext, FixedBaseNoise, Noise, PaillierError, PublicKey, SecretKey};

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

fn table() -> &'static FixedBaseNoise {
    static TABLE: OnceLock<FixedBaseNoise> = OnceLock::new();
    TABLE.get_or_init(|| FixedBaseNoise::new(key_2048_a().public_key(), &mut rng(1)))
}

/// Noise as comparable bytes: the encryption of zero under it.
fn bytes(public: &PublicKey, noise: Noise) -> Vec<u8> {
    public.encrypt_i128(0, noise).to_bytes()
}

fn values(count: usize, seed: u64) -> Vec<i128> {
    use rand::RngExt;
    let mut r = rng(seed);
    (0..count)
        .map(|_| r.random_range(-(1i128 << 100)..(1i128 << 100)))
        .collect()
}

fn check_decrypt_batch(secret: &SecretKey, count: usize, seed: u64) {
    let public = secret.public_key();
    let mut r = rng(seed);
    let vs = values(count, seed);
    let cts: Vec<Ciphertext> = vs
        .iter()
        .map(|&v| {
            secret
                .encrypt(&public.encode_i128(v), &mut r)
                .expect("encrypts")
        })
        .collect();
    let batch = secret.decrypt_batch(&cts).expect("decrypts");
    assert_eq!(batch.len(), count);
    for ((c, p), v) in cts.iter().zip(&batch).zip(&vs) {
        let single = secret.decrypt(c).expect("decrypts");
        assert_eq!(p.residue(), single.residue());
        assert_eq!(p.to_i128().expect("fits"), *v);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn decrypt_batch_matches_decrypt(count in 0usize..20, seed in any::<u64>()) {
        check_decrypt_batch(key_2048_a(), count, seed);
    }

    #[test]
    fn crt_noise_batch_matches_crt_noise(count in 0usize..20, seed in any::<u64>()) {
        let secret = key_2048_a();
        let public = secret.public_key();
        let batch = secret.crt_noise_batch(&mut rng(seed), count);
        prop_assert_eq!(batch.len(), count);
        let mut r = rng(seed);
        for noise in batch {
            prop_assert_eq!(bytes(public, noise), bytes(public, secret.crt_noise(&mut r)));
        }
    }

    #[test]
    fn fresh_noise_batch_matches_fresh_noise(count in 0usize..12, seed in any::<u64>()) {
        let public = key_2048_b().public_key();
        let batch = public.fresh_noise_batch(&mut rng(seed), count);
        prop_assert_eq!(batch.len(), count);
        let mut r = rng(seed);
        for noise in batch {
            prop_assert_eq!(bytes(public, noise), bytes(public, public.fresh_noise(&mut r)));
        }
    }

    #[test]
    fn fixed_base_noise_batch_matches_noise(count in 0usize..20, seed in any::<u64>()) {
        let public = key_2048_a().public_key();
        let batch = table().noise_batch(&mut rng(seed), count);
        prop_assert_eq!(batch.len(), count);
        let mut r = rng(seed);
        for noise in batch {
            prop_assert_eq!(bytes(public, noise), bytes(public, table().noise(&mut r)));
        }
    }
}

#[test]
fn decrypt_batch_at_3072_bits() {
    check_decrypt_batch(key_3072(), 11, 3);
}

#[test]
fn decrypt_batch_rejects_another_keys_ciphertext() {
    let a = key_2048_a();
    let b = key_2048_b();
    let mut r = rng(4);
    let mut cts: Vec<Ciphertext> = (0..9)
        .map(|i| {
            a.encrypt(&a.public_key().encode_i128(i), &mut r)
                .expect("encrypts")
        })
        .collect();
    cts.push(
        b.encrypt(&b.public_key().encode_i128(1), &mut r)
            .expect("encrypts"),
    );
    assert!(matches!(
        a.decrypt_batch(&cts),
        Err(PaillierError::KeyMismatch)
    ));
}
