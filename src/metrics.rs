//! Counters the pipeline keeps, in Prometheus form.
//!
//! Label values are bounded enums: never a phone number, a request id or an error message.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::ccc::ErrorClass;
use crate::followup::result::Disposition;
use crate::gates::limits::{DEFAULT_CLASS, LimitsSettings};
use crate::outcome::{DeferReason, Status, SuppressReason};

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

impl DedupKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DedupKind::Recorded => "recorded",
            DedupKind::Claimed => "claimed",
            DedupKind::Abandoned => "abandoned",
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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DispositionLabels {
    pub disposition: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    /// `ok`, or the failure's class.
    pub class: &'static str,
    /// `OK`, the DialEx code, or the worker's transport code (`timeout`, `connect`, ...).
    /// Borrowed on the accepted path, so counting an accepted attempt allocates nothing.
    pub code: Cow<'static, str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabels {
    pub cause: &'static str,
}

/// The dial-record store operations every dialed request waits on.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum StoreOp {
    /// Taking the request before the dial.
    Claim,
    /// Writing its result before the outcome is published.
    Record,
}

impl StoreOp {
    pub const ALL: [StoreOp; 2] = [StoreOp::Claim, StoreOp::Record];

    pub fn as_str(self) -> &'static str {
        match self {
            StoreOp::Claim => "claim",
            StoreOp::Record => "record",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLabels {
    /// `instance` or `caller`.
    pub rate: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub class: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreOpLabels {
    pub op: &'static str,
}

/// Why the worker paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseCause {
    /// CCC refuses the worker itself.
    Ccc,
    /// CCC fails for everyone (the outage breaker is open).
    CccOutage,
    /// The dial-record store does not answer.
    Store,
    /// The broker does not take the worker's publishes (connection lost or blocked).
    Broker,
}

impl PauseCause {
    pub const ALL: [PauseCause; 4] = [
        PauseCause::Ccc,
        PauseCause::CccOutage,
        PauseCause::Store,
        PauseCause::Broker,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PauseCause::Ccc => "ccc",
            PauseCause::CccOutage => "ccc_outage",
            PauseCause::Store => "store",
            PauseCause::Broker => "broker",
        }
    }
}

/// Buckets for every latency the worker measures: the ones people set objectives on (DialEx
/// round trip, queue-to-dial) and the steps on every request's path (store, limiter, publish
/// confirm), which are often under a millisecond. From 0.25 ms to about 32 s (past the
/// limiter's longest default wait of 30 s), each 1.5 times the last.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 1.5, 30))
}

/// Every metric the worker exports; cheap to share.
#[derive(Debug)]
pub struct Metrics {
    pub requests_received: Counter,
    pub replays_received: Counter,
    pub outcomes: Family<StatusLabels, Counter>,
    /// Call-result events published by the follow-up, by disposition.
    pub call_results: Family<DispositionLabels, Counter>,
    pub ccc_attempts: Family<AttemptLabels, Counter>,
    pub ccc_request_duration: Histogram,
    /// By instance class (`[limits.instances."<id>"] class`); see [`Metrics::queue_to_dial`].
    pub queue_to_dial: Family<ClassLabels, Histogram, fn() -> Histogram>,
    /// Each classed instance's `queue_to_dial` series, and the one of every other instance:
    /// found without building a label on the hot path.
    queue_to_dial_by_instance: HashMap<String, Histogram>,
    queue_to_dial_default: Histogram,
    pub in_flight: Gauge,
    pub deferrals: Family<ReasonLabels, Counter>,
    pub dead_letters: Family<ReasonLabels, Counter>,
    pub dedup_hits: Family<DedupLabels, Counter>,
    pub suppressed: Family<SuppressLabels, Counter>,
    pub limiter_wait: Histogram,
    pub publish_confirm: Histogram,
    pub store_duration: Family<StoreOpLabels, Histogram, fn() -> Histogram>,
    pub amqp_reconnects: Counter,
    pub paused: Family<CauseLabels, Gauge>,
    pub last_dial: Gauge,
    /// Starts booked for later (see [`crate::gates::limits`]), by the rate that decided.
    pub bookings: Family<RateLabels, Counter>,
    /// Booked requests back after their start (see [`crate::gates::limits::Limiter::takes_late`]).
    pub bookings_missed: Counter,
    /// How late the wait queues hand requests back, after their tier's delay.
    pub wait_lateness: Histogram,
    /// How long before its booked start a request comes back (see [`crate::defer::Lateness`]).
    pub booking_margin: Gauge<f64, AtomicU64>,
    /// `[limits] calls_per_second`, for dashboards to draw the pace against.
    pub pace_cap: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(std::iter::empty::<(&str, &str)>())
    }
}

impl Metrics {
    /// The metrics of a worker with these `[limits]`: its instances' classes.
    pub fn for_limits(limits: &LimitsSettings) -> Self {
        Metrics::new(limits.instances.iter().filter_map(|(instance, own)| {
            own.class.as_deref().map(|class| (instance.as_str(), class))
        }))
    }

    /// The metrics of a worker whose instances in `classes` (instance id, class) have a
    /// class of their own; every other instance is [`DEFAULT_CLASS`].
    pub fn new<'a>(classes: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let queue_to_dial: Family<ClassLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let series = |class: &str| {
            queue_to_dial
                .get_or_create(&ClassLabels {
                    class: class.to_owned(),
                })
                .clone()
        };
        let queue_to_dial_default = series(DEFAULT_CLASS);
        let queue_to_dial_by_instance = classes
            .into_iter()
            .map(|(instance, class)| (instance.to_owned(), series(class)))
            .collect();
        let metrics = Metrics {
            requests_received: Counter::default(),
            replays_received: Counter::default(),
            outcomes: Family::default(),
            call_results: Family::default(),
            ccc_attempts: Family::default(),
            ccc_request_duration: latency_histogram(),
            queue_to_dial,
            queue_to_dial_by_instance,
            queue_to_dial_default,
            in_flight: Gauge::default(),
            deferrals: Family::default(),
            dead_letters: Family::default(),
            dedup_hits: Family::default(),
            suppressed: Family::default(),
            limiter_wait: latency_histogram(),
            publish_confirm: latency_histogram(),
            store_duration: Family::new_with_constructor(latency_histogram),
            amqp_reconnects: Counter::default(),
            paused: Family::default(),
            last_dial: Gauge::default(),
            bookings: Family::default(),
            bookings_missed: Counter::default(),
            wait_lateness: latency_histogram(),
            booking_margin: Gauge::default(),
            pace_cap: Gauge::default(),
        };
        // Every status and pause cause exported from the start, at 0: a series that first
        // appears already at 1 shows no increase, so an alert on the first `unknown` outcome
        // of a fresh pod would never fire.
        for status in Status::ALL {
            metrics.outcome_series(status);
        }
        for disposition in Disposition::ALL {
            let _ = metrics.call_results.get_or_create(&DispositionLabels {
                disposition: disposition.as_str(),
            });
        }
        for cause in PauseCause::ALL {
            metrics.set_paused(cause, false);
        }
        metrics
    }
}

/// Codes the `code` label takes as they are: the gateway's documented answers and the
/// worker's own transport codes. Any other code is counted under its family (`Throttling.other`
/// for an unknown `Throttling.*` sub-code), or as `other`: an endpoint that answers with ever
/// new codes cannot grow the series without bound.
const KNOWN_CODES: &[&str] = &[
    "Throttling",
    "Throttling.User",
    "Throttling.Api",
    "Throttling.Tenant",
    "ServiceUnavailable",
    "InternalError",
    "InvalidAccessKeyId",
    "InvalidAccessKeyId.NotFound",
    "InvalidAccessKeyId.Inactive",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "InvalidTimeStamp.Expired",
    "InvalidTimeStamp.Format",
    "InvalidSecurityToken.Expired",
    "InvalidSecurityToken.Malformed",
    "InvalidSecurityToken.MismatchWithAccessKey",
    "Forbidden",
    "Forbidden.RAM",
    "Forbidden.AccessKeyDisabled",
    "SignatureNonceUsed",
    "InvalidParameter",
    "MissingParameter",
    // The worker's own codes for answers that carry none.
    "connect",
    "timeout",
    "connection_lost",
    "request_build",
    "ambiguous",
    "oversized_answer",
    "missing_task_id",
    "unparseable_body",
    "contradictory_answer",
    "http_429",
    "http_500",
    "http_502",
    "http_503",
    "http_504",
    "http_redirect",
    "http_error",
];

/// The `code` label for a failed attempt: one of a fixed set (see [`KNOWN_CODES`]).
fn code_label(code: &str) -> Cow<'static, str> {
    if let Some(known) = KNOWN_CODES.iter().copied().find(|known| *known == code) {
        return Cow::Borrowed(known);
    }
    let family = code.split('.').next().unwrap_or(code);
    match crate::ccc::response::CODE_CLASSES
        .iter()
        .find_map(|(pattern, _)| pattern.strip_suffix(".*").filter(|f| *f == family))
    {
        Some(family) => Cow::Owned(format!("{family}.other")),
        None => Cow::Borrowed("other"),
    }
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

    pub fn outcome(&self, status: Status) {
        self.outcome_series(status).inc();
    }

    /// A call-result event published (re-published ones included).
    pub fn call_result(&self, disposition: Disposition) {
        self.call_results
            .get_or_create(&DispositionLabels {
                disposition: disposition.as_str(),
            })
            .inc();
    }

    fn outcome_series(&self, status: Status) -> impl std::ops::Deref<Target = Counter> + '_ {
        self.outcomes.get_or_create(&StatusLabels {
            status: status.as_str(),
        })
    }

    /// One DialEx HTTP attempt and how long it took; `failure` is `None` when it was accepted.
    pub fn ccc_attempt(&self, failure: Option<(ErrorClass, &str)>, took: Duration) {
        let labels = match failure {
            None => AttemptLabels {
                class: "ok",
                code: Cow::Borrowed("OK"),
            },
            Some((class, code)) => AttemptLabels {
                class: class.as_str(),
                code: code_label(code),
            },
        };
        self.ccc_attempts.get_or_create(&labels).inc();
        self.ccc_request_duration.observe(took.as_secs_f64());
    }

    /// How long one store operation on a request's path took, success or failure.
    pub fn store_op(&self, op: StoreOp, took: Duration) {
        self.store_duration
            .get_or_create(&StoreOpLabels { op: op.as_str() })
            .observe(took.as_secs_f64());
    }

    /// A request of `instance_id` reaches its `DialEx` call, `waited` after it was ready: its
    /// delivery, or the first time it had to wait for a slot (see
    /// [`crate::amqp::Incoming::ready_at`]).
    pub fn queue_to_dial(&self, instance_id: &str, waited: Duration) {
        self.queue_to_dial_by_instance
            .get(instance_id)
            .unwrap_or(&self.queue_to_dial_default)
            .observe(waited.as_secs_f64());
    }

    pub fn dialed_now(&self) {
        self.last_dial.set(jiff::Timestamp::now().as_second());
    }

    pub fn deferred(&self, reason: DeferReason) {
        self.deferrals
            .get_or_create(&ReasonLabels {
                reason: reason.as_str().to_owned(),
            })
            .inc();
    }

    pub fn dead_lettered(&self, reason: &str) {
        self.dead_letters
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn set_paused(&self, cause: PauseCause, paused: bool) {
        self.paused
            .get_or_create(&CauseLabels {
                cause: cause.as_str(),
            })
            .set(i64::from(paused));
    }

    /// Current value of one dedup counter (for tests and the demo).
    /// Outcome events published with `status` so far.
    pub fn outcome_count(&self, status: Status) -> u64 {
        self.outcome_series(status).get()
    }

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
        let r = registry.sub_registry_with_prefix("dialex");
        r.register(
            "requests_received",
            "Dial request deliveries taken from the request queue (redeliveries included)",
            self.requests_received.clone(),
        );
        r.register(
            "replays_received",
            "Request deliveries that `dialex-worker dead replay` put back on the request queue",
            self.replays_received.clone(),
        );
        r.register(
            "outcomes",
            "Outcome events published, by status (re-published results included)",
            self.outcomes.clone(),
        );
        r.register(
            "call_results",
            "Call-result events the follow-up published, by disposition (re-published ones included)",
            self.call_results.clone(),
        );
        r.register(
            "ccc_attempts",
            "DialEx HTTP attempts, by result class (ok, retryable, ambiguous, permanent, systemic) and code",
            self.ccc_attempts.clone(),
        );
        r.register(
            "ccc_request_duration_seconds",
            "Time of one DialEx HTTP attempt, answer or failure",
            self.ccc_request_duration.clone(),
        );
        r.register(
            "queue_to_dial_seconds",
            "Time from a request being ready to dial (its delivery reaching the worker, or the first time it had to wait for a slot) to its DialEx call, by instance class",
            self.queue_to_dial.clone(),
        );
        r.register(
            "in_flight",
            "Deliveries being handled right now",
            self.in_flight.clone(),
        );
        r.register(
            "deferrals",
            "Requests sent to a wait queue, by reason",
            self.deferrals.clone(),
        );
        r.register(
            "dead_letters",
            "Requests parked on the dead-letter queue, by reason",
            self.dead_letters.clone(),
        );
        r.register(
            "dedup_hits",
            "Deliveries whose request_id was already claimed or recorded, by what was found",
            self.dedup_hits.clone(),
        );
        r.register(
            "suppressed",
            "Requests not dialed because of the callee (cooldown, daily cap, do-not-call list)",
            self.suppressed.clone(),
        );
        r.register(
            "limiter_wait_seconds",
            "Time spent waiting for a concurrency and pacing slot",
            self.limiter_wait.clone(),
        );
        r.register(
            "publish_confirm_seconds",
            "Time from publishing to the broker's confirm",
            self.publish_confirm.clone(),
        );
        r.register(
            "store_operation_duration_seconds",
            "Time of a dial-record store operation on a request's path, by op (claim before the dial, record of the result before the outcome is published)",
            self.store_duration.clone(),
        );
        r.register(
            "amqp_reconnects",
            "Times the worker reconnected to RabbitMQ after losing it",
            self.amqp_reconnects.clone(),
        );
        r.register(
            "paused",
            "1 while the worker is paused, by cause (ccc: CCC refuses the worker; ccc_outage: CCC fails for everyone; store: the dial-record store does not answer; broker: RabbitMQ does not take publishes)",
            self.paused.clone(),
        );
        r.register(
            "last_dial_timestamp_seconds",
            "Unix time of the last accepted DialEx call",
            self.last_dial.clone(),
        );
        r.register(
            "limit_bookings",
            "Starts booked for later instead of waited for in-process, by the rate that decided (instance or caller)",
            self.bookings.clone(),
        );
        r.register(
            "limit_bookings_missed",
            "Booked requests back more than 100 ms after their start: taken late when only the instance's rate counted them (its spacing holds), else asked the rates again",
            self.bookings_missed.clone(),
        );
        r.register(
            "wait_queue_lateness_seconds",
            "How late the wait queues handed requests back, after their tier's delay",
            self.wait_lateness.clone(),
        );
        r.register(
            "limit_booking_margin_seconds",
            "How long before its booked start a request comes back from the wait queues: 1 s plus how late they have been lately, at most 2 s more",
            self.booking_margin.clone(),
        );
        r.register(
            "limit_calls_per_second",
            "The configured pace of one CCC instance ([limits] calls_per_second): across replicas with the Redis store, per replica with the embedded one",
            self.pace_cap.clone(),
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

    #[test]
    fn the_code_label_takes_a_fixed_set_of_values() {
        assert_eq!(code_label("Throttling.User"), "Throttling.User");
        assert_eq!(code_label("http_redirect"), "http_redirect");
        // Unknown sub-codes of a known family, and anything else, are folded.
        assert_eq!(code_label("Throttling.Made.Up.7"), "Throttling.other");
        assert_eq!(code_label("Forbidden.Something"), "Forbidden.other");
        assert_eq!(code_label("NewCode"), "other");
        assert_eq!(code_label("13800000000"), "other");
        // A thousand distinct codes from a misbehaving endpoint make at most a few series.
        let metrics = Metrics::default();
        for i in 0..1_000 {
            let code = format!("Made.Up{i}");
            metrics.ccc_attempt(Some((ErrorClass::Permanent, code.as_str())), Duration::ZERO);
            let code = format!("Throttling.Made{i}");
            metrics.ccc_attempt(Some((ErrorClass::Retryable, code.as_str())), Duration::ZERO);
        }
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let series = text
            .lines()
            .filter(|line| line.starts_with("dialex_ccc_attempts_total{"))
            .count();
        assert_eq!(series, 2, "{text}");
    }

    #[test]
    fn every_status_and_pause_cause_is_exported_from_the_start() {
        let metrics = Metrics::default();
        metrics.outcome(Status::Unknown);
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for status in Status::ALL {
            let count = u8::from(status == Status::Unknown);
            let line = format!(
                "dialex_outcomes_total{{status=\"{}\"}} {count}",
                status.as_str()
            );
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        for cause in PauseCause::ALL {
            let line = format!("dialex_paused{{cause=\"{}\"}} 0", cause.as_str());
            assert!(text.contains(&line), "{line} in\n{text}");
        }
    }

    #[test]
    fn queue_to_dial_is_labelled_by_class_not_by_instance() {
        let metrics = Metrics::new([("inst-a", "vip"), ("inst-b", "vip")]);
        metrics.queue_to_dial("inst-a", Duration::from_millis(10));
        metrics.queue_to_dial("inst-b", Duration::from_millis(10));
        for i in 0..100 {
            metrics.queue_to_dial(&format!("inst-{i}"), Duration::from_millis(10));
        }
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let mut counts: Vec<&str> = text
            .lines()
            .filter(|line| line.starts_with("dialex_queue_to_dial_seconds_count"))
            .collect();
        counts.sort_unstable();
        assert_eq!(
            counts,
            [
                "dialex_queue_to_dial_seconds_count{class=\"default\"} 100",
                "dialex_queue_to_dial_seconds_count{class=\"vip\"} 2",
            ],
            "{text}"
        );
    }
}
