//! Everything the device keeps on disk: the outbox and the record of
//! delivered results (sled), the session secrets and the counter mark
//! (small files written atomically with mode 0600), and the servers'
//! public material once pinned.

use std::path::{Path, PathBuf};
use veil_shell::now_ms;

use serde::{Deserialize, Serialize};
use veil_protocol::{DeviceSession, SessionId};
use zeroize::Zeroizing;

use crate::AgentError;

/// A frame waiting for its result.
#[derive(Clone, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub sid: [u8; 16],
    pub t: u64,
    /// The masked frame, ready to publish.
    pub envelope: Vec<u8>,
    pub captured_ms: u64,
    pub label: Option<String>,
}

/// The session secrets and the session messages of the current session
/// (republished, retained, on every connection).
#[derive(Serialize, Deserialize, Default)]
pub struct SessionsFile {
    pub sessions: Vec<DeviceSession>,
    pub current: Option<SessionId>,
    /// Envelopes of the current session's messages to A and to B.
    pub inits: Option<(Vec<u8>, Vec<u8>)>,
}

pub struct Disk {
    dir: PathBuf,
    db: sled::Db,
    outbox: sled::Tree,
    /// `sid ‖ t` → delivered-at (ms) and how the frame ended (0 result,
    /// 1 rejected, 2 expired).
    delivered: sled::Tree,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |source| AgentError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ 16 << 20 }>()
}

fn delivered_key(sid: SessionId, t: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(&sid.0);
    key[16..].copy_from_slice(&t.to_be_bytes());
    key
}

impl Disk {
    pub fn open(dir: &Path) -> Result<Disk, AgentError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        veil_shell::restrict_dir(dir);
        let path = dir.join("agent.sled");
        let db = sled::open(&path)?;
        veil_shell::restrict_dir(&path);
        Ok(Disk {
            dir: dir.to_path_buf(),
            outbox: db.open_tree("outbox")?,
            delivered: db.open_tree("delivered")?,
            db,
        })
    }

    pub fn flush(&self) -> Result<(), AgentError> {
        self.db.flush()?;
        Ok(())
    }

    fn sessions_path(&self) -> PathBuf {
        self.dir.join("sessions.bin")
    }

    fn counter_path(&self) -> PathBuf {
        self.dir.join("counter")
    }

    pub fn load_sessions(&self) -> Result<SessionsFile, AgentError> {
        let path = self.sessions_path();
        if !path.exists() {
            return Ok(SessionsFile::default());
        }
        veil_paillier::warn_if_exposed(&path);
        let bytes = Zeroizing::new(std::fs::read(&path).map_err(io(&path))?);
        let (file, _): (SessionsFile, usize) = bincode::serde::decode_from_slice(&bytes, config())
            .map_err(|e| AgentError::Damaged {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        Ok(file)
    }

    /// Replaces the sessions file (mode 0600, atomically, synced).
    pub fn save_sessions(&self, file: &SessionsFile) -> Result<(), AgentError> {
        let path = self.sessions_path();
        let bytes = Zeroizing::new(bincode::serde::encode_to_vec(file, config()).map_err(|e| {
            AgentError::Damaged {
                path: path.clone(),
                reason: e.to_string(),
            }
        })?);
        veil_paillier::write_secret_file(&path, &bytes)?;
        Ok(())
    }

    /// The persisted high-water mark of frame counters (0 on first start).
    pub fn load_counter(&self) -> Result<u64, AgentError> {
        let path = self.counter_path();
        if !path.exists() {
            return Ok(0);
        }
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let array: [u8; 8] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| AgentError::Damaged {
                path: path.clone(),
                reason: format!("{} bytes, expected 8", bytes.len()),
            })?;
        Ok(u64::from_be_bytes(array))
    }

    /// Makes the counter mark durable before any counter below it is used.
    pub fn save_counter(&self, mark: u64) -> Result<(), AgentError> {
        veil_paillier::write_secret_file(&self.counter_path(), &mark.to_be_bytes())?;
        Ok(())
    }

    pub fn put_outbox(&self, entry: &OutboxEntry) -> Result<(), AgentError> {
        let bytes =
            bincode::serde::encode_to_vec(entry, config()).map_err(|e| AgentError::Damaged {
                path: self.dir.join("agent.sled"),
                reason: e.to_string(),
            })?;
        self.outbox.insert(entry.t.to_be_bytes(), bytes)?;
        self.db.flush()?;
        Ok(())
    }

    pub fn outbox(&self) -> Vec<OutboxEntry> {
        self.outbox
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(_, v)| {
                bincode::serde::decode_from_slice::<OutboxEntry, _>(&v, config())
                    .ok()
                    .map(|(e, _)| e)
            })
            .collect()
    }

    pub fn outbox_entry(&self, t: u64) -> Option<OutboxEntry> {
        let v = self.outbox.get(t.to_be_bytes()).ok()??;
        bincode::serde::decode_from_slice::<OutboxEntry, _>(&v, config())
            .ok()
            .map(|(e, _)| e)
    }

    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// Every settled frame with when it settled (for the node's
    /// de-duplication of redelivered results).
    pub fn settled(&self) -> Vec<(SessionId, u64, u64)> {
        self.delivered
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| {
                let sid: [u8; 16] = k.get(..16)?.try_into().ok()?;
                let t = u64::from_be_bytes(k.get(16..24)?.try_into().ok()?);
                let at = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
                Some((SessionId(sid), t, at))
            })
            .collect()
    }

    /// Records how frame `t` ended and drops it from the outbox, durably,
    /// before the application is told.
    pub fn settle(&self, sid: SessionId, t: u64, how: u8) -> Result<(), AgentError> {
        let mut value = now_ms().to_be_bytes().to_vec();
        value.push(how);
        self.delivered.insert(delivered_key(sid, t), value)?;
        if self.outbox_entry(t).is_some_and(|e| e.sid == sid.0) {
            self.outbox.remove(t.to_be_bytes())?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// Forgets delivery records older than `age_ms` (B forgets a result
    /// once acknowledged, so old records guard against nothing).
    pub fn prune_delivered(&self, age_ms: u64) {
        let now = now_ms();
        for (k, v) in self.delivered.iter().filter_map(Result::ok) {
            let at = v
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            if now.saturating_sub(at) > age_ms {
                let _ = self.delivered.remove(k);
            }
        }
    }

    /// Public material pinned earlier, if present.
    pub fn cached_public(&self, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.dir.join("public").join(name)).ok()
    }

    pub fn cache_public(&self, name: &str, bytes: &[u8]) -> Result<(), AgentError> {
        let dir = self.dir.join("public");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(io(&path))
    }
}
