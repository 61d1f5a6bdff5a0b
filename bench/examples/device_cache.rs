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
use veil_bench::{load_model, thread_cpu_time};
use veil_protocol::{
    Body, Device, DeviceConfig, Envelope, FrameResult, Params, codec, output_bits, result_width,
};

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

fn timed<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let before = thread_cpu_time();
    let out = f();
    (thread_cpu_time().saturating_sub(before), out)
}

fn main() -> anyhow::Result<()> {
    let name = std::env::args().nth(1).unwrap_or_else(|| "pima-mlp".into());
    let model = load_model(&name)?;
    let topology = Arc::new(model.topology().clone());
    let params = Params::default();
    let mut device = Device::new(DeviceConfig {
        device: "devA".into(),
        params: params.clone(),
        topology: Arc::clone(&topology),
        server_a: veil_paillier::fixtures::key_2048_a().public_key().clone(),
        server_b: veil_paillier::fixtures::key_2048_b().public_key().clone(),
    })?;
    let _ = device.open_session(0, &mut rand::rng())?;
    let sid = device.current().map(|s| s.sid).expect("a session");
    let x_hat: Vec<i64> = (0..topology.input_len as i64)
        .map(|i| (i * 1000) % (1 << topology.input_bound_bits.min(20)))
        .collect();
    let width = result_width(&topology, &params);
    let result_values: Vec<veil_protocol::I256> = (0..topology.output_len)
        .map(|i| veil_protocol::I256::from(i as i64) << (output_bits(&topology) + 3))
        .collect();
    let result_of = |t: u64| -> anyhow::Result<Vec<u8>> {
        Ok(Envelope::new(
            "devA",
            sid,
            t,
            Body::Result(FrameResult {
                count: topology.output_len as u32,
                width: width as u16,
                values: codec::pack_ints(&result_values, width)?,
            }),
        )
        .to_bytes()?)
    };

    let phases = [
        "empty region (clock reads)",
        "mask the frame",
        "encode the frame message",
        "decode the result message",
        "unmask the result",
        "encode the acknowledgement",
        "region 1: mask + encode",
        "region 2: decode + unmask + ack",
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
                let d = match p {
                    0 => {
                        flush(&mut flusher);
                        timed(|| ()).0
                    }
                    1 => {
                        flush(&mut flusher);
                        timed(|| device.mask_frame(&x_hat, t)).0
                    }
                    2 => {
                        let frame = device.mask_frame(&x_hat, t)?;
                        flush(&mut flusher);
                        timed(|| frame.envelope.to_bytes()).0
                    }
                    3 => {
                        flush(&mut flusher);
                        timed(|| Envelope::from_bytes(&result)).0
                    }
                    4 => {
                        let envelope = Envelope::from_bytes(&result)?;
                        flush(&mut flusher);
                        timed(|| device.open_result(&envelope)).0
                    }
                    5 => {
                        flush(&mut flusher);
                        timed(|| device.ack(sid, t).envelope.to_bytes()).0
                    }
                    6 => {
                        flush(&mut flusher);
                        timed(|| -> anyhow::Result<Vec<u8>> {
                            Ok(device.mask_frame(&x_hat, t)?.envelope.to_bytes()?)
                        })
                        .0
                    }
                    _ => {
                        flush(&mut flusher);
                        timed(|| -> anyhow::Result<Vec<u8>> {
                            let envelope = Envelope::from_bytes(&result)?;
                            let opened = device.open_result(&envelope)?;
                            std::hint::black_box(opened);
                            Ok(device.ack(sid, t).envelope.to_bytes()?)
                        })
                        .0
                    }
                };
                spent[c] += d;
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
