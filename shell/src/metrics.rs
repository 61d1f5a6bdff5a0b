//! A Prometheus endpoint for a role's counters, with health and readiness.
//!
//! `GET /metrics` gives the Prometheus text format (prometheus-client
//! encodes it), `GET /healthz` answers 200 while the process serves, and
//! `GET /readyz` 200 once the role says it is ready (503 before). The HTTP
//! side is the smallest that serves a scraper: one request per connection,
//! request head capped at 8 KiB and read within 5 s, so a client that
//! trickles bytes costs one task for at most that long.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Where to serve metrics; none by default.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics, /healthz and /readyz on this address
    /// (e.g. 127.0.0.1:9464).
    #[arg(long, env = "VEIL_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

const HEAD_LIMIT: usize = 8 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// A role's metrics: counters and gauges registered under `veil_<role>_`.
pub struct Metrics {
    registry: Registry,
    ready: Arc<AtomicBool>,
}

/// A counter that follows a monotone value read from elsewhere (a role's
/// own atomic statistics), so the role's code needs no metrics types.
pub struct Mirror {
    counter: Counter,
}

impl Mirror {
    /// Raises the counter to `value` (never lowers it).
    pub fn follow(&self, value: u64) {
        let now = self.counter.get();
        if value > now {
            self.counter.inc_by(value - now);
        }
    }
}

/// Counters of one name told apart by one label (e.g. `reason`), each
/// value a [`Mirror`] of its own.
pub struct MirrorFamily {
    family: Family<Vec<(String, String)>, Counter>,
    label: String,
}

impl MirrorFamily {
    /// The counter for `label="value"`.
    pub fn with(&self, value: &str) -> Mirror {
        let key = vec![(self.label.clone(), value.to_string())];
        Mirror {
            counter: self.family.get_or_create(&key).clone(),
        }
    }
}

/// Upper bounds (seconds) of [`Latency`]'s buckets: 1-2.5-5 steps from
/// 1 ms (a B round on a small model) to 10 s (a CNN frame on a Pi-class
/// A); slower observations land in `+Inf`.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram a role observes into whether or not it is
/// exported: the role keeps one (clones share the counts) and the shell
/// registers it with [`Metrics::latency`] when it serves metrics.
#[derive(Clone, Debug)]
pub struct Latency {
    histogram: Histogram,
    /// Observations so far (the histogram's own count is not public).
    count: Arc<AtomicU64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            histogram: Histogram::new(LATENCY_BUCKETS),
            count: Arc::default(),
        }
    }
}

impl Latency {
    /// Records one duration.
    pub fn observe(&self, elapsed: Duration) {
        self.histogram.observe(elapsed.as_secs_f64());
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Metrics {
    /// A registry whose metric names start with `veil_<role>_`.
    pub fn new(role: &str) -> Metrics {
        Metrics {
            registry: Registry::with_prefix(format!("veil_{}", role.replace('-', "_"))),
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A counter (exported with a `_total` suffix) mirroring a statistic.
    pub fn counter(&mut self, name: &str, help: &str) -> Mirror {
        let counter = Counter::default();
        self.registry.register(name, help, counter.clone());
        Mirror { counter }
    }

    /// Counters sharing `name`, told apart by the value of `label`.
    pub fn counter_family(&mut self, name: &str, help: &str, label: &str) -> MirrorFamily {
        let family = Family::default();
        self.registry.register(name, help, family.clone());
        MirrorFamily {
            family,
            label: label.to_string(),
        }
    }

    /// Exports `latency` as `<name>_seconds` (a histogram).
    pub fn latency(&mut self, name: &str, help: &str, latency: &Latency) {
        self.registry
            .register_with_unit(name, help, Unit::Seconds, latency.histogram.clone());
    }

    /// Registers a gauge.
    pub fn gauge(&mut self, name: &str, help: &str) -> Gauge {
        let gauge = Gauge::default();
        self.registry.register(name, help, gauge.clone());
        gauge
    }

    /// The flag behind `/readyz`.
    pub fn ready_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.ready)
    }

    fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }

    /// Marks the role ready, binds `addr`, serves until the runtime ends,
    /// and calls `refresh` every second to copy the role's own statistics
    /// into the registered metrics; `refresh` returning false stops that.
    pub async fn serve_refreshed(
        self,
        addr: SocketAddr,
        mut refresh: impl FnMut() -> bool + Send + 'static,
    ) -> std::io::Result<SocketAddr> {
        self.ready.store(true, Ordering::Relaxed);
        refresh();
        let bound = self.serve(addr).await?;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if !refresh() {
                    return;
                }
            }
        });
        Ok(bound)
    }

    /// Binds `addr` and serves until the runtime ends.
    pub async fn serve(self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        tracing::info!(%bound, "serving metrics, /healthz and /readyz");
        let metrics = Arc::new(self);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let metrics = Arc::clone(&metrics);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(HEAD_TIMEOUT, answer(&metrics, stream)).await;
                });
            }
        });
        Ok(bound)
    }
}

async fn answer(metrics: &Metrics, mut stream: TcpStream) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
        if head.len() > HEAD_LIMIT {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            )
            .await;
        }
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n",
        )
        .await;
    }
    match path {
        "/metrics" => {
            let body = metrics.render();
            respond(
                &mut stream,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                &body,
            )
            .await
        }
        "/healthz" => respond(&mut stream, "200 OK", "text/plain", "ok\n").await,
        "/readyz" if metrics.ready.load(Ordering::Relaxed) => {
            respond(&mut stream, "200 OK", "text/plain", "ready\n").await
        }
        "/readyz" => {
            respond(
                &mut stream,
                "503 Service Unavailable",
                "text/plain",
                "starting\n",
            )
            .await
        }
        _ => respond(&mut stream, "404 Not Found", "text/plain", "not found\n").await,
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape::Scraped;

    async fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn metrics_health_and_readiness_are_served() {
        let mut metrics = Metrics::new("server-a");
        let frames = metrics.counter("frames", "Frames accepted");
        let queue = metrics.gauge("queue_depth", "Inputs waiting for the worker");
        let refused = metrics.counter_family("refused", "Refusals by reason", "reason");
        let latency = Latency::default();
        metrics.latency("frame_latency", "Frame in to output out", &latency);
        let ready = metrics.ready_flag();
        let addr = metrics.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
        frames.follow(3);
        frames.follow(2);
        queue.set(7);
        refused.with("auth").follow(2);
        for ms in [0, 3, 40, 40, 20_000] {
            latency.observe(Duration::from_millis(ms));
        }
        let page = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let histogram = Scraped::histogram(&page, "veil_server_a_frame_latency_seconds")
            .expect("the histogram is exported");
        assert!(histogram.is_monotone(), "{page}");
        assert_eq!(histogram.count, 5, "{page}");
        assert_eq!(histogram.buckets.len(), LATENCY_BUCKETS.len() + 1, "{page}");
        assert_eq!(histogram.cumulative_at(0.001), Some(1));
        assert_eq!(histogram.cumulative_at(0.005), Some(2));
        assert_eq!(histogram.cumulative_at(0.05), Some(4));
        assert_eq!(histogram.cumulative_at(10.0), Some(4));
        assert_eq!(histogram.cumulative_at(f64::INFINITY), Some(5));
        assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
        assert!(page.contains("veil_server_a_frames_total 3\n"), "{page}");
        assert!(page.contains("veil_server_a_queue_depth 7\n"), "{page}");
        assert!(
            page.contains("veil_server_a_refused_total{reason=\"auth\"} 2\n"),
            "{page}"
        );
        assert!(
            get(addr, b"GET /healthz HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 200")
        );
        assert!(
            get(addr, b"GET /readyz HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 503")
        );
        ready.store(true, Ordering::Relaxed);
        assert!(
            get(addr, b"GET /readyz HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 200")
        );
        assert!(
            get(addr, b"GET /nope HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 404")
        );
        assert!(
            get(addr, b"POST /metrics HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 405")
        );
        let huge = [b'a'; 9000];
        assert!(get(addr, &huge).await.starts_with("HTTP/1.1 431"));
    }
}
