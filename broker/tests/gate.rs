//! End-to-end tests of the broker over real TCP on loopback, with rumqttc
//! clients and the repository's config/acl and config/passwords.
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

mod common;

use std::time::{Duration, Instant};

use common::v5::V5Client;
use common::*;
use rumqttc::{ConnectReturnCode, Packet, QoS, SubscribeFilter, SubscribeReasonCode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use veil_broker::BrokerConfig;

const SHORT: Duration = Duration::from_millis(500);

#[tokio::test]
async fn passwords_from_mosquitto_passwd_authenticate() {
    let broker = start(BrokerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        password_file: Some(fixture("mosquitto_passwd")),
        ..BrokerConfig::default()
    })
    .await;
    let addr = broker.local_addr();
    for (user, pass) in [
        ("devA", "demo-devA-pass"),
        ("legacy", "legacy-pass"),
        ("iter1000", "pass-1000"),
    ] {
        let mut opts = v4_options(addr, &format!("{user}-auth-ok"), None);
        opts.set_credentials(user, pass);
        let mut c = V4Client::spawn(opts);
        let ack = c.connack().await.unwrap_or_else(|e| panic!("{user}: {e}"));
        assert_eq!(ack.code, ConnectReturnCode::Success, "{user}");
    }
    for (id, user, pass) in [
        ("auth-bad-pass", Some("devA"), "wrong-password-123"),
        ("auth-unknown", Some("mallory"), "demo-devA-pass"),
        ("auth-none", None, ""),
    ] {
        let mut opts = v4_options(addr, id, None);
        if let Some(user) = user {
            opts.set_credentials(user, pass);
        }
        let err = V4Client::spawn(opts).connack().await.unwrap_err();
        assert!(err.contains("NotAuthorized"), "{id}: {err}");
    }
    let logs = logs();
    assert!(logs.contains("authentication failed"));
    assert!(logs.contains("auth-bad-pass"));
    assert!(
        !logs.contains("wrong-password-123"),
        "password leaked to logs"
    );
    assert!(!logs.contains("FUyRxKVzwsfZ"), "hash leaked to logs");

    let mut opts = rumqttc::v5::MqttOptions::new("auth-v5-bad", "127.0.0.1", addr.port());
    opts.set_credentials("devA", "nope");
    let mut c = V5Client::spawn(opts);
    let err = c.next().await.unwrap_err();
    assert!(err.contains("NotAuthorized"), "{err}");
    broker.shutdown().await;
}

#[tokio::test]
async fn refused_subscriptions_get_failure_codes_and_allowed_ones_still_work() {
    let broker = start(example_config()).await;
    let addr = broker.local_addr();
    let mut dev = V4Client::connect(addr, "sub-devA", "devA", true).await;
    dev.client
        .subscribe_many(vec![
            SubscribeFilter::new("veil/v1/dev/devA/result".into(), QoS::AtLeastOnce),
            SubscribeFilter::new("veil/v1/dev/devB/result".into(), QoS::AtLeastOnce),
            SubscribeFilter::new("veil/v1/dev/+/result".into(), QoS::AtLeastOnce),
            SubscribeFilter::new("veil/v1/pub/a/key".into(), QoS::AtMostOnce),
        ])
        .await
        .unwrap();
    let ack = dev.suback().await.unwrap();
    assert_eq!(
        ack.return_codes,
        vec![
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Success(QoS::AtMostOnce),
        ]
    );
    // Only refusals: answered by the gate alone.
    let ack = dev.subscribe("veil/v1/dev/devB/result").await;
    assert_eq!(ack.return_codes, vec![SubscribeReasonCode::Failure]);

    let mut server_b = V4Client::connect(addr, "sub-server-b", "server-b", true).await;
    server_b
        .publish_acked("veil/v1/dev/devA/result", b"for A".to_vec(), false)
        .await;
    server_b
        .publish_acked("veil/v1/dev/devB/result", b"for B".to_vec(), false)
        .await;
    let got = dev.publishes_until(1, SHORT).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].topic, "veil/v1/dev/devA/result");
    assert_eq!(&got[0].payload[..], b"for A");

    // Server A may not watch B's half of the sessions.
    let mut server_a = V4Client::connect(addr, "sub-server-a", "server-a", true).await;
    let ack = server_a.subscribe("veil/v1/dev/+/session/b").await;
    assert_eq!(ack.return_codes, vec![SubscribeReasonCode::Failure]);
    let logs = logs();
    assert!(logs.contains("sub-server-a") && logs.contains("veil/v1/dev/+/session/b"));
    broker.shutdown().await;
}

#[tokio::test]
async fn refused_publishes_are_dropped_acknowledged_and_logged_without_payload() {
    let broker = start(example_config()).await;
    let addr = broker.local_addr();
    let mut server_a = V4Client::connect(addr, "drop-server-a", "server-a", true).await;
    assert_eq!(
        server_a.subscribe("veil/v1/dev/+/frame").await.return_codes,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let mut dev = V4Client::connect(addr, "drop-devA", "devA", true).await;
    // Publishing under another device's topic: PUBACK (so a 3.1.1 client
    // does not resend forever), but nothing is delivered.
    dev.publish_acked(
        "veil/v1/dev/devB/frame",
        b"SECRET-PAYLOAD-17".to_vec(),
        false,
    )
    .await;
    dev.publish_acked("veil/v1/dev/devA/frame", b"own frame".to_vec(), false)
        .await;
    let got = server_a.publishes_until(1, SHORT).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].topic, "veil/v1/dev/devA/frame");

    // QoS 2 refusal in 3.1.1: the gate completes PUBREC/PUBREL/PUBCOMP.
    dev.client
        .publish(
            "veil/v1/dev/devB/frame",
            QoS::ExactlyOnce,
            false,
            b"q2".to_vec(),
        )
        .await
        .unwrap();
    dev.expect(|p| matches!(p, Packet::PubComp(_)).then_some(()))
        .await
        .unwrap();
    assert!(server_a.publishes_within(SHORT).await.is_empty());

    let logs = logs();
    let line = logs
        .lines()
        .find(|l| l.contains("ACL violation") && l.contains("drop-devA"))
        .expect("violation logged");
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("devA") && line.contains("veil/v1/dev/devB/frame"),
        "{line}"
    );
    assert!(line.contains("publish"), "{line}");
    assert!(
        !logs.contains("SECRET-PAYLOAD-17"),
        "payload leaked to logs"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn mqtt5_clients_get_not_authorized_reason_codes() {
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason};
    use rumqttc::v5::mqttbytes::{QoS as Q5, v5::SubscribeReasonCode as S5};
    let broker = start(example_config()).await;
    let addr = broker.local_addr();
    let mut dev = V5Client::connect(addr, "v5-devA", "devA").await;
    dev.client
        .subscribe_many(vec![
            rumqttc::v5::mqttbytes::v5::Filter::new("veil/v1/dev/devB/result", Q5::AtLeastOnce),
            rumqttc::v5::mqttbytes::v5::Filter::new("veil/v1/dev/devA/result", Q5::AtLeastOnce),
        ])
        .await
        .unwrap();
    let codes = dev
        .expect(|p| match p {
            P5::SubAck(a) => Some(a.return_codes.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(codes, vec![S5::NotAuthorized, S5::Success(Q5::AtLeastOnce)]);

    dev.client
        .publish("veil/v1/ab/round/1", Q5::AtLeastOnce, false, b"x".to_vec())
        .await
        .unwrap();
    let reason = dev
        .expect(|p| match p {
            P5::PubAck(a) => Some(a.reason),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(reason, PubAckReason::NotAuthorized);

    // Allowed traffic still flows both ways over v5.
    let server_b = V5Client::connect(addr, "v5-server-b", "server-b").await;
    server_b
        .client
        .publish(
            "veil/v1/dev/devA/result",
            Q5::AtLeastOnce,
            false,
            b"r".to_vec(),
        )
        .await
        .unwrap();
    let got = dev.publishes_until(1, SHORT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].topic[..], b"veil/v1/dev/devA/result");
    broker.shutdown().await;
}

#[tokio::test]
async fn repeated_violations_disconnect_the_client() {
    let broker = start(BrokerConfig {
        max_violations: 3,
        ..example_config()
    })
    .await;
    let addr = broker.local_addr();
    let mut dev = V4Client::connect(addr, "kick-devA", "devA", true).await;
    for i in 0..2 {
        dev.publish_acked("veil/v1/dev/devB/ack", vec![i], false)
            .await;
    }
    // Still connected after two violations.
    dev.publish_acked("veil/v1/dev/devA/ack", vec![9], false)
        .await;
    dev.client
        .publish("veil/v1/dev/devB/ack", QoS::AtMostOnce, false, vec![3])
        .await
        .unwrap();
    let err = dev.closed().await;
    assert!(!err.is_empty());
    assert!(logs().contains("too many ACL violations"));

    // MQTT 5 gets a DISCONNECT with reason Not authorized first (rumqttc
    // reports it as the error that ends its event loop).
    let mut dev5 = V5Client::connect(addr, "kick-v5-devA", "devA").await;
    for f in ["veil/v1/#", "veil/v1/dev/devB/result", "#"] {
        dev5.client
            .subscribe(f, rumqttc::v5::mqttbytes::QoS::AtMostOnce)
            .await
            .unwrap();
    }
    let err = loop {
        if let Err(e) = dev5.next().await {
            break e;
        }
    };
    assert!(
        err.contains("disconnect") && err.contains("NotAuthorized"),
        "{err}"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn retained_messages_reach_later_subscribers() {
    let broker = start(example_config()).await;
    let addr = broker.local_addr();
    let mut server_a = V4Client::connect(addr, "ret-server-a", "server-a", true).await;
    server_a
        .publish_acked("veil/v1/pub/a/key", b"A's public key".to_vec(), true)
        .await;
    server_a
        .publish_acked("veil/v1/pub/models/pima", b"topology".to_vec(), true)
        .await;
    let mut dev = V4Client::connect(addr, "ret-devB", "devB", true).await;
    dev.subscribe("veil/v1/pub/#").await;
    let mut got = dev.publishes_until(2, SHORT).await;
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|p| p.retain));
    assert_eq!(got[0].topic, "veil/v1/pub/a/key");
    assert_eq!(&got[0].payload[..], b"A's public key");
    assert_eq!(got[1].topic, "veil/v1/pub/models/pima");
    broker.shutdown().await;
}

#[tokio::test]
async fn persistent_sessions_get_messages_queued_while_offline() {
    let broker = start(example_config()).await;
    let addr = broker.local_addr();
    let dev = {
        let mut dev = V4Client::connect(addr, "devA", "devA", false).await;
        dev.subscribe("veil/v1/dev/devA/result").await;
        dev
    };
    dev.disconnect().await;
    let mut server_b = V4Client::connect(addr, "pers-server-b", "server-b", true).await;
    for i in 0..5u8 {
        server_b
            .publish_acked("veil/v1/dev/devA/result", vec![i], false)
            .await;
    }
    let mut opts = v4_options(addr, "devA", Some("devA"));
    opts.set_clean_session(false);
    let mut dev = V4Client::spawn(opts);
    let ack = dev.connack().await.unwrap();
    assert!(ack.session_present);
    let got = dev.publishes_until(5, SHORT).await;
    let payloads: Vec<u8> = got.iter().map(|p| p.payload[0]).collect();
    assert_eq!(payloads, vec![0, 1, 2, 3, 4]);
    assert!(got.iter().all(|p| p.qos == QoS::AtLeastOnce));
    broker.shutdown().await;
}

#[tokio::test]
async fn shared_subscriptions_split_frames_between_workers() {
    let broker = start(example_config()).await;
    let addr = broker.local_addr();
    let mut w1 = V4Client::connect(addr, "share-a-1", "server-a", true).await;
    let mut w2 = V4Client::connect(addr, "share-a-2", "server-a", true).await;
    for w in [&mut w1, &mut w2] {
        let ack = w.subscribe("$share/veil-a/veil/v1/dev/+/frame").await;
        assert_eq!(
            ack.return_codes,
            vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );
    }
    let mut dev = V4Client::connect(addr, "share-devA", "devA", true).await;
    for i in 0..20u8 {
        dev.publish_acked("veil/v1/dev/devA/frame", vec![i], false)
            .await;
    }
    let window = Duration::from_secs(2);
    let (a, b) = tokio::join!(w1.publishes_within(window), w2.publishes_within(window));
    let mut all: Vec<u8> = a.iter().chain(b.iter()).map(|p| p.payload[0]).collect();
    all.sort_unstable();
    assert_eq!(all, (0..20).collect::<Vec<u8>>(), "each frame exactly once");
    assert!(!a.is_empty() && !b.is_empty(), "{} / {}", a.len(), b.len());
    broker.shutdown().await;
}

#[tokio::test]
async fn deliveries_are_checked_again_after_an_acl_reload() {
    let dir = tempfile::tempdir().unwrap();
    let acl_path = dir.path().join("acl");
    std::fs::write(
        &acl_path,
        "user server-a\ntopic read veil/v1/#\nuser server-b\ntopic write veil/v1/#\n",
    )
    .unwrap();
    let broker = start(BrokerConfig {
        acl_file: Some(acl_path.clone()),
        max_inflight: 4,
        ..example_config()
    })
    .await;
    let addr = broker.local_addr();
    let mut reader = V4Client::connect(addr, "reload-server-a", "server-a", true).await;
    reader.subscribe("veil/v1/#").await;
    std::fs::write(
        &acl_path,
        "user server-a\ntopic read veil/v1/#\ntopic deny veil/v1/secret\nuser server-b\ntopic write veil/v1/#\n",
    )
    .unwrap();
    broker.reload().unwrap();
    let mut writer = V4Client::connect(addr, "reload-server-b", "server-b", true).await;
    // More withheld QoS 1 deliveries than the in-flight window: the gate
    // must acknowledge them to rumqttd or the allowed one would never come.
    for i in 0..10u8 {
        writer.publish_acked("veil/v1/secret", vec![i], false).await;
    }
    writer
        .publish_acked("veil/v1/open", b"ok".to_vec(), false)
        .await;
    let got = reader.publishes_until(1, SHORT).await;
    let topics: Vec<&str> = got.iter().map(|p| p.topic.as_str()).collect();
    assert_eq!(topics, vec!["veil/v1/open"]);

    std::fs::write(&acl_path, "user server-a\ntopic reed x\n").unwrap();
    let err = broker.reload().unwrap_err();
    let cause = std::error::Error::source(&err)
        .map(|c| c.to_string())
        .unwrap_or_default();
    assert!(cause.contains("line 2"), "{err}: {cause}");
    broker.shutdown().await;
}

#[tokio::test]
async fn large_payloads_pass_and_oversized_packets_are_refused() {
    let broker = start(example_config()).await;
    let addr = broker.local_addr();
    let mut server_a = V4Client::connect(addr, "big-server-a", "server-a", true).await;
    server_a.subscribe("veil/v1/ba/#").await;
    let mut server_b = V4Client::connect(addr, "big-server-b", "server-b", true).await;
    let payload: Vec<u8> = (0..16 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    server_b
        .publish_acked("veil/v1/ba/reply/1", payload.clone(), false)
        .await;
    let got = server_a.publish_received().await.unwrap();
    assert_eq!(got.payload.len(), payload.len());
    assert!(got.payload[..] == payload[..]);
    broker.shutdown().await;

    let broker = start(BrokerConfig {
        max_payload_size: 64 * 1024,
        ..example_config()
    })
    .await;
    let mut server_b =
        V4Client::connect(broker.local_addr(), "big2-server-b", "server-b", true).await;
    server_b
        .publish_acked("veil/v1/ba/x", vec![1; 60 * 1024], false)
        .await;
    server_b
        .client
        .publish("veil/v1/ba/x", QoS::AtLeastOnce, false, vec![1; 200 * 1024])
        .await
        .unwrap();
    let err = server_b.closed().await;
    assert!(!err.is_empty());
    broker.shutdown().await;
}

#[tokio::test]
async fn malformed_bytes_close_only_that_connection() {
    let broker = start(example_config()).await;
    let addr = broker.local_addr();
    for garbage in [
        &b"\x10\xff\xff\xff\xff\x7f"[..], // remaining length > 4 bytes
        &b"\x30\x05\x00\x01a"[..],        // PUBLISH before CONNECT
        &b"\x10\x0c\x00\x04MQTT\x04\x01\x00\x3c\x00\x00"[..], // reserved flag
        &b"\x10\x7f\x00\x04MQTT"[..],     // truncated, then EOF
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(garbage).await.unwrap();
        let _ = s.shutdown().await;
        let mut buf = Vec::new();
        let n = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await;
        assert!(matches!(n, Ok(Ok(0))), "{garbage:?}: {n:?} {buf:?}");
    }
    // MQTT 3.1 (MQIsdp) gets "unacceptable protocol version".
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"\x10\x10\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x02ab")
        .await
        .unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf, [0x20, 2, 0, 1]);
    // The broker still serves well-behaved clients.
    let mut dev = V4Client::connect(addr, "after-garbage-devA", "devA", true).await;
    dev.publish_acked("veil/v1/dev/devA/frame", vec![1], false)
        .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn tls_listener_serves_mqtt() {
    let broker = start(BrokerConfig {
        tls: Some(veil_broker::TlsListenerConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            fixture("server.crt"),
            fixture("server.key"),
        )),
        ..example_config()
    })
    .await;
    let tls_addr = broker.tls_local_addr().expect("tls listener");
    assert_ne!(tls_addr, broker.local_addr());

    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    for cert in CertificateDer::pem_file_iter(fixture("ca.crt")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let client_config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let transport = rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(
        std::sync::Arc::new(client_config),
    ));
    let mut sub_opts = v4_options(tls_addr, "tls-devA", Some("devA"));
    sub_opts.set_transport(transport.clone());
    let mut dev = V4Client::spawn(sub_opts);
    dev.connack().await.expect("TLS connect");
    dev.subscribe("veil/v1/dev/devA/result").await;
    let mut pub_opts = v4_options(tls_addr, "tls-server-b", Some("server-b"));
    pub_opts.set_transport(transport);
    let mut server_b = V4Client::spawn(pub_opts);
    server_b.connack().await.unwrap();
    server_b
        .publish_acked("veil/v1/dev/devA/result", b"over tls".to_vec(), false)
        .await;
    assert_eq!(
        &dev.publish_received().await.unwrap().payload[..],
        b"over tls"
    );

    // A plain-MQTT client on the TLS port is refused by the handshake.
    let mut plain = V4Client::spawn(v4_options(tls_addr, "tls-plain", Some("devA")));
    assert!(plain.connack().await.is_err());
    broker.shutdown().await;
}

#[tokio::test]
async fn shutdown_frees_the_port_and_a_restart_on_it_works() {
    let first = start(example_config()).await;
    let addr = first.local_addr();
    let mut dev = V4Client::connect(addr, "restart-devA", "devA", true).await;
    first.shutdown().await;
    assert!(!dev.closed().await.is_empty());
    assert!(TcpStream::connect(addr).await.is_err(), "port still open");

    let second = start(BrokerConfig {
        listen: addr,
        ..example_config()
    })
    .await;
    assert_eq!(second.local_addr(), addr);
    let mut dev = V4Client::connect(addr, "restart-devA", "devA", true).await;
    dev.publish_acked("veil/v1/dev/devA/frame", vec![1], false)
        .await;
    second.shutdown().await;
}

#[tokio::test]
async fn several_brokers_run_side_by_side_without_sharing_state() {
    let brokers = [
        start(example_config()).await,
        start(example_config()).await,
        start(example_config()).await,
    ];
    let mut readers = Vec::new();
    for (i, b) in brokers.iter().enumerate() {
        let mut r =
            V4Client::connect(b.local_addr(), &format!("multi-a-{i}"), "server-a", true).await;
        r.subscribe("veil/v1/dev/+/frame").await;
        readers.push(r);
    }
    for (i, b) in brokers.iter().enumerate() {
        let mut dev = V4Client::connect(b.local_addr(), "multi-devA", "devA", true).await;
        dev.publish_acked("veil/v1/dev/devA/frame", vec![i as u8], false)
            .await;
    }
    for (i, r) in readers.iter_mut().enumerate() {
        let got = r.publishes_until(1, SHORT).await;
        let payloads: Vec<u8> = got.iter().map(|p| p.payload[0]).collect();
        assert_eq!(payloads, vec![i as u8]);
    }
    for b in brokers {
        b.shutdown().await;
    }
}

#[tokio::test]
async fn will_topics_are_checked_at_connect() {
    let broker = start(example_config()).await;
    let addr = broker.local_addr();
    let mut opts = v4_options(addr, "will-devA", Some("devA"));
    opts.set_last_will(rumqttc::LastWill::new(
        "veil/v1/dev/devB/frame",
        "bye",
        QoS::AtMostOnce,
        false,
    ));
    let err = V4Client::spawn(opts).connack().await.unwrap_err();
    assert!(err.contains("NotAuthorized"), "{err}");
    let mut opts = v4_options(addr, "will-devA-ok", Some("devA"));
    opts.set_last_will(rumqttc::LastWill::new(
        "veil/v1/dev/devA/ack",
        "bye",
        QoS::AtMostOnce,
        false,
    ));
    V4Client::spawn(opts).connack().await.unwrap();
    broker.shutdown().await;
}

/// Throughput of QoS 1 messages through the gate, printed for the record
/// (run with `--nocapture` to see it); asserts only that nothing is lost.
/// Without publish quotas: under the default 200 messages per second a
/// device's 5,000 messages took 24 s, which measured the quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_throughput_through_the_gate() {
    const N: usize = 5_000;
    let mut config = example_config();
    config.publish_quota.messages_per_sec = 0;
    config.publish_quota.bytes_per_sec = 0;
    let broker = start(config).await;
    let addr = broker.local_addr();
    let mut server_a = V4Client::connect(addr, "tp-server-a", "server-a", true).await;
    server_a.subscribe("veil/v1/dev/+/frame").await;
    let dev = V4Client::connect(addr, "tp-devA", "devA", true).await;
    let started = Instant::now();
    let client = dev.client.clone();
    let producer = tokio::spawn(async move {
        for i in 0..N {
            let mut payload = vec![0u8; 256];
            payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
            client
                .publish("veil/v1/dev/devA/frame", QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
    });
    let mut seen = vec![false; N];
    for _ in 0..N {
        let p = server_a.publish_received().await.unwrap();
        let i = u64::from_be_bytes(p.payload[..8].try_into().unwrap()) as usize;
        assert!(!seen[i], "duplicate {i}");
        seen[i] = true;
    }
    let elapsed = started.elapsed();
    producer.await.unwrap();
    assert!(seen.iter().all(|s| *s));
    eprintln!(
        "gate throughput: {N} QoS1 messages of 256 B in {:.2?} = {:.0} msg/s",
        elapsed,
        N as f64 / elapsed.as_secs_f64()
    );
    drop(dev);
    broker.shutdown().await;
}

#[tokio::test]
async fn the_example_broker_toml_starts_a_working_broker() {
    let mut config = BrokerConfig::from_toml_file(repo_config("broker.toml")).unwrap();
    assert_eq!(config.acl_file, Some(repo_config("acl")));
    assert_eq!(config.password_file, Some(repo_config("passwords")));
    assert_eq!(config.max_payload_size, 16 * 1024 * 1024);
    config.listen = "127.0.0.1:0".parse().unwrap();
    let broker = start(config).await;
    let mut dev = V4Client::connect(broker.local_addr(), "toml-devB", "devB", true).await;
    dev.publish_acked("veil/v1/dev/devB/session/b", b"s".to_vec(), true)
        .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn anonymous_clients_get_the_lines_before_the_first_user() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        "topic read open/#\nuser server-a\ntopic write open/#\n",
    )
    .unwrap();
    let config = BrokerConfig {
        acl_file: Some(acl),
        ..example_config()
    };
    let refused = start(config.clone()).await;
    let err = V4Client::spawn(v4_options(refused.local_addr(), "anon-0", None))
        .connack()
        .await
        .unwrap_err();
    assert!(err.contains("NotAuthorized"), "{err}");
    refused.shutdown().await;

    let broker = start(BrokerConfig {
        allow_anonymous: true,
        ..config
    })
    .await;
    let addr = broker.local_addr();
    let mut anon = V4Client::spawn(v4_options(addr, "anon-1", None));
    anon.connack().await.unwrap();
    assert_eq!(
        anon.subscribe("open/#").await.return_codes,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    anon.publish_acked("open/x", b"anon".to_vec(), false).await;
    let mut writer = V4Client::connect(addr, "anon-writer", "server-a", true).await;
    writer.publish_acked("open/y", b"srv".to_vec(), false).await;
    let got = anon.publishes_until(1, SHORT).await;
    let topics: Vec<&str> = got.iter().map(|p| p.topic.as_str()).collect();
    assert_eq!(topics, vec!["open/y"], "the anonymous publish was refused");
    broker.shutdown().await;
}

#[tokio::test]
async fn mqtt5_qos2_refusal_and_packet_limit_are_announced() {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubRecReason};
    let broker = start(example_config()).await;
    let addr = broker.local_addr();
    let mut c = V5Client::spawn(common::v5::options(addr, "v5-q2-devA", "devA"));
    let props = c
        .expect(|p| match p {
            P5::ConnAck(a) => Some(a.properties.clone()),
            _ => None,
        })
        .await
        .unwrap()
        .expect("CONNACK properties");
    assert_eq!(
        props.max_packet_size,
        Some(16 * 1024 * 1024 + 64 * 1024 + 16)
    );
    assert_eq!(props.topic_alias_max, None);
    c.client
        .publish(
            "veil/v1/dev/devB/frame",
            Q5::ExactlyOnce,
            false,
            b"x".to_vec(),
        )
        .await
        .unwrap();
    let reason = c
        .expect(|p| match p {
            P5::PubRec(r) => Some(r.reason),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(reason, PubRecReason::NotAuthorized);
    broker.shutdown().await;
}

#[tokio::test]
async fn qos2_messages_are_delivered_exactly_once() {
    let broker = start(example_config()).await;
    let addr = broker.local_addr();
    let mut dev = V4Client::connect(addr, "q2-devA", "devA", true).await;
    dev.client
        .subscribe("veil/v1/dev/devA/result", QoS::ExactlyOnce)
        .await
        .unwrap();
    assert_eq!(
        dev.suback().await.unwrap().return_codes,
        vec![SubscribeReasonCode::Success(QoS::ExactlyOnce)]
    );
    let mut server_b = V4Client::connect(addr, "q2-server-b", "server-b", true).await;
    for i in 0..3u8 {
        server_b
            .client
            .publish("veil/v1/dev/devA/result", QoS::ExactlyOnce, false, vec![i])
            .await
            .unwrap();
        server_b
            .expect(|p| matches!(p, Packet::PubComp(_)).then_some(()))
            .await
            .unwrap();
    }
    let got = dev.publishes_until(3, SHORT).await;
    let payloads: Vec<u8> = got.iter().map(|p| p.payload[0]).collect();
    assert_eq!(payloads, vec![0, 1, 2]);
    assert!(got.iter().all(|p| p.qos == QoS::ExactlyOnce));
    broker.shutdown().await;
}
