//! Batched (multi-buffer) against one-at-a-time exponentiations, N = 2048,
//! on one thread, in operations per second.
//!
//! `cargo bench -p veil-paillier --bench batch` measures the kernels the CPU
//! selects (the multi-buffer IFMA kernel where it has AVX-512 IFMA);
//! `VEIL_PORTABLE_ARITH=1 cargo bench -p veil-paillier --bench batch` the
//! portable ones. The group name says which ran.
//!
//! Before criterion's runs, each pair is also timed as the fastest of 15
//! alternating calls and printed (`[min] ...`): on a shared machine the
//! minimum is what the code costs, where means carry other processes' load.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand::SeedableRng;
use rand::rngs::ChaCha20Rng;
use std::hint::black_box;
use std::time::Duration;
use veil_paillier::fixtures::key_2048_a;
use veil_paillier::{Ciphertext, FixedBaseNoise, PackJob};

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

/// `decrypt_batch` spreads batches over rayon's threads and a single
/// decryption its two CRT halves; the comparison is per core, so both run
/// on a pool of one (built once: building one costs more than a batch).
/// Until 2026-11-29 12:30 the single decryptions ran on every thread, which
/// showed batched decryption at 1.06x single instead of its per-core gain.
fn one_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("thread pool")
    })
    .install(f)
}

/// Fastest of 15 alternating calls of `single` and `batch`, printed.
fn min_pair(name: &str, count: usize, mut single: impl FnMut(), mut batch: impl FnMut()) {
    let (mut s, mut b) = (f64::MAX, f64::MAX);
    for _ in 0..15 {
        let t = std::time::Instant::now();
        single();
        s = s.min(t.elapsed().as_secs_f64());
        let t = std::time::Instant::now();
        batch();
        b = b.min(t.elapsed().as_secs_f64());
    }
    println!(
        "[min] {} {name} x{count}: single {:.0} us/op, batch {:.0} us/op, batch/single throughput {:.2}",
        kernel(),
        s * 1e6 / count as f64,
        b * 1e6 / count as f64,
        s / b
    );
}

fn minimums() {
    let secret = key_2048_a();
    let public = secret.public_key();
    let mut r = ChaCha20Rng::seed_from_u64(8);
    let table = FixedBaseNoise::new(public, &mut r);
    for count in COUNTS {
        let cts: Vec<Ciphertext> = (0..count)
            .map(|i| public.encrypt_i128(i as i128, table.noise(&mut r)))
            .collect();
        min_pair(
            "decrypt",
            count,
            || {
                one_thread(|| {
                    for c in &cts {
                        black_box(secret.decrypt(c).ok());
                    }
                })
            },
            || {
                black_box(one_thread(|| secret.decrypt_batch(&cts)).ok());
            },
        );
        let mut r1 = ChaCha20Rng::seed_from_u64(9);
        let mut r2 = ChaCha20Rng::seed_from_u64(9);
        min_pair(
            "crt-noise",
            count,
            || {
                for _ in 0..count {
                    black_box(secret.crt_noise(&mut r1));
                }
            },
            || {
                black_box(secret.crt_noise_batch(&mut r2, count));
            },
        );
        min_pair(
            "public-noise",
            count,
            || {
                for _ in 0..count {
                    black_box(public.fresh_noise(&mut r1));
                }
            },
            || {
                black_box(public.fresh_noise_batch(&mut r2, count));
            },
        );
        // A's sealing of full packs (12 slots of 160 bits, a comparison
        // list's): Horner's rule and then a separate r^N ("single"), against
        // `pack_noised` ("batch"), whose r^N does Horner's squarings.
        let layout = public.pack_layout(158).expect("layout");
        let packs: Vec<Vec<Ciphertext>> = (0..count)
            .map(|_| cts.iter().cycle().take(layout.slots).cloned().collect())
            .collect();
        let jobs: Vec<PackJob<'_>> = packs
            .iter()
            .map(|values| PackJob {
                layout,
                values,
                shifts: &[],
                offsets: &[],
            })
            .collect();
        min_pair(
            "seal-pack",
            count,
            || {
                one_thread(|| {
                    for values in &packs {
                        let packed = public.pack(&layout, values).ok();
                        let noise = public.fresh_noise(&mut r1);
                        black_box(packed.map(|p| public.rerandomize(&p, noise)));
                    }
                })
            },
            || {
                black_box(one_thread(|| public.pack_noised(&jobs, &mut r2)).ok());
            },
        );
        min_pair(
            "fixed-base-noise",
            count,
            || {
                for _ in 0..count {
                    black_box(table.noise(&mut r1));
                }
            },
            || {
                black_box(table.noise_batch(&mut r2, count));
            },
        );
    }
}

fn batched(c: &mut Criterion) {
    minimums();
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
                one_thread(|| {
                    cts.iter()
                        .map(|c| secret.decrypt(black_box(c)))
                        .collect::<Vec<_>>()
                })
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
