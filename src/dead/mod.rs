//! `dialex-worker dead`: what sits on the dead-letter queue, and putting the right part of it
//! back without ringing anyone twice.
//!
//! Every command walks the queue once, oldest first ([`sweep`]): each message is read, decided
//! on ([`Decision`]), and either put back at the tail (a copy published with a confirm, then the
//! original acknowledged), republished to the request exchange (a replay, confirmed before the
//! original is acknowledged), or acknowledged for good (a purge). After a whole walk the kept
//! messages are in their original order. Nothing is requeued: a quorum queue counts every
//! requeue as a delivery, and a parked message must never drift towards a delivery limit
//! because someone listed it.
//!
//! A replayed request is an ordinary request again: it goes through dedup and every gate. A
//! request whose record says it may have been dialed is answered from that record (`unknown`,
//! or `failed`, or the `dialed` event with its task id), never dialed again, so a replay is
//! safe by construction. Three guards keep it from doing something nobody meant:
//!
//! - requests parked for their content (a `rejected` reason such as `invalid_json` or
//!   `invalid_callee`) come back the same way, and are replayed only with `--include-rejected`;
//! - each replayed copy carries `x-dialex-replays`; a message replayed `--max-replays` times
//!   (3) stays parked, so a message that keeps failing cannot loop;
//! - `--max` and `--rate` bound how much goes back and how fast; `--dry-run` only says.

pub mod commands;
pub mod sweep;

use jiff::Timestamp;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde::Serialize;

use crate::amqp::DELIVERY_COUNT_HEADER;
use crate::amqp::publisher::{
    ATTEMPTS_HEADER, DEFERRED_HEADER, DETAIL_HEADER, NOT_BEFORE_HEADER, PARKED_AT_HEADER,
    REASON_HEADER, REPLAYS_HEADER,
};
use crate::validate::RejectReason;

/// The reason shown for a message that carries none the worker or the broker set.
const UNKNOWN_REASON: &str = "unknown";

/// One parked message as an operator sees it. It never holds the body's phone numbers: only
/// the ids and what the worker and the broker wrote about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Parked {
    /// The body's `request_id`, or the AMQP `message_id`.
    pub request_id: Option<String>,
    /// The body's `instance_id`.
    pub instance_id: Option<String>,
    /// The worker's reason code (`x-dialex-reason`), or the broker's (`delivery_limit`,
    /// `rejected`, `expired`, `maxlen`).
    pub reason: String,
    /// The worker's sentence about the reason.
    pub detail: Option<String>,
    /// When it was parked: the worker's stamp, or the broker's death time.
    pub parked_at: Option<Timestamp>,
    /// How often the broker dead-lettered it from that queue (`x-death` count).
    pub deaths: Option<i64>,
    /// The queue it died in, when the broker dead-lettered it.
    pub died_in: Option<String>,
    /// How often it was replayed already.
    pub replays: u32,
    /// A follow-up job (AMQP `type` `dial.followup`), not a dial request: it is replayed to
    /// the follow-up queue, never to the request queue, where it would read as a request
    /// missing its fields.
    pub followup_job: bool,
}

impl Parked {
    /// Reads what the worker and the broker wrote on a parked message.
    pub fn read(body: &[u8], properties: &BasicProperties) -> Parked {
        let headers = properties.headers().as_ref();
        let text = |name: &str| headers.and_then(|h| text(h.inner().get(name)?));
        let first_death = headers.and_then(first_death);
        let ids = serde_json::from_slice::<serde_json::Value>(body).ok();
        let field = |name: &str| {
            ids.as_ref()
                .and_then(|v| v.get(name))
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        let request_id = field("request_id").or_else(|| {
            properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_owned())
        });
        Parked {
            request_id,
            instance_id: field("instance_id"),
            reason: text(REASON_HEADER)
                .or_else(|| text("x-first-death-reason"))
                .or_else(|| first_death.as_ref().and_then(|d| d.reason.clone()))
                .unwrap_or_else(|| UNKNOWN_REASON.to_owned()),
            detail: text(DETAIL_HEADER),
            parked_at: text(PARKED_AT_HEADER)
                .and_then(|at| at.parse().ok())
                .or_else(|| first_death.as_ref().and_then(|d| d.time)),
            deaths: first_death.as_ref().and_then(|d| d.count),
            died_in: first_death.and_then(|d| d.queue),
            replays: text(REPLAYS_HEADER)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            followup_job: crate::followup::job::is_job(properties),
        }
    }

    /// Where a replay of it goes: the exchange and routing key.
    pub fn replay_to<'n>(&self, names: &'n crate::config::AmqpNames) -> (&'n str, &'n str) {
        if self.followup_job {
            ("", &names.followup_queue)
        } else {
            (&names.request_exchange, &names.request_routing_key)
        }
    }

    /// Whether the request was parked for what it says (a `rejected` reason): sent again
    /// unchanged, it is rejected again.
    pub fn rejected_for_content(&self) -> bool {
        RejectReason::ALL.iter().any(|r| r.code() == self.reason)
    }
}

/// The newest `x-death` entry the broker wrote (it keeps them most recent first).
struct Death {
    reason: Option<String>,
    queue: Option<String>,
    count: Option<i64>,
    time: Option<Timestamp>,
}

fn first_death(headers: &FieldTable) -> Option<Death> {
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(entry) = deaths.as_slice().first()? else {
        return None;
    };
    let entry = entry.inner();
    Some(Death {
        reason: entry.get("reason").and_then(text),
        queue: entry.get("queue").and_then(text),
        count: entry.get("count").and_then(|v| match v {
            AMQPValue::LongLongInt(n) => Some(*n),
            AMQPValue::LongInt(n) => Some(i64::from(*n)),
            _ => None,
        }),
        time: entry.get("time").and_then(|v| match v {
            AMQPValue::Timestamp(secs) => Timestamp::from_second(i64::try_from(*secs).ok()?).ok(),
            _ => None,
        }),
    })
}

fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Which parked messages a command acts on; every part given must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub reason: Option<String>,
    pub instance_id: Option<String>,
    pub request_id: Option<String>,
    /// Parked at or after this time (messages without a time never match).
    pub since: Option<Timestamp>,
}

impl Filter {
    pub fn matches(&self, parked: &Parked) -> bool {
        let equal = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|want| have == Some(want))
        };
        equal(&self.reason, Some(&parked.reason))
            && equal(&self.instance_id, parked.instance_id.as_deref())
            && equal(&self.request_id, parked.request_id.as_deref())
            && self
                .since
                .is_none_or(|since| parked.parked_at.is_some_and(|at| at >= since))
    }
}

/// What one walk does to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Back at the tail of the dead-letter queue, unchanged.
    Keep,
    /// Republished to the request exchange, then removed.
    Replay,
    /// Removed for good.
    Purge,
}

/// Why a message that matched the filter is not replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Skip {
    /// Parked for its content; `--include-rejected` replays it.
    RejectedForContent,
    /// Replayed `--max-replays` times already.
    ReplayedTooOften,
    /// `--max` replays were made in this walk already.
    MaxReached,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::RejectedForContent => "parked for its content (--include-rejected replays it)",
            Skip::ReplayedTooOften => "replayed --max-replays times already",
            Skip::MaxReached => "--max reached",
        }
    }
}

/// How `dead replay` chooses.
#[derive(Debug, Clone)]
pub struct ReplayRules {
    pub include_rejected: bool,
    pub max_replays: u32,
    /// At most this many replays in one walk.
    pub max: Option<u64>,
}

impl ReplayRules {
    /// Replay or keep a message the filter matched, `replayed` replays into this walk.
    pub fn decide(&self, parked: &Parked, replayed: u64) -> Result<Decision, Skip> {
        if parked.rejected_for_content() && !self.include_rejected {
            return Err(Skip::RejectedForContent);
        }
        if parked.replays >= self.max_replays {
            return Err(Skip::ReplayedTooOften);
        }
        if self.max.is_some_and(|max| replayed >= max) {
            return Err(Skip::MaxReached);
        }
        Ok(Decision::Replay)
    }
}

/// The properties of a replayed copy: the original's, without what the worker and the broker
/// wrote about its parking and its earlier attempts (a replay is a fresh chance, counted in
/// `x-dialex-replays`).
pub fn replay_properties(properties: &BasicProperties, replays: u32) -> BasicProperties {
    const DROPPED: [&str; 8] = [
        REASON_HEADER,
        DETAIL_HEADER,
        PARKED_AT_HEADER,
        DEFERRED_HEADER,
        ATTEMPTS_HEADER,
        NOT_BEFORE_HEADER,
        DELIVERY_COUNT_HEADER,
        "x-death",
    ];
    let mut headers = FieldTable::default();
    if let Some(original) = properties.headers() {
        for (name, value) in original.inner() {
            let name_str = name.as_str();
            if !DROPPED.contains(&name_str)
                && !name_str.starts_with("x-first-death-")
                && !name_str.starts_with("x-last-death-")
            {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
    headers.insert(
        REPLAYS_HEADER.into(),
        AMQPValue::LongString(replays.to_string().into()),
    );
    properties.clone().with_headers(headers)
}

/// The properties of a copy put back on the dead-letter queue: unchanged but for the broker's
/// per-delivery count.
pub fn kept_properties(properties: &BasicProperties) -> BasicProperties {
    let Some(original) = properties.headers() else {
        return properties.clone();
    };
    let mut headers = FieldTable::default();
    for (name, value) in original.inner() {
        if name.as_str() != DELIVERY_COUNT_HEADER {
            headers.insert(name.clone(), value.clone());
        }
    }
    properties.clone().with_headers(headers)
}

#[cfg(test)]
mod tests;
