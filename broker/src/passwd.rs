//! Mosquitto `password_file` parsing and password verification.
//!
//! Lines are `user:$7$<iterations>$<base64 salt>$<base64 hash>` (PBKDF2 with
//! HMAC-SHA512, what Mosquitto 2's `mosquitto_passwd` writes) or the older
//! `user:$6$<base64 salt>$<base64 sha512(password || salt)>`. Lines starting
//! with `#` and blank lines are skipped. Hashes are compared in constant time
//! and never appear in `Debug` output or errors.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::{digest, pbkdf2};
use subtle::ConstantTimeEq as _;
use thiserror::Error;

/// Mosquitto's hash length (SHA-512 output) and its two salt lengths.
const HASH_LEN: usize = 64;
const SALT_LENS: [usize; 2] = [12, 64];

/// Refuses absurd iteration counts that would turn every CONNECT into a
/// denial of service on the broker; Mosquitto's default is 101.
const MAX_ITERATIONS: u32 = 10_000_000;

/// A password file line that could not be used. Names the user but never
/// the hash.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}: {reason}")]
pub struct PasswordFileError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong on it.
    pub reason: String,
}

#[derive(Clone)]
enum PasswordHash {
    Pbkdf2Sha512 {
        iterations: NonZeroU32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Sha512 {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

/// A parsed `password_file`.
#[derive(Clone, Default)]
pub struct PasswordFile {
    users: HashMap<String, PasswordHash>,
}

impl fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.users.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("PasswordFile")
            .field("users", &names)
            .finish_non_exhaustive()
    }
}

impl PasswordFile {
    /// A `password_file` line for `user` in Mosquitto's `$6$` format
    /// (SHA-512 of the password and a 12-byte salt), which this broker and
    /// Mosquitto both read; for generated accounts (load tests, demos).
    pub fn line(user: &str, password: &str, salt: [u8; 12]) -> String {
        let mut ctx = digest::Context::new(&digest::SHA512);
        ctx.update(password.as_bytes());
        ctx.update(&salt);
        format!(
            "{user}:$6${}${}",
            STANDARD.encode(salt),
            STANDARD.encode(ctx.finish())
        )
    }

    /// A `password_file` line for `user` in Mosquitto 2's `$7$` format
    /// (PBKDF2 with HMAC-SHA512), what `mosquitto_passwd` writes.
    pub fn pbkdf2_line(
        user: &str,
        password: &str,
        salt: [u8; 12],
        iterations: NonZeroU32,
    ) -> String {
        let mut hash = [0u8; HASH_LEN];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA512,
            iterations,
            &salt,
            password.as_bytes(),
            &mut hash,
        );
        format!(
            "{user}:$7${iterations}${}${}",
            STANDARD.encode(salt),
            STANDARD.encode(hash)
        )
    }

    /// Parses the text of a password file.
    pub fn parse(text: &str) -> Result<PasswordFile, PasswordFileError> {
        let mut users = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || raw.starts_with('#') {
                continue;
            }
            let Some((user, encoded)) = trimmed.split_once(':') else {
                return Err(PasswordFileError {
                    line,
                    reason: "expected <user>:<hash>".into(),
                });
            };
            let user = user.trim();
            if user.is_empty() {
                return Err(PasswordFileError {
                    line,
                    reason: "empty username".into(),
                });
            }
            let hash = parse_hash(encoded.trim()).map_err(|reason| PasswordFileError {
                line,
                reason: format!("user '{user}': {reason}"),
            })?;
            if users.insert(user.to_string(), hash).is_some() {
                return Err(PasswordFileError {
                    line,
                    reason: format!("user '{user}' appears twice"),
                });
            }
        }
        Ok(PasswordFile { users })
    }

    /// Number of users in the file.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when the file has no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The users of this file, in no particular order.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    /// Is `user` a user of this file?
    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// Checks `password` for `user`. Unknown users cost the same work as
    /// known ones so that response time does not reveal which names exist.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(hash) => hash.verify(password),
            None => {
                let decoy = PasswordHash::Pbkdf2Sha512 {
                    iterations: NonZeroU32::MIN.saturating_add(100),
                    salt: vec![0; 12],
                    hash: vec![0; HASH_LEN],
                };
                let _ = decoy.verify(password);
                false
            }
        }
    }
}

fn decode_b64(field: &str, what: &str) -> Result<Vec<u8>, String> {
    STANDARD
        .decode(field)
        .map_err(|e| format!("{what} is not valid base64 ({e})"))
}

fn parse_hash(encoded: &str) -> Result<PasswordHash, String> {
    let fields: Vec<&str> = encoded.split('$').collect();
    let (salt_b64, hash_b64, iterations) = match fields.as_slice() {
        ["", "7", iterations, salt, hash] => {
            let n: u32 = iterations
                .parse()
                .map_err(|_| "iteration count is not a number".to_string())?;
            if n > MAX_ITERATIONS {
                return Err(format!("iteration count above {MAX_ITERATIONS}"));
            }
            let n = NonZeroU32::new(n).ok_or("iteration count is zero")?;
            (salt, hash, Some(n))
        }
        ["", "6", salt, hash] => (salt, hash, None),
        _ => return Err("not a $6$ or $7$ hash as written by mosquitto_passwd".into()),
    };
    let salt = decode_b64(salt_b64, "salt")?;
    if !SALT_LENS.contains(&salt.len()) {
        return Err(format!("salt is {} bytes, expected 12 or 64", salt.len()));
    }
    let hash = decode_b64(hash_b64, "hash")?;
    if hash.len() != HASH_LEN {
        return Err(format!("hash is {} bytes, expected {HASH_LEN}", hash.len()));
    }
    Ok(match iterations {
        Some(iterations) => PasswordHash::Pbkdf2Sha512 {
            iterations,
            salt,
            hash,
        },
        None => PasswordHash::Sha512 { salt, hash },
    })
}

impl PasswordHash {
    fn verify(&self, password: &[u8]) -> bool {
        let mut derived = [0u8; HASH_LEN];
        let (expected, derived) = match self {
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                pbkdf2::derive(
                    pbkdf2::PBKDF2_HMAC_SHA512,
                    *iterations,
                    salt,
                    password,
                    &mut derived,
                );
                (hash, &derived[..])
            }
            PasswordHash::Sha512 { salt, hash } => {
                let mut ctx = digest::Context::new(&digest::SHA512);
                ctx.update(password);
                ctx.update(salt);
                let d = ctx.finish();
                derived.copy_from_slice(d.as_ref());
                (hash, &derived[..])
            }
        };
        expected.as_slice().ct_eq(derived).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_lines_verify() {
        let line = PasswordFile::line("dev", "secret", [7; 12]);
        let file = PasswordFile::parse(&line).unwrap();
        assert!(file.verify("dev", b"secret"));
        assert!(!file.verify("dev", b"Secret"));
    }

    /// Written by Debian's mosquitto_passwd 2.0.11 (`-c -b`, `-H sha512 -b`
    /// and `-I 1000 -b`); the same lines are in tests/fixtures/mosquitto_passwd.
    const REAL: &str = "\
devA:$7$101$2ImIKLCkTvVCA+Np$FUyRxKVzwsfZmauBzzen7vGq/K9CEqtVUsuEMbEGLKuLm3CNR+PzqMK1yQWgXUWLy1N6oFBFFG6KAwMgk1as8A==
legacy:$6$X19cMBTasahMe+EH$yIjjrS0RWdXErvU2iyEBHe2S3/Jh3deUp7NR4kjWtSn0YKc/h+/u7Oc9RBbBgTc6KDh5gLJMFngh6Q3gUoCPZQ==
iter1000:$7$1000$ztdXUm3PL6AGxFqy$gJa0gQPs/FNxQpyy1qeAYkTv+IMfBUSTYT8rNgzd2DrEjLFhdBDaFX8LyWzIAfAbEeV0GoVsGlkbcmn9DCf1Ww==
";

    #[test]
    fn verifies_hashes_written_by_mosquitto_passwd() {
        let pw = PasswordFile::parse(REAL).unwrap();
        assert_eq!(pw.len(), 3);
        assert!(pw.verify("devA", b"demo-devA-pass"));
        assert!(!pw.verify("devA", b"demo-devA-pass "));
        assert!(!pw.verify("devA", b""));
        assert!(pw.verify("legacy", b"legacy-pass"));
        assert!(!pw.verify("legacy", b"legacy-pas"));
        assert!(pw.verify("iter1000", b"pass-1000"));
        assert!(!pw.verify("iter1000", b"pass-1001"));
        assert!(!pw.verify("nobody", b"demo-devA-pass"));
    }

    /// The count config/README.md tells operators to use for passwords a
    /// person chose; written by Debian's mosquitto_passwd 2.0.11
    /// (`-c -I 100000 -b pw iter100k pass-100000`).
    #[test]
    fn a_high_iteration_count_from_mosquitto_passwd_verifies() {
        let line = "iter100k:$7$100000$AZeBP5TiaybIdaYe$8EHWcJk8XkXWDS3rwvZCsnOUv+oZHLVXuZfBTjl/r/6X1jLDLrNsg55EMjd3XlnwFalH7hL4uGGA5143RfKRXA==";
        let pw = PasswordFile::parse(line).unwrap();
        assert!(pw.verify("iter100k", b"pass-100000"));
        assert!(!pw.verify("iter100k", b"pass-10000"));
    }

    #[test]
    fn comments_and_blank_lines_are_skipped() {
        let text = format!("# users\n\n{REAL}\n# end\n");
        assert_eq!(PasswordFile::parse(&text).unwrap().len(), 3);
    }

    #[test]
    fn debug_output_never_shows_hashes() {
        let pw = PasswordFile::parse(REAL).unwrap();
        let shown = format!("{pw:?}");
        assert!(shown.contains("devA"));
        assert!(!shown.contains("FUyRx"));
        assert!(!shown.contains("2ImIKL"));
    }

    #[test]
    fn malformed_lines_are_rejected_with_a_reason() {
        let cases = [
            ("nocolon\n", "expected"),
            (":$6$X19cMBTasahMe+EH$AA==\n", "empty username"),
            ("u:plaintext\n", "not a $6$ or $7$"),
            ("u:$7$abc$2ImIKLCkTvVCA+Np$AA==\n", "not a number"),
            ("u:$7$0$2ImIKLCkTvVCA+Np$AA==\n", "zero"),
            ("u:$7$99999999999$2ImIKLCkTvVCA+Np$AA==\n", "not a number"),
            (
                "u:$7$20000000$2ImIKLCkTvVCA+Np$AA==\n",
                "iteration count above",
            ),
            ("u:$7$101$!!!!$AA==\n", "salt is not valid base64"),
            ("u:$7$101$AAAA$AA==\n", "salt is 3 bytes"),
            ("u:$7$101$2ImIKLCkTvVCA+Np$AA==\n", "hash is 1 bytes"),
            ("u:$5$2ImIKLCkTvVCA+Np$AA==\n", "not a $6$ or $7$"),
        ];
        for (text, reason) in cases {
            let err = PasswordFile::parse(text).unwrap_err();
            assert_eq!(err.line, 1);
            assert!(err.reason.contains(reason), "{text}: {}", err.reason);
        }
        let twice = format!(
            "{REAL}devA:$6$X19cMBTasahMe+EH$yIjjrS0RWdXErvU2iyEBHe2S3/Jh3deUp7NR4kjWtSn0YKc/h+/u7Oc9RBbBgTc6KDh5gLJMFngh6Q3gUoCPZQ==\n"
        );
        let err = PasswordFile::parse(&twice).unwrap_err();
        assert_eq!(err.line, 4);
        assert!(err.reason.contains("twice"));
    }
}
