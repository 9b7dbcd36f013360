//! Gates against the real broker, Redis and the simulator: business hours and deferral
//! through the wait queues, expiry, the do-not-call list, and global concurrency and pacing.

mod helpers;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use dialex_devkit::harness::{Harness, Received};
use dialex_devkit::simulator::SimConfig;
use dialex_worker::config::StoreBackend;
use dialex_worker::outcome::Status;
use helpers::{WAIT, callee, outcomes_until, request, settings, settings_with, started};
use jiff::{Timestamp, ToSpan as _};
use secrecy::ExposeSecret as _;

fn request_with(id: &str, number: &str, extra: serde_json::Value) -> Vec<u8> {
    let mut body: serde_json::Value = serde_json::from_slice(&request(id, number, "ivr")).unwrap();
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body.to_string().into_bytes()
}

fn statuses(received: &[Received]) -> Vec<Status> {
    received.iter().map(|r| r.event.status).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_before_not_before_waits_in_the_wait_queues_then_is_dialed_once() {
    let mut h = started(settings(), SimConfig::default()).await;
    let not_before = Timestamp::now() + 3.seconds();
    h.publish_request(
        &request_with(
            "later",
            &callee(1),
            serde_json::json!({"not_before": not_before.to_string()}),
        ),
        None,
    )
    .await
    .unwrap();
    let received = outcomes_until(&mut h, WAIT, |r| {
        r.iter().any(|e| e.event.status == Status::Dialed)
    })
    .await;
    assert_eq!(statuses(&received), [Status::Deferred, Status::Dialed]);
    let deferred = &received[0].event;
    assert_eq!(deferred.code.as_deref(), Some("not_before"));
    assert_eq!(deferred.next_attempt_at, Some(not_before));
    let dials = h.simulator.dials();
    assert_eq!(dials.len(), 1);
    assert!(
        dials[0].started_at >= not_before,
        "dialed before not_before"
    );
    // Nothing else arrives: one deferred event, one terminal event.
    assert!(
        h.next_outcome(Duration::from_secs(1))
            .await
            .unwrap()
            .is_none()
    );
    h.cleanup().await.unwrap();
}

/// A calendar in UTC whose only window opens at the next minute boundary (at least 5 s away).
fn opening_soon() -> (Timestamp, dialex_worker::config::BusinessHoursSettings) {
    let now = Timestamp::now();
    let mut opens = now
        .round(
            jiff::TimestampRound::new()
                .smallest(jiff::Unit::Minute)
                .mode(jiff::RoundMode::Ceil),
        )
        .unwrap();
    if opens.duration_since(now).as_secs() < 5 {
        opens += 1.minute();
    }
    let start = opens.strftime("%H:%M").to_string();
    let end = (opens + 10.minutes()).strftime("%H:%M").to_string();
    let window = if end > start {
        format!("{start}-{end}")
    } else {
        format!("{start}-24:00")
    };
    let days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let weekly: BTreeMap<String, Vec<String>> = days
        .iter()
        .map(|d| (d.to_string(), vec![window.clone()]))
        .collect();
    let mut settings = settings().business_hours;
    settings.default.timezone = "UTC".into();
    settings.default.weekly = weekly;
    settings.default.closed_dates.clear();
    settings.default.open_dates.clear();
    (opens, settings)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_outside_hours_is_dialed_when_the_call_centre_opens() {
    let (opens, hours) = opening_soon();
    let mut s = settings();
    s.business_hours = hours;
    let mut h = started(s, SimConfig::default()).await;
    h.publish_request(&request("after-hours", &callee(2), "ivr"), None)
        .await
        .unwrap();
    // A request that would expire before the opening ends `expired`, undialed.
    let expires = Timestamp::now() + 2.seconds();
    h.publish_request(
        &request_with(
            "too-late",
            &callee(3),
            serde_json::json!({"expires_at": expires.to_string()}),
        ),
        None,
    )
    .await
    .unwrap();
    let received = outcomes_until(&mut h, Duration::from_secs(90), |r| {
        r.iter().any(|e| e.event.status == Status::Dialed)
    })
    .await;
    let of = |id: &str| -> Vec<Status> {
        received
            .iter()
            .filter(|r| r.event.request_id == id)
            .map(|r| r.event.status)
            .collect()
    };
    assert_eq!(of("after-hours"), [Status::Deferred, Status::Dialed]);
    assert_eq!(of("too-late"), [Status::Expired]);
    let deferred = received
        .iter()
        .find(|r| r.event.status == Status::Deferred)
        .unwrap();
    assert_eq!(deferred.event.code.as_deref(), Some("outside_hours"));
    assert_eq!(deferred.event.next_attempt_at, Some(opens));
    let dials = h.simulator.dials();
    assert_eq!(dials.len(), 1);
    assert_eq!(dials[0].callee, callee(2));
    assert!(dials[0].started_at >= opens, "dialed before opening");
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_request_is_never_dialed() {
    let mut h = started(settings(), SimConfig::default()).await;
    let past = Timestamp::now() - 1.second();
    h.publish_request(
        &request_with(
            "stale",
            &callee(4),
            serde_json::json!({"expires_at": past.to_string()}),
        ),
        None,
    )
    .await
    .unwrap();
    let r = h.outcomes(1, WAIT).await.unwrap();
    assert_eq!(r[0].event.status, Status::Expired);
    assert_eq!(r[0].event.code.as_deref(), Some("expired"));
    assert_eq!(h.simulator.dial_count(), 0);
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_on_the_do_not_call_list_are_never_dialed_and_the_list_reloads() {
    let dir = std::env::temp_dir().join(format!("dialex-dnc-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("dnc.txt");
    std::fs::write(&file, "# opted out\n+86 157-3203-6617\n").unwrap();
    let mut s = settings();
    s.dnc.file = file.clone();
    s.dnc.reload_interval_ms = 100;
    let mut h = started(s, SimConfig::default()).await;

    h.publish_request(&request("listed", "15732036617", "ivr"), None)
        .await
        .unwrap();
    let r = h.outcomes(1, WAIT).await.unwrap();
    assert_eq!(r[0].event.status, Status::Suppressed);
    assert_eq!(r[0].event.code.as_deref(), Some("dnc"));

    // Opting out while the worker runs takes effect without a restart.
    let number = callee(5);
    std::fs::write(&file, format!("+86 157-3203-6617\n{number}\n")).unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    h.publish_request(&request("opted-out-later", &number, "ivr"), None)
        .await
        .unwrap();
    let r = h.outcomes(1, WAIT).await.unwrap();
    assert_eq!(r[0].event.status, Status::Suppressed);
    assert_eq!(h.simulator.dial_count(), 0);
    h.cleanup().await.unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_on_the_shared_redis_list_are_never_dialed() {
    use dialex_worker::gates::dnc::SharedList as _;
    use dialex_worker::store::redis::dnc::{RedisDnc, RedisDncSet};
    let mut s = settings_with(StoreBackend::Redis);
    s.dnc.shared = true;
    let mut h = started(s, SimConfig::default()).await;
    let list = RedisDncSet::connect(&RedisDnc::from_settings(&h.settings))
        .await
        .unwrap();
    let number = callee(6);
    list.add(&dialex_worker::phone::PhoneNumber::parse(&number).unwrap())
        .await
        .unwrap();
    h.publish_request(&request("shared-listed", &number, "ivr"), None)
        .await
        .unwrap();
    h.publish_request(&request("not-listed", &callee(7), "ivr"), None)
        .await
        .unwrap();
    let received = h.outcomes(2, WAIT).await.unwrap();
    for r in &received {
        let expected = if r.event.request_id == "shared-listed" {
            Status::Suppressed
        } else {
            Status::Dialed
        };
        assert_eq!(r.event.status, expected, "{}", r.event.request_id);
    }
    assert_eq!(h.simulator.dial_count(), 1);
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dnc_command_reads_numbers_from_standard_input_and_the_worker_honours_them() {
    // Numbers kept off the command line (shell history, `ps`): piped in, one per line.
    use std::io::Write as _;
    let mut s = settings_with(StoreBackend::Redis);
    s.dnc.shared = true;
    let mut h = started(s, SimConfig::default()).await;
    let (listed, spelled) = (callee(8), "+86 138-0000-0009");
    let mut dnc = std::process::Command::new(env!("CARGO_BIN_EXE_dialex-worker"))
        .args(["dnc", "add", "--from", "-"])
        .env("DIALEX_STORE__URL", h.settings.store.url.expose_secret())
        .env("DIALEX_STORE__KEY_PREFIX", &h.settings.store.key_prefix)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the dnc command starts");
    dnc.stdin
        .take()
        .expect("stdin")
        .write_all(format!("# opted out today\n{listed}\n\n{spelled}\n").as_bytes())
        .unwrap();
    let out = dnc.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    for (id, number) in [
        ("stdin-listed", listed.as_str()),
        ("stdin-spelled", "13800000009"),
    ] {
        h.publish_request(&request(id, number, "ivr"), None)
            .await
            .unwrap();
    }
    let received = h.outcomes(2, WAIT).await.unwrap();
    assert!(
        received
            .iter()
            .all(|r| r.event.status == Status::Suppressed),
        "{received:?}"
    );
    assert_eq!(h.simulator.dial_count(), 0);
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_the_concurrency_and_pace_limits() {
    let mut s = settings_with(StoreBackend::Redis);
    s.cooldown.window_ms = 0;
    s.limits.max_in_flight = 5;
    s.limits.calls_per_second = 20.0;
    s.limits.burst = 1;
    // 96 requests in hand at 20/s wait up to 5 s for their slot: the claim must outlast that
    // and the dial.
    s.store.lease_ms = 30_000;
    let sim = SimConfig {
        latency: Duration::from_millis(100),
        ..SimConfig::default()
    };
    let mut h = Harness::start(s, sim)
        .await
        .expect("RabbitMQ must be reachable");
    const REQUESTS: usize = 600;
    for i in 0..REQUESTS {
        h.publish_request(&request(&format!("paced-{i}"), &callee(i), "ivr"), None)
            .await
            .unwrap();
    }
    for _ in 0..3 {
        h.start_worker(Harness::demo_credentials()).await.unwrap();
    }
    // Requests without a slot soon book one and wait outside (a `deferred` event each).
    let terminal = |r: &Received| r.event.status != Status::Deferred;
    let received = outcomes_until(&mut h, Duration::from_secs(60), |received| {
        received.iter().filter(|r| terminal(r)).count() >= REQUESTS
    })
    .await;
    let not_dialed: Vec<_> = received
        .iter()
        .filter(|r| terminal(r) && r.event.status != Status::Dialed)
        .map(|r| (r.event.status, r.event.code.clone()))
        .collect();
    assert!(not_dialed.is_empty(), "{not_dialed:?}");

    let mut dials = h.simulator.dials();
    dials.sort_by_key(|d| d.started_at);
    // Most calls in flight at once, from the simulator's own start and end times.
    let mut edges: Vec<(Timestamp, i32)> = dials
        .iter()
        .flat_map(|d| [(d.started_at, 1), (d.ended_at, -1)])
        .collect();
    edges.sort_by_key(|&(at, delta)| (at, delta));
    let (mut current, mut peak) = (0, 0);
    for (_, delta) in edges {
        current += delta;
        peak = peak.max(current);
    }
    // Most calls started in any one-second window.
    let starts: Vec<Timestamp> = dials.iter().map(|d| d.started_at).collect();
    let mut busiest = 0;
    let mut first = 0;
    for (last, at) in starts.iter().enumerate() {
        while at.duration_since(starts[first]).as_secs_f64() >= 1.0 {
            first += 1;
        }
        busiest = busiest.max(last - first + 1);
    }
    let span = starts[REQUESTS - 1].duration_since(starts[0]).as_secs_f64();
    let pace = (REQUESTS - 1) as f64 / span;
    println!(
        "3 replicas, {REQUESTS} requests: peak concurrency {peak} (cap 5), busiest second {busiest} calls (cap 20), pace {pace:.1}/s over {span:.1} s ({:.0}% of 20/s)",
        pace / 20.0 * 100.0
    );
    assert!(peak <= 5, "concurrency {peak} exceeded 5");
    // Every grant, booked or not, keeps the instance's spacing from the grants before it (the
    // limiter's starts frontier): at most 21 in a second as granted. Measured here at the
    // simulator, a call's arrival can lag its grant (three replicas and the simulator share two
    // threads), so one call of slack is allowed for that.
    assert!(busiest <= 22, "{busiest} calls in one second");
    assert!(pace >= 18.0, "pace {pace:.1}/s is below 90% of 20/s");
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_its_slot_never_outlives_its_claim() {
    // One call a second, eight requests in hand, and a lease that leaves 1.2 s beyond the
    // longest dial. Without a bound, the last requests would wait past their lease; their
    // duplicates, arriving then, would take the claims over and end them `unknown` while
    // the first deliveries still dial them.
    let mut s = settings();
    s.store.lease_ms = 5_500;
    s.limits.calls_per_second = 1.0;
    s.limits.burst = 1;
    s.cooldown.window_ms = 0;
    let mut h = started(s, SimConfig::default()).await;
    const REQUESTS: usize = 8;
    let body = |i: usize| request(&format!("slow-slot-{i}"), &callee(700 + i), "ivr");
    for i in 0..REQUESTS {
        h.publish_request(&body(i), None).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    for i in 0..REQUESTS {
        h.publish_request(&body(i), None).await.unwrap();
    }
    let mut terminal: HashMap<String, HashSet<(Status, Option<String>)>> = HashMap::new();
    let done = |t: &HashMap<String, HashSet<(Status, Option<String>)>>| t.len() == REQUESTS;
    while !done(&terminal) {
        let r = h
            .next_outcome(WAIT)
            .await
            .unwrap()
            .expect("an outcome for every request");
        if r.event.status != Status::Deferred {
            terminal
                .entry(r.event.request_id.clone())
                .or_default()
                .insert((r.event.status, r.event.task_id.clone()));
        }
    }
    // Re-published results may still arrive: give them a moment.
    while let Some(r) = h.next_outcome(Duration::from_secs(3)).await.unwrap() {
        if r.event.status != Status::Deferred {
            terminal
                .entry(r.event.request_id.clone())
                .or_default()
                .insert((r.event.status, r.event.task_id.clone()));
        }
    }
    let dials = h.simulator.dials();
    assert_eq!(dials.len(), REQUESTS, "each dialed once");
    for (id, seen) in &terminal {
        let i: usize = id.trim_start_matches("slow-slot-").parse().unwrap();
        let task = dials
            .iter()
            .find(|d| d.callee == callee(700 + i))
            .map(|d| d.task_id.clone());
        let expected: HashSet<_> = [(Status::Dialed, task)].into_iter().collect();
        assert_eq!(seen, &expected, "{id}");
    }
    h.cleanup().await.unwrap();
}
