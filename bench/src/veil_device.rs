//! veil's device as the benchmark drives it, live and under callgrind: the
//! device node that ships ([`DeviceNode`], what the edge agent's shell
//! drives), fed and drained the way that shell does, minus its disk.
//!
//! Each call below is one piece of per-frame work the harness times on
//! the device's thread, the node's clock read included:
//! - [`VeilDevice::capture`]: the node masks the frame and queues its
//!   message, carrying the acknowledgements of the results received since
//!   the last frame;
//! - [`VeilDevice::handle`]: a message from the broker (a result: the node
//!   decodes, unmasks and delivers it, noting its acknowledgement for the
//!   next frame) or the broker's confirmation of a publish;
//! - [`VeilDevice::tick`]: the shell's timer check.
//!
//! Events are drained and dropped except deliveries and refusals: writing
//! them to disk is the edge agent's I/O, which this benchmark has no disk
//! for. Messages to publish are drained inside the timed work too
//! ([`DeviceNode::poll_publish`], which lends them from the node's
//! buffers), each copied into a staging buffer this shell reuses: that
//! copy stands for the MQTT client's copy into its packet, counted
//! against veil; the harness then hands the staged messages to the MQTT
//! client, whose own work is left out.

use crate::conventional::argmax;
use anyhow::{Result, bail};
use std::time::Instant;
use veil_protocol::node::{DeviceEvent, DeviceNode, Input, Millis, Publish};

/// veil's device node with the bench's shell around it.
pub struct VeilDevice {
    /// The node.
    pub node: DeviceNode,
    started: Instant,
    /// Staged messages: the first `staged` are waiting for the client.
    stage: Vec<Staged>,
    staged: usize,
    /// The counter and class of the latest delivered result.
    delivered: Option<(u64, usize)>,
}

impl VeilDevice {
    /// Wraps a node; its clock counts milliseconds from now.
    pub fn new(node: DeviceNode) -> VeilDevice {
        VeilDevice {
            node,
            started: Instant::now(),
            stage: Vec::new(),
            staged: 0,
            delivered: None,
        }
    }

    /// The node's clock: what the edge agent reads on every input.
    pub fn now(&self) -> Millis {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Captures one encoded frame; returns its counter.
    pub fn capture(&mut self, x_hat: &[i64]) -> Result<u64> {
        let now = self.now();
        let (_, t) = self.node.capture(now, x_hat, None)?;
        self.drain()?;
        Ok(t)
    }

    /// Feeds the node one input; returns the counter and class of a result
    /// it delivered.
    pub fn handle(&mut self, input: Input) -> Result<Option<(u64, usize)>> {
        let now = self.now();
        self.node.handle(now, input);
        self.drain()?;
        Ok(self.delivered.take())
    }

    /// Opens the next session ahead of the first capture (the device's
    /// two Paillier encryptions and its session messages).
    pub fn open_session(&mut self) -> Result<()> {
        let now = self.now();
        self.node.prepare_session(now)?;
        self.drain()
    }

    /// The shell's timer: fires the node's timeout once it is due at
    /// `now` (the node's clock, or later to stand for time passing).
    pub fn tick(&mut self, now: Option<Millis>) -> Result<()> {
        let now = now.unwrap_or_else(|| self.now());
        if self.node.poll_timeout().is_some_and(|at| now >= at) {
            self.node.handle_timeout(now);
        }
        self.drain()
    }

    /// The node's messages to publish, in order, handed to `publish` and
    /// forgotten.
    pub fn publish(&mut self, mut publish: impl FnMut(&Staged) -> Result<()>) -> Result<()> {
        let staged = self.staged;
        self.staged = 0;
        self.stage.iter().take(staged).try_for_each(&mut publish)
    }

    /// The count of staged messages, dropped.
    pub fn discard(&mut self) -> usize {
        std::mem::take(&mut self.staged)
    }

    fn drain(&mut self) -> Result<()> {
        while let Some(event) = self.node.poll_event() {
            match event {
                DeviceEvent::Deliver { t, values, .. } => {
                    self.delivered = Some((t, argmax(&values).unwrap_or(0)));
                }
                DeviceEvent::Refused {
                    t, code, detail, ..
                } => bail!("frame {t} refused ({code}): {detail}"),
                DeviceEvent::Expired { t, .. } => bail!("frame {t} expired"),
                DeviceEvent::Ignored { t, why, .. } => bail!("counter {t}: {why}"),
                DeviceEvent::PersistCounter(_)
                | DeviceEvent::PersistSessions(_)
                | DeviceEvent::PersistOutbox { .. }
                | DeviceEvent::Settle { .. } => {}
            }
        }
        while let Some(publish) = self.node.poll_publish() {
            match self.stage.get_mut(self.staged) {
                Some(slot) => slot.copy_from(&publish),
                None => {
                    let mut slot = Staged::default();
                    slot.copy_from(&publish);
                    self.stage.push(slot);
                }
            }
            self.staged += 1;
        }
        Ok(())
    }
}

/// A message copied out of the node for the MQTT client (buffers reused
/// from message to message).
#[derive(Debug, Default)]
pub struct Staged {
    /// The topic.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// Whether the broker retains it.
    pub retain: bool,
    /// The token its confirmation reports.
    pub confirm: Option<u64>,
}

impl Staged {
    fn copy_from(&mut self, publish: &Publish<'_>) {
        self.topic.clear();
        self.topic.push_str(publish.topic);
        self.payload.clear();
        self.payload.extend_from_slice(publish.payload);
        self.retain = publish.retain;
        self.confirm = publish.confirm;
    }
}
