//! Round and result latencies, from the events B's node emits.
//!
//! A round is one message from A that moved a frame on (a stage stored or
//! its result queued): its latency runs from the worker taking the message
//! to the answer handed to the link. A result's runs from the frame's first
//! round message in this run to its result handed to the link.

use std::collections::HashMap;
use std::time::Instant;

use veil_protocol::SessionId;
use veil_shell::Latency;

/// Frames timed at once at most: a bound should frames be forgotten by
/// a path that emits neither a result nor `ForgetProgress`.
const TIMED_FRAMES: usize = 65_536;

#[derive(Default)]
pub struct Timing {
    /// When the message of this loop turn was taken; `None` for turns
    /// without one (timeouts, confirmations).
    turn: Option<Instant>,
    first_round: HashMap<(SessionId, u64), Instant>,
    /// This turn moved a frame on.
    round: bool,
    /// Starts of the frames whose results this turn queued.
    results: Vec<Instant>,
}

impl Timing {
    /// A message was taken at `at`.
    pub fn message(&mut self, at: Instant) {
        self.turn = Some(at);
    }

    /// Frame `t` of `sid` reached a new stage.
    pub fn progress(&mut self, sid: SessionId, t: u64) {
        let Some(turn) = self.turn else {
            return;
        };
        self.round = true;
        if self.first_round.len() < TIMED_FRAMES {
            self.first_round.entry((sid, t)).or_insert(turn);
        }
    }

    /// Frame `t` of `sid` has its result queued.
    pub fn result(&mut self, sid: SessionId, t: u64) {
        let Some(turn) = self.turn else {
            return;
        };
        self.round = true;
        let first = self.first_round.remove(&(sid, t)).unwrap_or(turn);
        self.results.push(first);
    }

    /// Frames up to `upto` of `sid` finished or were dropped.
    pub fn forget(&mut self, sid: SessionId, upto: u64) {
        self.first_round.retain(|(s, t), _| *s != sid || *t > upto);
    }

    /// The session is gone with its frames.
    pub fn forget_session(&mut self, sid: SessionId) {
        self.first_round.retain(|(s, _), _| *s != sid);
    }

    /// The turn's answers are with the link: observe what it finished.
    pub fn end_turn(&mut self, rounds: &Latency, results: &Latency) {
        if let Some(turn) = self.turn.take()
            && std::mem::take(&mut self.round)
        {
            rounds.observe(turn.elapsed());
        }
        for first in self.results.drain(..) {
            results.observe(first.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_and_results_are_counted_once_each() {
        let (rounds, results) = (Latency::default(), Latency::default());
        let mut timing = Timing::default();
        let sid = SessionId([7; 16]);
        // Two rounds then the output of frame 1; a timeout turn between.
        timing.message(Instant::now());
        timing.progress(sid, 1);
        timing.end_turn(&rounds, &results);
        timing.end_turn(&rounds, &results);
        timing.message(Instant::now());
        timing.progress(sid, 1);
        timing.end_turn(&rounds, &results);
        timing.message(Instant::now());
        timing.result(sid, 1);
        timing.end_turn(&rounds, &results);
        assert_eq!((rounds.count(), results.count()), (3, 1));
        // A message that moves nothing on (a refused one) is no round.
        timing.message(Instant::now());
        timing.end_turn(&rounds, &results);
        assert_eq!(rounds.count(), 3);
        // Progress outside a message turn (restore) is not timed.
        timing.progress(sid, 2);
        assert!(timing.first_round.is_empty());
        timing.message(Instant::now());
        timing.progress(sid, 2);
        timing.progress(SessionId([8; 16]), 1);
        timing.forget(sid, 2);
        assert_eq!(timing.first_round.len(), 1);
        timing.forget_session(SessionId([8; 16]));
        assert!(timing.first_round.is_empty());
    }
}
