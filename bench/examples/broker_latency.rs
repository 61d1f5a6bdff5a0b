//! One-way latency of a QoS 1 message through the embedded broker (its ACL
//! gate and rumqttd) on loopback, device → server B and back, for a few
//! payload sizes: what every hop of a frame costs in wall time.
//!
//! `cargo run --release -p veil-bench --example broker_latency`

use std::time::{Duration, Instant};
use veil_bench::harness::{BenchBroker, Link, Polled};

/// Polls `to` until a message arrives, keeping `from` moving (it has a
/// PUBACK to take).
fn deliver(from: &mut Link, to: &mut Link) -> anyhow::Result<()> {
    loop {
        if let Polled::Message { .. } = to.poll(Duration::from_millis(1))? {
            return Ok(());
        }
        from.poll(Duration::from_millis(1))?;
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let broker = BenchBroker::start()?;
    let addr = broker.addr()?;
    let mut device = Link::connect(addr, "devA", "devA-latency", &[])?;
    device.subscribe(&["veil/v1/dev/devA/result"])?;
    let mut server = Link::connect(addr, "server-b", "server-b-latency", &[])?;
    server.subscribe(&["veil/v1/dev/+/ack"])?;
    println!("| payload | device → server B (median of 20) | server B → device |");
    println!("|---|---|---|");
    for size in [10usize, 1_000, 10_000, 100_000] {
        let (mut up, mut down) = (Vec::new(), Vec::new());
        for _ in 0..20 {
            let start = Instant::now();
            device.publish("veil/v1/dev/devA/ack", vec![1u8; size], false)?;
            deliver(&mut device, &mut server)?;
            up.push(start.elapsed());
            let start = Instant::now();
            server.publish("veil/v1/dev/devA/result", vec![2u8; size], false)?;
            deliver(&mut server, &mut device)?;
            down.push(start.elapsed());
        }
        println!(
            "| {size} B | {:.1} ms | {:.1} ms |",
            median(up).as_secs_f64() * 1e3,
            median(down).as_secs_f64() * 1e3
        );
    }
    Ok(())
}
