//! A worker, a CCC simulator and isolated broker names, all in one process.
//!
//! The demo, the integration tests and the benchmark drive the real worker through this one
//! harness: it gives every run its own exchange and queue names (so runs can share a broker
//! and run in parallel), publishes requests the way an upstream system would, reads outcome
//! events and dead letters the way downstream would, and deletes everything it declared.

use std::net::SocketAddr;
use std::sync::Arc;
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

use crate::simulator::{DEMO_ACCESS_KEY_ID, DEMO_ACCESS_KEY_SECRET, SimConfig, Simulator};
use dialex_worker::amqp::{self, topology};
use dialex_worker::app::App;
use dialex_worker::config::Settings;
use dialex_worker::credentials::{CredentialSource, Credentials};
use dialex_worker::defer::Tiers;
use dialex_worker::followup::result::{CallResultEvent, RESULT_TYPE};
use dialex_worker::metrics::Metrics;
use dialex_worker::outcome::OutcomeEvent;
use dialex_worker::startup::RunError;
use dialex_worker::store::redis::RedisStore;

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

/// A call-result event as a downstream consumer receives it (with the follow-up on).
#[derive(Debug)]
pub struct ReceivedResult {
    pub event: CallResultEvent,
    pub routing_key: String,
    pub properties: BasicProperties,
    /// The bytes as published.
    pub body: Vec<u8>,
}

/// What the catch-all queue delivered: an outcome or, with the follow-up on, a call result.
#[derive(Debug)]
pub enum Delivered {
    Outcome(Received),
    Result(ReceivedResult),
}

/// A message parked on the dead-letter queue.
#[derive(Debug)]
pub struct DeadLetter {
    pub body: Vec<u8>,
    pub reason: Option<String>,
    pub detail: Option<String>,
    /// Why the broker dead-lettered it, when the broker did (e.g. `delivery_limit`).
    pub broker_reason: Option<String>,
}

pub struct Harness {
    pub settings: Settings,
    pub simulator: Simulator,
    /// Shared by every in-process worker this harness starts.
    pub metrics: Arc<Metrics>,
    connection: Connection,
    channel: Channel,
    outcomes: Option<Consumer>,
    workers: Vec<Worker>,
}

/// One in-process worker and its health endpoint.
struct Worker {
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), RunError>>,
    endpoint: SocketAddr,
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
        base.store.data_dir = std::env::temp_dir().join(format!("dialex-harness-{suffix}"));
        base.store.key_prefix = format!("dialex-harness-{suffix}");
        base.amqp.connection_name = format!("dialex-harness-{suffix}");
        let names = &mut base.amqp.names;
        for name in [
            &mut names.request_exchange,
            &mut names.request_queue,
            &mut names.dead_exchange,
            &mut names.dead_queue,
            &mut names.outcome_exchange,
            &mut names.outcome_catch_all_queue,
            &mut names.followup_queue,
        ] {
            name.push_str(".test-");
            name.push_str(suffix);
        }
        let (connection, channel) = open(&base.amqp).await?;
        let tiers = Tiers::new(&base.deferral, &base.amqp.names);
        let followup_tiers = Tiers::of_followups(&base);
        topology::declare(&channel, &base.amqp, &tiers, followup_tiers.as_ref()).await?;
        Ok(Harness {
            metrics: Arc::new(Metrics::for_limits(&base.limits)),
            settings: base,
            simulator,
            connection,
            channel,
            outcomes: None,
            workers: Vec::new(),
        })
    }

    /// Moves the harness's own connection (publishing requests, reading outcomes and dead
    /// letters) to `url`. In a cluster test the topology is declared through one node (quorum
    /// queues lead where they are declared), the workers use another, and the harness watches
    /// from a third that the test leaves alone.
    pub async fn observe_from(&mut self, url: &str) -> anyhow::Result<()> {
        let mut amqp = self.settings.amqp.clone();
        amqp.url = url.to_owned().into();
        let (connection, channel) = open(&amqp).await?;
        let old = std::mem::replace(&mut self.connection, connection);
        self.channel = channel;
        self.outcomes = None;
        let _ = old.close(200, "moved".into()).await;
        Ok(())
    }

    /// Default settings with the simulator's demo credentials.
    pub fn demo_credentials() -> Credentials {
        Credentials::new(DEMO_ACCESS_KEY_ID, DEMO_ACCESS_KEY_SECRET)
    }

    /// Starts a worker in this process with `credentials`. Call it again for more replicas
    /// (with the Redis store: the embedded store belongs to one worker).
    pub async fn start_worker(
        &mut self,
        credentials: impl Into<CredentialSource>,
    ) -> anyhow::Result<()> {
        let mut settings = self.settings.clone();
        // Several workers may run at once: each picks a free port.
        settings.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let app = App::build(settings, credentials, Arc::clone(&self.metrics)).await?;
        let endpoint = app.health_endpoint();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(app.run(shutdown.clone()));
        self.workers.push(Worker {
            shutdown,
            handle,
            endpoint,
        });
        Ok(())
    }

    /// The status and body of `path` on the first worker's health endpoint.
    pub async fn probe(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let worker = self.workers.first().context("no worker is running")?;
        let response = reqwest::get(format!("http://{}{path}", worker.endpoint)).await?;
        Ok((response.status().as_u16(), response.text().await?))
    }

    /// The status and body of the first worker's `/readyz`.
    pub async fn readyz(&self) -> anyhow::Result<(u16, String)> {
        self.probe("/readyz").await
    }

    /// The first worker's `/metrics` page.
    pub async fn metrics_text(&self) -> anyhow::Result<String> {
        match self.probe("/metrics").await? {
            (200, page) => Ok(page),
            (status, body) => bail!("/metrics answered {status}: {body}"),
        }
    }

    /// Asks every in-process worker to stop and returns how the first one ended.
    pub async fn stop_worker(&mut self) -> anyhow::Result<Result<(), RunError>> {
        if self.workers.is_empty() {
            bail!("no worker is running");
        }
        let mut first = None;
        for worker in self.workers.drain(..) {
            worker.shutdown.cancel();
            let result = worker.handle.await?;
            first.get_or_insert(result);
        }
        first.context("no worker is running")
    }

    /// Waits for the (first) worker to end by itself, for example after a halt.
    pub async fn worker_exit(&mut self, timeout: Duration) -> anyhow::Result<Result<(), RunError>> {
        let Some(worker) = self.workers.first_mut() else {
            bail!("no worker is running");
        };
        let result = tokio::time::timeout(timeout, &mut worker.handle)
            .await
            .context("the worker did not stop")??;
        self.workers.remove(0);
        Ok(result)
    }

    /// The `DIALEX_*` variables that make a worker process (`dialex-worker run`) use this
    /// harness's broker names, simulator and store.
    pub fn worker_env(&self) -> Vec<(String, String)> {
        let s = &self.settings;
        let n = &s.amqp.names;
        let backend = match s.store.backend {
            dialex_worker::config::StoreBackend::Embedded => "embedded",
            dialex_worker::config::StoreBackend::Redis => "redis",
        };
        [
            ("AMQP__PREFETCH", s.amqp.prefetch.to_string()),
            // Several worker processes may run at once: each picks a free port.
            ("HTTP__LISTEN", "127.0.0.1:0".to_owned()),
            ("AMQP__DELIVERY_LIMIT", s.amqp.delivery_limit.to_string()),
            ("AMQP__CONNECTION_NAME", s.amqp.connection_name.clone()),
            ("AMQP__NAMES__REQUEST_EXCHANGE", n.request_exchange.clone()),
            ("AMQP__NAMES__REQUEST_QUEUE", n.request_queue.clone()),
            ("AMQP__NAMES__DEAD_EXCHANGE", n.dead_exchange.clone()),
            ("AMQP__NAMES__DEAD_QUEUE", n.dead_queue.clone()),
            ("AMQP__NAMES__OUTCOME_EXCHANGE", n.outcome_exchange.clone()),
            (
                "AMQP__NAMES__OUTCOME_CATCH_ALL_QUEUE",
                n.outcome_catch_all_queue.clone(),
            ),
            ("AMQP__NAMES__FOLLOWUP_QUEUE", n.followup_queue.clone()),
            ("FOLLOWUP__ENABLED", s.followup.enabled.to_string()),
            (
                "FOLLOWUP__POLLS_MS",
                s.followup
                    .polls_ms
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            (
                "FOLLOWUP__QUERIES_PER_SECOND",
                s.followup.queries_per_second.to_string(),
            ),
            ("CCC__ENDPOINT", s.ccc.endpoint.clone()),
            (
                "CCC__REQUEST_TIMEOUT_MS",
                s.ccc.request_timeout_ms.to_string(),
            ),
            (
                "CCC__CONNECT_TIMEOUT_MS",
                s.ccc.connect_timeout_ms.to_string(),
            ),
            ("CCC__MAX_ATTEMPTS", s.ccc.max_attempts.to_string()),
            (
                "CCC__INITIAL_BACKOFF_MS",
                s.ccc.initial_backoff_ms.to_string(),
            ),
            ("CCC__MAX_BACKOFF_MS", s.ccc.max_backoff_ms.to_string()),
            ("CCC__RETRY_BUDGET_MS", s.ccc.retry_budget_ms.to_string()),
            (
                "CCC__MAX_TOTAL_ATTEMPTS",
                s.ccc.max_total_attempts.to_string(),
            ),
            ("CCC__REQUEUE_DELAY_MS", s.ccc.requeue_delay_ms.to_string()),
            (
                "CCC__MAX_REQUEUE_DELAY_MS",
                s.ccc.max_requeue_delay_ms.to_string(),
            ),
            ("STORE__BACKEND", backend.to_owned()),
            ("STORE__DATA_DIR", s.store.data_dir.display().to_string()),
            ("STORE__KEY_PREFIX", s.store.key_prefix.clone()),
            ("STORE__LEASE_MS", s.store.lease_ms.to_string()),
            ("COOLDOWN__WINDOW_MS", s.cooldown.window_ms.to_string()),
            ("LIMITS__MAX_IN_FLIGHT", s.limits.max_in_flight.to_string()),
            (
                "LIMITS__CALLS_PER_SECOND",
                s.limits.calls_per_second.to_string(),
            ),
            ("LIMITS__BURST", s.limits.burst.to_string()),
            (
                "BUSINESS_HOURS__TIMEZONE",
                s.business_hours.default.timezone.clone(),
            ),
            ("LOG__LEVEL", s.log.level.clone()),
            (
                "DEFERRAL__TIERS_MS",
                s.deferral
                    .tiers_ms
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (format!("DIALEX_{k}"), v))
        .chain(
            s.business_hours
                .default
                .weekly
                .iter()
                .map(|(day, windows)| {
                    (
                        format!("DIALEX_BUSINESS_HOURS__WEEKLY__{}", day.to_uppercase()),
                        windows.join(","),
                    )
                }),
        )
        .chain([
            (
                Credentials::ACCESS_KEY_ID.to_owned(),
                DEMO_ACCESS_KEY_ID.to_owned(),
            ),
            (
                Credentials::ACCESS_KEY_SECRET.to_owned(),
                DEMO_ACCESS_KEY_SECRET.to_owned(),
            ),
        ])
        .collect()
    }

    /// Publishes a request body to the request exchange, persistent and confirmed.
    pub async fn publish_request(
        &self,
        body: &[u8],
        message_id: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut properties = BasicProperties::default();
        if let Some(id) = message_id {
            properties = properties.with_message_id(id.into());
        }
        self.publish_request_with(body, properties).await
    }

    /// Publishes a request with the given properties (persistent, JSON, confirmed).
    pub async fn publish_request_with(
        &self,
        body: &[u8],
        properties: BasicProperties,
    ) -> anyhow::Result<()> {
        let names = &self.settings.amqp.names;
        self.publish_to(
            &names.request_exchange,
            &names.request_routing_key,
            body,
            properties,
        )
        .await
    }

    /// Publishes a follow-up job straight to the follow-up queue, as the worker would after
    /// a dial (persistent, JSON, confirmed).
    pub async fn publish_followup_job(
        &self,
        body: &[u8],
        properties: BasicProperties,
    ) -> anyhow::Result<()> {
        let queue = &self.settings.amqp.names.followup_queue;
        self.publish_to("", queue, body, properties).await
    }

    async fn publish_to(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> anyhow::Result<()> {
        let properties = properties
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        let confirmation = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
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

    /// Publishes a request without waiting for its confirm (as a busy upstream does); wait
    /// for all of them with [`Harness::confirmed`].
    pub async fn publish_unconfirmed(&self, body: &[u8]) -> anyhow::Result<()> {
        let names = &self.settings.amqp.names;
        self.channel
            .basic_publish(
                names.request_exchange.as_str().into(),
                names.request_routing_key.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2),
            )
            .await?;
        Ok(())
    }

    /// Waits until the broker confirmed everything published so far.
    pub async fn confirmed(&self) -> anyhow::Result<()> {
        let returned = self.channel.wait_for_confirms().await?;
        if !returned.is_empty() {
            bail!("the broker returned {} request(s)", returned.len());
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
        let mut received = Vec::with_capacity(count);
        while received.len() < count {
            let next = self.next_outcome(timeout).await?.with_context(|| {
                format!(
                    "waited {timeout:?} for outcome {} of {count}",
                    received.len() + 1
                )
            })?;
            received.push(next);
        }
        Ok(received)
    }

    /// The next outcome event from the catch-all queue, or `None` after `timeout`.
    pub async fn next_outcome(&mut self, timeout: Duration) -> anyhow::Result<Option<Received>> {
        let Some(delivery) = self.next_outcome_delivery(timeout).await? else {
            return Ok(None);
        };
        let event: OutcomeEvent =
            serde_json::from_slice(&delivery.data).context("an outcome event did not parse")?;
        Ok(Some(Received {
            event,
            routing_key: delivery.routing_key.to_string(),
            properties: delivery.properties,
        }))
    }

    /// The next outcome or call result from the catch-all queue (told apart by the AMQP
    /// `type`), or `None` after `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> anyhow::Result<Option<Delivered>> {
        let Some(delivery) = self.next_outcome_delivery(timeout).await? else {
            return Ok(None);
        };
        let routing_key = delivery.routing_key.to_string();
        let is_result = delivery
            .properties
            .kind()
            .as_ref()
            .is_some_and(|kind| kind.as_str() == RESULT_TYPE);
        if is_result {
            let event: CallResultEvent =
                serde_json::from_slice(&delivery.data).context("a call result did not parse")?;
            return Ok(Some(Delivered::Result(ReceivedResult {
                event,
                routing_key,
                properties: delivery.properties,
                body: delivery.data,
            })));
        }
        let event: OutcomeEvent =
            serde_json::from_slice(&delivery.data).context("an outcome event did not parse")?;
        Ok(Some(Delivered::Outcome(Received {
            event,
            routing_key,
            properties: delivery.properties,
        })))
    }

    /// The next message on the catch-all outcome queue, unparsed.
    pub async fn next_outcome_delivery(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<Option<lapin::message::Delivery>> {
        if self.outcomes.is_none() {
            let queue = &self.settings.amqp.names.outcome_catch_all_queue;
            self.outcomes = Some(read_queue(&self.channel, queue).await?);
        }
        let Some(consumer) = self.outcomes.as_mut() else {
            unreachable!("set just above");
        };
        let Ok(next) = tokio::time::timeout(timeout, consumer.next()).await else {
            return Ok(None);
        };
        Ok(Some(next.context("the outcome consumer closed")??))
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
                broker_reason: header("x-first-death-reason"),
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
        if !self.workers.is_empty() {
            let _ = self.stop_worker().await?;
        }
        let names = &self.settings.amqp.names;
        let tiers = Tiers::new(&self.settings.deferral, names);
        let queues = [
            &names.request_queue,
            &names.dead_queue,
            &names.outcome_catch_all_queue,
        ]
        .into_iter()
        .cloned()
        .chain(tiers.all().iter().map(|t| t.queue.clone()));
        let followups = Tiers::of_followups(&self.settings)
            .map(|tiers| {
                let mut queues: Vec<String> = tiers.all().iter().map(|t| t.queue.clone()).collect();
                queues.push(names.followup_queue.clone());
                queues
            })
            .unwrap_or_default();
        let queues = queues.chain(followups);
        for queue in queues {
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
        let _ = std::fs::remove_dir_all(&self.settings.store.data_dir);
        if self.settings.store.backend == dialex_worker::config::StoreBackend::Redis {
            delete_redis_keys(&self.settings).await?;
        }
        Ok(())
    }
}

/// The harness's own connection to the first of `amqp.url`'s nodes that answers, and a
/// channel on it with publisher confirms.
async fn open(amqp: &dialex_worker::config::AmqpSettings) -> anyhow::Result<(Connection, Channel)> {
    let connection = amqp::connect(amqp, "dialex-worker harness")
        .await
        .context("connecting to RabbitMQ")?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((connection, channel))
}

/// Deletes every Redis key under the harness's prefix.
async fn delete_redis_keys(settings: &Settings) -> anyhow::Result<()> {
    let store = RedisStore::connect(&settings.store, "harness".to_owned()).await?;
    store.delete_everything().await?;
    Ok(())
}
