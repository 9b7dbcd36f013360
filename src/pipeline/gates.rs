//! The gates stage: whether, and when, a claimed request may be dialed. In order: expiry,
//! the calendar and `not_before`, the do-not-call list, the callee's cooldown and daily cap,
//! then a concurrency and pacing slot.

use std::time::{Duration, Instant};

use jiff::Timestamp;

use super::held::{CalleeHold, Held};
use super::{Broker, Pipeline, Verdict};
use crate::amqp::Incoming;
use crate::ccc::CccClient;
use crate::config::LEASE_MARGIN_MS;
use crate::gates::limits::{Booked, Booking, CallKey, LimitError, Limiter, Permit};
use crate::metrics::RateLabels;
use crate::outcome::{DeferReason, OutcomeEvent, SuppressReason};
use crate::store::{Cooldown, DialStore, StoreError};
use crate::validate::DialRequest;

/// What the pace gate decided.
enum Paced {
    /// A permit: dial now.
    Go(Permit),
    /// Not now: wait outside the process until `until`, with the start booked for it.
    Later {
        until: Timestamp,
        booking: Option<String>,
    },
}

impl<C: CccClient, S: DialStore, L: Limiter, B: Broker> Pipeline<C, S, L, B> {
    /// Passes every gate (`Ok`, with the callee's hold and the permit in `held`), or says why
    /// not.
    pub(super) async fn gates(
        &self,
        request: &DialRequest,
        incoming: &Incoming,
        held: &mut Held,
    ) -> Result<(), Verdict> {
        let now = Timestamp::now();
        let expired =
            || OutcomeEvent::expired(request, incoming.received_at, incoming.prior_attempts);
        if request.expires_at().is_some_and(|at| now >= at) {
            return Err(Verdict::Resolve(expired()));
        }
        if let Some((reason, until)) = self.not_yet(request, now) {
            if request.expires_at().is_some_and(|at| until >= at) {
                return Err(Verdict::Resolve(expired()));
            }
            // Not ours to hold while it waits: whoever sees it come back claims it afresh.
            return Err(Verdict::Wait(self.deferral(
                request,
                incoming,
                reason,
                until,
                incoming.prior_attempts,
            )));
        }

        match self.dnc.contains(request.callee()).await {
            Ok(false) => {}
            Ok(true) => return Err(self.suppressed(request, incoming, SuppressReason::Dnc, None)),
            Err(error) => {
                // Fail closed: never dial a number that might be on the list.
                tracing::error!(%error, "the do-not-call list could not be checked; deferring");
                return Err(Verdict::Wait(self.deferral(
                    request,
                    incoming,
                    DeferReason::DncUnavailable,
                    now,
                    incoming.prior_attempts,
                )));
            }
        }

        self.callee_gate(request, incoming, held).await?;

        match self.pace(request, incoming, held).await {
            Paced::Go(permit) => {
                held.permit = Some(permit);
                Ok(())
            }
            // Too long a wait for a slot: wait outside the process instead, until the start
            // booked for it if there is one.
            Paced::Later { until, booking } => {
                if request.expires_at().is_some_and(|at| until >= at) {
                    return Err(Verdict::Resolve(expired()));
                }
                let mut wait = self.deferral(
                    request,
                    incoming,
                    DeferReason::Limits,
                    until,
                    incoming.prior_attempts,
                );
                wait.booking = booking;
                Err(Verdict::Wait(wait))
            }
        }
    }

    /// When the request may be dialed, if not now: the later of `not_before` and the next
    /// opening of its instance's calendar, with the reason that decides.
    fn not_yet(&self, request: &DialRequest, now: Timestamp) -> Option<(DeferReason, Timestamp)> {
        let not_before = request.not_before().filter(|at| *at > now);
        let calendar = self.hours.for_instance(request.instance_id());
        let from = not_before.unwrap_or(now);
        // A calendar that never opens again: nothing can be dialed; treat it as far future,
        // which expires requests with a deadline and parks the others in the longest tier.
        let opening = calendar.next_opening(from).unwrap_or_else(|| {
            from.checked_add(jiff::SignedDuration::from_hours(24 * 400))
                .unwrap_or(Timestamp::MAX)
        });
        if opening > from {
            Some((DeferReason::OutsideHours, opening))
        } else {
            not_before.map(|at| (DeferReason::NotBefore, at))
        }
    }

    fn suppressed(
        &self,
        request: &DialRequest,
        incoming: &Incoming,
        reason: SuppressReason,
        earlier: Option<(&str, Option<&str>)>,
    ) -> Verdict {
        self.metrics.suppressed(reason);
        Verdict::Resolve(OutcomeEvent::suppressed(
            request,
            incoming.received_at,
            reason,
            earlier,
        ))
    }

    /// The callee gate: cooldown, then the daily cap. What it takes goes into `held`, to be
    /// kept or given back once the dial's fate is known.
    async fn callee_gate(
        &self,
        request: &DialRequest,
        incoming: &Incoming,
        held: &mut Held,
    ) -> Result<(), Verdict> {
        let Some(gate) = &self.callee else {
            return Ok(());
        };
        let request_id = request.request_id().as_str();
        let hold = held.callee.insert(CalleeHold {
            key: gate.key(request),
            cooldown: None,
            day: None,
        });
        if let Some(window) = gate.window() {
            match self
                .store
                .cooldown_acquire(&hold.key, request_id, window)
                .await
                .map_err(Verdict::StoreFailed)?
            {
                Cooldown::Free => hold.cooldown = Some(window),
                Cooldown::Taken {
                    request_id: earlier,
                    task_id,
                } => {
                    return Err(self.suppressed(
                        request,
                        incoming,
                        SuppressReason::Cooldown,
                        Some((earlier.as_str(), task_id.as_deref())),
                    ));
                }
            }
        }
        if let Some((max, day)) = gate.daily_cap(Timestamp::now()) {
            if !self
                .store
                .daily_reserve(&hold.key, &day, max)
                .await
                .map_err(Verdict::StoreFailed)?
            {
                return Err(self.suppressed(request, incoming, SuppressReason::DailyCap, None));
            }
            hold.day = Some(day);
        }
        Ok(())
    }

    /// A concurrency and pacing slot, waited for in-process, but never so long that the
    /// claim's lease could end before the dial does. Past that wait the request leaves the
    /// process with a booked start (see [`crate::gates::limits`]), so a busy instance's (or
    /// caller's) backlog never holds the prefetch window that other requests need; a request
    /// that comes back with its booking takes the start without the rates it booked.
    async fn pace(&self, request: &DialRequest, incoming: &Incoming, held: &Held) -> Paced {
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
        let booked = incoming
            .booking
            .as_deref()
            .and_then(|header| self.booking_of(request, header))
            .filter(|booking| {
                if !booking.is_late() {
                    return true;
                }
                self.metrics.bookings_missed.inc();
                let taken = self.limiter.takes_late(request.instance_id(), booking);
                if !taken {
                    tracing::debug!(start = %booking.start, "back after the booked start; asking the rates again");
                }
                taken
            });
        let budget = self.wait_budget(held);
        if budget.is_zero() {
            // A booked start stays booked.
            return Paced::Later {
                until: Timestamp::now(),
                booking: booked.and(incoming.booking.clone()),
            };
        }
        if let Some(booking) = booked {
            return self
                .start_booked(&key, &booking, held, incoming.booking.clone())
                .await;
        }
        // No waiting here for a slot that is not free: a booking says when it will be, and
        // only a start near enough is waited for in-process.
        let waiting = Instant::now();
        let acquired = self.limiter.acquire_within(&key, Duration::ZERO).await;
        self.metrics
            .limiter_wait
            .observe(waiting.elapsed().as_secs_f64());
        if matches!(acquired, Ok(None)) {
            return self.book(request, &key, held).await;
        }
        self.take(acquired, held, None).await
    }

    /// Books the request's start and sends it away until then, or, when the start is near
    /// enough that the wait queues could bring it back late, takes it here.
    async fn book(&self, request: &DialRequest, key: &CallKey<'_>, held: &Held) -> Paced {
        let booking = match self.limiter.book(key).await {
            Ok(booking) => booking,
            Err(error) => {
                tracing::warn!(%error, "the limiter could not book a start; deferring");
                return Paced::Later {
                    until: Timestamp::now(),
                    booking: None,
                };
            }
        };
        self.metrics
            .bookings
            .get_or_create(&RateLabels {
                rate: booking.booked.as_str(),
            })
            .inc();
        let header = Some(self.booking_header(request, &booking));
        let left = crate::defer::time_until(booking.start);
        if self.tiers.for_booked(left).is_some() {
            return Paced::Later {
                until: booking.start,
                booking: header,
            };
        }
        self.start_booked(key, &booking, held, header).await
    }

    /// Waits for a booked start (a request comes back a little early on purpose, see
    /// [`crate::defer::BOOKING_MARGIN`]) and takes it, if the claim's lease leaves room for
    /// that; otherwise sends the request away until then, keeping the booking (`header`).
    async fn start_booked(
        &self,
        key: &CallKey<'_>,
        booking: &Booking,
        held: &Held,
        header: Option<String>,
    ) -> Paced {
        let left = crate::defer::time_until(booking.start);
        if left >= self.wait_budget(held) {
            return Paced::Later {
                until: booking.start,
                booking: header,
            };
        }
        tokio::time::sleep(left).await;
        let waiting = Instant::now();
        let acquired = self
            .limiter
            .acquire_booked(key, booking, self.wait_budget(held))
            .await;
        self.metrics
            .limiter_wait
            .observe(waiting.elapsed().as_secs_f64());
        self.take(acquired, held, header).await
    }

    /// A permit if one came while the claim's lease still allows the dial (the last attempt
    /// may answer just past the budget: the lease decides); otherwise not now, keeping
    /// `booking` unless no permit came in time. A booking made before this process knew how
    /// long the instance's permits are held (a backlog booked at once, at the rate, for an
    /// instance whose permits pass fewer calls) finds no permit at its start: it books
    /// afresh, at the pace the permits are now known to allow, instead of waiting for one in
    /// the prefetch window.
    async fn take(
        &self,
        acquired: Result<Option<Permit>, LimitError>,
        held: &Held,
        booking: Option<String>,
    ) -> Paced {
        match acquired {
            Ok(Some(permit)) if !self.wait_budget(held).is_zero() => return Paced::Go(permit),
            Ok(Some(permit)) => {
                permit.release().await;
                tracing::info!("a slot came too late to dial within the claim's lease; deferring");
            }
            Ok(None) => {
                return Paced::Later {
                    until: Timestamp::now(),
                    booking: None,
                };
            }
            Err(error) => tracing::warn!(%error, "the limiter could not decide; deferring"),
        }
        Paced::Later {
            until: Timestamp::now(),
            booking,
        }
    }

    /// The `x-dialex-booking` value for `booking`: its start, the rates it counted and a keyed
    /// hash binding both to this request, so a header an upstream sets cannot skip the pace.
    fn booking_header(&self, request: &DialRequest, booking: &Booking) -> String {
        let start = booking.start.to_string();
        let booked = booking.booked.as_str();
        let signature = self.booking_signature(request, &start, booked);
        format!("{start} {booked} {signature}")
    }

    fn booking_signature(&self, request: &DialRequest, start: &str, booked: &str) -> String {
        self.hasher.hash(&[
            "booking",
            request.request_id().as_str(),
            request.instance_id(),
            start,
            booked,
        ])
    }

    /// The booking `header` names, if this deployment signed it for this request.
    fn booking_of(&self, request: &DialRequest, header: &str) -> Option<Booking> {
        let mut parts = header.split(' ');
        let (start, booked, signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || self.booking_signature(request, start, booked) != signature {
            return None;
        }
        Some(Booking {
            start: start.parse().ok()?,
            booked: Booked::parse(booked)?,
        })
    }

    /// How long the request may still wait for its slot: what its claim's lease leaves after
    /// the longest dial, less a margin for the record and the clocks of worker and store.
    fn wait_budget(&self, held: &Held) -> Duration {
        self.lease
            .saturating_sub(self.policy.longest_dial)
            .saturating_sub(Duration::from_millis(LEASE_MARGIN_MS))
            .saturating_sub(held.claimed_at().elapsed())
    }

    /// Keeps or gives back what the callee gate took, for a request whose outcome is `placed`:
    /// `Some(task id if known)` when the call was (or may have been) placed, `None` when it
    /// certainly was not.
    pub(super) async fn settle_callee(
        &self,
        request_id: &str,
        held: &mut Held,
        placed: Option<Option<&str>>,
    ) {
        let Some(hold) = held.callee.take() else {
            return;
        };
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
}
