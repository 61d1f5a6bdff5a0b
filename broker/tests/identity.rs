//! The gate's identity rules over real TCP: client ids bound to usernames,
//! ids assigned for empty ones, shared-subscription groups named by the ACL.
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

mod common;

use std::time::Duration;

use common::v5::V5Client;
use common::*;
use rumqttc::{MqttOptions, QoS, SubscribeReasonCode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

fn exact(addr: std::net::SocketAddr, id: &str, user: &str) -> MqttOptions {
    let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_credentials(user, demo_password(user));
    opts.set_keep_alive(Duration::from_secs(30));
    opts
}

#[tokio::test]
async fn a_device_cannot_take_a_servers_client_id() {
    let broker = start(example_config()).await;
    let addr = broker.local_addr();
    let mut server_a = V4Client::spawn(exact(addr, "server-a-w1", "server-a"));
    server_a.connack().await.expect("server A connects");
    for id in [
        "server-a-w1",
        "server-a",
        "server-b",
        "devB",
        "devAx",
        "devA-+",
    ] {
        let err = V4Client::spawn(exact(addr, id, "devA"))
            .connack()
            .await
            .expect_err(id);
        assert!(err.contains("BadClientId"), "{id}: {err}");
    }
    for id in ["devA", "devA-2", "devA-x-y"] {
        let mut ok = V4Client::spawn(exact(addr, id, "devA"));
        assert!(ok.connack().await.is_ok(), "{id}");
        ok.disconnect().await;
    }
    // Server A was never taken over: it still publishes and receives.
    let ack = server_a.subscribe("veil/v1/dev/+/frame").await;
    assert_eq!(
        ack.return_codes,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let mut dev = V4Client::connect(addr, "frame", "devA", true).await;
    dev.publish_acked("veil/v1/dev/devA/frame", vec![1], false)
        .await;
    let got = server_a.publish_received().await.expect("frame delivered");
    assert_eq!(got.topic, "veil/v1/dev/devA/frame");
    assert!(logs().contains("client id refused"));
    broker.shutdown().await;
}

#[tokio::test]
async fn an_empty_client_id_gets_one_bound_to_the_user() {
    let broker = start(example_config()).await;
    let addr = broker.local_addr();
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    let mut opts = rumqttc::v5::MqttOptions::new("", addr.ip().to_string(), addr.port());
    opts.set_credentials("devB", demo_password("devB"));
    let mut c = V5Client::spawn(opts);
    let props = c
        .expect(|p| match p {
            P5::ConnAck(a) => Some(a.properties.clone()),
            _ => None,
        })
        .await
        .expect("connected")
        .expect("CONNACK properties");
    let id = props.assigned_client_identifier.expect("an assigned id");
    assert!(id.starts_with("devB-") && id.len() == 5 + 16, "{id}");
    // The violation log names the assigned id, not an empty one.
    c.client
        .publish(
            "veil/v1/dev/devA/frame",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            vec![0],
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("ACL violation") && l.contains(&format!("client_id={id}"))),
        "no violation line with {id}"
    );

    // 3.1.1: an empty id with a persistent session is refused (return code 2).
    let mut s = TcpStream::connect(addr).await.unwrap();
    let user = b"devB";
    let pass = b"demo-devB";
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0xC0, 0, 30, 0, 0];
    body.extend_from_slice(&(user.len() as u16).to_be_bytes());
    body.extend_from_slice(user);
    body.extend_from_slice(&(pass.len() as u16).to_be_bytes());
    body.extend_from_slice(pass);
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    s.write_all(&packet).await.unwrap();
    let mut ack = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut ack))
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(ack, [0x20, 2, 0, 2]);
    broker.shutdown().await;
}

#[tokio::test]
async fn shared_groups_must_be_named_by_the_acl() {
    let broker = start(example_config()).await;
    let addr = broker.local_addr();
    let mut a = V4Client::connect(addr, "w9", "server-a", true).await;
    let ack = a.subscribe("$share/elsewhere/veil/v1/dev/+/frame").await;
    assert_eq!(ack.return_codes, vec![SubscribeReasonCode::Failure]);
    let ack = a.subscribe("$share/veil-a/veil/v1/dev/+/frame").await;
    assert_eq!(
        ack.return_codes,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    broker.shutdown().await;
}
