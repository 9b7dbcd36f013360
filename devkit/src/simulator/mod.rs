//! CCC simulator: a stand-in for the Alibaba Cloud Call Center gateway, for `DialEx` and the
//! call-record actions `ListCallDetailRecords` and `ListCallEventDetailByContactId`.
//!
//! The real gateway cannot be reached from development machines or CI, yet the worker's most
//! important promises (never ring a customer twice, never lose a request) hinge on how the
//! gateway reacts to signatures, stale timestamps, reused nonces and faults. This module owns a
//! small HTTP/1.1 server that answers these actions the way the gateway does, so tests, the
//! demo and the benchmark can run the real client against something that is just as strict.
//!
//! What it owns:
//!
//! - `params`: decoding query strings and `application/x-www-form-urlencoded` bodies into one
//!   sorted parameter list (strictly: bad escapes, bad UTF-8 and duplicates are errors).
//! - `verify`: signature v1 (HMAC-SHA1) canonicalisation and verification, written
//!   independently of the crate's signer on purpose: a shared bug in one canonicaliser used on
//!   both sides would make every test pass against a gateway that would reject every call.
//! - `nonces`: the replay guard, which remembers nonces of authenticated requests.
//! - `faults`: per-callee fault queues that tests fill through [`Simulator::inject`] or
//!   `POST /__sim/faults`.
//! - `dial_log`: the record of every executed dial, kept in memory, served at
//!   `GET /__sim/dials` and optionally appended to a JSON-lines file.
//! - `records`: the call records of placed calls (late, sometimes missing, beside older calls to
//!   the same number), per-callee [`CallScript`]s, the record queries' log, faults and pace.
//! - `gateway`: the order of checks the gateway applies, and dispatching by `Action`.
//! - `server`: sockets, connections, routing and shutdown ([`Simulator`]).
//!
//! # Answers
//!
//! `GET /` (everything in the query) and `POST /` (some parameters in the query, the rest in an
//! `application/x-www-form-urlencoded` body) are checked in the gateway's order; the first
//! failing step answers with a JSON body `{"RequestId","HostId","Code","Message","Recommend"}`:
//!
//! | step | check | HTTP | `Code` |
//! |---|---|---|---|
//! | 0 | the gateway is down ([`Simulator::set_down`]), whatever the action | 503 | `ServiceUnavailable` |
//! | 0 | `DialEx` only: a [`Fault::LostBeforeArrival`] queued for the `Callee` | no answer | |
//! | 1 | `AccessKeyId`, `Signature`, `SignatureMethod`, `SignatureVersion`, `SignatureNonce`, `Timestamp` present and not empty | 400 | `Missing<Param>` |
//! | 2 | `SignatureMethod` is `HMAC-SHA1`, `SignatureVersion` is `1.0` | 400 | `InvalidParameter.SignatureMethod` / `InvalidParameter.SignatureVersion` |
//! | 3 | `AccessKeyId` known | 404 | `InvalidAccessKeyId.NotFound` |
//! | 4 | signature matches | 400 | `SignatureDoesNotMatch` (message ends with the server's string to sign) |
//! | 5 | `Timestamp` is `YYYY-MM-DDThh:mm:ssZ` and within the window | 400 | `InvalidTimeStamp.Format` / `InvalidTimeStamp.Expired` |
//! | 6 | `SignatureNonce` not seen before (then remembered) | 400 | `SignatureNonceUsed` |
//! | 7 | `Action` is `DialEx`, `ListCallDetailRecords` or `ListCallEventDetailByContactId`; `Version` is `2017-07-05` | 400 / 404 / 400 | `MissingAction`, `MissingVersion` / `InvalidAction.NotFound` / `InvalidVersion` |
//! | 8 | `DialEx`: `InstanceId`, `Caller`, `Callee`, `AnswerMode`, `RoutPoint` present; `Caller`/`Callee` digits; `AnswerMode` 0/1/2; agent `RoutPoint` is `ram_id@domain` | 400 | `Missing<Param>` / `InvalidParameter.<Param>` |
//! | 8 | `ListCallDetailRecords`: `InstanceId`, `PageNumber` (integer ≥ 1), `PageSize` (integer 1-100) present; `StartTime`/`StopTime`, if given, integers (epoch ms) | 400 | `Missing<Param>` / `InvalidParameter.<Param>` |
//! | 8 | `ListCallEventDetailByContactId`: `InstanceId`, `ContactId` present | 400 | `Missing<Param>` |
//! | 9 | `DialEx`: an injected fault for the `Callee`, if any | see [`Fault`] | |
//! | 9 | `ListCallDetailRecords`: at most [`SimConfig::record_queries_per_second`] answered per instance in any rolling second | 400 | `Throttling.User` |
//! | 10 | `ListCallDetailRecords`: an injected query fault ([`Simulator::inject_query_fault`]), if any | 400 / 503 / 500 | `Throttling.User` / `ServiceUnavailable` / `InternalError` |
//! | 9 | `ListCallEventDetailByContactId`: the contact exists in the instance and its record is visible | 404 | `ContactNotExist` |
//!
//! Before step 1: a body over 64 KiB is 413 `InvalidParameter.BodyTooLarge`; a malformed
//! escape, bad UTF-8, a parameter given twice or a non-form POST body is 400 `InvalidParameter`;
//! another method on `/` is 405 `UnsupportedHTTPMethod`; another path is 404
//! `InvalidAction.NotFound`.
//!
//! Success is HTTP 200 with the body of the `DialEx` documentation's JSON example plus
//! `StatusDesc` and `Message`: `{"TimeStamp":"<epoch ms of the dial>","StatusCode":200,"StatusDesc":"Okay",
//! "HttpStatusCode":200,"RequestId":"<UUID, upper case>","TaskId":"<digits>","Success":true,
//! "Code":"OK","Message":""}`. Every answer carries its `RequestId` in `x-acs-request-id` too.
//!
//! # Call records
//!
//! Every executed dial creates a [`CallRecord`] (`ContactId` `job-<digits>`, `StartTime` 300 ms
//! after the dial's `TimeStamp`, outcome from the callee's [`CallScript`], `Success` and 37 s by
//! default), visible [`SimConfig::call_record_delay`] after the dial; the first dial to a number
//! in an instance also creates an older `NoAnswer` record for it, ten minutes earlier and
//! visible at once. `ListCallDetailRecords` answers, newest `StartTime` first and paged:
//!
//! ```json
//! {"RequestId":"...","Success":true,"Code":"OK","Message":"","HttpStatusCode":200,
//!  "CallDetailRecords":{"TotalCount":1,"PageNumber":1,"PageSize":10,"List":{"CallDetailRecord":[
//!   {"ContactId":"job-1","StartTime":1765000000000,"Duration":37,"ContactType":"Outbound",
//!    "ContactDisposition":"Success","CallingNumber":"02285196281","CalledNumber":"15732036617",
//!    "AgentNames":"agent1","SkillGroupNames":"","InstanceId":"inst-1",
//!    "Agents":{"CallDetailAgent":[{"AgentId":"agent1","AgentName":"agent1","SkillGroupName":"",
//!     "QueueTime":0,"RingTime":4,"StartTime":1765000000000,"TalkTime":37,"HoldTime":0,
//!     "WorkTime":0}]}}]}}}
//! ```
//!
//! `ListCallEventDetailByContactId` answers with the same envelope and
//! `"Data":{"Caller","Callee","CallType":"Outbound","StartTime":"<ms>","ReleaseAgent",
//! "ReleaseReason","Events":{"CallEventDetail":[<Dialing at the start>,<Released at the end>]}}`,
//! each event `{"TimeStamp":"<ms>","Event","AgentName":"","Status":"","CallMode":"","Duration"}`.
//!
//! Control plane (unauthenticated): `GET /__sim/dials` lists executed dials as [`DialRecord`]s;
//! `POST /__sim/faults` with `{"callee":"...","fault":"throttle","times":1}` does what
//! [`Simulator::inject`] does (`times` defaults to 1).

mod answer;
mod dial_log;
mod faults;
mod gateway;
mod keys;
mod nonces;
mod params;
mod records;
mod server;
mod sts;
mod verify;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

pub use records::{CallRecord, CallScript, RecordQuery};
pub use server::Simulator;
pub use sts::{Issued, StsConfig};

/// AccessKeyId the simulator accepts out of the box (see [`SimConfig::default`]).
pub const DEMO_ACCESS_KEY_ID: &str = "sim-demo-access-key-id";

/// AccessKeySecret paired with [`DEMO_ACCESS_KEY_ID`]. Not a secret: it only opens the simulator.
pub const DEMO_ACCESS_KEY_SECRET: &str = "sim-demo-access-key-secret";

/// How the simulator behaves; [`SimConfig::default`] mirrors the real gateway's limits.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Accepted credentials: AccessKeyId and its AccessKeySecret. Any other AccessKeyId is
    /// answered with `InvalidAccessKeyId.NotFound`.
    pub credentials: Vec<(String, SecretString)>,
    /// How far `Timestamp` may be from the simulator's clock, either way (the gateway uses 15
    /// minutes).
    pub timestamp_window: Duration,
    /// Time every executed dial takes before the answer is sent (0 by default).
    pub latency: Duration,
    /// How long [`Fault::Slow`] holds the answer back after executing the dial (30 s by
    /// default, i.e. past any sensible client timeout).
    pub slow_delay: Duration,
    /// Where to append executed dials as JSON lines, if anywhere.
    pub dial_log: Option<PathBuf>,
    /// The STS under `/sts/`: the role it lets callers assume, and for how long.
    pub sts: StsConfig,
    /// How long after a call its record becomes visible to `ListCallDetailRecords` (2 s by
    /// default), unless the callee's [`CallScript::appears_after`] says otherwise.
    pub call_record_delay: Duration,
    /// How many `ListCallDetailRecords` requests per instance the gateway answers in any
    /// rolling second (20 by default); more are refused with `Throttling.User`. 0 lifts the
    /// limit.
    pub record_queries_per_second: u32,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            credentials: vec![(
                DEMO_ACCESS_KEY_ID.to_owned(),
                SecretString::from(DEMO_ACCESS_KEY_SECRET),
            )],
            timestamp_window: Duration::from_secs(15 * 60),
            latency: Duration::ZERO,
            slow_delay: Duration::from_secs(30),
            dial_log: None,
            sts: StsConfig::default(),
            call_record_delay: Duration::from_secs(2),
            record_queries_per_second: 20,
        }
    }
}

/// A failure the simulator can be told to produce for requests to one callee.
///
/// Faults are consumed only by requests that authenticated and passed `DialEx` validation, so a
/// test's bad request never eats a fault meant for the next good one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// HTTP 400, `Throttling.User`: flow control; the dial is not executed.
    Throttle,
    /// HTTP 503, `ServiceUnavailable`; the dial is not executed.
    Unavailable,
    /// HTTP 500, `InternalError`; the dial is not executed.
    InternalError,
    /// HTTP 400, `InvalidParameter`: a business parameter the call centre does not accept
    /// (say, a contact flow that does not exist in the instance); the dial is not executed.
    InvalidParameter,
    /// HTTP 403, `Forbidden.RAM`: the AccessKey may not call this instance (the worker's own
    /// probe, which names no real instance, still passes); the dial is not executed.
    Forbidden,
    /// HTTP 502 with an empty body, as a load balancer in front of the gateway would answer;
    /// the dial is not executed (but the client cannot know that).
    BadGatewayNoBody,
    /// The dial is executed and logged, but the answer comes only after
    /// [`SimConfig::slow_delay`], past the client's timeout.
    Slow,
    /// The dial is executed and logged, then the connection is dropped without an answer.
    ResetAfterExecute,
    /// The request is lost on the way: the connection is dropped before the gateway sees it
    /// (nothing authenticated, the nonce not remembered, nothing executed). A replay of the
    /// identical request is then executed normally.
    LostBeforeArrival,
}

impl Fault {
    /// Whether the gateway places the call before the fault shows, i.e. whether a client that
    /// sees this fault must treat the outcome as "maybe dialed".
    pub fn executes_dial(self) -> bool {
        matches!(self, Fault::Slow | Fault::ResetAfterExecute)
    }
}

/// One dial the simulator executed: what the gateway would have placed as a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialRecord {
    /// `TaskId` returned (or, for faults that lose the answer, that would have been returned).
    pub task_id: String,
    /// `InstanceId` parameter.
    pub instance_id: String,
    /// `Caller` parameter.
    pub caller: String,
    /// `Callee` parameter.
    pub callee: String,
    /// `AnswerMode` parameter (0 ivr, 1 agent, 2 skill group).
    pub answer_mode: u8,
    /// `RoutPoint` parameter.
    pub rout_point: String,
    /// `Provider` parameter, when given and not empty.
    pub provider: Option<String>,
    /// `SignatureNonce` of the request that placed the call.
    pub nonce: String,
    /// `RequestId` of the answer.
    pub aliyun_request_id: String,
    /// When the dial began executing.
    pub started_at: jiff::Timestamp,
    /// When the simulated dial call finished (after [`SimConfig::latency`]); the success
    /// answer's `TimeStamp` is this instant in milliseconds.
    pub ended_at: jiff::Timestamp,
}
