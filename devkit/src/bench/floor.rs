//! The bare floor: the least a worker must do per request, and nothing else. Consume with
//! manual acks and the same prefetch, read the fields DialEx needs, sign, call CCC, publish
//! an outcome with a confirm, ack. No validation, no store, no gates, no retries.
//!
//! It runs as `dialex-devkit bench-floor`, a process of its own like `run`, so the two are
//! measured the same way. It prints `ready` once consuming, and on SIGTERM the DialEx round
//! trips it saw (`rtt_us <p50> <p99>`).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use dialex_worker::amqp;
use dialex_worker::ccc::{CccClient, DialParams, HttpCccClient};
use dialex_worker::config::Settings;

#[derive(Deserialize)]
struct Fields<'a> {
    request_id: &'a str,
    instance_id: &'a str,
    caller: &'a str,
    callee: &'a str,
    rout_point: &'a str,
}

/// Consumes until `shutdown`, then prints the round-trip percentiles.
pub async fn run(
    settings: &Settings,
    client: HttpCccClient,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let amqp_settings = &settings.amqp;
    let names = &amqp_settings.names;
    let consume = amqp::connect(amqp_settings, "dialex-worker floor consume").await?;
    let publish = amqp::connect(amqp_settings, "dialex-worker floor publish").await?;
    let out = publish.create_channel().await?;
    out.confirm_select(ConfirmSelectOptions::default()).await?;
    let channel = consume.create_channel().await?;
    channel
        .basic_qos(amqp_settings.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            names.request_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    println!("ready");

    let client = Arc::new(client);
    let round_trips = Arc::new(Mutex::new(Vec::<u64>::with_capacity(1 << 16)));
    let exchange = names.outcome_exchange.clone();
    let routing_key = format!("{}.dialed", names.outcome_routing_prefix);
    let tracker = TaskTracker::new();
    loop {
        let delivery = tokio::select! {
            () = shutdown.cancelled() => break,
            next = consumer.next() => match next {
                Some(Ok(delivery)) => delivery,
                _ => break,
            },
        };
        let client = Arc::clone(&client);
        let out = out.clone();
        let round_trips = Arc::clone(&round_trips);
        let (exchange, routing_key) = (exchange.clone(), routing_key.clone());
        tracker.spawn(async move {
            let Ok(fields) = serde_json::from_slice::<Fields<'_>>(&delivery.data) else {
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                return;
            };
            let params = DialParams {
                instance_id: fields.instance_id,
                caller: fields.caller,
                callee: fields.callee,
                answer_mode: "0",
                rout_point: fields.rout_point,
                provider: None,
            };
            let signed = client.sign(&params);
            let started = Instant::now();
            let answer = client.send(&signed).await;
            let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            if let Ok(mut samples) = round_trips.lock() {
                samples.push(took);
            }
            let task_id = answer.map(|a| a.task_id).unwrap_or_default();
            let body = serde_json::json!({
                "request_id": fields.request_id,
                "status": "dialed",
                "task_id": task_id,
            })
            .to_string();
            if publish_confirmed(&out, &exchange, &routing_key, body.as_bytes()).await {
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            }
        });
    }
    tracker.close();
    tracker.wait().await;
    let mut samples = round_trips.lock().map(|s| s.clone()).unwrap_or_default();
    samples.sort_unstable();
    let at = |q: f64| {
        samples
            .get(((samples.len() as f64 * q) as usize).min(samples.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!("rtt_us {} {}", at(0.50), at(0.99));
    let _ = consume.close(200, "bye".into()).await;
    let _ = publish.close(200, "bye".into()).await;
    Ok(())
}

async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
) -> bool {
    let published = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2),
        )
        .await;
    match published {
        Ok(confirm) => confirm.await.is_ok_and(|c| c.is_ack()),
        Err(_) => false,
    }
}
