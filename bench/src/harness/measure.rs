//! Per-frame measurement: the device's CPU clock, set-up and server
//! costs, and the frame log.

use super::*;

/// A frame's input and its reference class.
pub struct Input {
    /// The frame's encoded input.
    pub x_hat: Vec<i64>,
    /// The integer reference's class, when known.
    pub reference_class: Option<usize>,
}

/// What one approach's run produced, for the report and for replay.
pub struct Run {
    /// What was measured.
    pub report: ApproachReport,
    /// Messages the device received per measured frame, in order.
    pub received: Vec<Vec<Vec<u8>>>,
}

/// The device's CPU. The device's whole loop runs on the single worker of
/// a one-thread rayon pool (a gateway has one core to spare), so anything
/// its code does in parallel (key generation's prime search, batch
/// ciphertext validation) runs inline on that thread, and the thread's own
/// CPU clock read around each piece of work holds all of it, with no
/// cross-thread hand-off in the measurement.
pub(super) fn on_device_thread<T: Send>(
    placement: &Placement,
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .thread_name(|_| "device".into())
        .build()
        .context("building the device's thread")?;
    let device = placement.device();
    pool.install(|| {
        if let Some(cpu) = device {
            crate::cores::restrict(&[cpu])
                .with_context(|| format!("moving the device's thread to CPU {cpu}"))?;
        }
        f()
    })
}

/// Runs device work, adding its CPU time to `spent`.
pub(super) fn device_work<T>(spent: &mut Duration, f: impl FnOnce() -> T) -> T {
    let before = thread_cpu_time();
    let out = f();
    *spent += thread_cpu_time().saturating_sub(before);
    out
}

/// Session openings measured per approach: the one over the network and
/// repetitions of the same device code.
pub(super) const SETUP_SAMPLES: usize = 5;

pub(super) fn setup_cost(samples: &[Duration], wall: Duration, traffic: Traffic) -> SetupCost {
    let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    SetupCost {
        cpu_ms: ms.iter().sum::<f64>() / ms.len().max(1) as f64,
        cpu_ms_samples: ms,
        wall_ms: wall.as_secs_f64() * 1e3,
        bytes_sent: traffic.sent,
        bytes_received: traffic.received,
        ..SetupCost::default()
    }
}

pub(super) fn server_cost(
    a: ServerSnapshot,
    b: Option<ServerSnapshot>,
    frames: usize,
) -> ServerCost {
    let n = frames.max(1) as f64;
    let ms = |d: Duration| d.as_secs_f64() * 1e3 / n;
    let b = b.unwrap_or_default();
    ServerCost {
        a_cpu_online_ms: ms(a.online),
        a_cpu_offline_ms: ms(a.offline),
        b_cpu_online_ms: ms(b.online),
        b_cpu_offline_ms: ms(b.offline),
        ab_bytes: (a.peer_bytes + b.peer_bytes) as f64 / n,
        a_socket_bytes: a.socket.total() as f64 / n,
        b_socket_bytes: b.socket.total() as f64 / n,
    }
}

pub(super) fn check_servers(servers: &[&ServerHandle]) -> Result<()> {
    for s in servers {
        let errors = s.errors();
        if let Some(first) = errors.first() {
            bail!("a server failed ({} errors), first: {first}", errors.len());
        }
        if s.thread.as_ref().is_some_and(|t| t.is_finished()) {
            bail!("a server's MQTT connection ended");
        }
    }
    Ok(())
}

pub(super) fn progress(quiet: bool, text: &str) {
    if !quiet {
        eprintln!("{text}");
    }
}

/// One approach's frames: the cost of each measured one, the messages the
/// device received for it, and a progress line per frame.
pub(super) struct FrameLog {
    pub(super) approach: &'static str,
    pub(super) total: usize,
    pub(super) warmup: usize,
    pub(super) quiet: bool,
    pub(super) frames: Vec<FrameCost>,
    pub(super) received: Vec<Vec<Vec<u8>>>,
}

impl FrameLog {
    pub(super) fn new(
        approach: &'static str,
        total: usize,
        warmup: usize,
        quiet: bool,
    ) -> FrameLog {
        FrameLog {
            approach,
            total,
            warmup,
            quiet,
            frames: Vec::new(),
            received: Vec::new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn record(
        &mut self,
        i: usize,
        spent: Duration,
        capture: Duration,
        wall: Duration,
        traffic: &Traffic,
        class: Option<usize>,
        got: Vec<Vec<u8>>,
    ) {
        let measured = i >= self.warmup;
        if measured {
            self.frames.push(FrameCost {
                cpu_us: spent.as_secs_f64() * 1e6,
                capture_cpu_us: capture.as_secs_f64() * 1e6,
                wall_ms: wall.as_secs_f64() * 1e3,
                bytes_sent: traffic.sent,
                bytes_received: traffic.received,
                class: class.unwrap_or(0),
            });
            self.received.push(got);
        }
        let device = if spent < Duration::from_millis(1) {
            format!("{:.1} µs", spent.as_secs_f64() * 1e6)
        } else {
            format!("{:.1} ms", spent.as_secs_f64() * 1e3)
        };
        progress(
            self.quiet,
            &format!(
                "{}: frame {}/{} ({}) device {device}, {:.1} ms wall, {} B sent, {} B received",
                self.approach,
                i + 1,
                self.total,
                if measured { "measured" } else { "warm-up" },
                wall.as_secs_f64() * 1e3,
                traffic.sent,
                traffic.received
            ),
        );
    }
}
