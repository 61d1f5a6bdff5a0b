//! Which CPUs the measured device runs on, and which the servers, the
//! broker and the byte-counting relays run on.
//!
//! # Why
//! On a deployment the servers and the broker are other machines: their
//! work never evicts the gateway's caches. In `veil bench device` all of
//! them share this machine, so the device's cost per input (a Pima
//! capture: 2.1 µs warm, 15 µs cold) could have been the servers' work
//! evicting its caches. `veil bench device --own-core` tests that: the
//! device's thread alone on one CPU, everything else on the others. It is
//! not the default because on this project's 2-core VM it made the
//! device dearer (pima-mlp, 50 frames, 2026-11-29: 32.0 µs per frame with
//! a core of its own, 26.2 µs shared): what the device pays for is waking
//! after its ~40 ms wait for the result, which costs as much with nothing
//! run meanwhile as after a 32 MB cache flush
//! (`bench/examples/device_cache.rs`, its "idle only" column).
//!
//! # Platform
//! Linux `sched_setaffinity`; elsewhere every placement is shared.

use serde::{Deserialize, Serialize};
use std::io;

/// Where the device's thread runs relative to everything else.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// Every thread may run on every CPU the process may use.
    #[default]
    Shared,
    /// The device's thread alone on `device`; every other thread on
    /// `others`.
    Own {
        /// The device's CPU.
        device: usize,
        /// Everyone else's CPUs.
        others: Vec<usize>,
    },
}

impl Placement {
    /// The device on the first CPU this thread may use, everything else on
    /// the rest; [`Placement::Shared`] with fewer than two CPUs.
    pub fn own_core() -> io::Result<Placement> {
        let cpus = allowed()?;
        Ok(match cpus.split_first() {
            Some((&device, others)) if !others.is_empty() => Placement::Own {
                device,
                others: others.to_vec(),
            },
            _ => Placement::Shared,
        })
    }

    /// The device's CPU, if it has one of its own.
    pub fn device(&self) -> Option<usize> {
        match self {
            Placement::Shared => None,
            Placement::Own { device, .. } => Some(*device),
        }
    }

    /// Everyone else's CPUs (empty: no restriction).
    pub fn others(&self) -> &[usize] {
        match self {
            Placement::Shared => &[],
            Placement::Own { others, .. } => others,
        }
    }

    /// How the report names it.
    pub fn describe(&self) -> String {
        match self {
            Placement::Shared => {
                "shared: the device's thread, servers and broker on every CPU".into()
            }
            Placement::Own { device, others } => format!(
                "own core: the device's thread on CPU {device}; servers, broker and relays on CPUs {others:?}"
            ),
        }
    }
}

/// The CPUs the calling thread may run on, in increasing order.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn allowed() -> io::Result<Vec<usize>> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes at most size_of::<cpu_set_t>() bytes into
    // the set it is given.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: CPU_ISSET reads the set at an index below CPU_SETSIZE.
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// The CPUs the calling thread may run on (all of them, as far as this
/// platform tells).
#[cfg(not(target_os = "linux"))]
pub fn allowed() -> io::Result<Vec<usize>> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok((0..n).collect())
}

/// Restricts the calling thread, and the threads it starts from now on, to
/// `cpus`; nothing when `cpus` is empty.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn restrict(cpus: &[usize]) -> io::Result<()> {
    if cpus.is_empty() {
        return Ok(());
    }
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("CPU {cpu} is beyond the affinity mask"),
            ));
        }
        // SAFETY: the index is below CPU_SETSIZE (checked above).
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: the set is initialised and its size is passed with it.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Does nothing off Linux (every placement is shared there).
#[cfg(not(target_os = "linux"))]
pub fn restrict(_cpus: &[usize]) -> io::Result<()> {
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_restricted_thread_reports_its_cpus_and_its_children_inherit_them() {
        let all = allowed().expect("affinity");
        assert!(!all.is_empty());
        let first = all[0];
        std::thread::spawn(move || {
            restrict(&[first]).expect("restrict");
            assert_eq!(allowed().expect("affinity"), vec![first]);
            let child = std::thread::spawn(|| allowed().expect("affinity"))
                .join()
                .expect("child");
            assert_eq!(child, vec![first]);
        })
        .join()
        .expect("thread");
        // The spawning thread kept its own mask.
        assert_eq!(allowed().expect("affinity"), all);
    }

    #[test]
    fn own_core_splits_off_the_first_cpu_or_shares_with_one() {
        let all = allowed().expect("affinity");
        match Placement::own_core().expect("placement") {
            Placement::Own { device, others } => {
                assert_eq!(device, all[0]);
                assert_eq!(others, all[1..].to_vec());
            }
            Placement::Shared => assert_eq!(all.len(), 1),
        }
    }

    #[test]
    fn restricting_to_a_cpu_beyond_the_mask_is_refused() {
        let err = restrict(&[libc::CPU_SETSIZE as usize]).expect_err("beyond the mask");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
