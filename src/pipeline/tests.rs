//! Every exit of the pipeline's decision, without a broker: the embedded store in a temp dir
//! (behind a wrapper that can fail on demand), a scripted CCC client and a recording broker.
//! Each test asserts the step, what the broker was told, and what is held or given back.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};

use super::*;
use crate::amqp::publisher::{
    ATTEMPTS_HEADER, BOOKING_HEADER, DEFERRED_HEADER, DUE_HEADER, NOT_BEFORE_HEADER,
};
use crate::amqp::{DELIVERY_COUNT_HEADER, PublishError};
use crate::ccc::{ApiError, DialAccepted, DialParams};
use crate::config::Settings;
use crate::defer::Tier;
use crate::gates::dnc::DncSources;
use crate::gates::limits::{LimitRules, LocalLimiter};
use crate::store::embedded::EmbeddedStore;
use crate::store::{CalleeState, Claim, Cooldown, DialRecords, Recorded};

const INSTANCE: &str = "d278629c-c687-4aa3-b044-4fe9b012e7ef";
const CALLEE: &str = "13800000001";
const LISTED: &str = "13900000009";

// ---------------------------------------------------------------------------------------------
// The fixture: a scripted client, a store that fails on demand, a recording broker.

/// Answers `send` from a script (then accepts), and `probe` as told.
struct Scripted {
    answers: Mutex<VecDeque<Result<DialAccepted, DialFailure>>>,
    sends: AtomicU32,
    probe_fails: AtomicBool,
}

impl Scripted {
    fn new() -> Scripted {
        Scripted {
            answers: Mutex::new(VecDeque::new()),
            sends: AtomicU32::new(0),
            probe_fails: AtomicBool::new(false),
        }
    }

    fn then(&self, answer: Result<DialAccepted, DialFailure>) {
        self.answers.lock().unwrap().push_back(answer);
    }

    fn sends(&self) -> u32 {
        self.sends.load(Ordering::SeqCst)
    }
}

fn accepted(n: u32) -> DialAccepted {
    DialAccepted {
        task_id: format!("task-{n}"),
        request_id: format!("aliyun-{n}"),
        code: "OK".into(),
        message: Some("ok".into()),
        status_code: Some("200".into()),
        status_desc: Some("success".into()),
        http_status_code: Some(200),
        time_stamp: None,
    }
}

fn api_error(http_status: u16, code: &str) -> DialFailure {
    DialFailure::Api(Box::new(ApiError {
        http_status,
        request_id: Some("aliyun-err".into()),
        host_id: None,
        code: code.into(),
        message: Some(format!("{code} happened")),
        recommend: None,
        status_code: None,
        status_desc: None,
    }))
}

impl CccClient for Scripted {
    type Signed = ();

    fn sign(&self, _params: &DialParams<'_>) {}

    async fn send(&self, _signed: &()) -> Result<DialAccepted, DialFailure> {
        let n = self.sends.fetch_add(1, Ordering::SeqCst) + 1;
        let next = self.answers.lock().unwrap().pop_front();
        next.unwrap_or_else(|| Ok(accepted(n)))
    }

    async fn probe(&self) -> Result<(), DialFailure> {
        if self.probe_fails.load(Ordering::SeqCst) {
            Err(api_error(400, "SignatureDoesNotMatch"))
        } else {
            Ok(())
        }
    }
}

/// The embedded store, with faults on demand.
struct Faulty {
    inner: EmbeddedStore,
    /// The operation that fails (`claim`, `record`, `cooldown`, `daily`), with what.
    fails: Mutex<Option<(&'static str, StoreError)>>,
    /// How many more times the failing operation fails (`u32::MAX`: until cleared).
    times: AtomicU32,
    /// `check` fails: the store is down for everyone.
    down: AtomicBool,
}

impl Faulty {
    fn fail(&self, op: &'static str, error: StoreError, times: u32) {
        *self.fails.lock().unwrap() = Some((op, error));
        self.times.store(times, Ordering::SeqCst);
    }

    fn fault(&self, op: &str) -> Result<(), StoreError> {
        let fails = self.fails.lock().unwrap();
        match &*fails {
            Some((failing, error)) if *failing == op => {
                let left = self.times.load(Ordering::SeqCst);
                if left == 0 {
                    return Ok(());
                }
                if left != u32::MAX {
                    self.times.store(left - 1, Ordering::SeqCst);
                }
                Err(error.clone())
            }
            _ => Ok(()),
        }
    }
}

impl DialRecords for Faulty {
    async fn claim(&self, request_id: &str, fingerprint: &str) -> Result<Claim, StoreError> {
        self.fault("claim")?;
        self.inner.claim(request_id, fingerprint).await
    }

    async fn record(
        &self,
        request_id: &str,
        token: &ClaimToken,
        event: &[u8],
    ) -> Result<Recorded, StoreError> {
        self.fault("record")?;
        self.inner.record(request_id, token, event).await
    }

    async fn release(&self, request_id: &str, token: &ClaimToken) -> Result<(), StoreError> {
        self.fault("release")?;
        self.inner.release(request_id, token).await
    }

    async fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(backend_error());
        }
        self.inner.check().await
    }
}

impl CalleeState for Faulty {
    async fn cooldown_acquire(
        &self,
        key: &str,
        request_id: &str,
        window: Duration,
    ) -> Result<Cooldown, StoreError> {
        self.fault("cooldown")?;
        self.inner.cooldown_acquire(key, request_id, window).await
    }

    async fn cooldown_dialed(
        &self,
        key: &str,
        request_id: &str,
        task_id: &str,
        window: Duration,
    ) -> Result<(), StoreError> {
        self.inner
            .cooldown_dialed(key, request_id, task_id, window)
            .await
    }

    async fn cooldown_release(&self, key: &str, request_id: &str) -> Result<(), StoreError> {
        self.inner.cooldown_release(key, request_id).await
    }

    async fn daily_reserve(&self, key: &str, day: &str, max: u32) -> Result<bool, StoreError> {
        self.fault("daily")?;
        self.inner.daily_reserve(key, day, max).await
    }

    async fn daily_release(&self, key: &str, day: &str) -> Result<(), StoreError> {
        self.inner.daily_release(key, day).await
    }
}

fn backend_error() -> StoreError {
    StoreError::Backend {
        backend: "test",
        message: "connection refused".into(),
    }
}

/// What the pipeline told the broker.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    Outcome {
        status: Status,
        code: Option<String>,
        task_id: Option<String>,
    },
    Defer {
        queue: String,
        reason: DeferReason,
        attempts: u32,
        not_before: Timestamp,
    },
    DeadLetter {
        reason: String,
    },
    GiveBack,
    FollowUp {
        queue: String,
        request_id: String,
        task_id: String,
    },
}

#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<Call>>,
    /// Every publish fails: the broker does not take them.
    refuses: AtomicBool,
    /// Publishes that go through before `refuses` is raised (0: no such limit).
    passes: AtomicU32,
}

impl Recorder {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    /// The next `n` publishes go through; every one after them fails.
    fn refuse_after(&self, n: u32) {
        self.passes.store(n + 1, Ordering::SeqCst);
    }

    fn log(&self, call: Call) -> Result<(), PublishError> {
        if self.passes.load(Ordering::SeqCst) > 0 && self.passes.fetch_sub(1, Ordering::SeqCst) == 1
        {
            self.refuses.store(true, Ordering::SeqCst);
        }
        if self.refuses.load(Ordering::SeqCst) {
            return Err(PublishError::NotConnected);
        }
        self.calls.lock().unwrap().push(call);
        Ok(())
    }
}

impl Broker for Recorder {
    async fn publish_outcome(
        &self,
        event: &OutcomeEvent,
        json: &[u8],
        _traceparent: Option<&str>,
    ) -> Result<(), PublishError> {
        // What goes on the wire is the event it claims to be.
        let wire: OutcomeEvent = serde_json::from_slice(json).expect("the event's JSON");
        assert_eq!(wire.event_id, event.event_id);
        self.log(Call::Outcome {
            status: event.status,
            code: event.code.clone(),
            task_id: event.task_id.clone(),
        })
    }

    async fn defer(
        &self,
        _incoming: &Incoming,
        tier: &Tier,
        deferral: &Deferral,
    ) -> Result<(), PublishError> {
        self.log(Call::Defer {
            queue: tier.queue.clone(),
            reason: deferral.reason,
            attempts: deferral.attempts,
            not_before: deferral.until,
        })
    }

    async fn follow_up(&self, job: &FollowupJob, tier: &Tier) -> Result<(), PublishError> {
        self.log(Call::FollowUp {
            queue: tier.queue.clone(),
            request_id: job.request_id.clone(),
            task_id: job.task_id.clone(),
        })
    }

    async fn dead_letter(
        &self,
        _incoming: &Incoming,
        reason: &str,
        _detail: &str,
    ) -> Result<(), PublishError> {
        self.log(Call::DeadLetter {
            reason: reason.to_owned(),
        })
    }

    async fn give_back(&self, _incoming: &Incoming) -> Result<(), PublishError> {
        self.log(Call::GiveBack)
    }

    fn check(&self) -> Result<(), PublishError> {
        if self.refuses.load(Ordering::SeqCst) {
            Err(PublishError::NotConnected)
        } else {
            Ok(())
        }
    }
}

/// A unique directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Fixture {
    pipeline: Pipeline<Scripted, Faulty, LocalLimiter, Recorder>,
    _dir: TempDir,
}

impl std::ops::Deref for Fixture {
    type Target = Pipeline<Scripted, Faulty, LocalLimiter, Recorder>;
    fn deref(&self) -> &Self::Target {
        &self.pipeline
    }
}

/// The defaults, always open, with quick retries; `tweak` adjusts them.
async fn fixture(tweak: impl FnOnce(&mut Settings)) -> Fixture {
    let dir =
        TempDir(std::env::temp_dir().join(format!("dialex-pipeline-{}", uuid::Uuid::new_v4())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let mut s = Settings::load_from(None, Vec::new()).unwrap();
    s.business_hours.open_around_the_clock();
    s.ccc.initial_backoff_ms = 1;
    s.ccc.max_backoff_ms = 2;
    s.store.data_dir = dir.0.join("store");
    let dnc_file = dir.0.join("dnc.txt");
    std::fs::write(&dnc_file, format!("{LISTED}\n")).unwrap();
    tweak(&mut s);
    let hours = BusinessHours::new(&s.business_hours).unwrap();
    let limits = LimitRules::from_config(&s.limits, s.store.lease());
    let metrics = Arc::new(Metrics::default());
    let pipeline = Pipeline {
        client: Scripted::new(),
        store: Faulty {
            inner: EmbeddedStore::open(&s.store, "test-worker".into()).unwrap(),
            fails: Mutex::new(None),
            times: AtomicU32::new(0),
            down: AtomicBool::new(false),
        },
        policy: DialPolicy::from_settings(&s.ccc),
        publisher: Recorder::default(),
        tiers: Tiers::new(&s.deferral, &s.amqp.names),
        callee: CalleeGate::new(&s.cooldown, hours.default_calendar().time_zone()),
        hasher: NumberHasher::new(&s.cooldown),
        hours,
        dnc: DncList::start(DncSources {
            file: Some(dnc_file),
            reload_interval: Duration::from_secs(60),
            shared: None,
        })
        .await
        .unwrap(),
        limiter: LocalLimiter::new(limits),
        outage: OutageBreaker::new(&s.outage),
        metrics,
        halt: Arc::default(),
        delivery_limit: s.amqp.delivery_limit,
        lease: s.store.lease(),
        unreleased: Default::default(),
        followup: crate::defer::Tiers::of_followups(&s).map(|tiers| Schedule {
            first_poll: s.followup.poll_after(0).unwrap_or_default(),
            tiers,
        }),
    };
    Fixture {
        pipeline,
        _dir: dir,
    }
}

fn body(request_id: &str, extra: serde_json::Value) -> Vec<u8> {
    let mut request = serde_json::json!({
        "request_id": request_id,
        "instance_id": INSTANCE,
        "caller": "02285196281",
        "callee": CALLEE,
        "answer_mode": "ivr",
        "rout_point": "flow-1",
        "attributes": {"ticket": request_id},
    });
    if let (Some(map), serde_json::Value::Object(extra)) = (request.as_object_mut(), extra) {
        map.extend(extra);
    }
    serde_json::to_vec(&request).unwrap()
}

fn incoming(body: Vec<u8>) -> Incoming {
    incoming_with(body, &[])
}

/// A delivery with the given headers (strings, except the delivery count).
fn incoming_with(body: Vec<u8>, headers: &[(&str, String)]) -> Incoming {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        let value = if *name == DELIVERY_COUNT_HEADER {
            AMQPValue::LongLongInt(value.parse().unwrap())
        } else {
            AMQPValue::LongString(LongString::from(value.as_str()))
        };
        table.insert((*name).into(), value);
    }
    Incoming::new(body, BasicProperties::default().with_headers(table), false)
}

/// The delivery the queue will not deliver again.
fn last_delivery(body: Vec<u8>, f: &Fixture) -> Incoming {
    incoming_with(
        body,
        &[(DELIVERY_COUNT_HEADER, f.delivery_limit.to_string())],
    )
}

fn request(body: &[u8]) -> DialRequest {
    validate::decode(body, None).unwrap()
}

/// Decides for `incoming` (a valid request) without carrying the step out.
async fn decide(f: &Fixture, incoming: &Incoming) -> Step {
    f.process(&request(&incoming.body), incoming).await
}

/// The fingerprint of the request `body(request_id, {})` builds (the one every claim of
/// these tests is for).
fn fp(f: &Fixture, request_id: &str) -> String {
    f.hasher
        .fingerprint(&request(&body(request_id, serde_json::json!({}))))
}

/// Whether the request's claim is free: a new claim is granted (and then given back).
async fn claim_is_free(f: &Fixture, request_id: &str) -> bool {
    match f
        .store
        .inner
        .claim(request_id, &fp(f, request_id))
        .await
        .unwrap()
    {
        Claim::Acquired(token) => {
            f.store.inner.release(request_id, &token).await.unwrap();
            true
        }
        _ => false,
    }
}

/// The callee's cooldown slot is free for another request.
async fn cooldown_is_free(f: &Fixture, body: &[u8]) -> bool {
    let Some(gate) = &f.callee else { return true };
    let key = gate.key(&request(body));
    let free = matches!(
        f.store
            .inner
            .cooldown_acquire(&key, "someone-else", Duration::from_secs(60))
            .await
            .unwrap(),
        Cooldown::Free
    );
    if free {
        f.store
            .inner
            .cooldown_release(&key, "someone-else")
            .await
            .unwrap();
    }
    free
}

fn finished(step: &Step) -> &OutcomeEvent {
    match step {
        Step::Finish(finish) => &finish.event,
        other => panic!("expected Finish, got {other:?}"),
    }
}

fn deferred(step: &Step) -> &Deferral {
    match step {
        Step::Defer(deferral) => deferral,
        other => panic!("expected Defer, got {other:?}"),
    }
}

fn parked(step: &Step) -> &Parking {
    match step {
        Step::Park(parking) => parking,
        other => panic!("expected Park, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Decode and dedup.

#[tokio::test]
async fn an_invalid_request_is_rejected_and_parked_and_acked() {
    let f = fixture(|_| {}).await;
    let delivery = incoming(body("bad-1", serde_json::json!({"callee": "12345"})));
    assert_eq!(f.handle(&delivery).await, Disposition::Ack);
    assert_eq!(
        f.publisher.calls(),
        [
            Call::Outcome {
                status: Status::Rejected,
                code: Some("invalid_callee".into()),
                task_id: None
            },
            Call::DeadLetter {
                reason: "invalid_callee".into()
            }
        ]
    );
    assert_eq!(f.client.sends(), 0);
}

#[tokio::test]
async fn a_halted_worker_gives_the_request_back_without_claiming_it() {
    let f = fixture(|_| {}).await;
    f.halt.trigger(HaltCause::Broker("test".into()));
    let delivery = incoming(body("r-halt", serde_json::json!({})));
    assert!(matches!(decide(&f, &delivery).await, Step::GiveBack));
    assert!(claim_is_free(&f, "r-halt").await);
    assert_eq!(f.client.sends(), 0);
}

#[tokio::test]
async fn a_new_request_is_dialed_recorded_and_finished_with_its_task_id() {
    let f = fixture(|_| {}).await;
    let delivery = incoming(body("r-1", serde_json::json!({})));
    assert_eq!(f.handle(&delivery).await, Disposition::Ack);
    assert_eq!(
        f.publisher.calls(),
        [Call::Outcome {
            status: Status::Dialed,
            code: Some("OK".into()),
            task_id: Some("task-1".into())
        }]
    );
    // Recorded: the claim now answers with the result, and the callee's slot is kept.
    assert!(matches!(
        f.store.inner.claim("r-1", &fp(&f, "r-1")).await.unwrap(),
        Claim::Recorded { .. }
    ));
    assert!(!cooldown_is_free(&f, &delivery.body).await);
}

#[tokio::test]
async fn with_the_follow_up_on_a_dialed_request_schedules_its_job_after_the_outcome() {
    let f = fixture(|s| s.followup.enabled = true).await;
    let delivery = incoming(body("r-f", serde_json::json!({})));
    assert_eq!(f.handle(&delivery).await, Disposition::Ack);
    let calls = f.publisher.take();
    assert!(matches!(
        &calls[0],
        Call::Outcome {
            status: Status::Dialed,
            ..
        }
    ));
    // The first poll is a minute after the dial: the job waits in the 30 s tier first.
    assert_eq!(
        calls[1..],
        [Call::FollowUp {
            queue: "dial.followups.wait.30s".into(),
            request_id: "r-f".into(),
            task_id: "task-1".into(),
        }]
    );
    // Published again from its record, it schedules the job again: a job lost with a
    // crash before the ack is never lost for good.
    assert_eq!(f.handle(&delivery).await, Disposition::Ack);
    assert!(matches!(
        f.publisher.take()[..],
        [Call::Outcome { .. }, Call::FollowUp { .. }]
    ));
    // A request that was not dialed has no follow-up.
    let expired = body(
        "r-x",
        serde_json::json!({"expires_at": "2020-01-01T00:00:00Z"}),
    );
    assert_eq!(f.handle(&incoming(expired)).await, Disposition::Ack);
    assert!(matches!(
        f.publisher.take()[..],
        [Call::Outcome {
            status: Status::Expired,
            ..
        }]
    ));
}

#[tokio::test]
async fn a_follow_up_job_on_the_request_queue_is_parked_never_rejected() {
    let f = fixture(|_| {}).await;
    // A job (it has no answer_mode): read as a request it would be `rejected`, a second
    // terminal outcome for a request already dialed.
    let job = serde_json::json!({
        "request_id": "r-j", "instance_id": INSTANCE, "caller": "02285196281",
        "callee": CALLEE, "task_id": "task-9", "polls": 0,
    });
    let properties = BasicProperties::default().with_type(crate::followup::job::JOB_TYPE.into());
    let delivery = Incoming::new(serde_json::to_vec(&job).unwrap(), properties, false);
    assert_eq!(f.handle(&delivery).await, Disposition::Ack);
    assert_eq!(
        f.publisher.take(),
        [Call::DeadLetter {
            reason: "misrouted_followup_job".into()
        }]
    );
    assert_eq!(f.client.sends(), 0);
}

#[tokio::test]
async fn a_job_the_broker_will_not_take_gives_the_dialed_request_back() {
    let f = fixture(|s| s.followup.enabled = true).await;
    let delivery = incoming(body("r-g", serde_json::json!({})));
    // The outcome goes through; the job does not.
    f.publisher.refuse_after(1);
    let disposition = f.handle(&delivery).await;
    assert_ne!(disposition, Disposition::Ack);
    assert!(
        f.halt.is_raised(),
        "the worker pauses on a broker that refuses"
    );
}

#[tokio::test]
async fn a_recorded_request_is_published_again_byte_for_byte_and_not_dialed() {
    let f = fixture(|_| {}).await;
    let first = incoming(body("r-2", serde_json::json!({})));
    f.handle(&first).await;
    let Claim::Recorded { event: stored } =
        f.store.inner.claim("r-2", &fp(&f, "r-2")).await.unwrap()
    else {
        panic!("recorded");
    };
    let again = incoming(body("r-2", serde_json::json!({})));
    let step = decide(&f, &again).await;
    let Step::Finish(finish) = &step else {
        panic!("{step:?}")
    };
    assert_eq!(finish.json, stored);
    assert_eq!(finish.event.task_id.as_deref(), Some("task-1"));
    assert_eq!(f.client.sends(), 1);
}

#[tokio::test]
async fn a_request_claimed_elsewhere_waits_quietly_until_the_lease_ends() {
    let f = fixture(|_| {}).await;
    let Claim::Acquired(_) = f.store.inner.claim("r-3", &fp(&f, "r-3")).await.unwrap() else {
        panic!("acquired")
    };
    let step = decide(&f, &incoming(body("r-3", serde_json::json!({})))).await;
    let wait = deferred(&step);
    assert_eq!(wait.reason, DeferReason::Claimed);
    assert!(wait.announce.is_none());
    let lease_end = Timestamp::now().checked_add(f.lease).unwrap();
    assert!(wait.until <= lease_end && wait.until > Timestamp::now());
    assert_eq!(f.client.sends(), 0);
}

#[tokio::test]
async fn an_abandoned_claim_becomes_unknown_interrupted_and_is_never_dialed() {
    let f = fixture(|s| s.store.lease_ms = 30).await;
    let Claim::Acquired(_) = f.store.inner.claim("r-4", &fp(&f, "r-4")).await.unwrap() else {
        panic!("acquired")
    };
    tokio::time::sleep(Duration::from_millis(60)).await;
    let delivery = incoming(body("r-4", serde_json::json!({})));
    let step = decide(&f, &delivery).await;
    let event = finished(&step);
    assert_eq!(event.status, Status::Unknown);
    assert_eq!(event.code.as_deref(), Some("interrupted"));
    assert!(delivery.is_claimed());
    assert!(matches!(
        f.store.inner.claim("r-4", &fp(&f, "r-4")).await.unwrap(),
        Claim::Recorded { .. }
    ));
    assert_eq!(f.client.sends(), 0);
}

#[tokio::test]
async fn a_request_id_reused_for_another_request_is_rejected_and_the_first_kept() {
    let f = fixture(|_| {}).await;
    f.handle(&incoming(body("r-reuse", serde_json::json!({}))))
        .await;
    let other = incoming(body(
        "r-reuse",
        serde_json::json!({"callee": "13800000002"}),
    ));
    let step = decide(&f, &other).await;
    let parking = parked(&step);
    assert_eq!(parking.reason, "request_id_reused");
    let event = parking.event.as_ref().expect("a rejected event");
    assert_eq!(
        (event.status, event.code.as_deref()),
        (Status::Rejected, Some("request_id_reused"))
    );
    assert!(event.attributes.is_some(), "the attributes are echoed");
    assert!(matches!(
        f.store
            .inner
            .claim("r-reuse", &fp(&f, "r-reuse"))
            .await
            .unwrap(),
        Claim::Recorded { .. }
    ));
    assert_eq!(f.client.sends(), 1);
}

#[tokio::test]
async fn a_store_that_is_down_pauses_the_worker_and_the_request_goes_back_whole() {
    let f = fixture(|_| {}).await;
    f.store.fail("claim", backend_error(), u32::MAX);
    f.store.down.store(true, Ordering::SeqCst);
    let delivery = incoming(body("r-5", serde_json::json!({})));
    assert_eq!(f.handle(&delivery).await, Disposition::Ack);
    assert_eq!(f.publisher.calls(), [Call::GiveBack]);
    assert!(matches!(f.halt.cause(), Some(HaltCause::Store(_))));
    assert_eq!(f.client.sends(), 0);
}

#[tokio::test]
async fn an_unreadable_record_for_one_request_is_retried_then_parked_without_pausing() {
    let f = fixture(|_| {}).await;
    f.store
        .fail("claim", StoreError::Corrupt("X|junk".into()), u32::MAX);
    let body = body("r-6", serde_json::json!({}));
    // Redelivered (which counts towards the delivery limit) while deliveries are left.
    assert!(matches!(
        decide(&f, &incoming(body.clone())).await,
        Step::Redeliver
    ));
    // Parked on the last: `unknown`, as its record cannot say whether it was dialed.
    let step = decide(&f, &last_delivery(body, &f)).await;
    let parking = parked(&step);
    assert_eq!(parking.reason, "store_error");
    let event = parking.event.as_ref().expect("an event");
    assert_eq!(event.status, Status::Unknown);
    assert_eq!(event.code.as_deref(), Some("store_error"));
    assert!(
        !f.halt.is_raised(),
        "one bad record must not pause the worker"
    );
    assert_eq!(f.client.sends(), 0);
}

#[tokio::test]
async fn a_store_error_for_one_key_while_the_store_answers_does_not_pause() {
    let f = fixture(|s| s.cooldown.max_per_day = 3).await;
    let wrongtype = StoreError::Backend {
        backend: "redis",
        message: "WRONGTYPE Operation against a key holding the wrong kind of value".into(),
    };
    f.store.fail("daily", wrongtype, u32::MAX);
    let body = body("r-7", serde_json::json!({}));
    assert!(matches!(
        decide(&f, &incoming(body.clone())).await,
        Step::Redeliver
    ));
    // Everything it took was given back.
    assert!(claim_is_free(&f, "r-7").await);
    assert!(cooldown_is_free(&f, &body).await);
    let step = decide(&f, &last_delivery(body, &f)).await;
    let event = parked(&step).event.as_ref().expect("an event");
    // Claimed, and certainly not dialed.
    assert_eq!(event.status, Status::Failed);
    assert!(!f.halt.is_raised());
    assert_eq!(f.client.sends(), 0);
}

#[tokio::test]
async fn an_unreadable_stored_result_is_parked() {
    let f = fixture(|_| {}).await;
    let Claim::Acquired(token) = f.store.inner.claim("r-8", &fp(&f, "r-8")).await.unwrap() else {
        panic!("acquired")
    };
    f.store
        .inner
        .record("r-8", &token, b"not json")
        .await
        .unwrap();
    let step = decide(&f, &incoming(body("r-8", serde_json::json!({})))).await;
    assert_eq!(parked(&step).reason, "unreadable_record");
    assert_eq!(f.client.sends(), 0);
}

// ---------------------------------------------------------------------------------------------
// Gates.

#[tokio::test]
async fn a_request_past_expires_at_is_expired_and_recorded() {
    let f = fixture(|_| {}).await;
    let past = Timestamp::now() - jiff::SignedDuration::from_secs(1);
    let delivery = incoming(body(
        "r-9",
        serde_json::json!({"expires_at": past.to_string()}),
    ));
    let step = decide(&f, &delivery).await;
    assert_eq!(finished(&step).status, Status::Expired);
    assert!(matches!(
        f.store.inner.claim("r-9", &fp(&f, "r-9")).await.unwrap(),
        Claim::Recorded { .. }
    ));
    assert_eq!(f.client.sends(), 0);
}

#[tokio::test]
async fn a_request_before_not_before_waits_announced_and_holds_nothing() {
    let f = fixture(|_| {}).await;
    let at = Timestamp::now() + jiff::SignedDuration::from_secs(600);
    let delivery = incoming(body(
        "r-10",
        serde_json::json!({"not_before": at.to_string()}),
    ));
    let step = decide(&f, &delivery).await;
    let wait = deferred(&step);
    assert_eq!(wait.reason, DeferReason::NotBefore);
    assert_eq!(wait.until, at);
    assert_eq!(
        wait.announce.as_ref().map(|e| e.status),
        Some(Status::Deferred)
    );
    assert!(claim_is_free(&f, "r-10").await);
    // Carried out: announced, then to the 5 minute tier (the largest not above 10 minutes).
    assert_eq!(f.execute(step, &delivery).await, Disposition::Ack);
    let calls = f.publisher.calls();
    assert!(matches!(
        &calls[0],
        Call::Outcome {
            status: Status::Deferred,
            ..
        }
    ));
    assert!(
        matches!(&calls[1], Call::Defer { queue, not_before, .. } if queue.ends_with(".wait.5m") && *not_before == at),
        "{calls:?}"
    );
}

#[tokio::test]
async fn a_listed_number_is_suppressed_and_never_dialed() {
    let f = fixture(|_| {}).await;
    let delivery = incoming(body("r-13", serde_json::json!({"callee": LISTED})));
    let event = finished(&decide(&f, &delivery).await).clone();
    assert_eq!(event.status, Status::Suppressed);
    assert_eq!(event.code.as_deref(), Some("dnc"));
    assert_eq!(f.client.sends(), 0);
}

#[tokio::test]
async fn a_callee_in_cooldown_is_suppressed_naming_the_earlier_request() {
    let f = fixture(|_| {}).await;
    f.handle(&incoming(body("r-14a", serde_json::json!({}))))
        .await;
    let step = decide(&f, &incoming(body("r-14b", serde_json::json!({})))).await;
    let event = finished(&step);
    assert_eq!(event.status, Status::Suppressed);
    assert_eq!(event.code.as_deref(), Some("cooldown"));
    assert_eq!(event.task_id.as_deref(), Some("task-1"));
    assert_eq!(f.client.sends(), 1);
}

#[tokio::test]
async fn a_callee_over_the_daily_cap_is_suppressed_and_its_cooldown_slot_given_back() {
    let f = fixture(|s| s.cooldown.max_per_day = 1).await;
    let first = body("r-15a", serde_json::json!({}));
    f.handle(&incoming(first)).await;
    // Another request for the callee, once the first one's cooldown is over.
    f.store
        .inner
        .cooldown_release(
            &f.callee
                .as_ref()
                .unwrap()
                .key(&request(&body("r-15a", serde_json::json!({})))),
            "r-15a",
        )
        .await
        .unwrap();
    let second = body("r-15b", serde_json::json!({}));
    let step = decide(&f, &incoming(second.clone())).await;
    assert_eq!(finished(&step).code.as_deref(), Some("daily_cap"));
    assert!(cooldown_is_free(&f, &second).await);
    assert_eq!(f.client.sends(), 1);
}

#[tokio::test]
async fn no_slot_within_the_wait_defers_and_gives_everything_back() {
    let f = fixture(|s| {
        s.limits.calls_per_second = 0.001;
        s.limits.burst = 1;
        s.limits.max_wait_ms = 10;
        s.cooldown.window_ms = 0;
    })
    .await;
    f.handle(&incoming(body(
        "r-16a",
        serde_json::json!({"callee": "13800000002"}),
    )))
    .await;
    let delivery = incoming(body("r-16b", serde_json::json!({})));
    let step = decide(&f, &delivery).await;
    let wait = deferred(&step);
    assert_eq!(wait.reason, DeferReason::Limits);
    assert!(wait.announce.is_some());
    assert!(claim_is_free(&f, "r-16b").await);
    assert_eq!(f.client.sends(), 1);
}

#[tokio::test]
async fn a_request_without_a_slot_soon_books_one_and_comes_back_to_take_it_without_the_rate() {
    let f = fixture(|s| {
        s.limits.calls_per_second = 0.4;
        s.limits.burst = 1;
        s.limits.max_wait_ms = 10;
        s.cooldown.window_ms = 0;
        // A start further off than the shortest wait queue and the margin for a late broker
        // (1.2 s) leaves the process.
        s.deferral.tiers_ms = vec![200, 1_000];
    })
    .await;
    let request =
        |id: &str, n: u32| body(id, serde_json::json!({"callee": format!("1380000{n:04}")}));
    // The first takes the rate now; the next two are booked 2.5 s apart.
    assert_eq!(
        finished(&decide(&f, &incoming(request("r-b1", 1))).await).status,
        Status::Dialed
    );
    let started = Timestamp::now();
    let second = deferred(&decide(&f, &incoming(request("r-b2", 2))).await)
        .booking
        .clone()
        .expect("booked");
    let third = decide(&f, &incoming(request("r-b3", 3))).await;
    let third = deferred(&third);
    let gap = |at: Timestamp| at.duration_since(started).as_millis();
    assert!(
        (4_900..=5_100).contains(&gap(third.until)),
        "{:?}",
        third.until
    );
    let (at, _) = second.split_once(' ').expect("start, rate and signature");
    let at: Timestamp = at.parse().unwrap();
    assert!((2_400..=2_600).contains(&gap(at)), "booked for {at}");

    // Back at its start (early by a little: it waits for it in-process), it is dialed though
    // the rate is booked ahead; a copy of its booking on another request is worth nothing.
    let back = |id: &str, n: u32, booking: &str| {
        incoming_with(
            request(id, n),
            &[
                (DEFERRED_HEADER, "limits".into()),
                (NOT_BEFORE_HEADER, at.to_string()),
                (BOOKING_HEADER, booking.to_owned()),
            ],
        )
    };
    tokio::time::sleep(Duration::from_millis(1_850)).await;
    assert_eq!(
        finished(&decide(&f, &back("r-b2", 2, &second)).await).status,
        Status::Dialed
    );
    assert!(Timestamp::now() >= at, "it waited for its start");
    let forged = decide(&f, &back("r-b4", 4, &second)).await;
    assert!(deferred(&forged).until > at, "a forged booking books anew");
    assert_eq!(f.client.sends(), 2);
}

/// A booking for `request_id` to `n`, made by the fixture's limiter, and the request coming
/// back with it `late` after its start.
async fn booked_and_back_late(f: &Fixture, request_id: &str, n: u32, late: Duration) -> Incoming {
    let body = |n: u32| {
        body(
            request_id,
            serde_json::json!({"callee": format!("1380000{n:04}")}),
        )
    };
    let booking = deferred(&decide(f, &incoming(body(n))).await)
        .booking
        .clone()
        .expect("booked");
    let (at, _) = booking.split_once(' ').expect("start, rate and signature");
    let at: Timestamp = at.parse().unwrap();
    tokio::time::sleep(crate::defer::time_until(at) + late).await;
    incoming_with(
        body(n),
        &[
            (DEFERRED_HEADER, "limits".into()),
            (NOT_BEFORE_HEADER, at.to_string()),
            (BOOKING_HEADER, booking),
        ],
    )
}

/// A fixture paced at 0.4 calls/s by `pace` (the instance's rate or each caller's), whose
/// first request has just taken the pace's slot.
async fn paced_and_busy(pace: impl FnOnce(&mut Settings)) -> Fixture {
    let f = fixture(|s| {
        s.limits.burst = 1;
        s.limits.max_wait_ms = 10;
        s.cooldown.window_ms = 0;
        s.deferral.tiers_ms = vec![200, 1_000];
        pace(s);
    })
    .await;
    let first = body("r-first", serde_json::json!({"callee": "13800000001"}));
    assert_eq!(
        finished(&decide(&f, &incoming(first)).await).status,
        Status::Dialed
    );
    f
}

#[tokio::test]
async fn a_booking_back_late_is_taken_when_only_the_instance_rate_counted_it() {
    let f = paced_and_busy(|s| s.limits.calls_per_second = 0.4).await;
    // Booked 2.5 s out, back 400 ms after that: the instance's start spacing keeps it at the
    // pace, so it is dialed, not sent to the back of the line.
    let back = booked_and_back_late(&f, "r-l2", 2, Duration::from_millis(400)).await;
    assert_eq!(finished(&decide(&f, &back).await).status, Status::Dialed);
    assert_eq!(f.metrics.bookings_missed.get(), 1);
    assert_eq!(f.client.sends(), 2);
}

#[tokio::test]
async fn a_booking_back_late_that_counted_a_callers_rate_books_anew() {
    let f = paced_and_busy(|s| s.limits.per_caller_calls_per_second = 0.4).await;
    // Nothing spaces one caller's starts once they are booked: late, it asks the rates again.
    let back = booked_and_back_late(&f, "r-c2", 2, Duration::from_millis(400)).await;
    let again = decide(&f, &back).await;
    assert!(deferred(&again).booking.is_some(), "booked anew");
    assert_eq!(f.metrics.bookings_missed.get(), 1);
    assert_eq!(f.client.sends(), 1);
}

#[tokio::test]
async fn requests_back_late_from_the_wait_queues_bring_bookings_back_earlier() {
    let f = fixture(|s| s.deferral.tiers_ms = vec![200, 1_000]).await;
    assert_eq!(f.tiers.booking_margin(), crate::defer::BOOKING_MARGIN);
    let due = Timestamp::now() - jiff::SignedDuration::from_millis(2_000);
    let late = incoming_with(
        body("r-due", serde_json::json!({})),
        &[
            (DEFERRED_HEADER, "limits".into()),
            (NOT_BEFORE_HEADER, Timestamp::now().to_string()),
            (DUE_HEADER, due.to_string()),
        ],
    );
    decide(&f, &late).await;
    let margin = f.tiers.booking_margin();
    assert!(
        (Duration::from_millis(2_990)..=Duration::from_millis(3_100)).contains(&margin),
        "{margin:?}"
    );
    assert!((f.metrics.booking_margin.get() - margin.as_secs_f64()).abs() < 0.01);
    // The same header on a request never deferred is not the worker's, and teaches nothing.
    let f = fixture(|s| s.deferral.tiers_ms = vec![200, 1_000]).await;
    let forged = incoming_with(
        body("r-forged", serde_json::json!({})),
        &[(DUE_HEADER, due.to_string())],
    );
    decide(&f, &forged).await;
    assert_eq!(f.tiers.booking_margin(), crate::defer::BOOKING_MARGIN);
}

#[tokio::test]
async fn no_wait_for_a_slot_outlasts_the_claims_lease() {
    // The lease leaves 300 ms beyond the longest dial: the limiter's 30 s wait is cut to what
    // is left, and the request waits outside instead of dialing after its claim ran out.
    let f = fixture(|s| {
        s.ccc.max_attempts = 1;
        s.ccc.max_total_attempts = 1;
        s.ccc.replay_ambiguous = false;
        s.ccc.request_timeout_ms = 200;
        s.store.lease_ms = 500;
        s.limits.calls_per_second = 1.0;
        s.limits.burst = 1;
        s.limits.max_wait_ms = 30_000;
        s.cooldown.window_ms = 0;
    })
    .await;
    f.handle(&incoming(body(
        "r-17a",
        serde_json::json!({"callee": "13800000002"}),
    )))
    .await;
    let started = std::time::Instant::now();
    let step = decide(&f, &incoming(body("r-17b", serde_json::json!({})))).await;
    assert_eq!(deferred(&step).reason, DeferReason::Limits);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "waited {:?}, past the lease",
        started.elapsed()
    );
    assert!(claim_is_free(&f, "r-17b").await);
    assert_eq!(f.client.sends(), 1);
}

// ---------------------------------------------------------------------------------------------
// Dial and record.

#[tokio::test]
async fn a_retryable_failure_waits_in_the_tier_of_its_delay_with_its_attempts() {
    let f = fixture(|_| {}).await;
    for _ in 0..3 {
        f.client.then(Err(api_error(503, "ServiceUnavailable")));
    }
    let delivery = incoming(body("r-18", serde_json::json!({})));
    let step = decide(&f, &delivery).await;
    let wait = deferred(&step);
    assert_eq!((wait.reason, wait.attempts), (DeferReason::Retry, 3));
    let announce = wait.announce.as_ref().expect("announced");
    assert_eq!(announce.attempts, 3);
    assert!(
        announce
            .message
            .as_deref()
            .unwrap()
            .contains("ServiceUnavailable")
    );
    assert!(claim_is_free(&f, "r-18").await);
    assert!(cooldown_is_free(&f, &delivery.body).await);
    // The 30 s requeue delay goes to the 30 s tier, though computed a moment later.
    f.execute(step, &delivery).await;
    let calls = f.publisher.calls();
    assert!(
        matches!(&calls[1], Call::Defer { queue, attempts: 3, reason: DeferReason::Retry, .. } if queue.ends_with(".wait.30s")),
        "{calls:?}"
    );
}

#[tokio::test]
async fn an_outage_across_requests_pauses_and_gives_the_request_back_with_its_attempts_unspent() {
    let f = fixture(|s| s.outage.min_attempts = 2).await;
    for _ in 0..3 {
        f.client.then(Err(api_error(503, "ServiceUnavailable")));
    }
    let delivery = incoming(body("r-18o", serde_json::json!({})));
    // The second failure opens the breaker: no third attempt, no deferral, nothing spent.
    assert!(matches!(decide(&f, &delivery).await, Step::GiveBack));
    assert_eq!(f.client.sends(), 2);
    assert!(matches!(f.halt.cause(), Some(HaltCause::Outage(_))));
    assert!(f.outage.is_open());
    assert!(claim_is_free(&f, "r-18o").await);
    assert!(cooldown_is_free(&f, &delivery.body).await);
    f.execute(Step::GiveBack, &delivery).await;
    assert!(
        matches!(f.publisher.calls().as_slice(), [Call::GiveBack]),
        "{:?}",
        f.publisher.calls()
    );
}

#[tokio::test]
async fn throttling_is_no_outage() {
    let f = fixture(|s| s.outage.min_attempts = 2).await;
    for _ in 0..3 {
        f.client.then(Err(api_error(400, "Throttling.User")));
    }
    let delivery = incoming(body("r-18t", serde_json::json!({})));
    let wait = deferred(&decide(&f, &delivery).await).attempts;
    assert_eq!(wait, 3);
    assert!(!f.outage.is_open());
    assert!(f.halt.cause().is_none());
}

#[tokio::test]
async fn a_request_back_before_its_time_waits_again_without_a_claim_or_a_dial() {
    let f = fixture(|_| {}).await;
    let until = Timestamp::now() + jiff::SignedDuration::from_secs(20);
    let delivery = incoming_with(
        body("r-19", serde_json::json!({})),
        &[
            (DEFERRED_HEADER, "retry".into()),
            (ATTEMPTS_HEADER, "3".into()),
            (NOT_BEFORE_HEADER, until.to_string()),
        ],
    );
    let step = decide(&f, &delivery).await;
    let wait = deferred(&step);
    assert_eq!(
        (wait.reason, wait.until, wait.attempts),
        (DeferReason::Retry, until, 3)
    );
    assert!(
        wait.announce.is_none(),
        "announced once, on the first deferral"
    );
    assert!(claim_is_free(&f, "r-19").await);
    assert_eq!(f.client.sends(), 0);
    // Once its time has come, it is dialed.
    let due = incoming_with(
        body("r-19", serde_json::json!({})),
        &[(NOT_BEFORE_HEADER, Timestamp::now().to_string())],
    );
    assert_eq!(finished(&decide(&f, &due).await).status, Status::Dialed);
}

#[tokio::test]
async fn a_permanent_failure_is_failed_and_gives_the_callee_back() {
    let f = fixture(|_| {}).await;
    f.client.then(Err(api_error(400, "InvalidParameter")));
    let delivery = incoming(body("r-20", serde_json::json!({})));
    let event = finished(&decide(&f, &delivery).await).clone();
    assert_eq!(
        (event.status, event.code.as_deref()),
        (Status::Failed, Some("InvalidParameter"))
    );
    assert!(cooldown_is_free(&f, &delivery.body).await);
}

#[tokio::test]
async fn an_ambiguous_send_is_unknown_and_keeps_the_callee() {
    let f = fixture(|s| s.ccc.replay_ambiguous = false).await;
    f.client.then(Err(DialFailure::Transport {
        class: ErrorClass::Ambiguous,
        code: "timeout",
        detail: "no answer".into(),
    }));
    let delivery = incoming(body("r-21", serde_json::json!({})));
    let event = finished(&decide(&f, &delivery).await).clone();
    assert_eq!(event.status, Status::Unknown);
    assert!(!cooldown_is_free(&f, &delivery.body).await);
    assert_eq!(f.client.sends(), 1);
}

#[tokio::test]
async fn a_refusal_of_the_worker_pauses_and_gives_the_request_back() {
    let f = fixture(|_| {}).await;
    f.client.then(Err(api_error(400, "SignatureDoesNotMatch")));
    f.client.probe_fails.store(true, Ordering::SeqCst);
    let delivery = incoming(body("r-22", serde_json::json!({})));
    assert!(matches!(decide(&f, &delivery).await, Step::GiveBack));
    assert!(matches!(f.halt.cause(), Some(HaltCause::Ccc(_))));
    assert!(claim_is_free(&f, "r-22").await);
    assert!(cooldown_is_free(&f, &delivery.body).await);
}

#[tokio::test]
async fn a_refusal_of_one_instance_is_retried_then_parked_failed_without_pausing() {
    let f = fixture(|s| s.cooldown.window_ms = 0).await;
    let body = body("r-23", serde_json::json!({}));
    f.client.then(Err(api_error(403, "Forbidden.NoPermission")));
    assert!(matches!(
        decide(&f, &incoming(body.clone())).await,
        Step::Redeliver
    ));
    assert!(claim_is_free(&f, "r-23").await);
    f.client.then(Err(api_error(403, "Forbidden.NoPermission")));
    let step = decide(&f, &last_delivery(body, &f)).await;
    let parking = parked(&step);
    assert_eq!(parking.reason, "ccc_refused");
    let event = parking.event.as_ref().unwrap();
    assert_eq!(
        (event.status, event.code.as_deref()),
        (Status::Failed, Some("Forbidden.NoPermission"))
    );
    assert!(!f.halt.is_raised());
}

#[tokio::test]
async fn a_placed_call_is_published_only_once_recorded() {
    let f = fixture(|_| {}).await;
    // The store fails the record three times (and is down meanwhile), then takes it.
    f.store.fail("record", backend_error(), 3);
    f.store.down.store(true, Ordering::SeqCst);
    let delivery = incoming(body("r-24", serde_json::json!({})));
    let step = decide(&f, &delivery).await;
    // The worker paused meanwhile, but kept the result and recorded it.
    assert!(matches!(f.halt.cause(), Some(HaltCause::Store(_))));
    let event = finished(&step);
    assert_eq!(event.task_id.as_deref(), Some("task-1"));
    assert!(matches!(
        f.store.inner.claim("r-24", &fp(&f, "r-24")).await.unwrap(),
        Claim::Recorded { .. }
    ));
    assert_eq!(f.client.sends(), 1);
}

#[tokio::test]
async fn an_unplaced_result_that_cannot_be_recorded_is_not_published_and_frees_the_claim() {
    let f = fixture(|_| {}).await;
    f.client.then(Err(api_error(400, "InvalidParameter")));
    f.store.fail("record", backend_error(), u32::MAX);
    f.store.down.store(true, Ordering::SeqCst);
    let delivery = incoming(body("r-25", serde_json::json!({})));
    assert!(matches!(decide(&f, &delivery).await, Step::GiveBack));
    assert!(matches!(f.halt.cause(), Some(HaltCause::Store(_))));
    assert!(claim_is_free(&f, "r-25").await);
    assert!(f.publisher.calls().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Carrying steps out.

#[tokio::test]
async fn an_outcome_the_broker_will_not_take_is_never_dead_lettered() {
    let f = fixture(|_| {}).await;
    f.publisher.refuses.store(true, Ordering::SeqCst);
    let delivery = incoming(body("r-26", serde_json::json!({})));
    // Recorded, unpublished: back to the queue (requeued, as no copy can be published).
    assert_eq!(f.handle(&delivery).await, Disposition::Requeue);
    assert!(matches!(f.halt.cause(), Some(HaltCause::Broker(_))));
    // Once the broker takes publishes again, the redelivery publishes the recorded result.
    f.publisher.refuses.store(false, Ordering::SeqCst);
    f.halt.reset();
    let again = incoming(body("r-26", serde_json::json!({})));
    assert_eq!(f.handle(&again).await, Disposition::Ack);
    assert_eq!(
        f.publisher.take(),
        [Call::Outcome {
            status: Status::Dialed,
            code: Some("OK".into()),
            task_id: Some("task-1".into())
        }]
    );
    assert_eq!(f.client.sends(), 1);
}

#[tokio::test]
async fn a_panic_before_the_claim_is_redelivered_then_parked_as_poison() {
    let f = fixture(|_| {}).await;
    let body = body("r-27", serde_json::json!({}));
    assert!(matches!(
        f.panicked(&incoming(body.clone()), "boom"),
        Step::Redeliver
    ));
    let step = f.panicked(&last_delivery(body.clone(), &f), "boom");
    let parking = parked(&step);
    assert_eq!(parking.reason, "poison_message");
    assert_eq!(
        parking
            .event
            .as_ref()
            .map(|e| (e.status, e.code.as_deref())),
        Some((Status::Failed, Some("poison_message")))
    );
    // Once claimed, the claim keeps it from a second dial: it is only ever returned.
    let claimed = last_delivery(body, &f);
    claimed.mark_claimed();
    assert!(matches!(f.panicked(&claimed, "boom"), Step::Redeliver));
}
