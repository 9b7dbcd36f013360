//! Which of CCC's call records is a dialed request's call.
//!
//! API 2017-07-05 cannot look a call up by `DialEx`'s `TaskId`, so the follow-up correlates:
//! a record is a *candidate* for a request when it was placed from the request's caller to its
//! callee and started within the match window around the dial (from `clock_skew` before the
//! dial to `window` after it). Candidates another request has already taken are not ours.
//!
//! - One candidate: it is the call ([`Match::Exact`]).
//! - One that this request took on an earlier poll: still the call, whatever else appeared
//!   since, so a poll repeated after a crash decides the same.
//! - Several: two calls to one number inside the window (two requests, or someone else's call)
//!   cannot be told apart by time alone. Nothing is guessed ([`Match::Ambiguous`]); a later
//!   poll may find the others taken by their own requests and the match exact.
//! - None: the record is not there yet, or never will be.

use std::time::Duration;

use jiff::Timestamp;

use crate::ccc::CallDetailRecord;
use crate::phone::PhoneNumber;

/// The request whose call is looked for.
#[derive(Debug, Clone, Copy)]
pub struct Dialed<'a> {
    pub request_id: &'a str,
    pub caller: &'a PhoneNumber,
    pub callee: &'a PhoneNumber,
    /// When CCC accepted the call (its own clock where it said, else the worker's).
    pub dialed_at: Timestamp,
}

/// How far from the dial a record may start and still be the dial's call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// How much earlier than the dial a record may say it started (clocks differ).
    pub clock_skew: Duration,
    /// How much later than the dial it may start.
    pub after: Duration,
}

impl Window {
    /// The window `[followup]` sets.
    pub fn of(settings: &crate::config::FollowupSettings) -> Window {
        Window {
            clock_skew: Duration::from_millis(settings.clock_skew_ms),
            after: Duration::from_millis(settings.match_window_ms),
        }
    }

    /// The first and last start a candidate may have.
    pub fn bounds(&self, dialed_at: Timestamp) -> (Timestamp, Timestamp) {
        let earliest = dialed_at
            .checked_sub(self.clock_skew)
            .unwrap_or(Timestamp::MIN);
        let latest = dialed_at.checked_add(self.after).unwrap_or(Timestamp::MAX);
        (earliest, latest)
    }
}

/// What the records say about the request's call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match<'r> {
    /// This record is the call.
    Exact(&'r CallDetailRecord),
    /// This many records could be the call; none is chosen.
    Ambiguous(usize),
    /// No record could be the call (yet).
    None,
}

/// The records that could be `dialed`'s call, earliest first.
pub fn candidates<'r>(
    records: &'r [CallDetailRecord],
    dialed: &Dialed<'_>,
    window: Window,
) -> Vec<&'r CallDetailRecord> {
    let (earliest, latest) = window.bounds(dialed.dialed_at);
    let mut found: Vec<&CallDetailRecord> = records
        .iter()
        .filter(|r| r.called.as_ref() == Some(dialed.callee))
        .filter(|r| r.calling.as_ref() == Some(dialed.caller))
        .filter(|r| r.contact_type.as_deref().is_none_or(is_outbound))
        .filter(|r| r.started_at.is_some_and(|t| earliest <= t && t <= latest))
        .collect();
    // One record per contact, even when two pages overlap (records arrive while paging).
    let mut seen = std::collections::HashSet::new();
    found.retain(|r| seen.insert(r.contact_id.as_str()));
    found.sort_by_key(|r| (r.started_at, r.contact_id.as_str()));
    found
}

/// Decides among `candidates`, given who holds each (`holders[i]` for `candidates[i]`: the
/// request that took it, `None` if nobody did).
pub fn decide<'r>(
    candidates: &[&'r CallDetailRecord],
    holders: &[Option<String>],
    request_id: &str,
) -> Match<'r> {
    let held_by = |i: usize| holders.get(i).and_then(Option::as_deref);
    if let Some(i) = (0..candidates.len()).find(|&i| held_by(i) == Some(request_id)) {
        return Match::Exact(candidates[i]);
    }
    let free: Vec<&CallDetailRecord> = (0..candidates.len())
        .filter(|&i| held_by(i).is_none())
        .map(|i| candidates[i])
        .collect();
    match free.as_slice() {
        [] => Match::None,
        [only] => Match::Exact(only),
        several => Match::Ambiguous(several.len()),
    }
}

fn is_outbound(contact_type: &str) -> bool {
    contact_type.eq_ignore_ascii_case("outbound")
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_765_000_000_000;

    fn number(n: &str) -> PhoneNumber {
        PhoneNumber::parse(n).unwrap()
    }

    fn record(id: &str, offset_ms: i64, caller: &str, callee: &str) -> CallDetailRecord {
        CallDetailRecord {
            contact_id: id.to_owned(),
            started_at: Some(Timestamp::from_millisecond(T0 + offset_ms).unwrap()),
            duration_s: Some(10),
            contact_type: Some("Outbound".to_owned()),
            disposition: Some("Success".to_owned()),
            calling: Some(number(caller)),
            called: Some(number(callee)),
            agents: Vec::new(),
        }
    }

    const CALLER: &str = "02285196281";
    const CALLEE: &str = "15732036617";
    const WINDOW: Window = Window {
        clock_skew: Duration::from_secs(5),
        after: Duration::from_secs(60),
    };

    fn ids(found: &[&CallDetailRecord]) -> Vec<String> {
        found.iter().map(|r| r.contact_id.clone()).collect()
    }

    #[test]
    fn candidates_are_the_pairs_calls_inside_the_window_earliest_first() {
        let (caller, callee) = (number(CALLER), number(CALLEE));
        let dialed = Dialed {
            request_id: "r1",
            caller: &caller,
            callee: &callee,
            dialed_at: Timestamp::from_millisecond(T0).unwrap(),
        };
        let mut inbound = record("inbound", 1_000, CALLER, CALLEE);
        inbound.contact_type = Some("Inbound".to_owned());
        let mut no_time = record("no-time", 0, CALLER, CALLEE);
        no_time.started_at = None;
        let records = [
            record("late", 30_000, CALLER, CALLEE),
            record("older", -600_000, CALLER, CALLEE),
            record("skewed", -4_000, CALLER, CALLEE),
            record("too-early", -6_000, CALLER, CALLEE),
            record("too-late", 61_000, CALLER, CALLEE),
            record("other-callee", 1_000, CALLER, "13800138000"),
            record("other-caller", 1_000, "01012345678", CALLEE),
            inbound,
            no_time,
            record("edge", 60_000, CALLER, CALLEE),
        ];
        assert_eq!(
            ids(&candidates(&records, &dialed, WINDOW)),
            ["skewed", "late", "edge"]
        );
    }

    #[test]
    fn one_free_candidate_is_the_call_and_several_are_not_guessed() {
        let a = record("a", 300, CALLER, CALLEE);
        let b = record("b", 10_300, CALLER, CALLEE);
        assert_eq!(decide(&[&a], &[None], "r1"), Match::Exact(&a));
        assert_eq!(decide(&[&a, &b], &[None, None], "r1"), Match::Ambiguous(2));
        // Once the other request took its record, the rest is ours.
        assert_eq!(
            decide(&[&a, &b], &[None, Some("r2".into())], "r1"),
            Match::Exact(&a)
        );
        assert_eq!(decide(&[&a], &[Some("r2".into())], "r1"), Match::None);
        assert_eq!(decide(&[], &[], "r1"), Match::None);
    }

    #[test]
    fn a_record_already_taken_by_this_request_stays_its_call() {
        let a = record("a", 300, CALLER, CALLEE);
        let b = record("b", 10_300, CALLER, CALLEE);
        // After a crash between taking `a` and publishing, `b` appeared: still `a`.
        assert_eq!(
            decide(&[&a, &b], &[Some("r1".into()), None], "r1"),
            Match::Exact(&a)
        );
    }
}
