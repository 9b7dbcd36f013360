//! The dedup stage: claim the request, or learn why it must not be dialed now.

use std::time::Instant;

use jiff::Timestamp;

use super::held::Held;
use super::{Broker, Finish, Parking, Pipeline, Step, Verdict};
use crate::amqp::Incoming;
use crate::ccc::CccClient;
use crate::gates::limits::Limiter;
use crate::metrics::{DedupKind, StoreOp};
use crate::outcome::{DeferReason, OutcomeEvent};
use crate::store::{Claim, DialStore};
use crate::validate::{DialRequest, Rejection};

impl<C: CccClient, S: DialStore, L: Limiter, B: Broker> Pipeline<C, S, L, B> {
    /// Claims the request for this worker. Anything else ends its path here: it is being
    /// handled elsewhere (wait), it has a result (publish it again), or its worker died
    /// (`unknown`, never dialed again).
    pub(super) async fn claim(
        &self,
        request: &DialRequest,
        incoming: &Incoming,
    ) -> Result<Held, Step> {
        let fingerprint = self.hasher.fingerprint(request);
        let started = Instant::now();
        let claim = self
            .store
            .claim(request.request_id().as_str(), &fingerprint)
            .await;
        self.metrics.store_op(StoreOp::Claim, started.elapsed());
        match claim {
            Ok(Claim::Acquired(token)) => {
                incoming.mark_claimed();
                Ok(Held::new(token))
            }
            Ok(Claim::Held { worker, remaining }) => {
                self.metrics.dedup_hit(DedupKind::Claimed);
                tracing::info!(%worker, ?remaining, "request is being handled elsewhere; deferring");
                let until = Timestamp::now()
                    .checked_add(remaining)
                    .unwrap_or_else(|_| Timestamp::now());
                Err(Step::Defer(self.deferral(
                    request,
                    incoming,
                    DeferReason::Claimed,
                    until,
                    incoming.prior_attempts,
                )))
            }
            Ok(Claim::Recorded { event }) => {
                self.metrics.dedup_hit(DedupKind::Recorded);
                tracing::info!("request already has a result; publishing it again");
                Err(stored_result(event))
            }
            Ok(Claim::Abandoned(token)) => {
                incoming.mark_claimed();
                self.metrics.dedup_hit(DedupKind::Abandoned);
                tracing::warn!(
                    "a worker stopped while handling this request; it may have been dialed, so it is not dialed again"
                );
                let event = OutcomeEvent::interrupted(request, incoming.received_at);
                Err(self
                    .conclude(request, incoming, Held::new(token), Verdict::Resolve(event))
                    .await)
            }
            Ok(Claim::Reused) => {
                // Another request owns this request_id; its record stays untouched.
                let rejection = Rejection::request_id_reused(request);
                Err(self.rejected(incoming, &rejection))
            }
            Err(error) => Err(self
                .store_failed(error, Some(request), incoming, false)
                .await),
        }
    }
}

/// Publishes a stored result again, as the bytes first published (same `event_id`).
pub(super) fn stored_result(stored: Vec<u8>) -> Step {
    match serde_json::from_slice::<OutcomeEvent>(&stored) {
        Ok(event) => Step::Finish(Finish::new(event, stored)),
        Err(error) => {
            tracing::error!(%error, "the stored result is unreadable; parking the request");
            Step::Park(Parking {
                reason: "unreadable_record",
                detail: "the stored result could not be read".to_owned(),
                event: None,
            })
        }
    }
}
