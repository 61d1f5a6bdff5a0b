//! veil-sim runs veil's three protocol nodes (N devices, server A, server
//! B) in one thread against a model of the MQTT broker, on a simulated
//! clock, with faults drawn from a seed, and checks the protocol's
//! invariants after every step and at quiescence.
//!
//! # Approach
//! FoundationDB's simulation testing and TigerBeetle's VOPR: everything
//! that is not protocol (sockets, disks, clocks, randomness) is simulated
//! and seeded, so a failing seed replays exactly. The run has a chaos
//! phase (drops, duplicates, reordering, delays, disconnects, crashes with
//! restarts from durable state only, clock jumps, a device restored from a
//! stale copy of its state) and then heals, and must converge.
//!
//! # Invariants
//! See [`check`]. A failing seed prints
//! `cargo run --release -p veil-sim -- --seed N`.

#![warn(missing_docs)]

mod broker;
pub mod check;
mod fixture;
mod world;

pub use broker::NetFaults;
pub use world::{Summary, run};

/// Name of server A's worker in the simulation.
pub const WORKER: &str = "a1";

/// A party of the simulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Party {
    /// Server A.
    A,
    /// Server B.
    B,
    /// Device number n.
    Device(usize),
}

/// The broker name of device number `index`.
pub fn device_name(index: usize) -> String {
    format!("dev{index}")
}

/// The simulation's only source of randomness.
pub struct SimRng(rand::rngs::ChaCha20Rng);

impl SimRng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> SimRng {
        use rand_core::SeedableRng;
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        bytes[8..16].copy_from_slice(b"veil-sim");
        SimRng(rand::rngs::ChaCha20Rng::from_seed(bytes))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        use rand_core::Rng;
        self.0.next_u64()
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// True with probability `permille`/1000.
    pub fn chance(&mut self, permille: u64) -> bool {
        self.below(1000) < permille
    }

    /// A 32-byte seed for a party's own generator.
    pub fn seed32(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        out
    }
}

/// Why a seed failed.
#[derive(Debug)]
pub struct Failure {
    /// The run's seed.
    pub seed: u64,
    /// Simulated time of the failure, in ms.
    pub at: u64,
    /// What went wrong.
    pub what: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} failed at {} ms: {} — reproduce: cargo run --release -p veil-sim -- --seed {}",
            self.seed, self.at, self.what, self.seed
        )
    }
}

/// Runs seeds `from..from + count` on every core; returns how many passed
/// and every failure, in seed order.
pub fn run_many(from: u64, count: u64) -> (u64, Vec<Failure>) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let next = std::sync::atomic::AtomicU64::new(from);
    let end = from.saturating_add(count);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if seed >= end {
                        return;
                    }
                    let outcome = run(seed);
                    results
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((seed, outcome));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by_key(|(seed, _)| *seed);
    let mut ok = 0;
    let mut failures = Vec::new();
    for (_, outcome) in results {
        match outcome {
            Ok(_) => ok += 1,
            Err(f) => failures.push(f),
        }
    }
    (ok, failures)
}
