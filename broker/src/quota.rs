//! Per-user publish quotas: a token bucket for messages and one for bytes,
//! shared by every connection of the same username, so that opening more
//! connections buys a client nothing. A client over its quota is not
//! disconnected and loses nothing: the gate stops reading its socket until
//! the buckets refill, which pushes back through TCP onto the client (QoS 0
//! included, which no in-flight window limits).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The limits, from [`crate::BrokerConfig::publish_quota`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublishQuota {
    /// PUBLISH packets per second per username (also the burst); 0 = no
    /// limit.
    pub messages_per_sec: u32,
    /// PUBLISH bytes per second per username; 0 = no limit. The burst is
    /// the larger of this and the largest packet, so one maximum-size
    /// message always gets through.
    pub bytes_per_sec: u64,
    /// Usernames without quotas: veil's servers, which publish rounds of
    /// several MiB per frame for the big models.
    pub exempt: Vec<String>,
}

impl Default for PublishQuota {
    fn default() -> Self {
        PublishQuota {
            messages_per_sec: 200,
            bytes_per_sec: 4 * 1024 * 1024,
            exempt: vec!["server-a".into(), "server-b".into()],
        }
    }
}

/// Buckets kept at most; beyond this, full (idle) buckets are forgotten.
/// Without a password file usernames are unauthenticated labels, so the
/// map must not grow with every name a client invents.
const MAX_BUCKETS: usize = 10_000;

#[derive(Debug)]
struct Bucket {
    messages: f64,
    bytes: f64,
    at: Instant,
}

#[derive(Debug)]
pub(crate) struct Quotas {
    messages_per_sec: f64,
    bytes_per_sec: f64,
    message_burst: f64,
    byte_burst: f64,
    exempt: HashSet<String>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Quotas {
    pub(crate) fn new(quota: &PublishQuota, max_packet: usize) -> Quotas {
        let bytes_per_sec = quota.bytes_per_sec as f64;
        Quotas {
            messages_per_sec: f64::from(quota.messages_per_sec),
            bytes_per_sec,
            message_burst: f64::from(quota.messages_per_sec),
            byte_burst: bytes_per_sec.max(max_packet as f64),
            exempt: quota.exempt.iter().cloned().collect(),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Charges one publish of `bytes` to `user` at `now`, and returns how
    /// long the connection must wait before reading on (zero when within
    /// quota). Buckets may go negative: the debt is what the wait repays.
    pub(crate) fn charge(&self, user: Option<&str>, bytes: usize, now: Instant) -> Duration {
        let user = user.unwrap_or("");
        if self.exempt.contains(user) {
            return Duration::ZERO;
        }
        let limit_messages = self.messages_per_sec > 0.0;
        let limit_bytes = self.bytes_per_sec > 0.0;
        if !limit_messages && !limit_bytes {
            return Duration::ZERO;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(user) {
            buckets.retain(|_, b| !self.is_full(b, now));
        }
        let bucket = buckets.entry(user.to_string()).or_insert(Bucket {
            messages: self.message_burst,
            bytes: self.byte_burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.at = now;
        let mut wait = 0.0f64;
        if limit_messages {
            bucket.messages =
                (bucket.messages + elapsed * self.messages_per_sec).min(self.message_burst) - 1.0;
            if bucket.messages < 0.0 {
                wait = wait.max(-bucket.messages / self.messages_per_sec);
            }
        }
        if limit_bytes {
            bucket.bytes =
                (bucket.bytes + elapsed * self.bytes_per_sec).min(self.byte_burst) - bytes as f64;
            if bucket.bytes < 0.0 {
                wait = wait.max(-bucket.bytes / self.bytes_per_sec);
            }
        }
        Duration::from_secs_f64(wait)
    }

    fn is_full(&self, bucket: &Bucket, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (self.messages_per_sec <= 0.0
            || bucket.messages + elapsed * self.messages_per_sec >= self.message_burst)
            && (self.bytes_per_sec <= 0.0
                || bucket.bytes + elapsed * self.bytes_per_sec >= self.byte_burst)
    }

    #[cfg(test)]
    fn buckets(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas(messages: u32, bytes: u64) -> Quotas {
        Quotas::new(
            &PublishQuota {
                messages_per_sec: messages,
                bytes_per_sec: bytes,
                exempt: vec!["server-a".into()],
            },
            1000,
        )
    }

    #[test]
    fn a_burst_passes_and_the_rest_waits_at_the_configured_rate() {
        let q = quotas(10, 0);
        let t0 = Instant::now();
        for _ in 0..10 {
            assert_eq!(q.charge(Some("dev"), 1, t0), Duration::ZERO);
        }
        // The 11th and 12th owe one and two tenths of a second.
        let w = q.charge(Some("dev"), 1, t0);
        assert!((w.as_secs_f64() - 0.1).abs() < 1e-9, "{w:?}");
        let w = q.charge(Some("dev"), 1, t0);
        assert!((w.as_secs_f64() - 0.2).abs() < 1e-9, "{w:?}");
        // A second later the debt is repaid and 8 more fit.
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..8 {
            assert_eq!(q.charge(Some("dev"), 1, t1), Duration::ZERO);
        }
        assert!(q.charge(Some("dev"), 1, t1) > Duration::ZERO);
    }

    #[test]
    fn bytes_are_limited_and_one_maximum_size_packet_always_fits() {
        let q = quotas(0, 100);
        let t0 = Instant::now();
        // Burst: the largest packet (1000), above the rate (100/s).
        assert_eq!(q.charge(Some("dev"), 1000, t0), Duration::ZERO);
        let w = q.charge(Some("dev"), 500, t0);
        assert!((w.as_secs_f64() - 5.0).abs() < 1e-9, "{w:?}");
    }

    #[test]
    fn connections_of_one_user_share_a_bucket_and_users_do_not() {
        let q = quotas(2, 0);
        let t0 = Instant::now();
        assert_eq!(q.charge(Some("dev"), 1, t0), Duration::ZERO);
        assert_eq!(q.charge(Some("dev"), 1, t0), Duration::ZERO);
        assert!(q.charge(Some("dev"), 1, t0) > Duration::ZERO);
        assert_eq!(q.charge(Some("other"), 1, t0), Duration::ZERO);
        assert_eq!(q.charge(None, 1, t0), Duration::ZERO);
    }

    #[test]
    fn exempt_users_and_zero_limits_are_never_held() {
        let q = quotas(1, 1);
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(q.charge(Some("server-a"), 1 << 20, t0), Duration::ZERO);
        }
        let off = quotas(0, 0);
        for _ in 0..100 {
            assert_eq!(off.charge(Some("dev"), 1 << 20, t0), Duration::ZERO);
        }
        assert_eq!(off.buckets(), 0);
    }

    #[test]
    fn idle_buckets_are_forgotten_when_the_map_is_full() {
        let q = quotas(5, 0);
        let t0 = Instant::now();
        for i in 0..MAX_BUCKETS {
            q.charge(Some(&format!("u{i}")), 1, t0);
        }
        assert_eq!(q.buckets(), MAX_BUCKETS);
        let later = t0 + Duration::from_secs(10);
        q.charge(Some("newcomer"), 1, later);
        assert_eq!(q.buckets(), 1);
    }
}
