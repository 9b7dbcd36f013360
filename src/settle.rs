//! The settle stage: the last word on a delivery, given only after everything it produced is
//! confirmed by the broker.

use lapin::Acker;
use lapin::options::{BasicAckOptions, BasicNackOptions};

use crate::amqp::{AmqpError, op};

/// What to tell the broker about a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Done: its outcome (or dead letter) is confirmed.
    Ack,
    /// Its outcome could not be published: let the queue's dead-letter exchange park it, so it
    /// is neither lost nor dialed again.
    DeadLetter,
    /// Not this worker's to finish (the worker is stopping for a systemic fault): give it back
    /// unharmed for a healthy worker.
    Requeue,
}

pub async fn settle(acker: &Acker, disposition: Disposition) -> Result<(), AmqpError> {
    match disposition {
        Disposition::Ack => acker.ack(BasicAckOptions::default()).await,
        Disposition::DeadLetter => {
            acker
                .nack(BasicNackOptions {
                    requeue: false,
                    ..BasicNackOptions::default()
                })
                .await
        }
        Disposition::Requeue => {
            acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
        }
    }
    .map(drop)
    .map_err(op("settle delivery"))
}
