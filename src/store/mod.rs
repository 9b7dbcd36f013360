//! Shared state behind one small trait: dial records per `request_id`, and callee cooldowns.
//!
//! This is where "never twice" is kept. Before a request is dialed, its `request_id` is
//! *claimed* with a lease naming this worker, then the dial's result (the terminal outcome event)
//! is *recorded* before the event is published. Nothing notes the publish itself: a recorded
//! result is published again whenever its request comes back, so a redelivered or duplicated
//! request finds one of:
//!
//! - nothing: claim it and dial;
//! - a live claim: someone is dialing it right now; defer, do not touch;
//! - a claim whose lease ran out without a result: the worker died, perhaps mid-call; the
//!   request becomes `unknown` (`interrupted`) and is never dialed again;
//! - a recorded result: publish the stored event again (same `event_id`) and acknowledge.
//!
//! Two backends: [`embedded`] (a file-backed database, one replica) and [`redis`] (many
//! replicas; atomic scripts; expiries and leases on Redis server time).

pub mod embedded;
pub mod redis;

use std::future::Future;
use std::time::Duration;

/// What the store holds for a request, as the encoded value both backends share.
///
/// The encoding is a one-letter state, `|`, and the state's data:
/// `C|<worker>|<lease end, ms since the epoch>` or `R|<event JSON>` (recorded). Earlier versions
/// also wrote `P|<event JSON>` (recorded, publish noted); such records live on for up to the
/// record TTL and decode as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Claimed { worker: String, lease_until_ms: u64 },
    Recorded { event: Vec<u8> },
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Record::Claimed {
                worker,
                lease_until_ms,
            } => format!("C|{worker}|{lease_until_ms}").into_bytes(),
            Record::Recorded { event } => {
                let mut out = Vec::with_capacity(event.len() + 2);
                out.extend_from_slice(b"R|");
                out.extend_from_slice(event);
                out
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Record, StoreError> {
        let corrupt = || {
            StoreError::Corrupt(String::from_utf8_lossy(&bytes[..bytes.len().min(40)]).into_owned())
        };
        match bytes {
            // `P|` was written by earlier versions once the event was published: still a result.
            [b'R' | b'P', b'|', event @ ..] => Ok(Record::Recorded {
                event: event.to_vec(),
            }),
            [b'C', b'|', rest @ ..] => {
                let rest = std::str::from_utf8(rest).map_err(|_| corrupt())?;
                let (worker, until) = rest.rsplit_once('|').ok_or_else(corrupt)?;
                Ok(Record::Claimed {
                    worker: worker.to_owned(),
                    lease_until_ms: until.parse().map_err(|_| corrupt())?,
                })
            }
            _ => Err(corrupt()),
        }
    }
}

/// Proof of which claim a worker acts on: the exact stored claim value. Recording or
/// releasing succeeds only while the store still holds this very claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToken(pub Vec<u8>);

/// The answer to [`DialStore::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The request is ours to dial.
    Acquired(ClaimToken),
    /// Another worker (or another delivery in this one) holds a live lease.
    Held { worker: String, remaining: Duration },
    /// A lease ran out without a result: the holder died, perhaps mid-call. Never dial it.
    Abandoned(ClaimToken),
    /// A result is recorded: the stored outcome event (JSON).
    Recorded { event: Vec<u8> },
}

/// The answer to [`DialStore::record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Our event is now the request's result.
    Stored,
    /// Another worker recorded a result first; this is the one to publish.
    Earlier(Vec<u8>),
}

/// The answer to [`DialStore::cooldown_acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cooldown {
    /// The callee's slot is ours (or already was, for the same request): dial.
    Free,
    /// Another request for this callee was dialed, or is being dialed, within the window.
    Taken {
        request_id: String,
        task_id: Option<String>,
    },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("{backend} store: {message}")]
    Backend {
        backend: &'static str,
        message: String,
    },
    #[error("store holds an unreadable record: {0:?}")]
    Corrupt(String),
    #[error("the claim on this request was taken over by another worker")]
    Conflict,
}

/// Dial records and cooldowns. Implementations are cheap to share (`Arc` inside) and every
/// method is atomic on its own.
///
/// Leases and record lifetimes are the store's configuration, fixed when it is built.
pub trait DialStore: Send + Sync + 'static {
    /// Claims `request_id` for this worker, or reports what is there.
    fn claim(&self, request_id: &str) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// Records `event` as the request's result, if the store still holds the claim `token`
    /// (ours, or the abandoned one being resolved as `unknown`). Durable before it returns.
    fn record(
        &self,
        request_id: &str,
        token: &ClaimToken,
        event: &[u8],
    ) -> impl Future<Output = Result<Recorded, StoreError>> + Send;

    /// Drops the claim `token` without a result (the request was not dialed and goes back to
    /// the queue).
    fn release(
        &self,
        request_id: &str,
        token: &ClaimToken,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Takes the cooldown slot for `key` (a keyed hash of instance and callee) for
    /// `request_id`, for `window`; or says who holds it.
    fn cooldown_acquire(
        &self,
        key: &str,
        request_id: &str,
        window: Duration,
    ) -> impl Future<Output = Result<Cooldown, StoreError>> + Send;

    /// The holder was dialed: remember its `task_id` and restart the window from now.
    fn cooldown_dialed(
        &self,
        key: &str,
        request_id: &str,
        task_id: &str,
        window: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The holder was not dialed after all: free the slot (only if `request_id` holds it).
    fn cooldown_release(
        &self,
        key: &str,
        request_id: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Counts one call to `key` (a keyed hash of instance and callee) on `day` (a date label
    /// such as `2026-11-25`), unless `max` calls are already counted. Returns whether it was
    /// counted. Atomic: concurrent reservations never exceed `max`. Counters live for
    /// [`DAILY_COUNTER_TTL`].
    fn daily_reserve(
        &self,
        key: &str,
        day: &str,
        max: u32,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Takes back one reservation for a call that was certainly not placed (never below 0).
    fn daily_release(
        &self,
        key: &str,
        day: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Whether the store answers; used to tell when a paused worker may resume.
    fn check(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// How long a per-day call counter is kept: long enough to outlive its day in any timezone.
pub const DAILY_COUNTER_TTL: Duration = Duration::from_secs(48 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_their_encoding() {
        let cases = [
            Record::Claimed {
                worker: "pod-a|1".into(),
                lease_until_ms: 1_764_000_000_000,
            },
            Record::Recorded {
                event: br#"{"status":"dialed"}"#.to_vec(),
            },
            Record::Recorded { event: Vec::new() },
        ];
        for record in cases {
            assert_eq!(Record::decode(&record.encode()).unwrap(), record);
        }
        assert_eq!(
            Record::Recorded {
                event: b"{}".to_vec()
            }
            .encode(),
            b"R|{}"
        );
        assert!(Record::decode(b"X|").is_err());
        assert!(Record::decode(b"C|worker|soon").is_err());
        assert!(Record::decode(b"").is_err());
    }

    #[test]
    fn a_published_record_from_an_earlier_version_decodes_as_recorded() {
        assert_eq!(
            Record::decode(br#"P|{"status":"dialed"}"#).unwrap(),
            Record::Recorded {
                event: br#"{"status":"dialed"}"#.to_vec()
            }
        );
        assert_eq!(
            Record::decode(b"P|").unwrap(),
            Record::Recorded { event: Vec::new() }
        );
        // Only `R|`, `P|` and `C|` lead a record.
        assert!(Record::decode(b"P").is_err());
        assert!(Record::decode(b"X|{}").is_err());
        assert!(Record::decode(b"p|{}").is_err());
    }
}
