//! Counts of modular multiplications, for benchmarks that report costs in
//! multiplications rather than in seconds.
//!
//! With the `count-mults` feature every multiplication and squaring the
//! crate performs is counted in process-wide counters; without it the
//! counters stay at zero and counting compiles to nothing.

#[cfg(feature = "count-mults")]
use std::sync::atomic::{AtomicU64, Ordering};

/// Multiplication counts since the last [`reset`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Multiplications modulo N² (the ciphertext modulus).
    pub full_mul: u64,
    /// Squarings modulo N².
    pub full_sqr: u64,
    /// Multiplications and squarings modulo a number of N's size (p², q²
    /// or N): about a quarter of the cost of a full one.
    pub half: u64,
}

impl Counts {
    /// Full-size multiplications and squarings together.
    pub fn full(&self) -> u64 {
        self.full_mul + self.full_sqr
    }

    /// The cost in full-size multiplications, counting a half-size one as a
    /// quarter (schoolbook Montgomery multiplication is quadratic).
    pub fn full_equivalent(&self) -> f64 {
        self.full() as f64 + self.half as f64 / 4.0
    }

    /// The difference `self - earlier`.
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            full_mul: self.full_mul.saturating_sub(earlier.full_mul),
            full_sqr: self.full_sqr.saturating_sub(earlier.full_sqr),
            half: self.half.saturating_sub(earlier.half),
        }
    }
}

#[cfg(feature = "count-mults")]
static FULL_MUL: AtomicU64 = AtomicU64::new(0);
#[cfg(feature = "count-mults")]
static FULL_SQR: AtomicU64 = AtomicU64::new(0);
#[cfg(feature = "count-mults")]
static HALF: AtomicU64 = AtomicU64::new(0);

/// Whether counting is compiled in.
pub const ENABLED: bool = cfg!(feature = "count-mults");

/// The counts so far (all zero without the `count-mults` feature).
pub fn snapshot() -> Counts {
    #[cfg(feature = "count-mults")]
    {
        Counts {
            full_mul: FULL_MUL.load(Ordering::Relaxed),
            full_sqr: FULL_SQR.load(Ordering::Relaxed),
            half: HALF.load(Ordering::Relaxed),
        }
    }
    #[cfg(not(feature = "count-mults"))]
    Counts::default()
}

/// Sets every counter back to zero.
pub fn reset() {
    #[cfg(feature = "count-mults")]
    {
        FULL_MUL.store(0, Ordering::Relaxed);
        FULL_SQR.store(0, Ordering::Relaxed);
        HALF.store(0, Ordering::Relaxed);
    }
}

#[inline(always)]
pub(crate) fn full_mul(_n: u64) {
    #[cfg(feature = "count-mults")]
    FULL_MUL.fetch_add(_n, Ordering::Relaxed);
}

#[inline(always)]
pub(crate) fn full_sqr(_n: u64) {
    #[cfg(feature = "count-mults")]
    FULL_SQR.fetch_add(_n, Ordering::Relaxed);
}

#[inline(always)]
pub(crate) fn half(_n: u64) {
    #[cfg(feature = "count-mults")]
    HALF.fetch_add(_n, Ordering::Relaxed);
}
