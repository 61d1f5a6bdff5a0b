//! Paillier engine benchmarks (N = 2048 unless named otherwise).
//!
//! `cargo bench -p veil-paillier` times each operation;
//! `cargo bench -p veil-paillier --features count-mults` also prints each
//! operation's cost in modular multiplications, which does not depend on
//! machine noise.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use rand::rngs::ChaCha20Rng;
use std::hint::black_box;
use std::time::Duration;
use veil_paillier::counter;
use veil_paillier::fixtures::{key_2048_a, key_3072};
use veil_paillier::{Ciphertext, FixedBaseNoise, KeySize, NoisePool, PoolFiller, SecretKey};

fn rng() -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(7)
}

/// Prints the multiplications one call of `f` costs (with `count-mults`).
fn report<T>(name: &str, per: u64, f: impl FnOnce() -> T) -> T {
    counter::reset();
    let out = f();
    if counter::ENABLED {
        let c = counter::snapshot();
        let per = per.max(1) as f64;
        println!(
            "[mults] {name}: {:.1} full-size (N²) mult+sqr, {:.1} half-size (≈{:.1} full-size equivalent) per unit",
            c.full() as f64 / per,
            c.half as f64 / per,
            c.full_equivalent() / per
        );
    }
    out
}

fn weights(count: usize, seed: u64) -> Vec<i64> {
    use rand::RngExt;
    let mut r = ChaCha20Rng::seed_from_u64(seed);
    (0..count)
        .map(|_| r.random_range(-(1i64 << 15)..(1i64 << 15)))
        .collect()
}

fn ciphertexts(count: usize, table: &FixedBaseNoise) -> Vec<Ciphertext> {
    let public = key_2048_a().public_key();
    let mut r = rng();
    (0..count)
        .map(|i| public.encrypt_i128(i as i128 * 1_000_003 - 400_000_000, table.noise(&mut r)))
        .collect()
}

fn keygen(c: &mut Criterion) {
    let mut group = c.benchmark_group("keygen");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    let mut r = rng();
    group.bench_function("2048", |b| {
        b.iter(|| SecretKey::generate(&mut r, KeySize::Bits2048))
    });
    group.finish();
}

fn single_ops(c: &mut Criterion) {
    let secret = key_2048_a();
    let public = secret.public_key();
    let mut r = rng();
    let table = FixedBaseNoise::new(public, &mut r);
    let m = public.encode_i128(-1234567);
    let a = public.encrypt_i128(99, table.noise(&mut r));
    let b = public.encrypt_i128(-5, table.noise(&mut r));
    let mut group = c.benchmark_group("paillier-2048");
    let _ = report("encrypt public (textbook r^N)", 1, || {
        public.encrypt(&m, &mut r)
    });
    group.bench_function("encrypt/public", |bench| {
        bench.iter(|| public.encrypt(black_box(&m), &mut r))
    });
    let _ = report("encrypt crt (key owner)", 1, || secret.encrypt(&m, &mut r));
    group.bench_function("encrypt/crt", |bench| {
        bench.iter(|| secret.encrypt(black_box(&m), &mut r))
    });
    let _ = report("encrypt fixed-base", 1, || {
        public.encrypt_with_noise(&m, table.noise(&mut r))
    });
    group.bench_function("encrypt/fixed-base", |bench| {
        bench.iter(|| public.encrypt_with_noise(black_box(&m), table.noise(&mut r)))
    });
    // A pool warm enough never to run dry during the measurement: what a
    // server sees when precomputation keeps up.
    let pool = NoisePool::new(PoolFiller::Public(public.clone()), 64, 0, [1; 32]);
    group.bench_function("encrypt/pooled", |bench| {
        bench.iter_batched(
            || {
                pool.fill(1);
            },
            |()| public.encrypt_with_noise(black_box(&m), pool.take()),
            criterion::BatchSize::PerIteration,
        )
    });
    let _ = report("decrypt (crt)", 1, || secret.decrypt(&a));
    group.bench_function("decrypt", |bench| {
        bench.iter(|| secret.decrypt(black_box(&a)))
    });
    let _ = report("add", 1, || public.add(&a, &b));
    group.bench_function("add", |bench| {
        bench.iter(|| public.add(black_box(&a), black_box(&b)))
    });
    let _ = report("add plaintext constant", 1, || public.add_i128(&a, 77));
    group.bench_function("add-plain", |bench| {
        bench.iter(|| public.add_i128(black_box(&a), 77))
    });
    let _ = report("scalar multiply, 16-bit", 1, || public.mul_i128(&a, 40_000));
    group.bench_function("mul-scalar-16bit", |bench| {
        bench.iter(|| public.mul_i128(black_box(&a), black_box(40_000)))
    });
    // A's multi-exponentiations invert their bases once per batch.
    let _ = report("negate (inversion modulo N^2)", 1, || public.neg(&a));
    group.bench_function("negate", |bench| bench.iter(|| public.neg(black_box(&a))));
    let _ = report("rerandomize (fixed-base)", 1, || {
        public.rerandomize(&a, table.noise(&mut r))
    });
    group.finish();

    let secret3 = key_3072();
    let c3 = secret3
        .encrypt(&secret3.public_key().encode_i128(5), &mut r)
        .expect("encrypts");
    let mut group = c.benchmark_group("paillier-3072");
    group.bench_function("decrypt", |bench| {
        bench.iter(|| secret3.decrypt(black_box(&c3)))
    });
    group.finish();
}

fn products(c: &mut Criterion) {
    let public = key_2048_a().public_key();
    let mut r = rng();
    let table = FixedBaseNoise::new(public, &mut r);
    let cts = ciphertexts(784, &table);
    let w = weights(784, 1);
    let mut group = c.benchmark_group("paillier-2048-products");
    group.sample_size(10);
    let _ = report(
        "dot 784 terms, 16-bit signed weights (per term)",
        784,
        || public.dot(&cts, &w),
    );
    group.bench_function("dot-784x16bit", |bench| {
        bench.iter(|| public.dot(black_box(&cts), black_box(&w)))
    });
    let big = weights(784 * 128, 2);
    let _ = report(
        "matvec 784x128, 16-bit signed weights (per term)",
        784 * 128,
        || public.matvec(&cts, &big, 128),
    );
    group.measurement_time(Duration::from_secs(30));
    group.bench_function("matvec-784x128", |bench| {
        bench.iter(|| public.matvec(black_box(&cts), black_box(&big), 128))
    });
    group.finish();
}

fn packing(c: &mut Criterion) {
    let secret = key_2048_a();
    let public = secret.public_key();
    let mut r = rng();
    let table = FixedBaseNoise::new(public, &mut r);
    let mut group = c.benchmark_group("paillier-2048-packing");
    for bits in [40u32, 100] {
        let layout = public.pack_layout(bits).expect("layout");
        let cts: Vec<Ciphertext> = (0..layout.slots)
            .map(|i| public.encrypt_i128(i as i128 - 7, table.noise(&mut r)))
            .collect();
        let _ = report(
            &format!("pack {} values of {bits} bits (per value)", layout.slots),
            layout.slots as u64,
            || public.pack(&layout, &cts),
        );
        group.bench_with_input(
            BenchmarkId::new("pack", format!("{}x{bits}bit", layout.slots)),
            &cts,
            |bench, cts| bench.iter(|| public.pack(&layout, black_box(cts))),
        );
        let packed = public.pack(&layout, &cts).expect("pack");
        let plain = secret.decrypt(&packed).expect("decrypt");
        group.bench_with_input(
            BenchmarkId::new("unpack", format!("{}x{bits}bit", layout.slots)),
            &plain,
            |bench, plain| bench.iter(|| plain.unpack(&layout, layout.slots)),
        );
    }
    group.finish();
}

criterion_group!(benches, single_ops, products, packing, keygen);
criterion_main!(benches);
