//! veil-e2e owns the end-to-end tests of veil over real MQTT (in `tests/`)
//! and the harness they share: an embedded broker configured with the
//! repository's `config/acl` and `config/passwords` on an ephemeral
//! loopback port (or a real Mosquitto with the same files), both servers
//! and edge agents started as libraries with fixture keys and the shipped
//! Pima models, a switchable TCP relay that takes a device off the network,
//! and the integer reference that results must equal bit for bit.

#![warn(missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use veil_broker::{Broker, BrokerConfig, BrokerHandle};
use veil_edge_agent::{AgentOptions, EdgeAgent, Output, Pins};
use veil_link::MqttSettings;
use veil_model::CompiledModel;
use veil_paillier::SecretKey;
use veil_protocol::{I256, Params, SessionId, frame_rounding};

/// Generous bound for anything the tests wait for (a loaded 2-core
/// machine is slow; nothing is asserted about speed).
pub const PATIENCE: Duration = Duration::from_secs(180);

/// `path` relative to the repository root (config files, models, keys).
pub fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// Test logs, captured so that tests can check what was logged.
static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        // Also visible with --nocapture.
        std::io::stderr().write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures every log line of the process (filter: `VEIL_TEST_LOG`) for
/// [`logs`]; once per process, later calls do nothing.
pub fn init_logging() {
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let filter = std::env::var("VEIL_TEST_LOG").unwrap_or_else(|_| {
            "warn,rumqttd=off,veil_server_a=info,veil_server_b=info,veil_edge_agent=info".into()
        });
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_ansi(false)
            .with_writer(move || Capture(writer.clone()))
            .try_init();
        buffer
    });
}

/// Everything logged since [`init_logging`], for tests that check what
/// an operator would read.
pub fn logs() -> String {
    LOGS.get()
        .map(|b| String::from_utf8_lossy(&b.lock().unwrap_or_else(|p| p.into_inner())).into_owned())
        .unwrap_or_default()
}

/// A shipped model from its precompiled .plan file (what the demo and the
/// servers load), once per test binary.
pub fn model(name: &str) -> Arc<CompiledModel> {
    type Cache = Mutex<Vec<(String, Arc<CompiledModel>)>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(Vec::new()));
    let mut guard = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, m)) = guard.iter().find(|(n, _)| n == name) {
        return Arc::clone(m);
    }
    let path = repo(&format!("models/{name}.plan"));
    let m = Arc::new(CompiledModel::load(&path).expect("shipped model loads"));
    guard.push((name.to_string(), Arc::clone(&m)));
    m
}

/// The Pima test rows: features and label.
pub fn pima_rows() -> Vec<(Vec<f32>, u8)> {
    let data = veil_model::data::load_pima(&repo("data/pima-test.csv")).expect("pima test set");
    data.features
        .into_iter()
        .map(|f| f.to_vec())
        .zip(data.labels)
        .collect()
}

fn copy_key(key: &SecretKey) -> Arc<SecretKey> {
    Arc::new(SecretKey::from_bytes(&key.to_bytes()).expect("fixture key copies"))
}

/// Server A's and server B's key pairs (fixtures: no key generation in
/// tests).
pub fn keys() -> (Arc<SecretKey>, Arc<SecretKey>) {
    (
        copy_key(veil_paillier::fixtures::key_2048_a()),
        copy_key(veil_paillier::fixtures::key_2048_b()),
    )
}

/// The embedded broker with the repository's ACL and password files.
pub fn broker_config(listen: SocketAddr) -> BrokerConfig {
    BrokerConfig {
        listen,
        password_file: Some(repo("config/passwords")),
        acl_file: Some(repo("config/acl")),
        ..BrokerConfig::default()
    }
}

/// The embedded broker with the shipped ACL and password files on
/// `listen`, retried while the port is still held by a previous one.
pub async fn start_broker(listen: SocketAddr) -> BrokerHandle {
    init_logging();
    // The port may still be held briefly by the previous instance.
    let mut last = None;
    for _ in 0..100 {
        match Broker::start(broker_config(listen)).await {
            Ok(b) => return b,
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    panic!("broker does not start: {last:?}");
}

/// MQTT settings for a user of config/passwords (password `demo-<user>`),
/// reconnecting quickly.
pub fn mqtt(addr: SocketAddr, user: &str) -> MqttSettings {
    MqttSettings {
        url: format!("mqtt://{addr}"),
        username: Some(user.into()),
        password: Some(format!("demo-{user}")),
        backoff_min_ms: 50,
        backoff_max_ms: 500,
        ..MqttSettings::default()
    }
}

/// Both servers for one model, restartable on the same state.
pub struct Servers {
    /// Parent of both servers' state directories.
    pub dir: PathBuf,
    /// The model both serve.
    pub model: Arc<CompiledModel>,
    /// A's fixture key.
    pub key_a: Arc<SecretKey>,
    /// B's fixture key.
    pub key_b: Arc<SecretKey>,
    /// The broker both connect to.
    pub addr: SocketAddr,
    /// Server A while it runs.
    pub a: Option<veil_server_a::ServerA>,
    /// Server B while it runs.
    pub b: Option<veil_server_b::ServerB>,
    /// How long A waits for B before starting a frame over.
    pub round_timeout: Duration,
    /// Both servers' session rules.
    pub sessions: veil_protocol::node::SessionLimits,
    /// A's worker threads (`None`: the default, one per available core).
    pub a_workers: Option<usize>,
    /// B's worker threads (`None`: the default, one per available core).
    pub b_workers: Option<usize>,
}

impl Servers {
    /// Neither server started yet, state under `dir`, fixture keys, the
    /// shipped model `model_name`.
    pub fn new(dir: &Path, model_name: &str, addr: SocketAddr) -> Servers {
        let (key_a, key_b) = keys();
        Servers {
            dir: dir.to_path_buf(),
            model: model(model_name),
            key_a,
            key_b,
            addr,
            a: None,
            b: None,
            round_timeout: Duration::from_secs(5),
            sessions: veil_protocol::node::SessionLimits::default(),
            a_workers: None,
            b_workers: None,
        }
    }

    /// A's options: this broker, this state, [`Servers::round_timeout`],
    /// 20 retries, [`Servers::sessions`], [`Servers::a_workers`].
    pub fn a_options(&self) -> veil_server_a::Options {
        let mut o =
            veil_server_a::Options::new(mqtt(self.addr, "server-a"), self.dir.join("server-a"));
        o.round_timeout = self.round_timeout;
        o.max_retries = 20;
        o.sessions = self.sessions.clone();
        if let Some(workers) = self.a_workers {
            o.workers = workers;
        }
        o
    }

    /// B's options: this broker, this state, [`Servers::sessions`],
    /// [`Servers::b_workers`].
    pub fn b_options(&self) -> veil_server_b::Options {
        let mut o =
            veil_server_b::Options::new(mqtt(self.addr, "server-b"), self.dir.join("server-b"));
        o.sessions = self.sessions.clone();
        if let Some(workers) = self.b_workers {
            o.workers = workers;
        }
        o
    }

    /// Starts A (panics if it cannot).
    pub async fn start_a(&mut self) {
        let server = veil_server_a::ServerA::start(
            self.a_options(),
            veil_server_a::Setup {
                key: Arc::clone(&self.key_a),
                b_key: self.key_b.public_key().clone(),
                model: Arc::clone(&self.model),
                params: Params::default(),
            },
        )
        .await
        .expect("server A starts");
        self.a = Some(server);
    }

    /// Starts B (panics if it cannot).
    pub async fn start_b(&mut self) {
        let server = veil_server_b::ServerB::start(
            self.b_options(),
            Arc::clone(&self.key_b),
            Arc::new(self.model.topology().clone()),
            Params::default(),
        )
        .await
        .expect("server B starts");
        self.b = Some(server);
    }

    /// Starts B, then A.
    pub async fn start(&mut self) {
        self.start_b().await;
        self.start_a().await;
    }

    /// The fingerprints a device pins: both keys and the topology.
    pub fn pins(&self) -> Pins {
        Pins {
            server_a: self.key_a.public_key().fingerprint_hex(),
            server_b: self.key_b.public_key().fingerprint_hex(),
            topology: self.model.topology().fingerprint_hex(),
        }
    }

    /// Shuts down whichever server runs, A first; their state stays for a
    /// restart.
    pub async fn stop(&mut self) {
        if let Some(a) = self.a.take() {
            a.shutdown().await;
        }
        if let Some(b) = self.b.take() {
            b.shutdown().await;
        }
    }

    /// The integer reference for frame `(sid, t)`: what the protocol must
    /// reproduce bit for bit.
    pub fn reference(&self, x_hat: &[i64], sid: SessionId, t: u64) -> Vec<I256> {
        let rounding = frame_rounding(&veil_server_a::rounding_key(&self.key_a), sid, t);
        let modes = Params::default().modes(self.model.topology());
        self.model
            .run_int(x_hat, &modes, &rounding)
            .expect("reference runs")
            .into_iter()
            .map(I256::from)
            .collect()
    }
}

/// Agent options for a device of config/passwords.
pub fn agent_options(dir: &Path, device: &str, addr: SocketAddr, pins: Pins) -> AgentOptions {
    let mut o = AgentOptions::new(device, mqtt(addr, device), dir.join(device));
    o.pins = pins;
    o.resend_after = Duration::from_secs(5);
    o.provision_timeout = PATIENCE;
    o
}

/// Starts an edge agent (panics if it cannot).
pub async fn start_agent(options: AgentOptions) -> EdgeAgent {
    EdgeAgent::start(options).await.expect("edge agent starts")
}

/// Waits for `n` outputs (panics after [`PATIENCE`]).
pub async fn collect(agent: &mut EdgeAgent, n: usize) -> Vec<Output> {
    let mut outputs = Vec::with_capacity(n);
    while outputs.len() < n {
        match tokio::time::timeout(PATIENCE, agent.recv()).await {
            Ok(Some(o)) => outputs.push(o),
            Ok(None) => panic!("agent stopped after {} of {n} outputs", outputs.len()),
            Err(_) => panic!(
                "only {} of {n} outputs within {PATIENCE:?}: {:?}",
                outputs.len(),
                agent.stats()
            ),
        }
    }
    outputs
}

/// Waits until `check` holds (polling), panicking after [`PATIENCE`].
pub async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP relay in front of the broker that can be switched off: every
/// connection through it is cut and new ones are refused, as when a
/// device loses its network.
pub struct Relay {
    /// Where devices connect instead of the broker.
    pub addr: SocketAddr,
    online: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// A relay to `upstream`, online.
    pub async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("relay binds");
        let addr = listener.local_addr().expect("relay address");
        let (online, rx) = watch::channel(true);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let mut rx = rx.clone();
                if !*rx.borrow() {
                    drop(client);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::io::copy(&mut cr, &mut sw);
                    let down = tokio::io::copy(&mut sr, &mut cw);
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                        _ = async { while *rx.borrow() { if rx.changed().await.is_err() { break; } } } => {}
                    }
                });
            }
        });
        Relay { addr, online, task }
    }

    /// Cuts every connection and refuses new ones (`false`), or lets them
    /// through again (`true`).
    pub fn set_online(&self, on: bool) {
        let _ = self.online.send(on);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A flag for tests that log what they skipped.
pub static SKIPPED: AtomicBool = AtomicBool::new(false);

/// Notes a skipped check on stderr and in [`SKIPPED`].
pub fn note_skip(reason: &str) {
    SKIPPED.store(true, Ordering::Relaxed);
    eprintln!("skipped: {reason}");
}

/// An ephemeral loopback address nobody listens on yet.
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}

/// A bare MQTT 3.1.1 client for poking at the broker directly.
pub struct Raw {
    /// The client, to publish and subscribe with.
    pub client: rumqttc::AsyncClient,
    rx: tokio::sync::mpsc::UnboundedReceiver<rumqttc::Event>,
    /// Messages that arrived while waiting for something else.
    inbox: std::collections::VecDeque<rumqttc::Event>,
    task: tokio::task::JoinHandle<()>,
}

impl Raw {
    /// Connects as `user` (password `demo-<user>`) with client id
    /// `<user>-<client_id>` (the broker binds client ids to usernames) and
    /// waits for CONNACK.
    pub async fn connect(addr: SocketAddr, user: &str, client_id: &str) -> Raw {
        // Brokers refuse odd characters in client ids.
        let suffix: String = client_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(60)
            .collect();
        let client_id = format!("{user}-{suffix}");
        let mut options = rumqttc::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        options.set_credentials(user, format!("demo-{user}"));
        options.set_max_packet_size(1 << 24, 1 << 24);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 100);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(event) => {
                        if tx.send(event).is_err() {
                            return;
                        }
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let mut raw = Raw {
            client,
            rx,
            inbox: std::collections::VecDeque::new(),
            task,
        };
        raw.wait_for("CONNACK", |e| {
            matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)))
        })
        .await;
        raw
    }

    async fn wait_for(
        &mut self,
        what: &str,
        mut f: impl FnMut(&rumqttc::Event) -> bool,
    ) -> rumqttc::Event {
        loop {
            match tokio::time::timeout(PATIENCE, self.rx.recv()).await {
                Ok(Some(e)) if f(&e) => return e,
                Ok(Some(e @ rumqttc::Event::Incoming(rumqttc::Packet::Publish(_)))) => {
                    self.inbox.push_back(e)
                }
                Ok(Some(_)) => {}
                _ => panic!("no {what}"),
            }
        }
    }

    /// The next event: kept messages first, then new ones.
    async fn next_event(&mut self, until: tokio::time::Instant) -> Option<rumqttc::Event> {
        if let Some(e) = self.inbox.pop_front() {
            return Some(e);
        }
        tokio::time::timeout_at(until, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Subscribes and waits for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .await
            .expect("subscribe queued");
        self.wait_for("SUBACK", |e| {
            matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)))
        })
        .await;
    }

    /// Publishes with QoS 1 and waits for the PUBACK (a refused publish is
    /// acknowledged too, and dropped).
    pub async fn publish(&mut self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish queued");
        self.wait_for("PUBACK", |e| {
            matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))
        })
        .await;
    }

    /// Every message received until one arrives on `canary` (plus a short
    /// grace for stragglers on other topics); the canary is left out.
    pub async fn until_canary(&mut self, canary: &str) -> Vec<(String, Vec<u8>)> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match self.next_event(deadline).await {
                Some(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    if p.topic == canary {
                        break;
                    }
                    got.push((p.topic.clone(), p.payload.to_vec()));
                }
                Some(_) => {}
                None => panic!("canary on {canary} never arrived"),
            }
        }
        let grace = tokio::time::Instant::now() + Duration::from_millis(300);
        while let Some(e) = self.next_event(grace).await {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = e {
                got.push((p.topic.clone(), p.payload.to_vec()));
            }
        }
        got
    }

    /// Messages received so far on `topic`, waiting up to [`PATIENCE`] for
    /// at least `n`.
    pub async fn expect_on(&mut self, topic: &str, n: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while got.len() < n {
            match self.next_event(deadline).await {
                Some(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) if p.topic == topic => {
                    got.push(p.payload.to_vec())
                }
                Some(_) => {}
                None => panic!("only {} of {n} messages on {topic}", got.len()),
            }
        }
        got
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes `edge-agent.toml` for `devA` on `model` against `remote` (the
/// demo password), with `extra` appended (e.g. a `[local]` table); for
/// tests that run the agent's command line.
pub fn write_agent_config(
    dir: &Path,
    model: &str,
    remote: SocketAddr,
    pins: &Pins,
    extra: &str,
) -> PathBuf {
    let path = dir.join("edge-agent.toml");
    let text = format!(
        "device = \"devA\"\nmodel = \"{model}\"\nstate_dir = \"agent\"\n\n[pins]\n\
         server_a = \"{}\"\nserver_b = \"{}\"\ntopology = \"{}\"\n\n[mqtt]\n\
         url = \"mqtt://{remote}\"\npassword = \"demo-devA\"\n\n{extra}",
        pins.server_a, pins.server_b, pins.topology
    );
    std::fs::write(&path, text).expect("write the agent configuration");
    path
}

/// The agent command line's arguments for a run without metrics.
pub fn agent_args(
    config: PathBuf,
    csv: Option<PathBuf>,
    output: PathBuf,
) -> veil_edge_agent::cli::Args {
    veil_edge_agent::cli::Args {
        config: Some(config),
        csv,
        label_column: None,
        stdin: false,
        interval_ms: 0,
        output: Some(output),
        wait_secs: 60,
        metrics: veil_shell::MetricsArgs::default(),
    }
}

/// The page a role's metrics endpoint serves at `/metrics`.
pub async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("metrics endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
        .await
        .expect("request sent");
    let mut page = String::new();
    stream.read_to_string(&mut page).await.expect("page read");
    page
}
