//! What the gate refused or held back, counted by reason, so operators
//! (and the hostile-client test) can see an attack being turned away
//! without reading logs. Every counted event is also logged where it
//! happens.

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
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
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
        }
    }
}

impl std::fmt::Display for GateCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "auth failed {}, client id refused {}, will refused {}, publish refused {}, \
             subscribe refused {}, kicked {}, malformed {}, too large {}, throttled {} \
             ({} ms), connections refused {}, TLS refused {}, certificate refused {}",
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
            self.certificate_refused
        )
    }
}
