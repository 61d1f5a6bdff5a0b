//! A real Mosquitto started with veil's ACL and password files, so tests (and
//! operators checking their files) can hold the embedded broker against the
//! broker whose formats it reads.
//!
//! Mosquitto started as root drops privileges to the `mosquitto` user and
//! can then no longer read files under a folder only root may enter (a
//! `mktemp -d` folder, or `/root`, where a root user's clone lands). So the
//! files are copied into the caller's work folder and, when running as root,
//! the config keeps root (`user root`): where the repository sits no longer
//! matters. Mosquitto's own output goes to a file in that folder and is
//! returned in full when it fails to start, since its reason ("Unable to open
//! pwfile") is the only useful diagnosis.

use std::fs;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Where Debian, Ubuntu and source builds install the broker.
const CANDIDATES: [&str; 3] = [
    "/usr/sbin/mosquitto",
    "/usr/bin/mosquitto",
    "/usr/local/sbin/mosquitto",
];

/// Why a Mosquitto could not be started.
#[derive(Debug, thiserror::Error)]
pub enum MosquittoError {
    /// Preparing its folder, config or log failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// It exited before it listened.
    #[error("mosquitto exited ({status}) before listening on {addr}; its output:\n{output}")]
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// The address it was to listen on.
        addr: SocketAddr,
        /// Everything it printed.
        output: String,
    },
    /// It kept running but never accepted a connection.
    #[error("mosquitto did not listen on {addr} within {waited:?}; its output:\n{output}")]
    NotListening {
        /// The address it was to listen on.
        addr: SocketAddr,
        /// How long it was given.
        waited: Duration,
        /// Everything it printed.
        output: String,
    },
}

/// A running Mosquitto on a loopback port; killed when dropped.
#[derive(Debug)]
pub struct Mosquitto {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Mosquitto {
    /// The installed `mosquitto` binary, if any.
    pub fn find() -> Option<PathBuf> {
        CANDIDATES
            .iter()
            .map(PathBuf::from)
            .find(|path| path.is_file())
    }

    /// Starts `bin` on a free loopback port with copies of `acl` and
    /// `passwords` in `work_dir`, and waits up to `patience` until it
    /// accepts connections.
    pub fn start(
        bin: &Path,
        work_dir: &Path,
        acl: &Path,
        passwords: &Path,
        patience: Duration,
    ) -> Result<Self, MosquittoError> {
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| MosquittoError::Io { what, path, source }
        };
        fs::create_dir_all(work_dir).map_err(io("creating", work_dir))?;
        let acl_copy = work_dir.join("acl");
        fs::copy(acl, &acl_copy).map_err(io("copying", acl))?;
        let passwords_copy = work_dir.join("passwords");
        fs::copy(passwords, &passwords_copy).map_err(io("copying", passwords))?;

        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(io("binding a free port for", work_dir))?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npersistence false\n\
             password_file {}\nacl_file {}\n",
            passwords_copy.display(),
            acl_copy.display()
        );
        if running_as_root() {
            conf.push_str("user root\n");
        }
        let conf_path = work_dir.join("mosquitto.conf");
        fs::write(&conf_path, conf).map_err(io("writing", &conf_path))?;
        let log = work_dir.join("mosquitto.log");
        let out = fs::File::create(&log).map_err(io("creating", &log))?;
        let err = out.try_clone().map_err(io("opening", &log))?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(io("starting", bin))?;
        let mut mosquitto = Mosquitto { child, addr, log };

        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = mosquitto.child.try_wait() {
                return Err(MosquittoError::Exited {
                    status,
                    addr,
                    output: mosquitto.output(),
                });
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(mosquitto);
            }
            if started.elapsed() > patience {
                return Err(MosquittoError::NotListening {
                    addr,
                    waited: patience,
                    output: mosquitto.output(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The loopback address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Everything it has printed so far.
    pub fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no output: {e})"))
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}
