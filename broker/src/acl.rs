//! Mosquitto `acl_file` parsing and the access decisions built on it.
//!
//! The file format is Mosquitto 2.0's: `user <name>` starts a section,
//! `topic [read|write|readwrite|deny] <topic>` adds an entry to the current
//! section (entries before any `user` line belong to anonymous clients),
//! `pattern [access] <topic>` adds an entry for every client with `%u` and
//! `%c` standing for a whole level holding the username or client id, and
//! lines starting with `#` are comments.
//!
//! Decisions (see the crate documentation for how they differ from Mosquitto):
//! - publish to `t`: no `deny` entry matches `t` and some write entry does;
//! - delivery of `t`: no `deny` entry matches `t` and some read entry does;
//! - subscribe to `f`: no `deny` entry can match a topic of `f` and some read
//!   entry matches every topic `f` can match.

use std::collections::HashMap;

use thiserror::Error;

use crate::topic;

/// Access granted by one ACL line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Access {
    fn reads(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }

    fn writes(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }
}

/// A syntax error in an ACL file, with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}: {reason}")]
pub struct AclError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong on it.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    access: Access,
    filter: String,
}

/// One level of a `pattern` topic.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternLevel {
    Literal(String),
    Username,
    ClientId,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    access: Access,
    levels: Vec<PatternLevel>,
}

/// A parsed `acl_file`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclFile {
    anonymous: Vec<Entry>,
    users: HashMap<String, Vec<Entry>>,
    patterns: Vec<Pattern>,
}

/// Who is asking: the authenticated username (None for anonymous clients)
/// and the MQTT client id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The authenticated username; `None` for anonymous clients.
    pub username: Option<String>,
    /// The MQTT client id.
    pub client_id: String,
}

impl AclFile {
    /// Parses the text of an ACL file.
    pub fn parse(text: &str) -> Result<AclFile, AclError> {
        let mut acl = AclFile::default();
        let mut current_user: Option<String> = None;
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let err = |reason: String| AclError {
                line: line_no,
                reason,
            };
            let line = raw.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = match line.split_once(' ') {
                Some((k, r)) => (k, r.trim()),
                None => (line, ""),
            };
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(err("missing username after 'user'".into()));
                    }
                    current_user = Some(rest.to_string());
                    acl.users.entry(rest.to_string()).or_default();
                }
                "topic" | "pattern" => {
                    let (access, topic_text) = parse_access_and_topic(rest).map_err(err)?;
                    if keyword == "topic" {
                        topic::validate_filter(topic_text)
                            .map_err(|e| err(format!("invalid topic '{topic_text}': {e}")))?;
                        let entry = Entry {
                            access,
                            filter: topic_text.to_string(),
                        };
                        match &current_user {
                            Some(user) => acl.users.entry(user.clone()).or_default().push(entry),
                            None => acl.anonymous.push(entry),
                        }
                    } else {
                        let levels = parse_pattern(topic_text).map_err(err)?;
                        acl.patterns.push(Pattern { access, levels });
                    }
                }
                other => return Err(err(format!("unknown keyword '{other}'"))),
            }
        }
        Ok(acl)
    }

    /// Number of `topic` and `pattern` lines, every section together.
    pub fn rule_count(&self) -> usize {
        self.anonymous.len()
            + self.users.values().map(Vec::len).sum::<usize>()
            + self.patterns.len()
    }

    /// Number of `user` sections.
    pub fn user_sections(&self) -> usize {
        self.users.len()
    }

    /// Resolves the entries that apply to one client: its user section (or
    /// the anonymous one) plus every pattern with `%u`/`%c` filled in.
    pub fn for_client(&self, who: &Identity) -> ClientAcl {
        // As in Mosquitto, a name holding a wildcard gets no access at all,
        // not even its user section's (the gate already refuses such
        // clients at CONNECT).
        let wildcard = |s: &str| s.contains(['+', '#']);
        if wildcard(&who.client_id) || who.username.as_deref().is_some_and(wildcard) {
            return ClientAcl {
                rules: Some(Vec::new()),
            };
        }
        let mut entries = match &who.username {
            Some(user) => self.users.get(user).cloned().unwrap_or_default(),
            None => self.anonymous.clone(),
        };
        // A '/' (or an empty name) cannot fill the single level its
        // placeholder stands for, so only the patterns using it are skipped.
        for pattern in &self.patterns {
            if let Some(filter) = pattern.substitute(who) {
                entries.push(Entry {
                    access: pattern.access,
                    filter,
                });
            }
        }
        ClientAcl {
            rules: Some(entries),
        }
    }
}

fn parse_access_and_topic(rest: &str) -> Result<(Access, &str), String> {
    if rest.is_empty() {
        return Err("missing topic".into());
    }
    // As in Mosquitto: a single word is the topic (readwrite); with more
    // words the first one must be an access keyword.
    let Some((first, topic_text)) = rest.split_once(' ') else {
        return Ok((Access::ReadWrite, rest));
    };
    let access = match first {
        "read" => Access::Read,
        "write" => Access::Write,
        "readwrite" => Access::ReadWrite,
        "deny" => Access::Deny,
        other => return Err(format!("invalid access type '{other}'")),
    };
    let topic_text = topic_text.trim();
    if topic_text.is_empty() {
        return Err("missing topic".into());
    }
    Ok((access, topic_text))
}

fn parse_pattern(text: &str) -> Result<Vec<PatternLevel>, String> {
    topic::validate_filter(text).map_err(|e| format!("invalid pattern '{text}': {e}"))?;
    text.split('/')
        .map(|level| match level {
            "%u" => Ok(PatternLevel::Username),
            "%c" => Ok(PatternLevel::ClientId),
            l if l.contains("%u") || l.contains("%c") => Err(format!(
                "'%u' and '%c' must fill a whole level in pattern '{text}'"
            )),
            l => Ok(PatternLevel::Literal(l.to_string())),
        })
        .collect()
}

impl Pattern {
    fn substitute(&self, who: &Identity) -> Option<String> {
        let fits_one_level = |s: &&str| !s.is_empty() && !s.contains('/');
        let mut parts = Vec::with_capacity(self.levels.len());
        for level in &self.levels {
            parts.push(match level {
                PatternLevel::Literal(l) => l.as_str(),
                PatternLevel::Username => who.username.as_deref().filter(fits_one_level)?,
                PatternLevel::ClientId => Some(who.client_id.as_str()).filter(fits_one_level)?,
            });
        }
        Some(parts.join("/"))
    }
}

/// The ACL entries of one connected client, ready for decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAcl {
    /// None when no `acl_file` is configured: everything is then allowed,
    /// as in Mosquitto.
    rules: Option<Vec<Entry>>,
}

impl ClientAcl {
    /// The decisions of a broker without an ACL file.
    pub fn allow_all() -> ClientAcl {
        ClientAcl { rules: None }
    }

    /// May this client publish to topic name `topic`?
    pub fn can_publish(&self, topic: &str) -> bool {
        self.decide_topic(topic, Access::writes)
    }

    /// May a message on topic name `topic` be delivered to this client?
    pub fn can_read(&self, topic: &str) -> bool {
        self.decide_topic(topic, Access::reads)
    }

    /// May this client subscribe to `filter`? An unparsable filter is
    /// refused. `$share/<group>/<inner>` needs read access to `<inner>`, as
    /// a plain subscription would, and also a read entry that names the
    /// group: `$share/<group>/<f>` (or `$share/+/<f>` for any group) with
    /// `<f>` covering `<inner>`; a deny entry on either form refuses it.
    pub fn can_subscribe(&self, filter: &str) -> bool {
        let Ok((group, inner)) = topic::split_shared(filter) else {
            return false;
        };
        if topic::validate_filter(inner).is_err() {
            return false;
        }
        match &self.rules {
            None => true,
            Some(entries) => {
                let denied = entries.iter().any(|e| {
                    e.access == Access::Deny
                        && (topic::intersects(&e.filter, inner)
                            || (group.is_some() && topic::intersects(&e.filter, filter)))
                });
                let reads = entries
                    .iter()
                    .any(|e| e.access.reads() && topic::covers(&e.filter, inner));
                let joins = group.is_none()
                    || entries.iter().any(|e| {
                        e.access.reads()
                            && e.filter.starts_with("$share/")
                            && topic::covers(&e.filter, filter)
                    });
                !denied && reads && joins
            }
        }
    }

    fn decide_topic(&self, topic: &str, grants: fn(Access) -> bool) -> bool {
        match &self.rules {
            None => true,
            Some(entries) => {
                let denied = entries
                    .iter()
                    .any(|e| e.access == Access::Deny && topic::matches(&e.filter, topic));
                !denied
                    && entries
                        .iter()
                        .any(|e| grants(e.access) && topic::matches(&e.filter, topic))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(user: Option<&str>, client: &str) -> Identity {
        Identity {
            username: user.map(str::to_string),
            client_id: client.to_string(),
        }
    }

    const SAMPLE: &str = "\
# anonymous clients
topic read public/#

user alice
topic readwrite alice/#
topic deny alice/secret
topic bob/inbox

user bob
topic read bob/#

pattern write devices/%u/out
pattern read devices/%u/in
pattern read clients/%c/#
";

    #[test]
    fn parses_sections_access_and_patterns() {
        let acl = AclFile::parse(SAMPLE).unwrap();
        assert_eq!(acl.anonymous.len(), 1);
        assert_eq!(acl.users["alice"].len(), 3);
        assert_eq!(acl.users["alice"][2].access, Access::ReadWrite);
        assert_eq!(acl.users["bob"].len(), 1);
        assert_eq!(acl.patterns.len(), 3);
    }

    #[test]
    fn anonymous_rules_apply_only_to_anonymous_clients() {
        let acl = AclFile::parse(SAMPLE).unwrap();
        let anon = acl.for_client(&who(None, "c1"));
        assert!(anon.can_read("public/news"));
        assert!(!anon.can_publish("public/news"));
        let alice = acl.for_client(&who(Some("alice"), "c2"));
        assert!(!alice.can_read("public/news"));
    }

    #[test]
    fn deny_wins_over_a_broader_grant() {
        let acl = AclFile::parse(SAMPLE).unwrap();
        let alice = acl.for_client(&who(Some("alice"), "c"));
        assert!(alice.can_publish("alice/notes"));
        assert!(!alice.can_publish("alice/secret"));
        assert!(!alice.can_read("alice/secret"));
        // The subscription could deliver the denied topic, so it is refused;
        // a narrower one that cannot is allowed.
        assert!(!alice.can_subscribe("alice/#"));
        assert!(alice.can_subscribe("alice/notes/+"));
    }

    #[test]
    fn patterns_substitute_username_and_client_id() {
        let acl = AclFile::parse(SAMPLE).unwrap();
        let dev = acl.for_client(&who(Some("dev7"), "dev7-client"));
        assert!(dev.can_publish("devices/dev7/out"));
        assert!(!dev.can_publish("devices/dev8/out"));
        assert!(!dev.can_publish("devices/dev7/in"));
        assert!(dev.can_read("devices/dev7/in"));
        assert!(dev.can_subscribe("devices/dev7/in"));
        assert!(!dev.can_subscribe("devices/+/in"));
        assert!(dev.can_read("clients/dev7-client/x/y"));
        assert!(!dev.can_read("clients/other/x"));
    }

    #[test]
    fn patterns_with_username_skip_anonymous_clients() {
        let acl = AclFile::parse(SAMPLE).unwrap();
        let anon = acl.for_client(&who(None, "c9"));
        assert!(!anon.can_publish("devices//out"));
        assert!(anon.can_read("clients/c9/a"));
    }

    #[test]
    fn wildcard_names_get_no_pattern_access() {
        let acl = AclFile::parse(SAMPLE).unwrap();
        for (user, client) in [("+", "c"), ("#", "c"), ("u", "+"), ("u", "a#")] {
            let c = acl.for_client(&who(Some(user), client));
            assert!(
                !c.can_publish(&format!("devices/{user}/out")),
                "{user} {client}"
            );
            assert!(
                !c.can_read(&format!("clients/{client}/z")),
                "{user} {client}"
            );
            assert!(!c.can_read("clients/c/z"), "{user} {client}");
        }
    }

    #[test]
    fn wildcard_names_lose_their_user_section_too() {
        let acl = AclFile::parse(SAMPLE).unwrap();
        for client in ["alice+", "#", "a/+/b"] {
            let c = acl.for_client(&who(Some("alice"), client));
            assert!(!c.can_publish("alice/notes"), "{client}");
            assert!(!c.can_subscribe("bob/inbox"), "{client}");
        }
        let anon = acl.for_client(&who(None, "+"));
        assert!(!anon.can_read("public/news"));
    }

    #[test]
    fn a_slash_in_a_name_disables_only_its_placeholder() {
        let acl = AclFile::parse(SAMPLE).unwrap();
        let c = acl.for_client(&who(Some("a/b"), "c"));
        assert!(!c.can_publish("devices/a/b/out"));
        assert!(c.can_read("clients/c/z"));
        let c = acl.for_client(&who(Some("u"), "x/y"));
        assert!(c.can_publish("devices/u/out"));
        assert!(!c.can_read("clients/x/y/z"));
    }

    #[test]
    fn an_empty_client_id_only_disables_client_id_patterns() {
        let acl = AclFile::parse(SAMPLE).unwrap();
        let c = acl.for_client(&who(Some("dev7"), ""));
        assert!(c.can_publish("devices/dev7/out"));
        assert!(!c.can_read("clients//x"));
    }

    #[test]
    fn shared_subscriptions_need_the_inner_filter_and_the_group() {
        let acl = AclFile::parse(
            "user srv\ntopic read jobs/+/in\ntopic read $share/workers/jobs/+/in\n\
             user any\ntopic read jobs/#\ntopic read $share/+/jobs/#\ntopic deny $share/spies/#\n\
             user plain\ntopic read jobs/#\n\
             user grouponly\ntopic read $share/workers/jobs/#\n",
        )
        .unwrap();
        let srv = acl.for_client(&who(Some("srv"), "srv-w1"));
        assert!(srv.can_subscribe("$share/workers/jobs/+/in"));
        assert!(srv.can_subscribe("$share/workers/jobs/x/in"));
        assert!(!srv.can_subscribe("$share/others/jobs/+/in"));
        assert!(!srv.can_subscribe("$share/workers/jobs/#"));
        assert!(!srv.can_subscribe("$share/workers"));
        let any = acl.for_client(&who(Some("any"), "any"));
        assert!(any.can_subscribe("$share/g1/jobs/a"));
        assert!(any.can_subscribe("$share/g2/jobs/#"));
        assert!(!any.can_subscribe("$share/spies/jobs/a"));
        // Read access alone no longer admits a client to a group.
        let plain = acl.for_client(&who(Some("plain"), "plain"));
        assert!(plain.can_subscribe("jobs/a"));
        assert!(!plain.can_subscribe("$share/workers/jobs/a"));
        // Nor does naming the group without read access to its topics.
        let group_only = acl.for_client(&who(Some("grouponly"), "grouponly"));
        assert!(!group_only.can_subscribe("$share/workers/jobs/a"));
        assert!(!group_only.can_read("jobs/a"));
    }

    #[test]
    fn unknown_users_get_only_patterns() {
        let acl = AclFile::parse(SAMPLE).unwrap();
        let c = acl.for_client(&who(Some("mallory"), "m"));
        assert!(!c.can_read("public/x"));
        assert!(!c.can_read("bob/x"));
        assert!(c.can_publish("devices/mallory/out"));
    }

    #[test]
    fn no_acl_file_allows_everything() {
        assert!(ClientAcl::allow_all().can_publish("any/thing"));
        assert!(ClientAcl::allow_all().can_subscribe("#"));
        assert!(!ClientAcl::allow_all().can_subscribe("a/#/b"));
    }

    #[test]
    fn dollar_topics_need_dollar_rules() {
        let acl = AclFile::parse("user u\ntopic #\ntopic read $SYS/#\n").unwrap();
        let u = acl.for_client(&who(Some("u"), "c"));
        assert!(u.can_publish("a/b"));
        assert!(!u.can_publish("$SYS/x"));
        assert!(u.can_read("$SYS/x"));
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let cases = [
            ("user\n", 1, "missing username"),
            ("topic\n", 1, "missing topic"),
            ("# c\ntopic reed a/b\n", 2, "invalid access type"),
            ("topic read a/#/b\n", 1, "invalid topic"),
            ("pattern read dev_%u/x\n", 1, "whole level"),
            ("subscribe a\n", 1, "unknown keyword"),
        ];
        for (text, line, reason) in cases {
            let e = AclFile::parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text}");
            assert!(e.reason.contains(reason), "{text}: {}", e.reason);
        }
    }

    #[test]
    fn topics_may_contain_spaces_after_the_access_word() {
        let acl = AclFile::parse("user u\ntopic read a b/c\n").unwrap();
        let u = acl.for_client(&who(Some("u"), "c"));
        assert!(u.can_read("a b/c"));
    }
}
