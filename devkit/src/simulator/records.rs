//! Call records: what the call centre remembers about the calls the simulator placed, served by
//! `ListCallDetailRecords` and `ListCallEventDetailByContactId`.
//!
//! The worker learns whether a customer answered by polling `ListCallDetailRecords` after a
//! `DialEx`, so this module makes that as awkward as the real call centre does: a record shows
//! up only some time after the call (and some calls never get one), older unrelated calls to
//! the same number are there to be told apart, and the API is paced per instance. It owns the
//! records, the per-callee scripts that decide each call's outcome, the log of queries, the
//! queued query faults and the pace limiter, all behind one lock, and the two actions'
//! parameter checks and answer bodies.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hyper::{Response, StatusCode};
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use super::answer::{self, ApiError, Body};
use super::params::Params;
use super::{DialRecord, Fault, SimConfig};

/// How the calls to one callee turn out, set with [`super::Simulator::script_call`].
///
/// A script is sticky: it applies to every later call to its callee until replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallScript {
    /// `ContactDisposition` of the record, e.g. `Success`, `NoAnswer`, `Busy`.
    pub disposition: String,
    /// `Duration` of the record, in seconds.
    pub duration_s: u32,
    /// How long after the call its record becomes visible; `None` uses
    /// [`SimConfig::call_record_delay`].
    pub appears_after: Option<Duration>,
    /// Whether the call gets a record at all; `false` models a record the call centre lost.
    pub recorded: bool,
    /// `ReleaseReason` of the call's events; `None` derives one from the disposition.
    pub release_reason: Option<String>,
}

impl Default for CallScript {
    /// An answered call of 37 seconds, recorded after the configured delay.
    fn default() -> Self {
        Self {
            disposition: SUCCESS.to_owned(),
            duration_s: DEFAULT_DURATION_S,
            appears_after: None,
            recorded: true,
            release_reason: None,
        }
    }
}

impl CallScript {
    /// A recorded call with this disposition: 37 seconds long if `Success`, else 0.
    pub fn disposition(disposition: &str) -> CallScript {
        CallScript {
            disposition: disposition.to_owned(),
            duration_s: if disposition == SUCCESS {
                DEFAULT_DURATION_S
            } else {
                0
            },
            ..CallScript::default()
        }
    }
}

/// One call record as the call centre keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CallRecord {
    /// `ContactId`, unique in the process (`job-<digits>` for records the simulator makes).
    pub contact_id: String,
    /// `InstanceId` the call belongs to.
    pub instance_id: String,
    /// `CallingNumber`: the dial's `Caller`.
    pub calling_number: String,
    /// `CalledNumber`: the dial's `Callee`.
    pub called_number: String,
    /// `StartTime` of the call.
    pub start_time: Timestamp,
    /// `Duration` in seconds.
    pub duration_s: u32,
    /// `ContactDisposition`, e.g. `Success` or `NoAnswer`.
    pub disposition: String,
    /// `AgentNames`: the agent who took the call, or empty.
    pub agent_names: String,
    /// `ReleaseReason` of the call's events.
    pub release_reason: String,
}

/// One authenticated, valid `ListCallDetailRecords` request, as the simulator saw it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordQuery {
    /// `InstanceId` queried.
    pub instance_id: String,
    /// When the request arrived.
    pub at: Timestamp,
    /// Whether the pace limit refused it (`Throttling.User`).
    pub throttled: bool,
}

const SUCCESS: &str = "Success";
const DEFAULT_DURATION_S: u32 = 37;
/// Every call the simulator places is outbound.
const OUTBOUND: &str = "Outbound";
/// The call centre stamps a call's start a little after the dial request returns.
const START_AFTER_DIAL: SignedDuration = SignedDuration::from_millis(300);
/// How long before the first dial to a number the unrelated older call took place.
const OLDER_CALL_BEFORE: SignedDuration = SignedDuration::from_mins(10);
/// The pace limit's window.
const PACE_WINDOW: Duration = Duration::from_secs(1);
/// Largest `PageSize` the gateway accepts.
const MAX_PAGE_SIZE: u32 = 100;

/// Process-wide, so two simulators in one test process never hand out the same `ContactId`.
static NEXT_CONTACT: AtomicU64 = AtomicU64::new(1);

fn new_contact_id() -> String {
    format!("job-{}", NEXT_CONTACT.fetch_add(1, Ordering::Relaxed))
}

/// A record with what the public [`CallRecord`] leaves out.
#[derive(Debug, Clone)]
struct Stored {
    record: CallRecord,
    skill_group_names: String,
    visible_at: Instant,
}

#[derive(Default)]
struct State {
    /// In the order they were created.
    records: Vec<Stored>,
    scripts: HashMap<String, CallScript>,
    /// (instance, callee) pairs that already got their older unrelated record.
    seeded: HashSet<(String, String)>,
    queries: Vec<RecordQuery>,
    query_faults: VecDeque<(Fault, u32)>,
    /// Per instance, when the admitted queries of the last pace window arrived.
    paced: HashMap<String, VecDeque<Instant>>,
}

/// The call centre's record keeping, shared by every connection.
pub(crate) struct CallRecords {
    delay: Duration,
    per_second: u32,
    state: Mutex<State>,
}

/// The validated parameters of one `ListCallDetailRecords` request.
#[derive(Debug)]
pub(crate) struct ListQuery<'a> {
    instance_id: &'a str,
    page_number: u32,
    page_size: u32,
    phone_number: Option<&'a str>,
    start_ms: Option<i64>,
    stop_ms: Option<i64>,
    contact_type: Option<&'a str>,
    disposition: Option<&'a str>,
}

/// The validated parameters of one `ListCallEventDetailByContactId` request.
#[derive(Debug)]
pub(crate) struct EventsQuery<'a> {
    instance_id: &'a str,
    contact_id: &'a str,
}

fn required<'p>(params: &'p Params, name: &str) -> Result<&'p str, ApiError> {
    params
        .non_empty(name)
        .ok_or_else(|| ApiError::missing(name))
}

impl<'a> ListQuery<'a> {
    /// Step 8 for `ListCallDetailRecords`.
    pub(crate) fn parse(params: &'a Params) -> Result<Self, ApiError> {
        let instance_id = required(params, "InstanceId")?;
        let page_number = required(params, "PageNumber")?
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| ApiError::invalid("PageNumber"))?;
        let page_size = required(params, "PageSize")?
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
            .ok_or_else(|| ApiError::invalid("PageSize"))?;
        let millis = |name: &str| -> Result<Option<i64>, ApiError> {
            params
                .non_empty(name)
                .map(|value| value.parse::<i64>().map_err(|_| ApiError::invalid(name)))
                .transpose()
        };
        Ok(Self {
            instance_id,
            page_number,
            page_size,
            phone_number: params.non_empty("PhoneNumber"),
            start_ms: millis("StartTime")?,
            stop_ms: millis("StopTime")?,
            contact_type: params.non_empty("ContactType"),
            disposition: params.non_empty("ContactDisposition"),
        })
    }

    fn matches(&self, stored: &Stored) -> bool {
        let r = &stored.record;
        let at = r.start_time.as_millisecond();
        r.instance_id == self.instance_id
            && self
                .phone_number
                .is_none_or(|n| r.calling_number == n || r.called_number == n)
            && self.start_ms.is_none_or(|start| at >= start)
            && self.stop_ms.is_none_or(|stop| at <= stop)
            && self.contact_type.is_none_or(|t| t == OUTBOUND)
            && self.disposition.is_none_or(|d| r.disposition == d)
    }
}

impl<'a> EventsQuery<'a> {
    /// Step 8 for `ListCallEventDetailByContactId`.
    pub(crate) fn parse(params: &'a Params) -> Result<Self, ApiError> {
        Ok(Self {
            instance_id: required(params, "InstanceId")?,
            contact_id: required(params, "ContactId")?,
        })
    }
}

impl CallRecords {
    pub(crate) fn new(config: &SimConfig) -> Self {
        Self {
            delay: config.call_record_delay,
            per_second: config.record_queries_per_second,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent, so a panicking holder is no
        // reason to stop answering.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn script(&self, callee: &str, script: CallScript) {
        self.lock().scripts.insert(callee.to_owned(), script);
    }

    pub(crate) fn add(&self, record: CallRecord) {
        self.lock().records.push(Stored {
            record,
            skill_group_names: String::new(),
            visible_at: Instant::now(),
        });
    }

    pub(crate) fn all(&self) -> Vec<CallRecord> {
        self.lock()
            .records
            .iter()
            .map(|stored| stored.record.clone())
            .collect()
    }

    pub(crate) fn queries(&self) -> Vec<RecordQuery> {
        self.lock().queries.clone()
    }

    pub(crate) fn inject_query_fault(&self, fault: Fault, times: u32) {
        if times > 0 {
            self.lock().query_faults.push_back((fault, times));
        }
    }

    /// Records the call an executed dial placed (per the callee's script), and, the first time
    /// the dial's number is called in its instance, an older unrelated call to it.
    pub(crate) fn dialed(&self, dial: &DialRecord) {
        let now = Instant::now();
        let mut state = self.lock();
        let pair = (dial.instance_id.clone(), dial.callee.clone());
        if !state.seeded.contains(&pair) {
            state.seeded.insert(pair);
            let older = CallRecord {
                contact_id: new_contact_id(),
                instance_id: dial.instance_id.clone(),
                calling_number: dial.caller.clone(),
                called_number: dial.callee.clone(),
                start_time: shift(dial.ended_at, -OLDER_CALL_BEFORE),
                duration_s: 0,
                disposition: "NoAnswer".to_owned(),
                agent_names: String::new(),
                release_reason: release_reason_for("NoAnswer").to_owned(),
            };
            state.records.push(Stored {
                record: older,
                skill_group_names: String::new(),
                visible_at: now,
            });
        }

        let script = state.scripts.get(&dial.callee).cloned().unwrap_or_default();
        if !script.recorded {
            return;
        }
        let answered = script.disposition == SUCCESS;
        let agent_names = match dial.rout_point.split_once('@') {
            Some((ram_id, _)) if answered && dial.answer_mode == 1 => ram_id.to_owned(),
            _ => String::new(),
        };
        let skill_group_names = if answered && dial.answer_mode == 2 {
            dial.rout_point.clone()
        } else {
            String::new()
        };
        let release_reason = script
            .release_reason
            .clone()
            .unwrap_or_else(|| release_reason_for(&script.disposition).to_owned());
        let record = CallRecord {
            contact_id: new_contact_id(),
            instance_id: dial.instance_id.clone(),
            calling_number: dial.caller.clone(),
            called_number: dial.callee.clone(),
            start_time: shift(dial.ended_at, START_AFTER_DIAL),
            duration_s: script.duration_s,
            disposition: script.disposition.clone(),
            agent_names,
            release_reason,
        };
        state.records.push(Stored {
            record,
            skill_group_names,
            visible_at: now + script.appears_after.unwrap_or(self.delay),
        });
    }

    /// `ListCallDetailRecords` after authentication and validation: log, pace, fault, answer.
    pub(crate) fn list(&self, query: &ListQuery<'_>, request_id: &str) -> Response<Body> {
        let now = Instant::now();
        let mut state = self.lock();
        let throttled = !self.admit(&mut state, query.instance_id, now);
        state.queries.push(RecordQuery {
            instance_id: query.instance_id.to_owned(),
            at: Timestamp::now(),
            throttled,
        });
        if throttled {
            return ApiError::throttling().into_response(request_id);
        }
        if let Some(fault) = take_fault(&mut state.query_faults) {
            tracing::debug!(?fault, "simulator injecting a ListCallDetailRecords fault");
            let error = match fault {
                Fault::Throttle => ApiError::throttling(),
                Fault::InternalError => ApiError::internal_error(),
                // The other faults are about placing calls; here they read as "try later".
                _ => ApiError::service_unavailable(),
            };
            return error.into_response(request_id);
        }

        let mut matching: Vec<&Stored> = state
            .records
            .iter()
            .filter(|stored| stored.visible_at <= now && query.matches(stored))
            .collect();
        // Newest first; among equal start times, the one created later first.
        matching.reverse();
        matching.sort_by_key(|stored| std::cmp::Reverse(stored.record.start_time));
        let total_count = matching.len();
        let skip = (query.page_number as usize - 1).saturating_mul(query.page_size as usize);
        let page = matching
            .into_iter()
            .skip(skip)
            .take(query.page_size as usize)
            .map(DetailRecord::of)
            .collect();
        let body = ListBody {
            call_detail_records: DetailRecords {
                total_count,
                page_number: query.page_number,
                page_size: query.page_size,
                list: DetailList {
                    call_detail_record: page,
                },
            },
        };
        answer::success(request_id, &body)
    }

    /// Whether the pace limit lets one more query for `instance_id` through at `now` (and if
    /// so, counts it). Only admitted queries count, so a client that backs off recovers within
    /// a window however hard it pushed before.
    fn admit(&self, state: &mut State, instance_id: &str, now: Instant) -> bool {
        if self.per_second == 0 {
            return true;
        }
        let window = state.paced.entry(instance_id.to_owned()).or_default();
        while window
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) >= PACE_WINDOW)
        {
            window.pop_front();
        }
        if window.len() >= self.per_second as usize {
            return false;
        }
        window.push_back(now);
        true
    }

    /// `ListCallEventDetailByContactId` after authentication and validation.
    pub(crate) fn events(&self, query: &EventsQuery<'_>, request_id: &str) -> Response<Body> {
        let now = Instant::now();
        let state = self.lock();
        let found = state.records.iter().find(|stored| {
            stored.record.contact_id == query.contact_id
                && stored.record.instance_id == query.instance_id
                && stored.visible_at <= now
        });
        let Some(stored) = found else {
            return ApiError::new(
                StatusCode::NOT_FOUND,
                "ContactNotExist",
                "The specified contact does not exist.",
            )
            .into_response(request_id);
        };
        let r = &stored.record;
        let start_ms = r.start_time.as_millisecond();
        let released_ms = start_ms.saturating_add(i64::from(r.duration_s) * 1000);
        let event = |at_ms: i64, event: &'static str, duration: u32| EventDetail {
            time_stamp: at_ms.to_string(),
            event,
            agent_name: "",
            status: "",
            call_mode: "",
            duration,
        };
        let body = EventsBody {
            data: EventsData {
                caller: &r.calling_number,
                callee: &r.called_number,
                call_type: OUTBOUND,
                start_time: start_ms.to_string(),
                release_agent: &r.agent_names,
                release_reason: &r.release_reason,
                events: EventList {
                    call_event_detail: vec![
                        event(start_ms, "Dialing", 0),
                        event(released_ms, "Released", r.duration_s),
                    ],
                },
            },
        };
        answer::success(request_id, &body)
    }
}

/// `at` moved by `by`. Only ever applied to recent instants and minutes, so it cannot leave
/// jiff's range; should it, staying put is a better answer than a panic.
fn shift(at: Timestamp, by: SignedDuration) -> Timestamp {
    at.checked_add(by).unwrap_or(at)
}

/// The release reason a call with this disposition ends with, unless its script names one.
fn release_reason_for(disposition: &str) -> &'static str {
    match disposition {
        SUCCESS => "NormalClearing",
        "Busy" | "UserBusy" => "UserBusy",
        "Failed" | "Failure" => "CallRejected",
        _ => "NoAnswer",
    }
}

fn take_fault(queue: &mut VecDeque<(Fault, u32)>) -> Option<Fault> {
    let (fault, left) = queue.front_mut()?;
    let fault = *fault;
    *left -= 1;
    if *left == 0 {
        queue.pop_front();
    }
    Some(fault)
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ListBody<'a> {
    call_detail_records: DetailRecords<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DetailRecords<'a> {
    total_count: usize,
    page_number: u32,
    page_size: u32,
    list: DetailList<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DetailList<'a> {
    call_detail_record: Vec<DetailRecord<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DetailRecord<'a> {
    contact_id: &'a str,
    start_time: i64,
    duration: u32,
    contact_type: &'static str,
    contact_disposition: &'a str,
    calling_number: &'a str,
    called_number: &'a str,
    agent_names: &'a str,
    skill_group_names: &'a str,
    instance_id: &'a str,
    agents: Agents<'a>,
}

impl<'a> DetailRecord<'a> {
    fn of(stored: &'a Stored) -> Self {
        let r = &stored.record;
        let start_time = r.start_time.as_millisecond();
        // One agent took the call when there is an agent name; the record has no separate id
        // for it, so the name doubles as the id.
        let call_detail_agent = if r.agent_names.is_empty() {
            Vec::new()
        } else {
            vec![DetailAgent {
                agent_id: &r.agent_names,
                agent_name: &r.agent_names,
                skill_group_name: "",
                queue_time: 0,
                ring_time: 4,
                start_time,
                talk_time: r.duration_s,
                hold_time: 0,
                work_time: 0,
            }]
        };
        Self {
            contact_id: &r.contact_id,
            start_time,
            duration: r.duration_s,
            contact_type: OUTBOUND,
            contact_disposition: &r.disposition,
            calling_number: &r.calling_number,
            called_number: &r.called_number,
            agent_names: &r.agent_names,
            skill_group_names: &stored.skill_group_names,
            instance_id: &r.instance_id,
            agents: Agents { call_detail_agent },
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Agents<'a> {
    call_detail_agent: Vec<DetailAgent<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DetailAgent<'a> {
    agent_id: &'a str,
    agent_name: &'a str,
    skill_group_name: &'a str,
    queue_time: u32,
    ring_time: u32,
    start_time: i64,
    talk_time: u32,
    hold_time: u32,
    work_time: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct EventsBody<'a> {
    data: EventsData<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct EventsData<'a> {
    caller: &'a str,
    callee: &'a str,
    call_type: &'static str,
    start_time: String,
    release_agent: &'a str,
    release_reason: &'a str,
    events: EventList,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct EventList {
    call_event_detail: Vec<EventDetail>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct EventDetail {
    time_stamp: String,
    event: &'static str,
    agent_name: &'static str,
    status: &'static str,
    call_mode: &'static str,
    duration: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(per_second: u32) -> CallRecords {
        CallRecords::new(&SimConfig {
            record_queries_per_second: per_second,
            ..SimConfig::default()
        })
    }

    #[test]
    fn the_pace_window_rolls_and_counts_only_admitted_queries() {
        let records = records(2);
        let mut state = State::default();
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        assert!(records.admit(&mut state, "a", ms(0)));
        assert!(records.admit(&mut state, "a", ms(400)));
        assert!(!records.admit(&mut state, "a", ms(500)));
        assert!(records.admit(&mut state, "b", ms(500)));
        // The first query left the window; the refused one never counted.
        assert!(records.admit(&mut state, "a", ms(1000)));
        assert!(!records.admit(&mut state, "a", ms(1399)));
        assert!(records.admit(&mut state, "a", ms(1400)));
    }

    #[test]
    fn no_pace_limit_at_zero() {
        let records = records(0);
        let mut state = State::default();
        let now = Instant::now();
        assert!((0..1000).all(|_| records.admit(&mut state, "a", now)));
    }

    #[test]
    fn query_faults_are_used_in_order() {
        let mut queue = VecDeque::from([(Fault::Throttle, 2), (Fault::InternalError, 1)]);
        assert_eq!(take_fault(&mut queue), Some(Fault::Throttle));
        assert_eq!(take_fault(&mut queue), Some(Fault::Throttle));
        assert_eq!(take_fault(&mut queue), Some(Fault::InternalError));
        assert_eq!(take_fault(&mut queue), None);
    }

    #[test]
    fn list_parameters() {
        let base = [
            ("InstanceId", "i"),
            ("PageNumber", "2"),
            ("PageSize", "100"),
            ("StartTime", "1765000000000"),
        ];
        let params = Params::of(&base);
        let query = ListQuery::parse(&params).unwrap();
        assert_eq!((query.page_number, query.page_size), (2, 100));
        assert_eq!(
            (query.start_ms, query.stop_ms),
            (Some(1_765_000_000_000), None)
        );
        let code = |key: &str, value: &str| {
            let mut pairs = base.to_vec();
            pairs.retain(|(k, _)| *k != key);
            pairs.push((key, value));
            ListQuery::parse(&Params::of(&pairs)).unwrap_err().code
        };
        assert_eq!(code("PageSize", "101"), "InvalidParameter.PageSize");
        assert_eq!(code("PageSize", ""), "MissingPageSize");
        assert_eq!(code("PageNumber", "1.5"), "InvalidParameter.PageNumber");
        assert_eq!(code("StopTime", "1e12"), "InvalidParameter.StopTime");
    }

    #[test]
    fn scripts_default_to_an_answered_call() {
        let script = CallScript::default();
        assert_eq!(
            (script.disposition.as_str(), script.duration_s),
            ("Success", 37)
        );
        assert!(script.recorded && script.appears_after.is_none());
        assert_eq!(CallScript::disposition("NoAnswer").duration_s, 0);
        assert_eq!(release_reason_for("Success"), "NormalClearing");
        assert_eq!(release_reason_for("NoAnswer"), "NoAnswer");
    }
}
