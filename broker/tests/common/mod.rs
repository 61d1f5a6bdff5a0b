//! Helpers shared by the broker's integration tests: brokers configured with
//! the repository's example files, and rumqttc clients whose event loops
//! report into channels.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use veil_broker::{Broker, BrokerConfig, BrokerHandle};

pub const WAIT: Duration = Duration::from_secs(10);
/// Client-side packet limit: above the broker's 16 MiB payload default.
pub const CLIENT_MAX_PACKET: usize = 32 * 1024 * 1024;

pub fn repo_config(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../config")
        .join(name)
}

/// Whether this runs in CI, where every optional tool must be installed.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The example config: config/acl and config/passwords, ephemeral port.
pub fn example_config() -> BrokerConfig {
    BrokerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        password_file: Some(repo_config("passwords")),
        acl_file: Some(repo_config("acl")),
        ..BrokerConfig::default()
    }
}

pub async fn start(config: BrokerConfig) -> BrokerHandle {
    init_logging();
    Broker::start(config).await.expect("broker starts")
}

/// Demo password of a user in config/passwords.
pub fn demo_password(user: &str) -> String {
    format!("demo-{user}")
}

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures this test binary's log output (all tests share it; search it
/// for names unique to one test).
pub fn init_logging() {
    let buffer = LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("veil_broker=debug")
            .with_ansi(false)
            .with_writer(move || Capture(writer.clone()))
            .try_init();
        buffer
    });
    let _ = buffer;
}

pub fn logs() -> String {
    LOGS.get()
        .map(|b| String::from_utf8_lossy(&b.lock().unwrap()).into_owned())
        .unwrap_or_default()
}

/// What a client's event loop reported.
#[derive(Debug)]
pub enum Report<P> {
    Packet(P),
    Error(String),
}

/// A 3.1.1 client whose event loop runs in a task until its first error.
pub struct V4Client {
    pub client: AsyncClient,
    reports: mpsc::UnboundedReceiver<Report<Packet>>,
    task: JoinHandle<()>,
}

/// Options for `user` (None: anonymous) with the client id `<user>-<id>`
/// (the gate binds client ids to usernames), or `id` for anonymous clients.
pub fn v4_options(addr: SocketAddr, id: &str, user: Option<&str>) -> MqttOptions {
    let id = match user {
        Some(user) => format!("{user}-{id}"),
        None => id.to_string(),
    };
    let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_max_packet_size(CLIENT_MAX_PACKET, CLIENT_MAX_PACKET);
    opts.set_keep_alive(Duration::from_secs(30));
    if let Some(user) = user {
        opts.set_credentials(user, demo_password(user));
    }
    opts
}

impl V4Client {
    pub fn spawn(opts: MqttOptions) -> V4Client {
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        let (tx, reports) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(p)) => {
                        if tx.send(Report::Packet(p)).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => {
                        let _ = tx.send(Report::Error(e.to_string()));
                        return;
                    }
                }
            }
        });
        V4Client {
            client,
            reports,
            task,
        }
    }

    /// Connects as a user from config/passwords and waits for CONNACK.
    pub async fn connect(addr: SocketAddr, id: &str, user: &str, clean: bool) -> V4Client {
        let mut opts = v4_options(addr, id, Some(user));
        opts.set_clean_session(clean);
        let mut c = V4Client::spawn(opts);
        c.connack().await.expect("connected");
        c
    }

    pub async fn next(&mut self) -> Result<Packet, String> {
        match tokio::time::timeout(WAIT, self.reports.recv()).await {
            Err(_) => Err("timed out".into()),
            Ok(None) => Err("event loop ended".into()),
            Ok(Some(Report::Packet(p))) => Ok(p),
            Ok(Some(Report::Error(e))) => Err(e),
        }
    }

    /// Skips packets until `pick` accepts one.
    pub async fn expect<T>(
        &mut self,
        mut pick: impl FnMut(&Packet) -> Option<T>,
    ) -> Result<T, String> {
        loop {
            let p = self.next().await?;
            if let Some(t) = pick(&p) {
                return Ok(t);
            }
        }
    }

    pub async fn connack(&mut self) -> Result<rumqttc::ConnAck, String> {
        self.expect(|p| match p {
            Packet::ConnAck(a) => Some(a.clone()),
            _ => None,
        })
        .await
    }

    pub async fn suback(&mut self) -> Result<rumqttc::SubAck, String> {
        self.expect(|p| match p {
            Packet::SubAck(a) => Some(a.clone()),
            _ => None,
        })
        .await
    }

    pub async fn publish_received(&mut self) -> Result<rumqttc::Publish, String> {
        self.expect(|p| match p {
            Packet::Publish(m) => Some(m.clone()),
            _ => None,
        })
        .await
    }

    pub async fn subscribe(&mut self, filter: &str) -> rumqttc::SubAck {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("queue subscribe");
        self.suback().await.expect("suback")
    }

    /// Publishes at QoS 1 and waits for the PUBACK.
    pub async fn publish_acked(&mut self, topic: &str, payload: Vec<u8>, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .expect("queue publish");
        self.expect(|p| matches!(p, Packet::PubAck(_)).then_some(()))
            .await
            .expect("puback");
    }

    /// Collects the PUBLISHes that arrive within `window`.
    pub async fn publishes_within(&mut self, window: Duration) -> Vec<rumqttc::Publish> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(r)) = tokio::time::timeout_at(deadline, self.reports.recv()).await {
            if let Report::Packet(Packet::Publish(p)) = r {
                out.push(p);
            }
        }
        out
    }

    /// Waits (up to [`WAIT`]) for `count` PUBLISHes, then keeps listening
    /// for `extra` to catch any that should not have come.
    pub async fn publishes_until(
        &mut self,
        count: usize,
        extra: Duration,
    ) -> Vec<rumqttc::Publish> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while out.len() < count {
            match tokio::time::timeout_at(deadline, self.reports.recv()).await {
                Ok(Some(Report::Packet(Packet::Publish(p)))) => out.push(p),
                Ok(Some(_)) => {}
                _ => return out,
            }
        }
        out.extend(self.publishes_within(extra).await);
        out
    }

    /// Waits until the event loop reports an error (e.g. the broker closed
    /// the connection) and returns it.
    pub async fn closed(&mut self) -> String {
        loop {
            match self.next().await {
                Err(e) => return e,
                Ok(_) => continue,
            }
        }
    }

    /// Sends DISCONNECT and waits for the event loop to end.
    pub async fn disconnect(mut self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(WAIT, &mut self.task).await;
    }
}

impl Drop for V4Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub mod v5 {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    pub struct V5Client {
        pub client: AsyncClient,
        reports: mpsc::UnboundedReceiver<Report<Packet>>,
        task: JoinHandle<()>,
    }

    /// Options for `user` with the client id `<user>-<id>`.
    pub fn options(addr: SocketAddr, id: &str, user: &str) -> MqttOptions {
        let mut opts = MqttOptions::new(format!("{user}-{id}"), addr.ip().to_string(), addr.port());
        opts.set_max_packet_size(Some(CLIENT_MAX_PACKET as u32));
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_credentials(user, demo_password(user));
        opts
    }

    impl V5Client {
        pub fn spawn(opts: MqttOptions) -> V5Client {
            let (client, mut eventloop) = AsyncClient::new(opts, 1000);
            let (tx, reports) = mpsc::unbounded_channel();
            let task = tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(p)) => {
                            if tx.send(Report::Packet(p)).is_err() {
                                return;
                            }
                        }
                        Ok(Event::Outgoing(_)) => {}
                        Err(e) => {
                            let _ = tx.send(Report::Error(e.to_string()));
                            return;
                        }
                    }
                }
            });
            V5Client {
                client,
                reports,
                task,
            }
        }

        pub async fn connect(addr: SocketAddr, id: &str, user: &str) -> V5Client {
            let mut c = V5Client::spawn(options(addr, id, user));
            c.expect(|p| matches!(p, Packet::ConnAck(_)).then_some(()))
                .await
                .expect("connected");
            c
        }

        pub async fn next(&mut self) -> Result<Packet, String> {
            match tokio::time::timeout(WAIT, self.reports.recv()).await {
                Err(_) => Err("timed out".into()),
                Ok(None) => Err("event loop ended".into()),
                Ok(Some(Report::Packet(p))) => Ok(p),
                Ok(Some(Report::Error(e))) => Err(e),
            }
        }

        pub async fn expect<T>(
            &mut self,
            mut pick: impl FnMut(&Packet) -> Option<T>,
        ) -> Result<T, String> {
            loop {
                let p = self.next().await?;
                if let Some(t) = pick(&p) {
                    return Ok(t);
                }
            }
        }

        pub async fn publishes_until(
            &mut self,
            count: usize,
            extra: Duration,
        ) -> Vec<rumqttc::v5::mqttbytes::v5::Publish> {
            let mut out = Vec::new();
            let deadline = tokio::time::Instant::now() + WAIT;
            while out.len() < count {
                match tokio::time::timeout_at(deadline, self.reports.recv()).await {
                    Ok(Some(Report::Packet(Packet::Publish(p)))) => out.push(p),
                    Ok(Some(_)) => {}
                    _ => return out,
                }
            }
            out.extend(self.publishes_within(extra).await);
            out
        }

        pub async fn publishes_within(
            &mut self,
            window: Duration,
        ) -> Vec<rumqttc::v5::mqttbytes::v5::Publish> {
            let mut out = Vec::new();
            let deadline = tokio::time::Instant::now() + window;
            while let Ok(Some(r)) = tokio::time::timeout_at(deadline, self.reports.recv()).await {
                if let Report::Packet(Packet::Publish(p)) = r {
                    out.push(p);
                }
            }
            out
        }
    }

    impl Drop for V5Client {
        fn drop(&mut self) {
            self.task.abort();
        }
    }
}
