//! One request, start to finish: validate, dial, publish the outcome, and say how to settle.
//!
//! The order is the promise: an outcome is published (and confirmed) before the request is
//! acknowledged, so a crash in between leads to a redelivery, never to a lost request. A
//! request that cannot be decoded is parked in the dead-letter queue with its reason.

use std::sync::{Arc, OnceLock};

use lapin::types::AMQPValue;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::amqp::{Incoming, Publisher};
use crate::ccc::{CccClient, DialFailure};
use crate::dial::{DialPolicy, DialResult, dial};
use crate::outcome::{OutcomeEvent, Status};
use crate::settle::Disposition;
use crate::validate::{self, DialRequest, Rejection};

/// Set once when the worker must stop consuming because every request would fail the same
/// way (bad credentials, clock skew); the cause is kept for the exit message.
#[derive(Default)]
pub struct Halt {
    token: CancellationToken,
    cause: OnceLock<DialFailure>,
}

impl Halt {
    pub fn trigger(&self, cause: DialFailure) {
        let _ = self.cause.set(cause);
        self.token.cancel();
    }
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
    pub fn cause(&self) -> Option<&DialFailure> {
        self.cause.get()
    }
}

/// The stages wired together, shared by all in-flight requests.
pub struct Pipeline<C> {
    pub client: C,
    pub policy: DialPolicy,
    pub publisher: Publisher,
    pub halt: Arc<Halt>,
}

impl<C: CccClient> Pipeline<C> {
    /// Takes one delivery through every stage and returns how to settle it.
    pub async fn handle(&self, incoming: &Incoming) -> Disposition {
        match validate::decode(&incoming.body, incoming.message_id.as_deref()) {
            Ok(request) => {
                let span = tracing::info_span!(
                    "request",
                    request_id = %request.request_id(),
                    instance_id = request.instance_id(),
                    callee = %request.callee(),
                );
                self.dial_and_report(&request, incoming)
                    .instrument(span)
                    .await
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

    async fn dial_and_report(&self, request: &DialRequest, incoming: &Incoming) -> Disposition {
        if self.halt.token().is_cancelled() {
            return Disposition::Requeue;
        }
        let report = dial(&self.client, &self.policy, request).await;
        let received_at = incoming.received_at;
        let event = match &report.result {
            DialResult::Dialed(accepted) => {
                OutcomeEvent::dialed(request, received_at, accepted, report.attempts)
            }
            DialResult::Failed(failure) => OutcomeEvent::not_dialed(
                request,
                Status::Failed,
                received_at,
                failure,
                report.attempts,
            ),
            DialResult::Unknown(failure) => OutcomeEvent::not_dialed(
                request,
                Status::Unknown,
                received_at,
                failure,
                report.attempts,
            ),
            DialResult::Systemic(failure) => {
                tracing::error!(
                    code = failure.code(),
                    error = %failure,
                    "CCC rejected the worker's credentials or signature; stopping consumption"
                );
                self.halt.trigger(failure.clone());
                return Disposition::Requeue;
            }
        };
        self.publish(&event, incoming).await
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
        match self
            .publisher
            .dead_letter(incoming, rejection.reason.code(), &rejection.detail)
            .await
        {
            Ok(()) => Disposition::Ack,
            Err(error) => {
                tracing::error!(%error, "could not park the rejected request; leaving it to the queue's dead-letter exchange");
                Disposition::DeadLetter
            }
        }
    }

    async fn publish(&self, event: &OutcomeEvent, incoming: &Incoming) -> Disposition {
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
        match self.publisher.publish_outcome(event, traceparent).await {
            Ok(()) => {
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
                tracing::error!(%error, status = event.status.as_str(), "could not publish the outcome; dead-lettering the request so it is not dialed again");
                Disposition::DeadLetter
            }
        }
    }
}
