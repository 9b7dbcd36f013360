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
//! run        the consumer carries each decision out against the broker
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
pub mod run;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use job::FollowupJob;
pub use poll::{Followup, JobStep};

/// `[followup]`: see `config/default.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowupSettings {
    pub enabled: bool,
    /// When to poll, in milliseconds after the dial; increasing.
    pub polls_ms: Vec<u64>,
    /// `ListCallDetailRecords` per second per instance, in this replica.
    pub queries_per_second: f64,
    pub clock_skew_ms: u64,
    pub match_window_ms: u64,
    pub fetch_release_reason: bool,
    pub prefetch: u16,
    pub max_query_failures: u32,
}

/// The follow-up queue's wait tiers (the delays of `[deferral]`), when the follow-up is on.
pub fn wait_tiers(settings: &crate::config::Settings) -> Option<crate::defer::Tiers> {
    settings.followup.enabled.then(|| {
        crate::defer::Tiers::of_queue(&settings.deferral, &settings.amqp.names.followup_queue)
    })
}

impl FollowupSettings {
    /// How long after the dial poll `index` (from 0) is due; `None` past the last.
    pub fn poll_after(&self, index: u32) -> Option<Duration> {
        let index = usize::try_from(index).ok()?;
        self.polls_ms
            .get(index)
            .map(|&ms| Duration::from_millis(ms))
    }

    /// How many polls a request gets.
    pub fn polls(&self) -> u32 {
        u32::try_from(self.polls_ms.len()).unwrap_or(u32::MAX)
    }

    pub fn window(&self) -> matching::Window {
        matching::Window {
            clock_skew: Duration::from_millis(self.clock_skew_ms),
            after: Duration::from_millis(self.match_window_ms),
        }
    }
}
