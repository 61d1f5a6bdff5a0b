//! Interoperability with python-paillier (`phe`), an independent
//! implementation of the same scheme (g = N + 1): veil decrypts phe's
//! ciphertexts, reproduces phe's encryptions from the recorded randomness
//! and phe's homomorphic results bit for bit; and the ciphertexts veil wrote
//! into the same file were decrypted by phe (recorded by the script).
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

mod common;

use common::{dec_signed, hex_digits, hex_uint, signed_eq, vector_key, vectors};
use veil_paillier::{Ciphertext, PublicKey};

fn ct(public: &PublicKey, value: &serde_json::Value) -> Ciphertext {
    public
        .ciphertext_from_uint(&hex_uint(value))
        .expect("phe ciphertext validates")
}

fn hex_of(c: &Ciphertext) -> String {
    c.to_uint().to_string_radix_vartime(16)
}

#[test]
fn veil_decrypts_and_reproduces_phe() {
    let doc = vectors();
    let sets = doc["vectors"].as_array().expect("vector sets");
    assert_eq!(sets.len(), 2, "a 2048-bit and a 3072-bit key");
    for set in sets {
        let secret = vector_key(&doc, set["key"].as_str().expect("key name"));
        let public = secret.public_key();
        let encryptions = set["encryptions"].as_array().expect("encryptions");
        let mut cts = Vec::new();
        for e in encryptions {
            let c = ct(public, &e["c"]);
            let m = dec_signed(&e["m"]);
            let got = secret.decrypt(&c).expect("decrypts").to_signed();
            assert!(
                signed_eq(&got, &m),
                "decrypt of phe ciphertext for m={}",
                e["m"]
            );
            // Same plaintext and r must give phe's exact ciphertext.
            let noise = public
                .noise_from_r(&hex_uint(&e["r"]))
                .expect("r is a unit");
            let plaintext = public.encode_signed(&m).expect("in range");
            let mine = public
                .encrypt_with_noise(&plaintext, noise)
                .expect("encrypts");
            assert_eq!(
                hex_of(&mine),
                hex_digits(&e["c"]),
                "encryption of m={}",
                e["m"]
            );
            cts.push(c);
        }
        let index = |v: &serde_json::Value| v.as_u64().expect("index") as usize;
        for a in set["additions"].as_array().expect("additions") {
            let sum = public.add(&cts[index(&a["a"])], &cts[index(&a["b"])]);
            assert_eq!(hex_of(&sum), hex_digits(&a["c"]));
            assert!(signed_eq(
                &secret.decrypt(&sum).expect("decrypts").to_signed(),
                &dec_signed(&a["m"])
            ));
        }
        for s in set["scalar_mults"].as_array().expect("scalar mults") {
            let k: i128 = s["k"].as_str().expect("k").parse().expect("k fits i128");
            let product = public.mul_i128(&cts[index(&s["a"])], k);
            assert_eq!(hex_of(&product), hex_digits(&s["c"]), "k={k}");
            assert!(signed_eq(
                &secret.decrypt(&product).expect("decrypts").to_signed(),
                &dec_signed(&s["m"])
            ));
        }
        for s in set["plain_additions"].as_array().expect("plain additions") {
            let k: i128 = s["k"].as_str().expect("k").parse().expect("k fits i128");
            let sum = public.add_i128(&cts[index(&s["a"])], k);
            assert_eq!(hex_of(&sum), hex_digits(&s["c"]), "k={k}");
            assert!(signed_eq(
                &secret.decrypt(&sum).expect("decrypts").to_signed(),
                &dec_signed(&s["m"])
            ));
        }
        let dot = &set["dot"];
        let terms: Vec<Ciphertext> = dot["indices"]
            .as_array()
            .expect("indices")
            .iter()
            .map(|i| cts[index(i)].clone())
            .collect();
        let weights: Vec<i64> = dot["weights"]
            .as_array()
            .expect("weights")
            .iter()
            .map(|w| w.as_str().expect("w").parse().expect("w fits i64"))
            .collect();
        let product = public.dot(&terms, &weights).expect("dot");
        assert_eq!(hex_of(&product), hex_digits(&dot["c"]));
        assert!(signed_eq(
            &secret.decrypt(&product).expect("decrypts").to_signed(),
            &dec_signed(&dot["m"])
        ));
    }
}

#[test]
fn phe_decrypted_every_veil_ciphertext() {
    let doc = vectors();
    let veil = &doc["veil"];
    let entries = veil["ciphertexts"]
        .as_array()
        .expect("veil section written by the example");
    assert!(entries.len() >= 8);
    let checked = veil["checked_by_phe"]["count"]
        .as_u64()
        .expect("the script re-ran after veil wrote its part");
    assert_eq!(checked as usize, entries.len());
    // The recorded ciphertexts are still what veil decrypts them to.
    let secret = vector_key(&doc, veil["key"].as_str().expect("key"));
    let mut kinds = std::collections::BTreeSet::new();
    for e in entries {
        let c = ct(secret.public_key(), &e["c"]);
        assert!(signed_eq(
            &secret.decrypt(&c).expect("decrypts").to_signed(),
            &dec_signed(&e["m"])
        ));
        kinds.insert(e["how"].as_str().expect("how").to_string());
    }
    for how in ["public", "crt", "fixed-base", "pool", "dot", "packed"] {
        assert!(kinds.contains(how), "veil section lacks {how} ciphertexts");
    }
}
