//! Where the device's per-frame CPU time goes: each phase of its work
//! timed on its own with the thread CPU clock, with warm caches, with
//! caches flushed and the thread idle before the phase (the way a device
//! thread that sleeps on the network between frames meets its code and
//! data), and right after the thread was woken by another thread that ran
//! server work (Paillier scalar multiplications, ~1 ms) while it slept;
//! plus the two main regions `veil bench device` times (the device
//! node's capture, and its handling of a result) and one empty region
//! (the cost of the clock reads themselves).
//!
//! `cargo run --profile dist -p veil-bench --example device_cache [-- MODEL]`
//!
//! `VEIL_IDLE_US` sets the idle time of the flushed column (default 200 µs)
//! and `VEIL_FRAMES` the frames per phase (default 400). The idle time is
//! what matters on this VM (2 cores, AMD EPYC, 2026-11-29 03:28, load
//! average 4.7, pima-mlp, `VEIL_IDLE_US=40000 VEIL_FRAMES=40`, the idle
//! a Pima frame through the broker leaves): the node's capture takes
//! 1.55 µs warm and 21.2 µs flushed, its handling of a result 1.46 µs
//! warm and 25.3 µs flushed, an empty region 0.52 µs and 2.1 µs. The
//! code is the same in every column. After the node's state was
//! flattened (06:39, load 8.3, this example in the `dev` profile): capture
//! 1.61 µs warm and 18.4 µs flushed, result 1.47 and 19.3 µs, empty
//! region 0.66 and 1.24 µs; heap allocations per frame: capture 0,
//! confirmation 0, result 1 (the values handed to the application).
//!
//! The "idle only" column sleeps as long as the flushed one and evicts
//! nothing: on this VM the idle alone makes the caches as cold as the
//! flush (`VEIL_IDLE_US=40000 VEIL_FRAMES=40`, `dist`, 2026-11-29 08:44,
//! load 1.7, quiet machine: capture 2.14 µs warm, 15.77 µs flushed,
//! 15.32 µs idle only, 5.47 µs woken right after ~1 ms of server work;
//! result 1.10, 20.55, 19.71 and 3.40 µs; empty region 0.52, 2.01, 1.53
//! and 0.75 µs). What the device pays per frame is its wake-up after the
//! wait for its result, not the servers' work on the same machine.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use veil_bench::veil_device::VeilDevice;
use veil_bench::{load_model, thread_cpu_time};
use veil_protocol::node::{DeviceNode, DeviceOptions, Input};
use veil_protocol::{Body, Device, DeviceConfig, Envelope, FrameResult, Params, topics};

/// Counts heap allocations (and reallocations), to show what a frame
/// allocates in steady state.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// Forwarding to the system allocator, which upholds `GlobalAlloc`'s
// contract; the counter is the only addition.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

fn frames() -> u64 {
    std::env::var("VEIL_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
}
const FLUSH_BYTES: usize = 32 << 20;

struct Flusher(Vec<u8>);

impl Flusher {
    /// Evicts caches (and, through the sleep, lets the CPU idle as a
    /// device waiting on its socket does).
    fn flush(&mut self) {
        for byte in self.0.iter_mut().step_by(64) {
            *byte = byte.wrapping_add(1);
        }
        std::thread::sleep(idle());
    }
}

/// How long the device idles between frames (VEIL_IDLE_US, default 200 µs;
/// a Pima frame through the broker takes about 45 ms).
fn idle() -> Duration {
    let us = std::env::var("VEIL_IDLE_US")
        .ok()
        .and_then(|v| v.parse().ok());
    Duration::from_micros(us.unwrap_or(200))
}

/// A thread standing in for the servers sharing the machine: on request
/// it runs Paillier work, then wakes the waiting device thread.
struct Server {
    request: std::sync::mpsc::SyncSender<()>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Server {
    fn start() -> Server {
        let (request, requests) = std::sync::mpsc::sync_channel::<()>(1);
        let (finished, done) = std::sync::mpsc::sync_channel::<()>(1);
        std::thread::spawn(move || {
            let key = veil_paillier::fixtures::key_2048_a();
            let pk = key.public_key().clone();
            let mut c = pk.encrypt_i128(12345, pk.fresh_noise(&mut rand::rng()));
            while requests.recv().is_ok() {
                for k in 0..16 {
                    c = pk.mul_i128(&c, (1 << 100) + k);
                }
                std::hint::black_box(&c);
                if finished.send(()).is_err() {
                    break;
                }
            }
        });
        Server { request, done }
    }

    /// Blocks until the server's work is done, as the device blocks on its
    /// socket.
    fn work(&self) {
        if self.request.send(()).is_ok() {
            let _ = self.done.recv();
        }
    }
}

fn timed<T>(f: impl FnOnce() -> T) -> Duration {
    let before = thread_cpu_time();
    std::hint::black_box(f());
    thread_cpu_time().saturating_sub(before)
}

fn main() -> anyhow::Result<()> {
    let name = std::env::args().nth(1).unwrap_or_else(|| "pima-mlp".into());
    let model = load_model(&name)?;
    let topology = Arc::new(model.topology().clone());
    let device = Device::new(DeviceConfig {
        device: "devA".into(),
        params: Params::default(),
        topology: Arc::clone(&topology),
        server_a: veil_paillier::fixtures::key_2048_a().public_key().clone(),
        server_b: veil_paillier::fixtures::key_2048_b().public_key().clone(),
    })?;
    let mut bench = VeilDevice::new(DeviceNode::new(
        device,
        DeviceOptions::default(),
        rand::random(),
    ));
    bench.handle(Input::Connected)?;
    bench.open_session()?;
    bench.discard();
    let sid = bench
        .node
        .device()
        .current()
        .map(|s| s.sid)
        .expect("a session");
    let result_bytes = bench.node.device().result_layout().bytes;
    let x_hat: Vec<i64> = topology.input_ranges.iter().map(|(lo, _)| *lo).collect();
    let mut frame = Vec::new();
    let mut outputs = Vec::new();
    let result_of = |t: u64| -> anyhow::Result<Vec<u8>> {
        let body = Body::Result(FrameResult {
            values: vec![0x5a; result_bytes],
        });
        Ok(Envelope::new("devA", sid, t, body).to_device_bytes()?)
    };
    let result_input = |t: u64| -> anyhow::Result<Input> {
        Ok(Input::Message {
            topic: topics::result("devA"),
            payload: result_of(t)?.into(),
        })
    };

    let phases = [
        "empty region (clock reads)",
        "expand the next frame's input masks (prepare)",
        "mask and encode a frame, masks prepared",
        "mask and encode a frame, masks expanded inline",
        "decode and unmask a result",
        "region 1 of veil bench device: the node's capture",
        "region 2 of veil bench device: the node's result",
    ];
    let mut flusher = Flusher(vec![0u8; FLUSH_BYTES]);
    let server = Server::start();
    // The raw phases use counters far above the node's own.
    let mut t = 1u64 << 32;
    println!(
        "{name}: thread CPU time per phase, mean of {} frames",
        frames()
    );
    println!(
        "| phase | warm | caches flushed | woken after server work | idle only |\n|---|---|---|---|---|"
    );
    for (p, phase) in phases.iter().enumerate() {
        let mut spent = [Duration::ZERO; 4];
        for (c, cold) in [0u8, 1, 2, 3].into_iter().enumerate() {
            for _ in 0..frames() {
                t += 1;
                let result = result_of(t)?;
                let flush = |f: &mut Flusher| match cold {
                    1 => f.flush(),
                    2 => server.work(),
                    // Asleep as long, nothing run to evict the caches: what
                    // the idle itself costs on this machine.
                    3 => std::thread::sleep(idle()),
                    _ => {}
                };
                let d = bench.node.device_mut();
                let spent_now = match p {
                    0 => {
                        flush(&mut flusher);
                        timed(|| ())
                    }
                    1 => {
                        flush(&mut flusher);
                        timed(|| d.prepare(t))
                    }
                    2 => {
                        d.prepare(t);
                        flush(&mut flusher);
                        timed(|| d.write_frame(&x_hat, t, &[t - 1], &mut frame))
                    }
                    3 => {
                        flush(&mut flusher);
                        timed(|| d.write_frame(&x_hat, t, &[t - 1], &mut frame))
                    }
                    4 => {
                        flush(&mut flusher);
                        timed(|| d.read_result(&result, &mut outputs))
                    }
                    5 => {
                        flush(&mut flusher);
                        let mut captured = Ok(0);
                        let spent = timed(|| captured = bench.capture(&x_hat));
                        bench.handle(result_input(captured?)?)?;
                        bench.discard();
                        spent
                    }
                    _ => {
                        let captured = bench.capture(&x_hat)?;
                        bench.discard();
                        let input = result_input(captured)?;
                        flush(&mut flusher);
                        timed(|| bench.handle(input))
                    }
                };
                spent[c] += spent_now;
            }
        }
        let us = |d: Duration| d.as_secs_f64() * 1e6 / frames() as f64;
        println!(
            "| {phase} | {:.2} µs | {:.2} µs | {:.2} µs | {:.2} µs |",
            us(spent[0]),
            us(spent[1]),
            us(spent[2]),
            us(spent[3])
        );
    }
    // Allocations of the node's steady-state frame (capture, the broker's
    // confirmation of its frame, its result), the shell's staging of the
    // messages included; the result's input is built outside the count.
    bench.handle(Input::Connected)?;
    bench.discard();
    let mut counted = 0;
    let mut per_input = [0u64; 3];
    let mut confirms = Vec::with_capacity(4);
    for _ in 0..frames() {
        let before = allocations();
        let t = bench.capture(&x_hat)?;
        per_input[0] += allocations() - before;
        bench.publish(|m| {
            confirms.extend(m.confirm);
            Ok(())
        })?;
        let input = result_input(t)?;
        let before = allocations();
        for token in confirms.drain(..) {
            bench.handle(Input::Confirmed(token))?;
        }
        per_input[1] += allocations() - before;
        let before = allocations();
        let delivered = bench.handle(input)?;
        per_input[2] += allocations() - before;
        counted += u64::from(delivered.is_some());
        bench.discard();
    }
    let n = frames() as f64;
    println!(
        "\nheap allocations per frame, {counted} frames delivered: capture {:.2}, confirmation {:.2}, result {:.2}",
        per_input[0] as f64 / n,
        per_input[1] as f64 / n,
        per_input[2] as f64 / n
    );
    Ok(())
}
