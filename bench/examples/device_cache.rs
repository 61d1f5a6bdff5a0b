//! Where the device's per-frame CPU time goes: each phase of its work
//! timed on its own with the thread CPU clock, with warm caches and with
//! caches flushed before the phase (the way a device thread that sleeps on
//! the network between frames meets its code and data), plus the two
//! regions `veil bench device` times and one empty region (the cost of the
//! clock reads themselves).
//!
//! `cargo run --profile bench -p veil-bench --example device_cache [-- MODEL]`

use std::sync::Arc;
use std::time::Duration;
use veil_bench::veil_device::VeilDevice;
use veil_bench::{load_model, thread_cpu_time};
use veil_protocol::{Body, Device, DeviceConfig, Envelope, FrameResult, Params};

const FRAMES: u64 = 400;
const FLUSH_BYTES: usize = 32 << 20;

struct Flusher(Vec<u8>);

impl Flusher {
    /// Evicts caches (and, through the sleep, lets the CPU idle as a
    /// device waiting on its socket does).
    fn flush(&mut self) {
        for byte in self.0.iter_mut().step_by(64) {
            *byte = byte.wrapping_add(1);
        }
        std::thread::sleep(Duration::from_micros(200));
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
    let mut device = Device::new(DeviceConfig {
        device: "devA".into(),
        params: Params::default(),
        topology: Arc::clone(&topology),
        server_a: veil_paillier::fixtures::key_2048_a().public_key().clone(),
        server_b: veil_paillier::fixtures::key_2048_b().public_key().clone(),
    })?;
    let _ = device.open_session(0, &mut rand::rng())?;
    let sid = device.current().map(|s| s.sid).expect("a session");
    let result_bytes = device.result_layout().bytes;
    let x_hat: Vec<i64> = topology.input_ranges.iter().map(|(lo, _)| *lo).collect();
    let mut frame = Vec::new();
    let mut outputs = Vec::new();
    let result_of = |t: u64| -> anyhow::Result<Vec<u8>> {
        let body = Body::Result(FrameResult {
            values: vec![0x5a; result_bytes],
        });
        Ok(Envelope::new("devA", sid, t, body).to_device_bytes()?)
    };
    let mut bench = VeilDevice::new(device);

    let phases = [
        "empty region (clock reads)",
        "expand the next frame's input masks (prepare)",
        "mask and encode a frame, masks prepared",
        "mask and encode a frame, masks expanded inline",
        "decode and unmask a result",
        "region 1 of veil bench device: capture",
        "region 2 of veil bench device: result, then prepare",
    ];
    let mut flusher = Flusher(vec![0u8; FLUSH_BYTES]);
    let mut t = 0u64;
    println!("{name}: thread CPU time per phase, mean of {FRAMES} frames");
    println!("| phase | warm | caches flushed |\n|---|---|---|");
    for (p, phase) in phases.iter().enumerate() {
        let mut spent = [Duration::ZERO; 2];
        for (c, cold) in [false, true].into_iter().enumerate() {
            for _ in 0..FRAMES {
                t += 1;
                let result = result_of(t)?;
                let flush = |f: &mut Flusher| {
                    if cold {
                        f.flush();
                    }
                };
                let d = &mut bench.device;
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
                        bench.device.prepare(t);
                        flush(&mut flusher);
                        timed(|| bench.capture(&x_hat, t).map(<[u8]>::len))
                    }
                    _ => {
                        bench.capture(&x_hat, t)?;
                        flush(&mut flusher);
                        timed(|| bench.result(&result))
                    }
                };
                spent[c] += spent_now;
            }
        }
        let us = |d: Duration| d.as_secs_f64() * 1e6 / FRAMES as f64;
        println!(
            "| {phase} | {:.2} µs | {:.2} µs |",
            us(spent[0]),
            us(spent[1])
        );
    }
    Ok(())
}
