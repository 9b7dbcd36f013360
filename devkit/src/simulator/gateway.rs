//! What the gateway does with one request, in the gateway's order of checks, and which action
//! handles it: `DialEx` here, the call-record actions in `records`.
//!
//! The steps, their HTTP statuses and codes are tabled in the simulator's module docs.
//!
//! Steps 1-5 authenticate the request whatever its action; only an authenticated request
//! records its nonce, and every authenticated one does, even if it then fails validation or
//! meets a fault.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hyper::{Response, StatusCode};
use jiff::Timestamp;
use tokio_util::sync::CancellationToken;

use super::answer::{self, ApiError, Body};
use super::dial_log::DialLog;
use super::faults::FaultQueues;
use super::keys::Keys;
use super::nonces::NonceCache;
use super::params::Params;
use super::records::{CallRecords, EventsQuery, ListQuery};
use super::{DialRecord, Fault, SimConfig};

/// What to do with the connection after handling a request.
pub(crate) enum Reply {
    /// Send this answer.
    Answer(Response<Body>),
    /// Close the connection without answering (the client sees a reset or early close).
    Drop,
}

/// The gateway's state: credentials, replay guard, faults, the dial log and the call records.
pub(crate) struct Gateway {
    /// Shared with STS, which adds the temporary keys it issues.
    keys: Arc<Keys>,
    latency: Duration,
    slow_delay: Duration,
    nonces: Mutex<NonceCache>,
    faults: Mutex<FaultQueues>,
    /// Every request is answered 503 before anything is checked: the gateway is down.
    down: AtomicBool,
    log: DialLog,
    records: CallRecords,
    task_id_prefix: i64,
    shutdown: CancellationToken,
}

/// One authenticated request whose action and parameters are valid.
#[derive(Debug)]
enum Admitted<'a> {
    DialEx(DialEx<'a>),
    ListCallDetailRecords(ListQuery<'a>),
    ListCallEventDetailByContactId(EventsQuery<'a>),
}

/// The validated business parameters of one `DialEx` call.
#[derive(Debug)]
struct DialEx<'a> {
    instance_id: &'a str,
    caller: &'a str,
    callee: &'a str,
    answer_mode: u8,
    rout_point: &'a str,
    provider: Option<&'a str>,
    nonce: &'a str,
}

/// Process-wide, so two simulators in one test process never hand out the same `TaskId`.
static NEXT_TASK: AtomicU64 = AtomicU64::new(0);

impl Gateway {
    pub(crate) async fn new(
        config: &SimConfig,
        keys: Arc<Keys>,
        shutdown: CancellationToken,
    ) -> io::Result<Self> {
        Ok(Self {
            keys,
            latency: config.latency,
            slow_delay: config.slow_delay,
            nonces: Mutex::new(NonceCache::new(config.timestamp_window, Instant::now())),
            faults: Mutex::new(FaultQueues::default()),
            down: AtomicBool::new(false),
            log: DialLog::open(config.dial_log.as_deref()).await?,
            records: CallRecords::new(config),
            task_id_prefix: Timestamp::now().as_millisecond(),
            shutdown,
        })
    }

    pub(crate) fn log(&self) -> &DialLog {
        &self.log
    }

    pub(crate) fn records(&self) -> &CallRecords {
        &self.records
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    pub(crate) fn inject(&self, callee: &str, fault: Fault, times: u32) {
        lock(&self.faults).inject(callee, fault, times);
    }

    pub(crate) fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Handles one gateway request whose parameters have been decoded.
    pub(crate) async fn handle(self: &Arc<Self>, method: &str, params: &Params) -> Reply {
        let request_id = answer::new_request_id();
        if self.down.load(Ordering::SeqCst) {
            // In front of everything, as a gateway that is down answers: nothing is
            // authenticated, no nonce remembered, nothing executed.
            let error = ApiError::service_unavailable();
            return Reply::Answer(error.into_response(&request_id));
        }
        // Losing a request is a fault of the way to `DialEx` only, keyed by its `Callee`.
        if params.get("Action") == Some("DialEx")
            && let Some(callee) = params.get("Callee")
            && lock(&self.faults).take_if(callee, Fault::LostBeforeArrival)
        {
            tracing::debug!("simulator losing a request before it arrives");
            return Reply::Drop;
        }
        match self.admit(method, params) {
            Ok(Admitted::DialEx(dial)) => self.execute(dial, request_id).await,
            Ok(Admitted::ListCallDetailRecords(query)) => {
                Reply::Answer(self.records.list(&query, &request_id))
            }
            Ok(Admitted::ListCallEventDetailByContactId(query)) => {
                Reply::Answer(self.records.events(&query, &request_id))
            }
            Err(error) => {
                tracing::debug!(code = %error.code, "simulator rejected a request");
                Reply::Answer(error.into_response(&request_id))
            }
        }
    }

    /// Steps 1-8: authenticate, guard against replays, validate.
    fn admit<'p>(&self, method: &str, params: &'p Params) -> Result<Admitted<'p>, ApiError> {
        let nonce = self.keys.authenticate(method, params)?;
        if !lock(&self.nonces).check_and_insert(nonce, Instant::now()) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "SignatureNonceUsed",
                "Specified signature nonce was used already.",
            ));
        }
        validate(params, nonce)
    }

    /// Step 9 and the dial itself.
    async fn execute(self: &Arc<Self>, dial: DialEx<'_>, request_id: String) -> Reply {
        let fault = lock(&self.faults).take(dial.callee);
        if let Some(fault) = fault {
            tracing::debug!(?fault, "simulator injecting fault");
        }
        let refuse = |status, code, message| {
            Reply::Answer(ApiError::new(status, code, message).into_response(&request_id))
        };
        match fault {
            Some(Fault::Throttle) => {
                return Reply::Answer(ApiError::throttling().into_response(&request_id));
            }
            Some(Fault::Unavailable) => {
                return Reply::Answer(ApiError::service_unavailable().into_response(&request_id));
            }
            Some(Fault::InternalError) => {
                return Reply::Answer(ApiError::internal_error().into_response(&request_id));
            }
            Some(Fault::InvalidParameter) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "InvalidParameter",
                    "The specified parameter RoutPoint is not valid.",
                );
            }
            Some(Fault::Forbidden) => {
                return refuse(
                    StatusCode::FORBIDDEN,
                    "Forbidden.RAM",
                    "User not authorized to operate on the specified resource.",
                );
            }
            Some(Fault::BadGatewayNoBody) => {
                return Reply::Answer(answer::empty(StatusCode::BAD_GATEWAY));
            }
            // Taken before authentication; only reachable if queued behind another fault.
            Some(Fault::LostBeforeArrival) => return Reply::Drop,
            Some(Fault::Slow | Fault::ResetAfterExecute) | None => {}
        }

        let Some((task_id, placed_at)) = self.place_call(&dial, &request_id).await else {
            // Shutting down mid-call: nothing sensible to answer.
            return Reply::Drop;
        };
        match fault {
            Some(Fault::ResetAfterExecute) => Reply::Drop,
            Some(Fault::Slow) => {
                tokio::select! {
                    () = tokio::time::sleep(self.slow_delay) => {
                        Reply::Answer(answer::dial_ok(&request_id, &task_id, placed_at))
                    }
                    () = self.shutdown.cancelled() => Reply::Drop,
                }
            }
            _ => Reply::Answer(answer::dial_ok(&request_id, &task_id, placed_at)),
        }
    }

    /// Places the call: logs it once it has taken `latency`. Returns the `TaskId` and when the
    /// call finished (the record's `ended_at`), or `None` if the simulator shut down before
    /// the call finished.
    async fn place_call(
        self: &Arc<Self>,
        dial: &DialEx<'_>,
        request_id: &str,
    ) -> Option<(String, Timestamp)> {
        let started_at = Timestamp::now();
        let task_id = format!(
            "{}{:05}",
            self.task_id_prefix,
            NEXT_TASK.fetch_add(1, Ordering::Relaxed)
        );
        let mut record = DialRecord {
            task_id: task_id.clone(),
            instance_id: dial.instance_id.to_owned(),
            caller: dial.caller.to_owned(),
            callee: dial.callee.to_owned(),
            answer_mode: dial.answer_mode,
            rout_point: dial.rout_point.to_owned(),
            provider: dial.provider.map(str::to_owned),
            nonce: dial.nonce.to_owned(),
            aliyun_request_id: request_id.to_owned(),
            started_at,
            ended_at: started_at,
        };
        if self.latency.is_zero() {
            self.records.dialed(&record);
            self.log.record(record);
            return Some((task_id, started_at));
        }
        // A call in progress does not stop because the HTTP client hung up, so the call runs in
        // its own task: if the connection goes away (client timeout) and hyper drops this
        // future, the dial is still completed and logged, as the real call centre would.
        let this = Arc::clone(self);
        let call = tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(this.latency) => {}
                () = this.shutdown.cancelled() => return None,
            }
            let ended_at = Timestamp::now();
            record.ended_at = ended_at;
            this.records.dialed(&record);
            this.log.record(record);
            Some(ended_at)
        });
        match call.await {
            Ok(Some(ended_at)) => Some((task_id, ended_at)),
            _ => None,
        }
    }
}

/// Steps 7 and 8: the action, the API version, and the action's own parameters.
fn validate<'p>(params: &'p Params, nonce: &'p str) -> Result<Admitted<'p>, ApiError> {
    let required = |name: &str| {
        params
            .non_empty(name)
            .ok_or_else(|| ApiError::missing(name))
    };
    let action = required("Action")?;
    if !matches!(
        action,
        "DialEx" | "ListCallDetailRecords" | "ListCallEventDetailByContactId"
    ) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "InvalidAction.NotFound",
            "Specified api is not found, please check your url and method.",
        ));
    }
    if required("Version")? != "2017-07-05" {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "InvalidVersion",
            "Specified parameter Version is not valid.",
        ));
    }
    match action {
        "ListCallDetailRecords" => ListQuery::parse(params).map(Admitted::ListCallDetailRecords),
        "ListCallEventDetailByContactId" => {
            EventsQuery::parse(params).map(Admitted::ListCallEventDetailByContactId)
        }
        _ => validate_dial(params, nonce).map(Admitted::DialEx),
    }
}

/// Step 8 for `DialEx`.
fn validate_dial<'p>(params: &'p Params, nonce: &'p str) -> Result<DialEx<'p>, ApiError> {
    let required = |name: &str| {
        params
            .non_empty(name)
            .ok_or_else(|| ApiError::missing(name))
    };

    let instance_id = required("InstanceId")?;
    let caller = required("Caller")?;
    let callee = required("Callee")?;
    let answer_mode = required("AnswerMode")?;
    let rout_point = required("RoutPoint")?;

    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(caller) {
        return Err(ApiError::invalid("Caller"));
    }
    if !all_digits(callee) {
        return Err(ApiError::invalid("Callee"));
    }
    let answer_mode = match answer_mode {
        "0" => 0,
        "1" => 1,
        "2" => 2,
        _ => return Err(ApiError::invalid("AnswerMode")),
    };
    if answer_mode == 1 && !is_agent_address(rout_point) {
        return Err(ApiError::invalid("RoutPoint"));
    }

    Ok(DialEx {
        instance_id,
        caller,
        callee,
        answer_mode,
        rout_point,
        provider: params.non_empty("Provider"),
        nonce,
    })
}

/// `ram_id@domain`: one `@`, something on both sides, no whitespace. The domain is
/// case-sensitive at the gateway, so it is not normalised here either.
fn is_agent_address(rout_point: &str) -> bool {
    match rout_point.split_once('@') {
        Some((ram_id, domain)) => {
            !ram_id.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !rout_point.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical section
/// is a single insert or removal), so poisoning is not a reason to stop serving.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Vec<(&'static str, &'static str)> {
        vec![
            ("Action", "DialEx"),
            ("Version", "2017-07-05"),
            ("InstanceId", "inst"),
            ("Caller", "02285196281"),
            ("Callee", "15732036617"),
            ("AnswerMode", "1"),
            ("RoutPoint", "agent@example"),
        ]
    }

    fn code_for(change: impl FnOnce(&mut Vec<(&'static str, &'static str)>)) -> String {
        let mut p = valid();
        change(&mut p);
        match validate(&Params::of(&p), "nonce") {
            Ok(_) => "OK".to_owned(),
            Err(e) => e.code.into_owned(),
        }
    }

    fn set(p: &mut Vec<(&'static str, &'static str)>, key: &'static str, value: &'static str) {
        p.retain(|(k, _)| *k != key);
        p.push((key, value));
    }

    #[test]
    fn validation_codes() {
        assert_eq!(code_for(|_| {}), "OK");
        assert_eq!(
            code_for(|p| set(p, "Action", "Dial")),
            "InvalidAction.NotFound"
        );
        assert_eq!(
            code_for(|p| p.retain(|(k, _)| *k != "Action")),
            "MissingAction"
        );
        assert_eq!(
            code_for(|p| set(p, "Version", "2020-01-01")),
            "InvalidVersion"
        );
        assert_eq!(code_for(|p| set(p, "InstanceId", "")), "MissingInstanceId");
        assert_eq!(
            code_for(|p| p.retain(|(k, _)| *k != "RoutPoint")),
            "MissingRoutPoint"
        );
        assert_eq!(
            code_for(|p| set(p, "Caller", "+8602285196281")),
            "InvalidParameter.Caller"
        );
        assert_eq!(
            code_for(|p| set(p, "Callee", "157 3203 6617")),
            "InvalidParameter.Callee"
        );
        assert_eq!(
            code_for(|p| set(p, "AnswerMode", "3")),
            "InvalidParameter.AnswerMode"
        );
        assert_eq!(
            code_for(|p| set(p, "AnswerMode", "agent")),
            "InvalidParameter.AnswerMode"
        );
        assert_eq!(
            code_for(|p| set(p, "RoutPoint", "paEF_1GAQXXJ")),
            "InvalidParameter.RoutPoint"
        );
        assert_eq!(
            code_for(|p| set(p, "RoutPoint", "a@b@c")),
            "InvalidParameter.RoutPoint"
        );
        // Contact flow ids and skill group queues are free-form.
        assert_eq!(
            code_for(|p| {
                set(p, "AnswerMode", "0");
                set(p, "RoutPoint", "paEF_1GAQXXJ");
            }),
            "OK"
        );
    }
}
