//! The device's per-frame work (mask a Pima frame and encode the message)
//! with warm caches and with caches flushed before each frame, the way a
//! device thread that sleeps on the network between frames meets it. Shows
//! why `veil bench device` reads ~20 µs of CPU for ~16,500 instructions.
//!
//! `cargo run --release -p veil-bench --example device_cache`

use std::sync::Arc;
use std::time::Duration;
use veil_bench::{load_model, thread_cpu_time};
use veil_protocol::{Device, DeviceConfig, Params};

const FRAMES: u64 = 2000;
const FLUSH_BYTES: usize = 32 << 20;

fn main() -> anyhow::Result<()> {
    let model = load_model("pima-mlp")?;
    let mut device = Device::new(DeviceConfig {
        device: "bench".into(),
        params: Params::default(),
        topology: Arc::new(model.topology().clone()),
        server_a: veil_paillier::fixtures::key_2048_a().public_key().clone(),
        server_b: veil_paillier::fixtures::key_2048_b().public_key().clone(),
    })?;
    for out in device.open_session(0, &mut rand::rng())? {
        std::hint::black_box(out.envelope.to_bytes()?);
    }
    let x_hat: Vec<i64> = (0..model.topology().input_len as i64)
        .map(|i| i * 1000)
        .collect();
    let mut flush = vec![0u8; FLUSH_BYTES];
    let mut t = 0;
    for cold in [false, true] {
        let mut spent = Duration::ZERO;
        for _ in 0..FRAMES {
            if cold {
                for byte in flush.iter_mut().step_by(64) {
                    *byte = byte.wrapping_add(1);
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            let before = thread_cpu_time();
            let frame = device.mask_frame(&x_hat, t)?.envelope.to_bytes()?;
            spent += thread_cpu_time().saturating_sub(before);
            std::hint::black_box(frame);
            t += 1;
        }
        println!(
            "{}: {:.2} µs per frame (mask + encode)",
            if cold {
                "caches flushed"
            } else {
                "warm caches"
            },
            spent.as_secs_f64() * 1e6 / FRAMES as f64
        );
    }
    let before = thread_cpu_time();
    for _ in 0..1000 {
        std::hint::black_box(thread_cpu_time());
    }
    println!(
        "one read of the thread CPU clock: {:.2} µs",
        thread_cpu_time().saturating_sub(before).as_secs_f64() * 1e6 / 1000.0
    );
    Ok(())
}
