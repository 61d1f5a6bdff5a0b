//! The device benchmark's figures: per-approach costs, the ratios between
//! them (steady state and amortized over a session), and their CSV form.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Session lengths over which set-up costs are amortized.
pub const AMORTIZE_OVER: [u64; 4] = [1, 10, 100, 1000];

/// The one-time cost of opening a session, on the device.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SetupCost {
    /// Device CPU time (key generation or seed encryptions, encoding):
    /// the mean of `cpu_ms_samples`.
    pub cpu_ms: f64,
    /// The session opened over the network, then repetitions of the same
    /// device code (prime search time varies a lot from key to key).
    #[serde(default)]
    pub cpu_ms_samples: Vec<f64>,
    /// Wall time until the broker acknowledged the session messages.
    pub wall_ms: f64,
    /// Bytes the device sent for the set-up.
    pub bytes_sent: u64,
    /// Bytes the device received for the set-up.
    pub bytes_received: u64,
    /// At the session's end, what no frame carries: veil's device
    /// acknowledges its last result on its own (its node does after a
    /// timer); the baseline has nothing to send.
    #[serde(default)]
    pub end_cpu_us: f64,
    /// Bytes of the session's end, sent.
    #[serde(default)]
    pub end_bytes_sent: u64,
    /// Bytes of the session's end, received.
    #[serde(default)]
    pub end_bytes_received: u64,
}

impl SetupCost {
    /// Bytes of the session's set-up and end.
    pub fn bytes(&self) -> u64 {
        self.bytes_sent + self.bytes_received + self.end_bytes()
    }

    /// Bytes of the session's end alone.
    pub fn end_bytes(&self) -> u64 {
        self.end_bytes_sent + self.end_bytes_received
    }

    /// CPU time of the session's set-up and end, in µs.
    pub fn cpu_us(&self) -> f64 {
        self.cpu_ms * 1e3 + self.end_cpu_us
    }
}

/// One frame as the device saw it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FrameCost {
    /// Device CPU time of its own work on the frame.
    pub cpu_us: f64,
    /// The part of it spent at the capture (veil: masking and encoding the
    /// frame; the baseline: encrypting the inputs); the rest goes to the
    /// messages that come back.
    #[serde(default)]
    pub capture_cpu_us: f64,
    /// Frame captured → result decoded.
    pub wall_ms: f64,
    /// Bytes the device sent for the frame.
    pub bytes_sent: u64,
    /// Bytes the device received for the frame.
    pub bytes_received: u64,
    /// The predicted class (argmax of the outputs).
    pub class: usize,
}

/// Mean and spread of a per-frame figure.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Summary {
    /// The summary of a set of values.
    pub fn of(values: &[f64]) -> Summary {
        if values.is_empty() {
            return Summary::default();
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let rank = |p: f64| {
            let r = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
            sorted[r.clamp(1, sorted.len()) - 1]
        };
        Summary {
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            p50: rank(50.0),
            p95: rank(95.0),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        }
    }
}

/// Server-side cost per inference (steady state).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerCost {
    /// CPU time (all threads of the party) handling the frame's messages.
    pub a_cpu_online_ms: f64,
    /// CPU time of precomputation (first-layer masks, noise pools) and
    /// mask traffic, per frame.
    pub a_cpu_offline_ms: f64,
    /// B's CPU time on the frame's messages, per frame.
    pub b_cpu_online_ms: f64,
    /// B's CPU time on precomputation and mask traffic, per frame.
    pub b_cpu_offline_ms: f64,
    /// MQTT PUBLISH packets between A and B (A→B plus B→A, each counted
    /// once, as its sender encoded it), per frame.
    pub ab_bytes: f64,
    /// Every byte on A's and B's broker connections, per frame.
    pub a_socket_bytes: f64,
    /// Every byte on B's broker connection, per frame.
    pub b_socket_bytes: f64,
}

/// Everything measured for one approach.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ApproachReport {
    /// The session set-up.
    pub setup: SetupCost,
    /// Device CPU per frame, µs.
    pub cpu_us: Summary,
    /// The capture's part of `cpu_us`.
    #[serde(default)]
    pub capture_cpu_us: Summary,
    /// Frame captured → result decoded, ms.
    pub wall_ms: Summary,
    /// Bytes sent per frame.
    pub bytes_sent: Summary,
    /// Bytes received per frame.
    pub bytes_received: Summary,
    /// Sent plus received, per frame.
    pub bytes: Summary,
    /// Instructions of the device's per-frame work (callgrind, portable
    /// arithmetic kernel); `None` without valgrind.
    pub instructions_per_frame: Option<f64>,
    /// What the servers spent.
    pub server: ServerCost,
    /// Every measured frame.
    pub frames: Vec<FrameCost>,
}

impl ApproachReport {
    /// Summaries of the measured frames.
    pub fn from_frames(setup: SetupCost, frames: Vec<FrameCost>, server: ServerCost) -> Self {
        let col = |f: &dyn Fn(&FrameCost) -> f64| frames.iter().map(f).collect::<Vec<f64>>();
        ApproachReport {
            setup,
            cpu_us: Summary::of(&col(&|f| f.cpu_us)),
            capture_cpu_us: Summary::of(&col(&|f| f.capture_cpu_us)),
            wall_ms: Summary::of(&col(&|f| f.wall_ms)),
            bytes_sent: Summary::of(&col(&|f| f.bytes_sent as f64)),
            bytes_received: Summary::of(&col(&|f| f.bytes_received as f64)),
            bytes: Summary::of(&col(&|f| (f.bytes_sent + f.bytes_received) as f64)),
            instructions_per_frame: None,
            server,
            frames,
        }
    }

    /// Device CPU time of `n` frames including the session's set-up and
    /// end, in µs.
    pub fn cpu_total_us(&self, n: u64) -> f64 {
        self.setup.cpu_us() + n as f64 * self.cpu_us.mean
    }

    /// Device bytes of `n` frames including the session's set-up and end.
    pub fn bytes_total(&self, n: u64) -> f64 {
        self.setup.bytes() as f64 + n as f64 * self.bytes.mean
    }
}

/// The whole benchmark's result for one model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceReport {
    /// The model measured.
    pub model: String,
    /// The data set its frames came from.
    pub dataset: String,
    /// Frames measured per approach (after the warm-up).
    pub frames: usize,
    /// Frames run before measuring.
    pub warmup_frames: usize,
    /// Paillier modulus size.
    pub key_bits: u32,
    /// Conventional / veil device CPU time per frame, set-up excluded.
    pub time_ratio: f64,
    /// Conventional / veil device bytes (sent + received) per frame,
    /// set-up excluded.
    pub bytes_ratio: f64,
    /// The same for wall time (frame captured → result decoded).
    pub wall_ratio: f64,
    /// Conventional / veil bytes sent only.
    pub bytes_sent_ratio: f64,
    /// Set-up spread over 1, 10, 100 and 1000 frames.
    pub time_ratio_amortized: BTreeMap<String, f64>,
    /// The same for bytes.
    pub bytes_ratio_amortized: BTreeMap<String, f64>,
    /// Conventional / veil instructions per frame, when measured.
    pub instructions_ratio: Option<f64>,
    /// Why instructions were not measured, if they were not.
    pub instructions_note: Option<String>,
    /// Frames whose predicted class was the same in both approaches.
    pub classes_agree: usize,
    /// Frames whose veil class matched the model's integer reference.
    pub veil_matches_reference: usize,
    /// veil's costs.
    pub veil: ApproachReport,
    /// The conventional approach's costs.
    pub conventional: ApproachReport,
    /// CPU, arithmetic kernel and so on, for reading the numbers.
    pub machine: BTreeMap<String, String>,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::INFINITY }
}

impl DeviceReport {
    /// Fills in every ratio from the two approaches' figures.
    pub fn compute_ratios(&mut self) {
        let (c, v) = (&self.conventional, &self.veil);
        self.time_ratio = ratio(c.cpu_us.mean, v.cpu_us.mean);
        self.bytes_ratio = ratio(c.bytes.mean, v.bytes.mean);
        self.wall_ratio = ratio(c.wall_ms.mean, v.wall_ms.mean);
        self.bytes_sent_ratio = ratio(c.bytes_sent.mean, v.bytes_sent.mean);
        self.time_ratio_amortized = AMORTIZE_OVER
            .iter()
            .map(|n| (n.to_string(), ratio(c.cpu_total_us(*n), v.cpu_total_us(*n))))
            .collect();
        self.bytes_ratio_amortized = AMORTIZE_OVER
            .iter()
            .map(|n| (n.to_string(), ratio(c.bytes_total(*n), v.bytes_total(*n))))
            .collect();
        self.instructions_ratio = match (c.instructions_per_frame, v.instructions_per_frame) {
            (Some(a), Some(b)) => Some(ratio(a, b)),
            _ => None,
        };
    }

    /// The device-cost ratios for a session of `n` frames (for the plot).
    pub fn amortized_at(&self, n: f64) -> (f64, f64) {
        let (c, v) = (&self.conventional, &self.veil);
        let cpu = |a: &ApproachReport| a.setup.cpu_us() + n * a.cpu_us.mean;
        let bytes = |a: &ApproachReport| a.setup.bytes() as f64 + n * a.bytes.mean;
        (ratio(cpu(c), cpu(v)), ratio(bytes(c), bytes(v)))
    }

    /// One row per approach and figure: `model,approach,metric,value`.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("model,approach,metric,value\n");
        let mut row = |approach: &str, metric: &str, value: f64| {
            out.push_str(&format!("{},{approach},{metric},{value}\n", self.model));
        };
        for (name, a) in [("veil", &self.veil), ("conventional", &self.conventional)] {
            row(name, "device_cpu_us_per_frame", a.cpu_us.mean);
            row(name, "device_cpu_us_p95", a.cpu_us.p95);
            row(
                name,
                "device_capture_cpu_us_per_frame",
                a.capture_cpu_us.mean,
            );
            row(name, "device_wall_ms_per_frame", a.wall_ms.mean);
            row(name, "device_bytes_sent_per_frame", a.bytes_sent.mean);
            row(
                name,
                "device_bytes_received_per_frame",
                a.bytes_received.mean,
            );
            row(name, "setup_cpu_ms", a.setup.cpu_ms);
            row(name, "setup_wall_ms", a.setup.wall_ms);
            row(name, "setup_bytes_sent", a.setup.bytes_sent as f64);
            row(name, "setup_bytes_received", a.setup.bytes_received as f64);
            row(name, "session_end_cpu_us", a.setup.end_cpu_us);
            row(name, "session_end_bytes", a.setup.end_bytes() as f64);
            if let Some(i) = a.instructions_per_frame {
                row(name, "device_instructions_per_frame", i);
            }
            row(name, "a_cpu_online_ms", a.server.a_cpu_online_ms);
            row(name, "a_cpu_offline_ms", a.server.a_cpu_offline_ms);
            row(name, "b_cpu_online_ms", a.server.b_cpu_online_ms);
            row(name, "b_cpu_offline_ms", a.server.b_cpu_offline_ms);
            row(name, "ab_bytes_per_frame", a.server.ab_bytes);
        }
        row("ratio", "time_ratio", self.time_ratio);
        row("ratio", "bytes_ratio", self.bytes_ratio);
        row("ratio", "wall_ratio", self.wall_ratio);
        if let Some(r) = self.instructions_ratio {
            row("ratio", "instructions_ratio", r);
        }
        for (n, r) in &self.time_ratio_amortized {
            row("ratio", &format!("time_ratio_amortized_{n}"), *r);
        }
        for (n, r) in &self.bytes_ratio_amortized {
            row("ratio", &format!("bytes_ratio_amortized_{n}"), *r);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approach(setup_cpu_ms: f64, setup_bytes: u64, cpu_us: f64, bytes: u64) -> ApproachReport {
        let frames = (0..3)
            .map(|_| FrameCost {
                cpu_us,
                capture_cpu_us: cpu_us / 2.0,
                wall_ms: cpu_us / 1e3,
                bytes_sent: bytes,
                bytes_received: 0,
                class: 0,
            })
            .collect();
        ApproachReport::from_frames(
            SetupCost {
                cpu_ms: setup_cpu_ms,
                cpu_ms_samples: vec![setup_cpu_ms],
                wall_ms: setup_cpu_ms,
                bytes_sent: setup_bytes,
                bytes_received: 0,
                ..SetupCost::default()
            },
            frames,
            ServerCost::default(),
        )
    }

    #[test]
    fn amortization_spreads_set_up_over_the_session() {
        let mut report = DeviceReport {
            // Conventional: 1000 ms set-up, 500 ms and 400 kB per frame.
            conventional: approach(1000.0, 300, 500_000.0, 400_000),
            // veil: 10 ms set-up, 50 µs and 6 kB per frame.
            veil: approach(10.0, 1100, 50.0, 6_000),
            ..DeviceReport::default()
        };
        report.compute_ratios();
        assert!((report.time_ratio - 10_000.0).abs() < 1e-9);
        assert!((report.bytes_ratio - 400_000.0 / 6_000.0).abs() < 1e-9);
        let t = &report.time_ratio_amortized;
        // n = 1: (1 000 000 + 500 000) / (10 000 + 50) µs.
        assert!((t["1"] - 1_500_000.0 / 10_050.0).abs() < 1e-9);
        assert!((t["10"] - 6_000_000.0 / 10_500.0).abs() < 1e-9);
        assert!((t["1000"] - 501_000_000.0 / 60_000.0).abs() < 1e-6);
        let b = &report.bytes_ratio_amortized;
        assert!((b["1"] - 400_300.0 / 7_100.0).abs() < 1e-9);
        assert!((b["100"] - 40_000_300.0 / 601_100.0).abs() < 1e-9);
        assert_eq!(t.keys().collect::<Vec<_>>(), vec!["1", "10", "100", "1000"]);
        // Amortized ratios approach the steady-state one from below when
        // the baseline's set-up is cheaper relative to its frames.
        let (at_big, _) = report.amortized_at(1e9);
        assert!((at_big - report.time_ratio).abs() / report.time_ratio < 1e-3);
        assert_eq!(report.amortized_at(1.0).0, t["1"]);
    }

    #[test]
    fn summaries_use_nearest_rank() {
        let s = Summary::of(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!((s.mean, s.p50, s.min, s.max), (3.0, 3.0, 1.0, 5.0));
        assert_eq!(s.p95, 5.0);
        assert_eq!(Summary::of(&[]), Summary::default());
    }

    #[test]
    fn csv_has_a_row_per_figure() {
        let mut report = DeviceReport {
            model: "m".into(),
            conventional: approach(1.0, 1, 2.0, 2),
            veil: approach(1.0, 1, 1.0, 1),
            ..DeviceReport::default()
        };
        report.compute_ratios();
        let csv = report.to_csv();
        assert!(csv.starts_with("model,approach,metric,value\n"));
        assert!(csv.contains("m,ratio,time_ratio,2\n"));
        assert!(csv.contains("m,ratio,bytes_ratio_amortized_1000,"));
        assert!(csv.lines().all(|l| l.split(',').count() == 4));
    }
}
