//! What the gate let through, refused or held back, counted by reason, so
//! operators (and the hostile-client test) can see an attack being turned
//! away without reading logs; `veil broker --metrics-listen` exports the
//! same numbers to Prometheus. Every counted refusal is also logged where
//! it happens.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub auth_failed: AtomicU64,
    pub client_id_refused: AtomicU64,
    pub will_refused: AtomicU64,
    pub publish_refused: AtomicU64,
    pub subscribe_refused: AtomicU64,
    pub kicked: AtomicU64,
    pub malformed: AtomicU64,
    pub too_large: AtomicU64,
    pub throttled: AtomicU64,
    pub throttled_ms: AtomicU64,
    pub connections_refused: AtomicU64,
    pub tls_refused: AtomicU64,
    pub certificate_refused: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub connections_open: AtomicU64,
    pub deliveries_withheld: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub reloads: AtomicU64,
    pub reloads_refused: AtomicU64,
}

/// A copy of the gate's counters since the broker started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GateCounters {
    /// CONNECTs with a wrong password or unknown user.
    pub auth_failed: u64,
    /// CONNECTs whose client id belongs to another user (takeover
    /// attempts) or is otherwise invalid.
    pub client_id_refused: u64,
    /// CONNECTs whose will topic the user may not write.
    pub will_refused: u64,
    /// PUBLISHes to topics the user may not write.
    pub publish_refused: u64,
    /// SUBSCRIBE filters refused, `$share` groups the user is not named
    /// in included.
    pub subscribe_refused: u64,
    /// Connections closed for too many ACL violations.
    pub kicked: u64,
    /// Connections closed for a malformed packet or a protocol error.
    pub malformed: u64,
    /// Connections closed for a packet over the size limit.
    pub too_large: u64,
    /// PUBLISHes held back because their user was over its quota, and the
    /// total time those connections waited.
    pub throttled: u64,
    /// Milliseconds the throttled connections waited, summed.
    pub throttled_ms: u64,
    /// Connections refused at the connection limit.
    pub connections_refused: u64,
    /// TLS handshakes that failed or timed out: among them client
    /// certificates missing where required or not signed by the client CA.
    pub tls_refused: u64,
    /// CONNECTs refused on a listener whose usernames come from client
    /// certificates: a common name that is no valid username, or a
    /// CONNECT username other than the certificate's.
    pub certificate_refused: u64,
    /// CONNECTs answered with a successful CONNACK.
    pub connections_accepted: u64,
    /// Client connections past CONNACK right now.
    pub connections_open: u64,
    /// Deliveries the gate withheld from a subscriber without read access
    /// (after an ACL reload, or through a filter wider than the grant).
    pub deliveries_withheld: u64,
    /// MQTT bytes read from and written to clients (inside TLS: record
    /// overhead and handshakes are not counted).
    pub bytes_in: u64,
    /// MQTT bytes written to clients.
    pub bytes_out: u64,
    /// Reloads of the password and ACL files that took effect, and those
    /// refused (the old files stayed in force).
    pub reloads: u64,
    /// Reloads refused; the files before stayed in force.
    pub reloads_refused: u64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Counts an open connection until the guard drops.
    pub(crate) fn open_connection(&self) -> OpenConnection<'_> {
        Counters::bump(&self.connections_accepted);
        Counters::bump(&self.connections_open);
        OpenConnection(&self.connections_open)
    }

    pub(crate) fn snapshot(&self) -> GateCounters {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        GateCounters {
            auth_failed: get(&self.auth_failed),
            client_id_refused: get(&self.client_id_refused),
            will_refused: get(&self.will_refused),
            publish_refused: get(&self.publish_refused),
            subscribe_refused: get(&self.subscribe_refused),
            kicked: get(&self.kicked),
            malformed: get(&self.malformed),
            too_large: get(&self.too_large),
            throttled: get(&self.throttled),
            throttled_ms: get(&self.throttled_ms),
            connections_refused: get(&self.connections_refused),
            tls_refused: get(&self.tls_refused),
            certificate_refused: get(&self.certificate_refused),
            connections_accepted: get(&self.connections_accepted),
            connections_open: get(&self.connections_open),
            deliveries_withheld: get(&self.deliveries_withheld),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            reloads: get(&self.reloads),
            reloads_refused: get(&self.reloads_refused),
        }
    }
}

/// Decrements the open-connection gauge when the connection ends.
pub(crate) struct OpenConnection<'a>(&'a AtomicU64);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Display for GateCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "auth failed {}, client id refused {}, will refused {}, publish refused {}, \
             subscribe refused {}, kicked {}, malformed {}, too large {}, throttled {} \
             ({} ms), connections refused {}, TLS refused {}, certificate refused {}, \
             connections accepted {} (open {}), deliveries withheld {}, bytes in {}, \
             bytes out {}, reloads {} (refused {})",
            self.auth_failed,
            self.client_id_refused,
            self.will_refused,
            self.publish_refused,
            self.subscribe_refused,
            self.kicked,
            self.malformed,
            self.too_large,
            self.throttled,
            self.throttled_ms,
            self.connections_refused,
            self.tls_refused,
            self.certificate_refused,
            self.connections_accepted,
            self.connections_open,
            self.deliveries_withheld,
            self.bytes_in,
            self.bytes_out,
            self.reloads,
            self.reloads_refused
        )
    }
}
