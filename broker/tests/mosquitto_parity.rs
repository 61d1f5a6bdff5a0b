//! The same config/acl and config/passwords drive a real Mosquitto (when
//! one is installed): the delivery-level guarantees match the embedded
//! broker's. Skipped, with the reason printed, when `mosquitto` is absent.
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use rumqttc::{QoS, SubscribeReasonCode};
use veil_broker::mosquitto::Mosquitto;

/// Runs the same scenario against a broker at `addr`; returns whether the
/// refused subscription was reported as a failure in its SUBACK.
async fn scenario(addr: SocketAddr, tag: &str) -> bool {
    let mut bad = v4_options(addr, &format!("{tag}-bad"), None);
    bad.set_credentials("devA", "not-the-password");
    let err = V4Client::spawn(bad).connack().await.unwrap_err();
    assert!(
        err.contains("NotAuthorized") || err.contains("BadUserNamePassword"),
        "{tag}: {err}"
    );

    let mut server_a = V4Client::connect(addr, &format!("{tag}-server-a"), "server-a", true).await;
    server_a.subscribe("veil/v1/dev/+/frame").await;
    let mut dev = V4Client::connect(addr, &format!("{tag}-devA"), "devA", true).await;
    dev.publish_acked("veil/v1/dev/devB/frame", b"forged".to_vec(), false)
        .await;
    dev.publish_acked("veil/v1/dev/devA/frame", b"own".to_vec(), false)
        .await;
    let got = server_a
        .publishes_until(1, Duration::from_millis(500))
        .await;
    let topics: Vec<&str> = got.iter().map(|p| p.topic.as_str()).collect();
    assert_eq!(topics, vec!["veil/v1/dev/devA/frame"], "{tag}");

    let ack = dev.subscribe("veil/v1/dev/devB/result").await;
    let refused = ack.return_codes == vec![SubscribeReasonCode::Failure];
    let server_b = V4Client::connect(addr, &format!("{tag}-server-b"), "server-b", true).await;
    server_b
        .client
        .publish(
            "veil/v1/dev/devB/result",
            QoS::AtLeastOnce,
            false,
            b"B only".to_vec(),
        )
        .await
        .unwrap();
    assert!(
        dev.publishes_within(Duration::from_millis(500))
            .await
            .is_empty(),
        "{tag}: devA received devB's result"
    );
    refused
}

#[tokio::test]
async fn mosquitto_and_the_embedded_broker_enforce_the_same_files() {
    let Some(bin) = Mosquitto::find() else {
        assert!(
            !in_ci(),
            "CI must install mosquitto (apt-get install mosquitto)"
        );
        eprintln!("skipped: no mosquitto binary (Debian: apt-get install mosquitto)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(
        &bin,
        dir.path(),
        &repo_config("acl"),
        &repo_config("passwords"),
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mosquitto_addr = mosquitto.addr();
    let broker = start(example_config()).await;

    let ours = scenario(broker.local_addr(), "parity-veil").await;
    let theirs = scenario(mosquitto_addr, "parity-mosq").await;
    drop(mosquitto);
    // The one documented difference: Mosquitto 2.0's acl_file grants every
    // SUBSCRIBE (2.0.11 does) and filters only deliveries.
    assert!(ours, "embedded broker reports the refused subscription");
    eprintln!("mosquitto reported the refused subscription in SUBACK: {theirs}");
    broker.shutdown().await;
}
