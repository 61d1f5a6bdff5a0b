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
//! for. Transmits are drained into a queue the harness hands to the MQTT
//! client, whose work is left out.

use crate::conventional::argmax;
use anyhow::{Result, bail};
use std::time::Instant;
use veil_protocol::node::{DeviceEvent, DeviceNode, Input, Millis, Transmit};

/// veil's device node with the bench's shell around it.
pub struct VeilDevice {
    /// The node.
    pub node: DeviceNode,
    started: Instant,
    transmits: Vec<Transmit>,
    /// The counter and class of the latest delivered result.
    delivered: Option<(u64, usize)>,
}

impl VeilDevice {
    /// Wraps a node; its clock counts milliseconds from now.
    pub fn new(node: DeviceNode) -> VeilDevice {
        VeilDevice {
            node,
            started: Instant::now(),
            transmits: Vec::new(),
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

    /// The node's messages to publish, in order.
    pub fn transmits(&mut self) -> std::vec::Drain<'_, Transmit> {
        self.transmits.drain(..)
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
                | DeviceEvent::PersistOutbox(_)
                | DeviceEvent::Settle { .. } => {}
            }
        }
        while let Some(t) = self.node.poll_transmit() {
            self.transmits.push(t);
        }
        Ok(())
    }
}
