//! The confirmed publisher: outcome events, call results, waits and dead letters.
//!
//! Every publish is persistent, `mandatory`, and waits for the broker's confirm: a request is
//! acknowledged only after what it produced is safely in a queue. An unroutable or nacked
//! publish is an error, never a silent drop.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable as _};
use jiff::Timestamp;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionStatus};

use super::{AmqpError, Incoming, op};
use crate::config::{AmqpNames, AmqpSettings};
use crate::defer::Tier;
use crate::followup::FollowupJob;
use crate::followup::job::JOB_TYPE;
use crate::followup::result::{CallResultEvent, RESULT_TYPE};
use crate::metrics::Metrics;
use crate::outcome::{DeferReason, OutcomeEvent};

/// Header on dead letters: the reason code (e.g. `invalid_json`).
pub const REASON_HEADER: &str = "x-dialex-reason";
/// Header on dead letters: a human sentence about the reason.
pub const DETAIL_HEADER: &str = "x-dialex-detail";
/// Header on dead letters: when the worker parked it (RFC 3339).
pub const PARKED_AT_HEADER: &str = "x-dialex-parked-at";
/// Header on deferred requests: the start the limiter booked for it, and its signature.
pub const BOOKING_HEADER: &str = "x-dialex-booking";
/// Header on requests deferred for a pace or concurrency slot: since when (RFC 3339) they
/// have been ready to dial, across the hops of that wait.
pub const READY_AT_HEADER: &str = "x-dialex-ready-at";
/// Header on requests `dialex-worker dead replay` put back: how often this one was replayed.
pub const REPLAYS_HEADER: &str = "x-dialex-replays";

/// Header on deferred requests: why the request is waiting.
pub const DEFERRED_HEADER: &str = "x-dialex-deferred";
/// Header on deferred requests: DialEx attempts made so far, across hops.
pub const ATTEMPTS_HEADER: &str = "x-dialex-attempts";
/// Header on deferred requests: the earliest time (RFC 3339) they may be evaluated again.
pub const NOT_BEFORE_HEADER: &str = "x-dialex-not-before";
/// When the wait queue a request was deferred to is due to hand it back: how late it came
/// back is what [`crate::defer::Lateness`] learns from.
pub const DUE_HEADER: &str = "x-dialex-due";

const PERSISTENT: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error("the broker returned the message as unroutable ({0})")]
    Unroutable(String),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("no publisher confirm within {0:?}")]
    ConfirmTimeout(Duration),
    #[error("not connected to the broker")]
    NotConnected,
    #[error("the broker blocks the publishing connection (a memory or disk alarm)")]
    Blocked,
}

/// Publishes on its own channel in confirm mode. The channel is replaced when the worker
/// reconnects to the broker; until one is attached, every publish fails (and is retried).
pub struct Publisher {
    channel: RwLock<Option<Channel>>,
    /// The publishing connection's status: the broker blocks it under a resource alarm.
    connection: RwLock<Option<ConnectionStatus>>,
    names: AmqpNames,
    confirm_timeout: Duration,
    attempts: u32,
    metrics: Arc<Metrics>,
}

impl Publisher {
    /// A publisher with no channel yet: see [`Publisher::attach`].
    pub fn new(amqp: &AmqpSettings, metrics: Arc<Metrics>) -> Self {
        Publisher {
            channel: RwLock::new(None),
            connection: RwLock::new(None),
            names: amqp.names.clone(),
            confirm_timeout: amqp.confirm_timeout(),
            attempts: amqp.publish_attempts,
            metrics,
        }
    }

    /// Opens a confirm-mode channel on `connection` and publishes on it from now on; returns
    /// the channel (for declaring the topology).
    pub async fn attach(&self, connection: &Connection) -> Result<Channel, AmqpError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(op("open publish channel"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(op("enable publisher confirms"))?;
        *self
            .channel
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(channel.clone());
        *self
            .connection
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(connection.status().clone());
        Ok(channel)
    }

    /// Whether a channel is attached and open.
    pub fn is_connected(&self) -> bool {
        self.current()
            .is_some_and(|channel| channel.status().connected())
    }

    fn current(&self) -> Option<Channel> {
        self.channel
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Publishes `event` to the outcome exchange and waits for the confirm, retrying a few
    /// times with backoff. An event published twice carries the same `event_id`.
    pub async fn publish_outcome(
        &self,
        event: &OutcomeEvent,
        traceparent: Option<&str>,
    ) -> Result<(), PublishError> {
        self.publish_outcome_json(event, &event.to_json(), traceparent)
            .await
    }

    /// [`Publisher::publish_outcome`] with `body` already serialized from `event` (the same
    /// bytes the store recorded, so they are not serialized twice).
    pub async fn publish_outcome_json(
        &self,
        event: &OutcomeEvent,
        body: &[u8],
        traceparent: Option<&str>,
    ) -> Result<(), PublishError> {
        let routing_key = event.routing_key(&self.names.outcome_routing_prefix);
        let mut properties = event_properties(
            event.event_id,
            &event.request_id,
            "dial.outcome",
            event.completed_at,
        );
        if let Some(traceparent) = traceparent {
            let mut headers = FieldTable::default();
            headers.insert(
                "traceparent".into(),
                AMQPValue::LongString(LongString::from(traceparent)),
            );
            properties = properties.with_headers(headers);
        }
        self.publish_with_retry(
            &self.names.outcome_exchange,
            &routing_key,
            body,
            &properties,
        )
        .await
    }

    /// Publishes a call-result event (serialized as `body`) to the outcome exchange as
    /// `<result_routing_prefix>.<disposition>`, and waits for the confirm. Published again,
    /// it carries the same `event_id`.
    pub async fn publish_result(
        &self,
        event: &CallResultEvent,
        body: &[u8],
    ) -> Result<(), PublishError> {
        let routing_key = format!(
            "{}.{}",
            self.names.result_routing_prefix,
            event.disposition.as_str()
        );
        let properties = event_properties(
            event.event_id,
            &event.request_id,
            RESULT_TYPE,
            event.completed_at,
        );
        self.publish_with_retry(
            &self.names.outcome_exchange,
            &routing_key,
            body,
            &properties,
        )
        .await
    }

    /// Puts a follow-up job on the wait queue of `tier`; it comes back to the follow-up
    /// queue when the queue's TTL has passed.
    pub async fn follow_up(&self, job: &FollowupJob, tier: &Tier) -> Result<(), PublishError> {
        let properties = BasicProperties::default()
            .with_correlation_id(job.request_id.as_str().into())
            .with_content_type("application/json".into())
            .with_type(JOB_TYPE.into())
            .with_delivery_mode(PERSISTENT);
        self.publish_with_retry("", &tier.queue, &job.to_json(), &properties)
            .await
    }

    /// Parks the original message on the dead exchange with the reason in its headers.
    pub async fn dead_letter(
        &self,
        incoming: &Incoming,
        reason: &str,
        detail: &str,
    ) -> Result<(), PublishError> {
        let properties = annotated(
            incoming,
            &[
                (REASON_HEADER, reason),
                (DETAIL_HEADER, detail),
                (PARKED_AT_HEADER, &Timestamp::now().to_string()),
            ],
        );
        self.publish_with_retry(&self.names.dead_exchange, "", &incoming.body, &properties)
            .await
    }

    /// Parks `incoming` on a wait queue; it returns to the request queue when the queue's TTL
    /// has passed. The original body and properties travel unchanged, plus the reason, the
    /// attempts made so far and the time before which it waits again if it comes back early.
    pub async fn defer(
        &self,
        incoming: &Incoming,
        tier: &Tier,
        reason: DeferReason,
        attempts: u32,
        not_before: Timestamp,
        booking: Option<&str>,
    ) -> Result<(), PublishError> {
        let attempts = attempts.to_string();
        let not_before = not_before.to_string();
        let ready_at = incoming.ready_at.to_string();
        let due = Timestamp::now()
            .checked_add(tier.delay)
            .unwrap_or(Timestamp::MAX)
            .to_string();
        let mut headers = vec![
            (DEFERRED_HEADER, reason.as_str()),
            (ATTEMPTS_HEADER, attempts.as_str()),
            (NOT_BEFORE_HEADER, not_before.as_str()),
            (DUE_HEADER, due.as_str()),
        ];
        // Only a wait for a slot keeps the time it has been ready since; any other wait
        // (hours, a retry) ends with the request ready afresh.
        let waiting_for_a_slot = reason == DeferReason::Limits;
        if waiting_for_a_slot {
            headers.push((READY_AT_HEADER, ready_at.as_str()));
        }
        if let Some(booking) = booking {
            headers.push((BOOKING_HEADER, booking));
        }
        let mut properties = annotated(incoming, &headers);
        if booking.is_none() {
            // A booking is good for one start: a later deferral without one drops it.
            properties = without_header(properties, BOOKING_HEADER);
        }
        if !waiting_for_a_slot {
            properties = without_header(properties, READY_AT_HEADER);
        }
        self.publish_with_retry("", &tier.queue, &incoming.body, &properties)
            .await
    }

    /// Puts `incoming` back on the request queue as a fresh message, so that giving back a
    /// request the worker cannot handle right now (it is paused) does not count towards the
    /// queue's delivery limit the way a requeue would.
    pub async fn give_back(&self, incoming: &Incoming) -> Result<(), PublishError> {
        let properties = annotated(incoming, &[]);
        self.publish_with_retry(
            &self.names.request_exchange,
            &self.names.request_routing_key,
            &incoming.body,
            &properties,
        )
        .await
    }

    /// Whether publishes can go through now: a channel is attached and open, and the broker
    /// does not block the connection (it does under a memory or disk alarm).
    pub fn check(&self) -> Result<(), PublishError> {
        if !self.is_connected() {
            return Err(PublishError::NotConnected);
        }
        let blocked = self
            .connection
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .is_some_and(ConnectionStatus::blocked);
        if blocked {
            return Err(PublishError::Blocked);
        }
        Ok(())
    }

    async fn publish_with_retry(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: &BasicProperties,
    ) -> Result<(), PublishError> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(2))
            .with_max_times(self.attempts.saturating_sub(1) as usize)
            .with_jitter();
        (|| self.publish_once(exchange, routing_key, body, properties.clone()))
            .retry(backoff)
            .sleep(tokio::time::sleep)
            // A channel that is gone stays gone until the next session: fail at once, so the
            // request's delivery goes back to the queue without holding up the reconnect.
            .when(|_| self.is_connected())
            .notify(|error: &PublishError, wait: Duration| {
                tracing::warn!(%error, ?wait, exchange, "publish failed; retrying");
            })
            .await
    }

    async fn publish_once(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let channel = self.current().ok_or(PublishError::NotConnected)?;
        let started = Instant::now();
        let confirm = channel
            .basic_publish(
                ShortString::from(exchange),
                ShortString::from(routing_key),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .map_err(op("publish"))?;
        let confirmation = tokio::time::timeout(self.confirm_timeout, confirm)
            .await
            .map_err(|_| PublishError::ConfirmTimeout(self.confirm_timeout))?
            .map_err(op("publisher confirm"))?;
        self.metrics
            .publish_confirm
            .observe(started.elapsed().as_secs_f64());
        if confirmation.is_nack() {
            return Err(PublishError::Nacked);
        }
        if let Some(returned) = confirmation.take_message() {
            return Err(PublishError::Unroutable(format!(
                "{} {}",
                returned.reply_code, returned.reply_text
            )));
        }
        Ok(())
    }
}

/// The properties of an event for downstream systems: its id as `message_id` (the same on a
/// re-published event), the request as `correlation_id`, JSON, persistent, of `kind`.
fn event_properties(
    event_id: uuid::Uuid,
    request_id: &str,
    kind: &str,
    at: Timestamp,
) -> BasicProperties {
    BasicProperties::default()
        .with_message_id(event_id.to_string().into())
        .with_correlation_id(request_id.into())
        .with_content_type("application/json".into())
        .with_type(kind.into())
        .with_delivery_mode(PERSISTENT)
        .with_timestamp(at.as_second().max(0) as u64)
}

/// `properties` without the header `name`.
fn without_header(properties: BasicProperties, name: &str) -> BasicProperties {
    let Some(headers) = properties.headers() else {
        return properties;
    };
    let mut kept = FieldTable::default();
    for (key, value) in headers.inner() {
        if key.as_str() != name {
            kept.insert(key.clone(), value.clone());
        }
    }
    properties.with_headers(kept)
}

/// The original message's properties, persistent, with `extra` headers added. The broker's
/// delivery count belongs to the delivery, not the message: a copy starts afresh.
fn annotated(incoming: &Incoming, extra: &[(&str, &str)]) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(original) = incoming.properties.headers() {
        for (name, value) in original.inner() {
            if name.as_str() != super::DELIVERY_COUNT_HEADER {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
    for (name, value) in extra {
        headers.insert(
            (*name).into(),
            AMQPValue::LongString(LongString::from(*value)),
        );
    }
    incoming
        .properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(PERSISTENT)
}
