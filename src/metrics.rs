//! Counters the pipeline keeps, in Prometheus form.
//!
//! Label values are bounded enums: never a phone number, a request id or an error message.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// What a duplicate delivery found in the dial-record store.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum DedupKind {
    /// A recorded result: re-published, not dialed.
    Recorded,
    /// A live claim elsewhere: deferred, not dialed.
    Claimed,
    /// A claim whose holder died: `unknown` (`interrupted`), not dialed.
    Abandoned,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DedupLabels {
    pub kind: DedupKind,
}

/// Why a request for a callee was suppressed.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum SuppressReason {
    Cooldown,
    DailyCap,
    Dnc,
}

impl DedupKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DedupKind::Recorded => "recorded",
            DedupKind::Claimed => "claimed",
            DedupKind::Abandoned => "abandoned",
        }
    }
}

impl SuppressReason {
    /// Also the outcome event's `code`.
    pub fn as_str(self) -> &'static str {
        match self {
            SuppressReason::Cooldown => "cooldown",
            SuppressReason::DailyCap => "daily_cap",
            SuppressReason::Dnc => "dnc",
        }
    }
}

impl EncodeLabelValue for DedupKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

impl EncodeLabelValue for SuppressReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SuppressLabels {
    pub reason: SuppressReason,
}

/// Every metric the worker exports; cheap to share.
#[derive(Debug, Default)]
pub struct Metrics {
    pub dedup_hits: Family<DedupLabels, Counter>,
    pub suppressed: Family<SuppressLabels, Counter>,
}

impl Metrics {
    pub fn dedup_hit(&self, kind: DedupKind) {
        self.dedup_hits.get_or_create(&DedupLabels { kind }).inc();
    }

    pub fn suppressed(&self, reason: SuppressReason) {
        self.suppressed
            .get_or_create(&SuppressLabels { reason })
            .inc();
    }

    /// Current value of one dedup counter (for tests and the demo).
    pub fn dedup_count(&self, kind: DedupKind) -> u64 {
        self.dedup_hits.get_or_create(&DedupLabels { kind }).get()
    }

    pub fn suppressed_count(&self, reason: SuppressReason) -> u64 {
        self.suppressed
            .get_or_create(&SuppressLabels { reason })
            .get()
    }

    /// Registers every metric under the `dialex` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("dialex");
        registry.register(
            "dedup_hits",
            "Deliveries whose request_id was already claimed or recorded, by what was found",
            self.dedup_hits.clone(),
        );
        registry.register(
            "suppressed",
            "Requests not dialed because the callee was called recently or too often today",
            self.suppressed.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_encode_with_bounded_labels() {
        let metrics = Metrics::default();
        metrics.dedup_hit(DedupKind::Recorded);
        metrics.dedup_hit(DedupKind::Recorded);
        metrics.suppressed(SuppressReason::DailyCap);
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("dialex_dedup_hits_total{kind=\"recorded\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("dialex_suppressed_total{reason=\"daily_cap\"} 1"),
            "{text}"
        );
        assert_eq!(metrics.dedup_count(DedupKind::Recorded), 2);
        assert_eq!(metrics.dedup_count(DedupKind::Claimed), 0);
    }
}
