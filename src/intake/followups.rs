//! The follow-up's intake: consumes follow-up jobs and carries each one's [`JobStep`] out
//! against the broker, the only follow-up code that publishes or settles.
//!
//! Jobs are handled concurrently up to the follow-up queue's prefetch, each settled once its
//! step is confirmed: a published result or a job parked on a wait tier is acknowledged. A
//! publish the broker does not take is tried again until it does (the job is held, not
//! requeued, so an outage does not spend its deliveries); a job in hand when the session is
//! lost goes back to the queue with the channel.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::{FutureExt as _, StreamExt as _};
use lapin::Consumer;
use lapin::message::Delivery;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::amqp::{Incoming, PublishError, Publisher};
use crate::ccc::CallRecords;
use crate::defer::{self, Tiers};
use crate::followup::{Followup, FollowupJob, JobStep};
use crate::metrics::Metrics;
use crate::settle::{Disposition, settle};
use crate::store::CallResults;

/// What carrying a job out needs: the follow-up's stages and the broker's side.
pub struct Runner<'a, R, S> {
    pub followup: &'a Followup<R, S>,
    pub publisher: &'a Publisher,
    /// The follow-up queue's wait tiers.
    pub tiers: &'a Tiers,
    pub metrics: &'a Metrics,
    /// Cancelled when the broker session is lost or the worker stops: the jobs in hand are
    /// dropped, unsettled, and the broker delivers them again.
    pub lost: CancellationToken,
}

/// Pauses between attempts to publish while the broker does not take publishes.
const REPUBLISH_MIN: Duration = Duration::from_secs(1);
const REPUBLISH_MAX: Duration = Duration::from_secs(5);

impl<R: CallRecords, S: CallResults> Runner<'_, R, S> {
    /// Consumes follow-up jobs until the session is lost (or the worker stops) or the
    /// consumer ends.
    pub async fn consume(&self, consumer: Consumer) {
        consumer
            .take_until(self.lost.clone().cancelled_owned())
            .for_each_concurrent(None, |delivery| async {
                let delivery = match delivery {
                    Ok(delivery) => delivery,
                    Err(error) => {
                        tracing::warn!(%error, "the follow-up consumer failed");
                        return;
                    }
                };
                tokio::select! {
                    () = self.handle(delivery) => {}
                    () = self.lost.cancelled() => {}
                }
            })
            .await;
    }

    /// Runs `publish` until the broker takes it; `false` if the session is lost first.
    async fn published<F, Fut>(&self, what: &str, mut publish: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), PublishError>>,
    {
        let mut pause = REPUBLISH_MIN;
        loop {
            match publish().await {
                Ok(()) => return true,
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?pause, "could not publish the {what}; holding the job until the broker takes it");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.lost.cancelled() => return false,
            }
            pause = (pause * 2).min(REPUBLISH_MAX);
        }
    }

    async fn handle(&self, delivery: Delivery) {
        let acker = delivery.acker;
        let incoming = Incoming::new(delivery.data, delivery.properties, delivery.redelivered);
        let disposition = AssertUnwindSafe(self.carry_out(&incoming))
            .catch_unwind()
            .await
            // A job that panics is redelivered, and dead-lettered at the queue's delivery
            // limit.
            .unwrap_or(Disposition::Requeue);
        if let Err(error) = settle(&acker, disposition).await {
            tracing::error!(%error, ?disposition, "could not settle a follow-up job");
        }
    }

    async fn carry_out(&self, incoming: &Incoming) -> Disposition {
        let job = match FollowupJob::decode(&incoming.body) {
            Ok(job) => job,
            Err(error) => {
                // Never say more than where: the body holds phone numbers.
                let detail = format!(
                    "not a follow-up job (line {}, column {})",
                    error.line(),
                    error.column()
                );
                return self.park(incoming, "invalid_followup_job", &detail).await;
            }
        };
        let span = tracing::info_span!("followup", request_id = %job.request_id, polls = job.polls);
        self.carry_out_job(job, incoming).instrument(span).await
    }

    async fn carry_out_job(&self, job: FollowupJob, incoming: &Incoming) -> Disposition {
        match self.followup.step(job).await {
            JobStep::Publish(published) => {
                #[cfg(feature = "test-hooks")]
                crate::test_hooks::after_result(incoming);
                let event = &published.event;
                let sent = self
                    .published("call result", || {
                        self.publisher.publish_result(event, &published.json)
                    })
                    .await;
                if !sent {
                    return Disposition::Requeue;
                }
                self.metrics.call_result(event.disposition);
                tracing::info!(
                    disposition = event.disposition.as_str(),
                    polls = event.polls,
                    "call result published"
                );
                Disposition::Ack
            }
            JobStep::Wait(job) => {
                let tier = self.tiers.for_delay(defer::time_until(job.due_at));
                let sent = self
                    .published("waiting follow-up job", || {
                        self.publisher.follow_up(&job, tier)
                    })
                    .await;
                if sent {
                    Disposition::Ack
                } else {
                    Disposition::Requeue
                }
            }
            JobStep::Park { reason, detail } => self.park(incoming, reason, &detail).await,
        }
    }

    async fn park(&self, incoming: &Incoming, reason: &'static str, detail: &str) -> Disposition {
        tracing::error!(reason, detail, "parking a follow-up job");
        match self.publisher.dead_letter(incoming, reason, detail).await {
            Ok(()) => {
                self.metrics.dead_lettered(reason);
                Disposition::Ack
            }
            Err(_) => Disposition::DeadLetter,
        }
    }
}
