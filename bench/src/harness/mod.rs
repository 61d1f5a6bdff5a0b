//! `veil bench device`: veil and the conventional baseline over the same
//! MQTT transport (veil's embedded broker on loopback, the shipped ACL and
//! passwords), each party a rumqttc client driving its state machine on its
//! own thread, measured on the device side.
//!
//! Measurement, per frame, on the device:
//! - CPU: the CPU clocks of the device's thread and of its one-thread rayon
//!   pool, read around each piece of the device's own work (masking,
//!   encryption, decryption, activations, encoding and decoding messages);
//!   the MQTT client's work is left out for both approaches.
//! - wall time: from the frame being handed to the device to its result
//!   being decoded.
//! - bytes: every byte of the device's MQTT connection in both directions,
//!   counted at the socket by a relay between the client and the broker
//!   (PUBLISH and PUBACK packets with their headers), between quiet points
//!   before and after the frame.
//!
//! Servers get the same treatment: each has its own rayon pool, and its CPU
//! time is the sum of its threads' clocks, split into online (the frame's
//! messages) and offline (precomputation, session and mask traffic).

use crate::conventional::{
    ConvBody, ConvDevice, ConvEnvelope, ConvServer, ConvServerConfig, ConvStep, argmax,
};
use crate::cores::Placement;
use crate::meter::{CpuGroup, Relay, Traffic, publish_packet_len};
use crate::report::{ApproachReport, FrameCost, ServerCost, SetupCost};
use crate::veil_device::VeilDevice;
use crate::{pooled_noise, textbook_noise, thread_cpu_time};
use anyhow::{Context, Result, anyhow, bail};
use rumqttc::{Client, Connection, Event, MqttOptions, Outgoing, Packet, QoS, RecvTimeoutError};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use veil_model::{Model, Topology};
use veil_paillier::{KeySize, SecretKey};
use veil_protocol::node::{
    AEvent, AOptions, BEvent, BOptions, Bytes, DeviceNode, DeviceOptions, Input as NodeInput,
    Millis, Refusal, ServerANode, ServerBNode, Transmit,
};
use veil_protocol::{
    Body, Device, DeviceConfig, DeviceSession, Envelope, PaillierPublic, PaillierSecret, Params,
    PublicOps, Seed, ServerA, ServerAConfig, ServerB, ServerBConfig, SessionId, topics,
};

mod baseline;
mod broker;
mod link;
mod measure;
mod roles;
mod server;
mod veil;

pub use baseline::run_conventional;
pub use broker::BenchBroker;
pub use link::{Link, Polled};
use measure::*;
pub use measure::{Input, Run};
use roles::*;
pub use server::{Publish, ServerHandle, ServerRole, ServerSnapshot, ServerStats, wait_quiet};
pub use veil::{VeilReplayState, run_veil};

/// The benchmark device's broker username.
pub const DEVICE_USER: &str = "devA";

pub(super) fn password(user: &str) -> String {
    format!("demo-{user}")
}

pub(super) fn conv_up(device: &str, kind: &str) -> String {
    format!("{}/conv/{device}/up/{kind}", topics::ROOT)
}

pub(super) fn conv_down(device: &str) -> String {
    format!("{}/conv/{device}/down/result", topics::ROOT)
}

pub(super) const CONV_UP_FILTER: &str = "veil/v1/conv/+/up/#";
pub(super) const B_WORKER: &str = "bench";
