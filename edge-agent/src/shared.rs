//! What the capture side and the network task share: the device node, the
//! disk, the counters and the output channel; and the one place where the
//! node's events are written to disk and its transmits handed to MQTT.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};
use veil_link::LinkHandle;
use veil_model::Topology;
use veil_protocol::node::{DeviceEvent, DeviceNode, Settled};
use veil_protocol::{SessionId, topics};

use crate::options::AgentOptions;
use crate::output::{FrameOutput, decode_logits, predicted_class};
use crate::state::{Disk, OutboxEntry, SessionsFile};
use crate::{AgentError, Output};
use veil_shell::now_ms;

/// Traffic and outcome counters.
#[derive(Default, Debug)]
pub struct Counters {
    pub captured: AtomicU64,
    pub frames_sent: AtomicU64,
    pub frame_bytes: AtomicU64,
    pub results: AtomicU64,
    pub result_bytes: AtomicU64,
    pub acks: AtomicU64,
    pub ack_bytes: AtomicU64,
    pub session_bytes: AtomicU64,
    pub rejected: AtomicU64,
    pub expired: AtomicU64,
    pub connects: AtomicU64,
    /// Capture to result delivered.
    pub latency: veil_shell::Latency,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum StopMode {
    Run,
    Graceful,
    Crash,
}

pub(crate) struct Shared {
    pub options: AgentOptions,
    pub topology: Arc<Topology>,
    pub node: Mutex<DeviceNode>,
    pub disk: Disk,
    pub counters: Counters,
    /// Wakes the network task to drain the node's transmits.
    pub notify: Notify,
    /// Capture instants of this run's frames (for exact latencies).
    pub captured_at: Mutex<HashMap<u64, Instant>>,
    pub outputs: mpsc::UnboundedSender<Output>,
    /// Beaten by the network task on every turn of its loop.
    pub heartbeat: veil_shell::Heartbeat,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, DeviceNode> {
        // A panic while holding the lock leaves nothing half-written that
        // the next user could misread: events are applied before the
        // transmits that depend on them leave.
        self.node.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the node's pending events to disk and hands outcomes to the
    /// application; returns the first disk error (after applying the rest).
    pub fn apply_events(&self, node: &mut DeviceNode) -> Result<(), AgentError> {
        let mut first_error = None;
        while let Some(event) = node.poll_event() {
            if let Err(e) = self.apply(node, event) {
                tracing::error!(error = %crate::chain(&e), "could not write the device's state");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn apply(&self, node: &DeviceNode, event: DeviceEvent) -> Result<(), AgentError> {
        let device = &self.options.device;
        match event {
            DeviceEvent::PersistCounter(mark) => self.disk.save_counter(mark)?,
            DeviceEvent::PersistSessions(sessions) => self.disk.save_sessions(&SessionsFile {
                sessions,
                current: node.device().current().map(|s| s.sid),
                inits: None,
            })?,
            DeviceEvent::PersistOutbox { sid, t } => {
                // Gone if it settled before this event was applied (its
                // Settle follows).
                if let Some(entry) = node.outbox_entry(sid, t) {
                    self.disk.put_outbox(&OutboxEntry {
                        sid: entry.sid.0,
                        t: entry.t,
                        envelope: entry.envelope.clone(),
                        captured_ms: entry.captured,
                        label: entry.label.clone(),
                    })?;
                }
            }
            DeviceEvent::Settle { sid, t, how } => self.disk.settle(sid, t, settled_code(how))?,
            DeviceEvent::Deliver {
                sid,
                t,
                values,
                captured,
                label,
                bytes,
            } => {
                let at = self
                    .captured_at
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&t);
                let latency = match at {
                    Some(at) => at.elapsed(),
                    None => Duration::from_millis(now_ms().saturating_sub(captured)),
                };
                self.counters.latency.observe(latency);
                let latency_ms = latency.as_secs_f64() * 1000.0;
                let logits = decode_logits(&self.topology, &values);
                let counters = &self.counters;
                counters.results.fetch_add(1, Ordering::Relaxed);
                counters
                    .result_bytes
                    .fetch_add(bytes as u64, Ordering::Relaxed);
                let _ = self.outputs.send(Output::Result(FrameOutput {
                    device: device.clone(),
                    session: sid.to_hex(),
                    t,
                    class: predicted_class(&logits),
                    logits,
                    latency_ms,
                    label,
                    raw: values,
                }));
            }
            DeviceEvent::Refused {
                sid,
                t,
                code,
                detail,
                label,
            } => {
                tracing::warn!(%sid, t, %code, reason = %detail, "a server refused this frame");
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                let _ = self.outputs.send(Output::Rejected {
                    device: device.clone(),
                    session: sid.to_hex(),
                    t,
                    code,
                    reason: detail,
                    label,
                });
            }
            DeviceEvent::Expired { sid, t, label } => {
                tracing::warn!(%sid, t, "no result within the frame time to live; frame given up");
                self.counters.expired.fetch_add(1, Ordering::Relaxed);
                let _ = self.outputs.send(Output::Expired {
                    device: device.clone(),
                    session: sid.to_hex(),
                    t,
                    label,
                });
            }
            DeviceEvent::Ignored { sid, t, why } => tracing::debug!(%sid, t, %why, "ignored"),
        }
        Ok(())
    }

    /// Applies the node's events, then publishes its transmits (the node's
    /// ordering contract: what a transmit depends on is durable first).
    pub fn pump(&self, link: &LinkHandle) {
        let mut node = self.lock();
        // Errors are logged where they happen; the frame stays in the
        // node's outbox and goes out regardless (a lost disk write costs
        // durability, not privacy: every start opens a fresh session).
        let _ = self.apply_events(&mut node);
        let device = &self.options.device;
        while let Some(t) = node.poll_transmit() {
            self.count(device, &t.topic, t.payload.len() as u64);
            match t.confirm {
                Some(token) => link.publish_confirmed(t.topic, t.payload, t.retain, token),
                None => link.publish(t.topic, t.payload, t.retain),
            }
        }
    }

    fn count(&self, device: &str, topic: &str, bytes: u64) {
        let c = &self.counters;
        if topic == topics::frame(device) {
            c.frames_sent.fetch_add(1, Ordering::Relaxed);
            c.frame_bytes.fetch_add(bytes, Ordering::Relaxed);
        } else if topic == topics::ack(device) {
            c.acks.fetch_add(1, Ordering::Relaxed);
            c.ack_bytes.fetch_add(bytes, Ordering::Relaxed);
        } else {
            c.session_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// The current session, if one is open.
    pub fn session(&self) -> Option<SessionId> {
        self.lock().device().current().map(|s| s.sid)
    }
}

/// How a frame ended, as recorded on disk.
fn settled_code(how: Settled) -> u8 {
    match how {
        Settled::Result => 0,
        Settled::Rejected => 1,
        Settled::Expired => 2,
    }
}
