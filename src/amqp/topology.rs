//! Declares the wire contract's exchanges and queues, idempotently, at every start.
//!
//! Queues are quorum queues (replicated, durable). The request queue carries an explicit
//! delivery limit and dead-letters at-least-once to the dead exchange, so a message that keeps
//! failing (even one that kills the worker each time) ends up parked instead of looping.
//!
//! [`plan`] says what the topology is, as plain data (the deploy files that pre-declare it are
//! checked against it); [`declare`] carries the plan out on a channel.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use super::{AmqpError, op};
use crate::config::AmqpSettings;
use crate::defer::Tiers;

/// Every exchange, queue and binding the worker relies on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub exchanges: Vec<Exchange>,
    pub queues: Vec<Queue>,
    pub bindings: Vec<Binding>,
}

/// A durable exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub name: String,
    /// `direct`, `fanout` or `topic`.
    pub kind: &'static str,
}

/// A durable quorum queue and its arguments (`x-queue-type` included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    pub name: String,
    pub arguments: Vec<(&'static str, Argument)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Argument {
    Text(String),
    Number(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub queue: String,
    pub exchange: String,
    pub routing_key: String,
}

fn text(value: &str) -> Argument {
    Argument::Text(value.to_owned())
}

/// Dead-letters at-least-once: the broker keeps a message until the dead-letter queue has
/// confirmed it, so nothing is lost if a node stops mid-way. Quorum queues do this only with
/// `reject-publish` overflow (the queues have no length limit, so it never rejects).
const AT_LEAST_ONCE: [(&str, &str); 2] = [
    ("x-dead-letter-strategy", "at-least-once"),
    ("x-overflow", "reject-publish"),
];

fn quorum(name: &str, mut extra: Vec<(&'static str, Argument)>) -> Queue {
    let mut arguments = vec![("x-queue-type", text("quorum"))];
    arguments.append(&mut extra);
    Queue {
        name: name.to_owned(),
        arguments,
    }
}

/// The topology for `amqp`'s names and the wait `tiers`; with `followup` (the follow-up
/// queue's wait tiers, when the follow-up is on), the follow-up queue, its tiers, and the
/// catch-all's binding for call results too.
pub fn plan(amqp: &AmqpSettings, tiers: &Tiers, followup: Option<&Tiers>) -> Plan {
    let names = &amqp.names;
    let exchange = |name: &str, kind| Exchange {
        name: name.to_owned(),
        kind,
    };
    let binding = |queue: &str, exchange: &str, routing_key: &str| Binding {
        queue: queue.to_owned(),
        exchange: exchange.to_owned(),
        routing_key: routing_key.to_owned(),
    };
    let at_least_once = || AT_LEAST_ONCE.iter().map(|(k, v)| (*k, text(v)));

    let mut exchanges = vec![
        exchange(&names.dead_exchange, "fanout"),
        exchange(&names.request_exchange, "direct"),
        exchange(&names.outcome_exchange, "topic"),
    ];
    exchanges.dedup();

    let mut request_args = vec![
        (
            "x-delivery-limit",
            Argument::Number(i64::from(amqp.delivery_limit)),
        ),
        ("x-dead-letter-exchange", text(&names.dead_exchange)),
    ];
    request_args.extend(at_least_once());
    let mut queues = vec![
        quorum(&names.dead_queue, Vec::new()),
        quorum(&names.request_queue, request_args),
    ];
    let mut bindings = vec![
        binding(&names.dead_queue, &names.dead_exchange, ""),
        binding(
            &names.request_queue,
            &names.request_exchange,
            &names.request_routing_key,
        ),
    ];
    // Each wait tier hands its messages back, when their time is up, to `exchange` with
    // `routing_key`. A waiting message must come back even if the broker restarts mid-hop.
    let mut wait_tiers = |tiers: &Tiers, exchange: &str, routing_key: &str| {
        for tier in tiers.all() {
            let ttl_ms = i64::try_from(tier.delay.as_millis()).unwrap_or(i64::MAX);
            let mut args = vec![
                ("x-message-ttl", Argument::Number(ttl_ms)),
                ("x-dead-letter-exchange", text(exchange)),
                ("x-dead-letter-routing-key", text(routing_key)),
            ];
            args.extend(at_least_once());
            queues.push(quorum(&tier.queue, args));
        }
    };
    wait_tiers(tiers, &names.request_exchange, &names.request_routing_key);
    if let Some(followup_tiers) = followup {
        // Through the default exchange, straight back to the follow-up queue.
        wait_tiers(followup_tiers, "", &names.followup_queue);
        let mut args = vec![
            (
                "x-delivery-limit",
                Argument::Number(i64::from(amqp.delivery_limit)),
            ),
            ("x-dead-letter-exchange", text(&names.dead_exchange)),
        ];
        args.extend(at_least_once());
        queues.push(quorum(&names.followup_queue, args));
    }
    if !names.outcome_catch_all_queue.is_empty() {
        queues.push(quorum(&names.outcome_catch_all_queue, Vec::new()));
        bindings.push(binding(
            &names.outcome_catch_all_queue,
            &names.outcome_exchange,
            &format!("{}.#", names.outcome_routing_prefix),
        ));
        if followup.is_some() {
            bindings.push(binding(
                &names.outcome_catch_all_queue,
                &names.outcome_exchange,
                &format!("{}.#", names.result_routing_prefix),
            ));
        }
    }
    Plan {
        exchanges,
        queues,
        bindings,
    }
}

/// Declares every exchange, queue and binding of [`plan`].
pub async fn declare(
    channel: &Channel,
    amqp: &AmqpSettings,
    tiers: &Tiers,
    followup: Option<&Tiers>,
) -> Result<(), AmqpError> {
    let plan = plan(amqp, tiers, followup);
    for exchange in &plan.exchanges {
        let kind = match exchange.kind {
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            _ => ExchangeKind::Direct,
        };
        channel
            .exchange_declare(
                exchange.name.as_str().into(),
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(op("declare exchange"))?;
    }
    for queue in &plan.queues {
        let mut args = FieldTable::default();
        for (name, value) in &queue.arguments {
            let value = match value {
                Argument::Text(text) => AMQPValue::LongString(LongString::from(text.as_str())),
                Argument::Number(n) => AMQPValue::LongLongInt(*n),
            };
            args.insert((*name).into(), value);
        }
        channel
            .queue_declare(
                queue.name.as_str().into(),
                QueueDeclareOptions::durable(),
                args,
            )
            .await
            .map_err(op("declare queue"))?;
    }
    for binding in &plan.bindings {
        channel
            .queue_bind(
                binding.queue.as_str().into(),
                binding.exchange.as_str().into(),
                binding.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(op("bind queue"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    #[test]
    fn the_default_plan_is_the_wire_contract() {
        let settings = Settings::load_from(None, Vec::new()).unwrap();
        let tiers = Tiers::new(&settings.deferral, &settings.amqp.names);
        let plan = plan(&settings.amqp, &tiers, None);
        let kinds: Vec<_> = plan
            .exchanges
            .iter()
            .map(|e| (e.name.as_str(), e.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("dial.dead", "fanout"),
                ("dial.requests", "direct"),
                ("dial.outcomes", "topic")
            ]
        );
        let requests = &plan.queues[1];
        assert_eq!(requests.name, "dial.requests");
        assert!(
            requests
                .arguments
                .contains(&("x-delivery-limit", Argument::Number(5)))
        );
        assert!(
            requests
                .arguments
                .contains(&("x-dead-letter-strategy", text("at-least-once")))
        );
        let waits: Vec<_> = plan
            .queues
            .iter()
            .filter(|q| q.name.starts_with("dial.requests.wait."))
            .collect();
        assert_eq!(waits.len(), 6);
        assert!(
            waits[0]
                .arguments
                .contains(&("x-message-ttl", Argument::Number(1_000)))
        );
        assert!(plan.bindings.contains(&Binding {
            queue: "dial.outcomes.all".into(),
            exchange: "dial.outcomes".into(),
            routing_key: "dial.outcome.#".into(),
        }));
        assert!(
            plan.queues
                .iter()
                .all(|q| q.arguments[0] == ("x-queue-type", text("quorum")))
        );
    }

    #[test]
    fn the_follow_up_adds_its_queue_its_tiers_and_the_results_binding() {
        let mut settings = Settings::load_from(None, Vec::new()).unwrap();
        let tiers = Tiers::new(&settings.deferral, &settings.amqp.names);
        let without = plan(&settings.amqp, &tiers, None);
        settings.followup.enabled = true;
        let followup = crate::defer::Tiers::of_followups(&settings).unwrap();
        let with = plan(&settings.amqp, &tiers, Some(&followup));
        assert_eq!(with.queues.len(), without.queues.len() + 7);
        let queue = |name: &str| with.queues.iter().find(|q| q.name == name).unwrap();
        let jobs = queue("dial.followups");
        assert!(
            jobs.arguments
                .contains(&("x-delivery-limit", Argument::Number(5)))
        );
        assert!(
            jobs.arguments
                .contains(&("x-dead-letter-exchange", text("dial.dead")))
        );
        let wait = queue("dial.followups.wait.30s");
        assert!(
            wait.arguments
                .contains(&("x-message-ttl", Argument::Number(30_000)))
        );
        // Back through the default exchange, straight to the follow-up queue.
        assert!(
            wait.arguments
                .contains(&("x-dead-letter-exchange", text("")))
        );
        assert!(
            wait.arguments
                .contains(&("x-dead-letter-routing-key", text("dial.followups")))
        );
        assert!(with.bindings.contains(&Binding {
            queue: "dial.outcomes.all".into(),
            exchange: "dial.outcomes".into(),
            routing_key: "dial.result.#".into(),
        }));
        assert!(
            !without
                .queues
                .iter()
                .any(|q| q.name.starts_with("dial.followups"))
        );
    }
}
