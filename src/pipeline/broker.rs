//! The broker as the pipeline sees it: a few verbs on a delivery, each confirmed.
//!
//! [`crate::amqp::Publisher`] implements it over RabbitMQ; the pipeline's unit tests use a
//! recording one, so every exit is tested without a broker.

use std::future::Future;

use super::Deferral;
use crate::amqp::{Incoming, PublishError, Publisher};
use crate::defer::Tier;
use crate::followup::FollowupJob;
use crate::outcome::OutcomeEvent;

/// Where the pipeline's decisions go. Every method returns once the broker confirmed.
pub trait Broker: Send + Sync + 'static {
    /// Publishes `event` (serialized as `json`) to the outcome exchange.
    fn publish_outcome(
        &self,
        event: &OutcomeEvent,
        json: &[u8],
        traceparent: Option<&str>,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;

    /// Parks `incoming` on the wait queue of `tier` until the deferral's time, saying why,
    /// how many DialEx attempts it has had, the start booked for it, if any, and when the
    /// tier is due to hand it back.
    fn defer(
        &self,
        incoming: &Incoming,
        tier: &Tier,
        deferral: &Deferral,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;

    /// Puts a follow-up job on the follow-up wait queue of `tier`.
    fn follow_up(
        &self,
        job: &FollowupJob,
        tier: &Tier,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;

    /// Parks `incoming` on the dead-letter exchange with a reason.
    fn dead_letter(
        &self,
        incoming: &Incoming,
        reason: &str,
        detail: &str,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;

    /// Puts `incoming` back on the request queue as a fresh message.
    fn give_back(
        &self,
        incoming: &Incoming,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;

    /// Whether publishes can go through now (connected and not blocked by the broker).
    fn check(&self) -> Result<(), PublishError>;
}

impl Broker for Publisher {
    async fn publish_outcome(
        &self,
        event: &OutcomeEvent,
        json: &[u8],
        traceparent: Option<&str>,
    ) -> Result<(), PublishError> {
        self.publish_outcome_json(event, json, traceparent).await
    }

    async fn defer(
        &self,
        incoming: &Incoming,
        tier: &Tier,
        deferral: &Deferral,
    ) -> Result<(), PublishError> {
        Publisher::defer(
            self,
            incoming,
            tier,
            deferral.reason,
            deferral.attempts,
            deferral.until,
            deferral.booking.as_deref(),
        )
        .await
    }

    async fn follow_up(&self, job: &FollowupJob, tier: &Tier) -> Result<(), PublishError> {
        Publisher::follow_up(self, job, tier).await
    }

    async fn dead_letter(
        &self,
        incoming: &Incoming,
        reason: &str,
        detail: &str,
    ) -> Result<(), PublishError> {
        Publisher::dead_letter(self, incoming, reason, detail).await
    }

    async fn give_back(&self, incoming: &Incoming) -> Result<(), PublishError> {
        Publisher::give_back(self, incoming).await
    }

    fn check(&self) -> Result<(), PublishError> {
        Publisher::check(self)
    }
}
