//! The embedded broker of `veil bench device`, with the shipped ACL and
//! passwords plus the baseline's topics.

use super::*;

/// The shipped ACL, plus the baseline's own topics (appended in the
/// broker's temporary configuration, not in the shipped file): a device
/// writes under `conv/<device>/up` and reads `conv/<device>/down`; server A
/// the reverse.
pub(super) const SHIPPED_ACL: &str = include_str!("../../../config/acl");
pub(super) const SHIPPED_PASSWORDS: &str = include_str!("../../../config/passwords");
pub(super) const BASELINE_ACL: &str = "
# Conventional-HE baseline of `veil bench device` (added by the benchmark).
pattern write veil/v1/conv/%u/up/#
pattern read veil/v1/conv/%u/down/#
user server-a
topic read veil/v1/conv/+/up/#
topic write veil/v1/conv/+/down/#
";

/// The embedded broker in its own runtime, with a temporary configuration.
pub struct BenchBroker {
    handle: Option<veil_broker::BrokerHandle>,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl BenchBroker {
    /// Starts the embedded broker on a free loopback port.
    pub fn start() -> Result<BenchBroker> {
        let dir = tempfile::tempdir().context("creating the broker's temporary directory")?;
        let acl = dir.path().join("acl");
        let passwords = dir.path().join("passwords");
        std::fs::write(&acl, format!("{SHIPPED_ACL}\n{BASELINE_ACL}"))
            .context("writing the broker ACL")?;
        std::fs::write(&passwords, SHIPPED_PASSWORDS).context("writing the password file")?;
        let config = veil_broker::BrokerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            password_file: Some(passwords),
            acl_file: Some(acl),
            ..veil_broker::BrokerConfig::default()
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("broker")
            .enable_all()
            .build()
            .context("starting the broker's runtime")?;
        let handle = runtime
            .block_on(veil_broker::Broker::start(config))
            .context("starting the embedded broker")?;
        Ok(BenchBroker {
            handle: Some(handle),
            runtime,
            _dir: dir,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> Result<SocketAddr> {
        self.handle
            .as_ref()
            .map(|h| h.local_addr())
            .ok_or_else(|| anyhow!("the broker has stopped"))
    }
}

impl Drop for BenchBroker {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            self.runtime.block_on(handle.shutdown());
        }
    }
}
