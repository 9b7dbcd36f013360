//! The dial stage: one `DialEx` call for a validated request, retried only when the gateway
//! proves the call was not placed.
//!
//! Retryable answers (throttling, 503, 500, connection refused) are retried in-process with
//! jittered exponential backoff and a fresh nonce each time. Ambiguous failures (a timeout or
//! reset after the request was sent) are never re-sent: the customer may already be ringing.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};

use crate::ccc::{CccClient, Classifier, DialAccepted, DialFailure, DialParams, ErrorClass};
use crate::config::CccSettings;
use crate::validate::DialRequest;

/// How persistently a request is dialed in-process.
#[derive(Debug, Clone)]
pub struct DialPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub classifier: Classifier,
    /// Resolve ambiguous sends by replaying the identical signed request (see
    /// [`resolve_by_replay`]); off: `unknown` at once.
    pub replay_ambiguous: bool,
}

impl DialPolicy {
    pub fn from_settings(settings: &CccSettings) -> Self {
        DialPolicy {
            max_attempts: settings.max_attempts,
            initial_backoff: settings.initial_backoff(),
            max_backoff: settings.max_backoff(),
            replay_ambiguous: settings.replay_ambiguous,
            classifier: Classifier::new(
                settings
                    .error_classes
                    .iter()
                    .map(|(code, class)| (code.clone(), *class)),
            ),
        }
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

/// Dials `request`, retrying retryable failures per `policy`.
pub async fn dial<C: CccClient>(
    client: &C,
    policy: &DialPolicy,
    request: &DialRequest,
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
    let backoff = ExponentialBuilder::default()
        .with_min_delay(policy.initial_backoff)
        .with_max_delay(policy.max_backoff)
        .with_max_times(policy.max_attempts.saturating_sub(1) as usize)
        .with_jitter();
    let outcome = (|| async {
        // Checked before every attempt: a retry must not ring someone whose request is stale.
        if deadline.is_some_and(|d| jiff::Timestamp::now() >= d) {
            return Err(Attempt::Expired);
        }
        attempts.fetch_add(1, Ordering::Relaxed);
        let signed = client.sign(&params);
        let first = client.send(&signed).await;
        let answer = match first {
            Err(failure)
                if policy.replay_ambiguous
                    && policy.classifier.class(&failure) == ErrorClass::Ambiguous
                    && failure.code() != "SignatureNonceUsed" =>
            {
                resolve_by_replay(client, &signed, failure).await
            }
            other => other,
        };
        answer.map_err(|failure| {
            if failure.code().starts_with("Throttling") {
                throttled.store(true, Ordering::Relaxed);
            }
            Attempt::Failed(failure)
        })
    })
    .retry(backoff)
    .sleep(tokio::time::sleep)
    .when(|attempt: &Attempt| {
        matches!(attempt, Attempt::Failed(f) if policy.classifier.class(f) == ErrorClass::Retryable)
    })
    .notify(|attempt: &Attempt, wait: Duration| {
        if let Attempt::Failed(failure) = attempt {
            tracing::warn!(code = failure.code(), ?wait, "DialEx attempt failed; retrying");
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
) -> Result<DialAccepted, DialFailure> {
    match client.send(signed).await {
        Ok(accepted) => {
            tracing::info!(
                first = first.code(),
                "the first send never arrived; the replay was placed"
            );
            Ok(accepted)
        }
        Err(replay) => {
            let arrived = replay.code() == "SignatureNonceUsed";
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

/// Why one attempt did not succeed.
enum Attempt {
    Failed(DialFailure),
    Expired,
}
