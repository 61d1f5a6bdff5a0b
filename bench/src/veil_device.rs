//! veil's device as the benchmark drives it, live and under callgrind: its
//! two pieces of per-frame work, each of which the harness times on the
//! device's thread.
//!
//! - capture: mask the frame and encode its message, carrying the
//!   acknowledgements of the results received since the last frame;
//! - result: decode and unmask the result, pick the class, note its
//!   acknowledgement for the next frame, and expand the next counter's
//!   input masks (the idle-time work the capture then does not do).
//!
//! The device encodes into a buffer it keeps; handing the bytes to the
//! MQTT client, which copies them into its own, is the client's work.

use crate::conventional::argmax;
use anyhow::Result;
use veil_protocol::wire::MAX_ACKS;
use veil_protocol::{Device, SessionId};

/// veil's device as the benchmark drives it: reused buffers, masks expanded ahead.
pub struct VeilDevice {
    /// The protocol's device.
    pub device: Device,
    frame: Vec<u8>,
    outputs: Vec<i128>,
    acks: Vec<u64>,
    session: Option<SessionId>,
}

impl VeilDevice {
    /// Wraps a device.
    pub fn new(device: Device) -> VeilDevice {
        VeilDevice {
            device,
            frame: Vec::new(),
            outputs: Vec::new(),
            acks: Vec::new(),
            session: None,
        }
    }

    /// The frame message of counter `t`.
    pub fn capture(&mut self, x_hat: &[i64], t: u64) -> Result<&[u8]> {
        let sid = self
            .device
            .write_frame(x_hat, t, &self.acks, &mut self.frame)?;
        self.acks.clear();
        self.session = Some(sid);
        Ok(&self.frame)
    }

    /// A result message: its counter and predicted class.
    pub fn result(&mut self, payload: &[u8]) -> Result<(u64, usize)> {
        let (sid, t) = self.device.read_result(payload, &mut self.outputs)?;
        let class = argmax(&self.outputs).unwrap_or(0);
        if self.session == Some(sid) && self.acks.len() < MAX_ACKS {
            self.acks.push(t);
        }
        self.device.prepare(t + 1);
        Ok((t, class))
    }

    /// The acknowledgements no frame has carried yet (at the session's
    /// end they go on their own), emptied.
    pub fn take_acks(&mut self) -> Vec<(SessionId, u64)> {
        let sid = self.session;
        std::mem::take(&mut self.acks)
            .into_iter()
            .filter_map(|t| sid.map(|s| (s, t)))
            .collect()
    }
}
