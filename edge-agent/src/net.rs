//! The network side of the agent: one task that feeds the device node
//! what MQTT delivers, drives its timer, and drains it (events to disk
//! and the application, transmits to MQTT).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use veil_link::{Link, LinkEvent};
use veil_protocol::node::Input;
use veil_protocol::topics;

use crate::AgentError;
use crate::shared::{Shared, StopMode};
use veil_shell::now_ms;

pub(crate) fn spawn(
    shared: Arc<Shared>,
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
    Ok(tokio::spawn(run(shared, link, stop)))
}

async fn run(shared: Arc<Shared>, mut link: Link, mut stop: watch::Receiver<StopMode>) {
    // The node's timers are in milliseconds of wall time; half a second
    // of lateness is nothing next to a resend period of seconds.
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Every turn (the tick makes one at least twice a second) is
        // progress for the watchdog; a turn stuck on the node's lock is not.
        shared.heartbeat.beat();
        tokio::select! {
            changed = stop.changed() => {
                let mode = if changed.is_err() { StopMode::Crash } else { *stop.borrow() };
                match mode {
                    StopMode::Run => continue,
                    StopMode::Graceful => {
                        let _ = shared.disk.flush();
                        link.close().await;
                    }
                    StopMode::Crash => link.abort(),
                }
                return;
            }
            event = link.events.recv() => match event {
                Some(event) => on_event(&shared, &link, event),
                None => return,
            },
            _ = shared.notify.notified() => shared.pump(&link.handle),
            _ = tick.tick() => {
                let now = now_ms();
                {
                    let mut node = shared.lock();
                    if node.poll_timeout().is_some_and(|at| now >= at) {
                        node.handle_timeout(now);
                    }
                }
                shared.pump(&link.handle);
            }
        }
    }
}

fn on_event(shared: &Shared, link: &Link, event: LinkEvent) {
    let input = match event {
        LinkEvent::Connected { .. } => {
            shared.counters.connects.fetch_add(1, Ordering::Relaxed);
            return;
        }
        LinkEvent::Subscribed { .. } => {
            tracing::info!(pending = shared.disk.outbox_len(), "connected");
            Input::Connected
        }
        LinkEvent::Disconnected { error } => {
            tracing::warn!(%error, "disconnected; capturing into the outbox");
            Input::Disconnected
        }
        LinkEvent::Confirmed(token) => Input::Confirmed(token),
        LinkEvent::Message(message) => {
            shared.lock().handle(
                now_ms(),
                Input::Message {
                    topic: message.topic,
                    payload: message.payload,
                },
            );
            shared.pump(&link.handle);
            // Acknowledged only once what it caused is on disk.
            link.handle.ack(message.ack);
            return;
        }
    };
    shared.lock().handle(now_ms(), input);
    shared.pump(&link.handle);
}
