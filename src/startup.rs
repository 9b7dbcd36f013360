//! Builds the worker from settings and runs it: the same code path for `run`, the demo and
//! the tests.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

use crate::amqp::{self, AmqpError, Publisher, op, topology};
use crate::ccc::{CccClient, DialFailure};
use crate::config::Settings;
use crate::dial::DialPolicy;
use crate::intake::{Stopped, consume};
use crate::pipeline::{Halt, Pipeline};

/// How long in-flight requests get to finish once consumption stops.
const DRAIN: Duration = Duration::from_secs(25);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    /// CCC refused the worker itself; messages were returned to the queue untouched.
    #[error("stopped consuming: CCC answered {}: {}. Check the ALIBABA_CLOUD_* credentials, the endpoint and the clock", .0.code(), .0.message().unwrap_or(""))]
    Halted(DialFailure),
    #[error("the broker closed the consumer")]
    ConsumerClosed,
}

/// Declares the topology, consumes until `shutdown`, and closes cleanly.
pub async fn run<C: CccClient>(
    settings: &Settings,
    client: C,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let amqp_settings = &settings.amqp;
    let publish_connection = amqp::connect(&amqp_settings.url, "dialex-worker publish").await?;
    let consume_connection = amqp::connect(&amqp_settings.url, "dialex-worker consume").await?;
    let publisher = Publisher::open(&publish_connection, amqp_settings).await?;
    topology::declare(publisher.channel(), amqp_settings).await?;

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
        policy: DialPolicy::from_settings(&settings.ccc),
        publisher,
        halt: Arc::clone(&halt),
    });
    // Stop new deliveries as soon as the loop ends, before draining, so nothing new starts.
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
