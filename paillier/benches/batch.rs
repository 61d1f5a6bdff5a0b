//! Batched (multi-buffer) against one-at-a-time exponentiations, N = 2048,
//! on one thread, in operations per second.
//!
//! `cargo bench -p veil-paillier --bench batch` measures the kernels the CPU
//! selects (the multi-buffer IFMA kernel where it has AVX-512 IFMA);
//! `VEIL_PORTABLE_ARITH=1 cargo bench -p veil-paillier --bench batch` the
//! portable ones. The group name says which ran.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand::SeedableRng;
use rand::rngs::ChaCha20Rng;
use std::hint::black_box;
use std::time::Duration;
use veil_paillier::fixtures::key_2048_a;
use veil_paillier::{Ciphertext, FixedBaseNoise};

/// Operations per measured call: a multiple of eight and a remainder, as a
/// round of a server would have.
const COUNTS: [usize; 2] = [8, 30];

fn kernel() -> &'static str {
    if std::env::var_os("VEIL_PORTABLE_ARITH").is_some() {
        "portable"
    } else {
        "dispatched"
    }
}

fn one_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("thread pool")
        .install(f)
}

fn batched(c: &mut Criterion) {
    let secret = key_2048_a();
    let public = secret.public_key();
    let mut r = ChaCha20Rng::seed_from_u64(7);
    let table = FixedBaseNoise::new(public, &mut r);
    let mut group = c.benchmark_group(format!("batch-2048-{}", kernel()));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for count in COUNTS {
        group.throughput(Throughput::Elements(count as u64));
        let cts: Vec<Ciphertext> = (0..count)
            .map(|i| public.encrypt_i128(i as i128 - 3, table.noise(&mut r)))
            .collect();
        group.bench_with_input(BenchmarkId::new("decrypt/single", count), &cts, |b, cts| {
            b.iter(|| {
                cts.iter()
                    .map(|c| secret.decrypt(black_box(c)))
                    .collect::<Vec<_>>()
            })
        });
        group.bench_with_input(BenchmarkId::new("decrypt/batch", count), &cts, |b, cts| {
            b.iter(|| one_thread(|| secret.decrypt_batch(black_box(cts))))
        });
        group.bench_function(BenchmarkId::new("crt-noise/single", count), |b| {
            b.iter(|| {
                (0..count)
                    .map(|_| secret.crt_noise(&mut r))
                    .collect::<Vec<_>>()
            })
        });
        group.bench_function(BenchmarkId::new("crt-noise/batch", count), |b| {
            b.iter(|| secret.crt_noise_batch(&mut r, count))
        });
        group.bench_function(BenchmarkId::new("public-noise/single", count), |b| {
            b.iter(|| {
                (0..count)
                    .map(|_| public.fresh_noise(&mut r))
                    .collect::<Vec<_>>()
            })
        });
        group.bench_function(BenchmarkId::new("public-noise/batch", count), |b| {
            b.iter(|| public.fresh_noise_batch(&mut r, count))
        });
        group.bench_function(BenchmarkId::new("fixed-base-noise/single", count), |b| {
            b.iter(|| (0..count).map(|_| table.noise(&mut r)).collect::<Vec<_>>())
        });
        group.bench_function(BenchmarkId::new("fixed-base-noise/batch", count), |b| {
            b.iter(|| table.noise_batch(&mut r, count))
        });
    }
    group.finish();
}

criterion_group!(benches, batched);
criterion_main!(benches);
