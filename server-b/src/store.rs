//! B's durable state in sled: the result queue, the sessions it accepted
//! and the highest finished counter of each session.

use std::path::Path;

use veil_protocol::SessionId;
use veil_protocol::node::{Millis, StoredSession, decode_times, encode_times};

use crate::ServerBError;

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    /// `device \0 sid t` → `stored_at_ms (8 bytes) ‖ envelope`.
    results: sled::Tree,
    /// `sid` → `device \0 envelope` of the session message.
    sessions: sled::Tree,
    /// `sid` → highest finished counter (8 bytes, big-endian).
    completed: sled::Tree,
    /// `sid t` → the furthest stage the frame reached (8 bytes each).
    progress: sled::Tree,
    /// `sid` → when the session was opened and last used (8 + 8 bytes,
    /// big-endian ms): what start-up decides liveness from, before any
    /// seed is decrypted.
    session_times: sled::Tree,
}

pub fn result_key(device: &str, sid: SessionId, t: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(device.len() + 25);
    key.extend_from_slice(device.as_bytes());
    key.push(0);
    key.extend_from_slice(&sid.0);
    key.extend_from_slice(&t.to_be_bytes());
    key
}

fn device_prefix(device: &str) -> Vec<u8> {
    let mut key = device.as_bytes().to_vec();
    key.push(0);
    key
}

/// `(device, sid, t)` of a result key.
pub fn split_result_key(key: &[u8]) -> Option<(String, SessionId, u64)> {
    let (t, rest) = key.split_last_chunk::<8>().map(|(rest, t)| (t, rest))?;
    let (rest, sid) = rest.split_last_chunk::<16>()?;
    let (zero, device) = rest.split_last()?;
    if *zero != 0 {
        return None;
    }
    let device = String::from_utf8(device.to_vec()).ok()?;
    Some((device, SessionId(*sid), u64::from_be_bytes(*t)))
}

/// A queued result: when it was stored and its envelope.
pub struct Queued {
    pub key: Vec<u8>,
    pub stored_at_ms: u64,
    pub envelope: Vec<u8>,
}

fn split_queued(key: &[u8], value: &[u8]) -> Option<Queued> {
    let (stamp, envelope) = value.split_at_checked(8)?;
    Some(Queued {
        key: key.to_vec(),
        stored_at_ms: u64::from_be_bytes(stamp.try_into().ok()?),
        envelope: envelope.to_vec(),
    })
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, ServerBError> {
        std::fs::create_dir_all(dir).map_err(|source| ServerBError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        veil_shell::restrict_dir(dir);
        let path = dir.join("server-b.sled");
        let db = sled::open(&path).map_err(|source| ServerBError::Store {
            path: path.clone(),
            source,
        })?;
        veil_shell::restrict_dir(&path);
        Ok(Store {
            results: db.open_tree("results")?,
            sessions: db.open_tree("sessions")?,
            completed: db.open_tree("completed")?,
            progress: db.open_tree("progress")?,
            session_times: db.open_tree("session_times")?,
            db,
        })
    }

    pub fn flush(&self) -> Result<(), sled::Error> {
        self.db.flush().map(|_| ())
    }

    pub fn put_session(
        &self,
        sid: SessionId,
        device: &str,
        envelope: &[u8],
        opened: Millis,
    ) -> sled::Result<()> {
        let mut value = device_prefix(device);
        value.extend_from_slice(envelope);
        self.sessions.insert(sid.0, value)?;
        self.session_times
            .insert(sid.0, &encode_times(opened, opened))?;
        self.flush()
    }

    /// Records when a session was last used (not flushed: losing it in a
    /// crash only makes the session look older).
    pub fn touch_session(&self, sid: SessionId, used: Millis) -> sled::Result<()> {
        let opened = self
            .session_times
            .get(sid.0)?
            .and_then(|v| decode_times(&v))
            .map_or(used, |(opened, _)| opened);
        self.session_times
            .insert(sid.0, &encode_times(opened, used))?;
        Ok(())
    }

    /// Every stored session with its times, read without decrypting
    /// anything. A session stored before times were kept counts as opened
    /// at 0 and used `now`.
    pub fn sessions(&self, now: Millis) -> Vec<StoredSession> {
        self.sessions
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| {
                let sid = SessionId(k.as_ref().try_into().ok()?);
                let split = v.iter().position(|b| *b == 0)?;
                let device = std::str::from_utf8(v.get(..split)?).ok()?.to_string();
                let envelope = v.get(split + 1..)?.to_vec();
                let (opened, used) = self
                    .session_times
                    .get(sid.0)
                    .ok()
                    .flatten()
                    .and_then(|t| decode_times(&t))
                    .unwrap_or((0, now));
                Some(StoredSession {
                    sid,
                    device,
                    opened,
                    used,
                    envelope,
                })
            })
            .collect()
    }

    /// Deletes a session with its times and progress (its completion
    /// mark goes with [`Store::remove_completion`]).
    pub fn remove_session(&self, sid: SessionId) {
        let _ = self.sessions.remove(sid.0);
        let _ = self.session_times.remove(sid.0);
        self.forget_progress(sid, u64::MAX);
    }

    pub fn remove_completion(&self, sid: SessionId) {
        let _ = self.completed.remove(sid.0);
    }

    /// Every completion mark, with the device whose session it is where
    /// the mark names it (marks written before devices were kept do
    /// not): a forgotten session's mark must reach its device's worker.
    pub fn completed(&self) -> Vec<(SessionId, u64, Option<String>)> {
        self.completed
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| {
                let sid: [u8; 16] = k.as_ref().try_into().ok()?;
                let (t, device) = v.split_first_chunk::<8>()?;
                let device = (!device.is_empty())
                    .then(|| std::str::from_utf8(device).ok().map(str::to_string))
                    .flatten();
                Some((SessionId(sid), u64::from_be_bytes(*t), device))
            })
            .collect()
    }

    /// Queues a result with its session's completion mark (the node's),
    /// durably, before anything is published.
    pub fn put_result(&self, q: &veil_protocol::node::Queued, completed: u64) -> sled::Result<()> {
        let mut value = q.stored_at.to_be_bytes().to_vec();
        value.extend_from_slice(&q.envelope);
        self.results
            .insert(result_key(&q.device, q.sid, q.t), value)?;
        let mut mark = completed.to_be_bytes().to_vec();
        mark.extend_from_slice(q.device.as_bytes());
        self.completed.insert(q.sid.0, mark)?;
        self.flush()
    }

    /// Drops an acknowledged result; whether it was queued.
    pub fn remove_result(&self, device: &str, sid: SessionId, t: u64) -> bool {
        matches!(self.results.remove(result_key(device, sid, t)), Ok(Some(_)))
    }

    pub fn all_results(&self) -> Vec<Queued> {
        self.results
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| split_queued(&k, &v))
            .collect()
    }

    pub fn put_progress(&self, sid: SessionId, t: u64, stage: u64) -> sled::Result<()> {
        let mut key = sid.0.to_vec();
        key.extend_from_slice(&t.to_be_bytes());
        self.progress.insert(key, &stage.to_be_bytes())?;
        Ok(())
    }

    /// Drops the progress of the session's frames up to `upto`.
    pub fn forget_progress(&self, sid: SessionId, upto: u64) {
        for (key, _) in self.progress.scan_prefix(sid.0).filter_map(Result::ok) {
            let t = key
                .get(16..)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes);
            if t.is_some_and(|t| t <= upto) {
                let _ = self.progress.remove(key);
            }
        }
    }

    pub fn progress(&self) -> Vec<(SessionId, u64, u64)> {
        self.progress
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| {
                let sid: [u8; 16] = k.get(..16)?.try_into().ok()?;
                let t = u64::from_be_bytes(k.get(16..)?.try_into().ok()?);
                let stage = u64::from_be_bytes(v.as_ref().try_into().ok()?);
                Some((SessionId(sid), t, stage))
            })
            .collect()
    }

    pub fn queued(&self) -> u64 {
        self.results.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    fn scratch(name: &str) -> std::path::PathBuf {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        std::env::temp_dir().join(format!(
            "veil-b-store-{name}-{}-{nanos}",
            std::process::id()
        ))
    }

    #[test]
    fn sessions_come_back_with_their_times_and_go_without_their_mark() {
        let dir = scratch("times");
        let store = Store::open(&dir).expect("store opens");
        let (s1, s2) = (SessionId([1; 16]), SessionId([2; 16]));
        store
            .put_session(s1, "devA", b"one", 1_000)
            .expect("stored");
        store
            .put_session(s2, "devB", b"two", 2_000)
            .expect("stored");
        store.touch_session(s1, 5_000).expect("touched");
        let result = veil_protocol::node::Queued {
            device: "devA".into(),
            sid: s1,
            t: 7,
            stored_at: 6_000,
            envelope: b"result".to_vec(),
        };
        store.put_result(&result, 7).expect("queued");
        store.put_progress(s1, 8, 2).expect("progress");
        let mut sessions = store.sessions(9_999);
        sessions.sort_by_key(|s| s.sid.0);
        let times: Vec<(String, u64, u64, Vec<u8>)> = sessions
            .into_iter()
            .map(|s| (s.device, s.opened, s.used, s.envelope))
            .collect();
        assert_eq!(
            times,
            vec![
                ("devA".into(), 1_000, 5_000, b"one".to_vec()),
                ("devB".into(), 2_000, 2_000, b"two".to_vec()),
            ]
        );
        // Forgotten: record, times and progress go; the completion mark
        // and the queued result stay until removed on their own.
        store.remove_session(s1);
        assert_eq!(store.sessions(9_999).len(), 1);
        assert!(store.progress().is_empty());
        assert_eq!(store.completed(), vec![(s1, 7, Some("devA".into()))]);
        assert_eq!(store.queued(), 1);
        store.remove_completion(s1);
        assert!(store.completed().is_empty());
        // A mark written before marks named their device.
        store
            .completed
            .insert(s2.0, &9u64.to_be_bytes())
            .expect("stored");
        assert_eq!(store.completed(), vec![(s2, 9, None)]);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_session_stored_without_times_counts_as_used_at_start() {
        let dir = scratch("legacy");
        let store = Store::open(&dir).expect("store opens");
        let sid = SessionId([3; 16]);
        store
            .put_session(sid, "devA", b"env", 1_000)
            .expect("stored");
        let _ = store.session_times.remove(sid.0);
        let sessions = store.sessions(42_000);
        assert_eq!(sessions.len(), 1);
        assert_eq!((sessions[0].opened, sessions[0].used), (0, 42_000));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
