//! The intake stage: the consumer loops. This module consumes dial requests into the
//! pipeline; [`followups`] consumes the follow-up's jobs.
//!
//! Deliveries arrive on their own connection with manual acks and a bounded prefetch; each is
//! handled in its own task (the prefetch bounds how many run at once) and settled when the
//! pipeline says so. The loop stops on shutdown or when the pipeline halts; in-flight requests
//! are then given `drain` to finish before whatever is left goes back to the queue.

pub mod followups;

use std::sync::Arc;
use std::time::Duration;

use std::panic::AssertUnwindSafe;

use futures_util::{FutureExt as _, StreamExt as _};
use lapin::options::BasicCancelOptions;
use lapin::{Channel, Consumer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::amqp::Incoming;
use crate::ccc::CccClient;
use crate::gates::limits::Limiter;
use crate::pipeline::Pipeline;
use crate::settle::{Disposition, settle};
use crate::store::DialStore;

/// Why the consumer loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Shutdown was requested.
    Shutdown,
    /// The pipeline halted on a systemic fault.
    Halted,
    /// The broker closed the consumer (connection or channel lost, queue deleted).
    ConsumerClosed,
}

/// Handles one delivery so that it is always settled: a panic anywhere in the pipeline is
/// caught and turned into a disposition, never a delivery left unacknowledged on the channel.
async fn handle_guarded<C: CccClient, S: DialStore, L: Limiter>(
    pipeline: &Pipeline<C, S, L>,
    incoming: &Incoming,
) -> Disposition {
    let panic = match AssertUnwindSafe(pipeline.handle(incoming))
        .catch_unwind()
        .await
    {
        Ok(disposition) => return disposition,
        Err(panic) => panic,
    };
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    AssertUnwindSafe(pipeline.after_panic(incoming, &what))
        .catch_unwind()
        .await
        // Even parking failed: the queue's dead-letter exchange takes it.
        .unwrap_or(Disposition::DeadLetter)
}

/// Runs the consumer until shutdown, a halt, or the end of the stream; then cancels it and
/// waits up to `drain` for in-flight requests.
pub async fn consume<C: CccClient, S: DialStore, L: Limiter>(
    mut consumer: Consumer,
    channel: &Channel,
    pipeline: Arc<Pipeline<C, S, L>>,
    shutdown: CancellationToken,
    lost: CancellationToken,
    drain: Duration,
) -> Stopped {
    let tracker = TaskTracker::new();
    let halt = pipeline.halt.token();
    let stopped = loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break Stopped::Shutdown,
            () = halt.cancelled() => break Stopped::Halted,
            () = lost.cancelled() => break Stopped::ConsumerClosed,
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let pipeline = Arc::clone(&pipeline);
                    pipeline.metrics.requests_received.inc();
                    pipeline.metrics.in_flight.inc();
                    tracker.spawn(async move {
                        let acker = delivery.acker;
                        let incoming =
                            Incoming::new(delivery.data, delivery.properties, delivery.redelivered);
                        if incoming.replays > 0 {
                            pipeline.metrics.replays_received.inc();
                        }
                        let disposition = handle_guarded(&pipeline, &incoming).await;
                        if disposition == Disposition::DeadLetter {
                            // Rejected without requeue: the queue's dead-letter exchange parks it.
                            pipeline.metrics.dead_lettered("nacked");
                        }
                        if let Err(error) = settle(&acker, disposition).await {
                            // The broker redelivers an unsettled message; nothing is lost.
                            tracing::error!(%error, ?disposition, "could not settle a delivery");
                        }
                        pipeline.metrics.in_flight.dec();
                    });
                }
                Some(Err(error)) => {
                    tracing::error!(%error, "consumer failed");
                    break Stopped::ConsumerClosed;
                }
                None => break Stopped::ConsumerClosed,
            },
        }
    };
    // No new deliveries while the ones in hand finish; whatever the broker had already sent
    // returns to the queue when the channel closes.
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()),
    )
    .await;
    tracker.close();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(
            in_flight = tracker.len(),
            "drain deadline passed; unfinished requests will be redelivered"
        );
    }
    stopped
}
