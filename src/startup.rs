//! Builds the worker from settings and runs it: the same code path for `run`, the demo and
//! the tests.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

use crate::amqp::{self, AmqpError, Publisher, op, topology};
use crate::ccc::CccClient;
use crate::config::{Settings, StoreBackend};
use crate::defer::Tiers;
use crate::dial::DialPolicy;
use crate::gates::cooldown::{CalleeGate, NumberHasher};
use crate::gates::dnc::{DncList, DncSettings, RedisDnc};
use crate::gates::hours::BusinessHours;
use crate::gates::limits::{AnyLimiter, LimitSettings, LocalLimiter, RedisLimiter};
use crate::health::Health;
use crate::intake::{Stopped, consume};
use crate::metrics::Metrics;
use crate::pipeline::{Halt, HaltCause, Pipeline};
use crate::store::embedded::EmbeddedStore;
use crate::store::redis::RedisStore;
use crate::store::{DialStore, StoreError};

/// How long in-flight requests get to finish once consumption stops.
const DRAIN: Duration = Duration::from_secs(25);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error("could not open the dial-record store: {0}")]
    Store(#[from] StoreError),
    /// Messages in hand were returned to the queue untouched.
    #[error("stopped consuming: {0}")]
    Halted(HaltCause),
    #[error("the broker closed the consumer")]
    ConsumerClosed,
    /// A gate (calendar, do-not-call list, limiter) could not be set up.
    #[error("{0}")]
    Gate(String),
}

fn dnc_settings(settings: &Settings) -> DncSettings {
    let file = &settings.dnc.file;
    DncSettings {
        file: (!file.as_os_str().is_empty()).then(|| file.clone()),
        reload_interval: Duration::from_millis(settings.dnc.reload_interval_ms),
        redis: settings.dnc.shared.then(|| RedisDnc {
            url: settings.store.url.clone(),
            key_prefix: settings.store.key_prefix.clone(),
            hash_key: settings.cooldown.hash_key.clone(),
        }),
    }
}

/// This process's name in claims: the pod name (Kubernetes sets `HOSTNAME`) plus a random
/// suffix, so a restarted worker never mistakes its predecessor's claims for its own.
pub fn worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &suffix[..8])
}

/// Opens the store `settings` ask for and runs the worker with it.
pub async fn run_with_configured_store<C: CccClient>(
    settings: &Settings,
    client: C,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let worker = worker_id();
    // A permit outlives a crashed holder by the dial lease: longer than any dial.
    let limits = LimitSettings::from_config(&settings.limits, settings.store.lease());
    match settings.store.backend {
        StoreBackend::Embedded => {
            let store = EmbeddedStore::open(&settings.store, worker)?;
            let limiter = AnyLimiter::Local(LocalLimiter::new(limits));
            run(settings, client, store, limiter, metrics, health, shutdown).await
        }
        StoreBackend::Redis => {
            let store = RedisStore::connect(&settings.store, worker).await?;
            let limiter = AnyLimiter::Redis(
                RedisLimiter::connect(&settings.store.url, &settings.store.key_prefix, limits)
                    .await
                    .map_err(|e| RunError::Gate(e.to_string()))?,
            );
            run(settings, client, store, limiter, metrics, health, shutdown).await
        }
    }
}

/// Declares the topology, consumes until `shutdown`, and closes cleanly.
pub async fn run<C: CccClient, S: DialStore>(
    settings: &Settings,
    client: C,
    store: S,
    limiter: AnyLimiter,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    // Not ready from the moment shutdown is asked for, while in-flight work drains.
    tokio::spawn({
        let health = Arc::clone(&health);
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            health.set_shutting_down();
        }
    });
    let amqp_settings = &settings.amqp;
    let tiers = Tiers::new(&settings.deferral, &amqp_settings.names);
    let hours =
        BusinessHours::new(&settings.business_hours).map_err(|e| RunError::Gate(e.to_string()))?;
    let dnc = DncList::start(dnc_settings(settings))
        .await
        .map_err(|e| RunError::Gate(e.to_string()))?;
    let publish_connection = amqp::connect(&amqp_settings.url, "dialex-worker publish").await?;
    let consume_connection = amqp::connect(&amqp_settings.url, "dialex-worker consume").await?;
    let publisher = Publisher::open(&publish_connection, amqp_settings).await?;
    topology::declare(publisher.channel(), amqp_settings, &tiers).await?;

    let halt = Arc::new(Halt::default());
    let pipeline = Arc::new(Pipeline {
        client,
        store,
        policy: DialPolicy::from_settings(&settings.ccc),
        publisher,
        tiers,
        callee: CalleeGate::new(&settings.cooldown, hours.default_calendar().time_zone()),
        hasher: NumberHasher::new(&settings.cooldown),
        hours,
        dnc,
        limiter,
        metrics,
        halt: Arc::clone(&halt),
        delivery_limit: amqp_settings.delivery_limit,
    });
    let result = loop {
        let channel = consume_connection
            .create_channel()
            .await
            .map_err(op("open consume channel"))?;
        channel
            .basic_qos(amqp_settings.prefetch, BasicQosOptions::default())
            .await
            .map_err(op("set prefetch"))?;
        let consumer = channel
            .basic_consume(
                amqp_settings.names.request_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(op("start consuming"))?;
        let consumer_tag = consumer.tag();
        health.set_consuming(true);
        tracing::info!(
            queue = amqp_settings.names.request_queue,
            prefetch = amqp_settings.prefetch,
            "consuming dial requests"
        );
        let stopped = consume(consumer, Arc::clone(&pipeline), shutdown.clone(), DRAIN).await;
        health.set_consuming(false);
        let _ = channel
            .basic_cancel(consumer_tag, BasicCancelOptions::default())
            .await;
        // Closing the channel returns every unsettled delivery to the queue.
        let _ = channel.close(200, "bye".into()).await;

        match stopped {
            Stopped::Shutdown => break Ok(()),
            Stopped::ConsumerClosed => break Err(RunError::ConsumerClosed),
            Stopped::Halted => match halt.cause() {
                // The worker's own credentials, signature or clock: keep the messages, wait
                // until CCC accepts the worker again, then resume.
                Some(cause @ HaltCause::Ccc(_)) => {
                    health.set_paused(Some(format!("paused: {cause}")));
                    if !wait_until_accepted(&pipeline.client, &shutdown).await {
                        break Ok(());
                    }
                    tracing::info!("CCC accepts the worker again; resuming");
                    health.set_paused(None);
                    halt.reset();
                }
                Some(cause) => break Err(RunError::Halted(cause)),
                None => break Err(RunError::ConsumerClosed),
            },
        }
    };
    let _ = consume_connection.close(200, "bye".into()).await;
    let _ = publish_connection.close(200, "bye".into()).await;
    result
}

/// Probes CCC with growing pauses (1 s doubling to a minute) until it accepts the worker;
/// `false` if shutdown came first.
async fn wait_until_accepted<C: CccClient>(client: &C, shutdown: &CancellationToken) -> bool {
    let mut pause = Duration::from_secs(1);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(pause) => {}
        }
        match client.probe().await {
            Ok(()) => return true,
            Err(failure) => {
                tracing::error!(
                    code = failure.code(),
                    error = %failure,
                    next_probe_in = ?pause.saturating_mul(2).min(Duration::from_secs(60)),
                    "paused: CCC still refuses the worker; check the ALIBABA_CLOUD_* credentials, the endpoint and the clock"
                );
            }
        }
        pause = pause.saturating_mul(2).min(Duration::from_secs(60));
    }
}
