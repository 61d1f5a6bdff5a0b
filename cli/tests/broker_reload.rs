//! `veil broker` on SIGHUP, through the binary: a good pair of files is
//! reloaded and logged with counts, a broken one is refused with its
//! reason and the broker keeps serving. What a reload changes for clients
//! is tested over MQTT in broker/tests/reload.rs.
#![cfg(unix)]
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

struct Broker {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Broker {
    fn start(config: &Path) -> Broker {
        let mut child = Command::new(env!("CARGO_BIN_EXE_veil"))
            .args(["broker", "--config"])
            .arg(config)
            .env("VEIL_LOG", "info")
            .env_remove("VEIL_METRICS_LISTEN")
            .stderr(Stdio::piped())
            .spawn()
            .expect("veil runs");
        let stderr = child.stderr.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Broker { child, lines }
    }

    /// The first stderr line (from now on) containing `text`.
    fn line_with(&self, text: &str) -> String {
        loop {
            match self.lines.recv_timeout(WAIT) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => continue,
                Err(e) => panic!("no line with {text:?}: {e}"),
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([name, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sighup_reloads_good_files_and_refuses_broken_ones() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let passwords = std::fs::read_to_string(repo.join("config/passwords")).unwrap();
    let acl = std::fs::read_to_string(repo.join("config/acl")).unwrap();
    std::fs::write(d.join("passwords"), &passwords).unwrap();
    std::fs::write(d.join("acl"), &acl).unwrap();
    std::fs::write(
        d.join("broker.toml"),
        "listen = \"127.0.0.1:0\"\npassword_file = \"passwords\"\nacl_file = \"acl\"\n",
    )
    .unwrap();
    let users = passwords
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .count();

    let mut broker = Broker::start(&d.join("broker.toml"));
    broker.line_with("veil broker listening");

    // A new device's line (any valid hash will do for the count).
    let new_line = passwords
        .lines()
        .find(|l| l.starts_with("devA:"))
        .expect("devA in config/passwords")
        .replacen("devA:", "devNew:", 1);
    std::fs::write(d.join("passwords"), format!("{passwords}{new_line}\n")).unwrap();
    broker.signal("-HUP");
    let line = broker.line_with("password and ACL files reloaded");
    assert!(
        line.contains(&format!("{} users (+1 -0)", users + 1)),
        "{line}"
    );
    assert!(
        !line.contains("devNew"),
        "names stay out of the log: {line}"
    );

    std::fs::write(d.join("acl"), format!("{acl}\ntopic reed veil/#\n")).unwrap();
    broker.signal("-HUP");
    let line = broker.line_with("reload refused");
    assert!(
        line.contains("previous password and ACL files stay in force"),
        "{line}"
    );
    assert!(
        line.contains("invalid ACL file") && line.contains("line"),
        "{line}"
    );
    assert!(broker.child.try_wait().unwrap().is_none(), "still serving");

    broker.signal("-TERM");
    let status = broker.child.wait().unwrap();
    assert!(status.success(), "{status}");
}
