//! The receiving side's bounds: a link whose runtime does not keep up
//! holds at most `EVENT_QUEUE` messages and pushes the rest back onto the
//! broker through TCP, losing none of them (QoS 0 included, which no
//! in-flight window limits).
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

use std::time::Duration;

use veil_e2e::*;
use veil_link::{EVENT_QUEUE, Link, LinkEvent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_runtime_backs_the_link_up_onto_the_broker_without_loss() {
    let broker = start_broker("127.0.0.1:0".parse().unwrap()).await;
    let addr = broker.local_addr();
    let topic = "veil/v1/dev/devA/result";
    let mut link = Link::start(&mqtt(addr, "devA")).expect("link starts");
    link.handle.subscribe(vec![topic.to_string()]);
    loop {
        match tokio::time::timeout(PATIENCE, link.events.recv()).await {
            Ok(Some(LinkEvent::Subscribed { granted })) => {
                assert_eq!(granted, vec![true]);
                break;
            }
            Ok(Some(_)) => {}
            other => panic!("no SUBACK: {}", other.is_ok()),
        }
    }

    const SENT: usize = 400;
    let server_b = Raw::connect(addr, "server-b", "flood").await;
    for i in 0..SENT {
        let mut payload = vec![0u8; 4096];
        payload[..8].copy_from_slice(&(i as u64).to_le_bytes());
        server_b
            .client
            .publish(topic, rumqttc::QoS::AtMostOnce, false, payload)
            .await
            .expect("publish queued");
    }
    // Give the flood time to arrive; nobody reads the link meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        link.events.len() <= EVENT_QUEUE,
        "{} events held, bound {EVENT_QUEUE}",
        link.events.len()
    );

    let mut seen = vec![false; SENT];
    let mut got = 0;
    while got < SENT {
        match tokio::time::timeout(PATIENCE, link.events.recv()).await {
            Ok(Some(LinkEvent::Message(m))) => {
                let i = u64::from_le_bytes(m.payload[..8].try_into().unwrap()) as usize;
                assert!(!seen[i], "message {i} twice");
                seen[i] = true;
                got += 1;
                link.handle.ack(m.ack);
            }
            Ok(Some(_)) => {}
            _ => panic!("only {got} of {SENT} messages arrived"),
        }
    }
    link.close().await;
    broker.shutdown().await;
}
