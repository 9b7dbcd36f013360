//! The follow-up consumer: carries each job's [`JobStep`] out against the broker, the only
//! follow-up code that publishes or settles.
//!
//! Jobs are handled concurrently up to the follow-up queue's prefetch, each settled once its
//! step is confirmed: a published result or a job parked on a wait tier is acknowledged; a
//! step the broker would not take goes back to the queue.

use std::panic::AssertUnwindSafe;

use futures_util::{FutureExt as _, StreamExt as _};
use lapin::Consumer;
use lapin::message::Delivery;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::FollowupJob;
use super::poll::{Followup, JobStep};
use crate::amqp::{Incoming, Publisher};
use crate::ccc::CallRecords;
use crate::defer::{self, Tiers};
use crate::metrics::Metrics;
use crate::settle::{Disposition, settle};
use crate::store::CallResults;

/// Consumes follow-up jobs until `stop` is cancelled or the consumer ends (the session was
/// lost); the jobs in hand finish first.
pub async fn consume<R: CallRecords, S: CallResults>(
    consumer: Consumer,
    followup: &Followup<R, S>,
    publisher: &Publisher,
    tiers: &Tiers,
    metrics: &Metrics,
    stop: CancellationToken,
) {
    consumer
        .take_until(stop.cancelled_owned())
        .for_each_concurrent(None, |delivery| async {
            let delivery = match delivery {
                Ok(delivery) => delivery,
                Err(error) => {
                    tracing::warn!(%error, "the follow-up consumer failed");
                    return;
                }
            };
            handle(delivery, followup, publisher, tiers, metrics).await;
        })
        .await;
}

async fn handle<R: CallRecords, S: CallResults>(
    delivery: Delivery,
    followup: &Followup<R, S>,
    publisher: &Publisher,
    tiers: &Tiers,
    metrics: &Metrics,
) {
    let acker = delivery.acker;
    let incoming = Incoming::new(delivery.data, delivery.properties, delivery.redelivered);
    let disposition = AssertUnwindSafe(carry_out(&incoming, followup, publisher, tiers, metrics))
        .catch_unwind()
        .await
        // A job that panics is redelivered, and dead-lettered at the queue's delivery limit.
        .unwrap_or(Disposition::Requeue);
    if let Err(error) = settle(&acker, disposition).await {
        tracing::error!(%error, ?disposition, "could not settle a follow-up job");
    }
}

async fn carry_out<R: CallRecords, S: CallResults>(
    incoming: &Incoming,
    followup: &Followup<R, S>,
    publisher: &Publisher,
    tiers: &Tiers,
    metrics: &Metrics,
) -> Disposition {
    let job = match FollowupJob::decode(&incoming.body) {
        Ok(job) => job,
        Err(error) => {
            // Never say more than where: the body holds phone numbers.
            let detail = format!(
                "not a follow-up job (line {}, column {})",
                error.line(),
                error.column()
            );
            return park(
                publisher,
                incoming,
                "invalid_followup_job",
                &detail,
                metrics,
            )
            .await;
        }
    };
    let span = tracing::info_span!("followup", request_id = %job.request_id, polls = job.polls);
    carry_out_job(job, incoming, followup, publisher, tiers, metrics)
        .instrument(span)
        .await
}

async fn carry_out_job<R: CallRecords, S: CallResults>(
    job: FollowupJob,
    incoming: &Incoming,
    followup: &Followup<R, S>,
    publisher: &Publisher,
    tiers: &Tiers,
    metrics: &Metrics,
) -> Disposition {
    match followup.step(job).await {
        JobStep::Publish(published) => {
            #[cfg(feature = "test-hooks")]
            crate::test_hooks::after_result(incoming);
            match publisher
                .publish_result(&published.event, &published.json)
                .await
            {
                Ok(()) => {
                    metrics.call_result(published.event.disposition);
                    tracing::info!(
                        disposition = published.event.disposition.as_str(),
                        polls = published.event.polls,
                        "call result published"
                    );
                    Disposition::Ack
                }
                Err(error) => {
                    tracing::warn!(%error, "could not publish the call result; returning the job");
                    Disposition::Requeue
                }
            }
        }
        JobStep::Wait(job) => {
            let tier = tiers.for_delay(defer::time_until(job.due_at));
            match publisher.follow_up(&job, tier).await {
                Ok(()) => Disposition::Ack,
                Err(error) => {
                    tracing::warn!(%error, "could not put the follow-up job back to wait; returning it");
                    Disposition::Requeue
                }
            }
        }
        JobStep::Park { reason, detail } => {
            park(publisher, incoming, reason, &detail, metrics).await
        }
    }
}

async fn park(
    publisher: &Publisher,
    incoming: &Incoming,
    reason: &'static str,
    detail: &str,
    metrics: &Metrics,
) -> Disposition {
    tracing::error!(reason, detail, "parking a follow-up job");
    match publisher.dead_letter(incoming, reason, detail).await {
        Ok(()) => {
            metrics.dead_lettered(reason);
            Disposition::Ack
        }
        Err(_) => Disposition::DeadLetter,
    }
}
