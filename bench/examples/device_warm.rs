//! Scratch (not committed): warm per-call cost of the device's pieces.
use std::sync::Arc;
use std::time::Instant;
use veil_bench::load_model;
use veil_protocol::{Body, Device, DeviceConfig, Envelope, FrameResult, Params};

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
    let x_hat: Vec<i64> = topology.input_ranges.iter().map(|(lo, _)| *lo).collect();
    let mut frame = Vec::new();
    let mut outputs = Vec::new();
    let rb = device.result_layout().bytes;
    let n = if topology.input_len > 100 {
        20_000u64
    } else {
        200_000
    };
    for round in 0..3 {
        let t0 = Instant::now();
        for t in 0..n {
            device.prepare(round * n + t + 1);
        }
        let prep = t0.elapsed().as_nanos() as f64 / n as f64;
        let mut t = round * 10 * n + 1_000_000_000;
        let t0 = Instant::now();
        for _ in 0..n {
            t += 1;
            device.prepare(t);
            device.write_frame(&x_hat, t, &[t - 1], &mut frame)?;
        }
        let both = t0.elapsed().as_nanos() as f64 / n as f64;
        let result = Envelope::new(
            "devA",
            sid,
            t,
            Body::Result(FrameResult {
                values: vec![0x5a; rb],
            }),
        )
        .to_device_bytes()?;
        let t0 = Instant::now();
        for _ in 0..n {
            device.read_result(&result, &mut outputs)?;
        }
        let read = t0.elapsed().as_nanos() as f64 / n as f64;
        println!(
            "{name}: prepare {prep:.0} ns, prepare+write {both:.0} ns, read (expanding) {read:.0} ns"
        );
    }
    Ok(())
}
