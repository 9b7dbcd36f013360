//! The follow-up: after each `dialed` outcome, one `dial.result.<disposition>` event saying how
//! the call went, found in the simulator's call detail records by caller, callee and time.

mod helpers;

use std::collections::HashMap;
use std::time::Duration;

use dialex_devkit::harness::{Delivered, Harness};
use dialex_devkit::simulator::{CallRecord, CallScript, Fault, SimConfig};
use dialex_worker::config::{Settings, StoreBackend};
use dialex_worker::defer::Tiers;
use dialex_worker::followup::FollowupJob;
use dialex_worker::followup::result::{CallResultEvent, Disposition, MatchKind, UnknownReason};
use dialex_worker::outcome::{OutcomeEvent, Status};
use dialex_worker::store::CallResults as _;
use dialex_worker::store::redis::RedisStore;
use helpers::{WAIT, callee, hooked, request, settings_with};
use jiff::Timestamp;

const CALLER: &str = "02285196281";
const INSTANCE: &str = "d278629c-c687-4aa3-b044-4fe9b012e7ef";

/// Test settings with the follow-up on, polling 1, 2 and 3 s after the dial.
fn followup_settings(backend: StoreBackend) -> Settings {
    let mut settings = settings_with(backend);
    settings.followup.enabled = true;
    settings.followup.polls_ms = vec![1_000, 2_000, 3_000];
    settings.followup.queries_per_second = 50.0;
    settings.followup.match_window_ms = 30_000;
    settings
        .validate()
        .expect("follow-up test settings are valid");
    settings
}

/// A simulator whose records appear half a second after each call.
fn quick_records() -> SimConfig {
    SimConfig {
        call_record_delay: Duration::from_millis(500),
        ..SimConfig::default()
    }
}

/// What the catch-all queue delivered, by request: the outcomes and the call results.
#[derive(Default)]
struct Events {
    outcomes: HashMap<String, Vec<OutcomeEvent>>,
    results: HashMap<String, Vec<(String, CallResultEvent, Vec<u8>)>>,
}

impl Events {
    fn result(&self, request_id: &str) -> &CallResultEvent {
        let results = &self.results[request_id];
        assert_eq!(results.len(), 1, "one call result for {request_id}");
        &results[0].1
    }

    fn result_count(&self) -> usize {
        self.results.values().map(Vec::len).sum()
    }
}

/// Reads the catch-all queue until `results` call results have arrived.
async fn read_until(h: &mut Harness, events: &mut Events, results: usize) {
    while events.result_count() < results {
        let delivered = h
            .next_event(WAIT)
            .await
            .expect("the catch-all queue")
            .unwrap_or_else(|| {
                panic!(
                    "no event for {WAIT:?}; {} of {results} call results",
                    events.result_count()
                )
            });
        match delivered {
            Delivered::Result(result) => {
                let text = String::from_utf8_lossy(&result.body).into_owned();
                for number in h.simulator.dials().iter().map(|d| &d.callee) {
                    assert!(!text.contains(number.as_str()), "a phone number in {text}");
                }
                let message_id = result.properties.message_id().clone();
                assert_eq!(
                    message_id.as_ref().map(|m| m.as_str()),
                    Some(result.event.event_id.to_string().as_str())
                );
                events
                    .results
                    .entry(result.event.request_id.clone())
                    .or_default()
                    .push((result.routing_key, result.event, result.body));
            }
            Delivered::Outcome(outcome) => events
                .outcomes
                .entry(outcome.event.request_id.clone())
                .or_default()
                .push(outcome.event),
        }
    }
}

/// The dialed outcome of `request_id`.
fn dialed<'e>(events: &'e Events, request_id: &str) -> &'e OutcomeEvent {
    let outcomes = &events.outcomes[request_id];
    assert_eq!(outcomes.len(), 1, "one outcome for {request_id}");
    assert_eq!(outcomes[0].status, Status::Dialed);
    &outcomes[0]
}

/// The record the simulator made for the call to `number` (not the older unrelated one).
fn record_of_call(h: &Harness, number: &str) -> CallRecord {
    let dial = h
        .simulator
        .dials()
        .into_iter()
        .find(|d| d.callee == number)
        .expect("the dial");
    let mut records: Vec<CallRecord> = h
        .simulator
        .call_records()
        .into_iter()
        .filter(|r| r.called_number == number && r.start_time >= dial.started_at)
        .collect();
    assert_eq!(records.len(), 1, "one record of the call to {number}");
    records.remove(0)
}

async fn every_disposition(backend: StoreBackend) {
    let cases = [
        ("Success", Disposition::Answered),
        ("NoAnswer", Disposition::NoAnswer),
        ("Reject", Disposition::Rejected),
        ("AbandonedInQueue", Disposition::Abandoned),
        ("AbandonedInRing", Disposition::Abandoned),
        ("AbandonedInIVR", Disposition::Abandoned),
        ("QueuingTimeout", Disposition::Abandoned),
        ("QueuingOverflow", Disposition::Abandoned),
        ("Voicemail", Disposition::Voicemail),
        ("IVRException", Disposition::Failed),
        ("ForwardToOutsideNumber", Disposition::Answered),
        ("SomethingNew", Disposition::Unknown),
    ];
    let mut h = helpers::started(followup_settings(backend), quick_records()).await;
    for (i, (ccc, _)) in cases.iter().enumerate() {
        h.simulator
            .script_call(&callee(i), CallScript::disposition(ccc));
        h.publish_request(&request(&format!("r-{i}"), &callee(i), "agent"), None)
            .await
            .unwrap();
    }
    let mut events = Events::default();
    read_until(&mut h, &mut events, cases.len()).await;
    assert_no_more_results(&mut h, &mut events).await;

    for (i, (ccc, disposition)) in cases.iter().enumerate() {
        let id = format!("r-{i}");
        let outcome = dialed(&events, &id);
        let (routing_key, result, _) = &events.results[&id][0];
        assert_eq!(events.result(&id).disposition, *disposition, "{ccc}");
        assert_eq!(
            routing_key,
            &format!("dial.result.{}", disposition.as_str())
        );
        assert_eq!(result.ccc_disposition.as_deref(), Some(*ccc));
        assert_eq!(Some(result.task_id.as_str()), outcome.task_id.as_deref());
        assert_eq!(result.match_kind, MatchKind::Exact);
        let record = record_of_call(&h, &callee(i));
        assert_eq!(
            result.contact_id.as_deref(),
            Some(record.contact_id.as_str())
        );
        assert_eq!(
            result.started_at.map(|t| t.as_millisecond()),
            Some(record.start_time.as_millisecond())
        );
        assert_eq!(result.duration_s, Some(u64::from(record.duration_s)));
        assert_eq!(
            result.release_reason.as_deref(),
            Some(record.release_reason.as_str())
        );
        assert_eq!(
            result.attributes.as_ref().map(|a| a.get()),
            Some(format!(r#"{{"ticket":"{id}"}}"#).as_str())
        );
        if *ccc == "Success" {
            assert_eq!(result.duration_s, Some(37));
            assert_eq!(result.agents, ["agent001"]);
        }
    }
    helpers::assert_dialed_at_most_once(&h);
    assert_followup_queue_drains(&h).await;
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_disposition_is_one_result_event_with_the_embedded_store() {
    every_disposition(StoreBackend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_disposition_is_one_result_event_with_the_redis_store() {
    every_disposition(StoreBackend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_record_is_found_at_the_third_poll_and_a_missing_one_is_unknown() {
    let mut settings = followup_settings(StoreBackend::Embedded);
    // The record appears 4 s after the call: after the second poll, before the third, with
    // two seconds' room either side.
    settings.followup.polls_ms = vec![1_000, 2_000, 6_000];
    let mut h = helpers::started(settings, quick_records()).await;
    h.simulator.script_call(
        &callee(1),
        CallScript {
            appears_after: Some(Duration::from_millis(4_000)),
            ..CallScript::default()
        },
    );
    h.simulator.script_call(
        &callee(2),
        CallScript {
            recorded: false,
            ..CallScript::default()
        },
    );
    for i in [1, 2] {
        h.publish_request(&request(&format!("r-{i}"), &callee(i), "ivr"), None)
            .await
            .unwrap();
    }
    let mut events = Events::default();
    read_until(&mut h, &mut events, 2).await;

    let late = events.result("r-1");
    assert_eq!(late.disposition, Disposition::Answered);
    assert_eq!(late.polls, 3, "found at the third poll");
    let missing = events.result("r-2");
    assert_eq!(missing.disposition, Disposition::Unknown);
    assert_eq!(missing.reason, Some(UnknownReason::NoRecord));
    assert_eq!(missing.match_kind, MatchKind::None);
    assert_eq!(missing.polls, 3);
    assert_eq!(missing.contact_id, None);
    // The older call to the same number is never taken for the request's.
    assert_eq!(missing.ccc_disposition, None);
    assert_followup_queue_drains(&h).await;
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_calls_to_one_number_get_their_own_records_or_ambiguous() {
    let mut settings = followup_settings(StoreBackend::Redis);
    // Two requests for one number, 1.5 s apart: no cooldown in the way.
    settings.cooldown.window_ms = 0;
    settings.followup.polls_ms = vec![3_000, 6_000, 9_000];
    settings.followup.clock_skew_ms = 200;
    let mut h = helpers::started(settings, quick_records()).await;
    let number = callee(7);

    // C: someone else called C's number from the same caller just after C's dial, inside
    // the match window: two records, nothing to tell them apart by.
    let other = callee(8);
    h.publish_request(&request("third", &other, "ivr"), None)
        .await
        .unwrap();
    let third = h.outcomes(1, WAIT).await.unwrap().remove(0).event;
    assert_eq!(third.status, Status::Dialed);
    h.simulator.add_call_record(CallRecord {
        contact_id: "someone-else".into(),
        instance_id: INSTANCE.into(),
        calling_number: CALLER.into(),
        called_number: other.clone(),
        start_time: Timestamp::now(),
        duration_s: 12,
        disposition: "Success".into(),
        agent_names: String::new(),
        release_reason: "NormalClearing".into(),
    });

    // A at t, B at t + 1.5 s. A's first poll (t + 3 s) sees both records and cannot tell;
    // B's (t + 4.5 s) sees only its own, the later one, and takes it; A's second poll then
    // finds the earlier one free and the later one taken: its own.
    h.publish_request(&request("first", &number, "ivr"), None)
        .await
        .unwrap();
    let first = h.outcomes(1, WAIT).await.unwrap().remove(0).event;
    assert_eq!(first.status, Status::Dialed);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    h.publish_request(&request("second", &number, "ivr"), None)
        .await
        .unwrap();

    let mut events = Events::default();
    read_until(&mut h, &mut events, 3).await;

    let mut calls: Vec<CallRecord> = h
        .simulator
        .call_records()
        .into_iter()
        .filter(|r| r.called_number == number && r.disposition == "Success")
        .collect();
    calls.sort_by_key(|r| r.start_time);
    assert_eq!(calls.len(), 2);
    let (a, b) = (events.result("first"), events.result("second"));
    assert_eq!(a.contact_id.as_deref(), Some(calls[0].contact_id.as_str()));
    assert_eq!(a.match_kind, MatchKind::Exact);
    assert_eq!(b.contact_id.as_deref(), Some(calls[1].contact_id.as_str()));
    assert_eq!(b.match_kind, MatchKind::Exact);
    // As timed, A cannot tell at its first poll and finds its own at the second; on a machine
    // slow enough to move B's dial or its first poll, A finds its own at the first or third.
    assert!((1..=3).contains(&a.polls), "A took {} polls", a.polls);

    let c = events.result("third");
    assert_eq!(c.disposition, Disposition::Unknown);
    assert_eq!(c.match_kind, MatchKind::Ambiguous);
    assert_eq!(c.reason, Some(UnknownReason::Ambiguous));
    assert_eq!(c.contact_id, None);
    assert_eq!(c.polls, 3);
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_result_is_published_as_stored_and_a_duplicated_job_publishes_it_again() {
    let mut h = helpers::started(followup_settings(StoreBackend::Redis), quick_records()).await;
    h.simulator
        .script_call(&callee(3), CallScript::disposition("NoAnswer"));
    h.publish_request(&request("r-3", &callee(3), "ivr"), None)
        .await
        .unwrap();
    let outcome = h.outcomes(1, WAIT).await.unwrap().remove(0).event;
    assert_eq!(outcome.status, Status::Dialed);

    // Before the job's first poll (a second after the dial), another delivery of it stored a
    // result: the job publishes that one, byte for byte, not what it would find itself.
    let store = RedisStore::connect(&h.settings.store, "test".into())
        .await
        .unwrap();
    let mut stored: serde_json::Value = serde_json::json!({
        "event_id": dialex_worker::followup::result::result_event_id("r-3"),
        "request_id": "r-3",
        "task_id": outcome.task_id,
        "disposition": "voicemail",
        "ccc_disposition": "Voicemail",
        "match": "exact",
        "polls": 1,
        "dialed_at": outcome.completed_at,
        "completed_at": outcome.completed_at,
    });
    stored["contact_id"] = "recorded-elsewhere".into();
    let stored = serde_json::to_vec(&stored).unwrap();
    assert_eq!(
        store.record_call_result("r-3", &stored).await.unwrap(),
        stored
    );
    let mut events = Events::default();
    events.outcomes.insert("r-3".into(), vec![outcome]);
    read_until(&mut h, &mut events, 1).await;
    assert_eq!(events.results["r-3"][0].2, stored);
    assert_eq!(events.result("r-3").disposition, Disposition::Voicemail);

    // The same job again (a redelivery, a second enqueue after a crash): the same bytes.
    let job = job_for(&events, "r-3", &callee(3));
    h.publish_followup_job(&job.to_json(), Default::default())
        .await
        .unwrap();
    read_until(&mut h, &mut events, 2).await;
    assert_no_more_results(&mut h, &mut events).await;
    let results = &events.results["r-3"];
    assert_eq!(results[1].2, stored, "the same bytes, the same event_id");
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_recording_and_publishing_publishes_the_recorded_result_after_restart() {
    // The harness declares the follow-up queues; the in-process worker that dials has the
    // follow-up off, so the only job is the test's own, with the hook.
    let mut h = helpers::harness(followup_settings(StoreBackend::Redis), quick_records()).await;
    h.settings.followup.enabled = false;
    h.start_worker(Harness::demo_credentials()).await.unwrap();
    h.publish_request(&request("r-4", &callee(4), "ivr"), None)
        .await
        .unwrap();
    let outcome = h.outcomes(1, WAIT).await.unwrap().remove(0).event;
    assert_eq!(outcome.status, Status::Dialed);
    h.stop_worker().await.unwrap().unwrap();
    h.settings.followup.enabled = true;
    // The call's record is visible by the time the job is polled.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut first = helpers::spawn_worker_process(&h);
    let mut events = Events::default();
    events.outcomes.insert("r-4".into(), vec![outcome]);
    let job = job_for(&events, "r-4", &callee(4));
    h.publish_followup_job(&job.to_json(), hooked("abort-after-result"))
        .await
        .unwrap();
    let status = tokio::time::timeout(WAIT, first.wait())
        .await
        .expect("the hook aborts the worker")
        .unwrap();
    assert!(!status.success());
    let store = RedisStore::connect(&h.settings.store, "test".into())
        .await
        .unwrap();
    let recorded = store
        .call_result("r-4")
        .await
        .unwrap()
        .expect("the result was recorded before the crash");

    let _second = helpers::spawn_worker_process(&h);
    read_until(&mut h, &mut events, 1).await;
    assert_no_more_results(&mut h, &mut events).await;
    let results = &events.results["r-4"];
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].2, recorded, "the recorded result, as recorded");
    assert_eq!(results[0].1.disposition, Disposition::Answered);
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_follow_up_keeps_its_own_pace() {
    let mut settings = followup_settings(StoreBackend::Embedded);
    settings.followup.queries_per_second = 3.0;
    settings.followup.fetch_release_reason = false;
    settings.followup.polls_ms = vec![1_000, 3_000, 10_000];
    // CCC's own limit, a little above the follow-up's: a query over it is throttled.
    let sim = SimConfig {
        record_queries_per_second: 5,
        ..quick_records()
    };
    let mut h = helpers::started(settings, sim).await;
    let n = 18;
    for i in 0..n {
        h.publish_request(&request(&format!("p-{i}"), &callee(100 + i), "ivr"), None)
            .await
            .unwrap();
    }
    let mut events = Events::default();
    read_until(&mut h, &mut events, n).await;

    let queries = h.simulator.record_queries();
    assert!(
        queries.iter().all(|q| !q.throttled),
        "the simulator throttled a query"
    );
    let busiest = queries
        .iter()
        .map(|q| {
            let until = q.at + jiff::SignedDuration::from_secs(1);
            queries
                .iter()
                .filter(|o| o.at >= q.at && o.at < until)
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(busiest <= 5, "{busiest} queries within one second");
    assert!(
        queries.len() >= n,
        "{} queries for {n} requests",
        queries.len()
    );
    let answered = events
        .results
        .values()
        .filter(|r| r[0].1.disposition == Disposition::Answered)
        .count();
    assert_eq!(answered, n);
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_that_keep_failing_end_unknown_and_one_that_passes_on_retry_is_found() {
    let mut settings = followup_settings(StoreBackend::Embedded);
    settings.followup.max_query_failures = 2;
    let mut h = helpers::started(settings, quick_records()).await;
    // Two failures for the first request: `query_failed` after its retry.
    h.simulator.inject_query_fault(Fault::Unavailable, 2);
    h.publish_request(&request("fails", &callee(5), "ivr"), None)
        .await
        .unwrap();
    let mut events = Events::default();
    read_until(&mut h, &mut events, 1).await;
    let failed = events.result("fails");
    assert_eq!(failed.disposition, Disposition::Unknown);
    assert_eq!(failed.reason, Some(UnknownReason::QueryFailed));
    assert_eq!(failed.match_kind, MatchKind::None);

    // One failure: the retry finds the call.
    h.simulator.inject_query_fault(Fault::Throttle, 1);
    h.publish_request(&request("passes", &callee(6), "ivr"), None)
        .await
        .unwrap();
    read_until(&mut h, &mut events, 2).await;
    let found = events.result("passes");
    assert_eq!(found.disposition, Disposition::Answered);
    assert_eq!(found.polls, 1);
    h.cleanup().await.unwrap();
}

/// The follow-up job the worker would have scheduled for `request_id`, due now.
fn job_for(events: &Events, request_id: &str, number: &str) -> FollowupJob {
    let outcome = dialed(events, request_id);
    let job = serde_json::json!({
        "request_id": request_id,
        "instance_id": INSTANCE,
        "caller": CALLER,
        "callee": number,
        "task_id": outcome.task_id,
        "dialed_at": outcome.ccc_time.unwrap_or(outcome.completed_at),
        "attributes": {"ticket": request_id},
        "polls": 0,
        "due_at": Timestamp::now(),
    });
    serde_json::from_value(job).expect("a follow-up job")
}

/// No follow-up job is left, in the follow-up queue or waiting in its tiers.
async fn assert_followup_queue_drains(h: &Harness) {
    let tiers = Tiers::of_followups(&h.settings).expect("the follow-up is on");
    let queues = tiers.all().iter().map(|tier| tier.queue.clone()).chain([h
        .settings
        .amqp
        .names
        .followup_queue
        .clone()]);
    for queue in queues {
        let depth = h
            .settled_depth(&queue, 0, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(depth, 0, "{queue} still holds {depth} job(s)");
    }
}

/// Nothing more arrives for two seconds: no second result for any request.
async fn assert_no_more_results(h: &mut Harness, events: &mut Events) {
    while let Some(delivered) = h.next_event(Duration::from_secs(2)).await.unwrap() {
        if let Delivered::Result(result) = delivered {
            panic!("another call result: {:?}", result.event);
        }
    }
    for (request, results) in &events.results {
        let first = &results[0].2;
        assert!(
            results.iter().all(|r| &r.2 == first),
            "two different results for {request}"
        );
    }
}
