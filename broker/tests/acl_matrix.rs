//! The whole topic/ACL matrix of config/acl, checked at the ACL-engine
//! level: every (principal, topic, action) cell is tried, and each must be
//! allowed exactly when the topic map in the design says so.
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

use veil_broker::{AclFile, Identity, PasswordFile};

const DEVICES: [&str; 2] = ["devA", "devB"];
const PRINCIPALS: [&str; 4] = ["devA", "devB", "server-a", "server-b"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Publish,
    Read,
}

/// The topic map, written independently of config/acl: who may write and
/// who may read each concrete topic.
fn expected(principal: &str, topic: &str, action: Action) -> bool {
    let is_device = DEVICES.contains(&principal);
    let levels: Vec<&str> = topic.split('/').collect();
    match (levels.as_slice(), action) {
        (["veil", "v1", "pub", "a", "key"], Action::Publish) => principal == "server-a",
        (["veil", "v1", "pub", "b", "key"], Action::Publish) => principal == "server-b",
        (["veil", "v1", "pub", "models", _], Action::Publish) => principal == "server-a",
        (["veil", "v1", "pub", ..], Action::Read) => true,
        (["veil", "v1", "dev", dev, rest @ ..], action) => {
            let own = is_device && principal == *dev;
            match (rest, action) {
                (["session", "a"], Action::Publish) => own,
                (["session", "a"], Action::Read) => principal == "server-a",
                (["session", "b"], Action::Publish) => own,
                (["session", "b"], Action::Read) => principal == "server-b",
                (["frame"], Action::Publish) => own,
                (["frame"], Action::Read) => principal == "server-a",
                (["result"], Action::Publish) => principal == "server-b",
                (["result"], Action::Read) => own,
                (["ack"], Action::Publish) => own,
                (["ack"], Action::Read) => principal == "server-b",
                _ => false,
            }
        }
        (["veil", "v1", "ab", ..], Action::Publish) => principal == "server-a",
        (["veil", "v1", "ab", ..], Action::Read) => principal == "server-b",
        (["veil", "v1", "ba", ..], Action::Publish) => principal == "server-b",
        (["veil", "v1", "ba", ..], Action::Read) => principal == "server-a",
        _ => false,
    }
}

fn topics() -> Vec<String> {
    let mut t = vec![
        "veil/v1/pub/a/key".to_string(),
        "veil/v1/pub/b/key".to_string(),
        "veil/v1/pub/models/pima".to_string(),
        "veil/v1/pub/models/mnist".to_string(),
        "veil/v1/ab/round/7".to_string(),
        "veil/v1/ab/request".to_string(),
        "veil/v1/ba/reply/worker-1".to_string(),
        "veil/v1/ba/masks".to_string(),
        "veil/v1/other".to_string(),
        "veil/v2/pub/a/key".to_string(),
    ];
    for d in DEVICES {
        for leaf in ["session/a", "session/b", "frame", "result", "ack", "status"] {
            t.push(format!("veil/v1/dev/{d}/{leaf}"));
        }
    }
    t
}

fn load() -> AclFile {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/acl");
    let text = std::fs::read_to_string(path).expect("config/acl readable");
    AclFile::parse(&text).expect("config/acl parses")
}

fn who(principal: &str) -> Identity {
    Identity {
        username: Some(principal.to_string()),
        client_id: format!("{principal}-client"),
    }
}

#[test]
fn every_cell_of_the_topic_matrix() {
    let acl = load();
    let mut forbidden_tried = 0;
    let mut allowed_tried = 0;
    for principal in PRINCIPALS {
        let c = acl.for_client(&who(principal));
        for topic in topics() {
            for action in [Action::Publish, Action::Read] {
                let want = expected(principal, &topic, action);
                let got = match action {
                    Action::Publish => c.can_publish(&topic),
                    Action::Read => c.can_read(&topic),
                };
                assert_eq!(got, want, "{principal} {action:?} {topic}");
                // Subscribing to the exact topic follows read access.
                if action == Action::Read {
                    assert_eq!(
                        c.can_subscribe(&topic),
                        want,
                        "{principal} subscribe {topic}"
                    );
                }
                if want {
                    allowed_tried += 1;
                } else {
                    forbidden_tried += 1;
                }
            }
        }
    }
    assert!(forbidden_tried > 100 && allowed_tried > 20);
}

#[test]
fn wildcard_subscriptions_follow_the_same_matrix() {
    let acl = load();
    // (principal, filter, allowed)
    let cases = [
        ("server-a", "veil/v1/dev/+/frame", true),
        ("server-a", "$share/veil-a/veil/v1/dev/+/frame", true),
        ("server-a", "$share/a-workers/veil/v1/dev/+/frame", false),
        ("server-b", "$share/veil-a/veil/v1/dev/+/frame", false),
        ("devA", "$share/veil-a/veil/v1/dev/devA/frame", false),
        ("server-a", "veil/v1/dev/+/session/a", true),
        ("server-a", "veil/v1/dev/+/session/b", false),
        ("server-a", "veil/v1/dev/+/session/+", false),
        ("server-a", "veil/v1/dev/#", false),
        ("server-a", "veil/v1/ba/#", true),
        ("server-a", "$share/a-workers/veil/v1/ba/+", false),
        ("server-a", "veil/v1/ab/#", false),
        ("server-a", "veil/v1/pub/#", true),
        ("server-b", "veil/v1/dev/+/session/b", true),
        ("server-b", "veil/v1/dev/+/session/a", false),
        ("server-b", "veil/v1/dev/+/ack", true),
        ("server-b", "veil/v1/dev/+/frame", false),
        ("server-b", "veil/v1/dev/+/result", false),
        // No ACL line names a group for B.
        ("server-b", "$share/b-workers/veil/v1/ab/#", false),
        ("server-b", "veil/v1/ba/#", false),
        ("devA", "veil/v1/dev/devA/result", true),
        ("devA", "veil/v1/dev/+/result", false),
        ("devA", "veil/v1/dev/devB/#", false),
        ("devA", "veil/v1/dev/devA/#", false),
        ("devA", "veil/v1/pub/+/key", true),
        ("devA", "#", false),
        ("devA", "veil/v1/#", false),
        ("devB", "$share/x/veil/v1/dev/devA/result", false),
    ];
    for (principal, filter, allowed) in cases {
        let c = acl.for_client(&who(principal));
        assert_eq!(
            c.can_subscribe(filter),
            allowed,
            "{principal} subscribe {filter}"
        );
    }
}

#[test]
fn unknown_and_anonymous_clients_get_nothing_beyond_public_reads() {
    let acl = load();
    let anon = acl.for_client(&Identity {
        username: None,
        client_id: "x".into(),
    });
    let stranger = acl.for_client(&who("devZ"));
    for topic in topics() {
        assert!(!anon.can_publish(&topic), "anonymous publish {topic}");
        if topic.starts_with("veil/v1/dev/") {
            assert!(!stranger.can_read(&topic), "devZ read {topic}");
            assert!(!stranger.can_publish(&topic), "devZ publish {topic}");
        }
    }
}

/// Mosquitto denies a client whose username or client id holds `+` or `#`
/// everything, its `user` section included; the gate refuses such names at
/// CONNECT (tests/identity.rs) and the ACL grants them nothing as well.
#[test]
fn wildcard_names_get_nothing_from_config_acl() {
    let acl = load();
    for principal in PRINCIPALS {
        for client_id in [format!("{principal}-+"), format!("{principal}-#")] {
            let c = acl.for_client(&Identity {
                username: Some(principal.to_string()),
                client_id: client_id.clone(),
            });
            for topic in topics() {
                assert!(!c.can_publish(&topic), "{client_id} publish {topic}");
                assert!(!c.can_read(&topic), "{client_id} read {topic}");
            }
        }
        let c = acl.for_client(&Identity {
            username: Some(format!("{principal}+")),
            client_id: principal.to_string(),
        });
        for topic in topics() {
            assert!(!c.can_publish(&topic), "{principal}+ publish {topic}");
            assert!(!c.can_read(&topic), "{principal}+ read {topic}");
        }
    }
}

#[test]
fn example_passwords_are_the_documented_demo_ones() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/passwords");
    let pw = PasswordFile::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(pw.len(), 4);
    for user in PRINCIPALS {
        assert!(pw.verify(user, format!("demo-{user}").as_bytes()), "{user}");
        assert!(!pw.verify(user, b"demo"), "{user}");
    }
}
