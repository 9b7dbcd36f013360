//! The dial stage: one `DialEx` call for a validated request, retried only when the gateway
//! proves the call was not placed.
//!
//! Retryable answers (throttling, 503, 500, connection refused) are retried in-process with
//! exponential backoff, full jitter and a fresh nonce each time, within an attempt cap and a
//! time budget; the pipeline sends what is still retryable after that through the wait
//! queues. Ambiguous failures (a timeout or reset after the request was sent) are never re-sent
//! with a new nonce: the customer may already be ringing.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder as _, ExponentialBuilder, Retryable as _};

use crate::ccc::CccSettings;
use crate::ccc::{CccClient, Classifier, DialAccepted, DialFailure, DialParams, ErrorClass};
use crate::metrics::Metrics;
use crate::outage::{Answer, OutageBreaker};
use crate::validate::DialRequest;

/// How persistently a request is dialed in-process.
#[derive(Debug, Clone)]
pub struct DialPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// In-process retries stop when the next attempt would start later than this after the
    /// first.
    pub retry_budget: Duration,
    /// Attempts across every hop through the wait queues.
    pub max_total_attempts: u32,
    /// The wait before the first hop back through the wait queues; doubles on each further hop.
    pub requeue_delay: Duration,
    pub max_requeue_delay: Duration,
    pub classifier: Classifier,
    /// Resolve ambiguous sends by replaying the identical signed request (see
    /// [`resolve_by_replay`]); off: `unknown` at once.
    pub replay_ambiguous: bool,
    /// The longest one hop's dial can take (see [`CccSettings::longest_dial`]).
    pub longest_dial: Duration,
}

impl DialPolicy {
    pub fn from_settings(settings: &CccSettings) -> Self {
        DialPolicy {
            max_attempts: settings.max_attempts,
            initial_backoff: settings.initial_backoff(),
            max_backoff: settings.max_backoff(),
            retry_budget: settings.retry_budget(),
            max_total_attempts: settings.max_total_attempts,
            requeue_delay: settings.requeue_delay(),
            max_requeue_delay: settings.max_requeue_delay(),
            replay_ambiguous: settings.replay_ambiguous,
            longest_dial: settings.longest_dial(),
            classifier: Classifier::new(
                settings
                    .error_classes
                    .iter()
                    .map(|(code, class)| (code.clone(), *class)),
            ),
        }
    }

    /// How many attempts this hop may make, after `prior` attempts on earlier hops: at least
    /// one (a count in a header is not trusted to forbid dialing altogether).
    pub fn attempts_for_hop(&self, prior: u32) -> u32 {
        self.max_attempts
            .min(self.max_total_attempts.saturating_sub(prior))
            .max(1)
    }

    /// The wait before trying again after `attempts` attempts in all, or `None` when the cap
    /// is reached. The delay doubles with every hop already made.
    pub fn requeue_after(&self, attempts: u32) -> Option<Duration> {
        if attempts >= self.max_total_attempts {
            return None;
        }
        let hops_made = attempts
            .div_ceil(self.max_attempts.max(1))
            .saturating_sub(1);
        let delay = self
            .requeue_delay
            .saturating_mul(2u32.saturating_pow(hops_made.min(20)));
        Some(delay.min(self.max_requeue_delay))
    }

    /// Pauses between in-process attempts: exponential, full jitter (uniform in zero to the
    /// exponential step), at most `attempts - 1` of them, and none that would start the next
    /// attempt past the retry budget counted from `start`.
    fn backoff(&self, attempts: u32, start: Instant) -> impl Iterator<Item = Duration> + use<> {
        let budget = self.retry_budget;
        ExponentialBuilder::default()
            .with_min_delay(self.initial_backoff)
            .with_max_delay(self.max_backoff)
            .with_max_times(attempts.saturating_sub(1) as usize)
            .build()
            .map(|step| step.mul_f64(rand::random::<f64>()))
            .take_while(move |pause| start.elapsed() + *pause <= budget)
    }
}

/// What became of the dial.
#[derive(Debug)]
pub enum DialResult {
    /// The call was placed.
    Dialed(DialAccepted),
    /// The call was not placed and retrying cannot help (or retries ran out).
    Failed(DialFailure),
    /// The call may have been placed; never retried automatically.
    Unknown(DialFailure),
    /// The worker itself is misconfigured; the request is not at fault and must be kept.
    Systemic(DialFailure),
    /// `expires_at` passed before an attempt could start; nothing more was sent.
    Expired,
}

/// The result and the number of HTTP attempts it took.
#[derive(Debug)]
pub struct DialReport {
    pub result: DialResult,
    pub attempts: u32,
    /// Some attempt was answered with `Throttling*`: the caller should slow down.
    pub throttled: bool,
}

/// Where a dial reports what it saw: the metrics, and the outage breaker every attempt's
/// answer feeds.
pub struct Watchers<'a> {
    pub metrics: &'a Metrics,
    pub outage: &'a OutageBreaker,
}

/// Dials `request`, making at most `max_attempts` attempts and retrying retryable failures
/// per `policy`; no retry starts once the outage breaker is open.
pub async fn dial<C: CccClient>(
    client: &C,
    policy: &DialPolicy,
    request: &DialRequest,
    max_attempts: u32,
    watchers: Watchers<'_>,
) -> DialReport {
    let params = DialParams {
        instance_id: request.instance_id(),
        caller: request.caller().as_str(),
        callee: request.callee().as_str(),
        answer_mode: request.answer_mode().dialex_value(),
        rout_point: request.rout_point(),
        provider: request.provider(),
    };
    let attempts = AtomicU32::new(0);
    let throttled = AtomicBool::new(false);
    let deadline = request.expires_at();
    let backoff = policy.backoff(max_attempts, Instant::now());
    let outcome = (|| async {
        // Checked before every attempt: a retry must not ring someone whose request is stale.
        if deadline.is_some_and(|d| jiff::Timestamp::now() >= d) {
            return Err(Attempt::Expired);
        }
        attempts.fetch_add(1, Ordering::Relaxed);
        let signed = client.sign(&params);
        let first = send(client, &signed, policy, &watchers).await;
        let answer = match first {
            Err(failure)
                if policy.replay_ambiguous
                    && policy.classifier.class(&failure) == ErrorClass::Ambiguous
                    && !failure.is_nonce_replay() =>
            {
                resolve_by_replay(client, &signed, failure, policy, &watchers).await
            }
            other => other,
        };
        answer.map_err(|failure| {
            if failure.is_throttling() {
                throttled.store(true, Ordering::Relaxed);
            }
            Attempt::Failed(failure)
        })
    })
    .retry(backoff)
    .sleep(tokio::time::sleep)
    .when(|attempt: &Attempt| {
        matches!(attempt, Attempt::Failed(f) if policy.classifier.class(f) == ErrorClass::Retryable)
            && !watchers.outage.is_open()
    })
    .notify(|attempt: &Attempt, wait: Duration| {
        if let Attempt::Failed(failure) = attempt {
            tracing::warn!(
                code = failure.code(),
                ?wait,
                "DialEx attempt failed; retrying"
            );
        }
    })
    .await;
    let result = match outcome {
        Ok(accepted) => DialResult::Dialed(accepted),
        Err(Attempt::Expired) => DialResult::Expired,
        Err(Attempt::Failed(failure)) => match policy.classifier.class(&failure) {
            ErrorClass::Retryable | ErrorClass::Permanent => DialResult::Failed(failure),
            ErrorClass::Ambiguous => DialResult::Unknown(failure),
            ErrorClass::Systemic => DialResult::Systemic(failure),
        },
    };
    DialReport {
        result,
        attempts: attempts.into_inner(),
        throttled: throttled.into_inner(),
    }
}

/// Sends the identical signed request again (same nonce, same timestamp). The gateway runs a
/// nonce at most once: if the first send never arrived, this one executes (once); if it did
/// arrive, the gateway answers `SignatureNonceUsed` and the call may have been placed. Any
/// other answer proves nothing either way.
async fn resolve_by_replay<C: CccClient>(
    client: &C,
    signed: &C::Signed,
    first: DialFailure,
    policy: &DialPolicy,
    watchers: &Watchers<'_>,
) -> Result<DialAccepted, DialFailure> {
    match send(client, signed, policy, watchers).await {
        Ok(accepted) => {
            tracing::info!(
                first = first.code(),
                "the first send never arrived; the replay was placed"
            );
            Ok(accepted)
        }
        Err(replay) => {
            let arrived = replay.is_nonce_replay();
            tracing::warn!(
                first = first.code(),
                replay = replay.code(),
                "no answer after sending; the call may have been placed and is not sent again"
            );
            Err(DialFailure::Transport {
                class: ErrorClass::Ambiguous,
                code: "ambiguous",
                detail: if arrived {
                    format!(
                        "{first}; a replay of the identical request was refused as already seen, so the first send reached CCC"
                    )
                } else {
                    format!(
                        "{first}; a replay of the identical request answered {}",
                        replay.code()
                    )
                },
            })
        }
    }
}

/// One HTTP send, counted, timed and told to the outage breaker.
async fn send<C: CccClient>(
    client: &C,
    signed: &C::Signed,
    policy: &DialPolicy,
    watchers: &Watchers<'_>,
) -> Result<DialAccepted, DialFailure> {
    let started = Instant::now();
    let answer = client.send(signed).await;
    let failure = answer
        .as_ref()
        .err()
        .map(|failure| (policy.classifier.class(failure), failure));
    watchers.metrics.ccc_attempt(
        failure.map(|(class, failure)| (class, failure.code())),
        started.elapsed(),
    );
    let unwell = failure
        .is_some_and(|(class, failure)| class == ErrorClass::Retryable && !failure.is_throttling());
    let answer_kind = if unwell {
        Answer::Failed
    } else {
        Answer::Answered
    };
    if watchers.outage.record(answer_kind) {
        tracing::error!(
            "most DialEx attempts across requests fail for now (503, 500, refused connections): CCC looks down; pausing"
        );
    }
    answer
}

/// Why one attempt did not succeed.
enum Attempt {
    Failed(DialFailure),
    Expired,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn policy() -> DialPolicy {
        let settings = Settings::load_from(None, Vec::new()).unwrap();
        DialPolicy::from_settings(&settings.ccc)
    }

    #[test]
    fn each_hop_gets_what_is_left_of_the_total_cap_and_never_nothing() {
        let p = policy();
        assert_eq!((p.max_attempts, p.max_total_attempts), (3, 6));
        assert_eq!(p.attempts_for_hop(0), 3);
        assert_eq!(p.attempts_for_hop(3), 3);
        assert_eq!(p.attempts_for_hop(5), 1);
        // A forged or stale count never forbids the dial altogether.
        assert_eq!(p.attempts_for_hop(6), 1);
        assert_eq!(p.attempts_for_hop(u32::MAX), 1);
    }

    #[test]
    fn the_wait_between_hops_doubles_up_to_its_cap_and_stops_at_the_total() {
        let mut p = policy();
        p.max_total_attempts = 15;
        p.requeue_delay = Duration::from_secs(30);
        p.max_requeue_delay = Duration::from_secs(100);
        let secs = |attempts| p.requeue_after(attempts).map(|d| d.as_secs());
        assert_eq!(secs(3), Some(30));
        // A short hop (fewer attempts than a full one) still counts as a hop.
        assert_eq!(secs(4), Some(60));
        assert_eq!(secs(6), Some(60));
        assert_eq!(secs(9), Some(100));
        assert_eq!(secs(12), Some(100));
        assert_eq!(secs(15), None);
        assert_eq!(secs(16), None);
    }

    #[test]
    fn pauses_are_fully_jittered_below_the_exponential_step() {
        let mut p = policy();
        p.initial_backoff = Duration::from_millis(100);
        p.max_backoff = Duration::from_millis(400);
        p.retry_budget = Duration::from_secs(3600);
        let mut sum_first = Duration::ZERO;
        for _ in 0..200 {
            let pauses: Vec<Duration> = p.backoff(5, Instant::now()).collect();
            assert_eq!(pauses.len(), 4, "attempts - 1 pauses");
            for (pause, step) in pauses.iter().zip([100, 200, 400, 400]) {
                assert!(
                    *pause <= Duration::from_millis(step),
                    "{pause:?} > {step} ms"
                );
            }
            sum_first += pauses[0];
        }
        // Uniform on [0, 100 ms]: the mean is near 50 ms, far from both ends.
        let mean = sum_first / 200;
        assert!(
            mean > Duration::from_millis(25) && mean < Duration::from_millis(75),
            "{mean:?}"
        );
    }

    #[test]
    fn no_pause_starts_an_attempt_past_the_budget() {
        let mut p = policy();
        p.initial_backoff = Duration::from_secs(1);
        p.max_backoff = Duration::from_secs(1);
        p.retry_budget = Duration::from_secs(10);
        let long_ago = Instant::now() - Duration::from_secs(10);
        assert_eq!(p.backoff(3, long_ago).count(), 0);
        assert_eq!(p.backoff(3, Instant::now()).count(), 2);
    }
}
