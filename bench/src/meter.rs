//! What the device benchmark measures with: a counting TCP relay that sits
//! between one MQTT client and the broker (so bytes are counted at the
//! socket, every MQTT packet with its headers), CPU clocks of a group of
//! threads (one party's shell thread plus its own rayon pool, so that a
//! party's CPU time stays its own while the others run concurrently), and
//! exact MQTT packet sizes for the A↔B accounting.

use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Bytes through a relay so far, per direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Client → broker.
    pub sent: u64,
    /// Broker → client.
    pub received: u64,
}

impl Traffic {
    /// The traffic since an earlier reading.
    pub fn since(&self, earlier: &Traffic) -> Traffic {
        Traffic {
            sent: self.sent.saturating_sub(earlier.sent),
            received: self.received.saturating_sub(earlier.received),
        }
    }

    /// Sent plus received.
    pub fn total(&self) -> u64 {
        self.sent + self.received
    }
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
}

/// A loopback relay for one client connection, counting bytes both ways.
pub struct Relay {
    addr: SocketAddr,
    counters: Arc<Counters>,
    accept: Option<JoinHandle<()>>,
}

fn pump(mut from: TcpStream, mut to: TcpStream, counter: Arc<Counters>, upstream: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        // Counted once written on, so that a snapshot never includes bytes
        // the other side cannot have seen yet.
        let c = if upstream {
            &counter.sent
        } else {
            &counter.received
        };
        c.fetch_add(n as u64, Ordering::SeqCst);
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

impl Relay {
    /// Listens on a free loopback port and relays the first connection it
    /// accepts to `broker`, its threads on `cpus` (empty: wherever the
    /// calling thread may run; `veil bench device --own-core` keeps them
    /// off the device's CPU).
    pub fn start(broker: SocketAddr, cpus: &[usize]) -> Result<Relay> {
        let cpus = cpus.to_vec();
        let listener = TcpListener::bind("127.0.0.1:0").context("binding a relay port")?;
        let addr = listener.local_addr().context("relay address")?;
        let counters = Arc::new(Counters::default());
        let shared = Arc::clone(&counters);
        let accept = std::thread::Builder::new()
            .name("relay".into())
            .spawn(move || {
                // Its pump threads inherit the mask. A relay left where it
                // was only measures with the device's caches shared.
                let _ = crate::cores::restrict(&cpus);
                let Ok((client, _)) = listener.accept() else {
                    return;
                };
                let Ok(server) = TcpStream::connect(broker) else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
                    return;
                };
                let up = Arc::clone(&shared);
                let upstream = std::thread::spawn(move || pump(client, server, up, true));
                pump(server2, client2, shared, false);
                let _ = upstream.join();
            })
            .context("starting a relay thread")?;
        Ok(Relay {
            addr,
            counters,
            accept: Some(accept),
        })
    }

    /// Where the client should connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bytes counted so far.
    pub fn traffic(&self) -> Traffic {
        Traffic {
            sent: self.counters.sent.load(Ordering::SeqCst),
            received: self.counters.received.load(Ordering::SeqCst),
        }
    }

    /// Waits until no byte has crossed for `quiet` (at most `limit`), so
    /// that a snapshot holds every packet of what came before it.
    pub fn settle(&self, quiet: Duration, limit: Duration) -> Traffic {
        let started = std::time::Instant::now();
        let mut last = self.traffic();
        let mut stable_since = std::time::Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(2));
            let now = self.traffic();
            if now != last {
                last = now;
                stable_since = std::time::Instant::now();
            } else if stable_since.elapsed() >= quiet || started.elapsed() >= limit {
                return now;
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The pumps end when either side closes; an unused relay's accept
        // is woken by a connection of our own.
        if let Some(handle) = self.accept.take() {
            if !handle.is_finished() {
                let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
            }
            drop(handle);
        }
    }
}

/// The CPU clocks of a set of threads (Linux thread CPU clocks, readable
/// from any thread of the process).
#[derive(Clone, Default)]
pub struct CpuGroup {
    clocks: Arc<Mutex<Vec<libc::clockid_t>>>,
}

#[allow(unsafe_code)] // pthread_getcpuclockid has no safe wrapper
fn clock_of_current_thread() -> Option<libc::clockid_t> {
    let mut id: libc::clockid_t = 0;
    // SAFETY: pthread_self is always valid for the calling thread and the
    // call only writes the clock id it is given.
    let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) };
    (rc == 0).then_some(id)
}

impl CpuGroup {
    /// Adds the calling thread to the group.
    pub fn join_current(&self) {
        if let Some(id) = clock_of_current_thread()
            && let Ok(mut clocks) = self.clocks.lock()
        {
            clocks.push(id);
        }
    }

    /// CPU time used so far by every thread of the group.
    pub fn total(&self) -> Duration {
        match self.clocks.lock() {
            Ok(clocks) => clocks.iter().map(|id| crate::clock(*id)).sum(),
            Err(_) => Duration::ZERO,
        }
    }

    /// A rayon pool whose workers belong to this group.
    pub fn pool(&self, threads: usize, name: &str) -> Result<rayon::ThreadPool> {
        let group = self.clone();
        let name = name.to_string();
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(move |i| format!("{name}-{i}"))
            .start_handler(move |_| group.join_current())
            .build()
            .context("building a rayon pool")
    }
}

fn varint_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 128 {
        n /= 128;
        len += 1;
    }
    len
}

/// Size of an MQTT 3.1.1 QoS 1 PUBLISH packet, as encoded on the wire.
pub fn publish_packet_len(topic: &str, payload: usize) -> usize {
    let remaining = 2 + topic.len() + 2 + payload;
    1 + varint_len(remaining) + remaining
}

/// Size of an MQTT 3.1.1 PUBACK.
pub const PUBACK_LEN: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_counts_both_directions() {
        let server = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = server.local_addr().expect("addr");
        let echo = std::thread::spawn(move || {
            let (mut s, _) = server.accept().expect("accept");
            let mut buf = [0u8; 100];
            s.read_exact(&mut buf).expect("read");
            s.write_all(&buf[..40]).expect("write");
        });
        let relay = Relay::start(addr, &[]).expect("relay");
        let mut client = TcpStream::connect(relay.addr()).expect("connect");
        client.write_all(&[7u8; 100]).expect("send");
        let mut back = [0u8; 40];
        client.read_exact(&mut back).expect("receive");
        echo.join().expect("echo");
        let t = relay.settle(Duration::from_millis(20), Duration::from_secs(2));
        assert_eq!(
            t,
            Traffic {
                sent: 100,
                received: 40
            }
        );
    }

    #[test]
    fn mqtt_sizes_follow_the_standard() {
        // 2 + 5 + 2 + 10 = 19 remaining bytes: one length byte.
        assert_eq!(publish_packet_len("a/b/c", 10), 21);
        // 128 remaining bytes need two length bytes.
        assert_eq!(publish_packet_len("t", 123), 1 + 2 + 128);
        assert_eq!(varint_len(16_383), 2);
        assert_eq!(varint_len(16_384), 3);
    }

    #[test]
    fn cpu_groups_count_their_pools() {
        let group = CpuGroup::default();
        let pool = group.pool(2, "test").expect("pool");
        let before = group.total();
        pool.install(|| {
            use rayon::prelude::*;
            let s: u64 = (0..4_000_000u64)
                .into_par_iter()
                .map(|i| i.wrapping_mul(i))
                .reduce(|| 0, u64::wrapping_add);
            std::hint::black_box(s);
        });
        assert!(group.total() > before);
    }
}
