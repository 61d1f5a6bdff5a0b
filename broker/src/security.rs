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

    /// What replacing `self` by `new` changes, in counts (no names, no
    /// hashes: the summary goes to the log).
    pub fn changes_to(&self, new: &Security) -> ReloadSummary {
        let (users_added, users_removed) = match (&self.passwords, &new.passwords) {
            (Some(old), Some(new)) => (
                new.users().filter(|u| !old.contains(u)).count(),
                old.users().filter(|u| !new.contains(u)).count(),
            ),
            (None, Some(new)) => (new.len(), 0),
            (Some(old), None) => (0, old.len()),
            (None, None) => (0, 0),
        };
        ReloadSummary {
            users: new.passwords.as_ref().map(PasswordFile::len),
            users_added,
            users_removed,
            acl_rules: new.acl.as_ref().map(AclFile::rule_count),
            acl_rules_before: self.acl.as_ref().map(AclFile::rule_count),
            acl_user_sections: new.acl.as_ref().map(AclFile::user_sections),
        }
    }

    pub fn client_acl(&self, who: &Identity) -> ClientAcl {
        match &self.acl {
            Some(acl) => acl.for_client(who),
            None => ClientAcl::allow_all(),
        }
    }
}

/// What a successful [`crate::BrokerHandle::reload`] put in force, in
/// counts. `None` where the configuration names no such file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Users in the new password file.
    pub users: Option<usize>,
    /// Users in the new file that the old one lacked (a changed password
    /// counts as neither added nor removed).
    pub users_added: usize,
    /// Users of the old file the new one lacks.
    pub users_removed: usize,
    /// `topic` and `pattern` lines of the new ACL file.
    pub acl_rules: Option<usize>,
    /// The same count for the ACL file that was in force before.
    pub acl_rules_before: Option<usize>,
    /// `user` sections (with at least one rule) of the new ACL file.
    pub acl_user_sections: Option<usize>,
}

impl std::fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.users {
            Some(n) => write!(
                f,
                "{n} users (+{} -{})",
                self.users_added, self.users_removed
            )?,
            None => f.write_str("no password file")?,
        }
        match (self.acl_rules, self.acl_user_sections) {
            (Some(rules), Some(sections)) => {
                write!(f, ", {rules} ACL rules in {sections} user sections")?;
                if let Some(before) = self.acl_rules_before {
                    write!(f, " (was {before})")?;
                }
                Ok(())
            }
            _ => f.write_str(", no ACL file"),
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

    /// Puts `security` in force and returns what that changed.
    pub fn replace(&self, security: Security) -> ReloadSummary {
        let mut current = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let summary = current.changes_to(&security);
        *current = Arc::new(security);
        self.generation.fetch_add(1, Ordering::AcqRel);
        summary
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
