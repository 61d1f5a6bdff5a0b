//! Fresh encryption randomness off the critical path.
//!
//! Three sources of noise, each resting on a stated assumption:
//!
//! * **Textbook** ([`PublicKey::fresh_noise`], or [`SecretKey::crt_noise`]
//!   for the key owner): `r^N mod N²` for uniform r. Semantic security rests
//!   on the decisional composite residuosity (DCR) assumption alone.
//! * **Pool** ([`NoisePool`]): the same textbook values, computed ahead of
//!   time by background threads and taken one at a time. Same assumption as
//!   textbook: only *when* the exponentiation happens changes.
//! * **Fixed base** ([`FixedBaseNoise`], Damgård-Jurik-Nielsen style): `h^α`
//!   with `h = (-x²)^N mod N²` fixed and `α` a short uniform exponent of
//!   twice the security level in bits (224 bits for N of 2048), evaluated
//!   with a precomputed comb table in α_bits/5 multiplications. Rests
//!   on DCR *plus* the assumption that short exponents of h are
//!   indistinguishable from full ones (the short-exponent indistinguishability
//!   assumption used by DJN; the best known attack, Pollard's lambda method,
//!   costs 2^(α_bits/2)).
//!
//! Callers choose: [`NoiseSource`] names the choice so that it can be
//! configured.

use crate::ciphertext::Noise;
use crate::keys::{PublicKey, SecretKey, random_below, random_bits};
use crate::mont::{Elem, batch_width, bits_at, ct_select_into};
use rand::rngs::ChaCha20Rng;
use rand_core::{CryptoRng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use zeroize::Zeroize;

/// Which kind of noise an encryptor uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NoiseSource {
    /// Textbook `r^N`, computed when needed (DCR).
    Textbook,
    /// Textbook `r^N`, precomputed by background threads (DCR).
    #[default]
    Pool,
    /// `h^α` with a short α and a precomputed table (DCR + short exponents).
    FixedBase,
}

/// Fixed-base short-exponent noise (see the module documentation).
///
/// `h^α` is evaluated with a comb: row i of the table holds
/// `h^(d·2^(window·i))` for every digit d, so one noise costs one
/// multiplication per row. α is secret (whoever knows it can strip the noise
/// off a ciphertext), so each row is read in full and the wanted entry picked
/// out without branches or secret-dependent addresses.
pub struct FixedBaseNoise {
    key: PublicKey,
    /// `table[i][d] = h^(d·2^(window·i))` for digits d in `0..2^window`.
    table: Vec<Vec<Elem>>,
    window: u32,
    alpha_bits: u32,
}

impl FixedBaseNoise {
    /// The default comb width: 5 bits balances table reads against
    /// multiplications (45 rows for N of 2048 bits, about 0.9 MiB).
    pub const DEFAULT_WINDOW: u32 = 5;

    /// Draws a base and builds the table with α of twice the key's security
    /// level in bits.
    pub fn new<R: CryptoRng + ?Sized>(key: &PublicKey, rng: &mut R) -> Self {
        let alpha_bits = 2 * key.size().security_bits();
        Self::with_parameters(key, rng, Self::DEFAULT_WINDOW, alpha_bits)
    }

    /// Like [`FixedBaseNoise::new`] with an explicit comb width (1 to 8) and
    /// exponent length.
    pub fn with_parameters<R: CryptoRng + ?Sized>(
        key: &PublicKey,
        rng: &mut R,
        window: u32,
        alpha_bits: u32,
    ) -> Self {
        let window = window.clamp(1, 8);
        let ctx = key.ctx();
        let n = key.n();
        let x = random_below(rng, key.inner.n_odd.as_nz_ref());
        let x2 = x.mul_mod(&x, key.inner.n_odd.as_nz_ref());
        let minus_x2 = n.wrapping_sub(&x2);
        let h = ctx.pow_vartime(&ctx.enter(&minus_x2), n);
        let rows = alpha_bits.div_ceil(window) as usize;
        let per_row = 1usize << window;
        let mut table = Vec::with_capacity(rows);
        let mut row_base = h;
        for _ in 0..rows {
            let mut row = Vec::with_capacity(per_row);
            row.push(ctx.one());
            row.push(row_base.clone());
            for d in 2..per_row {
                let next = ctx.mul(&row[d - 1], &row_base);
                row.push(next);
            }
            // h^(2^(window·(i+1))) = (last entry)·row_base.
            row_base = ctx.mul(&row[per_row - 1], &row_base);
            table.push(row);
        }
        FixedBaseNoise {
            key: key.clone(),
            table,
            window,
            alpha_bits,
        }
    }

    /// Bits of the short exponent α.
    pub fn alpha_bits(&self) -> u32 {
        self.alpha_bits
    }

    /// The key the table belongs to.
    pub fn public_key(&self) -> &PublicKey {
        &self.key
    }

    /// One noise value: `h^α` for a fresh uniform α.
    pub fn noise<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> Noise {
        let mut alpha = random_bits(rng, self.alpha_bits);
        let noise = self.noise_for(&crate::words::u64_words(&alpha));
        alpha.zeroize();
        noise
    }

    /// `count` values of [`FixedBaseNoise::noise`], the same ones `count`
    /// calls would draw from `rng`, evaluated eight at a time where the CPU
    /// has AVX-512 IFMA.
    pub fn noise_batch<R: CryptoRng + ?Sized>(&self, rng: &mut R, count: usize) -> Vec<Noise> {
        self.noise_many(&mut [rng], count)
    }

    /// Fixed-base noise, value i drawn from generator `i mod rngs.len()`.
    fn noise_many<R: CryptoRng + ?Sized>(&self, rngs: &mut [&mut R], count: usize) -> Vec<Noise> {
        let lanes = rngs.len();
        if lanes == 0 {
            return Vec::new();
        }
        let alphas: Vec<_> = (0..count)
            .map(|i| {
                let mut alpha = random_bits(&mut *rngs[i % lanes], self.alpha_bits);
                let words = crate::words::u64_words(&alpha);
                alpha.zeroize();
                words
            })
            .collect();
        let refs: Vec<&[u64]> = alphas.iter().map(|a| &a[..]).collect();
        self.key
            .ctx()
            .comb_many(&self.table, self.window, &refs, |alpha| {
                self.noise_for(alpha).into_elem()
            })
            .into_iter()
            .map(Noise)
            .collect()
    }

    fn noise_for(&self, alpha: &[u64]) -> Noise {
        let ctx = self.key.ctx();
        let mut acc = ctx.one();
        let mut selected = ctx.one();
        for (i, row) in self.table.iter().enumerate() {
            let digit = bits_at(alpha, i as u32 * self.window, self.window);
            ct_select_into(row, digit, &mut selected);
            ctx.mul_assign(&mut acc, &selected);
        }
        selected.zeroize();
        Noise(acc)
    }
}

/// Where a pool's filler threads get their values.
#[derive(Clone)]
pub enum PoolFiller {
    /// Textbook `r^N` with the public key (a full exponentiation each).
    Public(PublicKey),
    /// CRT noise with the secret key (about four times cheaper).
    Secret(Arc<SecretKey>),
    /// Fixed-base noise.
    FixedBase(Arc<FixedBaseNoise>),
}

impl PoolFiller {
    fn make<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> Noise {
        match self {
            PoolFiller::Public(key) => key.fresh_noise(rng),
            PoolFiller::Secret(key) => key.crt_noise(rng),
            PoolFiller::FixedBase(table) => table.noise(rng),
        }
    }

    /// `count` values, value i drawn from generator `i mod rngs.len()`,
    /// computed in batches.
    fn make_many<R: CryptoRng + ?Sized>(&self, rngs: &mut [&mut R], count: usize) -> Vec<Noise> {
        match self {
            PoolFiller::Public(key) => key.fresh_noise_many(rngs, count),
            PoolFiller::Secret(key) => key.crt_noise_many(rngs, count),
            PoolFiller::FixedBase(table) => table.noise_many(rngs, count),
        }
    }
}

struct PoolShared {
    queue: Mutex<VecDeque<Elem>>,
    /// Signalled when the queue drops below capacity or on shutdown.
    wanted: Condvar,
    capacity: usize,
    stop: AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// A bounded pool of precomputed noise values, refilled in the background.
/// Taking from an empty pool computes a value inline (counted as a miss), so
/// the pool never blocks its caller.
pub struct NoisePool {
    shared: Arc<PoolShared>,
    filler: PoolFiller,
    workers: Vec<JoinHandle<()>>,
    /// Seeds every generator the pool uses (its threads', a miss's, a
    /// fill's), so that a seeded pool draws the same values. Boxed: a
    /// generator is 300-odd bytes, and enums hold pools by value.
    seeds: Box<Mutex<ChaCha20Rng>>,
}

/// Hit and miss counts of a pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Draws served from the pool.
    pub hits: u64,
    /// Draws computed on the spot because the pool was empty.
    pub misses: u64,
    /// Values ready now.
    pub available: usize,
}

impl NoisePool {
    /// Starts `threads` background fillers keeping up to `capacity` values
    /// ready. With `threads == 0` the pool only fills through
    /// [`NoisePool::fill`]. `seed` drives all of its randomness: draw it
    /// from the OS in a server, fix it in a test or a simulation.
    pub fn new(filler: PoolFiller, capacity: usize, threads: usize, seed: [u8; 32]) -> Self {
        let mut seeds = ChaCha20Rng::from_seed(seed);
        let shared = Arc::new(PoolShared {
            queue: Mutex::new(VecDeque::with_capacity(capacity)),
            wanted: Condvar::new(),
            capacity,
            stop: AtomicBool::new(false),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        });
        let mut workers = Vec::with_capacity(threads);
        for index in 0..threads {
            let shared = Arc::clone(&shared);
            let filler = filler.clone();
            let rng = ChaCha20Rng::from_rng(&mut seeds);
            let spawned = std::thread::Builder::new()
                .name(format!("veil-noise-{index}"))
                .spawn(move || fill_loop(&shared, &filler, rng));
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(e) => tracing::warn!(error = %e, "could not start a noise pool thread"),
            }
        }
        NoisePool {
            shared,
            filler,
            workers,
            seeds: Box::new(Mutex::new(seeds)),
        }
    }

    /// A generator of its own for one piece of work.
    fn child_rng(&self) -> ChaCha20Rng {
        ChaCha20Rng::from_rng(&mut *lock(&self.seeds))
    }

    /// Takes one noise value (computing it inline if the pool is empty).
    pub fn take(&self) -> Noise {
        let popped = lock(&self.shared.queue).pop_front();
        self.shared.wanted.notify_one();
        match popped {
            Some(value) => {
                self.shared.hits.fetch_add(1, Ordering::Relaxed);
                Noise(value)
            }
            None => {
                self.shared.misses.fetch_add(1, Ordering::Relaxed);
                self.filler.make(&mut self.child_rng())
            }
        }
    }

    /// Fills the pool to `count` values (at most its capacity) on the
    /// calling thread, in parallel with rayon.
    pub fn fill(&self, count: usize) {
        use rayon::prelude::*;
        let have = lock(&self.shared.queue).len();
        let want = count.min(self.shared.capacity).saturating_sub(have);
        // Seeds drawn in order before the parallel part: the values do not
        // depend on how rayon schedules it.
        let rngs: Vec<ChaCha20Rng> = (0..want).map(|_| self.child_rng()).collect();
        let mut rngs = rngs;
        let values: Vec<Elem> = rngs
            .par_chunks_mut(batch_width())
            .flat_map_iter(|chunk| {
                let mut refs: Vec<&mut ChaCha20Rng> = chunk.iter_mut().collect();
                let count = refs.len();
                self.filler.make_many(&mut refs, count)
            })
            .map(Noise::into_elem)
            .collect();
        lock(&self.shared.queue).extend(values);
    }

    /// Another handle on this pool's values, for another thread's backend
    /// (a server's worker threads): it draws from the same queue and starts
    /// no filler of its own, so the pool's filling costs what one pool's
    /// does. Its own generator for misses is seeded from this pool's.
    /// Dropping a handle stops nothing; dropping the pool that started the
    /// fillers stops them (handles then compute what they draw).
    pub fn share(&self) -> NoisePool {
        NoisePool {
            shared: Arc::clone(&self.shared),
            filler: self.filler.clone(),
            workers: Vec::new(),
            seeds: Box::new(Mutex::new(self.child_rng())),
        }
    }

    /// Counts so far.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            hits: self.shared.hits.load(Ordering::Relaxed),
            misses: self.shared.misses.load(Ordering::Relaxed),
            available: lock(&self.shared.queue).len(),
        }
    }
}

impl Drop for NoisePool {
    fn drop(&mut self) {
        if self.workers.is_empty() {
            // A handle from `share`, or a pool filled by hand.
            return;
        }
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wanted.notify_all();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic in a filler cannot leave the queue inconsistent (push and pop
    // are single operations), so a poisoned lock is still usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn fill_loop(shared: &PoolShared, filler: &PoolFiller, mut rng: ChaCha20Rng) {
    loop {
        let room = {
            let mut queue = lock(&shared.queue);
            while queue.len() >= shared.capacity && !shared.stop.load(Ordering::Relaxed) {
                queue = shared
                    .wanted
                    .wait(queue)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            shared.capacity.saturating_sub(queue.len())
        };
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        // A batch of eight costs about what three single values do (see the
        // crate README), so the threads fill a batch's worth at a time.
        let values = filler.make_many(&mut [&mut rng], room.min(batch_width()));
        let mut queue = lock(&shared.queue);
        for value in values {
            if queue.len() < shared.capacity {
                queue.push_back(value.into_elem());
            }
        }
    }
}
