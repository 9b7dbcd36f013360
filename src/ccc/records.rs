//! CCC's call detail records: what became of a call after `DialEx` placed it.
//!
//! API 2017-07-05 has no lookup by `DialEx`'s `TaskId`. `ListCallDetailRecords` lists an
//! instance's records by time and number, and `ListCallEventDetailByContactId` tells how one
//! of them ended; the follow-up ([`crate::followup`]) matches a record to a request. Both are
//! read-only queries, signed like `DialEx`.
//!
//! The answers are read leniently: the SDK generations disagree on field types (numbers sent
//! as strings and back) and on list shapes (`"List": [...]` or `"List": {"CallDetailRecord":
//! [...]}`), so every field is optional and a record without a `ContactId` is skipped, never
//! a failed page. Phone numbers are kept only as [`PhoneNumber`]s, which mask themselves.

use jiff::Timestamp;
use serde_json::Value;

use super::response::{DialFailure, ErrorClass};
use crate::phone::PhoneNumber;

/// One page of `ListCallDetailRecords` for one number in a time range.
#[derive(Debug, Clone, Copy)]
pub struct RecordQuery<'a> {
    pub instance_id: &'a str,
    /// Matches a record's calling or called number.
    pub phone_number: &'a PhoneNumber,
    /// Inclusive bounds on a record's `StartTime`.
    pub start: Timestamp,
    pub stop: Timestamp,
    /// From 1.
    pub page: u32,
    pub page_size: u32,
}

/// One call as CCC recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallDetailRecord {
    pub contact_id: String,
    pub started_at: Option<Timestamp>,
    pub duration_s: Option<u64>,
    pub contact_type: Option<String>,
    /// CCC's `ContactDisposition` (`Success`, `NoAnswer`, …).
    pub disposition: Option<String>,
    /// `None` when CCC's number is not one the contract accepts.
    pub calling: Option<PhoneNumber>,
    pub called: Option<PhoneNumber>,
    /// The agents who took part, by name.
    pub agents: Vec<String>,
}

/// A page of records and how many match in all.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordPage {
    pub records: Vec<CallDetailRecord>,
    /// The page's length as CCC sent it, records without a `ContactId` included: what tells
    /// a full page from the last one.
    pub listed: usize,
    pub total: u64,
}

/// How a call ended, from `ListCallEventDetailByContactId`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CallEnding {
    pub release_reason: Option<String>,
    /// The agent who hung up, if one did.
    pub release_agent: Option<String>,
}

/// Reads a `ListCallDetailRecords` success body.
pub(crate) fn parse_page(raw: &[u8]) -> Result<RecordPage, DialFailure> {
    let body: Value =
        serde_json::from_slice(raw).map_err(|_| unreadable("ListCallDetailRecords"))?;
    let Some(records) = body.get("CallDetailRecords").filter(|v| v.is_object()) else {
        return Err(unreadable("ListCallDetailRecords"));
    };
    let items = records.get("List").map(items).unwrap_or_default();
    let list: Vec<CallDetailRecord> = items.iter().filter_map(record).collect();
    let total = number(records, "TotalCount").unwrap_or(items.len() as u64);
    Ok(RecordPage {
        records: list,
        listed: items.len(),
        total,
    })
}

/// Reads a `ListCallEventDetailByContactId` success body.
pub(crate) fn parse_ending(raw: &[u8]) -> Result<CallEnding, DialFailure> {
    let body: Value =
        serde_json::from_slice(raw).map_err(|_| unreadable("ListCallEventDetailByContactId"))?;
    let Some(data) = body.get("Data").filter(|v| v.is_object()) else {
        return Err(unreadable("ListCallEventDetailByContactId"));
    };
    Ok(CallEnding {
        release_reason: text(data, "ReleaseReason"),
        release_agent: text(data, "ReleaseAgent"),
    })
}

fn record(item: &Value) -> Option<CallDetailRecord> {
    let contact_id = text(item, "ContactId")?;
    let phone = |field| text(item, field).and_then(|n| PhoneNumber::parse(&n).ok());
    let mut agents: Vec<String> = text(item, "AgentNames")
        .map(|names| {
            names
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if agents.is_empty() {
        let legs = item.get("Agents").map(items).unwrap_or_default();
        agents = legs
            .iter()
            .filter_map(|leg| text(leg, "AgentName"))
            .collect();
    }
    Some(CallDetailRecord {
        contact_id,
        started_at: number(item, "StartTime")
            .and_then(|ms| i64::try_from(ms).ok())
            .and_then(|ms| Timestamp::from_millisecond(ms).ok()),
        duration_s: number(item, "Duration"),
        contact_type: text(item, "ContactType"),
        disposition: text(item, "ContactDisposition"),
        calling: phone("CallingNumber"),
        called: phone("CalledNumber"),
        agents,
    })
}

/// A list as either generation sends it: an array, or an object whose one member is the
/// array (`{"CallDetailRecord": [...]}`).
fn items(list: &Value) -> &[Value] {
    match list {
        Value::Array(items) => items,
        Value::Object(members) => members
            .values()
            .find_map(Value::as_array)
            .map_or(&[], Vec::as_slice),
        _ => &[],
    }
}

/// A non-empty string field, or a number given where a string was expected.
fn text(item: &Value, field: &str) -> Option<String> {
    match item.get(field)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A whole non-negative number field, or such a number sent as a string.
fn number(item: &Value, field: &str) -> Option<u64> {
    match item.get(field)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A success answer whose body cannot be read: a query changes nothing, so asking again is
/// safe, and the failure is retryable.
fn unreadable(action: &str) -> DialFailure {
    DialFailure::Transport {
        class: ErrorClass::Retryable,
        code: "unparseable_body",
        detail: format!("CCC answered {action} with a body that could not be read"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_in_the_wrapped_list_shape_parses_with_numbers_as_strings() {
        let raw = br#"{"RequestId":"R","Success":true,"Code":"OK","CallDetailRecords":{
            "TotalCount":"3","PageNumber":1,"PageSize":10,"List":{"CallDetailRecord":[
              {"ContactId":"job-1","StartTime":"1765000000000","Duration":37,"ContactType":"Outbound",
               "ContactDisposition":"Success","CallingNumber":"02285196281","CalledNumber":"15732036617",
               "AgentNames":"alice, bob","InstanceId":"i"},
              {"ContactId":"job-2","StartTime":1765000100000,"Duration":"0","ContactDisposition":"NoAnswer",
               "CallingNumber":"02285196281","CalledNumber":"not a number",
               "Agents":{"CallDetailAgent":[{"AgentName":"carol"}]}},
              {"StartTime":1765000200000}
            ]}}}"#;
        let page = parse_page(raw).unwrap();
        assert_eq!(page.total, 3);
        assert_eq!(page.listed, 3);
        assert_eq!(
            page.records.len(),
            2,
            "the record without a ContactId is skipped"
        );
        let first = &page.records[0];
        assert_eq!(first.contact_id, "job-1");
        assert_eq!(
            first.started_at,
            Some(Timestamp::from_millisecond(1_765_000_000_000).unwrap())
        );
        assert_eq!(first.duration_s, Some(37));
        assert_eq!(first.disposition.as_deref(), Some("Success"));
        assert_eq!(first.called, PhoneNumber::parse("15732036617").ok());
        assert_eq!(first.agents, ["alice", "bob"]);
        let second = &page.records[1];
        assert_eq!(second.duration_s, Some(0));
        assert_eq!(second.called, None);
        assert_eq!(second.agents, ["carol"]);
    }

    #[test]
    fn a_page_in_the_plain_array_shape_parses_and_debug_masks_numbers() {
        let raw =
            br#"{"CallDetailRecords":{"List":[{"ContactId":"c","CalledNumber":"15732036617"}]}}"#;
        let page = parse_page(raw).unwrap();
        assert_eq!(page.total, 1);
        assert!(!format!("{page:?}").contains("15732036617"));
    }

    #[test]
    fn a_success_without_records_is_unreadable_and_retryable() {
        for raw in [&b"{}"[..], b"not json", br#"{"CallDetailRecords":null}"#] {
            let failure = parse_page(raw).unwrap_err();
            assert_eq!(failure.class(), ErrorClass::Retryable, "{raw:?}");
        }
        let empty = parse_page(br#"{"CallDetailRecords":{"TotalCount":0}}"#).unwrap();
        assert_eq!(empty, RecordPage::default());
    }

    #[test]
    fn the_ending_keeps_the_release_and_drops_the_numbers() {
        let raw = br#"{"Data":{"Caller":"02285196281","Callee":"15732036617","ReleaseReason":"NormalClearing",
            "ReleaseAgent":"","Events":{"CallEventDetail":[]}}}"#;
        let ending = parse_ending(raw).unwrap();
        assert_eq!(ending.release_reason.as_deref(), Some("NormalClearing"));
        assert_eq!(ending.release_agent, None);
    }
}
