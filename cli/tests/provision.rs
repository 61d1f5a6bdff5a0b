//! Provisioning as an operator does it, through the binary: keys made per
//! server, the topology pinned, a device provisioned against the shipped
//! ACL; the files it writes load as the agent reads them, and the password
//! it chose opens the broker's password file.
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn veil(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(args)
        .current_dir(cwd)
        .env_remove("VEIL_SHARE_DIR")
        .output()
        .expect("veil runs")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_provisioned_device_gets_pins_a_password_and_an_acl_check() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keys_a = d.join("a");
    let keys_b = d.join("b");
    for (role, keys) in [("server-a", &keys_a), ("server-b", &keys_b)] {
        let out = veil(
            &["keygen", "--role", role, "--out", keys.to_str().unwrap()],
            d,
        );
        assert!(out.status.success(), "{}", text(&out));
    }
    // --role is required: a plain `veil keygen --out` no longer writes both
    // secret keys side by side.
    let out = veil(&["keygen", "--out", d.join("both").to_str().unwrap()], d);
    assert!(!out.status.success());

    let plan = repo().join("models/pima-mlp.plan");
    let topology_file = d.join("pima.topology");
    let out = veil(
        &[
            "topology",
            "--model",
            plan.to_str().unwrap(),
            "--out",
            topology_file.to_str().unwrap(),
        ],
        d,
    );
    assert!(out.status.success(), "{}", text(&out));
    let topology = veil_model::Topology::from_bytes(&std::fs::read(&topology_file).unwrap())
        .expect("the topology file decodes");
    assert!(text(&out).contains(&topology.fingerprint_hex()));

    let passwords = d.join("passwords");
    let acl = repo().join("config/acl");
    let device_dir = d.join("gw-kitchen");
    let provision = |name: &str, acl: &Path| {
        veil(
            &[
                "provision",
                "device",
                name,
                "--a-key",
                keys_a.join("server-a.pub").to_str().unwrap(),
                "--b-key",
                keys_b.join("server-b.pub").to_str().unwrap(),
                "--model",
                plan.to_str().unwrap(),
                "--broker-url",
                "mqtts://broker.example:8883",
                "--out",
                device_dir.to_str().unwrap(),
                "--password-file",
                passwords.to_str().unwrap(),
                "--acl",
                acl.to_str().unwrap(),
            ],
            d,
        )
    };
    let out = provision("gw-kitchen", &acl);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("FAIL"), "{}", text(&out));

    let config = device_dir.join("edge-agent-gw-kitchen.toml");
    let options = veil_edge_agent::cli::load_options(Some(&config)).expect("the config loads");
    assert_eq!(options.device, "gw-kitchen");
    assert_eq!(options.model, "pima-mlp");
    assert_eq!(options.pins.topology, topology.fingerprint_hex());
    let a_pub = veil_paillier::PublicKey::read_from_file(&keys_a.join("server-a.pub")).unwrap();
    let b_pub = veil_paillier::PublicKey::read_from_file(&keys_b.join("server-b.pub")).unwrap();
    assert_eq!(options.pins.server_a, a_pub.fingerprint_hex());
    assert_eq!(options.pins.server_b, b_pub.fingerprint_hex());

    let password_file = device_dir.join("gw-kitchen.password");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&password_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    }
    let password = std::fs::read_to_string(&password_file).unwrap();
    let parsed =
        veil_broker::PasswordFile::parse(&std::fs::read_to_string(&passwords).unwrap()).unwrap();
    assert!(parsed.verify("gw-kitchen", password.trim().as_bytes()));

    // The same name twice is refused, and nothing is overwritten.
    let out = provision("gw-kitchen", &acl);
    assert!(!out.status.success());
    assert_eq!(std::fs::read_to_string(&password_file).unwrap(), password);

    // An ACL that gives devices everything fails the check.
    let open_acl = d.join("open-acl");
    std::fs::write(&open_acl, "pattern readwrite #\n").unwrap();
    let out = provision("gw-hall", &open_acl);
    assert!(!out.status.success());
    assert!(text(&out).contains("FAIL may not read"), "{}", text(&out));

    // The same key for both servers is refused.
    let out = veil(
        &[
            "provision",
            "device",
            "gw-porch",
            "--a-key",
            keys_a.join("server-a.pub").to_str().unwrap(),
            "--b-key",
            keys_a.join("server-a.pub").to_str().unwrap(),
            "--model",
            plan.to_str().unwrap(),
            "--out",
            d.join("gw-porch").to_str().unwrap(),
            "--acl",
            acl.to_str().unwrap(),
        ],
        d,
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("same key"), "{}", text(&out));
}

#[test]
fn a_server_account_gets_a_password_that_opens_the_password_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let passwords = d.join("passwords");
    let secrets = d.join("secrets");
    for role in ["server-a", "server-b"] {
        let out = veil(
            &[
                "provision",
                role,
                "--out",
                secrets.to_str().unwrap(),
                "--password-file",
                passwords.to_str().unwrap(),
            ],
            d,
        );
        assert!(out.status.success(), "{}", text(&out));
    }
    let parsed =
        veil_broker::PasswordFile::parse(&std::fs::read_to_string(&passwords).unwrap()).unwrap();
    for role in ["server-a", "server-b"] {
        let password = std::fs::read_to_string(secrets.join(format!("{role}.password"))).unwrap();
        assert!(parsed.verify(role, password.trim().as_bytes()), "{role}");
    }
    // A second account for a role is refused; a device must not take a
    // server's name.
    let again = veil(
        &[
            "provision",
            "server-a",
            "--out",
            d.join("other").to_str().unwrap(),
            "--password-file",
            passwords.to_str().unwrap(),
        ],
        d,
    );
    assert!(!again.status.success());
    assert!(text(&again).contains("already in"), "{}", text(&again));
    let misnamed = veil(
        &[
            "provision",
            "server-b",
            "server-a",
            "--out",
            d.to_str().unwrap(),
        ],
        d,
    );
    assert!(!misnamed.status.success());
}
