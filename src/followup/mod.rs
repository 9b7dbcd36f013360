//! The follow-up: did the customer answer? One call-result event per dialed request.
//!
//! `dialed` says CCC accepted the call; how it went (answered, no answer, busy, voicemail,
//! how long) is in CCC's call detail records minutes later. API 2017-07-05 cannot look a
//! record up by `TaskId`, so the follow-up polls the records of the request's number around
//! its dial time and correlates ([`matching`]), then publishes the result ([`result`]): one
//! `dial.result.<disposition>` event per request.
//!
//! The path of one dialed request, with `[followup] enabled`:
//!
//! ```text
//! pipeline   the dialed outcome is published, then a follow-up job (job), confirmed, then
//!            the request is acknowledged: a crash in between republishes both
//! wait       the job waits in the follow-up queue's wait tiers until its next poll is due
//! poll       a stored result is published again; otherwise one paced query (pace) of the
//!            number's records in the match window, and a decision (poll): the call found,
//!            poll again later, or no record by the last poll
//! record     the result is stored (first writer wins) before it is published, and a found
//!            record is taken for the request first, so no other request can take it
//! intake     the follow-up's consumer (`intake::followups`) carries each decision out
//!            against the broker
//! ```
//!
//! The same guarantees as the dial path, for a query that changes nothing: a redelivered or
//! duplicated job publishes the stored result again (same bytes, same `event_id`), never a
//! second, different one.

pub mod job;
pub mod matching;
pub mod pace;
pub mod poll;
pub mod result;

pub use crate::config::FollowupSettings;
pub use job::FollowupJob;
pub use poll::{Followup, JobStep};
