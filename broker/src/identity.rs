//! Which client ids a connection may use, and the ids the gate assigns.
//!
//! rumqttd, like every MQTT broker, lets a second connection with a client
//! id take over the first one's session (the first is disconnected, and a
//! persistent session's queued messages go to the newcomer). Without a rule
//! binding ids to usernames, any authenticated device could knock server A
//! off the broker by connecting as `server-a` over and over, or collect
//! another device's queued results. The rule (see the crate documentation):
//! a client id belongs to the *longest* username of the password file that
//! it equals or that it continues with `-`, and only that user may use it.

use ring::rand::{SecureRandom as _, SystemRandom};
use thiserror::Error;

use crate::passwd::PasswordFile;

/// What follows a username inside a longer client id of that user. (`/`
/// would read better, but rumqttd refuses client ids holding `/`, `$`,
/// `+` or `#`.)
const SEPARATOR: char = '-';

/// Why a CONNECT's username or client id is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdentityRefusal {
    /// Mosquitto denies such clients every access; the gate refuses them
    /// outright.
    #[error("the username contains an MQTT wildcard ('+' or '#')")]
    WildcardUsername,
    /// A client id with `+` or `#`.
    #[error("the client id contains an MQTT wildcard ('+' or '#')")]
    WildcardClientId,
    /// rumqttd refuses these; the gate says why before it gets there.
    #[error("the client id contains '/' or '$'")]
    ReservedCharacter,
    /// A client id that is not the username or `username-…`.
    #[error("the client id is neither the username nor the username followed by '-'")]
    NotTheUsers,
    /// A client id of the form `owner-…` for another user.
    #[error("the client id belongs to user '{owner}'")]
    OwnedByOther {
        /// The user whose prefix the client id carries.
        owner: String,
    },
    /// An empty client id asking for a persistent session.
    #[error("an empty client id needs a clean session")]
    EmptyWithPersistentSession,
    /// An empty client id where none can be made up.
    #[error("no client id could be assigned")]
    CannotAssign,
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['+', '#'])
}

/// The user of `users` that `client_id` belongs to, if any.
pub fn owner<'a>(client_id: &'a str, users: &PasswordFile) -> Option<&'a str> {
    if users.contains(client_id) {
        return Some(client_id);
    }
    client_id
        .char_indices()
        .rev()
        .filter(|(_, c)| *c == SEPARATOR)
        .map(|(i, _)| client_id.get(..i).unwrap_or(""))
        .find(|prefix| users.contains(prefix))
}

/// Checks that `username` (None: anonymous) may use `client_id`. `users`
/// is the password file; without one usernames are unauthenticated labels
/// and only the prefix rule applies.
pub fn check(
    username: Option<&str>,
    client_id: &str,
    users: Option<&PasswordFile>,
) -> Result<(), IdentityRefusal> {
    if username.is_some_and(has_wildcard) {
        return Err(IdentityRefusal::WildcardUsername);
    }
    if has_wildcard(client_id) {
        return Err(IdentityRefusal::WildcardClientId);
    }
    if client_id.contains(['/', '$']) {
        return Err(IdentityRefusal::ReservedCharacter);
    }
    if let Some(user) = username {
        let prefixed = client_id == user
            || client_id
                .strip_prefix(user)
                .is_some_and(|rest| rest.starts_with(SEPARATOR));
        if !prefixed {
            return Err(IdentityRefusal::NotTheUsers);
        }
    }
    match users.and_then(|users| owner(client_id, users)) {
        Some(owner) if Some(owner) != username => Err(IdentityRefusal::OwnedByOther {
            owner: owner.to_string(),
        }),
        _ => Ok(()),
    }
}

/// A client id for a CONNECT that brought none: `<username>-<random>`, or
/// `veil-<random>` for an anonymous client. `None` when the system's random
/// source fails or the username leaves no room for the suffix.
pub fn assign(username: Option<&str>) -> Option<String> {
    let mut bytes = [0u8; 8];
    SystemRandom::new().fill(&mut bytes).ok()?;
    let random: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let id = match username {
        Some(user) => format!("{user}-{random}"),
        None => format!("veil-{random}"),
    };
    // A client id is a u16-length string on the wire.
    (id.len() <= usize::from(u16::MAX)).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(names: &[&str]) -> PasswordFile {
        // Any valid hash will do: only the names matter here.
        let hash = format!("$6${}${}==", "A".repeat(16), "A".repeat(86));
        let line = |n: &&str| format!("{n}:{hash}");
        let text: Vec<String> = names.iter().map(line).collect();
        PasswordFile::parse(&text.join("\n")).expect("valid test file")
    }

    #[test]
    fn a_user_may_use_its_name_and_its_name_followed_by_a_separator() {
        let pw = users(&["devA", "server-a"]);
        for id in ["devA", "devA-fetch", "devA-x-y", "devA-"] {
            assert_eq!(check(Some("devA"), id, Some(&pw)), Ok(()), "{id}");
        }
        for id in ["devAB", "xdevA", "", "devB", "DEVA"] {
            assert_eq!(
                check(Some("devA"), id, Some(&pw)),
                Err(IdentityRefusal::NotTheUsers),
                "{id}"
            );
        }
        assert_eq!(check(Some("server-a"), "server-a-a1", Some(&pw)), Ok(()));
        for id in ["devA/x", "devA-$SYS"] {
            assert_eq!(
                check(Some("devA"), id, Some(&pw)),
                Err(IdentityRefusal::ReservedCharacter),
                "{id}"
            );
        }
    }

    #[test]
    fn the_longest_registered_prefix_owns_an_id() {
        let pw = users(&["server", "server-a", "devA"]);
        assert_eq!(owner("server-a-fetch", &pw), Some("server-a"));
        assert_eq!(owner("server-b", &pw), Some("server"));
        assert_eq!(owner("nobody-x", &pw), None);
        // "server" is a prefix of "server-a" but may not take its ids.
        for id in ["server-a", "server-a-a1", "server-a-x-y"] {
            assert_eq!(
                check(Some("server"), id, Some(&pw)),
                Err(IdentityRefusal::OwnedByOther {
                    owner: "server-a".into()
                }),
                "{id}"
            );
        }
        assert_eq!(check(Some("server"), "server-b", Some(&pw)), Ok(()));
        // Anonymous clients may use no registered user's id.
        assert!(check(None, "devA-1", Some(&pw)).is_err());
        assert_eq!(check(None, "sensor-1", Some(&pw)), Ok(()));
        // Without a password file only the prefix rule applies.
        assert_eq!(check(Some("server"), "server-a", None), Ok(()));
    }

    #[test]
    fn wildcards_in_either_name_are_refused() {
        let pw = users(&["devA", "a+b"]);
        assert_eq!(
            check(Some("a+b"), "a+b", Some(&pw)),
            Err(IdentityRefusal::WildcardUsername)
        );
        assert_eq!(
            check(Some("devA"), "devA-#", Some(&pw)),
            Err(IdentityRefusal::WildcardClientId)
        );
        assert_eq!(
            check(None, "+", None),
            Err(IdentityRefusal::WildcardClientId)
        );
    }

    #[test]
    fn assigned_ids_pass_the_rule() {
        let pw = users(&["devA"]);
        let id = assign(Some("devA")).expect("random source");
        assert!(id.starts_with("devA-") && id.len() == 5 + 16, "{id}");
        assert_eq!(check(Some("devA"), &id, Some(&pw)), Ok(()));
        assert_ne!(assign(Some("devA")), Some(id));
        let anon = assign(None).expect("random source");
        assert_eq!(check(None, &anon, Some(&pw)), Ok(()));
    }
}
