//! Never twice, never lost, across `kill -9`: the worker runs as a separate process and is
//! killed at varying moments while requests are in flight.

mod helpers;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use dialex_devkit::harness::Harness;
use dialex_devkit::simulator::{Fault, SimConfig};
use dialex_worker::config::StoreBackend;
use dialex_worker::outcome::Status;
use helpers::{WAIT, callee, request, settings_with, spawn_worker_process};

/// Publishes 2,000 requests, kills the worker process with SIGKILL each time another share of
/// the outcomes is in (the shares differ per run), restarts it, and waits for every request
/// to reach a terminal status.
async fn killed_workers_never_dial_twice_nor_lose_a_request(backend: StoreBackend) {
    let mut h = Harness::start(settings_with(backend), SimConfig::default())
        .await
        .expect("RabbitMQ must be reachable");
    const REQUESTS: usize = 2_000;
    for i in 0..REQUESTS {
        h.publish_request(&request(&format!("kill-{i}"), &callee(i), "ivr"), None)
            .await
            .unwrap();
    }
    // Kill when these many distinct requests have an outcome: around a quarter, a third and
    // a half, jittered so every run kills at different moments.
    let jitter = (uuid::Uuid::new_v4().as_u128() % 150) as usize;
    let kill_points = [500 + jitter, 700 + jitter, 1_000 + jitter];

    let mut worker = spawn_worker_process(&h);
    let mut kills = 0;
    let mut events: HashMap<String, HashSet<(uuid::Uuid, Status)>> = HashMap::new();
    while events.len() < REQUESTS {
        let Some(r) = h.next_outcome(WAIT).await.unwrap() else {
            panic!(
                "no outcome for {WAIT:?} with {} of {REQUESTS} done",
                events.len()
            );
        };
        events
            .entry(r.event.request_id.clone())
            .or_default()
            .insert((r.event.event_id, r.event.status));
        if kills < kill_points.len() && events.len() >= kill_points[kills] {
            worker.start_kill().unwrap();
            worker.wait().await.unwrap();
            kills += 1;
            worker = spawn_worker_process(&h);
        }
    }
    worker.start_kill().unwrap();
    worker.wait().await.unwrap();

    let dials = h.simulator.dials();
    let mut per_callee: HashMap<&str, usize> = HashMap::new();
    for d in &dials {
        *per_callee.entry(d.callee.as_str()).or_default() += 1;
    }
    let dialed_twice = per_callee.values().filter(|&&n| n > 1).count();
    let conflicting = events.values().filter(|set| set.len() > 1).count();
    let unknown = events
        .values()
        .filter(|set| set.iter().any(|(_, s)| *s == Status::Unknown))
        .count();
    println!(
        "{backend:?}: {REQUESTS} requests, {kills} kills, {} dials, {dialed_twice} callees dialed twice, {conflicting} requests with conflicting outcomes, {unknown} unknown",
        dials.len()
    );
    assert_eq!(kills, kill_points.len());
    assert_eq!(dialed_twice, 0, "a customer was rung twice");
    assert_eq!(
        conflicting, 0,
        "a request got two different terminal outcomes"
    );
    assert_eq!(events.len(), REQUESTS);
    // Every dialed request's dial is in the simulator log; unknown ones may or may not be.
    let dialed = events
        .values()
        .filter(|set| set.iter().any(|(_, s)| *s == Status::Dialed))
        .count();
    assert_eq!(dialed + unknown, REQUESTS);
    assert!(dials.len() >= dialed && dials.len() <= REQUESTS);
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_test_with_the_embedded_store() {
    killed_workers_never_dial_twice_nor_lose_a_request(StoreBackend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_test_with_the_redis_store() {
    killed_workers_never_dial_twice_nor_lose_a_request(StoreBackend::Redis).await;
}

/// The dial was placed but its answer never arrived: the worker dies mid-call. The request
/// must end as `unknown` (`interrupted`), never be dialed again.
async fn a_crash_between_dial_and_record_is_unknown_not_redialed(backend: StoreBackend) {
    let sim = SimConfig {
        slow_delay: Duration::from_secs(30),
        ..SimConfig::default()
    };
    let mut s = settings_with(backend);
    // The slow answer must outlast the kill, not the client's patience.
    s.ccc.request_timeout_ms = 1_000;
    let mut h = Harness::start(s, sim)
        .await
        .expect("RabbitMQ must be reachable");
    let number = callee(5);
    h.simulator.inject(&number, Fault::Slow, 1);
    let mut worker = spawn_worker_process(&h);
    h.publish_request(&request("mid-call", &number, "ivr"), None)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while h.simulator.dial_count() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dial never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    worker.start_kill().unwrap();
    worker.wait().await.unwrap();
    let _worker = spawn_worker_process(&h);

    let r = h.outcomes(1, WAIT).await.unwrap();
    assert_eq!(r[0].event.request_id, "mid-call");
    assert_eq!(r[0].event.status, Status::Unknown);
    assert_eq!(r[0].event.code.as_deref(), Some("interrupted"));
    // Give a wrong second dial time to happen, then check it did not.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.simulator.dial_count(), 1);
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_call_with_the_embedded_store() {
    a_crash_between_dial_and_record_is_unknown_not_redialed(StoreBackend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_call_with_the_redis_store() {
    a_crash_between_dial_and_record_is_unknown_not_redialed(StoreBackend::Redis).await;
}
