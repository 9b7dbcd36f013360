//! Declares the wire contract's exchanges and queues, idempotently, at every start.
//!
//! Queues are quorum queues (replicated, durable). The request queue carries an explicit
//! delivery limit and dead-letters at-least-once to the dead exchange, so a message that keeps
//! failing (even one that kills the worker each time) ends up parked instead of looping.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use super::{AmqpError, op};
use crate::config::AmqpSettings;
use crate::defer::Tiers;

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    args
}

/// Dead-letters at-least-once: the broker keeps a message until the dead-letter queue has
/// confirmed it, so nothing is lost if a node stops mid-way. Quorum queues do this only with
/// `reject-publish` overflow (the queues have no length limit, so it never rejects).
fn at_least_once(args: &mut FieldTable) {
    args.insert(
        "x-dead-letter-strategy".into(),
        AMQPValue::LongString(LongString::from("at-least-once")),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

/// Declares every exchange, queue and binding the worker relies on.
pub async fn declare(
    channel: &Channel,
    amqp: &AmqpSettings,
    tiers: &Tiers,
) -> Result<(), AmqpError> {
    let names = &amqp.names;

    channel
        .exchange_declare(
            names.dead_exchange.as_str().into(),
            ExchangeKind::Fanout,
            durable_exchange(),
            FieldTable::default(),
        )
        .await
        .map_err(op("declare dead exchange"))?;
    channel
        .queue_declare(
            names.dead_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            quorum(),
        )
        .await
        .map_err(op("declare dead queue"))?;
    channel
        .queue_bind(
            names.dead_queue.as_str().into(),
            names.dead_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(op("bind dead queue"))?;

    channel
        .exchange_declare(
            names.request_exchange.as_str().into(),
            ExchangeKind::Direct,
            durable_exchange(),
            FieldTable::default(),
        )
        .await
        .map_err(op("declare request exchange"))?;
    let mut request_args = quorum();
    request_args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(i64::from(amqp.delivery_limit)),
    );
    request_args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from(names.dead_exchange.as_str())),
    );
    at_least_once(&mut request_args);
    channel
        .queue_declare(
            names.request_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            request_args,
        )
        .await
        .map_err(op("declare request queue"))?;
    channel
        .queue_bind(
            names.request_queue.as_str().into(),
            names.request_exchange.as_str().into(),
            names.request_routing_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(op("bind request queue"))?;

    for tier in tiers.all() {
        let mut args = quorum();
        let ttl_ms = u32::try_from(tier.delay.as_millis()).unwrap_or(u32::MAX);
        args.insert("x-message-ttl".into(), AMQPValue::LongUInt(ttl_ms));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from(names.request_exchange.as_str())),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(LongString::from(names.request_routing_key.as_str())),
        );
        // A waiting request must come back even if the broker restarts mid-hop.
        at_least_once(&mut args);
        channel
            .queue_declare(
                tier.queue.as_str().into(),
                QueueDeclareOptions::durable(),
                args,
            )
            .await
            .map_err(op("declare wait queue"))?;
    }

    channel
        .exchange_declare(
            names.outcome_exchange.as_str().into(),
            ExchangeKind::Topic,
            durable_exchange(),
            FieldTable::default(),
        )
        .await
        .map_err(op("declare outcome exchange"))?;
    if !names.outcome_catch_all_queue.is_empty() {
        channel
            .queue_declare(
                names.outcome_catch_all_queue.as_str().into(),
                QueueDeclareOptions::durable(),
                quorum(),
            )
            .await
            .map_err(op("declare outcome catch-all queue"))?;
        channel
            .queue_bind(
                names.outcome_catch_all_queue.as_str().into(),
                names.outcome_exchange.as_str().into(),
                format!("{}.#", names.outcome_routing_prefix).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(op("bind outcome catch-all queue"))?;
    }
    Ok(())
}
