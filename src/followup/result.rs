//! The call-result event: `dial.result.<disposition>`, one per dialed request.
//!
//! Built here and nowhere else. Its `event_id` is derived from the `request_id` alone, so the
//! result published again after a crash (the stored bytes) carries the same id. No phone
//! number ever appears in it.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::matching::Match;
use crate::ccc::{CallDetailRecord, CallEnding};

/// AMQP `type` of a call-result event.
pub const RESULT_TYPE: &str = "dial.result";

/// Namespace of the call-result `event_id`s (UUID v5), apart from the outcome events'.
const RESULT_NAMESPACE: Uuid = Uuid::from_u128(0x8c1f_52a4_6f0e_4f3b_9d7a_2be5_03c4_7e19);

/// `event_id` of `request_id`'s call result.
pub fn result_event_id(request_id: &str) -> Uuid {
    Uuid::new_v5(&RESULT_NAMESPACE, request_id.as_bytes())
}

/// How the call went, in the contract's small stable set; CCC's own disposition travels
/// beside it (`ccc_disposition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// The customer picked up.
    Answered,
    NoAnswer,
    /// The customer declined the call (or the line was busy).
    Rejected,
    /// The customer answered but hung up, or was dropped, before an agent took the call.
    Abandoned,
    Voicemail,
    /// The call centre failed to handle the call.
    Failed,
    /// No record, an ambiguous one, or a disposition this version does not know.
    Unknown,
}

/// CCC's `ContactDisposition`s and what each means here. Dispositions not listed are
/// [`Disposition::Unknown`], with CCC's raw value kept.
pub const CCC_DISPOSITIONS: &[(&str, Disposition)] = &[
    ("Success", Disposition::Answered),
    ("ForwardToOutsideNumber", Disposition::Answered),
    ("NoAnswer", Disposition::NoAnswer),
    ("Reject", Disposition::Rejected),
    ("Busy", Disposition::Rejected),
    ("AbandonedInQueue", Disposition::Abandoned),
    ("AbandonedInRing", Disposition::Abandoned),
    ("AbandonedInIVR", Disposition::Abandoned),
    ("QueuingTimeout", Disposition::Abandoned),
    ("QueuingOverflow", Disposition::Abandoned),
    ("Voicemail", Disposition::Voicemail),
    ("IVRException", Disposition::Failed),
];

impl Disposition {
    pub const ALL: [Disposition; 7] = [
        Disposition::Answered,
        Disposition::NoAnswer,
        Disposition::Rejected,
        Disposition::Abandoned,
        Disposition::Voicemail,
        Disposition::Failed,
        Disposition::Unknown,
    ];

    /// The meaning of CCC's `ContactDisposition` (case as CCC writes it, or any case).
    pub fn of_ccc(raw: &str) -> Disposition {
        CCC_DISPOSITIONS
            .iter()
            .find(|(ccc, _)| ccc.eq_ignore_ascii_case(raw))
            .map_or(Disposition::Unknown, |(_, d)| *d)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Answered => "answered",
            Disposition::NoAnswer => "no_answer",
            Disposition::Rejected => "rejected",
            Disposition::Abandoned => "abandoned",
            Disposition::Voicemail => "voicemail",
            Disposition::Failed => "failed",
            Disposition::Unknown => "unknown",
        }
    }
}

/// How the record was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchKind {
    Exact,
    Ambiguous,
    None,
}

/// Why a result is `unknown` without a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownReason {
    /// No record matched by the last poll.
    NoRecord,
    /// Several records matched by the last poll.
    Ambiguous,
    /// CCC's records could not be read, poll after poll.
    QueryFailed,
}

/// The call-result event as published to the outcome exchange.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallResultEvent {
    pub event_id: Uuid,
    pub request_id: String,
    pub task_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact_id: Option<String>,
    pub disposition: Disposition,
    /// CCC's `ContactDisposition`, as it sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ccc_disposition: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_reason: Option<String>,
    #[serde(rename = "match")]
    pub match_kind: MatchKind,
    /// Why the disposition is `unknown` when no single record was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<UnknownReason>,
    /// Polls of CCC's records it took.
    pub polls: u32,
    pub dialed_at: Timestamp,
    pub completed_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Box<RawValue>>,
}

/// What a result is made from besides the record: the dialed request.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub request_id: &'a str,
    pub task_id: &'a str,
    pub dialed_at: Timestamp,
    pub attributes: Option<&'a RawValue>,
    pub polls: u32,
}

impl CallResultEvent {
    /// The result for `record`, the request's call, and how it ended if that was fetched.
    pub fn of_record(
        subject: &Subject<'_>,
        record: &CallDetailRecord,
        ending: Option<&CallEnding>,
    ) -> Self {
        let ccc = record.disposition.clone();
        let mut event = Self::new(
            subject,
            ccc.as_deref()
                .map_or(Disposition::Unknown, Disposition::of_ccc),
            MatchKind::Exact,
        );
        event.contact_id = Some(record.contact_id.clone());
        event.ccc_disposition = ccc;
        event.duration_s = record.duration_s;
        event.started_at = record.started_at;
        event.agents = record.agents.clone();
        event.release_reason = ending.and_then(|e| e.release_reason.clone());
        event
    }

    /// No single record: `unknown`, saying why.
    pub fn unknown(subject: &Subject<'_>, reason: UnknownReason) -> Self {
        let match_kind = match reason {
            UnknownReason::Ambiguous => MatchKind::Ambiguous,
            UnknownReason::NoRecord | UnknownReason::QueryFailed => MatchKind::None,
        };
        let mut event = Self::new(subject, Disposition::Unknown, match_kind);
        event.reason = Some(reason);
        event
    }

    /// The final result for what the last poll found.
    pub fn last(subject: &Subject<'_>, found: Match<'_>) -> Self {
        match found {
            Match::Exact(record) => Self::of_record(subject, record, None),
            Match::Ambiguous(_) => Self::unknown(subject, UnknownReason::Ambiguous),
            Match::None => Self::unknown(subject, UnknownReason::NoRecord),
        }
    }

    fn new(subject: &Subject<'_>, disposition: Disposition, match_kind: MatchKind) -> Self {
        CallResultEvent {
            event_id: result_event_id(subject.request_id),
            request_id: subject.request_id.to_owned(),
            task_id: subject.task_id.to_owned(),
            contact_id: None,
            disposition,
            ccc_disposition: None,
            duration_s: None,
            started_at: None,
            agents: Vec::new(),
            release_reason: None,
            match_kind,
            reason: None,
            polls: subject.polls,
            dialed_at: subject.dialed_at,
            completed_at: Timestamp::now(),
            attributes: subject.attributes.map(ToOwned::to_owned),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| unreachable!("call results always serialise"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phone::PhoneNumber;

    fn subject(attributes: Option<&RawValue>) -> Subject<'_> {
        Subject {
            request_id: "r-1",
            task_id: "17650000000001",
            dialed_at: Timestamp::from_millisecond(1_765_000_000_000).unwrap(),
            attributes,
            polls: 2,
        }
    }

    #[test]
    fn every_documented_disposition_maps_into_the_stable_set() {
        let cases = [
            ("Success", "answered"),
            ("NoAnswer", "no_answer"),
            ("Reject", "rejected"),
            ("AbandonedInQueue", "abandoned"),
            ("AbandonedInRing", "abandoned"),
            ("AbandonedInIVR", "abandoned"),
            ("QueuingTimeout", "abandoned"),
            ("QueuingOverflow", "abandoned"),
            ("Voicemail", "voicemail"),
            ("IVRException", "failed"),
            ("ForwardToOutsideNumber", "answered"),
            ("success", "answered"),
            ("SomethingNew", "unknown"),
        ];
        for (ccc, ours) in cases {
            assert_eq!(Disposition::of_ccc(ccc).as_str(), ours, "{ccc}");
        }
    }

    #[test]
    fn a_matched_record_becomes_a_result_without_phone_numbers() {
        let record = CallDetailRecord {
            contact_id: "job-7".into(),
            started_at: Some(Timestamp::from_millisecond(1_765_000_000_300).unwrap()),
            duration_s: Some(37),
            contact_type: Some("Outbound".into()),
            disposition: Some("Success".into()),
            calling: PhoneNumber::parse("02285196281").ok(),
            called: PhoneNumber::parse("15732036617").ok(),
            agents: vec!["alice".into()],
        };
        let attributes = RawValue::from_string(r#"{"ticket":42}"#.into()).unwrap();
        let ending = CallEnding {
            release_reason: Some("NormalClearing".into()),
            release_agent: None,
        };
        let event = CallResultEvent::of_record(&subject(Some(&attributes)), &record, Some(&ending));
        let json: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
        assert_eq!(json["event_id"], result_event_id("r-1").to_string());
        assert_eq!(json["disposition"], "answered");
        assert_eq!(json["ccc_disposition"], "Success");
        assert_eq!(json["contact_id"], "job-7");
        assert_eq!(json["duration_s"], 37);
        assert_eq!(json["agents"][0], "alice");
        assert_eq!(json["release_reason"], "NormalClearing");
        assert_eq!(json["match"], "exact");
        assert_eq!(json["polls"], 2);
        assert_eq!(json["attributes"]["ticket"], 42);
        let text = String::from_utf8(event.to_json()).unwrap();
        assert!(!text.contains("15732036617") && !text.contains("02285196281"));
    }

    #[test]
    fn no_single_record_is_unknown_with_the_reason() {
        let none = CallResultEvent::last(&subject(None), Match::None);
        let json: serde_json::Value = serde_json::from_slice(&none.to_json()).unwrap();
        assert_eq!(json["disposition"], "unknown");
        assert_eq!(json["reason"], "no_record");
        assert_eq!(json["match"], "none");
        let ambiguous = CallResultEvent::last(&subject(None), Match::Ambiguous(2));
        assert_eq!(ambiguous.match_kind, MatchKind::Ambiguous);
        assert_eq!(ambiguous.reason, Some(UnknownReason::Ambiguous));
    }

    #[test]
    fn result_ids_are_per_request_and_apart_from_outcome_ids() {
        assert_eq!(result_event_id("r-1"), result_event_id("r-1"));
        assert_ne!(result_event_id("r-1"), result_event_id("r-2"));
        for status in crate::outcome::Status::ALL {
            assert_ne!(
                result_event_id("r-1"),
                crate::outcome::event_id("r-1", status)
            );
        }
    }
}
