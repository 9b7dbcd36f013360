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
use crate::gates::cooldown::CalleeGate;
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
    #[error(transparent)]
    Config(crate::config::ConfigError),
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
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let worker = worker_id();
    match settings.store.backend {
        StoreBackend::Embedded => {
            let store = EmbeddedStore::open(&settings.store, worker)?;
            run(settings, client, store, metrics, shutdown).await
        }
        StoreBackend::Redis => {
            let store = RedisStore::connect(&settings.store, worker).await?;
            run(settings, client, store, metrics, shutdown).await
        }
    }
}

/// Declares the topology, consumes until `shutdown`, and closes cleanly.
pub async fn run<C: CccClient, S: DialStore>(
    settings: &Settings,
    client: C,
    store: S,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let amqp_settings = &settings.amqp;
    let tiers = Tiers::new(&settings.deferral, &amqp_settings.names);
    let publish_connection = amqp::connect(&amqp_settings.url, "dialex-worker publish").await?;
    let consume_connection = amqp::connect(&amqp_settings.url, "dialex-worker consume").await?;
    let publisher = Publisher::open(&publish_connection, amqp_settings).await?;
    topology::declare(publisher.channel(), amqp_settings, &tiers).await?;

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
    tracing::info!(
        queue = amqp_settings.names.request_queue,
        prefetch = amqp_settings.prefetch,
        "consuming dial requests"
    );

    let halt = Arc::new(Halt::default());
    let pipeline = Arc::new(Pipeline {
        client,
        store,
        policy: DialPolicy::from_settings(&settings.ccc),
        publisher,
        tiers,
        callee: CalleeGate::new(&settings.cooldown, &settings.business_hours)
            .map_err(RunError::Config)?,
        metrics,
        halt: Arc::clone(&halt),
    });
    let stopped = consume(consumer, pipeline, shutdown, DRAIN).await;
    let _ = channel
        .basic_cancel(consumer_tag, BasicCancelOptions::default())
        .await;
    // Closing the channel returns every unsettled delivery to the queue.
    let _ = channel.close(200, "bye".into()).await;
    let _ = consume_connection.close(200, "bye".into()).await;
    let _ = publish_connection.close(200, "bye".into()).await;

    match stopped {
        Stopped::Shutdown => Ok(()),
        Stopped::Halted => Err(halt
            .cause()
            .cloned()
            .map_or(RunError::ConsumerClosed, RunError::Halted)),
        Stopped::ConsumerClosed => Err(RunError::ConsumerClosed),
    }
}
