//! Reloading the password and ACL files (what `veil broker` does on
//! SIGHUP), over real MQTT: who may connect afterwards, what connected
//! clients may still do, and that a broken file changes nothing.
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use rumqttc::{ConnectReturnCode, SubscribeReasonCode};
use veil_broker::{BrokerConfig, BrokerError, PasswordFile, ReloadSummary};

const SHORT: Duration = Duration::from_millis(500);

fn password_line(user: &str) -> String {
    PasswordFile::line(user, &demo_password(user), [7; 12])
}

fn write_passwords(path: &Path, users: &[&str]) {
    let text: String = users
        .iter()
        .map(|u| format!("{}\n", password_line(u)))
        .collect();
    std::fs::write(path, text).unwrap();
}

/// Connects `user` with its demo password; the CONNACK code, or the
/// client's error when the broker refused.
async fn try_connect(addr: std::net::SocketAddr, id: &str, user: &str) -> Result<V4Client, String> {
    let mut client = V4Client::spawn(v4_options(addr, id, Some(user)));
    match client.connack().await {
        Ok(ack) if ack.code == ConnectReturnCode::Success => Ok(client),
        Ok(ack) => Err(format!("{:?}", ack.code)),
        Err(e) => Err(e),
    }
}

/// A broker on `passwords` (with `users`) and `acl` (with [`ACL`]).
async fn start_with(passwords: &Path, users: &[&str], acl: &Path) -> veil_broker::BrokerHandle {
    write_passwords(passwords, users);
    std::fs::write(acl, ACL).unwrap();
    start(BrokerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        password_file: Some(passwords.to_path_buf()),
        acl_file: Some(acl.to_path_buf()),
        ..BrokerConfig::default()
    })
    .await
}

fn refusal(outcome: Result<V4Client, String>) -> String {
    match outcome {
        Ok(_) => panic!("connected"),
        Err(e) => e,
    }
}

const ACL: &str = "pattern read veil/v1/dev/%u/result\n\
                   pattern write veil/v1/dev/%u/frame\n\
                   user server-a\ntopic read veil/v1/dev/+/frame\n";

#[tokio::test]
async fn added_users_connect_removed_ones_cannot_and_connected_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let (passwords, acl) = (dir.path().join("passwords"), dir.path().join("acl"));
    let broker = start_with(&passwords, &["server-a", "dev-old"], &acl).await;
    let addr = broker.local_addr();

    let err = refusal(try_connect(addr, "before", "dev-new").await);
    assert!(err.contains("NotAuthorized"), "{err}");
    let mut old = try_connect(addr, "kept", "dev-old").await.unwrap();
    let mut server = try_connect(addr, "r", "server-a").await.unwrap();
    server.subscribe("veil/v1/dev/+/frame").await;

    write_passwords(&passwords, &["server-a", "dev-new"]);
    let summary = broker.reload().unwrap();
    assert_eq!(
        summary,
        ReloadSummary {
            users: Some(2),
            users_added: 1,
            users_removed: 1,
            acl_rules: Some(3),
            acl_rules_before: Some(3),
            acl_user_sections: Some(1),
        }
    );
    assert!(logs().contains("password and ACL files reloaded: 2 users (+1 -1), 3 ACL rules"));

    let mut new = try_connect(addr, "after", "dev-new").await.unwrap();
    let err = refusal(try_connect(addr, "again", "dev-old").await);
    assert!(err.contains("NotAuthorized"), "{err}");

    // As in Mosquitto, a connection authenticated before the reload is not
    // checked again: the removed user's open connection still publishes
    // what the ACL allows it.
    old.publish_acked("veil/v1/dev/dev-old/frame", b"old".to_vec(), false)
        .await;
    new.publish_acked("veil/v1/dev/dev-new/frame", b"new".to_vec(), false)
        .await;
    let got = server.publishes_until(2, SHORT).await;
    let topics: Vec<&str> = got.iter().map(|p| p.topic.as_str()).collect();
    assert_eq!(
        topics,
        vec!["veil/v1/dev/dev-old/frame", "veil/v1/dev/dev-new/frame"]
    );

    // Cutting it off takes an ACL deny, which existing connections obey
    // from the reload on.
    std::fs::write(&acl, format!("{ACL}user dev-old\ntopic deny #\n")).unwrap();
    let summary = broker.reload().unwrap();
    assert_eq!(summary.acl_rules, Some(4));
    assert_eq!(summary.acl_rules_before, Some(3));
    assert_eq!((summary.users_added, summary.users_removed), (0, 0));
    old.publish_acked("veil/v1/dev/dev-old/frame", b"old-2".to_vec(), false)
        .await;
    new.publish_acked("veil/v1/dev/dev-new/frame", b"new-2".to_vec(), false)
        .await;
    let got = server.publishes_until(1, SHORT).await;
    let payloads: Vec<&[u8]> = got.iter().map(|p| &p.payload[..]).collect();
    assert_eq!(payloads, vec![&b"new-2"[..]]);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_broken_file_is_refused_and_the_old_users_and_rules_stay() {
    let dir = tempfile::tempdir().unwrap();
    let (passwords, acl) = (dir.path().join("passwords"), dir.path().join("acl"));
    let broker = start_with(&passwords, &["server-a", "dev-one"], &acl).await;
    let addr = broker.local_addr();

    // A good password file with a broken ACL: neither is taken, so
    // `dev-two` stays out and `dev-one` keeps its rules.
    write_passwords(&passwords, &["server-a", "dev-one", "dev-two"]);
    std::fs::write(&acl, format!("{ACL}topic reed veil/#\n")).unwrap();
    let err = broker.reload().unwrap_err();
    assert!(matches!(err, BrokerError::Acl { .. }), "{err:?}");
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(cause.contains("line 5"), "{cause}");
    let err = refusal(try_connect(addr, "x", "dev-two").await);
    assert!(err.contains("NotAuthorized"), "{err}");

    // A broken password file (a line with no hash), then a missing one.
    std::fs::write(&acl, ACL).unwrap();
    std::fs::write(
        &passwords,
        format!("{}\ndev-two\n", password_line("server-a")),
    )
    .unwrap();
    let err = broker.reload().unwrap_err();
    assert!(matches!(err, BrokerError::Passwords { .. }), "{err:?}");
    std::fs::remove_file(&passwords).unwrap();
    let err = broker.reload().unwrap_err();
    assert!(matches!(err, BrokerError::Read { .. }), "{err:?}");

    // Still the files from the start: dev-one connects and may read its
    // own results but not subscribe to frames; dev-two may not connect.
    let mut one = try_connect(addr, "y", "dev-one").await.unwrap();
    let ack = one.subscribe("veil/v1/dev/dev-one/result").await;
    assert_eq!(ack.return_codes.len(), 1);
    assert!(matches!(
        ack.return_codes[0],
        SubscribeReasonCode::Success(_)
    ));
    let ack = one.subscribe("veil/v1/dev/+/frame").await;
    assert_eq!(ack.return_codes, vec![SubscribeReasonCode::Failure]);
    let err = refusal(try_connect(addr, "z", "dev-two").await);
    assert!(err.contains("NotAuthorized"), "{err}");

    // Putting good files back works again.
    write_passwords(&passwords, &["server-a", "dev-one", "dev-two"]);
    let summary = broker.reload().unwrap();
    assert_eq!((summary.users, summary.users_added), (Some(3), 1));
    try_connect(addr, "w", "dev-two").await.unwrap();
    broker.shutdown().await;
}
