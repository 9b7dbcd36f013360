//! One request, start to finish: decode, claim, gates, dial, record; then one step carried
//! out against the broker.
//!
//! The order is the promise. A request is claimed in the store before it is dialed, so no two
//! deliveries (a redelivery after a crash, a duplicate from upstream, another replica) can both
//! dial it. The dial's result is recorded before the outcome is published, and the outcome is
//! published (and confirmed) before the request is acknowledged: a crash anywhere leads to a
//! redelivery that finds the record and re-publishes the same event, never to a second call
//! and never to a lost request.
//!
//! The shape keeps it so. Each stage ([`dedup`], [`gates`], the dial in [`Pipeline::process`],
//! [`record`]) returns a value: a [`Verdict`] for a claimed request, which
//! [`Pipeline::conclude`] turns into a [`Step`], giving back or keeping what the request holds
//! ([`held::Held`]: claim, callee hold, limiter permit) in one place; and [`execute`] alone
//! carries a step out against the [`Broker`]. So every exit is a value a unit test can look
//! at, without a broker, and a new exit cannot forget to give something back.

mod broker;
mod dedup;
mod execute;
mod gates;
mod halt;
mod held;
mod record;
mod step;
#[cfg(test)]
mod tests;

pub use broker::Broker;
pub use halt::{Halt, HaltCause};
pub use step::{Deferral, Finish, Parking, Step, Verdict};

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tracing::Instrument as _;

use crate::amqp::{Incoming, Publisher};
use crate::ccc::{CccClient, DialFailure, ErrorClass};
use crate::defer::Tiers;
use crate::dial::{DialPolicy, DialResult, Watchers, dial};
use crate::followup::FollowupJob;
use crate::gates::cooldown::{CalleeGate, NumberHasher};
use crate::gates::dnc::DncList;
use crate::gates::hours::BusinessHours;
use crate::gates::limits::Limiter;
use crate::metrics::Metrics;
use crate::outage::OutageBreaker;
use crate::outcome::{DeferReason, OutcomeEvent, Status};
use crate::settle::Disposition;
use crate::store::{ClaimToken, DialStore, StoreError};
use crate::validate::{self, DialRequest};

use held::Held;

/// The stages wired together, shared by all in-flight requests.
pub struct Pipeline<C, S, L, B = Publisher> {
    pub client: C,
    pub store: S,
    pub policy: DialPolicy,
    pub publisher: B,
    pub tiers: Tiers,
    pub callee: Option<CalleeGate>,
    pub hasher: NumberHasher,
    pub hours: BusinessHours,
    pub dnc: DncList,
    pub limiter: L,
    /// Opens when CCC fails for everyone; see [`crate::outage`].
    pub outage: OutageBreaker,
    pub metrics: Arc<Metrics>,
    pub halt: Arc<Halt>,
    /// The request queue's `x-delivery-limit`.
    pub delivery_limit: u32,
    /// How long a claim holds (`store.lease_ms`): the dial must start early enough to end
    /// within it.
    pub lease: Duration,
    /// Claims the store could not take back when they were released (it was down).
    pub unreleased: std::sync::Mutex<Vec<(String, ClaimToken)>>,
    /// Where dialed requests' follow-up jobs go, when the follow-up is on.
    pub followup: Option<Schedule>,
}

/// How the dial path schedules follow-ups: the first poll's delay after the dial, and the
/// follow-up queue's wait tiers.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub first_poll: Duration,
    pub tiers: Tiers,
}

impl<C: CccClient, S: DialStore, L: Limiter, B: Broker> Pipeline<C, S, L, B> {
    /// Takes one delivery through every stage and returns how to settle it.
    pub async fn handle(&self, incoming: &Incoming) -> Disposition {
        #[cfg(feature = "test-hooks")]
        if let Some(late) = crate::test_hooks::fire(incoming) {
            tokio::time::sleep(late).await;
        }
        if incoming.is_followup_job() {
            // A follow-up job replayed into the request queue (by hand, or by an older
            // `dialex-worker dead`): read as a request it would be rejected, a second terminal
            // outcome for a request already dialed. Parked as it is instead.
            let parking = Parking {
                reason: "misrouted_followup_job",
                detail: "a follow-up job arrived on the request queue".to_owned(),
                event: None,
            };
            return self.execute(Step::Park(parking), incoming).await;
        }
        match validate::decode(&incoming.body, incoming.message_id.as_deref()) {
            Ok(request) => {
                let span = tracing::info_span!(
                    "request",
                    request_id = %request.request_id(),
                    instance_id = request.instance_id(),
                    callee = %request.callee(),
                );
                async {
                    let mut step = self.process(&request, incoming).await;
                    if let (Step::Finish(finish), Some(followup)) = (&mut step, &self.followup) {
                        finish.followup =
                            FollowupJob::after(&request, &finish.event, followup.first_poll);
                    }
                    self.execute(step, incoming).await
                }
                .instrument(span)
                .await
            }
            Err(rejection) => {
                let span = tracing::info_span!(
                    "request",
                    request_id = rejection.request_id.as_ref().map(|r| r.as_str()),
                );
                async {
                    let step = self.rejected(incoming, &rejection);
                    self.execute(step, incoming).await
                }
                .instrument(span)
                .await
            }
        }
    }

    /// The path of a valid request, top to bottom.
    pub(crate) async fn process(&self, request: &DialRequest, incoming: &Incoming) -> Step {
        if self.halt.is_raised() {
            return Step::GiveBack;
        }
        if let Some(step) = self.back_early(request, incoming) {
            return step;
        }
        let mut held = match self.claim(request, incoming).await {
            Ok(held) => held,
            Err(step) => return step,
        };
        if let Err(verdict) = self.gates(request, incoming, &mut held).await {
            return self.conclude(request, incoming, held, verdict).await;
        }
        let verdict = self.dial(request, incoming, &mut held).await;
        self.conclude(request, incoming, held, verdict).await
    }

    /// A request back from a wait queue before the time its deferral named waits again
    /// (tiers round the delay, and a longer one is made of several hops), keeping its booked
    /// start. One with a booked start near enough goes on: it is claimed and passes the gates
    /// first, and waits for its start only then, right before taking it (see the gates'
    /// `pace`), so a slow store cannot make it miss its start.
    fn back_early(&self, request: &DialRequest, incoming: &Incoming) -> Option<Step> {
        if let Some(due) = incoming.due {
            self.returned(due);
        }
        let until = incoming.not_before?;
        let left = crate::defer::time_until(until);
        tracing::debug!(
            left_ms = left.as_millis() as u64,
            booked = incoming.booking.is_some(),
            "back from a wait queue"
        );
        let near = || self.tiers.for_booked(left).is_none();
        if left.is_zero() || (incoming.booking.is_some() && near()) {
            return None;
        }
        let reason = incoming.deferred_reason.unwrap_or(DeferReason::NotBefore);
        let mut wait = self.deferral(request, incoming, reason, until, incoming.prior_attempts);
        wait.booking = incoming.booking.clone();
        Some(Step::Defer(wait))
    }

    /// Learns how late a wait queue handed a request back (`due` is when its tier's delay
    /// ended), so booked requests come back that much earlier for a while.
    fn returned(&self, due: Timestamp) {
        let late = Duration::try_from(Timestamp::now().duration_since(due)).unwrap_or_default();
        self.metrics.wait_lateness.observe(late.as_secs_f64());
        self.tiers.lateness.observe(late);
        self.metrics
            .booking_margin
            .set(self.tiers.booking_margin().as_secs_f64());
    }

    /// The dial stage: one hop's attempts, holding the permit the gates took.
    async fn dial(&self, request: &DialRequest, incoming: &Incoming, held: &mut Held) -> Verdict {
        let hop_attempts = self.policy.attempts_for_hop(incoming.prior_attempts);
        let waited = Timestamp::now().duration_since(incoming.ready_at);
        self.metrics.queue_to_dial(
            request.instance_id(),
            Duration::try_from(waited).unwrap_or(Duration::ZERO),
        );
        let report = dial(
            &self.client,
            &self.policy,
            request,
            hop_attempts,
            Watchers {
                metrics: &self.metrics,
                outage: &self.outage,
            },
        )
        .await;
        held.release_permit().await;
        if report.throttled {
            self.limiter.throttled(request.instance_id());
        }
        let attempts = incoming.prior_attempts.saturating_add(report.attempts);
        let received_at = incoming.received_at;
        match report.result {
            DialResult::Dialed(accepted) => {
                self.metrics.dialed_now();
                Verdict::Resolve(OutcomeEvent::dialed(
                    request,
                    received_at,
                    &accepted,
                    attempts,
                ))
            }
            DialResult::Failed(failure) => {
                let retryable = self.policy.classifier.class(&failure) == ErrorClass::Retryable;
                if retryable && !failure.is_throttling() && self.outage.is_open() {
                    // CCC is down for everyone: not this request's fault, so this hop's
                    // attempts are not counted against it.
                    return Verdict::Pause(HaltCause::Outage(failure));
                }
                if retryable && let Some(until) = self.retry_at(request, attempts) {
                    // Certainly not placed: give everything back and try again later, from
                    // whichever worker sees the request come back.
                    tracing::warn!(code = failure.code(), attempts, %until, "DialEx keeps refusing for now; trying again later");
                    let mut wait =
                        self.deferral(request, incoming, DeferReason::Retry, until, attempts);
                    if let Some(event) = &mut wait.announce {
                        event.message = Some(format!(
                            "not placed ({}); trying again at next_attempt_at",
                            failure.code()
                        ));
                        event.attempts = attempts;
                    }
                    return Verdict::Wait(wait);
                }
                Verdict::Resolve(OutcomeEvent::not_dialed(
                    request,
                    Status::Failed,
                    received_at,
                    &failure,
                    attempts,
                ))
            }
            DialResult::Unknown(failure) => Verdict::Resolve(OutcomeEvent::not_dialed(
                request,
                Status::Unknown,
                received_at,
                &failure,
                attempts,
            )),
            DialResult::Expired => {
                Verdict::Resolve(OutcomeEvent::expired(request, received_at, attempts))
            }
            DialResult::Systemic(failure) => Verdict::Refused(failure),
        }
    }

    /// The one place a claimed request's verdict becomes a step: what it holds is kept for a
    /// call that was (or may have been) placed, and given back otherwise.
    async fn conclude(
        &self,
        request: &DialRequest,
        incoming: &Incoming,
        held: Held,
        verdict: Verdict,
    ) -> Step {
        let request_id = request.request_id().as_str();
        match verdict {
            Verdict::Resolve(event) => self.record(request_id, held, event, incoming).await,
            Verdict::Wait(deferral) => match self.let_go(request_id, held).await {
                Ok(()) => Step::Defer(deferral),
                Err(error) => {
                    self.store_failed(error, Some(request), incoming, true)
                        .await
                }
            },
            Verdict::StoreFailed(error) => {
                let _ = self.let_go(request_id, held).await;
                self.store_failed(error, Some(request), incoming, true)
                    .await
            }
            Verdict::Refused(failure) => {
                let _ = self.let_go(request_id, held).await;
                self.refused(failure, request, incoming).await
            }
            Verdict::Pause(cause) => {
                let _ = self.let_go(request_id, held).await;
                self.halt.trigger(cause);
                Step::GiveBack
            }
        }
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

    /// A deferral until `until`, announced with a `deferred` event the first time the request
    /// waits for this reason (a request waiting for a claim or the do-not-call list is not
    /// announced: it is not waiting on its own account).
    fn deferral(
        &self,
        request: &DialRequest,
        incoming: &Incoming,
        reason: DeferReason,
        until: Timestamp,
        attempts: u32,
    ) -> Deferral {
        let quiet = matches!(reason, DeferReason::Claimed | DeferReason::DncUnavailable);
        let announce = (!quiet && incoming.deferred_reason != Some(reason))
            .then(|| OutcomeEvent::deferred(request, incoming.received_at, reason.as_str(), until));
        Deferral {
            reason,
            until,
            attempts,
            announce,
            booking: None,
        }
    }

    /// A store failure while handling this request. If the store still answers, or the
    /// failure is a record it cannot read, the fault is this request's: it is tried again on
    /// later deliveries and parked on its last (with `failed` if it was claimed and so
    /// certainly not dialed, `unknown` if its record could not be read). Otherwise the store
    /// is down for everyone: the worker pauses and the request goes back whole.
    async fn store_failed(
        &self,
        error: StoreError,
        request: Option<&DialRequest>,
        incoming: &Incoming,
        claimed: bool,
    ) -> Step {
        if self.halt.is_raised() {
            // Another request found the store down already.
            return Step::GiveBack;
        }
        let concerns_one =
            matches!(error, StoreError::Corrupt(_)) || self.store.check().await.is_ok();
        if !concerns_one {
            self.halt.trigger(HaltCause::Store(error));
            return Step::GiveBack;
        }
        tracing::error!(%error, "the dial-record store failed for this request only");
        let detail = format!("the dial-record store failed for this request: {error}");
        self.retry_or_park(incoming, "store_error", detail, |detail| {
            let request = request?;
            let status = if claimed {
                Status::Failed
            } else {
                Status::Unknown
            };
            Some(OutcomeEvent::faulted(
                request,
                status,
                incoming.received_at,
                "store_error",
                detail,
            ))
        })
    }

    /// CCC refused the worker for this request. If CCC accepts the worker's probe, the
    /// refusal concerns this request (an instance the worker may not call): tried again on
    /// later deliveries, then parked with a `failed` event. Otherwise the worker itself is
    /// refused: it pauses and the request goes back whole.
    async fn refused(
        &self,
        failure: DialFailure,
        request: &DialRequest,
        incoming: &Incoming,
    ) -> Step {
        if self.client.probe().await.is_err() {
            self.halt.trigger(HaltCause::Ccc(failure));
            return Step::GiveBack;
        }
        tracing::error!(
            code = failure.code(),
            "CCC refused this request, though it accepts the worker"
        );
        let detail = format!(
            "CCC refused this request ({}) but accepts the worker: check the permissions for this instance",
            failure.code()
        );
        self.retry_or_park(incoming, "ccc_refused", detail, |_| {
            Some(OutcomeEvent::not_dialed(
                request,
                Status::Failed,
                incoming.received_at,
                &failure,
                incoming.prior_attempts,
            ))
        })
    }

    /// Whether this is the last delivery the request queue allows: the broker dead-letters
    /// the message instead of delivering it again.
    fn last_delivery(&self, incoming: &Incoming) -> bool {
        incoming.delivery_count.saturating_add(1) > self.delivery_limit
    }

    /// A fault that may pass: redelivered until its last allowed delivery, then parked with
    /// `reason` and the event `event` builds from the detail.
    fn retry_or_park(
        &self,
        incoming: &Incoming,
        reason: &'static str,
        detail: String,
        event: impl FnOnce(&str) -> Option<OutcomeEvent>,
    ) -> Step {
        if !self.last_delivery(incoming) {
            return Step::Redeliver;
        }
        let deliveries = incoming.delivery_count.saturating_add(1);
        let detail = format!("{detail} (on {deliveries} deliveries)");
        Step::Park(Parking {
            reason,
            event: event(&detail),
            detail,
        })
    }

    /// Gives everything `held` holds back: the permit, the callee's slot and count, and the
    /// claim. If the store cannot take the claim now, it is remembered and given back once
    /// the store answers again ([`Pipeline::release_remembered`]), so that a request that was
    /// never dialed is not later taken for one whose worker died mid-call.
    async fn let_go(&self, request_id: &str, mut held: Held) -> Result<(), StoreError> {
        held.release_permit().await;
        self.settle_callee(request_id, &mut held, None).await;
        self.release(request_id, held.into_claim()).await
    }

    async fn release(&self, request_id: &str, token: ClaimToken) -> Result<(), StoreError> {
        let released = self.store.release(request_id, &token).await;
        if released.is_err() {
            self.unreleased().push((request_id.to_owned(), token));
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
            if let Err(error) = self.release(&request_id, token).await {
                tracing::warn!(%error, "could not give a claim back yet");
            }
        }
    }

    /// Settles a delivery whose handling panicked (`what` says how). Once the request is
    /// claimed, its claim keeps it from being dialed twice, so it is simply returned. Before
    /// that, it is returned until its last allowed delivery, which parks it on the dead-letter
    /// exchange with a `failed` event (code `poison_message`) instead of letting it loop or
    /// vanish.
    pub async fn after_panic(&self, incoming: &Incoming, what: &str) -> Disposition {
        let step = self.panicked(incoming, what);
        self.execute(step, incoming).await
    }

    fn panicked(&self, incoming: &Incoming, what: &str) -> Step {
        let deliveries = incoming.delivery_count.saturating_add(1);
        if incoming.is_claimed() || !self.last_delivery(incoming) {
            tracing::error!(
                panic = what,
                deliveries,
                limit = self.delivery_limit,
                "handling a request panicked; returning it to the queue"
            );
            return Step::Redeliver;
        }
        tracing::error!(
            panic = what,
            deliveries,
            "handling a request panicked on every delivery; parking it"
        );
        let detail = format!(
            "handling this request failed on {deliveries} deliveries; the last failure: {what}"
        );
        let event = validate::recover_request_id(&incoming.body, incoming.message_id.as_deref())
            .map(|request_id| {
                OutcomeEvent::poisoned(request_id.as_str(), incoming.received_at, &detail)
            });
        Step::Park(Parking {
            reason: "poison_message",
            detail,
            event,
        })
    }

    fn rejected(&self, incoming: &Incoming, rejection: &validate::Rejection) -> Step {
        tracing::warn!(reason = rejection.reason.code(), detail = %rejection.detail, "request rejected");
        let event = rejection.request_id.as_ref().map(|request_id| {
            OutcomeEvent::rejected(rejection, request_id.as_str(), incoming.received_at)
        });
        Step::Park(Parking {
            reason: rejection.reason.code(),
            detail: rejection.detail.clone(),
            event,
        })
    }
}
