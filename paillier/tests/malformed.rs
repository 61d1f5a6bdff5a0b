//! Everything decoded from outside is validated: ciphertexts, keys and key
//! files are rejected with a reason, never with a panic.

use proptest::prelude::*;
use veil_paillier::fixtures::{key_2048_a, key_3072};
use veil_paillier::{BoxedUint, PaillierError, PublicKey, SecretKey};

#[test]
fn ciphertexts_with_bad_length_range_or_factor_are_rejected() {
    let public = key_2048_a().public_key();
    let len = public.ciphertext_len();
    assert!(matches!(
        public.ciphertext_from_bytes(&vec![1u8; len - 1]),
        Err(PaillierError::CiphertextLength { got, expected }) if got == len - 1 && expected == len
    ));
    assert!(public.ciphertext_from_bytes(&vec![1u8; len + 1]).is_err());
    assert!(matches!(
        public.ciphertext_from_bytes(&vec![0xffu8; len]),
        Err(PaillierError::CiphertextOutOfRange)
    ));
    assert!(matches!(
        public.ciphertext_from_bytes(&vec![0u8; len]),
        Err(PaillierError::CiphertextNotUnit)
    ));
    // N itself, and N² - N, share a factor with N.
    let n_bytes = public.n().to_be_bytes();
    let mut padded = vec![0u8; len - n_bytes.len()];
    padded.extend_from_slice(&n_bytes);
    assert!(matches!(
        public.ciphertext_from_bytes(&padded),
        Err(PaillierError::CiphertextNotUnit)
    ));
    // N² exactly is out of range.
    assert!(matches!(
        public.ciphertext_from_uint(public.n_squared()),
        Err(PaillierError::CiphertextOutOfRange)
    ));
    // In a batch, the culprit is named.
    let good = public
        .encrypt_i128(3, public.fresh_noise(&mut rand::rng()))
        .to_bytes();
    let batch = [good.clone(), good.clone(), padded.clone(), good.clone()];
    assert!(matches!(
        public.ciphertexts_from_bytes(&batch),
        Err(PaillierError::CiphertextNotUnitAt(2))
    ));
    assert_eq!(
        public
            .ciphertexts_from_bytes(&[good.clone(), good])
            .expect("units")
            .len(),
        2
    );
    let wider = BoxedUint::one_with_precision(8192).shl(5000);
    assert!(matches!(
        public.ciphertext_from_uint(&wider),
        Err(PaillierError::CiphertextOutOfRange)
    ));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let public = key_2048_a().public_key();
        let _ = public.ciphertext_from_bytes(&bytes);
        let _ = PublicKey::from_bytes(&bytes);
        let _ = SecretKey::from_bytes(&bytes);
    }

    #[test]
    fn corrupted_public_keys_are_rejected(index in 0usize..262, flip in 1u8..=255) {
        let encoding = key_2048_a().public_key().to_bytes();
        let mut bad = encoding.clone();
        let i = index % bad.len();
        bad[i] ^= flip;
        // Any change yields an error or a different key: never the same fingerprint.
        if let Ok(key) = PublicKey::from_bytes(&bad) {
            prop_assert_ne!(key.fingerprint(), key_2048_a().public_key().fingerprint());
        }
    }
}

#[test]
fn public_key_encodings_are_checked() {
    let good = key_2048_a().public_key().to_bytes();
    assert!(
        PublicKey::from_bytes(&good[..good.len() - 1]).is_err(),
        "truncated"
    );
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(PublicKey::from_bytes(&trailing).is_err(), "trailing byte");
    let mut magic = good.clone();
    magic[0] ^= 1;
    let err = PublicKey::from_bytes(&magic).expect_err("bad magic");
    assert!(err.to_string().contains("magic"), "{err}");
    let mut version = good.clone();
    version[5] ^= 0x7;
    let err = PublicKey::from_bytes(&version).expect_err("bad version");
    assert!(err.to_string().contains("version"), "{err}");
    assert!(
        PublicKey::from_bytes(&vec![0u8; 20_000]).is_err(),
        "oversized"
    );
    // A 1024-bit modulus is refused by size, an even one by shape.
    let small = BoxedUint::from_str_radix_vartime(&"f".repeat(256), 16).expect("hex");
    assert!(matches!(
        PublicKey::from_modulus(&small),
        Err(PaillierError::UnsupportedKeySize(1024))
    ));
    let even = key_2048_a()
        .public_key()
        .n()
        .wrapping_add(BoxedUint::one_with_precision(2048));
    let err = PublicKey::from_modulus(&even).expect_err("even modulus");
    assert!(err.to_string().contains("even"), "{err}");
    let times_three =
        BoxedUint::from_str_radix_vartime(&format!("3{}", "0".repeat(511)), 16).expect("hex");
    assert!(PublicKey::from_modulus(&times_three.wrapping_add(BoxedUint::from(3u64))).is_err());
}

#[test]
fn secret_keys_are_checked() {
    let good = key_2048_a().to_bytes();
    let mut bad_prime = good.to_vec();
    let last = bad_prime.len() - 1;
    bad_prime[last] ^= 2; // q + 2 or q - 2: almost surely composite
    let err = SecretKey::from_bytes(&bad_prime).expect_err("composite factor");
    assert!(err.to_string().contains("prime"), "{err}");
    let three = key_3072().to_bytes();
    assert!(SecretKey::from_bytes(&three[..three.len() - 3]).is_err());
    let p = BoxedUint::from(65537u64);
    assert!(SecretKey::from_primes(&p, &p).is_err());
}

#[test]
fn a_key_of_the_other_kind_is_named_as_such() {
    let secret = key_2048_a();
    let public = secret.public_key().to_bytes();
    assert!(matches!(
        SecretKey::from_bytes(&public),
        Err(PaillierError::WrongKeyKind {
            expected: "secret key",
            found: "public key"
        })
    ));
    assert!(matches!(
        PublicKey::from_bytes(&secret.to_bytes()),
        Err(PaillierError::WrongKeyKind {
            expected: "public key",
            found: "secret key"
        })
    ));
}

/// The review's case: a `.pub` file given as a server's `key_file` used to
/// fail with a bincode position (`UnexpectedEnd { additional: 8 }`).
#[test]
fn a_public_key_file_read_as_a_secret_key_says_it_is_a_public_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("server-b.pub");
    key_2048_a()
        .public_key()
        .write_to_file(&path)
        .expect("write");
    let err = SecretKey::read_from_file(&path).expect_err("a public key file");
    assert!(
        matches!(
            err,
            PaillierError::WrongKeyKind {
                expected: "secret key",
                found: "public key"
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "this is a public key, not a secret key");
}

#[cfg(unix)]
#[test]
fn secret_key_files_are_private_and_loose_ones_are_flagged() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("b.key");
    key_2048_a().write_to_file(&path).expect("write");
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(!veil_paillier::warn_if_exposed(&path));
    let loaded = SecretKey::read_from_file(&path).expect("read");
    assert_eq!(
        loaded.public_key().fingerprint(),
        key_2048_a().public_key().fingerprint()
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    assert!(veil_paillier::warn_if_exposed(&path));
    // Rewriting an exposed file makes it private again.
    key_2048_a().write_to_file(&path).expect("rewrite");
    assert_eq!(
        std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
        0o600
    );
    let public_path = dir.path().join("b.pub");
    key_2048_a()
        .public_key()
        .write_to_file(&public_path)
        .expect("write public");
    assert_eq!(
        PublicKey::read_from_file(&public_path).expect("read public"),
        *key_2048_a().public_key()
    );
    std::fs::write(&public_path, vec![0u8; 100_000]).expect("overwrite");
    assert!(PublicKey::read_from_file(&public_path).is_err());
}
