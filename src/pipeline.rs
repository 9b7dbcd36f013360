//! One request, start to finish: validate, claim, gates, dial, record, publish, and say how
//! to settle.
//!
//! The order is the promise. A request is claimed in the store before it is dialed, so no two
//! deliveries (a redelivery after a crash, a duplicate from upstream, another replica) can both
//! dial it. The dial's result is recorded before the outcome is published, and the outcome is
//! published (and confirmed) before the request is acknowledged: a crash anywhere leads to a
//! redelivery that finds the record and re-publishes the same event, never to a second call
//! and never to a lost request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;

use lapin::types::AMQPValue;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::amqp::{Incoming, Publisher};
use crate::ccc::{CccClient, DialFailure, ErrorClass};
use crate::defer::Tiers;
use crate::dial::{DialPolicy, DialResult, dial};
use crate::gates::cooldown::{CalleeGate, NumberHasher};
use crate::gates::dnc::DncList;
use crate::gates::hours::BusinessHours;
use crate::gates::limits::{AnyLimiter, CallKey, Limiter};
use crate::metrics::{DedupKind, Metrics, StoreOp, SuppressReason};
use crate::outcome::{OutcomeEvent, Status};
use crate::settle::Disposition;
use crate::store::{Claim, ClaimToken, Cooldown, DialStore, Recorded, StoreError};
use crate::validate::{self, DialRequest, Rejection};

/// Why the worker stopped consuming.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HaltCause {
    /// CCC refused the worker itself (credentials, signature, clock).
    #[error("CCC answered {}: {}; {}", .0.code(), .0.message().unwrap_or("no message"), remedy(.0.code()))]
    Ccc(DialFailure),
    /// The dial-record store failed: without it no request can be dialed safely.
    #[error("the dial-record store failed: {0}")]
    Store(StoreError),
}

/// What an operator should check for a systemic answer.
fn remedy(code: &str) -> &'static str {
    if code.starts_with("InvalidAccessKeyId") {
        "check ALIBABA_CLOUD_ACCESS_KEY_ID (and ALIBABA_CLOUD_SECURITY_TOKEN for STS credentials)"
    } else if code == "SignatureDoesNotMatch" || code == "IncompleteSignature" {
        "check ALIBABA_CLOUD_ACCESS_KEY_SECRET"
    } else if code.starts_with("InvalidTimeStamp") {
        "check the clock of this machine (NTP); CCC accepts requests within 15 minutes of its time"
    } else if code.starts_with("Forbidden") {
        "check the RAM permissions of the AccessKey (ccc:DialEx) and the account's status"
    } else {
        "check the ALIBABA_CLOUD_* credentials, ccc.endpoint and the clock"
    }
}

/// Raised when the worker must stop consuming because every request would fail the same
/// way; the cause is kept for the log and the exit message. Reset when consumption resumes.
#[derive(Default)]
pub struct Halt {
    state: std::sync::Mutex<(CancellationToken, Option<HaltCause>)>,
}

impl Halt {
    fn state(&self) -> std::sync::MutexGuard<'_, (CancellationToken, Option<HaltCause>)> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn trigger(&self, cause: HaltCause) {
        let mut state = self.state();
        if state.1.is_none() {
            tracing::error!(error = %cause, "stopping consumption");
            state.1 = Some(cause);
        }
        state.0.cancel();
    }

    /// Cancelled once the halt is raised (a fresh token after [`Halt::reset`]).
    pub fn token(&self) -> CancellationToken {
        self.state().0.clone()
    }

    pub fn cause(&self) -> Option<HaltCause> {
        self.state().1.clone()
    }

    /// Clears the halt before consuming again.
    pub fn reset(&self) {
        *self.state() = (CancellationToken::new(), None);
    }
}

/// The stages wired together, shared by all in-flight requests.
pub struct Pipeline<C, S> {
    pub client: C,
    pub store: S,
    pub policy: DialPolicy,
    pub publisher: Publisher,
    pub tiers: Tiers,
    pub callee: Option<CalleeGate>,
    pub hasher: NumberHasher,
    pub hours: BusinessHours,
    pub dnc: DncList,
    pub limiter: AnyLimiter,
    pub metrics: Arc<Metrics>,
    pub halt: Arc<Halt>,
    /// The request queue's `x-delivery-limit`.
    pub delivery_limit: u32,
    /// Claims the store could not take back when they were released (it was down).
    pub unreleased: std::sync::Mutex<Vec<(String, ClaimToken)>>,
}

/// What the callee gate took for a request that may be dialed.
struct CalleeHold {
    key: String,
    /// The cooldown slot, with its window.
    cooldown: Option<Duration>,
    /// The day whose count was reserved.
    day: Option<String>,
}

enum Gate {
    Pass(Option<CalleeHold>),
    /// Not dialed; for the cooldown, the earlier request and its task id.
    Suppressed(SuppressReason, Option<(String, Option<String>)>),
}

impl<C: CccClient, S: DialStore> Pipeline<C, S> {
    /// Takes one delivery through every stage and returns how to settle it.
    pub async fn handle(&self, incoming: &Incoming) -> Disposition {
        #[cfg(feature = "test-hooks")]
        crate::test_hooks::fire(incoming);
        match validate::decode(&incoming.body, incoming.message_id.as_deref()) {
            Ok(request) => {
                let span = tracing::info_span!(
                    "request",
                    request_id = %request.request_id(),
                    instance_id = request.instance_id(),
                    callee = %request.callee(),
                );
                self.process(&request, incoming).instrument(span).await
            }
            Err(rejection) => {
                let span = tracing::info_span!(
                    "request",
                    request_id = rejection.request_id.as_ref().map(|r| r.as_str()),
                );
                self.reject(incoming, &rejection).instrument(span).await
            }
        }
    }

    async fn process(&self, request: &DialRequest, incoming: &Incoming) -> Disposition {
        if self.halt.token().is_cancelled() {
            return self.give_back(incoming).await;
        }
        let request_id = request.request_id().as_str();
        let fingerprint = self.hasher.fingerprint(request);
        let started = Instant::now();
        let claim = self.store.claim(request_id, &fingerprint).await;
        self.metrics.store_op(StoreOp::Claim, started.elapsed());
        let token = match claim {
            Ok(Claim::Acquired(token)) => {
                incoming.mark_claimed();
                token
            }
            Ok(Claim::Held { worker, remaining }) => {
                self.metrics.dedup_hit(DedupKind::Claimed);
                tracing::info!(%worker, ?remaining, "request is being handled elsewhere; deferring");
                return self.defer(incoming, remaining, "claimed").await;
            }
            Ok(Claim::Recorded { event }) => {
                self.metrics.dedup_hit(DedupKind::Recorded);
                tracing::info!("request already has a result; publishing it again");
                return self.republish(&event, incoming).await;
            }
            Ok(Claim::Abandoned(token)) => {
                incoming.mark_claimed();
                self.metrics.dedup_hit(DedupKind::Abandoned);
                tracing::warn!(
                    "a worker stopped while handling this request; it may have been dialed, so it is not dialed again"
                );
                let event = OutcomeEvent::interrupted(request, incoming.received_at);
                return self
                    .record_and_publish(request_id, &token, &event, incoming)
                    .await;
            }
            Ok(Claim::Reused) => {
                // Another request owns this request_id; its record stays untouched.
                let rejection = Rejection::request_id_reused(request.request_id());
                return self.reject(incoming, &rejection).await;
            }
            Err(error) => return self.halt_on(HaltCause::Store(error), incoming).await,
        };

        let now = Timestamp::now();
        if request.expires_at().is_some_and(|at| now >= at) {
            let event =
                OutcomeEvent::expired(request, incoming.received_at, incoming.prior_attempts);
            return self
                .record_and_publish(request_id, &token, &event, incoming)
                .await;
        }
        if let Some((reason, when)) = self.not_yet(request, now) {
            if request.expires_at().is_some_and(|at| when >= at) {
                let event =
                    OutcomeEvent::expired(request, incoming.received_at, incoming.prior_attempts);
                return self
                    .record_and_publish(request_id, &token, &event, incoming)
                    .await;
            }
            // Not ours to hold while it waits: whoever sees it come back claims it afresh.
            if let Err(error) = self.release(request_id, &token).await {
                return self.halt_on(HaltCause::Store(error), incoming).await;
            }
            return self.defer_until(request, incoming, reason, when, now).await;
        }

        match self.dnc.contains(request.callee()).await {
            Ok(false) => {}
            Ok(true) => {
                self.metrics.suppressed(SuppressReason::Dnc);
                let event = OutcomeEvent::suppressed(
                    request,
                    incoming.received_at,
                    SuppressReason::Dnc,
                    None,
                );
                return self
                    .record_and_publish(request_id, &token, &event, incoming)
                    .await;
            }
            Err(error) => {
                // Fail closed: never dial a number that might be on the list.
                tracing::error!(%error, "the do-not-call list could not be checked; deferring");
                if let Err(error) = self.release(request_id, &token).await {
                    return self.halt_on(HaltCause::Store(error), incoming).await;
                }
                return self
                    .defer(incoming, Duration::ZERO, "dnc_unavailable")
                    .await;
            }
        }

        let hold = match self.callee_gate(request).await {
            Ok(Gate::Pass(hold)) => hold,
            Ok(Gate::Suppressed(reason, earlier)) => {
                self.metrics.suppressed(reason);
                let event = OutcomeEvent::suppressed(
                    request,
                    incoming.received_at,
                    reason,
                    earlier
                        .as_ref()
                        .map(|(id, task)| (id.as_str(), task.as_deref())),
                );
                return self
                    .record_and_publish(request_id, &token, &event, incoming)
                    .await;
            }
            Err(error) => {
                let _ = self.release(request_id, &token).await;
                return self.halt_on(HaltCause::Store(error), incoming).await;
            }
        };

        let caller_key = self
            .hasher
            .hash(&[request.instance_id(), request.caller().as_str()]);
        let pair_key = self.hasher.hash(&[
            request.instance_id(),
            request.caller().as_str(),
            request.callee().as_str(),
        ]);
        let key = CallKey {
            instance_id: request.instance_id(),
            caller_key: &caller_key,
            pair_key: &pair_key,
        };
        let waiting = Instant::now();
        let acquired = self.limiter.acquire(&key).await;
        self.metrics
            .limiter_wait
            .observe(waiting.elapsed().as_secs_f64());
        let permit = match acquired {
            Ok(Some(permit)) => permit,
            outcome => {
                if let Err(error) = outcome {
                    tracing::warn!(%error, "the limiter could not decide; deferring");
                }
                // Too long a wait for a slot: wait outside the process instead.
                self.settle_callee(request_id, hold, None).await;
                if let Err(error) = self.release(request_id, &token).await {
                    return self.halt_on(HaltCause::Store(error), incoming).await;
                }
                return self
                    .defer_until(
                        request,
                        incoming,
                        "limits",
                        Timestamp::now(),
                        Timestamp::now(),
                    )
                    .await;
            }
        };

        let hop_attempts = self.policy.attempts_for_hop(incoming.prior_attempts);
        self.metrics.queue_to_dial.observe(
            Timestamp::now()
                .duration_since(incoming.received_at)
                .as_secs_f64()
                .max(0.0),
        );
        let report = dial(
            &self.client,
            &self.policy,
            request,
            hop_attempts,
            &self.metrics,
        )
        .await;
        permit.release().await;
        if report.throttled {
            self.limiter.throttled(request.instance_id());
        }
        let attempts = incoming.prior_attempts.saturating_add(report.attempts);
        let received_at = incoming.received_at;
        let event = match &report.result {
            DialResult::Dialed(accepted) => {
                self.metrics.dialed_now();
                OutcomeEvent::dialed(request, received_at, accepted, attempts)
            }
            DialResult::Failed(failure) => {
                if self.policy.classifier.class(failure) == ErrorClass::Retryable
                    && let Some(when) = self.retry_at(request, attempts)
                {
                    // Certainly not placed: give everything back and try again later, from
                    // whichever worker sees the request come back.
                    self.settle_callee(request_id, hold, None).await;
                    if let Err(error) = self.release(request_id, &token).await {
                        return self.halt_on(HaltCause::Store(error), incoming).await;
                    }
                    return self
                        .retry_later(request, incoming, failure, attempts, when)
                        .await;
                }
                OutcomeEvent::not_dialed(request, Status::Failed, received_at, failure, attempts)
            }
            DialResult::Unknown(failure) => {
                OutcomeEvent::not_dialed(request, Status::Unknown, received_at, failure, attempts)
            }
            DialResult::Expired => OutcomeEvent::expired(request, received_at, attempts),
            DialResult::Systemic(failure) => {
                // Not dialed: give the request back whole, for when the worker is fixed.
                self.settle_callee(request_id, hold, None).await;
                let _ = self.release(request_id, &token).await;
                return self
                    .halt_on(HaltCause::Ccc(failure.clone()), incoming)
                    .await;
            }
        };
        // A call that was placed (or may have been) keeps the callee's cooldown slot and its
        // place in today's count; one that certainly was not gives both back.
        match &report.result {
            DialResult::Dialed(accepted) => {
                self.settle_callee(request_id, hold, Some(Some(&accepted.task_id)))
                    .await;
            }
            DialResult::Unknown(_) => self.settle_callee(request_id, hold, Some(None)).await,
            _ => self.settle_callee(request_id, hold, None).await,
        }
        self.record_and_publish(request_id, &token, &event, incoming)
            .await
    }

    /// When a request that failed retryably after `attempts` attempts may be tried again:
    /// `None` once the attempt cap is reached or the next try would come after `expires_at`.
    fn retry_at(&self, request: &DialRequest, attempts: u32) -> Option<Timestamp> {
        let delay = self.policy.requeue_after(attempts)?;
        let when = Timestamp::now().checked_add(delay).ok()?;
        match request.expires_at() {
            Some(deadline) if when >= deadline => None,
            _ => Some(when),
        }
    }

    /// Sends a request whose in-process retries are spent through the wait queues, with the
    /// attempts made so far; one `deferred` event (code `retry`) says why and when.
    async fn retry_later(
        &self,
        request: &DialRequest,
        incoming: &Incoming,
        failure: &DialFailure,
        attempts: u32,
        when: Timestamp,
    ) -> Disposition {
        const REASON: &str = "retry";
        tracing::warn!(code = failure.code(), attempts, %when, "DialEx keeps refusing for now; trying again later");
        if incoming.deferred_reason.as_deref() != Some(REASON) {
            let mut event = OutcomeEvent::deferred(request, incoming.received_at, REASON, when);
            event.message = Some(format!(
                "not placed ({}); trying again at next_attempt_at",
                failure.code()
            ));
            event.attempts = attempts;
            self.announce(&event).await;
        }
        let delay = when
            .duration_since(Timestamp::now())
            .try_into()
            .unwrap_or(Duration::ZERO);
        self.defer_with(incoming, delay, REASON, attempts).await
    }

    /// Publishes an informational (`deferred`) event; the request goes on either way.
    async fn announce(&self, event: &OutcomeEvent) {
        match self.publisher.publish_outcome(event, None).await {
            Ok(()) => self.metrics.outcome(event.status),
            Err(error) => tracing::warn!(%error, "could not publish the deferred event"),
        }
    }

    /// When the request may be dialed, if not now: the later of `not_before` and the next
    /// opening of its instance's calendar, with the reason that decides.
    fn not_yet(&self, request: &DialRequest, now: Timestamp) -> Option<(&'static str, Timestamp)> {
        let not_before = request.not_before().filter(|at| *at > now);
        let calendar = self.hours.for_instance(request.instance_id());
        let from = not_before.unwrap_or(now);
        // A calendar that never opens again: nothing can be dialed; treat it as far future,
        // which expires requests with a deadline and parks the others in the longest tier.
        let opening = calendar
            .next_opening(from)
            .unwrap_or_else(|| from + jiff::SignedDuration::from_hours(24 * 400));
        if opening > from {
            Some(("outside_hours", opening))
        } else {
            not_before.map(|at| ("not_before", at))
        }
    }

    /// Defers until `when`: a `deferred` event the first time for this reason, then the hop
    /// through the wait tier that fits the remaining delay.
    async fn defer_until(
        &self,
        request: &DialRequest,
        incoming: &Incoming,
        reason: &str,
        when: Timestamp,
        now: Timestamp,
    ) -> Disposition {
        if incoming.deferred_reason.as_deref() != Some(reason) {
            let event = OutcomeEvent::deferred(request, incoming.received_at, reason, when);
            self.announce(&event).await;
        }
        let delay = when
            .duration_since(now)
            .try_into()
            .unwrap_or(Duration::ZERO);
        self.defer(incoming, delay, reason).await
    }

    /// The callee gate: cooldown, then the daily cap. On `Pass`, the returned hold says what
    /// was taken, to be kept or given back once the dial's fate is known.
    async fn callee_gate(&self, request: &DialRequest) -> Result<Gate, StoreError> {
        let Some(gate) = &self.callee else {
            return Ok(Gate::Pass(None));
        };
        let request_id = request.request_id().as_str();
        let key = gate.key(request);
        let mut hold = CalleeHold {
            key,
            cooldown: None,
            day: None,
        };
        if let Some(window) = gate.window() {
            match self
                .store
                .cooldown_acquire(&hold.key, request_id, window)
                .await?
            {
                Cooldown::Free => hold.cooldown = Some(window),
                Cooldown::Taken {
                    request_id: earlier,
                    task_id,
                } => {
                    return Ok(Gate::Suppressed(
                        SuppressReason::Cooldown,
                        Some((earlier, task_id)),
                    ));
                }
            }
        }
        if let Some((max, day)) = gate.daily_cap(Timestamp::now()) {
            let reserved = self.store.daily_reserve(&hold.key, &day, max).await;
            if !matches!(reserved, Ok(true)) {
                // Over the cap, or the store failed: give back the cooldown slot taken above.
                self.settle_callee(request_id, Some(hold), None).await;
                return reserved.map(|_| Gate::Suppressed(SuppressReason::DailyCap, None));
            }
            hold.day = Some(day);
        }
        Ok(Gate::Pass(Some(hold)))
    }

    /// Keeps or gives back what the callee gate took. `placed` is `Some(task id if known)`
    /// when the call was (or may have been) placed, `None` when it certainly was not.
    async fn settle_callee(
        &self,
        request_id: &str,
        hold: Option<CalleeHold>,
        placed: Option<Option<&str>>,
    ) {
        let Some(hold) = hold else { return };
        let result = async {
            match placed {
                Some(task_id) => {
                    if let (Some(window), Some(task_id)) = (hold.cooldown, task_id) {
                        self.store
                            .cooldown_dialed(&hold.key, request_id, task_id, window)
                            .await?;
                    }
                }
                None => {
                    if hold.cooldown.is_some() {
                        self.store.cooldown_release(&hold.key, request_id).await?;
                    }
                    if let Some(day) = &hold.day {
                        self.store.daily_release(&hold.key, day).await?;
                    }
                }
            }
            Ok::<(), StoreError>(())
        }
        .await;
        if let Err(error) = result {
            tracing::warn!(%error, "could not update the callee's cooldown or daily count");
        }
    }

    /// Records `event` as the request's result, then publishes whichever result the store
    /// holds (ours, or one another worker recorded first).
    async fn record_and_publish(
        &self,
        request_id: &str,
        token: &ClaimToken,
        event: &OutcomeEvent,
        incoming: &Incoming,
    ) -> Disposition {
        let json = event.to_json();
        let started = Instant::now();
        let recorded = self.store.record(request_id, token, &json).await;
        self.metrics.store_op(StoreOp::Record, started.elapsed());
        match recorded {
            Ok(Recorded::Stored) => self.publish_json(event, &json, incoming).await,
            Ok(Recorded::Earlier(stored)) => self.republish(&stored, incoming).await,
            Err(error) => {
                // The outcome is known but cannot be remembered. Tell downstream what happened
                // (the task id matters to them), then stop: without a store, no further
                // request may be dialed.
                tracing::error!(%error, status = event.status.as_str(), "could not record the result");
                let disposition = self.publish_json(event, &json, incoming).await;
                self.halt.trigger(HaltCause::Store(error));
                disposition
            }
        }
    }

    /// Publishes a stored result again; its `event_id` is the one published the first time.
    async fn republish(&self, stored: &[u8], incoming: &Incoming) -> Disposition {
        match serde_json::from_slice::<OutcomeEvent>(stored) {
            // The stored bytes are the event as first published: send them as they are.
            Ok(event) => self.publish_json(&event, stored, incoming).await,
            Err(error) => {
                tracing::error!(%error, "the stored result is unreadable; parking the request");
                self.park(
                    incoming,
                    "unreadable_record",
                    "the stored result could not be read",
                )
                .await
            }
        }
    }

    /// Sends the request to the wait tier for `delay`; it comes back and is evaluated again.
    async fn defer(&self, incoming: &Incoming, delay: Duration, reason: &str) -> Disposition {
        self.defer_with(incoming, delay, reason, incoming.prior_attempts)
            .await
    }

    /// [`Pipeline::defer`], recording `attempts` made so far across hops.
    async fn defer_with(
        &self,
        incoming: &Incoming,
        delay: Duration,
        reason: &str,
        attempts: u32,
    ) -> Disposition {
        let tier = self.tiers.for_delay(delay);
        match self
            .publisher
            .defer(incoming, &tier.queue, reason, attempts)
            .await
        {
            Ok(()) => {
                self.metrics.deferred(reason);
                Disposition::Ack
            }
            Err(error) => {
                tracing::error!(%error, "could not defer the request; returning it to the queue");
                Disposition::Requeue
            }
        }
    }

    /// Gives a claim back. If the store cannot take it now, the claim is remembered and given
    /// back once the store answers again ([`Pipeline::release_remembered`]), so that a request
    /// that was never dialed is not later taken for one whose worker died mid-call.
    async fn release(&self, request_id: &str, token: &ClaimToken) -> Result<(), StoreError> {
        let released = self.store.release(request_id, token).await;
        if released.is_err() {
            self.unreleased()
                .push((request_id.to_owned(), token.clone()));
        }
        released
    }

    fn unreleased(&self) -> std::sync::MutexGuard<'_, Vec<(String, ClaimToken)>> {
        self.unreleased
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Gives back the claims the store could not take earlier; those it still cannot take
    /// stay remembered.
    pub async fn release_remembered(&self) {
        let pending = std::mem::take(&mut *self.unreleased());
        if pending.is_empty() {
            return;
        }
        tracing::info!(
            claims = pending.len(),
            "giving back claims the store could not take earlier"
        );
        for (request_id, token) in pending {
            if let Err(error) = self.release(&request_id, &token).await {
                tracing::warn!(%error, "could not give a claim back yet");
            }
        }
    }

    async fn halt_on(&self, cause: HaltCause, incoming: &Incoming) -> Disposition {
        self.halt.trigger(cause);
        self.give_back(incoming).await
    }

    /// Returns a request the worker cannot handle now to its queue, whole, for a healthy
    /// worker (or this one once it resumes). A fresh copy does not count towards the queue's
    /// delivery limit; if it cannot be published, the delivery is requeued instead.
    async fn give_back(&self, incoming: &Incoming) -> Disposition {
        match self.publisher.give_back(incoming).await {
            Ok(()) => Disposition::Ack,
            Err(error) => {
                tracing::warn!(%error, "could not put the request back as a fresh message; requeueing it");
                Disposition::Requeue
            }
        }
    }

    /// Settles a delivery whose handling panicked (`what` says how). Once the request is
    /// claimed, its claim keeps it from being dialed twice, so it is simply returned. Before
    /// that, it is returned until its last allowed delivery, which parks it on the dead-letter
    /// exchange with a `failed` event (code `poison_message`) instead of letting it loop or
    /// vanish.
    pub async fn after_panic(&self, incoming: &Incoming, what: &str) -> Disposition {
        let deliveries = incoming.delivery_count.saturating_add(1);
        if incoming.is_claimed() || deliveries <= self.delivery_limit {
            tracing::error!(
                panic = what,
                deliveries,
                limit = self.delivery_limit,
                "handling a request panicked; returning it to the queue"
            );
            return Disposition::Requeue;
        }
        tracing::error!(
            panic = what,
            deliveries,
            "handling a request panicked on every delivery; parking it"
        );
        let detail = format!(
            "handling this request failed on {deliveries} deliveries; the last failure: {what}"
        );
        if let Some(request_id) =
            validate::recover_request_id(&incoming.body, incoming.message_id.as_deref())
        {
            let event = OutcomeEvent::poisoned(request_id.as_str(), incoming.received_at, &detail);
            if self.publish(&event, incoming).await != Disposition::Ack {
                return Disposition::DeadLetter;
            }
        }
        self.park(incoming, "poison_message", &detail).await
    }

    async fn reject(&self, incoming: &Incoming, rejection: &Rejection) -> Disposition {
        tracing::warn!(reason = rejection.reason.code(), detail = %rejection.detail, "request rejected");
        if let Some(request_id) = &rejection.request_id {
            let event =
                OutcomeEvent::rejected(rejection, request_id.as_str(), incoming.received_at);
            if self.publish(&event, incoming).await != Disposition::Ack {
                return Disposition::DeadLetter;
            }
        }
        self.park(incoming, rejection.reason.code(), &rejection.detail)
            .await
    }

    /// Parks the request on the dead-letter exchange with a reason.
    async fn park(&self, incoming: &Incoming, reason: &str, detail: &str) -> Disposition {
        match self.publisher.dead_letter(incoming, reason, detail).await {
            Ok(()) => {
                self.metrics.dead_lettered(reason);
                Disposition::Ack
            }
            Err(error) => {
                tracing::error!(%error, "could not park the request; leaving it to the queue's dead-letter exchange");
                Disposition::DeadLetter
            }
        }
    }

    async fn publish(&self, event: &OutcomeEvent, incoming: &Incoming) -> Disposition {
        self.publish_json(event, &event.to_json(), incoming).await
    }

    /// Publishes `event`, serialized as `json`, carrying the request's `traceparent`.
    async fn publish_json(
        &self,
        event: &OutcomeEvent,
        json: &[u8],
        incoming: &Incoming,
    ) -> Disposition {
        let traceparent = incoming
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("traceparent"))
            .and_then(|value| match value {
                AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
                AMQPValue::ShortString(s) => Some(s.as_str()),
                _ => None,
            })
            // A W3C traceparent is 55 characters; anything far longer is not one.
            .filter(|s| s.len() <= 128);
        match self
            .publisher
            .publish_outcome_json(event, json, traceparent)
            .await
        {
            Ok(()) => {
                self.metrics.outcome(event.status);
                tracing::info!(
                    status = event.status.as_str(),
                    task_id = event.task_id.as_deref(),
                    code = event.code.as_deref(),
                    attempts = event.attempts,
                    "outcome published"
                );
                Disposition::Ack
            }
            Err(error) => {
                tracing::error!(%error, status = event.status.as_str(), "could not publish the outcome; dead-lettering the request (its result is recorded, so it is not dialed again)");
                Disposition::DeadLetter
            }
        }
    }
}
