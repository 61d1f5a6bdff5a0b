//! The embedded rumqttd: a router plus one v4 and one v5 server, listening
//! on loopback-only ephemeral ports that only the gate connects to.
//!
//! rumqttd's `Broker::start` blocks forever on threads it never stops, so we
//! assemble the same parts ourselves: the router (its own thread, spawned by
//! rumqttd) and the two `Server`s, run on a dedicated thread with its own
//! current-thread runtime. Stopping drops that runtime, which ends the
//! servers and every connection task rumqttd spawned. The router thread
//! cannot be ended (it keeps a sender to its own channel, so its receive
//! loop never sees a disconnect): each start leaves one idle thread and its
//! in-memory log behind.

use std::collections::HashMap;
use std::future::Future as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::pin::pin;
use std::task::Poll;

use ring::rand::{SecureRandom as _, SystemRandom};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::{ConnectionSettings, LinkType, Router, RouterConfig, Server, ServerSettings};
use tokio::sync::oneshot;
use tracing::{debug, error};

use crate::config::BrokerConfig;
use crate::error::BrokerError;

/// How the gate reaches rumqttd.
#[derive(Clone)]
pub(crate) struct UpstreamAddrs {
    pub v4: SocketAddr,
    pub v5: SocketAddr,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for UpstreamAddrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamAddrs")
            .field("v4", &self.v4)
            .field("v5", &self.v5)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Upstream {
    pub addrs: UpstreamAddrs,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Attempts at finding two free loopback ports: another process could take
/// a port between our probe and rumqttd's bind.
const PORT_ATTEMPTS: usize = 5;

fn free_loopback_ports() -> Result<(SocketAddr, SocketAddr), std::io::Error> {
    let a = StdListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let b = StdListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok((a.local_addr()?, b.local_addr()?))
}

fn random_token() -> Result<String, BrokerError> {
    let mut bytes = [0u8; 24];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| BrokerError::Upstream("no system randomness".into()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn server_settings(
    name: &str,
    listen: SocketAddr,
    config: &BrokerConfig,
    auth: &HashMap<String, String>,
) -> ServerSettings {
    ServerSettings {
        name: name.to_string(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            // rumqttd calls this the payload size but checks it against the
            // whole packet.
            max_payload_size: config.max_packet_size(),
            max_inflight_count: usize::from(config.max_inflight),
            auth: Some(auth.clone()),
            external_auth: None,
            // Without dynamic filters rumqttd disconnects a client that
            // publishes to a topic nobody has subscribed to yet.
            dynamic_filters: true,
        },
    }
}

impl Upstream {
    pub async fn start(config: &BrokerConfig) -> Result<Upstream, BrokerError> {
        let username = format!("veil-gate-{}", random_token()?);
        let password = random_token()?;
        let auth: HashMap<String, String> = [(username.clone(), password.clone())].into();
        let router_config = RouterConfig {
            max_connections: config.max_connections.saturating_mul(2),
            max_outgoing_packet_count: 200,
            max_segment_size: config.log_segment_size,
            max_segment_count: config.log_segment_count,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        };
        // One router for all attempts: it is the part that cannot be stopped.
        let router_tx = Router::new(0, router_config).spawn();
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let (v4_addr, v5_addr) = free_loopback_ports()
                .map_err(|e| BrokerError::Upstream(format!("probing loopback ports: {e}")))?;
            let v4 = Server::new(
                server_settings("veil-v4", v4_addr, config, &auth),
                router_tx.clone(),
                V4,
            );
            let v5 = Server::new(
                server_settings("veil-v5", v5_addr, config, &auth),
                router_tx.clone(),
                V5,
            );
            let (ready_tx, ready_rx) = oneshot::channel();
            let (stop_tx, stop_rx) = oneshot::channel();
            let thread = std::thread::Builder::new()
                .name("veil-rumqttd".into())
                .spawn(move || run_servers(v4, v5, ready_tx, stop_rx))
                .map_err(|e| BrokerError::Upstream(format!("spawning thread: {e}")))?;
            match ready_rx.await {
                Ok(Ok(())) => {
                    return Ok(Upstream {
                        addrs: UpstreamAddrs {
                            v4: v4_addr,
                            v5: v5_addr,
                            username,
                            password,
                        },
                        stop: Some(stop_tx),
                        thread: Some(thread),
                    });
                }
                Ok(Err(e)) => last_error = e,
                Err(_) => last_error = "rumqttd thread ended before binding".into(),
            }
            let _ = thread.join();
        }
        Err(BrokerError::Upstream(last_error))
    }

    /// Stops rumqttd's servers and connection tasks and waits for its thread.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn run_servers(
    mut v4: Server<V4>,
    mut v5: Server<V5>,
    ready: oneshot::Sender<Result<(), String>>,
    stop: oneshot::Receiver<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("runtime: {e}")));
            return;
        }
    };
    runtime.block_on(async move {
        let mut v4_run = pin!(v4.start(LinkType::Remote));
        let mut v5_run = pin!(v5.start(LinkType::Remote));
        // `Server::start` binds its listener on the first poll and then
        // waits in accept: after one poll each we know whether both bound.
        let first = std::future::poll_fn(|cx| {
            Poll::Ready((v4_run.as_mut().poll(cx), v5_run.as_mut().poll(cx)))
        })
        .await;
        match first {
            (Poll::Pending, Poll::Pending) => {
                let _ = ready.send(Ok(()));
            }
            (Poll::Ready(r), _) | (_, Poll::Ready(r)) => {
                let _ = ready.send(Err(match r {
                    Err(e) => format!("binding loopback listener: {e}"),
                    Ok(()) => "server stopped at once".into(),
                }));
                return;
            }
        }
        tokio::select! {
            r = &mut v4_run => error!(result = ?r, "embedded rumqttd v4 server stopped"),
            r = &mut v5_run => error!(result = ?r, "embedded rumqttd v5 server stopped"),
            _ = stop => debug!("stopping embedded rumqttd"),
        }
    });
    // Dropping the runtime here cancels every connection task rumqttd
    // spawned on it.
    drop(runtime);
}
