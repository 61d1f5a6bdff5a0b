//! A's durable state in sled: frames until their output reached the
//! broker, and the sessions it accepted.

use std::path::Path;

use veil_protocol::SessionId;
use veil_protocol::node::{Millis, StoredSession, decode_times, encode_times};

use crate::ServerAError;

/// Clones share the database: every worker thread writes its own
/// devices' keys.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    /// `sid ‖ t` → `device \0 envelope`.
    frames: sled::Tree,
    /// `sid` → `device \0 envelope` of the session message.
    sessions: sled::Tree,
    /// `sid` → when the session was opened and last used (8 + 8 bytes,
    /// big-endian ms): what start-up decides liveness from, without
    /// decrypting anything.
    session_times: sled::Tree,
}

fn frame_key(sid: SessionId, t: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(&sid.0);
    key[16..].copy_from_slice(&t.to_be_bytes());
    key
}

fn with_device(device: &str, envelope: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(device.len() + 1 + envelope.len());
    value.extend_from_slice(device.as_bytes());
    value.push(0);
    value.extend_from_slice(envelope);
    value
}

fn split_device(value: &[u8]) -> Option<(String, Vec<u8>)> {
    let split = value.iter().position(|b| *b == 0)?;
    let device = std::str::from_utf8(value.get(..split)?).ok()?.to_string();
    Some((device, value.get(split + 1..)?.to_vec()))
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, ServerAError> {
        std::fs::create_dir_all(dir).map_err(|source| ServerAError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        veil_shell::restrict_dir(dir);
        let path = dir.join("server-a.sled");
        let db = sled::open(&path).map_err(|source| ServerAError::Store {
            path: path.clone(),
            source,
        })?;
        veil_shell::restrict_dir(&path);
        Ok(Store {
            frames: db.open_tree("frames")?,
            sessions: db.open_tree("sessions")?,
            session_times: db.open_tree("session_times")?,
            db,
        })
    }

    pub fn flush(&self) -> sled::Result<()> {
        self.db.flush().map(|_| ())
    }

    pub fn put_frame(
        &self,
        sid: SessionId,
        t: u64,
        device: &str,
        envelope: &[u8],
    ) -> sled::Result<()> {
        self.frames
            .insert(frame_key(sid, t), with_device(device, envelope))?;
        self.flush()
    }

    pub fn remove_frame(&self, sid: SessionId, t: u64) {
        let _ = self.frames.remove(frame_key(sid, t));
    }

    /// Every stored frame in (session, counter) order: `(device, envelope)`.
    pub fn frames(&self) -> Vec<(String, Vec<u8>)> {
        self.frames
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(_, v)| split_device(&v))
            .collect()
    }

    pub fn put_session(
        &self,
        sid: SessionId,
        device: &str,
        envelope: &[u8],
        opened: Millis,
    ) -> sled::Result<()> {
        self.sessions.insert(sid.0, with_device(device, envelope))?;
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

    /// Every stored session with its times. A session stored before times
    /// were kept counts as opened at 0 and used `now`.
    pub fn sessions(&self, now: Millis) -> Vec<StoredSession> {
        self.sessions
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| {
                let sid = SessionId(k.as_ref().try_into().ok()?);
                let (device, envelope) = split_device(&v)?;
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

    pub fn remove_session(&self, sid: SessionId) {
        let _ = self.sessions.remove(sid.0);
        let _ = self.session_times.remove(sid.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_come_back_with_their_times() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("veil-a-store-{}-{nanos}", std::process::id()));
        let store = Store::open(&dir).expect("store opens");
        let sid = SessionId([1; 16]);
        store
            .put_session(sid, "devA", b"env", 1_000)
            .expect("stored");
        store.touch_session(sid, 3_000).expect("touched");
        let sessions = store.sessions(9_000);
        assert_eq!(sessions.len(), 1);
        assert_eq!(
            (
                sessions[0].device.as_str(),
                sessions[0].opened,
                sessions[0].used
            ),
            ("devA", 1_000, 3_000)
        );
        store.remove_session(sid);
        assert!(store.sessions(9_000).is_empty());
        assert!(store.session_times.is_empty());
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
