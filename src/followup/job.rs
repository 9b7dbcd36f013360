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

/// Whether a message with these properties is a follow-up job, not a dial request.
pub fn is_job(properties: &lapin::BasicProperties) -> bool {
    properties
        .kind()
        .as_ref()
        .is_some_and(|kind| kind.as_str() == JOB_TYPE)
}

/// How far CCC's `TimeStamp` may be from the worker's clock and still be the dial time.
const CCC_TIME_TRUSTED: jiff::SignedDuration = jiff::SignedDuration::from_mins(5);

#[derive(Clone, Serialize, Deserialize)]
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

/// By hand: the numbers mask themselves, and the attributes (whatever upstream put there) show
/// only their size, as a request's do.
impl std::fmt::Debug for FollowupJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FollowupJob")
            .field("request_id", &self.request_id)
            .field("instance_id", &self.instance_id)
            .field("caller", &self.caller)
            .field("callee", &self.callee)
            .field("task_id", &self.task_id)
            .field("dialed_at", &self.dialed_at)
            .field(
                "attributes_bytes",
                &self.attributes.as_ref().map(|a| a.get().len()),
            )
            .field("polls", &self.polls)
            .field("failures", &self.failures)
            .field("due_at", &self.due_at)
            .finish()
    }
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
        // CCC's own clock matches its records best; a time far from the worker's (seconds
        // read as milliseconds, a clock years off) would match nothing, or never come due.
        let plausible =
            |t: &Timestamp| t.duration_since(event.completed_at).abs() <= CCC_TIME_TRUSTED;
        let dialed_at = event
            .ccc_time
            .filter(plausible)
            .unwrap_or(event.completed_at);
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
