//! One walk over the dead-letter queue, oldest first, each message decided on and settled
//! before the next is read.
//!
//! The walk counts the queue first and reads exactly that many messages: whatever it puts back
//! goes to the tail, behind them, so it never reads a message twice, and dead letters that
//! arrive meanwhile wait behind the walk's messages. It reads through an exclusive consumer
//! with a prefetch of one, so two walks never interleave and at most one message is in hand.
//! A message is acknowledged only after what replaces it (its copy at the tail, or its replay
//! on the request exchange) is confirmed by the broker; a walk that is killed leaves at most a
//! duplicate (which dedup absorbs), never a gap. Stopped on purpose (Ctrl-C), it finishes the
//! message in hand and cancels the consumer before acknowledging it, so nothing is requeued.

use std::time::Duration;

use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Decision, Parked, kept_properties, replay_properties};
use crate::amqp::{self, AmqpError, op};
use crate::config::AmqpSettings;

/// How long the walk waits for the next message before it takes the queue as shorter than
/// counted (someone else consumed from it).
const NEXT_MESSAGE: Duration = Duration::from_secs(10);

/// The longest any single broker operation may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a walk could not run or stopped short.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error(
        "the dead-letter queue {0} does not exist (a worker declares it when it starts) or \
         another `dead` command is reading it"
    )]
    Unavailable(String),
    #[error("the broker did not take a copy ({0}); the message stays parked")]
    NotTaken(String),
    #[error("no answer from RabbitMQ within {0:?} ({1})")]
    Timeout(Duration, &'static str),
}

/// What a walk did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Walked {
    /// Messages on the queue when the walk began.
    pub counted: u64,
    pub read: u64,
    pub kept: u64,
    pub replayed: u64,
    pub purged: u64,
    /// Stopped on purpose before the end; the rest was not read.
    pub stopped: bool,
}

/// Replays go out at most this often (`--rate`); `None`: as fast as they are confirmed.
#[derive(Debug, Clone, Copy)]
pub struct Pace(pub Option<Duration>);

/// Walks the dead-letter queue named in `amqp`, calling `decide` for every message and
/// `progress(read, counted)` after each, until the counted messages are read or `stop` is
/// cancelled.
pub async fn walk(
    amqp_settings: &AmqpSettings,
    stop: &CancellationToken,
    pace: Pace,
    mut progress: impl FnMut(u64, u64),
    mut decide: impl FnMut(&Parked) -> Decision,
) -> Result<Walked, WalkError> {
    let connection = within(
        "connect",
        amqp::connect(amqp_settings, "dialex-worker dead"),
    )
    .await??;
    let channel = within("open a channel", connection.create_channel())
        .await?
        .map_err(op("open a channel"))?;
    let mut walked = Walked::default();
    let result = walk_on(
        &channel,
        amqp_settings,
        stop,
        pace,
        &mut walked,
        &mut progress,
        &mut decide,
    )
    .await;
    let _ = within("close the channel", channel.close(200, "bye".into())).await;
    let _ = within("close the connection", connection.close(200, "bye".into())).await;
    result.map(|()| walked)
}

async fn walk_on(
    channel: &Channel,
    amqp_settings: &AmqpSettings,
    stop: &CancellationToken,
    pace: Pace,
    walked: &mut Walked,
    progress: &mut impl FnMut(u64, u64),
    decide: &mut impl FnMut(&Parked) -> Decision,
) -> Result<(), WalkError> {
    let names = &amqp_settings.names;
    let dead_queue = names.dead_queue.as_str();
    within(
        "enable confirms",
        channel.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?
    .map_err(op("enable confirms"))?;
    let queue = within(
        "count the dead-letter queue",
        channel.queue_declare(
            dead_queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await?
    .map_err(|_| WalkError::Unavailable(dead_queue.to_owned()))?;
    walked.counted = u64::from(queue.message_count());
    progress(0, walked.counted);
    if walked.counted == 0 {
        return Ok(());
    }
    within(
        "set the prefetch",
        channel.basic_qos(1, BasicQosOptions::default()),
    )
    .await?
    .map_err(op("set the prefetch"))?;
    let mut consumer = within(
        "read the dead-letter queue",
        channel.basic_consume(
            dead_queue.into(),
            "dialex-worker dead".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await?
    .map_err(|_| WalkError::Unavailable(dead_queue.to_owned()))?;
    let tag = consumer.tag();
    let mut next_replay = Instant::now();
    while walked.read < walked.counted {
        let delivery = match tokio::time::timeout(NEXT_MESSAGE, consumer.next()).await {
            Ok(Some(delivery)) => delivery.map_err(op("read a dead letter"))?,
            // Fewer messages than counted: someone else took some.
            Ok(None) | Err(_) => break,
        };
        walked.read += 1;
        let parked = Parked::read(&delivery.data, &delivery.properties);
        let decision = decide(&parked);
        match decision {
            Decision::Keep => {
                publish(
                    channel,
                    "",
                    dead_queue,
                    &delivery.data,
                    kept_properties(&delivery.properties),
                )
                .await?;
                walked.kept += 1;
            }
            Decision::Replay => {
                if let Some(interval) = pace.0 {
                    tokio::time::sleep_until(next_replay).await;
                    next_replay = Instant::now() + interval;
                }
                let (exchange, routing_key) = parked.replay_to(names);
                publish(
                    channel,
                    exchange,
                    routing_key,
                    &delivery.data,
                    replay_properties(&delivery.properties, parked.replays.saturating_add(1)),
                )
                .await?;
                walked.replayed += 1;
            }
            Decision::Purge => walked.purged += 1,
        }
        let last = walked.read == walked.counted || stop.is_cancelled();
        if last {
            // Cancelled before the ack, so the broker has nothing more to push: nothing is
            // left unacknowledged to be requeued when the channel closes.
            within(
                "stop reading",
                channel.basic_cancel(tag.clone(), BasicCancelOptions::default()),
            )
            .await?
            .map_err(op("stop reading"))?;
        }
        within(
            "acknowledge a dead letter",
            delivery.acker.ack(BasicAckOptions::default()),
        )
        .await?
        .map_err(op("acknowledge a dead letter"))?;
        progress(walked.read, walked.counted);
        if last {
            walked.stopped = walked.read < walked.counted;
            break;
        }
    }
    Ok(())
}

/// Publishes with `mandatory` and waits for the broker's confirm.
async fn publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), WalkError> {
    let confirm = within(
        "publish",
        channel.basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            properties,
        ),
    )
    .await?
    .map_err(op("publish"))?;
    let confirmation = within("publisher confirm", confirm)
        .await?
        .map_err(op("publisher confirm"))?;
    if confirmation.is_nack() {
        return Err(WalkError::NotTaken("nack".to_owned()));
    }
    if let Some(returned) = confirmation.take_message() {
        return Err(WalkError::NotTaken(format!(
            "unroutable: {} {}",
            returned.reply_code, returned.reply_text
        )));
    }
    Ok(())
}

/// `future`, or [`WalkError::Timeout`] after [`BROKER_TIMEOUT`].
async fn within<T>(what: &'static str, future: impl Future<Output = T>) -> Result<T, WalkError> {
    tokio::time::timeout(BROKER_TIMEOUT, future)
        .await
        .map_err(|_| WalkError::Timeout(BROKER_TIMEOUT, what))
}
