//! Writes veil's part of `tests/interop/phe_vectors.json`: ciphertexts made
//! by every encryption path of veil (and homomorphic results), under the
//! phe-generated 2048-bit key, for `make_vectors.py` to decrypt with phe.

use serde_json::{Value, json};
use std::sync::Arc;
use veil_paillier::{
    BoxedUint, Ciphertext, FixedBaseNoise, I256, NoisePool, PoolFiller, SecretKey,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/phe_vectors.json"
    );
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let key = doc["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["name"] == "phe-2048"))
        .ok_or("no phe-2048 key in the vector file")?;
    let hex = |v: &Value| -> Result<BoxedUint, Box<dyn std::error::Error>> {
        let digits = v.as_str().ok_or("not a string")?.trim_start_matches("0x");
        Ok(BoxedUint::from_str_radix_vartime(digits, 16).map_err(|e| format!("{e:?}"))?)
    };
    let secret = Arc::new(SecretKey::from_primes(&hex(&key["p"])?, &hex(&key["q"])?)?);
    let public = secret.public_key().clone();
    let mut rng = rand::rng();
    let mut out = Vec::new();
    let mut record = |how: &str, m: I256, c: &Ciphertext| {
        out.push(json!({"how": how, "m": m.to_string(), "c": format!("0x{}", c.to_uint().to_string_radix_vartime(16))}));
    };
    let values: [i64; 4] = [0, 42, -42, i64::MAX];
    let table = FixedBaseNoise::new(&public, &mut rng);
    let pool = NoisePool::new(PoolFiller::Secret(Arc::clone(&secret)), 8, 0, [1; 32]);
    pool.fill(8);
    let mut encrypted = Vec::new();
    for &v in &values {
        let m = public.encode_i128(i128::from(v));
        let c = public.encrypt(&m, &mut rng)?;
        record("public", I256::from(v), &c);
        record("crt", I256::from(v), &secret.encrypt(&m, &mut rng)?);
        record(
            "fixed-base",
            I256::from(v),
            &public.encrypt_with_noise(&m, table.noise(&mut rng))?,
        );
        record(
            "pool",
            I256::from(v),
            &public.encrypt_with_noise(&m, pool.take())?,
        );
        encrypted.push(c);
    }
    let weights = [3i64, -32768, 32767, 1];
    let dot = public.dot(&encrypted, &weights)?;
    let expected: i128 = values
        .iter()
        .zip(&weights)
        .map(|(v, w)| i128::from(*v) * i128::from(*w))
        .sum();
    record("dot", I256::from(expected), &dot);
    let small = [5i64, -7, 11];
    let cts: Vec<Ciphertext> = small
        .iter()
        .map(|v| public.encrypt_i128(i128::from(*v), table.noise(&mut rng)))
        .collect();
    let layout = public.pack_layout(8)?;
    let packed = public.pack(&layout, &cts)?;
    let plain = public.pack_plain(&layout, &small.map(I256::from))?;
    let as_signed = plain.to_i256()?;
    record("packed", as_signed, &packed);
    doc["veil"] = json!({"key": "phe-2048", "ciphertexts": out});
    std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")?;
    println!(
        "wrote {} veil ciphertexts to {path}; now re-run make_vectors.py",
        doc["veil"]["ciphertexts"].as_array().map_or(0, Vec::len)
    );
    Ok(())
}
