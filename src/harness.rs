//! A worker, a CCC simulator and isolated broker names, all in one process.
//!
//! The demo, the integration tests and the benchmark drive the real worker through this one
//! harness: it gives every run its own exchange and queue names (so runs can share a broker
//! and run in parallel), publishes requests the way an upstream system would, reads outcome
//! events and dead letters the way downstream would, and deletes everything it declared.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::amqp::{self, topology};
use crate::ccc::HttpCccClient;
use crate::ccc::simulator::{DEMO_ACCESS_KEY_ID, DEMO_ACCESS_KEY_SECRET, SimConfig, Simulator};
use crate::config::{Credentials, Settings};
use crate::outcome::OutcomeEvent;
use crate::startup::{self, RunError};

/// Consumes `queue` without acknowledgements, the way a test or load tool reads outcomes.
pub async fn read_queue(channel: &Channel, queue: &str) -> Result<Consumer, lapin::Error> {
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// An outcome event as a downstream consumer receives it.
#[derive(Debug)]
pub struct Received {
    pub event: OutcomeEvent,
    pub routing_key: String,
    pub properties: BasicProperties,
}

/// A message parked on the dead-letter queue.
#[derive(Debug)]
pub struct DeadLetter {
    pub body: Vec<u8>,
    pub reason: Option<String>,
    pub detail: Option<String>,
}

pub struct Harness {
    pub settings: Settings,
    pub simulator: Simulator,
    connection: Connection,
    channel: Channel,
    outcomes: Option<Consumer>,
    worker: Option<(CancellationToken, JoinHandle<Result<(), RunError>>)>,
}

impl Harness {
    /// Starts a simulator and declares a fresh, uniquely named topology.
    ///
    /// `base` supplies everything but the names and the CCC endpoint (tests pass their own
    /// overrides through it).
    pub async fn start(mut base: Settings, sim: SimConfig) -> anyhow::Result<Harness> {
        let simulator = Simulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), sim)
            .await
            .context("starting the CCC simulator")?;
        base.ccc.endpoint = simulator.endpoint();
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let suffix = &suffix[..12];
        let names = &mut base.amqp.names;
        for name in [
            &mut names.request_exchange,
            &mut names.request_queue,
            &mut names.dead_exchange,
            &mut names.dead_queue,
            &mut names.outcome_exchange,
            &mut names.outcome_catch_all_queue,
        ] {
            name.push_str(".test-");
            name.push_str(suffix);
        }
        let connection = amqp::connect(&base.amqp.url, "dialex-worker harness")
            .await
            .context("connecting to RabbitMQ")?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        topology::declare(&channel, &base.amqp).await?;
        Ok(Harness {
            settings: base,
            simulator,
            connection,
            channel,
            outcomes: None,
            worker: None,
        })
    }

    /// Default settings with the simulator's demo credentials.
    pub fn demo_credentials() -> Credentials {
        Credentials::new(DEMO_ACCESS_KEY_ID, DEMO_ACCESS_KEY_SECRET)
    }

    /// Starts the worker in this process with `credentials`.
    pub fn start_worker(&mut self, credentials: Credentials) -> anyhow::Result<()> {
        if self.worker.is_some() {
            bail!("a worker is already running");
        }
        let client = HttpCccClient::new(&self.settings.ccc, credentials)?;
        let settings = self.settings.clone();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let handle = tokio::spawn(async move { startup::run(&settings, client, token).await });
        self.worker = Some((shutdown, handle));
        Ok(())
    }

    /// Asks the worker to stop and returns how it ended.
    pub async fn stop_worker(&mut self) -> anyhow::Result<Result<(), RunError>> {
        let Some((shutdown, handle)) = self.worker.take() else {
            bail!("no worker is running");
        };
        shutdown.cancel();
        Ok(handle.await?)
    }

    /// Waits for the worker to end by itself (for example after a halt), up to `timeout`.
    pub async fn worker_exit(&mut self, timeout: Duration) -> anyhow::Result<Result<(), RunError>> {
        let Some((_, handle)) = self.worker.as_mut() else {
            bail!("no worker is running");
        };
        let result = tokio::time::timeout(timeout, handle)
            .await
            .context("the worker did not stop")??;
        self.worker = None;
        Ok(result)
    }

    /// Publishes a request body to the request exchange, persistent and confirmed.
    pub async fn publish_request(
        &self,
        body: &[u8],
        message_id: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        if let Some(id) = message_id {
            properties = properties.with_message_id(id.into());
        }
        let names = &self.settings.amqp.names;
        let confirmation = self
            .channel
            .basic_publish(
                names.request_exchange.as_str().into(),
                names.request_routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await?
            .await?;
        if !confirmation.is_ack() || confirmation.take_message().is_some() {
            bail!("the broker did not accept a request");
        }
        Ok(())
    }

    /// Reads `count` outcome events from the catch-all queue, waiting at most `timeout` for
    /// each one.
    pub async fn outcomes(
        &mut self,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Received>> {
        if self.outcomes.is_none() {
            let queue = &self.settings.amqp.names.outcome_catch_all_queue;
            self.outcomes = Some(read_queue(&self.channel, queue).await?);
        }
        let Some(consumer) = self.outcomes.as_mut() else {
            unreachable!("set just above");
        };
        let mut received = Vec::with_capacity(count);
        while received.len() < count {
            let delivery = tokio::time::timeout(timeout, consumer.next())
                .await
                .with_context(|| {
                    format!(
                        "waited {timeout:?} for outcome {} of {count}",
                        received.len() + 1
                    )
                })?
                .context("the outcome consumer closed")??;
            let event: OutcomeEvent =
                serde_json::from_slice(&delivery.data).context("an outcome event did not parse")?;
            received.push(Received {
                event,
                routing_key: delivery.routing_key.to_string(),
                properties: delivery.properties,
            });
        }
        Ok(received)
    }

    /// Takes every message currently on the dead-letter queue.
    pub async fn dead_letters(&self) -> anyhow::Result<Vec<DeadLetter>> {
        let mut letters = Vec::new();
        let queue = self.settings.amqp.names.dead_queue.as_str();
        while let Some(message) = self
            .channel
            .basic_get(
                queue.into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await?
        {
            let header = |name: &str| {
                message
                    .delivery
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get(name))
                    .and_then(|v| match v {
                        AMQPValue::LongString(s) => {
                            Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                        }
                        _ => None,
                    })
            };
            letters.push(DeadLetter {
                reason: header(amqp::publisher::REASON_HEADER),
                detail: header(amqp::publisher::DETAIL_HEADER),
                body: message.delivery.data.clone(),
            });
        }
        Ok(letters)
    }

    /// Messages ready in `queue` (not counting unacknowledged ones).
    pub async fn queue_depth(&self, queue: &str) -> anyhow::Result<u32> {
        let info = self
            .channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(info.message_count())
    }

    /// Polls `queue` until it holds `expected` ready messages or `timeout` passes; returns the
    /// last depth seen. Settles and requeues reach a quorum queue's count a moment later.
    pub async fn settled_depth(
        &self,
        queue: &str,
        expected: u32,
        timeout: Duration,
    ) -> anyhow::Result<u32> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let depth = self.queue_depth(queue).await?;
            if depth == expected || tokio::time::Instant::now() >= deadline {
                return Ok(depth);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the worker if it runs, deletes everything this harness declared, and stops the
    /// simulator.
    pub async fn cleanup(mut self) -> anyhow::Result<()> {
        if self.worker.is_some() {
            let _ = self.stop_worker().await?;
        }
        let names = &self.settings.amqp.names;
        for queue in [
            &names.request_queue,
            &names.dead_queue,
            &names.outcome_catch_all_queue,
        ] {
            self.channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        for exchange in [
            &names.request_exchange,
            &names.dead_exchange,
            &names.outcome_exchange,
        ] {
            self.channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await?;
        }
        let _ = self.connection.close(200, "bye".into()).await;
        self.simulator.shutdown().await;
        Ok(())
    }
}
