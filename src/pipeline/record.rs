//! The record stage: the request's terminal event becomes its result in the store before it
//! is published, so that every later delivery publishes that same result.

use std::time::{Duration, Instant};

use super::dedup::stored_result;
use super::held::Held;
use super::{Broker, Finish, HaltCause, Pipeline, Step};
use crate::amqp::Incoming;
use crate::ccc::CccClient;
use crate::gates::limits::Limiter;
use crate::metrics::StoreOp;
use crate::outcome::{OutcomeEvent, Status};
use crate::store::{DialStore, Recorded, StoreError};

/// Pauses between attempts to record a placed call's result while the store fails.
const RECORD_RETRY_MIN: Duration = Duration::from_millis(100);
const RECORD_RETRY_MAX: Duration = Duration::from_secs(5);

impl<C: CccClient, S: DialStore, L: Limiter, B: Broker> Pipeline<C, S, L, B> {
    /// Records `event` as the request's result (keeping the callee's slot for a call that was
    /// or may have been placed, giving it back otherwise) and publishes whichever result the
    /// store holds: ours, or one recorded first by another delivery.
    ///
    /// An event is never published unrecorded: a later delivery would find the claim and
    /// resolve the request a second time. A result that certainly placed no call gives the
    /// claim back when it cannot be recorded, and the request is evaluated afresh later. A
    /// call that was (or may have been) placed cannot be evaluated afresh, so its result is
    /// kept here and recorded as soon as the store takes it.
    pub(super) async fn record(
        &self,
        request_id: &str,
        mut held: Held,
        event: OutcomeEvent,
        incoming: &Incoming,
    ) -> Step {
        let placed = matches!(event.status, Status::Dialed | Status::Unknown);
        let task_id = event.task_id.as_deref();
        self.settle_callee(request_id, &mut held, placed.then_some(task_id))
            .await;
        let json = event.to_json();
        let mut pause = RECORD_RETRY_MIN;
        loop {
            let started = Instant::now();
            let recorded = self.store.record(request_id, held.claim(), &json).await;
            self.metrics.store_op(StoreOp::Record, started.elapsed());
            let error = match recorded {
                Ok(Recorded::Stored) => return Step::Finish(Finish::new(event, json)),
                Ok(Recorded::Earlier(stored)) => return stored_result(stored),
                Err(error) => error,
            };
            if let StoreError::Conflict = error {
                // Another delivery resolved the request after our lease ran out; its result
                // stands, and is published when this delivery comes back.
                tracing::error!(
                    status = event.status.as_str(),
                    task_id = event.task_id.as_deref(),
                    "the claim was taken over before the result was recorded; the store's result stands"
                );
                return Step::Redeliver;
            }
            if !placed {
                let _ = self.release(request_id, held.into_claim()).await;
                return self.store_failed(error, None, incoming, true).await;
            }
            tracing::error!(
                %error,
                status = event.status.as_str(),
                task_id = event.task_id.as_deref(),
                retry_in = ?pause,
                "could not record the result of a placed call; keeping it until the store takes it"
            );
            if self.store.check().await.is_err() {
                self.halt.trigger(HaltCause::Store(error));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RECORD_RETRY_MAX);
        }
    }
}
