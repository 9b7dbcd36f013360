//! A follow-up job: what the follow-up needs to find one dialed request's call.
//!
//! It travels on the internal follow-up queue only, never to downstream systems: it holds the
//! caller and callee (as a request does), so [`FollowupJob`]'s `Debug` masks them like every
//! [`PhoneNumber`].

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::outcome::{OutcomeEvent, Status};
use crate::phone::PhoneNumber;
use crate::validate::DialRequest;

/// AMQP `type` of a follow-up job.
pub const JOB_TYPE: &str = "dial.followup";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FollowupJob {
    pub request_id: String,
    pub instance_id: String,
    pub caller: PhoneNumber,
    pub callee: PhoneNumber,
    pub task_id: String,
    /// When CCC accepted the call: its own `TimeStamp` when it sent one, else the worker's
    /// time of the outcome.
    pub dialed_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Box<RawValue>>,
    /// Polls made so far.
    pub polls: u32,
    /// Queries that failed in a row.
    #[serde(default)]
    pub failures: u32,
    /// When the next poll is due.
    pub due_at: Timestamp,
}

impl FollowupJob {
    /// The job for `request`, dialed as `event` says, first polled `first_poll` after the
    /// dial. `None` unless the event is `dialed` with a `TaskId`.
    pub fn after(
        request: &DialRequest,
        event: &OutcomeEvent,
        first_poll: Duration,
    ) -> Option<FollowupJob> {
        if event.status != Status::Dialed {
            return None;
        }
        let task_id = event.task_id.clone()?;
        let dialed_at = event.ccc_time.unwrap_or(event.completed_at);
        Some(FollowupJob {
            request_id: request.request_id().as_str().to_owned(),
            instance_id: request.instance_id().to_owned(),
            caller: request.caller().clone(),
            callee: request.callee().clone(),
            task_id,
            dialed_at,
            attributes: request.attributes().map(ToOwned::to_owned),
            polls: 0,
            failures: 0,
            due_at: dialed_at.checked_add(first_poll).unwrap_or(Timestamp::MAX),
        })
    }

    /// Reads a job off the follow-up queue.
    pub fn decode(body: &[u8]) -> Result<FollowupJob, serde_json::Error> {
        serde_json::from_slice(body)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| unreachable!("follow-up jobs always serialise"))
    }
}
