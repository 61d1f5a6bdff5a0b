//! `veil provision device|server-a|server-b`: everything a new device
//! needs in one step, and the servers' broker accounts.

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use rand::Rng as _;
use std::io::Write as _;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use veil_broker::{AclFile, Identity, PasswordFile};
use veil_paillier::PublicKey;
use veil_protocol::topics;

/// Provision a device (a pinned edge-agent configuration, its broker
/// password, and a check of what the ACL lets it do) or a server's broker
/// account.
///
/// Writes OUT/edge-agent-NAME.toml (pins for both servers' keys and the
/// model's topology, broker address, state folder) and OUT/NAME.password
/// (mode 0600), adds NAME to the broker's password file when one is given
/// (otherwise prints the line to add), then evaluates the ACL for NAME: it
/// must be able to write its own session, frame and ack topics and read its
/// own results, and nothing of another device or of the servers.
///
/// `veil provision server-a --out DIR --password-file FILE` (or server-b)
/// writes DIR/server-a.password (mode 0600, 192 random bits) and adds the
/// server's account to the broker's password file; no key or model needed.
#[derive(clap::Args)]
pub struct Args {
    /// What to provision: a device, or a server's broker account.
    #[arg(value_enum)]
    kind: Kind,
    /// The device's name: its broker username and its topic level
    /// (letters, digits, '-', '_', '.'). Servers take their role's name.
    #[arg(required_if_eq("kind", "device"))]
    name: Option<String>,
    /// Server A's public key (`server-a.pub` from `veil keygen --role server-a`).
    #[arg(long, value_name = "FILE", required_if_eq("kind", "device"))]
    a_key: Option<PathBuf>,
    /// Server B's public key (`server-b.pub`).
    #[arg(long, value_name = "FILE", required_if_eq("kind", "device"))]
    b_key: Option<PathBuf>,
    /// The model the device uses, as server A serves it (.plan).
    #[arg(long, value_name = "M.plan", required_if_eq("kind", "device"))]
    model: Option<PathBuf>,
    /// The broker as the device reaches it.
    #[arg(long, default_value = "mqtts://broker:8883")]
    broker_url: String,
    /// Folder for the device's files (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The broker's password file, to add the device to (refuses a name
    /// already there).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// The broker's ACL file to check the device against.
    #[arg(long, value_name = "FILE", default_value = "/etc/veil/acl")]
    acl: PathBuf,
    /// The agent's state folder on the device.
    #[arg(long, default_value = "/var/lib/veil/edge-agent")]
    state_dir: String,
    /// Replace the files in OUT if they exist.
    #[arg(long)]
    force: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Kind {
    Device,
    ServerA,
    ServerB,
}

/// Mosquitto 2.0's own iteration count, deliberately low: the password
/// is 192 random bits, so an offline guess costs about 2^191 PBKDF2 runs at
/// any count and stretching would add nothing, while every CONNECT pays for
/// the count on the broker. Passwords a person chooses are guessable and
/// need a high count (config/README.md, "Provisioning a device").
const PBKDF2_ITERATIONS: u32 = 101;

pub fn run(args: Args) -> Result<()> {
    let server = match args.kind {
        Kind::Device => None,
        Kind::ServerA => Some("server-a"),
        Kind::ServerB => Some("server-b"),
    };
    if let Some(role) = server {
        return provision_server(&args, role);
    }
    let (Some(name), Some(a_key), Some(b_key), Some(model)) =
        (&args.name, &args.a_key, &args.b_key, &args.model)
    else {
        bail!("a device needs NAME, --a-key, --b-key and --model");
    };
    let name = name.as_str();
    veil_protocol::check_device_name(name).with_context(|| format!("device name {name:?}"))?;
    if matches!(name, "server-a" | "server-b") || name.starts_with("server-") {
        bail!("{name:?} is reserved for the servers' broker accounts");
    }
    let a = PublicKey::read_from_file(a_key)
        .with_context(|| format!("reading server A's key {}", a_key.display()))?;
    let b = PublicKey::read_from_file(b_key)
        .with_context(|| format!("reading server B's key {}", b_key.display()))?;
    if a.fingerprint_hex() == b.fingerprint_hex() {
        bail!(
            "{} and {} are the same key ({}); the servers must hold different keys",
            a_key.display(),
            b_key.display(),
            a.fingerprint_hex()
        );
    }
    let model = crate::infer::load_model_file(model)?;
    let topology = model.topology();

    let acl_text = std::fs::read_to_string(&args.acl)
        .with_context(|| format!("reading the ACL {}", args.acl.display()))?;
    let acl =
        AclFile::parse(&acl_text).with_context(|| format!("parsing {}", args.acl.display()))?;
    let failures = check_acl(&acl, name);

    let config_path = args.out.join(format!("edge-agent-{name}.toml"));
    let password_path = args.out.join(format!("{name}.password"));
    for path in [&config_path, &password_path] {
        if path.exists() && !args.force {
            bail!("{} exists; pass --force to replace it", path.display());
        }
    }
    let line = create_account(&args, name, &password_path)?;
    let config = agent_config(&Agent {
        name,
        model: &topology.name,
        state_dir: &args.state_dir,
        broker_url: &args.broker_url,
        pin_a: &a.fingerprint_hex(),
        pin_b: &b.fingerprint_hex(),
        pin_topology: &topology.fingerprint_hex(),
    });
    std::fs::write(&config_path, config)
        .with_context(|| format!("writing {}", config_path.display()))?;

    println!(
        "device {name}: model {} ({} inputs)",
        topology.name, topology.input_len
    );
    println!(
        "  {}  (install as /etc/veil/edge-agent.toml)",
        config_path.display()
    );
    println!(
        "  {}  (mode 0600; install as /etc/veil/secrets/device.password)",
        password_path.display()
    );
    print_account_line(args.password_file.as_deref(), &line);
    println!("ACL check against {}:", args.acl.display());
    for (check, ok) in acl_checks(&acl, name) {
        println!("  {} {check}", if ok { "ok  " } else { "FAIL" });
    }
    if !failures.is_empty() {
        bail!(
            "the ACL {} does not give {name} exactly its own topics ({} checks failed); \
             the device would not work or would see others' traffic",
            args.acl.display(),
            failures.len()
        );
    }
    Ok(())
}

/// A server's broker account: its password file and its password line.
fn provision_server(args: &Args, role: &str) -> Result<()> {
    if let Some(name) = &args.name
        && name != role
    {
        bail!("a server's account is named after its role ({role}), not {name:?}");
    }
    let password_path = args.out.join(format!("{role}.password"));
    if password_path.exists() && !args.force {
        bail!(
            "{} exists; pass --force to replace it",
            password_path.display()
        );
    }
    let line = create_account(args, role, &password_path)?;
    println!("{role}: broker account");
    println!(
        "  {}  (mode 0600; install as /etc/veil/secrets/{role}.password, owned by veil-{role})",
        password_path.display()
    );
    print_account_line(args.password_file.as_deref(), &line);
    Ok(())
}

/// A random password for `name`, written to `password_path` (0600) and
/// added to the broker's password file when one is given; returns its
/// password-file line.
fn create_account(args: &Args, name: &str, password_path: &Path) -> Result<String> {
    let password = random_password();
    let mut salt = [0u8; 12];
    rand::rng().fill_bytes(&mut salt);
    let iterations = NonZeroU32::new(PBKDF2_ITERATIONS).context("iteration count")?;
    let line = PasswordFile::pbkdf2_line(name, &password, salt, iterations);
    if let Some(file) = &args.password_file {
        add_password_line(file, name, &line)?;
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    veil_paillier::write_secret_file(password_path, format!("{password}\n").as_bytes())
        .with_context(|| format!("writing {}", password_path.display()))?;
    Ok(line)
}

/// Says where the account's password-file line went.
fn print_account_line(password_file: Option<&Path>, line: &str) {
    match password_file {
        Some(file) => println!("  added to the broker's password file {}", file.display()),
        None => println!("  add this line to the broker's password file:\n    {line}"),
    }
}

struct Agent<'a> {
    name: &'a str,
    model: &'a str,
    state_dir: &'a str,
    broker_url: &'a str,
    pin_a: &'a str,
    pin_b: &'a str,
    pin_topology: &'a str,
}

fn agent_config(a: &Agent) -> String {
    format!(
        "# Written by `veil provision device {name}`; see config/edge-agent.toml for\n\
         # every setting. Relative paths are relative to this file.\n\
         device = \"{name}\"\n\
         model = \"{model}\"\n\
         state_dir = \"{state_dir}\"\n\
         \n\
         [pins]\n\
         server_a = \"{pin_a}\"\n\
         server_b = \"{pin_b}\"\n\
         topology = \"{pin_topology}\"\n\
         \n\
         [mqtt]\n\
         url = \"{url}\"\n\
         password_file = \"/etc/veil/secrets/device.password\"\n",
        name = a.name,
        model = a.model,
        state_dir = a.state_dir,
        pin_a = a.pin_a,
        pin_b = a.pin_b,
        pin_topology = a.pin_topology,
        url = a.broker_url,
    )
}

/// 24 bytes from the OS generator, base64url: 192 bits.
fn random_password() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn add_password_line(file: &Path, name: &str, line: &str) -> Result<()> {
    let existing = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let parsed = PasswordFile::parse(&existing)
        .with_context(|| format!("parsing the password file {}", file.display()))?;
    if parsed.contains(name) {
        bail!(
            "{name} is already in {}; remove its line first to give it a new password",
            file.display()
        );
    }
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .with_context(|| format!("opening {}", file.display()))?;
    let separator = if existing.is_empty() || existing.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    writeln!(out, "{separator}{line}").with_context(|| format!("writing {}", file.display()))?;
    Ok(())
}

/// What the device must be able to do, and what it must not.
fn acl_checks(acl: &AclFile, name: &str) -> Vec<(String, bool)> {
    let me = acl.for_client(&Identity {
        username: Some(name.to_string()),
        client_id: name.to_string(),
    });
    let other = if name == "veil-probe" {
        "veil-probe-2"
    } else {
        "veil-probe"
    };
    let mut checks = Vec::new();
    for topic in [
        topics::session(name, 'a'),
        topics::session(name, 'b'),
        topics::frame(name),
        topics::ack(name),
    ] {
        checks.push((format!("may publish {topic}"), me.can_publish(&topic)));
    }
    let own_result = topics::result(name);
    checks.push((
        format!("may subscribe {own_result}"),
        me.can_subscribe(&own_result),
    ));
    for key in [topics::server_key('a'), topics::server_key('b')] {
        checks.push((format!("may read {key}"), me.can_read(&key)));
    }
    for topic in [topics::result(other), topics::frame(other)] {
        checks.push((format!("may not read {topic}"), !me.can_read(&topic)));
    }
    for filter in [
        topics::filters::FRAMES,
        topics::filters::A_TO_B,
        "veil/v1/ba/#",
        "#",
    ] {
        checks.push((
            format!("may not subscribe {filter}"),
            !me.can_subscribe(filter),
        ));
    }
    for topic in [
        topics::result(name),
        topics::server_key('a'),
        topics::frame(other),
        topics::a_to_b("a1"),
    ] {
        checks.push((format!("may not publish {topic}"), !me.can_publish(&topic)));
    }
    checks
}

fn check_acl(acl: &AclFile, name: &str) -> Vec<String> {
    acl_checks(acl, name)
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(check, _)| check)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped_acl() -> AclFile {
        let dir = crate::share::dir("config").unwrap();
        AclFile::parse(&std::fs::read_to_string(dir.join("acl")).unwrap()).unwrap()
    }

    #[test]
    fn the_shipped_acl_gives_a_device_exactly_its_own_topics() {
        assert_eq!(
            check_acl(&shipped_acl(), "gw-kitchen"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn an_acl_that_lets_a_device_read_everything_fails_the_check() {
        let open = AclFile::parse("pattern readwrite #\n").unwrap();
        let failures = check_acl(&open, "gw-kitchen");
        assert!(
            failures
                .iter()
                .any(|f| f.contains("may not read veil/v1/dev/veil-probe/result"))
        );
        let closed = AclFile::parse("user nobody\ntopic read x\n").unwrap();
        assert!(
            check_acl(&closed, "gw-kitchen")
                .iter()
                .any(|f| f.contains("may publish"))
        );
    }

    #[test]
    fn a_password_line_is_added_once_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwords");
        std::fs::write(&file, "").unwrap();
        let iterations = NonZeroU32::new(PBKDF2_ITERATIONS).unwrap();
        let line = PasswordFile::pbkdf2_line("gw-1", "s3cret", [7; 12], iterations);
        add_password_line(&file, "gw-1", &line).unwrap();
        let parsed = PasswordFile::parse(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert!(parsed.verify("gw-1", b"s3cret"));
        assert!(!parsed.verify("gw-1", b"wrong"));
        assert!(add_password_line(&file, "gw-1", &line).is_err());
    }
}
