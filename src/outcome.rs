//! Outcome events: the one place that builds what downstream systems receive.
//!
//! Every request ends in exactly one terminal event (`dialed`, `failed`, `rejected`,
//! `expired`, `suppressed`, `unknown`). `event_id` is derived from (`request_id`, `status`), so
//! an event published again after a crash carries the same id and consumers can drop the
//! repeat. Phone numbers never appear in events.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::ccc::{DialAccepted, DialFailure};
use crate::validate::{DialRequest, Rejection};

/// Namespace of the deterministic `event_id`s (UUID v5).
const EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x34fa313c_15bc_47cc_910b_50909c56c9bc);

/// The contract's statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Dialed,
    Failed,
    Rejected,
    Expired,
    Suppressed,
    Unknown,
    Deferred,
}

impl Status {
    /// Every status, in the contract's order.
    pub const ALL: [Status; 7] = [
        Status::Dialed,
        Status::Failed,
        Status::Rejected,
        Status::Expired,
        Status::Suppressed,
        Status::Unknown,
        Status::Deferred,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Dialed => "dialed",
            Status::Failed => "failed",
            Status::Rejected => "rejected",
            Status::Expired => "expired",
            Status::Suppressed => "suppressed",
            Status::Unknown => "unknown",
            Status::Deferred => "deferred",
        }
    }
}

/// Why a request for a callee was suppressed; also the `suppressed` event's `code`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum SuppressReason {
    Cooldown,
    DailyCap,
    Dnc,
}

impl SuppressReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SuppressReason::Cooldown => "cooldown",
            SuppressReason::DailyCap => "daily_cap",
            SuppressReason::Dnc => "dnc",
        }
    }
}

/// Why a request waits in the wait queues; the `deferred` event's `code` and the
/// `x-dialex-deferred` header's value.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum DeferReason {
    /// The request's `not_before` is ahead.
    NotBefore,
    /// The call centre is closed.
    OutsideHours,
    /// Another delivery of the request holds its claim.
    Claimed,
    /// The do-not-call list could not be checked (fail closed).
    DncUnavailable,
    /// No concurrency or pacing slot within the wait allowed.
    Limits,
    /// DialEx answered retryably on every attempt of this hop.
    Retry,
}

impl DeferReason {
    pub const ALL: [DeferReason; 6] = [
        DeferReason::NotBefore,
        DeferReason::OutsideHours,
        DeferReason::Claimed,
        DeferReason::DncUnavailable,
        DeferReason::Limits,
        DeferReason::Retry,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeferReason::NotBefore => "not_before",
            DeferReason::OutsideHours => "outside_hours",
            DeferReason::Claimed => "claimed",
            DeferReason::DncUnavailable => "dnc_unavailable",
            DeferReason::Limits => "limits",
            DeferReason::Retry => "retry",
        }
    }

    /// The reason `as_str` gave, as read back from a message header.
    pub fn parse(code: &str) -> Option<DeferReason> {
        DeferReason::ALL.into_iter().find(|r| r.as_str() == code)
    }
}

/// `event_id` for (`request_id`, `status`): the same pair always gives the same id.
pub fn event_id(request_id: &str, status: Status) -> Uuid {
    let mut name = String::with_capacity(request_id.len() + 12);
    name.push_str(request_id);
    name.push('\n');
    name.push_str(status.as_str());
    Uuid::new_v5(&EVENT_NAMESPACE, name.as_bytes())
}

/// The outcome event as published to the outcome exchange.
///
/// Fields added after the first release carry `#[serde(default)]`, so events stored before
/// them (in the dedup store, or by consumers) still deserialize.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutcomeEvent {
    pub event_id: Uuid,
    pub request_id: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_desc: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aliyun_request_id: Option<String>,
    /// The HTTP status of CCC's answer: `HttpStatusCode` from a `DialEx` success body, or the
    /// status of an error answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status_code: Option<u16>,
    /// When CCC says it handled the dial: its `TimeStamp` (milliseconds since the epoch),
    /// as RFC 3339; absent when CCC sent none or one that is not such a number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ccc_time: Option<Timestamp>,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Timestamp>,
    pub received_at: Timestamp,
    pub completed_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Box<RawValue>>,
}

impl OutcomeEvent {
    fn new(
        request_id: &str,
        status: Status,
        received_at: Timestamp,
        attributes: Option<&RawValue>,
    ) -> Self {
        OutcomeEvent {
            event_id: event_id(request_id, status),
            request_id: request_id.to_owned(),
            status,
            task_id: None,
            code: None,
            message: None,
            status_code: None,
            status_desc: None,
            aliyun_request_id: None,
            http_status_code: None,
            ccc_time: None,
            attempts: 0,
            next_attempt_at: None,
            received_at,
            completed_at: Timestamp::now(),
            attributes: attributes.map(ToOwned::to_owned),
        }
    }

    /// An event about a decoded request: its id and attributes.
    fn for_request(request: &DialRequest, status: Status, received_at: Timestamp) -> Self {
        Self::new(
            request.request_id().as_str(),
            status,
            received_at,
            request.attributes(),
        )
    }

    /// The call was placed; `task_id` correlates it with CCC's records.
    pub fn dialed(
        request: &DialRequest,
        received_at: Timestamp,
        accepted: &DialAccepted,
        attempts: u32,
    ) -> Self {
        let mut event = Self::for_request(request, Status::Dialed, received_at);
        event.task_id = Some(accepted.task_id.clone());
        event.code = Some(accepted.code.clone());
        event.message = accepted.message.clone();
        event.status_code = accepted.status_code.clone();
        event.status_desc = accepted.status_desc.clone();
        event.aliyun_request_id = Some(accepted.request_id.clone()).filter(|r| !r.is_empty());
        event.http_status_code = accepted.http_status_code;
        event.ccc_time = accepted.ccc_time();
        event.attempts = attempts;
        event
    }

    /// The call was not placed (`failed`) or may have been (`unknown`), per `status`.
    pub fn not_dialed(
        request: &DialRequest,
        status: Status,
        received_at: Timestamp,
        failure: &DialFailure,
        attempts: u32,
    ) -> Self {
        let mut event = Self::for_request(request, status, received_at);
        event.code = Some(failure.code().to_owned());
        event.message = failure.message().map(ToOwned::to_owned);
        if let Some(api) = failure.api() {
            event.status_code = api.status_code.clone();
            event.status_desc = api.status_desc.clone();
            event.aliyun_request_id = api.request_id.clone();
            event.http_status_code = Some(api.http_status);
        }
        event.attempts = attempts;
        event
    }

    /// A worker claimed the request and stopped before recording a result: it may have been
    /// dialed, so it never is again.
    pub fn interrupted(request: &DialRequest, received_at: Timestamp) -> Self {
        let mut event = Self::for_request(request, Status::Unknown, received_at);
        event.code = Some("interrupted".to_owned());
        event.message = Some(
            "a worker took this request and stopped before recording a result; the call may have been placed"
                .to_owned(),
        );
        event
    }

    /// Not dialed because of the callee: called recently (`cooldown`, with the earlier
    /// request and its task id), too often today (`daily_cap`), or on the do-not-call list
    /// (`dnc`).
    pub fn suppressed(
        request: &DialRequest,
        received_at: Timestamp,
        reason: SuppressReason,
        earlier: Option<(&str, Option<&str>)>,
    ) -> Self {
        let mut event = Self::for_request(request, Status::Suppressed, received_at);
        event.code = Some(reason.as_str().to_owned());
        event.message = Some(match (reason, earlier) {
            (SuppressReason::Cooldown, Some((earlier_id, _))) => {
                format!("the callee was called for request {earlier_id} within the cooldown window")
            }
            (SuppressReason::Cooldown, None) => {
                "the callee was called within the cooldown window".to_owned()
            }
            (SuppressReason::DailyCap, _) => "the callee has reached today's call limit".to_owned(),
            (SuppressReason::Dnc, _) => "the callee is on the do-not-call list".to_owned(),
        });
        event.task_id = earlier.and_then(|(_, task_id)| task_id.map(ToOwned::to_owned));
        event
    }

    /// Not dialed: the request's `expires_at` passed before it could be.
    pub fn expired(request: &DialRequest, received_at: Timestamp, attempts: u32) -> Self {
        let mut event = Self::for_request(request, Status::Expired, received_at);
        event.code = Some("expired".to_owned());
        event.message = Some("expires_at passed before the call could be placed".to_owned());
        event.attempts = attempts;
        event
    }

    /// Informational: the request waits and will be evaluated again at `next_attempt_at`.
    pub fn deferred(
        request: &DialRequest,
        received_at: Timestamp,
        reason: &str,
        next_attempt_at: Timestamp,
    ) -> Self {
        let mut event = Self::for_request(request, Status::Deferred, received_at);
        event.code = Some(reason.to_owned());
        event.next_attempt_at = Some(next_attempt_at);
        event
    }

    /// Not handled: a fault that concerns this request alone persisted on every delivery
    /// (`code` says which). `failed` when it certainly was not dialed, `unknown` when its
    /// record could not be read and it may have been.
    pub fn faulted(
        request: &DialRequest,
        status: Status,
        received_at: Timestamp,
        code: &str,
        detail: &str,
    ) -> Self {
        let mut event = Self::for_request(request, status, received_at);
        event.code = Some(code.to_owned());
        event.message = Some(detail.to_owned());
        event
    }

    /// Handling the request failed on every delivery the queue allows before it was claimed,
    /// so it was never dialed; it is parked on the dead-letter queue.
    pub fn poisoned(request_id: &str, received_at: Timestamp, detail: &str) -> Self {
        let mut event = Self::new(request_id, Status::Failed, received_at, None);
        event.code = Some("poison_message".to_owned());
        event.message = Some(detail.to_owned());
        event
    }

    /// The request broke a rule of the contract; it was never dialed. The attributes are
    /// echoed whenever the rejection could read them.
    pub fn rejected(rejection: &Rejection, request_id: &str, received_at: Timestamp) -> Self {
        let mut event = Self::new(
            request_id,
            Status::Rejected,
            received_at,
            rejection.attributes.as_deref(),
        );
        event.code = Some(rejection.reason.code().to_owned());
        event.message = Some(rejection.detail.clone());
        event
    }

    /// `<prefix>.<status>`, the routing key on the outcome exchange.
    pub fn routing_key(&self, prefix: &str) -> String {
        format!("{prefix}.{}", self.status.as_str())
    }

    /// The wire form. Serialising a struct of strings and numbers cannot fail.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| unreachable!("outcome events always serialise"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_deterministic_per_request_and_status() {
        assert_eq!(
            event_id("r-1", Status::Dialed),
            event_id("r-1", Status::Dialed)
        );
        assert_ne!(
            event_id("r-1", Status::Dialed),
            event_id("r-1", Status::Failed)
        );
        assert_ne!(
            event_id("r-1", Status::Dialed),
            event_id("r-2", Status::Dialed)
        );
        // Pinned: changing the derivation would break consumers' de-duplication.
        assert_eq!(
            event_id("r-1", Status::Dialed).to_string(),
            Uuid::new_v5(&EVENT_NAMESPACE, b"r-1\ndialed").to_string()
        );
        assert_eq!(event_id("r-1", Status::Dialed).get_version_num(), 5);
    }

    #[test]
    fn statuses_serialise_to_the_contract_strings() {
        for status in Status::ALL {
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
        let contract = [
            "dialed",
            "failed",
            "rejected",
            "expired",
            "suppressed",
            "unknown",
            "deferred",
        ];
        assert_eq!(Status::ALL.map(Status::as_str), contract);
    }

    #[test]
    fn a_rejected_event_carries_the_reason_and_no_empty_fields() {
        let rejection = crate::validate::decode(b"{\"request_id\":\"r-9\"}", None).unwrap_err();
        let event = OutcomeEvent::rejected(&rejection, "r-9", Timestamp::now());
        let json: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
        assert_eq!(json["status"], "rejected");
        assert_eq!(json["request_id"], "r-9");
        assert_eq!(json["code"], rejection.reason.code());
        assert!(json.get("task_id").is_none());
        assert!(json.get("attributes").is_none());
        assert_eq!(event.routing_key("dial.outcome"), "dial.outcome.rejected");
    }

    /// A valid request with `attributes` set to `attributes`, and `callee` to `callee`.
    fn body(callee: &str, attributes: &str) -> Vec<u8> {
        format!(
            r#"{{"request_id":"r-1","instance_id":"i","caller":"02285196281","callee":"{callee}","answer_mode":"ivr","rout_point":"f","attributes":{attributes}}}"#
        )
        .into_bytes()
    }

    fn request() -> DialRequest {
        crate::validate::decode(&body("15732036617", r#"{"ticket":"T-1"}"#), None).unwrap()
    }

    #[test]
    fn a_rejected_event_echoes_the_attributes_it_could_read() {
        let sent = r#"{"ticket": "T-7", "n": 1.50}"#;
        let rejection = crate::validate::decode(&body("12345", sent), None).unwrap_err();
        let event = OutcomeEvent::rejected(&rejection, "r-1", Timestamp::now());
        let json = String::from_utf8(event.to_json()).unwrap();
        assert!(
            json.contains(&format!(r#""attributes":{sent}"#)),
            "echoed as sent: {json}"
        );
        let json: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(json["code"], "invalid_callee");
        assert!(
            !json.to_string().contains("12345"),
            "no phone number: {json}"
        );

        let unreadable = crate::validate::decode(&body("15732036617", "[1]"), None).unwrap_err();
        let event = OutcomeEvent::rejected(&unreadable, "r-1", Timestamp::now());
        let json: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
        assert_eq!(json["code"], "invalid_attributes");
        assert!(json.get("attributes").is_none());
    }

    #[test]
    fn a_dialed_event_carries_every_field_of_the_dialex_answer() {
        let accepted = DialAccepted {
            task_id: "155486223597726619".to_owned(),
            request_id: "26D1277F-55BF-453E-A6B2-02B7E6F97699".to_owned(),
            code: "OK".to_owned(),
            message: Some("Success".to_owned()),
            status_code: Some("200".to_owned()),
            status_desc: Some("Okay".to_owned()),
            http_status_code: Some(200),
            time_stamp: Some("1554862236398".to_owned()),
        };
        let received_at: Timestamp = "2019-04-10T02:10:30Z".parse().unwrap();
        let event = OutcomeEvent::dialed(&request(), received_at, &accepted, 2);
        let json: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
        assert_eq!(json["status"], "dialed");
        assert_eq!(json["request_id"], "r-1");
        assert_eq!(json["task_id"], "155486223597726619");
        assert_eq!(json["code"], "OK");
        assert_eq!(json["message"], "Success");
        assert_eq!(json["status_code"], "200");
        assert_eq!(json["status_desc"], "Okay");
        assert_eq!(
            json["aliyun_request_id"],
            "26D1277F-55BF-453E-A6B2-02B7E6F97699"
        );
        assert_eq!(json["http_status_code"], 200);
        assert_eq!(json["ccc_time"], "2019-04-10T02:10:36.398Z");
        assert_eq!(json["attempts"], 2);
        assert_eq!(json["received_at"], "2019-04-10T02:10:30Z");
        assert_eq!(json["attributes"], serde_json::json!({"ticket": "T-1"}));
        assert!(!json.to_string().contains("15732036617"), "{json}");

        // And back: a consumer reading the event gets the same values.
        let back: OutcomeEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back.http_status_code, Some(200));
        assert_eq!(back.ccc_time, accepted.ccc_time());

        let sparse = DialAccepted {
            message: None,
            status_code: None,
            status_desc: None,
            http_status_code: None,
            time_stamp: Some("not a number".to_owned()),
            ..accepted
        };
        let event = OutcomeEvent::dialed(&request(), received_at, &sparse, 1);
        let json: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
        for absent in [
            "message",
            "status_code",
            "status_desc",
            "http_status_code",
            "ccc_time",
        ] {
            assert!(json.get(absent).is_none(), "{absent}: {json}");
        }
    }

    #[test]
    fn a_failed_event_carries_the_http_status_of_the_error_answer() {
        let api = crate::ccc::response::parse_answer(
            400,
            br#"{"RequestId":"R1","Code":"InvalidParameter","Message":"RoutPoint is not valid.","StatusCode":"400","StatusDesc":"Bad"}"#,
        )
        .unwrap_err();
        let event = OutcomeEvent::not_dialed(&request(), Status::Failed, Timestamp::now(), &api, 1);
        let json: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
        assert_eq!(json["code"], "InvalidParameter");
        assert_eq!(json["message"], "RoutPoint is not valid.");
        assert_eq!(json["status_code"], "400");
        assert_eq!(json["status_desc"], "Bad");
        assert_eq!(json["aliyun_request_id"], "R1");
        assert_eq!(json["http_status_code"], 400);
        assert!(json.get("ccc_time").is_none());

        // No answer at all: no HTTP status to report.
        let lost = crate::ccc::response::parse_answer(504, b"").unwrap_err();
        let event =
            OutcomeEvent::not_dialed(&request(), Status::Unknown, Timestamp::now(), &lost, 1);
        assert_eq!(event.http_status_code, None);
        let json: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
        assert!(json.get("http_status_code").is_none());
    }

    #[test]
    fn events_stored_before_the_new_fields_still_deserialize() {
        let stored = r#"{"event_id":"5c3b1e4e-2d7a-5b8e-9f3a-1c2d3e4f5a6b","request_id":"r-1",
            "status":"dialed","task_id":"1","code":"OK","aliyun_request_id":"R","attempts":1,
            "received_at":"2026-01-01T00:00:00Z","completed_at":"2026-01-01T00:00:01Z"}"#;
        let event: OutcomeEvent = serde_json::from_str(stored).unwrap();
        assert_eq!(event.status, Status::Dialed);
        assert_eq!(event.http_status_code, None);
        assert_eq!(event.ccc_time, None);
        assert!(event.attributes.is_none());
    }
}
