//! `veil broker --metrics-listen`: the gate's counters as Prometheus
//! metrics (`veil_broker_*`), with `/healthz` and `/readyz`, through the
//! exporter every role uses (veil-shell).

use std::net::SocketAddr;

use anyhow::{Context, Result};
use veil_broker::{BrokerHandle, GateCounters};

/// One labelled counter and the gate counter it mirrors.
type Mirrored = (veil_shell::metrics::Mirror, fn(&GateCounters) -> u64);

/// Serves the broker's metrics on `addr` and returns the bound address.
/// The numbers are copied from the gate once a second.
pub async fn serve(addr: SocketAddr, broker: &BrokerHandle) -> Result<SocketAddr> {
    let mut metrics = veil_shell::Metrics::new("broker");
    let connections = metrics.counter("connections", "Client CONNECTs accepted");
    let open = metrics.gauge("connections_open", "Client connections past CONNACK now");
    let refused = metrics.counter_family(
        "connect_refused",
        "Connections refused before or at CONNECT, by reason",
        "reason",
    );
    let refused: [Mirrored; 6] = [
        (refused.with("auth"), |c| c.auth_failed),
        (refused.with("client_id"), |c| c.client_id_refused),
        (refused.with("will"), |c| c.will_refused),
        (refused.with("certificate"), |c| c.certificate_refused),
        (refused.with("tls"), |c| c.tls_refused),
        (refused.with("connection_limit"), |c| c.connections_refused),
    ];
    let denied = metrics.counter_family(
        "acl_denied",
        "Packets the ACL refused, by action (delivery: withheld from a subscriber)",
        "action",
    );
    let denied: [Mirrored; 3] = [
        (denied.with("publish"), |c| c.publish_refused),
        (denied.with("subscribe"), |c| c.subscribe_refused),
        (denied.with("delivery"), |c| c.deliveries_withheld),
    ];
    let closed = metrics.counter_family(
        "closed_by_gate",
        "Connections the gate closed, by reason",
        "reason",
    );
    let closed: [Mirrored; 3] = [
        (closed.with("acl_violations"), |c| c.kicked),
        (closed.with("malformed"), |c| c.malformed),
        (closed.with("too_large"), |c| c.too_large),
    ];
    let throttled = metrics.counter("throttled", "PUBLISHes held back by a user's quota");
    let throttled_ms = metrics.counter(
        "throttled_milliseconds",
        "Time connections spent held back by quotas",
    );
    let bytes_in = metrics.counter("received_bytes", "MQTT bytes read from clients");
    let bytes_out = metrics.counter("sent_bytes", "MQTT bytes written to clients");
    let reloads = metrics.counter_family(
        "reloads",
        "SIGHUP reloads of the password and ACL files, by outcome",
        "outcome",
    );
    let (applied, refused_reloads) = (reloads.with("applied"), reloads.with("refused"));
    let read = broker.counter_reader();
    metrics
        .serve_refreshed(addr, move || {
            let c = read();
            connections.follow(c.connections_accepted);
            open.set(i64::try_from(c.connections_open).unwrap_or(i64::MAX));
            for (mirror, get) in refused.iter().chain(&denied).chain(&closed) {
                mirror.follow(get(&c));
            }
            throttled.follow(c.throttled);
            throttled_ms.follow(c.throttled_ms);
            bytes_in.follow(c.bytes_in);
            bytes_out.follow(c.bytes_out);
            applied.follow(c.reloads);
            refused_reloads.follow(c.reloads_refused);
            true
        })
        .await
        .with_context(|| format!("serving metrics on {addr}"))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use veil_broker::{Broker, BrokerConfig};

    use super::*;

    fn repo_config(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../config")
            .join(name)
    }

    /// An MQTT 3.1.1 CONNECT with a username and password, clean session.
    fn connect_packet(client_id: &str, user: &str, password: &str) -> Vec<u8> {
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 60];
        for field in [client_id, user, password] {
            body.extend_from_slice(&u16::try_from(field.len()).unwrap().to_be_bytes());
            body.extend_from_slice(field.as_bytes());
        }
        let mut packet = vec![0x10, u8::try_from(body.len()).unwrap()];
        packet.extend(body);
        packet
    }

    /// An MQTT 3.1.1 PUBLISH at QoS 0.
    fn publish_packet(topic: &str, payload: &[u8]) -> Vec<u8> {
        let mut body = u16::try_from(topic.len()).unwrap().to_be_bytes().to_vec();
        body.extend_from_slice(topic.as_bytes());
        body.extend_from_slice(payload);
        let mut packet = vec![0x30, u8::try_from(body.len()).unwrap()];
        packet.extend(body);
        packet
    }

    /// Sends CONNECT and returns the connection and the CONNACK's code.
    async fn connect(addr: SocketAddr, user: &str, password: &str) -> (TcpStream, u8) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let id = format!("{user}-metrics");
        stream
            .write_all(&connect_packet(&id, user, password))
            .await
            .unwrap();
        let mut ack = [0u8; 4];
        stream.read_exact(&mut ack).await.unwrap();
        assert_eq!(ack[0], 0x20, "CONNACK");
        (stream, ack[3])
    }

    async fn scrape(addr: SocketAddr) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut page = String::new();
        stream.read_to_string(&mut page).await.unwrap();
        page
    }

    /// Scrapes until every line in `want` is on the page (the exporter
    /// copies the gate's counters once a second).
    async fn scrape_until(addr: SocketAddr, want: &[&str]) -> String {
        let mut page = String::new();
        for _ in 0..100 {
            page = scrape(addr).await;
            if want.iter().all(|line| page.contains(line)) {
                return page;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{want:?} not all in\n{page}");
    }

    fn value(page: &str, name: &str) -> u64 {
        page.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in\n{page}"))
    }

    #[tokio::test]
    async fn connections_refusals_denials_bytes_and_reloads_are_counted() {
        let broker = Broker::start(BrokerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            password_file: Some(repo_config("passwords")),
            acl_file: Some(repo_config("acl")),
            ..BrokerConfig::default()
        })
        .await
        .unwrap();
        let metrics = serve("127.0.0.1:0".parse().unwrap(), &broker)
            .await
            .unwrap();
        let page = scrape_until(metrics, &["veil_broker_connections_total 0\n"]).await;
        assert_eq!(value(&page, "veil_broker_received_bytes_total"), 0);

        let (_refused, code) = connect(broker.local_addr(), "devA", "wrong").await;
        assert_eq!(code, 5, "not authorized");
        let (mut open, code) = connect(broker.local_addr(), "devA", "demo-devA").await;
        assert_eq!(code, 0);
        // QoS 0 to another device's frame topic: dropped by the ACL.
        let publish = publish_packet("veil/v1/dev/devB/frame", b"x");
        open.write_all(&publish).await.unwrap();
        broker.reload().unwrap();
        let page = scrape_until(
            metrics,
            &[
                "veil_broker_connect_refused_total{reason=\"auth\"} 1\n",
                "veil_broker_connections_total 1\n",
                "veil_broker_connections_open 1\n",
                "veil_broker_reloads_total{outcome=\"applied\"} 1\n",
                "veil_broker_acl_denied_total{action=\"publish\"} 1\n",
            ],
        )
        .await;
        let connect_len = connect_packet("devA-metrics", "devA", "demo-devA").len();
        let wrong_len = connect_packet("devA-metrics", "devA", "wrong").len();
        assert_eq!(
            value(&page, "veil_broker_received_bytes_total"),
            u64::try_from(connect_len + wrong_len + publish.len()).unwrap()
        );
        assert_eq!(
            value(&page, "veil_broker_sent_bytes_total"),
            8,
            "two CONNACKs"
        );
        broker.shutdown().await;
    }
}
