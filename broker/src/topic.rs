//! MQTT topic names and filters: validation, matching, and the two relations
//! the ACL engine needs between filters (coverage and intersection).
//!
//! All functions are pure and work level by level on `/`-separated strings.
//! The `$` rule of MQTT 3.1.1 §4.7.2 applies throughout: a wildcard in the
//! first level never matches a topic whose first level starts with `$`.

use thiserror::Error;

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopicError {
    /// A topic of zero length.
    #[error("empty topic")]
    Empty,
    /// A topic over 65,535 bytes.
    #[error("topic longer than 65535 bytes")]
    TooLong,
    /// A topic with U+0000.
    #[error("topic contains a NUL character")]
    Nul,
    /// A topic name (not a filter) with a wildcard.
    #[error("topic name contains a wildcard ('+' or '#')")]
    WildcardInName,
    /// `#` not alone in the last level.
    #[error("'#' must be the last level and stand alone")]
    BadMultiLevel,
    /// `+` sharing its level with other characters.
    #[error("'+' must stand alone in its level")]
    BadSingleLevel,
    /// A `$share/` filter without group or filter.
    #[error("malformed shared subscription (expected $share/<group>/<filter>)")]
    BadShare,
}

const MAX_TOPIC_LEN: usize = 65_535;

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// Checks a topic name as used in PUBLISH (no wildcards).
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    check_common(topic)?;
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a topic filter as used in SUBSCRIBE (without a `$share/` prefix).
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::BadMultiLevel);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::BadSingleLevel);
        }
    }
    Ok(())
}

/// Splits `$share/<group>/<filter>` into `(Some(group), filter)`; any other
/// filter comes back unchanged as `(None, filter)`. The inner filter is what
/// the ACL is checked against.
pub fn split_shared(filter: &str) -> Result<(Option<&str>, &str), TopicError> {
    let Some(rest) = filter.strip_prefix("$share/") else {
        return Ok((None, filter));
    };
    let (group, inner) = rest.split_once('/').ok_or(TopicError::BadShare)?;
    if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
        return Err(TopicError::BadShare);
    }
    Ok((Some(group), inner))
}

fn is_dollar(level: &str) -> bool {
    level.starts_with('$')
}

/// Does topic name `topic` match filter `filter`?
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    let mut first = true;
    loop {
        match (f.next(), t.next()) {
            (Some("#"), tl) => {
                // `#` also matches the parent level ("a/#" matches "a").
                return !(first && tl.is_some_and(is_dollar));
            }
            (Some("+"), Some(tl)) => {
                if first && is_dollar(tl) {
                    return false;
                }
            }
            (Some(fl), Some(tl)) => {
                if fl != tl {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
        first = false;
    }
}

/// Is every topic matched by `inner` also matched by `outer`?
///
/// This is how a SUBSCRIBE filter is checked against an ACL entry: the
/// subscription is allowed only when the entry grants read access to every
/// topic the subscription could ever deliver. Like [`intersects`], this
/// counts the zero-length topic (so `/+/#` does not cover `/#`), erring
/// towards refusal.
pub fn covers(outer: &str, inner: &str) -> bool {
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    let mut first = true;
    loop {
        match (o.next(), i.next()) {
            (Some("#"), il) => {
                // A literal `$x` first level of `inner` is outside a
                // first-level wildcard; a wildcard there already excludes `$`.
                return !(first && il.is_some_and(|l| l != "+" && l != "#" && is_dollar(l)));
            }
            (Some("+"), Some(il)) => {
                if il == "#" {
                    return false;
                }
                if first && il != "+" && is_dollar(il) {
                    return false;
                }
            }
            (Some(ol), Some(il)) => {
                if ol != il {
                    return false;
                }
            }
            (None, None) => return true,
            // `inner` ended: the only topic left is the parent, which
            // `outer` matches only if its remainder is a lone `#`.
            (Some(_), None) => return false,
            (None, Some(_)) => return false,
        }
        first = false;
    }
}

/// Is there at least one topic matched by both filters?
///
/// The zero-length topic counts here although it is not a valid topic name
/// (`+` and `/#` meet only there), which errs towards refusing: the ACL uses
/// this to refuse subscriptions that could reach a denied topic.
pub fn intersects(a: &str, b: &str) -> bool {
    let mut x = a.split('/');
    let mut y = b.split('/');
    let mut first = true;
    loop {
        match (x.next(), y.next()) {
            (Some("#"), other) | (other, Some("#")) => {
                // The `#` side can stop here or go on; the other side only
                // fails to meet it on the `$` rule in the first level.
                return !matches!(other, Some(l) if first && l != "+" && l != "#" && is_dollar(l));
            }
            (Some(xl), Some(yl)) => {
                let ok = match (xl, yl) {
                    ("+", "+") => true,
                    ("+", l) | (l, "+") => !(first && is_dollar(l)),
                    (p, q) => p == q,
                };
                if !ok {
                    return false;
                }
            }
            (None, None) => return true,
            // One side ended; the other must be able to end too, which only
            // a trailing `#` can (handled above when it comes up next).
            (Some(_), None) | (None, Some(_)) => return false,
        }
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_and_filters_are_validated() {
        assert!(validate_topic_name("veil/v1/pub/a/key").is_ok());
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(
            validate_topic_name("a/+/b"),
            Err(TopicError::WildcardInName)
        );
        assert_eq!(validate_topic_name("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a\0b"), Err(TopicError::Nul));
        assert!(validate_filter("a/+/b/#").is_ok());
        assert!(validate_filter("#").is_ok());
        assert!(validate_filter("+").is_ok());
        assert!(validate_filter("a//b").is_ok());
        assert_eq!(validate_filter("a/#/b"), Err(TopicError::BadMultiLevel));
        assert_eq!(validate_filter("a/b#"), Err(TopicError::BadMultiLevel));
        assert_eq!(validate_filter("a/b+"), Err(TopicError::BadSingleLevel));
    }

    #[test]
    fn shared_subscriptions_are_split() {
        assert_eq!(split_shared("a/b"), Ok((None, "a/b")));
        assert_eq!(
            split_shared("$share/workers/veil/v1/dev/+/frame"),
            Ok((Some("workers"), "veil/v1/dev/+/frame"))
        );
        assert_eq!(split_shared("$share/g"), Err(TopicError::BadShare));
        assert_eq!(split_shared("$share//a"), Err(TopicError::BadShare));
        assert_eq!(split_shared("$share/g/"), Err(TopicError::BadShare));
        assert_eq!(split_shared("$share/g+/a"), Err(TopicError::BadShare));
    }

    #[test]
    fn matching_follows_the_spec_examples() {
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(matches("sport/#", "sport"));
        assert!(matches("#", "a/b/c"));
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
    }

    #[test]
    fn coverage_examples() {
        assert!(covers("veil/v1/dev/+/frame", "veil/v1/dev/+/frame"));
        assert!(covers("veil/v1/dev/+/frame", "veil/v1/dev/devA/frame"));
        assert!(!covers("veil/v1/dev/devA/frame", "veil/v1/dev/+/frame"));
        assert!(covers("veil/v1/ab/#", "veil/v1/ab/#"));
        assert!(covers("veil/v1/ab/#", "veil/v1/ab/+/x"));
        assert!(covers("veil/v1/ab/#", "veil/v1/ab"));
        assert!(!covers("veil/v1/ab/+", "veil/v1/ab/#"));
        assert!(!covers("veil/v1/ab/+/#", "veil/v1/ab/#"));
        assert!(!covers("veil/v1/dev/+/frame", "veil/v1/#"));
        assert!(!covers("#", "$SYS/x"));
        assert!(covers("#", "+/x"));
        assert!(covers("$SYS/#", "$SYS/+"));
    }

    #[test]
    fn intersection_examples() {
        assert!(intersects("a/+/c", "a/b/+"));
        assert!(intersects("a/#", "a"));
        assert!(intersects("#", "a/b"));
        assert!(!intersects("a/+", "a"));
        assert!(!intersects("a/b", "a/c"));
        assert!(!intersects("#", "$SYS/x"));
        assert!(!intersects("+/x", "$SYS/x"));
        assert!(intersects("+/x", "+/+"));
        assert!(intersects("$SYS/#", "$SYS/+"));
    }

    /// A small universe of levels so that brute force over all topics up to a
    /// few levels decides the relations exactly.
    const LEVELS: &[&str] = &["a", "b", "", "$s"];

    fn all_topics(max_levels: usize) -> Vec<String> {
        let mut out = all_topics_and_empty(max_levels);
        out.retain(|t| !t.is_empty());
        out
    }

    fn all_topics_and_empty(max_levels: usize) -> Vec<String> {
        let mut out: Vec<String> = LEVELS.iter().map(|l| l.to_string()).collect();
        let mut frontier = out.clone();
        for _ in 1..max_levels {
            let mut next = Vec::new();
            for t in &frontier {
                for l in LEVELS {
                    next.push(format!("{t}/{l}"));
                }
            }
            out.extend(next.iter().cloned());
            frontier = next;
        }
        out
    }

    fn filter_strategy() -> impl Strategy<Value = String> {
        let level = prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just(String::new()),
            Just("$s".to_string()),
            Just("+".to_string()),
        ];
        (prop::collection::vec(level, 1..4), any::<bool>())
            .prop_map(|(mut levels, hash)| {
                if hash {
                    levels.push("#".to_string());
                }
                levels.join("/")
            })
            .prop_filter("valid, non-empty filter", |f| validate_filter(f).is_ok())
    }

    proptest! {
        // Filters have at most 4 levels, so topics of up to 5 levels witness
        // every difference (a `#` needs one level past the filter).
        #[test]
        fn covers_agrees_with_brute_force(outer in filter_strategy(), inner in filter_strategy()) {
            let universe = all_topics_and_empty(5);
            let brute = universe
                .iter()
                .filter(|t| matches(&inner, t))
                .all(|t| matches(&outer, t));
            prop_assert_eq!(covers(&outer, &inner), brute, "outer={} inner={}", outer, inner);
        }

        #[test]
        fn intersects_agrees_with_brute_force(a in filter_strategy(), b in filter_strategy()) {
            let universe = all_topics_and_empty(5);
            let brute = universe.iter().any(|t| matches(&a, t) && matches(&b, t));
            prop_assert_eq!(intersects(&a, &b), brute, "a={} b={}", a, b);
            prop_assert_eq!(intersects(&a, &b), intersects(&b, &a));
        }

        #[test]
        fn a_topic_name_is_covered_exactly_when_it_matches(f in filter_strategy(), t in prop::sample::select(all_topics(4))) {
            prop_assert_eq!(covers(&f, &t), matches(&f, &t));
        }
    }
}
