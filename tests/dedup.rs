//! Never twice: duplicates, replicas and repeat clicks against the real broker, Redis and the
//! CCC simulator.

mod helpers;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use dialex_devkit::harness::{Harness, Received};
use dialex_devkit::simulator::SimConfig;
use dialex_worker::config::StoreBackend;
use dialex_worker::metrics::DedupKind;
use dialex_worker::outcome::Status;
use dialex_worker::outcome::SuppressReason;
use helpers::{
    WAIT, assert_dialed_once, callee, only_outcome, outcomes_until, request, settings_with, started,
};

/// Request ids that have at least one event, and every event id seen per request.
fn event_ids(received: &[Received]) -> HashMap<String, HashSet<uuid::Uuid>> {
    let mut ids: HashMap<String, HashSet<uuid::Uuid>> = HashMap::new();
    for r in received {
        ids.entry(r.event.request_id.clone())
            .or_default()
            .insert(r.event.event_id);
    }
    ids
}

/// 200 requests, each published three times: 200 dials, and each request's events share one
/// `event_id`.
async fn duplicates_are_dialed_once(backend: StoreBackend) {
    let mut h = started(settings_with(backend), SimConfig::default()).await;
    const REQUESTS: usize = 200;
    for round in 0..3 {
        for i in 0..REQUESTS {
            let id = format!("dup-{i}");
            h.publish_request(&request(&id, &callee(i), "ivr"), None)
                .await
                .unwrap();
        }
        if round == 0 {
            // Let some finish first so both paths run: duplicates of recorded results and
            // duplicates of requests still being dialed.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Every message gets one publish: the result, or the stored result again.
    let received = h.outcomes(3 * REQUESTS, WAIT).await.unwrap();
    // Every duplicate was answered from the record (some after waiting out a live claim).
    assert_eq!(
        h.metrics.dedup_count(DedupKind::Recorded),
        2 * REQUESTS as u64
    );
    let ids = event_ids(&received);
    assert_eq!(ids.len(), REQUESTS);
    assert!(
        ids.values().all(|set| set.len() == 1),
        "a request's events must share one event_id"
    );
    assert!(received.iter().all(|r| r.event.status == Status::Dialed));
    let dials = h.simulator.dials();
    assert_eq!(dials.len(), REQUESTS, "one dial per request");
    let callees: HashSet<&str> = dials.iter().map(|d| d.callee.as_str()).collect();
    assert_eq!(callees.len(), REQUESTS);
    // The task id published each time is the one dial's.
    let task_by_callee: HashMap<&str, &str> = dials
        .iter()
        .map(|d| (d.callee.as_str(), d.task_id.as_str()))
        .collect();
    for r in &received {
        let i: usize = r.event.request_id["dup-".len()..].parse().unwrap();
        assert_eq!(
            r.event.task_id.as_deref(),
            Some(task_by_callee[callee(i).as_str()])
        );
    }
    helpers::assert_request_queue_drains(&h).await;
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_dialed_once_with_the_embedded_store() {
    duplicates_are_dialed_once(StoreBackend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_dialed_once_with_the_redis_store() {
    duplicates_are_dialed_once(StoreBackend::Redis).await;
}

/// r-1 is dialed; r-1 again for another callee is rejected (`request_id_reused`), parked and not
/// dialed; the original r-1 delivered a third time still gets its own `dialed` event.
async fn reused_request_id_is_rejected_and_the_original_kept(backend: StoreBackend) {
    let mut h = started(settings_with(backend), SimConfig::default()).await;
    let original = request("r-1", &callee(1), "ivr");
    let dialed = only_outcome(&mut h, &original).await;
    assert_dialed_once(&dialed, &h.simulator);

    let reused = request("r-1", &callee(2), "ivr");
    let rejected = only_outcome(&mut h, &reused).await;
    assert_eq!(rejected.request_id, "r-1", "{backend:?}");
    assert_eq!(rejected.status, Status::Rejected, "{backend:?}");
    assert_eq!(rejected.code.as_deref(), Some("request_id_reused"));
    assert_eq!(rejected.task_id, None);
    let message = rejected.message.as_deref().unwrap_or_default();
    assert!(
        !message.contains(&callee(2)) && !message.contains(&callee(1)),
        "{message}"
    );
    assert_eq!(
        h.simulator.dial_count(),
        1,
        "a reused request_id was dialed"
    );

    // Parked on the dead-letter queue with its reason (the event is published first, so wait).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let dead = loop {
        let dead = h.dead_letters().await.unwrap();
        if !dead.is_empty() || tokio::time::Instant::now() > deadline {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dead.len(), 1, "{backend:?}");
    assert_eq!(dead[0].reason.as_deref(), Some("request_id_reused"));
    assert_eq!(dead[0].body, reused);

    // The first request's record was left intact: a redelivery gets its outcome again.
    let again = only_outcome(&mut h, &original).await;
    assert_dialed_once(&again, &h.simulator);
    assert_eq!(again.task_id, dialed.task_id);
    assert_eq!(again.event_id, dialed.event_id);
    assert_eq!(h.metrics.dedup_count(DedupKind::Recorded), 1);
    helpers::assert_request_queue_drains(&h).await;
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_request_id_is_rejected_and_the_original_kept_with_the_embedded_store() {
    reused_request_id_is_rejected_and_the_original_kept(StoreBackend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_request_id_is_rejected_and_the_original_kept_with_the_redis_store() {
    reused_request_id_is_rejected_and_the_original_kept(StoreBackend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_sharing_redis_never_dial_twice() {
    let mut h = Harness::start(settings_with(StoreBackend::Redis), SimConfig::default())
        .await
        .expect("RabbitMQ must be reachable");
    for _ in 0..3 {
        h.start_worker(Harness::demo_credentials()).await.unwrap();
    }
    const UNIQUE: usize = 1_500;
    const TOTAL: usize = 2_000;
    for n in 0..TOTAL {
        // The last 500 repeat earlier requests, spread over the run.
        let i = if n < UNIQUE { n } else { (n - UNIQUE) * 3 };
        h.publish_request(&request(&format!("rep-{i}"), &callee(i), "ivr"), None)
            .await
            .unwrap();
    }
    let received = h.outcomes(TOTAL, WAIT).await.unwrap();
    let ids = event_ids(&received);
    assert_eq!(ids.len(), UNIQUE);
    assert!(ids.values().all(|set| set.len() == 1));
    let dials = h.simulator.dials();
    let callees: HashSet<&str> = dials.iter().map(|d| d.callee.as_str()).collect();
    assert_eq!(callees.len(), dials.len(), "a callee was dialed twice");
    assert_eq!(dials.len(), UNIQUE);
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeat_clicks_for_one_callee_are_coalesced_into_one_call() {
    for backend in [StoreBackend::Embedded, StoreBackend::Redis] {
        let mut h = started(settings_with(backend), SimConfig::default()).await;
        let number = callee(77);
        for click in 0..3 {
            h.publish_request(&request(&format!("click-{click}"), &number, "ivr"), None)
                .await
                .unwrap();
        }
        let received = outcomes_until(&mut h, WAIT, |r| event_ids(r).len() == 3).await;
        let dialed: Vec<&Received> = received
            .iter()
            .filter(|r| r.event.status == Status::Dialed)
            .collect();
        let suppressed: Vec<&Received> = received
            .iter()
            .filter(|r| r.event.status == Status::Suppressed)
            .collect();
        assert_eq!(dialed.len(), 1, "{backend:?}");
        assert_eq!(suppressed.len(), 2, "{backend:?}");
        let task_id = dialed[0].event.task_id.as_deref();
        for s in &suppressed {
            assert_eq!(s.event.code.as_deref(), Some("cooldown"));
            // The earlier call's task id, once it is known.
            assert!(s.event.task_id.is_none() || s.event.task_id.as_deref() == task_id);
        }
        assert_eq!(h.simulator.dial_count(), 1, "{backend:?}");
        assert_eq!(h.metrics.suppressed_count(SuppressReason::Cooldown), 2);

        // Outside the window the callee can be called again.
        let mut short = h.settings.clone();
        short.cooldown.window_ms = 1;
        h.cleanup().await.unwrap();
        let mut h = started(short, SimConfig::default()).await;
        for click in 0..2 {
            h.publish_request(&request(&format!("later-{click}"), &number, "ivr"), None)
                .await
                .unwrap();
            let r = h.outcomes(1, WAIT).await.unwrap();
            assert_eq!(r[0].event.status, Status::Dialed, "{backend:?}");
        }
        h.cleanup().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_cap_stops_calls_beyond_the_limit_and_counts_failed_calls_back() {
    for backend in [StoreBackend::Embedded, StoreBackend::Redis] {
        let mut settings = settings_with(backend);
        settings.cooldown.window_ms = 0;
        settings.cooldown.max_per_day = 2;
        // No hop through the wait queues: three 503s end the first request as `failed`.
        settings.ccc.max_total_attempts = settings.ccc.max_attempts;
        let mut h = started(settings, SimConfig::default()).await;
        let number = callee(88);
        // A call that certainly was not placed does not count against the cap.
        h.simulator
            .inject(&number, dialex_devkit::simulator::Fault::Unavailable, 3);
        let mut statuses = Vec::new();
        for n in 0..4 {
            h.publish_request(&request(&format!("cap-{n}"), &number, "ivr"), None)
                .await
                .unwrap();
            // One at a time, so the order of the outcomes is the order of the requests.
            let r = h.outcomes(1, WAIT).await.unwrap();
            statuses.push((r[0].event.status, r[0].event.code.clone()));
        }
        assert_eq!(statuses[0].0, Status::Failed, "{backend:?}");
        assert_eq!(statuses[1].0, Status::Dialed, "{backend:?}");
        assert_eq!(statuses[2].0, Status::Dialed, "{backend:?}");
        assert_eq!(
            statuses[3],
            (Status::Suppressed, Some("daily_cap".to_owned())),
            "{backend:?}"
        );
        assert_eq!(h.simulator.dial_count(), 2);
        assert_eq!(h.metrics.suppressed_count(SuppressReason::DailyCap), 1);
        h.cleanup().await.unwrap();
    }
}
