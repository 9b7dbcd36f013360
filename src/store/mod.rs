//! Shared state behind small traits: dial records per `request_id` ([`DialRecords`]), and
//! per-callee cooldowns and daily counters ([`CalleeState`]); [`DialStore`] is both. A third,
//! [`CallResults`], serves the follow-up after a dial: which CCC call record (contact) belongs
//! to which request, and the call-result event recorded for a request. Both are first writer
//! wins, so that two requests never take the same record and a redelivered follow-up publishes
//! the same result again, never a different one.
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
//! - a recorded result: publish the stored event again (same `event_id`) and acknowledge;
//! - a claim or result of a *different* request under the same `request_id`:
//!   [`Claim::Reused`]; the request is rejected and nothing in the store changes.
//!
//! # Reused request ids
//!
//! A `request_id` is an idempotency key: reusing it for a different request must not be
//! answered with the first request's outcome (Stripe's rule for idempotency keys). So every
//! claim, and the result that replaces it, carries the request's *fingerprint*: a keyed hash of
//! the fields that decide what is dialed (instance, caller, callee, answer mode, rout point,
//! provider; see `NumberHasher::fingerprint`), which reveals no phone number. A claim whose
//! fingerprint differs from the stored one is [`Claim::Reused`]: the stored claim, lease and
//! result stay exactly as they are, so the first request's redeliveries are still answered with
//! its own outcome. Records written before fingerprints existed carry none and match any request.
//!
//! The reverse does not hold: a worker older than fingerprints cannot read a record that carries
//! one and takes it for a store failure, so during a rolling upgrade on a shared Redis an old
//! replica may pause (and resume, and pause again) until it is replaced. It dials nothing
//! meanwhile and gives the request back to the queue, so nothing is lost or dialed twice.
//!
//! Fingerprints are keyed by `cooldown.hash_key`: changing the key changes every request's
//! fingerprint, so for up to the record TTL after the change, redeliveries and duplicates of
//! requests claimed before it are rejected as reused instead of being answered from their record.
//!
//! Two backends: [`embedded`] (a file-backed database, one replica) and [`redis`] (many
//! replicas; atomic scripts; expiries and leases on Redis server time; the Redis side of the
//! limiter and of the do-not-call list live there too). [`crate::backend`] opens the one
//! `store.backend` names.

#[cfg(test)]
mod contract;
pub mod embedded;
pub mod redis;

use std::future::Future;
use std::time::Duration;

/// The most bytes a fingerprint may have: room for any hex digest up to SHA-256.
pub const MAX_FINGERPRINT_LEN: usize = 64;

/// What the store holds for a request, as the encoded value both backends share.
///
/// The encoding is a one-letter state, `#` and the request's fingerprint, `|`, and the state's
/// data:
///
/// - `C#<fingerprint>|<worker>|<lease end, ms since the epoch>`: claimed;
/// - `R#<fingerprint>|<event JSON>`: recorded.
///
/// A fingerprint is 1 to [`MAX_FINGERPRINT_LEN`] ASCII letters and digits, so the first `|`
/// always ends it; the worker id may itself hold `|` (the lease end follows the last one) and
/// the event anything. Earlier versions wrote the same states without a fingerprint
/// (`C|<worker>|<lease end>`, `R|<event JSON>`) and, before that, `P|<event JSON>` (recorded,
/// publish noted). Such records live on for up to the record TTL and decode with no
/// fingerprint, which matches any request: they were written before a reused `request_id`
/// could be told apart, and are answered as they always were.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A worker holds the request until the lease ends.
    Claimed {
        worker: String,
        lease_until_ms: u64,
        fingerprint: Option<String>,
    },
    /// The request's outcome event, as first published.
    Recorded {
        event: Vec<u8>,
        fingerprint: Option<String>,
    },
}

impl Record {
    /// The stored form (see the type's docs).
    pub fn encode(&self) -> Vec<u8> {
        let (state, fingerprint, data_len) = match self {
            Record::Claimed {
                worker,
                fingerprint,
                ..
            } => (b'C', fingerprint, worker.len() + 21),
            Record::Recorded { event, fingerprint } => (b'R', fingerprint, event.len()),
        };
        let fingerprint = fingerprint.as_deref();
        let mut out = Vec::with_capacity(3 + fingerprint.map_or(0, str::len) + data_len);
        out.push(state);
        if let Some(fingerprint) = fingerprint {
            out.push(b'#');
            out.extend_from_slice(fingerprint.as_bytes());
        }
        out.push(b'|');
        match self {
            Record::Claimed {
                worker,
                lease_until_ms,
                ..
            } => out.extend_from_slice(format!("{worker}|{lease_until_ms}").as_bytes()),
            Record::Recorded { event, .. } => out.extend_from_slice(event),
        }
        out
    }

    /// Reads a stored value, in the current encoding or an earlier one.
    pub fn decode(bytes: &[u8]) -> Result<Record, StoreError> {
        let corrupt = || {
            StoreError::Corrupt(String::from_utf8_lossy(&bytes[..bytes.len().min(40)]).into_owned())
        };
        let (state, fingerprint, data) = split_head(bytes).ok_or_else(corrupt)?;
        match state {
            // `P|` was written by earlier versions once the event was published: still a result.
            // It predates fingerprints, so it never has one.
            b'R' => Ok(Record::Recorded {
                event: data.to_vec(),
                fingerprint,
            }),
            b'P' if fingerprint.is_none() => Ok(Record::Recorded {
                event: data.to_vec(),
                fingerprint,
            }),
            b'C' => {
                let data = std::str::from_utf8(data).map_err(|_| corrupt())?;
                let (worker, until) = data.rsplit_once('|').ok_or_else(corrupt)?;
                Ok(Record::Claimed {
                    worker: worker.to_owned(),
                    lease_until_ms: until.parse().map_err(|_| corrupt())?,
                    fingerprint,
                })
            }
            _ => Err(corrupt()),
        }
    }

    /// The fingerprint of the request the record was written for; `None` for records written
    /// before fingerprints existed.
    pub fn fingerprint(&self) -> Option<&str> {
        match self {
            Record::Claimed { fingerprint, .. } | Record::Recorded { fingerprint, .. } => {
                fingerprint.as_deref()
            }
        }
    }

    /// Whether the record may belong to the request with `fingerprint`: the same fingerprint,
    /// or none stored (an earlier version's record, which cannot tell).
    pub fn matches(&self, fingerprint: &str) -> bool {
        self.fingerprint()
            .is_none_or(|stored| stored == fingerprint)
    }
}

/// Splits an encoded record into its state letter, its fingerprint (if any) and its data:
/// `<state>[#<fingerprint>]|<data>`. `None` if the head is malformed.
fn split_head(bytes: &[u8]) -> Option<(u8, Option<String>, &[u8])> {
    let (&state, rest) = bytes.split_first()?;
    let bar = rest.iter().position(|&b| b == b'|')?;
    let (head, data) = (&rest[..bar], &rest[bar + 1..]);
    let fingerprint = match head {
        [] => None,
        [b'#', fingerprint @ ..] => {
            let fingerprint = std::str::from_utf8(fingerprint).ok()?;
            check_fingerprint(fingerprint).ok()?;
            Some(fingerprint.to_owned())
        }
        _ => return None,
    };
    Some((state, fingerprint, data))
}

/// Refuses a fingerprint the encoding cannot hold unambiguously: it must be 1 to
/// [`MAX_FINGERPRINT_LEN`] ASCII letters and digits (a hex digest is).
pub fn check_fingerprint(fingerprint: &str) -> Result<(), StoreError> {
    let fits = (1..=MAX_FINGERPRINT_LEN).contains(&fingerprint.len())
        && fingerprint.bytes().all(|b| b.is_ascii_alphanumeric());
    if fits {
        Ok(())
    } else {
        Err(StoreError::InvalidFingerprint)
    }
}

/// Proof of which claim a worker acts on: the exact stored claim value. Recording or
/// releasing succeeds only while the store still holds this very claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToken(pub Vec<u8>);

impl ClaimToken {
    /// The encoded result that takes this claim's place: `event`, under the claim's
    /// fingerprint, so a result answers only claims for the same request, as its claim did.
    pub fn result(&self, event: &[u8]) -> Result<Vec<u8>, StoreError> {
        let fingerprint = match Record::decode(&self.0)? {
            Record::Claimed { fingerprint, .. } => fingerprint,
            Record::Recorded { .. } => {
                return Err(StoreError::Corrupt(
                    "a claim token that holds a result, not a claim".to_owned(),
                ));
            }
        };
        Ok(Record::Recorded {
            event: event.to_vec(),
            fingerprint,
        }
        .encode())
    }
}

/// The answer to [`DialRecords::claim`].
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
    /// The `request_id` is claimed or recorded for a different request (another fingerprint).
    /// Nothing in the store changed: the first request keeps its claim, lease and result. This
    /// request is rejected (`request_id_reused`) and never dialed.
    Reused,
}

impl Claim {
    /// The answer to a claim for the request with `fingerprint` that found `stored` (an
    /// encoded [`Record`]) in place, at `now_ms` on the store's clock. Both backends decide
    /// here, so they cannot drift apart.
    fn found(stored: Vec<u8>, now_ms: u64, fingerprint: &str) -> Result<Claim, StoreError> {
        let record = Record::decode(&stored)?;
        if !record.matches(fingerprint) {
            return Ok(Claim::Reused);
        }
        Ok(match record {
            Record::Claimed {
                worker,
                lease_until_ms,
                ..
            } if lease_until_ms > now_ms => Claim::Held {
                worker,
                remaining: Duration::from_millis(lease_until_ms - now_ms),
            },
            // The lease ran out without a result: the holder died, perhaps mid-call. The token
            // is the stored value itself, so resolving the abandoned claim only succeeds while
            // nobody else has resolved or replaced it.
            Record::Claimed { .. } => Claim::Abandoned(ClaimToken(stored)),
            Record::Recorded { event, .. } => Claim::Recorded { event },
        })
    }
}

/// The answer to [`DialRecords::record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Our event is now the request's result.
    Stored,
    /// Another worker recorded a result first; this is the one to publish.
    Earlier(Vec<u8>),
}

/// The answer to [`CalleeState::cooldown_acquire`].
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
    /// Fewer replicas than `store.min_replicas_acked` confirmed a write in time: a failover
    /// could lose it, so the worker does not act on it.
    #[error(
        "only {acked} of the {wanted} Redis replica(s) store.min_replicas_acked asks for confirmed the write within {timeout_ms} ms"
    )]
    NotReplicated {
        acked: u32,
        wanted: u32,
        timeout_ms: u64,
    },
    /// A bug in the caller: the fingerprint cannot be stored unambiguously.
    #[error("a request fingerprint must be 1 to {MAX_FINGERPRINT_LEN} ASCII letters and digits")]
    InvalidFingerprint,
}

/// What the pipeline keeps in a store: [`DialRecords`] and [`CalleeState`], from one backend.
/// Implemented for every type that has both.
pub trait DialStore: DialRecords + CalleeState {}

impl<S: DialRecords + CalleeState> DialStore for S {}

/// Dial records per `request_id`: the claim before a dial, the result after it. Implementations
/// are cheap to share (`Arc` inside) and every method is atomic on its own.
///
/// Leases and record lifetimes are the store's configuration, fixed when it is built.
pub trait DialRecords: Send + Sync + 'static {
    /// Claims `request_id` for this worker, for the request whose fingerprint is
    /// `fingerprint`, or reports what is there. A claim or result stored under another
    /// fingerprint is [`Claim::Reused`] and left untouched.
    ///
    /// `fingerprint` must pass [`check_fingerprint`] (a hex digest does); otherwise the answer
    /// is [`StoreError::InvalidFingerprint`] and nothing is written.
    fn claim(
        &self,
        request_id: &str,
        fingerprint: &str,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// Records `event` as the request's result, if the store still holds the claim `token`
    /// (ours, or the abandoned one being resolved as `unknown`). The result keeps the claim's
    /// fingerprint. Durable before it returns.
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

    /// Whether the store answers, and can take writes (Redis: the primary, with its
    /// replicas); used to tell when a paused worker may resume.
    fn check(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Per callee (a keyed hash of instance and callee number): the cooldown slot that keeps two
/// requests from ringing one person within the window, and the daily call counters. Every
/// method is atomic on its own.
pub trait CalleeState: Send + Sync + 'static {
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
}

/// After a dial: which CCC call record (contact) belongs to which request, and the call result
/// recorded for a request. First writer wins on both; entries live as long as dial records
/// (`store.record_ttl_ms`). Every method is atomic on its own.
///
/// Not part of [`DialStore`]: only the follow-up needs it, so it is a bound of its own.
pub trait CallResults: Send + Sync + 'static {
    /// Takes `contact_id` (unique within `instance_id`) for `request_id`, unless a request holds
    /// it already; returns the request that holds it now (`request_id` itself when it was free
    /// or already ours).
    fn claim_contact(
        &self,
        instance_id: &str,
        contact_id: &str,
        request_id: &str,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// Who holds each of `contact_ids` in `instance_id`, in the same order; `None` where nobody
    /// does.
    fn contact_holders(
        &self,
        instance_id: &str,
        contact_ids: &[&str],
    ) -> impl Future<Output = Result<Vec<Option<String>>, StoreError>> + Send;

    /// Records `result` (the call-result event, JSON bytes) for `request_id` unless one is
    /// recorded already; returns the recorded one (ours, or the earlier one, byte for byte).
    fn record_call_result(
        &self,
        request_id: &str,
        result: &[u8],
    ) -> impl Future<Output = Result<Vec<u8>, StoreError>> + Send;

    /// The call result recorded for `request_id`, if any.
    fn call_result(
        &self,
        request_id: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;
}

/// A stored contact holder as the request id it is: both backends store the `&str` they were
/// given, so anything else is corruption.
fn holder(bytes: Vec<u8>) -> Result<String, StoreError> {
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        StoreError::Corrupt(String::from_utf8_lossy(&bytes[..bytes.len().min(40)]).into_owned())
    })
}

/// How long a per-day call counter is kept: long enough to outlive its day in any timezone.
pub const DAILY_COUNTER_TTL: Duration = Duration::from_secs(48 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed(worker: &str, fingerprint: Option<&str>) -> Record {
        Record::Claimed {
            worker: worker.into(),
            lease_until_ms: 1_764_000_000_000,
            fingerprint: fingerprint.map(Into::into),
        }
    }

    fn recorded(event: &[u8], fingerprint: Option<&str>) -> Record {
        Record::Recorded {
            event: event.to_vec(),
            fingerprint: fingerprint.map(Into::into),
        }
    }

    #[test]
    fn records_round_trip_through_their_encoding() {
        let cases = [
            claimed("pod-a|1", Some("3f2a9c")),
            claimed("pod-a|1", None),
            claimed("", Some("F00d")),
            recorded(br#"{"status":"dialed"}"#, Some("3f2a9c")),
            recorded(br#"{"status":"dialed"}"#, None),
            // An event holding the separators does not confuse the head.
            recorded(b"#x|y|z", Some("abc")),
            recorded(b"", Some("abc")),
            recorded(b"", None),
        ];
        for record in cases {
            assert_eq!(Record::decode(&record.encode()).unwrap(), record);
        }
        assert_eq!(recorded(b"{}", Some("ab12")).encode(), b"R#ab12|{}");
        assert_eq!(
            claimed("w", Some("ab12")).encode(),
            b"C#ab12|w|1764000000000"
        );
        assert!(Record::decode(b"X|").is_err());
        assert!(Record::decode(b"C|worker|soon").is_err());
        assert!(Record::decode(b"C#ab|worker|soon").is_err());
        assert!(Record::decode(b"").is_err());
    }

    #[test]
    fn a_malformed_fingerprint_is_unreadable_not_absent() {
        // Read as "no fingerprint" it would match any request: refuse it instead.
        for bad in [
            &b"R#|{}"[..],
            b"C#|w|1",
            b"R#a-b|{}",
            b"R##ab|{}",
            b"Rx|{}",
            b"R#ab",
            // Fingerprints came after `P|`: it never carries one.
            b"P#ab|{}",
        ] {
            assert!(
                Record::decode(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let too_long = format!("R#{}|{{}}", "a".repeat(MAX_FINGERPRINT_LEN + 1));
        assert!(Record::decode(too_long.as_bytes()).is_err());
        let longest = format!("R#{}|{{}}", "a".repeat(MAX_FINGERPRINT_LEN));
        assert!(Record::decode(longest.as_bytes()).is_ok());
    }

    #[test]
    fn check_fingerprint_accepts_hex_digests_only_in_range() {
        assert!(check_fingerprint("0123456789abcdef0123456789abcdef01234567").is_ok());
        assert!(check_fingerprint("A").is_ok());
        for bad in [
            "",
            "a|b",
            "a#b",
            "a b",
            "é",
            &"a".repeat(MAX_FINGERPRINT_LEN + 1),
        ] {
            assert!(
                matches!(check_fingerprint(bad), Err(StoreError::InvalidFingerprint)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn records_of_the_current_version_decode_without_a_fingerprint_and_match_anything() {
        assert_eq!(
            Record::decode(b"C|pod-a|1764000000000").unwrap(),
            claimed("pod-a", None)
        );
        assert_eq!(
            Record::decode(br#"R|{"status":"dialed"}"#).unwrap(),
            recorded(br#"{"status":"dialed"}"#, None)
        );
        for record in [claimed("pod-a", None), recorded(b"{}", None)] {
            assert!(record.matches("abc"));
            assert!(record.matches("def"));
        }
        for record in [claimed("pod-a", Some("abc")), recorded(b"{}", Some("abc"))] {
            assert!(record.matches("abc"));
            assert!(!record.matches("abd"));
        }
    }

    #[test]
    fn a_published_record_from_an_earlier_version_decodes_as_recorded() {
        assert_eq!(
            Record::decode(br#"P|{"status":"dialed"}"#).unwrap(),
            recorded(br#"{"status":"dialed"}"#, None)
        );
        assert_eq!(Record::decode(b"P|").unwrap(), recorded(b"", None));
        // Only `R`, `P` and `C` lead a record.
        assert!(Record::decode(b"P").is_err());
        assert!(Record::decode(b"X|{}").is_err());
        assert!(Record::decode(b"p|{}").is_err());
    }

    #[test]
    fn a_result_keeps_its_claims_fingerprint() {
        let token = ClaimToken(claimed("w", Some("abc")).encode());
        assert_eq!(token.result(b"{}").unwrap(), b"R#abc|{}");
        // A claim written before fingerprints leaves a result without one.
        let old = ClaimToken(b"C|w|1".to_vec());
        assert_eq!(old.result(b"{}").unwrap(), b"R|{}");
        assert!(ClaimToken(b"R|{}".to_vec()).result(b"{}").is_err());
        assert!(ClaimToken(b"garbage".to_vec()).result(b"{}").is_err());
    }

    #[test]
    fn a_claim_classifies_what_it_finds_by_fingerprint_then_state() {
        let now = 1_000;
        let live = |fp: Option<&str>| {
            Record::Claimed {
                worker: "w".into(),
                lease_until_ms: now + 10,
                fingerprint: fp.map(Into::into),
            }
            .encode()
        };
        let dead = |fp: Option<&str>| {
            Record::Claimed {
                worker: "w".into(),
                lease_until_ms: now,
                fingerprint: fp.map(Into::into),
            }
            .encode()
        };
        for fp in [Some("abc"), None] {
            assert_eq!(
                Claim::found(live(fp), now, "abc").unwrap(),
                Claim::Held {
                    worker: "w".into(),
                    remaining: Duration::from_millis(10)
                }
            );
            assert_eq!(
                Claim::found(dead(fp), now, "abc").unwrap(),
                Claim::Abandoned(ClaimToken(dead(fp)))
            );
            assert_eq!(
                Claim::found(recorded(b"{}", fp).encode(), now, "abc").unwrap(),
                Claim::Recorded {
                    event: b"{}".to_vec()
                }
            );
        }
        for stored in [
            live(Some("abc")),
            dead(Some("abc")),
            recorded(b"{}", Some("abc")).encode(),
        ] {
            assert_eq!(Claim::found(stored, now, "xyz").unwrap(), Claim::Reused);
        }
        assert!(matches!(
            Claim::found(b"garbage".to_vec(), now, "abc"),
            Err(StoreError::Corrupt(_))
        ));
    }
}
