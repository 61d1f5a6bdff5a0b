//! The network side of the agent: one task that owns the MQTT link, sends
//! what the outbox holds, and turns results into outputs.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use veil_link::{Link, LinkEvent, Message};
use veil_protocol::{Body, Envelope, RejectCode, SessionId, topics};

use crate::agent::{Shared, StopMode};
use crate::output::{FrameOutput, decode_logits, predicted_class};
use crate::state::now_ms;
use crate::{AgentError, Output};

/// How a frame ended, as recorded on disk.
const SETTLED_RESULT: u8 = 0;
const SETTLED_REJECTED: u8 = 1;
const SETTLED_EXPIRED: u8 = 2;

pub(crate) fn spawn(
    shared: Arc<Shared>,
    outputs: mpsc::UnboundedSender<Output>,
    stop: watch::Receiver<StopMode>,
) -> Result<tokio::task::JoinHandle<()>, AgentError> {
    let mut mqtt = shared.options.mqtt.clone();
    if mqtt.client_id.is_empty() {
        mqtt.client_id = shared.options.device.clone();
    }
    // Results queue at B, not at the broker: a clean session plus `Sync`
    // on every connection delivers them, whatever the broker remembers.
    mqtt.persistent_session = false;
    let link = Link::start(&mqtt)?;
    link.handle
        .subscribe(vec![topics::result(&shared.options.device)]);
    let net = Net {
        shared,
        outputs,
        link,
        subscribed: false,
        sent: HashMap::new(),
        inits_published: 0,
        last_sync: Instant::now(),
    };
    Ok(tokio::spawn(net.run(stop)))
}

struct Net {
    shared: Arc<Shared>,
    outputs: mpsc::UnboundedSender<Output>,
    link: Link,
    /// Connected with the result subscription in place.
    subscribed: bool,
    /// When each outbox frame was last sent on this connection.
    sent: HashMap<u64, Instant>,
    inits_published: u64,
    last_sync: Instant,
}

impl Net {
    async fn run(mut self, mut stop: watch::Receiver<StopMode>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shared = Arc::clone(&self.shared);
        loop {
            tokio::select! {
                changed = stop.changed() => {
                    let mode = if changed.is_err() { StopMode::Crash } else { *stop.borrow() };
                    match mode {
                        StopMode::Run => continue,
                        StopMode::Graceful => {
                            let _ = shared.disk.flush();
                            self.link.close().await;
                        }
                        StopMode::Crash => self.link.abort(),
                    }
                    return;
                }
                event = self.link.events.recv() => match event {
                    Some(event) => self.on_event(event),
                    None => return,
                },
                _ = shared.notify.notified() => self.send_new(),
                _ = tick.tick() => self.on_tick(),
            }
        }
    }

    fn on_event(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Connected { .. } => {
                self.shared
                    .counters
                    .connects
                    .fetch_add(1, Ordering::Relaxed);
                self.subscribed = false;
                self.sent.clear();
                // The broker may have lost its retained messages.
                self.inits_published = 0;
                self.publish_inits();
            }
            LinkEvent::Subscribed { .. } => {
                self.subscribed = true;
                tracing::info!(pending = self.shared.disk.outbox_len(), "connected");
                self.sync();
                self.send_new();
            }
            LinkEvent::Message(message) => self.on_message(message),
            LinkEvent::Disconnected { error } => {
                if self.subscribed {
                    tracing::warn!(%error, "disconnected; capturing into the outbox");
                }
                self.subscribed = false;
            }
            LinkEvent::Confirmed(_) => {}
        }
    }

    fn publish_inits(&mut self) {
        let (version, inits) = {
            let inner = self.shared.lock();
            (inner.inits_version, inner.inits.clone())
        };
        if version == self.inits_published {
            return;
        }
        let Some((to_a, to_b)) = inits else {
            return;
        };
        let device = &self.shared.options.device;
        let bytes = (to_a.len() + to_b.len()) as u64;
        self.shared
            .counters
            .session_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        // Retained, so that a server that starts later still learns them.
        self.link
            .handle
            .publish(topics::session(device, 'a'), to_a, true);
        self.link
            .handle
            .publish(topics::session(device, 'b'), to_b, true);
        self.inits_published = version;
    }

    /// Asks B for every result it still holds for this device.
    fn sync(&mut self) {
        let sid = self
            .shared
            .lock()
            .device
            .current()
            .map_or(SessionId([0; 16]), |s| s.sid);
        let envelope = Envelope::new(&self.shared.options.device, sid, 0, Body::Sync);
        if let Ok(bytes) = envelope.to_bytes() {
            self.link
                .handle
                .publish(topics::ack(&self.shared.options.device), bytes, false);
        }
        self.last_sync = Instant::now();
    }

    /// Publishes every outbox frame not yet sent on this connection.
    fn send_new(&mut self) {
        self.publish_inits();
        if !self.subscribed {
            return;
        }
        let topic = topics::frame(&self.shared.options.device);
        for entry in self.shared.disk.outbox() {
            if self.sent.contains_key(&entry.t) {
                continue;
            }
            self.sent.insert(entry.t, Instant::now());
            let counters = &self.shared.counters;
            counters.frames_sent.fetch_add(1, Ordering::Relaxed);
            counters
                .frame_bytes
                .fetch_add(entry.envelope.len() as u64, Ordering::Relaxed);
            self.link
                .handle
                .publish(topic.clone(), entry.envelope, false);
        }
    }

    fn on_tick(&mut self) {
        let resend_after = self.shared.options.resend_after;
        let ttl_ms = self.shared.options.frame_ttl.as_millis() as u64;
        let now = Instant::now();
        let mut resent = false;
        for entry in self.shared.disk.outbox() {
            if now_ms().saturating_sub(entry.captured_ms) >= ttl_ms {
                let sid = SessionId(entry.sid);
                tracing::warn!(
                    t = entry.t,
                    "no result within the frame time to live; giving the frame up"
                );
                if self
                    .shared
                    .disk
                    .settle(sid, entry.t, SETTLED_EXPIRED)
                    .is_ok()
                {
                    self.shared.counters.expired.fetch_add(1, Ordering::Relaxed);
                    let _ = self.outputs.send(Output::Expired {
                        device: self.shared.options.device.clone(),
                        session: sid.to_hex(),
                        t: entry.t,
                        label: entry.label,
                    });
                }
                continue;
            }
            if !self.subscribed {
                continue;
            }
            let stale = self
                .sent
                .get(&entry.t)
                .is_some_and(|at| now.duration_since(*at) >= resend_after);
            if stale {
                self.sent.insert(entry.t, now);
                self.shared.counters.resent.fetch_add(1, Ordering::Relaxed);
                self.link.handle.publish(
                    topics::frame(&self.shared.options.device),
                    entry.envelope,
                    false,
                );
                resent = true;
            }
        }
        // Its result may be waiting at B already (lost on the way here).
        if resent && now.duration_since(self.last_sync) >= resend_after / 2 {
            self.sync();
        }
        self.send_new();
    }

    fn on_message(&mut self, message: Message) {
        let Message {
            topic,
            payload,
            ack,
            ..
        } = message;
        let device = self.shared.options.device.clone();
        if topic == topics::result(&device) {
            match Envelope::from_bytes(&payload) {
                Ok(env) if env.device == device => self.on_result(env, payload.len()),
                Ok(env) => {
                    tracing::warn!(claimed = %env.device, "result addressed to another device; ignored")
                }
                Err(e) => tracing::warn!(error = %e, "unreadable message on the result topic"),
            }
        }
        self.link.handle.ack(ack);
    }

    fn send_ack(&self, sid: SessionId, t: u64) {
        let ack = self.shared.lock().device.ack(sid, t);
        if let Ok(bytes) = ack.envelope.to_bytes() {
            let counters = &self.shared.counters;
            counters.acks.fetch_add(1, Ordering::Relaxed);
            counters
                .ack_bytes
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            self.link
                .handle
                .publish(topics::ack(&self.shared.options.device), bytes, false);
        }
    }

    fn on_result(&mut self, env: Envelope, bytes: usize) {
        let (sid, t) = (env.sid, env.t);
        if let Body::Reject { code, detail } = &env.body {
            self.on_reject(sid, t, *code, detail);
            return;
        }
        if self.shared.disk.was_delivered(sid, t) {
            // Already handed over: B did not get the ack, or redelivered.
            self.shared
                .counters
                .duplicates
                .fetch_add(1, Ordering::Relaxed);
            self.send_ack(sid, t);
            return;
        }
        let opened = self.shared.lock().device.open_result(&env);
        let opened = match opened {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(%sid, t, error = %e, "cannot open a result; acknowledging it so B drops it");
                self.send_ack(sid, t);
                return;
            }
        };
        let entry = self.shared.disk.outbox_entry(t).filter(|e| e.sid == sid.0);
        let captured = self
            .shared
            .captured_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&t);
        let latency_ms = match (captured, &entry) {
            (Some(at), _) => at.elapsed().as_secs_f64() * 1000.0,
            (None, Some(e)) => now_ms().saturating_sub(e.captured_ms) as f64,
            (None, None) => 0.0,
        };
        self.sent.remove(&t);
        if let Err(e) = self.shared.disk.settle(sid, t, SETTLED_RESULT) {
            tracing::error!(error = %e, "could not record a delivered result");
            return;
        }
        let logits = decode_logits(&self.shared.topology, &opened.values);
        let output = FrameOutput {
            device: self.shared.options.device.clone(),
            session: sid.to_hex(),
            t,
            class: predicted_class(&logits),
            logits,
            latency_ms,
            label: entry.and_then(|e| e.label),
            raw: opened.values,
        };
        let counters = &self.shared.counters;
        counters.results.fetch_add(1, Ordering::Relaxed);
        counters
            .result_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        let _ = self.outputs.send(Output::Result(output));
        self.send_ack(sid, t);
    }

    fn on_reject(&mut self, sid: SessionId, t: u64, code: RejectCode, reason: &str) {
        let entry = self.shared.disk.outbox_entry(t).filter(|e| e.sid == sid.0);
        let Some(entry) = entry else {
            tracing::warn!(%sid, t, %code, %reason, "a server refused a message of this device");
            return;
        };
        tracing::warn!(%sid, t, %code, %reason, "a server refused this frame");
        if self.shared.disk.settle(sid, t, SETTLED_REJECTED).is_ok() {
            self.shared
                .counters
                .rejected
                .fetch_add(1, Ordering::Relaxed);
            let _ = self.outputs.send(Output::Rejected {
                device: self.shared.options.device.clone(),
                session: sid.to_hex(),
                t,
                code,
                reason: reason.to_string(),
                label: entry.label,
            });
        }
    }
}
