//! `veil keygen`: Paillier key pairs for the servers.

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use std::path::{Path, PathBuf};
use veil_paillier::{KeySize, PublicKey, SecretKey};

/// Generate the servers' Paillier key pairs.
///
/// Writes `<role>.key` (the secret key, mode 0600) and `<role>.pub` (the
/// public key) into DIR and prints each public key's fingerprint, which
/// devices pin in their configuration. Run it on each server's own host
/// (`--role server-a` on A's, `--role server-b` on B's) and copy only the
/// `.pub` files around: the two secret keys must never meet on one machine,
/// since whoever holds both can unmask everything.
#[derive(clap::Args)]
pub struct Args {
    /// Directory for the key files (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Whose key pair to generate: server-a or server-b on that server's
    /// host; `all` puts both secret keys in one folder (a single-host trial
    /// only).
    #[arg(long, value_enum)]
    role: Role,
    /// Modulus size in bits: 2048 (about 112-bit security) or 3072 (128).
    #[arg(long, default_value_t = 2048)]
    bits: u32,
    /// Replace existing key files.
    #[arg(long)]
    force: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Role {
    ServerA,
    ServerB,
    All,
}

pub fn run(args: Args) -> Result<()> {
    let size = KeySize::from_bits(args.bits)?;
    let roles: &[&str] = match args.role {
        Role::ServerA => &["server-a"],
        Role::ServerB => &["server-b"],
        Role::All => &["server-a", "server-b"],
    };
    if matches!(args.role, Role::All) {
        eprintln!(
            "warning: both servers' secret keys go into {}; for a deployment, run \
             `veil keygen --role server-a` on A's host and `--role server-b` on B's",
            args.out.display()
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    for role in roles {
        let secret_path = args.out.join(format!("{role}.key"));
        if secret_path.exists() && !args.force {
            bail!(
                "{} exists; pass --force to replace it",
                secret_path.display()
            );
        }
        let (_, public) = generate(&args.out, role, size)?;
        println!(
            "{role}: {} (fingerprint {})",
            secret_path.display(),
            public.fingerprint_hex()
        );
    }
    Ok(())
}

/// Generates and writes one role's key pair.
pub fn generate(dir: &Path, role: &str, size: KeySize) -> Result<(SecretKey, PublicKey)> {
    let secret = SecretKey::generate(&mut rand::rng(), size).context("generating a key pair")?;
    let secret_path = dir.join(format!("{role}.key"));
    let public_path = dir.join(format!("{role}.pub"));
    secret
        .write_to_file(&secret_path)
        .with_context(|| format!("writing {}", secret_path.display()))?;
    let public = secret.public_key().clone();
    public
        .write_to_file(&public_path)
        .with_context(|| format!("writing {}", public_path.display()))?;
    Ok((secret, public))
}

/// Loads `<role>.key` from `dir`, generating the pair first when absent.
pub fn load_or_create(dir: &Path, role: &str, size: KeySize) -> Result<SecretKey> {
    let path = dir.join(format!("{role}.key"));
    if path.exists() {
        let secret = SecretKey::read_from_file(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        tracing::info!(role, fingerprint = %secret.public_key().fingerprint_hex(), "loaded key");
        return Ok(secret);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (secret, public) = generate(dir, role, size)?;
    tracing::info!(role, fingerprint = %public.fingerprint_hex(), "generated key");
    Ok(secret)
}
