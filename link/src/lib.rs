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

#![warn(
    missing_docs,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

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
    /// A broker URL that is not `mqtt://host:port` or `mqtts://host:port`.
    #[error("broker URL {url:?}: {reason}")]
    Url {
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A password, certificate or key file that could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TLS settings that do not load (certificates, keys, roots).
    #[error("TLS: {0}")]
    Tls(String),
    /// A retained message awaited at start-up never came.
    #[error("no retained message on {topics} ({last_error})")]
    Missing {
        /// The topics waited on.
        topics: String,
        /// The last connection error seen meanwhile, if any.
        last_error: String,
    },
}

/// A message the broker delivered.
#[derive(Debug)]
pub struct Message {
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub payload: bytes::Bytes,
    /// Whether it is a retained message.
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
        /// Whether the broker kept the session (subscriptions, queue).
        session_present: bool,
    },
    /// The subscriptions of this connection are in place; `granted` tells,
    /// per filter, whether the broker accepted it (a real Mosquitto accepts
    /// every filter and filters deliveries instead, so nothing may rely on
    /// a refusal showing up here).
    Subscribed {
        /// Per filter, in the order subscribed: accepted or not.
        granted: Vec<bool>,
    },
    /// A message arrived.
    Message(Message),
    /// The broker acknowledged the publish that carried this token.
    Confirmed(u64),
    /// The connection dropped; the link reconnects with back-off.
    Disconnected {
        /// Why, as the MQTT client reported it.
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
