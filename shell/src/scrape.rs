//! Reading a histogram back from a Prometheus text page: what the tests
//! that scrape a role's `/metrics` check (counts, monotone buckets).

/// One histogram as a page shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Scraped {
    /// `(le, cumulative count)` in page order, `+Inf` last.
    pub buckets: Vec<(f64, u64)>,
    /// `_count`: observations.
    pub count: u64,
    /// `_sum`: their total, in the metric's unit.
    pub sum: f64,
}

impl Scraped {
    /// The histogram `name` (with its unit suffix, e.g.
    /// `veil_server_a_frame_latency_seconds`) on `page`; `None` when the
    /// page has no `_count` line for it or a line of it does not parse.
    pub fn histogram(page: &str, name: &str) -> Option<Scraped> {
        let bucket_prefix = format!("{name}_bucket{{le=\"");
        let mut scraped = Scraped {
            buckets: Vec::new(),
            count: 0,
            sum: 0.0,
        };
        let mut counted = false;
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix(&bucket_prefix) {
                let (le, value) = rest.split_once("\"} ")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                scraped.buckets.push((le, value.trim().parse().ok()?));
            } else if let Some(v) = line.strip_prefix(&format!("{name}_count ")) {
                scraped.count = v.trim().parse().ok()?;
                counted = true;
            } else if let Some(v) = line.strip_prefix(&format!("{name}_sum ")) {
                scraped.sum = v.trim().parse().ok()?;
            }
        }
        counted.then_some(scraped)
    }

    /// Bounds increase, cumulative counts never fall, and `+Inf` holds
    /// the count.
    pub fn is_monotone(&self) -> bool {
        let ordered = self
            .buckets
            .windows(2)
            .all(|w| matches!(w, [a, b] if a.0 < b.0 && a.1 <= b.1));
        ordered
            && self
                .buckets
                .last()
                .is_some_and(|(le, n)| le.is_infinite() && *n == self.count)
    }

    /// The cumulative count of the bucket bounded by `le`.
    pub fn cumulative_at(&self, le: f64) -> Option<u64> {
        self.buckets.iter().find(|(b, _)| *b == le).map(|(_, n)| *n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_reads_back_and_a_broken_one_is_seen() {
        let page = "# TYPE x_seconds histogram\nx_seconds_sum 1.5\nx_seconds_count 2\n\
                    x_seconds_bucket{le=\"0.001\"} 1\nx_seconds_bucket{le=\"+Inf\"} 2\n";
        let h = Scraped::histogram(page, "x_seconds").expect("parses");
        assert_eq!((h.count, h.sum, h.buckets.len()), (2, 1.5, 2));
        assert!(h.is_monotone());
        assert_eq!(h.cumulative_at(0.001), Some(1));
        let falling = page.replace("le=\"0.001\"} 1", "le=\"0.001\"} 3");
        let falling = Scraped::histogram(&falling, "x_seconds").expect("parses");
        assert!(!falling.is_monotone());
        assert!(Scraped::histogram(page, "y_seconds").is_none());
    }
}
