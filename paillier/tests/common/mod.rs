//! Shared helpers for the integration tests: the interop vector file.

#![allow(dead_code)]

use serde_json::Value;
use veil_paillier::{BoxedUint, SecretKey, Signed};

pub fn vectors() -> Value {
    let text = include_str!("../interop/phe_vectors.json");
    serde_json::from_str(text).expect("vector file is valid JSON")
}

pub fn hex_digits(value: &Value) -> String {
    value
        .as_str()
        .expect("hex string")
        .trim_start_matches("0x")
        .to_string()
}

pub fn hex_uint(value: &Value) -> BoxedUint {
    BoxedUint::from_str_radix_vartime(&hex_digits(value), 16).expect("hex digits")
}

/// A signed decimal string as sign and magnitude.
pub fn dec_signed(value: &Value) -> Signed {
    let text = value.as_str().expect("decimal string");
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let magnitude = BoxedUint::from_str_radix_vartime(digits, 10).expect("decimal digits");
    Signed {
        negative: negative && magnitude.bit_width_vartime() > 0,
        magnitude,
    }
}

pub fn signed_eq(a: &Signed, b: &Signed) -> bool {
    let zero = |s: &Signed| s.magnitude.bit_width_vartime() == 0;
    if zero(a) && zero(b) {
        return true;
    }
    a.negative == b.negative
        && a.magnitude.to_string_radix_vartime(16) == b.magnitude.to_string_radix_vartime(16)
}

/// The secret key of the named vector key, checked against its recorded N.
pub fn vector_key(doc: &Value, name: &str) -> SecretKey {
    let keys = doc["keys"].as_array().expect("keys");
    let key = keys.iter().find(|k| k["name"] == name).expect("named key");
    let secret =
        SecretKey::from_primes(&hex_uint(&key["p"]), &hex_uint(&key["q"])).expect("valid primes");
    assert_eq!(
        secret.public_key().n().to_string_radix_vartime(16),
        hex_digits(&key["n"])
    );
    secret
}
