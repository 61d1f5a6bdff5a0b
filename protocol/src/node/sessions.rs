//! Session lifecycle, the same rules on both servers: at most
//! `max_per_device` live sessions per device (opening one more retires
//! the device's least recently used), a session unused for `ttl` expires,
//! and a device may open at most `max_opens_per_minute` sessions a minute.
//!
//! Each new session costs its server a Paillier decryption (about 5 ms
//! with a 2048-bit key), and every live one a seed in memory and a record
//! on disk: without these rules one device could open sessions for ever,
//! and each server start would decrypt all of them again. At start a
//! server sorts its stored sessions with [`triage`] from the times stored
//! beside them, before any decryption, and deletes the dead ones unread.
//!
//! A retired or expired session is forgotten, but its id is remembered
//! for a while (the last [`RETIRED_MEMORY`] of them). A frame for it is
//! then refused at once as of an unknown session; the device sends the
//! session message again (`DeviceNode` does so for a waiting frame), and
//! the server takes it as a fresh session. A session message for a
//! remembered id that nothing asked for is the broker's retained copy,
//! delivered on every (re)subscription: it is ignored, so a forgotten
//! session does not come back, at the price of a decryption, every time a
//! server reconnects. So the rules cost an honest device one session
//! message, never a frame. B also keeps a remembered session's completion
//! mark, so that a frame it finished is not worked on again if the
//! session comes back.

use super::Millis;
use crate::messages::{Envelope, RejectCode};
use crate::prf::SessionId;
use std::collections::{BTreeSet, HashMap, VecDeque};

/// The session rules' settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// Live sessions one device may hold. An honest device holds one, or
    /// two while frames of its previous session (before a restart or a
    /// rekey) are still waiting.
    pub max_per_device: usize,
    /// A session neither used nor opened for this long is forgotten.
    pub ttl: Millis,
    /// New sessions one device may open per minute; 0: no limit. An
    /// honest device opens one per start and one per `rekey_after`
    /// frames.
    pub max_opens_per_minute: usize,
}

impl Default for SessionLimits {
    fn default() -> SessionLimits {
        SessionLimits {
            max_per_device: 4,
            ttl: 30 * 24 * 3600 * 1000,
            max_opens_per_minute: 10,
        }
    }
}

/// A session as a server stores it, with the times the rules need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSession {
    /// The session's id.
    pub sid: SessionId,
    /// The device that opened it.
    pub device: String,
    /// When the server accepted it.
    pub opened: Millis,
    /// When it was last used, as last persisted (see [`SessionBook::touch`]).
    pub used: Millis,
    /// The device's session message.
    pub envelope: Vec<u8>,
}

/// Which stored sessions are live at `now`: those used within the TTL,
/// at most `max_per_device` per device (the most recently used). Returns
/// the live ones and the dead ones (id, device), deciding from the stored
/// times alone, so a server decrypts no dead session.
pub fn triage(
    now: Millis,
    limits: &SessionLimits,
    stored: Vec<StoredSession>,
) -> (Vec<StoredSession>, Vec<(SessionId, String)>) {
    let mut dead = Vec::new();
    let mut by_device: HashMap<String, Vec<StoredSession>> = HashMap::new();
    for s in stored {
        if now >= s.used.saturating_add(limits.ttl) {
            dead.push((s.sid, s.device));
        } else {
            by_device.entry(s.device.clone()).or_default().push(s);
        }
    }
    let mut live = Vec::new();
    for (_, mut sessions) in by_device {
        sessions.sort_by_key(|s| std::cmp::Reverse((s.used, s.opened, s.sid.0)));
        let keep = limits.max_per_device.max(1).min(sessions.len());
        dead.extend(sessions.drain(keep..).map(|s| (s.sid, s.device)));
        live.extend(sessions);
    }
    // Oldest first: replayed in that order, a restored book ranks them
    // as they were ranked before the restart.
    live.sort_by_key(|s| (s.used, s.opened, s.sid.0));
    dead.sort_by_key(|(sid, _)| sid.0);
    (live, dead)
}

/// How a server stores a session's times beside it: opened and last used,
/// 8 bytes each, big-endian milliseconds.
pub fn encode_times(opened: Millis, used: Millis) -> [u8; 16] {
    let mut value = [0u8; 16];
    value[..8].copy_from_slice(&opened.to_be_bytes());
    value[8..].copy_from_slice(&used.to_be_bytes());
    value
}

/// The times [`encode_times`] wrote, if `value` is 16 bytes.
pub fn decode_times(value: &[u8]) -> Option<(Millis, Millis)> {
    let (opened, used) = value.split_first_chunk::<8>()?;
    let used: [u8; 8] = used.try_into().ok()?;
    Some((u64::from_be_bytes(*opened), u64::from_be_bytes(used)))
}

/// A stored session's message, checked against the record it was stored
/// under (decoding only: nothing is decrypted here).
pub(crate) fn stored_envelope(s: &StoredSession) -> Result<Envelope, (RejectCode, String)> {
    match Envelope::from_bytes(&s.envelope) {
        Ok(env) if env.sid == s.sid && env.device == s.device => Ok(env),
        Ok(_) => Err((
            RejectCode::Malformed,
            "stored under another session or device".to_string(),
        )),
        Err(e) => Err((e.code(), e.to_string())),
    }
}

/// What a server does with a device's session message, decided before
/// any decryption.
pub(crate) enum Admission {
    /// A live session's message again (retained or resent): nothing to do
    /// beyond what the state machine does for a known session.
    Known,
    /// A new session, to decrypt.
    New,
    /// A retired session's retained copy that nothing asked for.
    Stale,
    /// Over the device's opening rate. Logged and counted, not sent:
    /// `DeviceNode` takes a refusal of (sid, first counter) as final for
    /// the frame with that counter, and this one is transient; the
    /// device's frames come back as of an unknown session after the park
    /// timeout, by which time the minute has passed.
    Throttled(String),
}

/// Ids of sessions retired lately, remembered so that their frames are
/// refused at once rather than parked for a session message that is not
/// coming, and their retained session messages ignored.
pub const RETIRED_MEMORY: usize = 4096;

/// Sessions opened per device are counted over this window.
const RATE_WINDOW: Millis = 60_000;

/// The last-use time reaches the disk when it has moved by this share of
/// the TTL (30 days / 720 = 1 hour): a restart may then take a session
/// for up to that much older than it is, and no frame costs a write.
const TOUCH_SHARE: u64 = 720;

struct Entry {
    device: String,
    used: Millis,
    persisted: Millis,
}

struct Retired {
    /// A frame or a message for it came after it was retired: its session
    /// message, when it comes, is the device's answer, not a stale copy.
    wanted: bool,
}

/// The live sessions of one server and the rules' bookkeeping.
pub(crate) struct SessionBook {
    limits: SessionLimits,
    live: HashMap<SessionId, Entry>,
    /// Every live session by last use, for the TTL.
    by_use: BTreeSet<(Millis, SessionId)>,
    /// Each device's live sessions by last use, for the quota.
    by_device: HashMap<String, BTreeSet<(Millis, SessionId)>>,
    /// When each device last tried to open sessions, within the window
    /// (a device's entry stays once made: one small queue per device).
    opens: HashMap<String, VecDeque<Millis>>,
    retired: HashMap<SessionId, Retired>,
    retired_order: VecDeque<SessionId>,
    /// Ids that fell out of the retired memory since last asked.
    forgotten: Vec<SessionId>,
}

impl SessionBook {
    /// An empty book that enforces `limits`.
    pub fn new(limits: SessionLimits) -> SessionBook {
        SessionBook {
            limits,
            live: HashMap::new(),
            by_use: BTreeSet::new(),
            by_device: HashMap::new(),
            opens: HashMap::new(),
            retired: HashMap::new(),
            retired_order: VecDeque::new(),
            forgotten: Vec::new(),
        }
    }

    /// The limits it enforces.
    pub fn limits(&self) -> &SessionLimits {
        &self.limits
    }

    /// Whether `sid` is live (accepted and neither closed nor expired).
    pub fn contains(&self, sid: &SessionId) -> bool {
        self.live.contains_key(sid)
    }

    /// Live sessions, of all devices.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether `sid` was retired lately (by the quota or the TTL) and has
    /// not been opened again.
    #[cfg(test)]
    pub fn was_retired(&self, sid: &SessionId) -> bool {
        self.retired.contains_key(sid)
    }

    /// A frame or message for `sid` arrived: if the session was retired,
    /// its next session message is to be taken. Whether this is the first
    /// ask since it was retired: the device must then be told (at once),
    /// while later frames wait for the session message like any frame of
    /// a session not seen yet (each refusal spends one of the device's
    /// session recoveries).
    pub fn want(&mut self, sid: &SessionId) -> bool {
        match self.retired.get_mut(sid) {
            Some(r) if !r.wanted => {
                r.wanted = true;
                true
            }
            _ => false,
        }
    }

    /// Whether a session message for `sid`, not live, may be accepted:
    /// not when it is a retired session's retained copy that nothing
    /// asked for.
    pub fn may_reopen(&self, sid: &SessionId) -> bool {
        self.retired.get(sid).is_none_or(|r| r.wanted)
    }

    /// Remembers a stored session found dead at start as retired.
    pub fn retire_stored(&mut self, sid: SessionId) {
        self.remember(sid);
    }

    /// Ids that fell out of the retired memory since the last call (B
    /// drops their completion marks).
    pub fn take_forgotten(&mut self) -> Vec<SessionId> {
        std::mem::take(&mut self.forgotten)
    }

    /// Whether a session message for `sid` from `device` is to be
    /// decrypted; counts it against the opening rate when it is.
    pub fn admission(&mut self, now: Millis, sid: &SessionId, device: &str) -> Admission {
        if self.contains(sid) {
            return Admission::Known;
        }
        if !self.may_reopen(sid) {
            return Admission::Stale;
        }
        if !self.admit(now, device) {
            let max = self.limits.max_opens_per_minute;
            return Admission::Throttled(format!("more than {max} new sessions within a minute"));
        }
        Admission::New
    }

    /// Whether `device` may try to open another session now, counting the
    /// try. Asked before the session's seed is decrypted, so a session that
    /// then fails to decrypt counts too: the decryption is what the limit
    /// saves.
    pub fn admit(&mut self, now: Millis, device: &str) -> bool {
        let max = self.limits.max_opens_per_minute;
        if max == 0 {
            return true;
        }
        let opens = self.opens.entry(device.to_string()).or_default();
        while opens
            .front()
            .is_some_and(|at| now >= at.saturating_add(RATE_WINDOW))
        {
            opens.pop_front();
        }
        if opens.len() >= max {
            return false;
        }
        opens.push_back(now);
        true
    }

    /// Records a session accepted now; returns the device's sessions the
    /// quota retires to make room (never the new one), with their device.
    /// The least recently used session that is not `busy` (holding frames
    /// in progress at this server) goes first: a device sends its frames
    /// in counter order, so of several sessions with frames waiting only
    /// one is in use, and retiring another costs nothing yet.
    pub fn open(
        &mut self,
        now: Millis,
        sid: SessionId,
        device: &str,
        busy: impl Fn(&SessionId) -> bool,
    ) -> Vec<(SessionId, String)> {
        self.insert(sid, device, now);
        self.over_quota(device, sid, busy)
    }

    /// Records a session restored from disk (after [`triage`]); returns
    /// what the quota retires, as [`SessionBook::open`].
    pub fn restore(
        &mut self,
        sid: SessionId,
        device: &str,
        used: Millis,
    ) -> Vec<(SessionId, String)> {
        self.insert(sid, device, used);
        self.over_quota(device, sid, |_| false)
    }

    fn insert(&mut self, sid: SessionId, device: &str, used: Millis) {
        self.remove(&sid);
        self.forget_retired(&sid);
        self.live.insert(
            sid,
            Entry {
                device: device.to_string(),
                used,
                persisted: used,
            },
        );
        self.by_use.insert((used, sid));
        self.by_device
            .entry(device.to_string())
            .or_default()
            .insert((used, sid));
    }

    fn over_quota(
        &mut self,
        device: &str,
        keep: SessionId,
        busy: impl Fn(&SessionId) -> bool,
    ) -> Vec<(SessionId, String)> {
        let mut retired = Vec::new();
        let max = self.limits.max_per_device.max(1);
        while let Some(sessions) = self.by_device.get(device) {
            if sessions.len() <= max {
                break;
            }
            let mut candidates = sessions.iter().map(|(_, sid)| *sid).filter(|s| *s != keep);
            let first = candidates.clone().next();
            let Some(oldest) = candidates.find(|s| !busy(s)).or(first) else {
                break;
            };
            self.retire(oldest);
            retired.push((oldest, device.to_string()));
        }
        retired
    }

    /// Marks a use of `sid` at `now`. Returns the time to persist when the
    /// stored one lags by more than a TTL share.
    pub fn touch(&mut self, now: Millis, sid: SessionId) -> Option<Millis> {
        let entry = self.live.get_mut(&sid)?;
        if now <= entry.used {
            return None;
        }
        self.by_use.remove(&(entry.used, sid));
        if let Some(set) = self.by_device.get_mut(&entry.device) {
            set.remove(&(entry.used, sid));
            set.insert((now, sid));
        }
        self.by_use.insert((now, sid));
        entry.used = now;
        let every = (self.limits.ttl / TOUCH_SHARE).max(1);
        if now >= entry.persisted.saturating_add(every) {
            entry.persisted = now;
            return Some(now);
        }
        None
    }

    /// When the next session expires.
    pub fn next_expiry(&self) -> Option<Millis> {
        self.by_use
            .first()
            .map(|(used, _)| used.saturating_add(self.limits.ttl))
    }

    /// Retires every session unused for the TTL at `now`; returns them
    /// with their device.
    pub fn expire(&mut self, now: Millis) -> Vec<(SessionId, String)> {
        let ttl = self.limits.ttl;
        let due: Vec<SessionId> = self
            .by_use
            .iter()
            .take_while(|(used, _)| now >= used.saturating_add(ttl))
            .map(|(_, sid)| *sid)
            .collect();
        due.into_iter()
            .filter_map(|sid| Some((sid, self.retire(sid)?)))
            .collect()
    }

    /// Forgets a live session and remembers, for a while, that it was
    /// retired.
    fn retire(&mut self, sid: SessionId) -> Option<String> {
        let device = self.remove(&sid)?;
        self.remember(sid);
        Some(device)
    }

    fn remember(&mut self, sid: SessionId) {
        if self
            .retired
            .insert(sid, Retired { wanted: false })
            .is_none()
        {
            self.retired_order.push_back(sid);
        }
        while self.retired_order.len() > RETIRED_MEMORY {
            if let Some(old) = self.retired_order.pop_front() {
                self.retired.remove(&old);
                self.forgotten.push(old);
            }
        }
    }

    fn forget_retired(&mut self, sid: &SessionId) {
        if self.retired.remove(sid).is_some() {
            self.retired_order.retain(|s| s != sid);
        }
    }

    /// Drops a live session (one whose stored record failed to load);
    /// returns its device.
    pub fn remove(&mut self, sid: &SessionId) -> Option<String> {
        let entry = self.live.remove(sid)?;
        self.by_use.remove(&(entry.used, *sid));
        if let Some(set) = self.by_device.get_mut(&entry.device) {
            set.remove(&(entry.used, *sid));
            if set.is_empty() {
                self.by_device.remove(&entry.device);
            }
        }
        Some(entry.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle(_: &SessionId) -> bool {
        false
    }

    fn sid(n: u8) -> SessionId {
        SessionId([n; 16])
    }

    fn limits() -> SessionLimits {
        SessionLimits {
            max_per_device: 2,
            ttl: 1_000_000,
            max_opens_per_minute: 3,
        }
    }

    fn stored(n: u8, device: &str, used: Millis) -> StoredSession {
        StoredSession {
            sid: sid(n),
            device: device.into(),
            opened: used,
            used,
            envelope: Vec::new(),
        }
    }

    #[test]
    fn opening_past_the_quota_retires_the_least_recently_used() {
        let mut book = SessionBook::new(limits());
        assert!(book.open(0, sid(1), "d", idle).is_empty());
        assert!(book.open(10, sid(2), "d", idle).is_empty());
        // The older session is used again: the newer one is now the LRU.
        book.touch(20, sid(1));
        assert_eq!(book.open(30, sid(3), "d", idle), vec![(sid(2), "d".into())]);
        assert!(book.contains(&sid(1)) && book.contains(&sid(3)));
        assert!(book.was_retired(&sid(2)));
        // Its retained session message is not taken back until a frame
        // for it asks for it.
        assert!(!book.may_reopen(&sid(2)));
        assert!(book.want(&sid(2)));
        assert!(!book.want(&sid(2)));
        assert!(book.may_reopen(&sid(2)));
        assert!(book.may_reopen(&sid(8)) && !book.want(&sid(8)));
        // Other devices are not affected.
        assert!(book.open(40, sid(4), "e", idle).is_empty());
        assert_eq!(book.len(), 3);
        // A session with frames in progress is passed over while another
        // is idle.
        assert_eq!(
            book.open(45, sid(5), "e", |s| *s == sid(4)),
            Vec::<(SessionId, String)>::new()
        );
        assert_eq!(
            book.open(46, sid(6), "e", |s| *s == sid(4)),
            vec![(sid(5), "e".into())]
        );
        assert_eq!(
            book.open(47, sid(7), "e", |_| true),
            vec![(sid(4), "e".into())]
        );
        // Opened again, a retired session is live and no longer retired.
        assert_eq!(book.open(50, sid(2), "d", idle), vec![(sid(1), "d".into())]);
        assert!(!book.was_retired(&sid(2)));
    }

    #[test]
    fn unused_sessions_expire_after_the_ttl() {
        let mut book = SessionBook::new(limits());
        book.open(0, sid(1), "d", idle);
        book.open(100, sid(2), "e", idle);
        assert_eq!(book.next_expiry(), Some(1_000_000));
        book.touch(500_000, sid(1));
        assert_eq!(book.next_expiry(), Some(1_000_100));
        assert!(book.expire(1_000_099).is_empty());
        assert_eq!(book.expire(1_000_100), vec![(sid(2), "e".into())]);
        assert_eq!(book.next_expiry(), Some(1_500_000));
        assert_eq!(book.expire(u64::MAX), vec![(sid(1), "d".into())]);
        assert_eq!(book.next_expiry(), None);
    }

    #[test]
    fn stored_times_round_trip_and_wrong_lengths_are_refused() {
        assert_eq!(
            decode_times(&encode_times(7, u64::MAX)),
            Some((7, u64::MAX))
        );
        assert_eq!(decode_times(&[0; 15]), None);
        assert_eq!(decode_times(&[0; 17]), None);
    }

    #[test]
    fn uses_reach_the_disk_once_per_ttl_share() {
        let mut book = SessionBook::new(limits());
        book.open(0, sid(1), "d", idle);
        let every = limits().ttl / TOUCH_SHARE;
        assert_eq!(book.touch(every - 1, sid(1)), None);
        assert_eq!(book.touch(every, sid(1)), Some(every));
        assert_eq!(book.touch(every + 1, sid(1)), None);
        assert_eq!(book.touch(5, sid(9)), None);
    }

    #[test]
    fn the_retired_memory_is_bounded_and_reports_what_it_drops() {
        let mut book = SessionBook::new(limits());
        let id = |n: usize| SessionId((n as u128).to_be_bytes());
        for n in 0..RETIRED_MEMORY + 2 {
            book.retire_stored(id(n));
        }
        assert_eq!(book.take_forgotten(), vec![id(0), id(1)]);
        assert!(book.take_forgotten().is_empty());
        assert!(!book.was_retired(&id(1)) && book.was_retired(&id(2)));
    }

    #[test]
    fn opens_are_limited_per_device_and_minute() {
        let mut book = SessionBook::new(limits());
        for n in 0..3 {
            assert!(book.admit(n, "d"));
        }
        assert!(!book.admit(3, "d"));
        assert!(book.admit(3, "e"));
        assert!(book.admit(RATE_WINDOW, "d"));
    }

    #[test]
    fn triage_keeps_recent_sessions_within_the_quota_and_decides_from_times() {
        let sessions = vec![
            stored(1, "d", 0),
            stored(2, "d", 500),
            stored(3, "d", 900),
            stored(4, "d", 800),
            stored(5, "e", 100),
        ];
        let (live, dead) = triage(1_000_150, &limits(), sessions);
        let live: Vec<SessionId> = live.iter().map(|s| s.sid).collect();
        // 1 and 5 are past the TTL; of d's other three the two most
        // recently used stay.
        assert_eq!(live, vec![sid(4), sid(3)]);
        let dead: Vec<SessionId> = dead.into_iter().map(|(s, _)| s).collect();
        assert_eq!(dead, vec![sid(1), sid(2), sid(5)]);
    }
}
