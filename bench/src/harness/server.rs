//! A server's shell in the bench: its thread, rayon pool, MQTT client,
//! CPU accounting and quiet detection.

use super::*;

/// What a server's shell reports to the harness.
#[derive(Default)]
pub struct ServerStats {
    online_ns: AtomicU64,
    offline_ns: AtomicU64,
    /// Messages handled plus offline steps done.
    events: AtomicU64,
    busy: AtomicBool,
    pending: AtomicBool,
    /// PUBLISH bytes sent to the other server.
    peer_bytes: AtomicU64,
    errors: Mutex<Vec<String>>,
    stop: AtomicBool,
}

/// A server snapshot, for per-frame deltas.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerSnapshot {
    /// CPU time on the frames' messages.
    pub online: Duration,
    /// CPU time on precomputation and mask traffic.
    pub offline: Duration,
    /// PUBLISH bytes to the other server.
    pub peer_bytes: u64,
    /// Bytes on its broker connection.
    pub socket: Traffic,
}

impl ServerSnapshot {
    pub(super) fn since(&self, e: &ServerSnapshot) -> ServerSnapshot {
        ServerSnapshot {
            online: self.online.saturating_sub(e.online),
            offline: self.offline.saturating_sub(e.offline),
            peer_bytes: self.peer_bytes.saturating_sub(e.peer_bytes),
            socket: self.socket.since(&e.socket),
        }
    }
}

/// A message a server sends.
pub struct Publish {
    /// Where to publish.
    pub topic: String,
    /// What.
    pub payload: Vec<u8>,
    /// Bound for the other server (counted as A↔B traffic).
    pub to_peer: bool,
}

/// A server's protocol logic, as its shell drives it.
pub trait ServerRole: Send {
    /// The topic filters it subscribes to.
    fn filters(&self) -> Vec<&'static str>;
    /// Whether a message is frame work (its CPU time counts as online);
    /// asked outside the timed region, before the message is handled.
    fn is_online(&mut self, topic: &str, payload: &[u8]) -> bool;
    /// Handles one message, returning what to publish.
    fn on_message(&mut self, topic: &str, payload: &[u8]) -> Result<Vec<Publish>>;
    /// What went wrong without failing a step (refusals), for the report.
    fn take_errors(&mut self) -> Vec<String> {
        Vec::new()
    }
    /// Whether precomputation is waiting.
    fn has_offline_work(&self) -> bool {
        false
    }
    /// Does one unit of precomputation.
    fn offline_step(&mut self) -> Result<Vec<Publish>> {
        Ok(Vec::new())
    }
}

/// A running server: its thread, its stats and its relay's counters.
pub struct ServerHandle {
    /// What it has spent so far.
    pub stats: Arc<ServerStats>,
    relay_traffic: Arc<Mutex<Traffic>>,
    pub(super) thread: Option<JoinHandle<Result<()>>>,
}

impl ServerHandle {
    /// Runs a role on its own thread with its own rayon pool and MQTT client.
    pub fn spawn<R: ServerRole + 'static>(
        broker: SocketAddr,
        user: &'static str,
        client_id: &str,
        threads: usize,
        role: R,
    ) -> Result<ServerHandle> {
        let stats = Arc::new(ServerStats::default());
        let relay_traffic = Arc::new(Mutex::new(Traffic::default()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let shared = Arc::clone(&stats);
        let traffic = Arc::clone(&relay_traffic);
        let client_id = client_id.to_string();
        let thread = std::thread::Builder::new()
            .name(client_id.clone())
            .spawn(move || -> Result<()> {
                let setup = || -> Result<(Link, rayon::ThreadPool, CpuGroup)> {
                    let group = CpuGroup::default();
                    group.join_current();
                    let pool = group.pool(threads, &client_id)?;
                    let mut link = Link::connect(broker, user, &client_id, &[])?;
                    link.subscribe(&role.filters())?;
                    Ok((link, pool, group))
                };
                let (mut link, pool, group) = match setup() {
                    Ok(v) => {
                        let _ = ready_tx.send(Ok(()));
                        v
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("{e:#}")));
                        return Err(e);
                    }
                };
                serve(&mut link, &pool, &group, role, &shared, &traffic)
            })
            .context("starting a server thread")?;
        ready_rx
            .recv_timeout(Duration::from_secs(60))
            .context("server did not start")??;
        Ok(ServerHandle {
            stats,
            relay_traffic,
            thread: Some(thread),
        })
    }

    /// Its costs so far.
    pub fn snapshot(&self) -> ServerSnapshot {
        let s = &self.stats;
        ServerSnapshot {
            online: Duration::from_nanos(s.online_ns.load(Ordering::SeqCst)),
            offline: Duration::from_nanos(s.offline_ns.load(Ordering::SeqCst)),
            peer_bytes: s.peer_bytes.load(Ordering::SeqCst),
            socket: self.relay_traffic.lock().map(|t| *t).unwrap_or_default(),
        }
    }

    fn quiet_state(&self) -> (bool, u64) {
        let s = &self.stats;
        let idle = !s.busy.load(Ordering::SeqCst) && !s.pending.load(Ordering::SeqCst);
        (idle, s.events.load(Ordering::SeqCst))
    }

    /// Errors the role reported.
    pub fn errors(&self) -> Vec<String> {
        self.stats
            .errors
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    /// Stops the role and joins its thread.
    pub fn stop(mut self) -> Result<()> {
        self.stats.stop.store(true, Ordering::SeqCst);
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| anyhow!("a server thread panicked"))?,
            None => Ok(()),
        }
    }
}

pub(super) fn serve<R: ServerRole>(
    link: &mut Link,
    pool: &rayon::ThreadPool,
    group: &CpuGroup,
    mut role: R,
    stats: &ServerStats,
    traffic: &Mutex<Traffic>,
) -> Result<()> {
    let record_error = |e: anyhow::Error| {
        if let Ok(mut errors) = stats.errors.lock() {
            errors.push(format!("{e:#}"));
        }
    };
    let send = |link: &mut Link, out: Vec<Publish>| -> Result<()> {
        for p in out {
            if p.to_peer {
                stats.peer_bytes.fetch_add(
                    publish_packet_len(&p.topic, p.payload.len()) as u64,
                    Ordering::SeqCst,
                );
            }
            link.publish(&p.topic, p.payload, false)?;
        }
        link.flush()
    };
    while !stats.stop.load(Ordering::SeqCst) {
        if let Ok(mut t) = traffic.lock() {
            *t = link.relay.traffic();
        }
        let offline = role.has_offline_work();
        stats.pending.store(offline, Ordering::SeqCst);
        let wait = if offline { 1 } else { 20 };
        match link.poll(Duration::from_millis(wait))? {
            Polled::Message { topic, payload } => {
                stats.busy.store(true, Ordering::SeqCst);
                let online = role.is_online(&topic, &payload);
                let before = group.total();
                let began = Instant::now();
                let outcome = pool.install(|| role.on_message(&topic, &payload));
                let spent = group.total().saturating_sub(before);
                // The timeline `--log veil_bench=debug` prints: which
                // message made whom wait, with the log lines' timestamps.
                tracing::debug!(
                    server = std::thread::current().name(),
                    topic,
                    online,
                    bytes = payload.len(),
                    cpu_ms = spent.as_secs_f64() * 1e3,
                    wall_ms = began.elapsed().as_secs_f64() * 1e3,
                    "message handled"
                );
                let counter = if online {
                    &stats.online_ns
                } else {
                    &stats.offline_ns
                };
                counter.fetch_add(spent.as_nanos() as u64, Ordering::SeqCst);
                match outcome {
                    Ok(out) => send(link, out)?,
                    Err(e) => record_error(e.context(format!("handling a message on {topic}"))),
                }
                for e in role.take_errors() {
                    record_error(anyhow!(e));
                }
                stats.events.fetch_add(1, Ordering::SeqCst);
                stats.busy.store(false, Ordering::SeqCst);
            }
            Polled::Timeout if offline => {
                stats.busy.store(true, Ordering::SeqCst);
                let before = group.total();
                let began = Instant::now();
                let outcome = pool.install(|| role.offline_step());
                let spent = group.total().saturating_sub(before);
                tracing::debug!(
                    server = std::thread::current().name(),
                    cpu_ms = spent.as_secs_f64() * 1e3,
                    wall_ms = began.elapsed().as_secs_f64() * 1e3,
                    "offline step done"
                );
                stats
                    .offline_ns
                    .fetch_add(spent.as_nanos() as u64, Ordering::SeqCst);
                match outcome {
                    Ok(out) => send(link, out)?,
                    Err(e) => record_error(e.context("offline work")),
                }
                stats.events.fetch_add(1, Ordering::SeqCst);
                stats.busy.store(false, Ordering::SeqCst);
            }
            Polled::Timeout | Polled::Other | Polled::Confirmed(_) => {}
        }
    }
    Ok(())
}

/// Waits until every server has been idle, with nothing in flight, for a
/// while.
pub fn wait_quiet(servers: &[&ServerHandle]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last: Vec<u64> = Vec::new();
    let mut stable_since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(5));
        let states: Vec<(bool, u64)> = servers.iter().map(|s| s.quiet_state()).collect();
        let events: Vec<u64> = states.iter().map(|(_, e)| *e).collect();
        let idle = states.iter().all(|(i, _)| *i);
        if !idle || events != last {
            last = events;
            stable_since = Instant::now();
        } else if stable_since.elapsed() >= Duration::from_millis(80) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the servers did not go quiet");
        }
    }
}

// ---------------------------------------------------------------------------
// veil's servers.
