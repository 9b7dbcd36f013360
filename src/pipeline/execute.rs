//! Carries a [`Step`] out against the broker and says how to settle the delivery: the only
//! code in the pipeline that publishes.

use super::{Broker, Deferral, HaltCause, Parking, Pipeline, Step};
use crate::amqp::{Incoming, PublishError};
use crate::ccc::CccClient;
use crate::followup::FollowupJob;
use crate::gates::limits::Limiter;
use crate::outcome::OutcomeEvent;
use crate::settle::Disposition;
use crate::store::DialStore;

impl<C: CccClient, S: DialStore, L: Limiter, B: Broker> Pipeline<C, S, L, B> {
    pub(super) async fn execute(&self, step: Step, incoming: &Incoming) -> Disposition {
        match step {
            Step::Finish(finish) => {
                if let Err(error) = self.publish(&finish.event, &finish.json, incoming).await {
                    return self.undelivered(&error, incoming).await;
                }
                match self.schedule_followup(finish.followup.as_ref()).await {
                    Ok(()) => Disposition::Ack,
                    Err(error) => self.undelivered(&error, incoming).await,
                }
            }
            Step::Defer(deferral) => self.defer(deferral, incoming).await,
            Step::GiveBack => self.give_back(incoming).await,
            Step::Redeliver => Disposition::Requeue,
            Step::Park(parking) => self.park(parking, incoming).await,
        }
    }

    /// Publishes `event`, serialized as `json`, carrying the request's `traceparent`.
    async fn publish(
        &self,
        event: &OutcomeEvent,
        json: &[u8],
        incoming: &Incoming,
    ) -> Result<(), PublishError> {
        self.publisher
            .publish_outcome(event, json, incoming.traceparent.as_deref())
            .await?;
        self.metrics.outcome(event.status);
        tracing::info!(
            status = event.status.as_str(),
            task_id = event.task_id.as_deref(),
            code = event.code.as_deref(),
            attempts = event.attempts,
            "outcome published"
        );
        Ok(())
    }

    /// Schedules the follow-up of a dialed request, before the request is acknowledged: a
    /// crash in between brings the request back, and its stored result schedules it again (a
    /// second job publishes the same stored call result).
    async fn schedule_followup(&self, job: Option<&FollowupJob>) -> Result<(), PublishError> {
        let (Some(job), Some(followup)) = (job, &self.followup) else {
            return Ok(());
        };
        let tier = followup
            .tiers
            .for_delay(crate::defer::time_until(job.due_at));
        self.publisher.follow_up(job, tier).await
    }

    /// An outcome the broker would not take. The request is never dead-lettered for that (its
    /// result, if it has one, is recorded and is published again when it comes back): the
    /// worker pauses until the broker takes publishes again, and the request goes back.
    async fn undelivered(&self, error: &PublishError, incoming: &Incoming) -> Disposition {
        tracing::error!(%error, "could not publish the outcome; returning the request to the queue");
        self.halt.trigger(HaltCause::Broker(error.to_string()));
        self.give_back(incoming).await
    }

    /// The `deferred` event (informational: the request waits either way), then the hop
    /// through the wait tier that fits the time left.
    async fn defer(&self, deferral: Deferral, incoming: &Incoming) -> Disposition {
        if let Some(event) = &deferral.announce
            && let Err(error) = self.publish(event, &event.to_json(), incoming).await
        {
            tracing::warn!(%error, "could not publish the deferred event");
        }
        let delay = crate::defer::time_until(deferral.until);
        // A booked start must not be missed: such a request comes back early and waits for it.
        let tier = if deferral.booking.is_some() {
            self.tiers
                .for_booked(delay)
                .unwrap_or_else(|| self.tiers.shortest())
        } else {
            self.tiers.for_delay(delay)
        };
        match self.publisher.defer(incoming, tier, &deferral).await {
            Ok(()) => {
                self.metrics.deferred(deferral.reason);
                Disposition::Ack
            }
            Err(error) => {
                tracing::error!(%error, "could not defer the request; returning it to the queue");
                self.halt.trigger(HaltCause::Broker(error.to_string()));
                Disposition::Requeue
            }
        }
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

    /// Publishes the parked request's event, if any, then parks it on the dead-letter
    /// exchange with its reason.
    async fn park(&self, parking: Parking, incoming: &Incoming) -> Disposition {
        if let Some(event) = &parking.event
            && let Err(error) = self.publish(event, &event.to_json(), incoming).await
        {
            return self.undelivered(&error, incoming).await;
        }
        match self
            .publisher
            .dead_letter(incoming, parking.reason, &parking.detail)
            .await
        {
            Ok(()) => {
                self.metrics.dead_lettered(parking.reason);
                Disposition::Ack
            }
            Err(error) => {
                tracing::error!(%error, "could not park the request; leaving it to the queue's dead-letter exchange");
                Disposition::DeadLetter
            }
        }
    }
}
