//! The password and ACL files as loaded (and reloaded) from disk.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::acl::{AclFile, ClientAcl, Identity};
use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::passwd::PasswordFile;

/// One consistent snapshot of the security files.
#[derive(Debug, Default)]
pub(crate) struct Security {
    pub passwords: Option<PasswordFile>,
    pub acl: Option<AclFile>,
}

fn read(path: &Path) -> Result<String, BrokerError> {
    std::fs::read_to_string(path).map_err(|source| BrokerError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl Security {
    pub fn load(config: &BrokerConfig) -> Result<Security, BrokerError> {
        let passwords = match &config.password_file {
            Some(path) => Some(PasswordFile::parse(&read(path)?).map_err(|source| {
                BrokerError::Passwords {
                    path: path.clone(),
                    source,
                }
            })?),
            None => None,
        };
        let acl = match &config.acl_file {
            Some(path) => {
                Some(
                    AclFile::parse(&read(path)?).map_err(|source| BrokerError::Acl {
                        path: path.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        Ok(Security { passwords, acl })
    }

    pub fn client_acl(&self, who: &Identity) -> ClientAcl {
        match &self.acl {
            Some(acl) => acl.for_client(who),
            None => ClientAcl::allow_all(),
        }
    }
}

/// The current snapshot plus a generation counter so that connections can
/// notice a reload without taking the lock on every packet.
#[derive(Debug)]
pub(crate) struct SecurityStore {
    current: RwLock<Arc<Security>>,
    generation: AtomicU64,
}

impl SecurityStore {
    pub fn new(security: Security) -> Self {
        SecurityStore {
            current: RwLock::new(Arc::new(security)),
            generation: AtomicU64::new(0),
        }
    }

    pub fn snapshot(&self) -> Arc<Security> {
        // A poisoned lock only means a writer panicked between two whole
        // assignments; the Arc inside is still a complete snapshot.
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn replace(&self, security: Security) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(security);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// A connection's ACL, recomputed when the files are reloaded.
pub(crate) struct AclCache {
    who: Identity,
    generation: u64,
    acl: ClientAcl,
}

impl AclCache {
    pub fn new(store: &SecurityStore, who: Identity) -> Self {
        let generation = store.generation();
        let acl = store.snapshot().client_acl(&who);
        AclCache {
            who,
            generation,
            acl,
        }
    }

    pub fn get(&mut self, store: &SecurityStore) -> &ClientAcl {
        let now = store.generation();
        if now != self.generation {
            self.acl = store.snapshot().client_acl(&self.who);
            self.generation = now;
        }
        &self.acl
    }

    pub fn who(&self) -> &Identity {
        &self.who
    }
}
