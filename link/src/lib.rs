//! veil-link owns the MQTT connection that every veil runtime (edge agent,
//! server A, server B) uses: the connection settings (URL, credentials,
//! optional TLS, packet limits), the rumqttc event loop run in its own task
//! with reconnection and exponential backoff, re-subscription after every
//! reconnect, publishes held back while the broker is unreachable, manual
//! acknowledgement of incoming messages (so a runtime acknowledges only what
//! it has made durable), and *confirmed* publishes: a publish that carries a
//! token is reported back once the broker has acknowledged it (PUBACK), and
//! is sent again after a reconnect until it has been. It knows nothing of
//! the protocol: the runtimes give it topics and bytes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

mod driver;
mod settings;
mod tls;

pub use driver::{EVENT_QUEUE, Link, LinkHandle, fetch_retained};
pub use settings::{LastWill, MqttSettings};

/// Why a link could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("broker URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("no retained message on {topics} ({last_error})")]
    Missing { topics: String, last_error: String },
}

#[derive(Debug)]
pub struct Message {
    pub topic: String,
    pub payload: bytes::Bytes,
    pub retain: bool,
    /// Hand back to [`LinkHandle::ack`] once the message is safe.
    pub ack: AckToken,
}

/// Identifies one incoming QoS 1 message for its acknowledgement.
#[derive(Debug)]
pub struct AckToken {
    generation: u64,
    publish: Option<Publish>,
}

/// What the link reports to its owner.
#[derive(Debug)]
pub enum LinkEvent {
    /// Connected (again); subscriptions are being renewed.
    Connected {
        session_present: bool,
    },
    /// The subscriptions of this connection are in place; `granted` tells,
    /// per filter, whether the broker accepted it (a real Mosquitto accepts
    /// every filter and filters deliveries instead, so nothing may rely on
    /// a refusal showing up here).
    Subscribed {
        granted: Vec<bool>,
    },
    Message(Message),
    /// The broker acknowledged the publish that carried this token.
    Confirmed(u64),
    Disconnected {
        error: String,
    },
}

/// Messages between a server's link and its worker thread: with the link's
/// own bounded queue, what bounds the memory a flood can take in a server.
pub const WORKER_QUEUE: usize = 32;

/// Hands `item` to a worker thread, waiting while its queue is full (which
/// stops the link reading from the broker, and so pushes back on the
/// sender). `Err` once the worker is gone.
pub async fn hand_to_worker<T>(to: &std::sync::mpsc::SyncSender<T>, mut item: T) -> Result<(), ()> {
    loop {
        match to.try_send(item) {
            Ok(()) => return Ok(()),
            Err(std::sync::mpsc::TrySendError::Full(back)) => {
                item = back;
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return Err(()),
        }
    }
}
