//! Fair dispatch: one instance's (or caller's) backlog at its pace never holds back another
//! instance's requests, and each busy instance still uses its whole pace, within its caps.

mod helpers;

use std::collections::HashMap;
use std::time::Duration;

use dialex_devkit::harness::Harness;
use dialex_devkit::simulator::{DialRecord, SimConfig};
use dialex_worker::config::{Settings, StoreBackend};
use dialex_worker::metrics::{RateLabels, ReasonLabels};
use helpers::{WAIT, callee, hooked, settings, settings_with, started};
use jiff::Timestamp;

const CALLER: &str = "02285196281";
const OTHER_CALLER: &str = "02285196282";

/// A backlog for one instance (and caller), published at once, and the caps it runs under.
struct Backlog {
    instance: &'static str,
    caller: &'static str,
    requests: usize,
    /// Calls per second the backlog is held to (the instance's, or the caller's), burst 1.
    rate: f64,
    /// The instance's permits (`None`: not this test's concern).
    in_flight: Option<u32>,
    /// The `x-dialex-test-hook` its requests carry, if any.
    hook: Option<&'static str>,
}

/// Requests published one at a time, slower than their own caps: each should be dialed as
/// soon as it is published, whatever the backlogs.
struct Trickle {
    instance: &'static str,
    caller: &'static str,
    requests: usize,
    every: Duration,
}

fn request_for(instance: &str, caller: &str, request_id: &str, callee: &str) -> Vec<u8> {
    serde_json::json!({
        "request_id": request_id,
        "instance_id": instance,
        "caller": caller,
        "callee": callee,
        "answer_mode": "ivr",
        "rout_point": "paEF_1GAQXXJ",
    })
    .to_string()
    .into_bytes()
}

/// `backlog`'s own caps in `settings`, burst 1.
fn cap(settings: &mut Settings, backlog: &Backlog, per_caller: bool) {
    let own = settings
        .limits
        .instances
        .entry(backlog.instance.to_owned())
        .or_default();
    own.burst = Some(1);
    own.max_in_flight = backlog.in_flight;
    if per_caller {
        own.per_caller_calls_per_second = Some(backlog.rate);
    } else {
        own.calls_per_second = Some(backlog.rate);
    }
}

/// Publishes the backlogs interleaved (one of each in turn), waits until they are at their
/// pace, then publishes the trickle; returns each trickle callee's publish time once every
/// request is dialed.
async fn run(h: &Harness, backlogs: &[Backlog], trickle: &Trickle) -> HashMap<String, Timestamp> {
    let most = backlogs.iter().map(|b| b.requests).max().unwrap_or(0);
    let mut n = 0;
    for i in 0..most {
        for (lane, b) in backlogs.iter().enumerate().filter(|(_, b)| i < b.requests) {
            let id = format!("busy-{lane}-{i}");
            let body = request_for(b.instance, b.caller, &id, &callee(n));
            let properties = b.hook.map(hooked).unwrap_or_default();
            h.publish_request_with(&body, properties).await.unwrap();
            n += 1;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut published = HashMap::new();
    for i in 0..trickle.requests {
        let number = callee(100_000 + i);
        let body = request_for(
            trickle.instance,
            trickle.caller,
            &format!("idle-{i}"),
            &number,
        );
        h.publish_request(&body, None).await.unwrap();
        published.insert(number, Timestamp::now());
        tokio::time::sleep(trickle.every).await;
    }
    let total = n + trickle.requests;
    let deadline = tokio::time::Instant::now() + WAIT + Duration::from_secs(60);
    loop {
        let dialed = h.simulator.dials().len();
        if dialed >= total {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{dialed} of {total} requests dialed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Anything dialed twice would show up now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dials = h.simulator.dials();
    let mut per_callee: HashMap<&str, usize> = HashMap::new();
    for d in &dials {
        *per_callee.entry(d.callee.as_str()).or_default() += 1;
    }
    let booked = |rate| h.metrics.bookings.get_or_create(&RateLabels { rate }).get();
    eprintln!(
        "bookings: {} by the instance's rate, {} by a caller's, {} missed; {} deferrals for a slot",
        booked("instance"),
        booked("caller"),
        h.metrics.bookings_missed.get(),
        h.metrics
            .deferrals
            .get_or_create(&ReasonLabels {
                reason: "limits".to_owned()
            })
            .get()
    );
    assert_eq!(dials.len(), total, "every request dialed once");
    assert!(per_callee.values().all(|n| *n == 1), "dialed twice");
    published
}

/// The calls of one backlog kept to its rate (no second holds more than its calls, and one
/// at its edge) and permits, with at least 95 % of the rate used from its first call to its
/// last.
fn assert_paced(name: &str, dials: &[&DialRecord], backlog: &Backlog) {
    assert_paced_at(name, dials, backlog, backlog.rate, 0.95);
}

/// [`assert_paced`] for a backlog whose pace is `pace` calls per second (below its rate when
/// its permits decide), at least `floor` of it used.
fn assert_paced_at(name: &str, dials: &[&DialRecord], backlog: &Backlog, pace: f64, floor: f64) {
    let mut starts: Vec<Timestamp> = dials.iter().map(|d| d.started_at).collect();
    starts.sort();
    assert_eq!(
        starts.len(),
        backlog.requests,
        "{name}: every request dialed"
    );
    let (first, last) = (starts[0], starts[starts.len() - 1]);
    let span = last.duration_since(first).as_secs_f64();
    let used = (starts.len() - 1) as f64 / span / pace;
    let most_in_a_second = starts
        .iter()
        .map(|start| {
            starts
                .iter()
                .filter(|t| **t >= *start && t.duration_since(*start).as_millis() < 1_000)
                .count()
        })
        .max()
        .unwrap_or(0);
    let most_at_once = dials
        .iter()
        .map(|d| {
            dials
                .iter()
                .filter(|o| o.started_at <= d.started_at && o.ended_at > d.started_at)
                .count()
        })
        .max()
        .unwrap_or(0);
    let gaps: Vec<(usize, i64)> = starts
        .windows(2)
        .enumerate()
        .map(|(i, w)| (i, w[1].duration_since(w[0]).as_millis() as i64))
        .filter(|(_, gap)| *gap as f64 > 1_300.0 / pace)
        .collect();
    eprintln!("{name}: gaps over 1.3 intervals (index, ms): {gaps:?}");
    eprintln!(
        "{name}: {} calls over {span:.1} s, {:.1} % of {pace} calls/s, at most \
         {most_in_a_second} in a second and {most_at_once} at once",
        starts.len(),
        used * 100.0,
    );
    assert!(
        used >= floor,
        "{name} used {:.1} % of its pace",
        used * 100.0
    );
    assert!(
        most_in_a_second <= backlog.rate as usize + 1,
        "{name}: {most_in_a_second} calls in a second"
    );
    if let Some(in_flight) = backlog.in_flight {
        assert!(
            most_at_once <= in_flight as usize,
            "{name}: {most_at_once} calls at once, over {in_flight}"
        );
    }
}

/// Every trickle request dialed within 2 s of its publish (the slowest of them, not a
/// percentile).
fn assert_prompt(name: &str, dials: &[&DialRecord], published: &HashMap<String, Timestamp>) {
    let waits: Vec<i64> = dials
        .iter()
        .map(|d| {
            d.started_at
                .duration_since(published[&d.callee])
                .as_millis() as i64
        })
        .collect();
    let slowest = waits.iter().max().copied().unwrap_or(0);
    eprintln!("{name}: dialed at most {slowest} ms after its publish: {waits:?}");
    assert_eq!(waits.len(), published.len(), "{name}: every request dialed");
    assert!(
        slowest <= 2_000,
        "{name} waited up to {slowest} ms: {waits:?}"
    );
}

fn dials_of<'a>(dials: &'a [DialRecord], instance: &str, caller: &str) -> Vec<&'a DialRecord> {
    dials
        .iter()
        .filter(|d| d.instance_id == instance && d.caller == caller)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_instance_is_dialed_at_once_behind_another_instances_backlog() {
    // 400 requests for one instance paced at 5 calls/s, then requests for another instance
    // behind them: those must not wait for the 400 (80 s of pace), and the busy instance
    // must keep to its pace, whole.
    let busy = Backlog {
        instance: "aaaaaaaa-0000-4000-8000-000000000001",
        caller: CALLER,
        requests: 400,
        rate: 5.0,
        in_flight: Some(10),
        hook: None,
    };
    let idle = Trickle {
        instance: "bbbbbbbb-0000-4000-8000-000000000002",
        caller: CALLER,
        requests: 20,
        every: Duration::from_millis(250),
    };
    let mut s = settings();
    cap(&mut s, &busy, false);
    let h = started(s, SimConfig::default()).await;
    let published = run(&h, std::slice::from_ref(&busy), &idle).await;
    let dials = h.simulator.dials();
    assert_prompt("idle", &dials_of(&dials, idle.instance, CALLER), &published);
    assert_paced("busy", &dials_of(&dials, busy.instance, CALLER), &busy);
    h.cleanup().await.unwrap();
}

/// Three instances with different caps and backlogs, published interleaved, and a fourth
/// with a trickle: each busy one at its own pace within its own permits, the fourth at once.
async fn three_instances_with_their_own_caps(backend: StoreBackend, replicas: usize) {
    let backlogs = [
        Backlog {
            instance: "cccccccc-0000-4000-8000-000000000001",
            caller: CALLER,
            requests: 120,
            rate: 8.0,
            in_flight: Some(3),
            hook: None,
        },
        Backlog {
            instance: "cccccccc-0000-4000-8000-000000000002",
            caller: CALLER,
            requests: 60,
            rate: 4.0,
            in_flight: Some(2),
            hook: None,
        },
        Backlog {
            instance: "cccccccc-0000-4000-8000-000000000003",
            caller: CALLER,
            requests: 30,
            rate: 2.0,
            in_flight: Some(1),
            hook: None,
        },
    ];
    let idle = Trickle {
        instance: "cccccccc-0000-4000-8000-000000000004",
        caller: CALLER,
        requests: 16,
        every: Duration::from_millis(500),
    };
    let mut s = settings_with(backend);
    for b in &backlogs {
        cap(&mut s, b, false);
    }
    // Calls that take a while, so the permits matter.
    let sim = SimConfig {
        latency: Duration::from_millis(150),
        ..SimConfig::default()
    };
    let mut h = started(s, sim).await;
    for _ in 1..replicas {
        h.start_worker(Harness::demo_credentials()).await.unwrap();
    }
    let published = run(&h, &backlogs, &idle).await;
    let dials = h.simulator.dials();
    assert_prompt("idle", &dials_of(&dials, idle.instance, CALLER), &published);
    for (i, b) in backlogs.iter().enumerate() {
        let name = format!("instance {i}");
        assert_paced(&name, &dials_of(&dials, b.instance, CALLER), b);
    }
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_keep_their_own_caps_and_an_idle_one_goes_at_once() {
    three_instances_with_their_own_caps(StoreBackend::Embedded, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_redis_keep_every_instance_to_its_global_caps() {
    three_instances_with_their_own_caps(StoreBackend::Redis, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_caller_never_holds_back_another_caller_of_its_instance() {
    // One instance, each caller paced at 4 calls/s: a backlog for one caller, a trickle for
    // another behind it.
    const INSTANCE: &str = "dddddddd-0000-4000-8000-000000000001";
    let busy = Backlog {
        instance: INSTANCE,
        caller: CALLER,
        requests: 60,
        rate: 4.0,
        in_flight: None,
        hook: None,
    };
    let idle = Trickle {
        instance: INSTANCE,
        caller: OTHER_CALLER,
        requests: 16,
        every: Duration::from_millis(500),
    };
    let mut s = settings();
    cap(&mut s, &busy, true);
    let h = started(s, SimConfig::default()).await;
    let published = run(&h, std::slice::from_ref(&busy), &idle).await;
    let dials = h.simulator.dials();
    assert_prompt(
        "idle caller",
        &dials_of(&dials, INSTANCE, OTHER_CALLER),
        &published,
    );
    assert_paced("busy caller", &dials_of(&dials, INSTANCE, CALLER), &busy);
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_hands_requests_back_late_costs_no_pace() {
    // Every return from a wait queue handled 1.5 s late, as a busy broker would hand it back:
    // beyond the 1 s a booked request comes back early by default. Before the worker learnt
    // how late the returns are (and took late instance bookings), a third of the bookings
    // were missed and asked the rates again at the back of the line, each a slot of the pace
    // lost: 74 % of it used.
    let busy = Backlog {
        instance: "eeeeeeee-0000-4000-8000-000000000001",
        caller: CALLER,
        requests: 250,
        rate: 5.0,
        in_flight: Some(10),
        hook: Some("late:1500"),
    };
    let idle = Trickle {
        instance: "eeeeeeee-0000-4000-8000-000000000002",
        caller: CALLER,
        requests: 8,
        every: Duration::from_millis(500),
    };
    let mut s = settings();
    cap(&mut s, &busy, false);
    // The hook holds each late return in the prefetch window, where a slow broker would
    // hold it in its queue: room for those.
    s.amqp.prefetch = 128;
    // A request waits in-process only as long as its claim's lease leaves after the longest
    // dial: room for the shortest tier and the learnt margin (the defaults leave 30 s).
    s.store.lease_ms = 20_000;
    let h = started(s, SimConfig::default()).await;
    let published = run(&h, std::slice::from_ref(&busy), &idle).await;
    let dials = h.simulator.dials();
    assert_prompt("idle", &dials_of(&dials, idle.instance, CALLER), &published);
    // The returns before the margin learnt the lateness come back after their starts: those
    // slots are lost (95-97 % used in runs here).
    let busy_dials = dials_of(&dials, busy.instance, CALLER);
    assert_paced_at("busy", &busy_dials, &busy, busy.rate, 0.9);
    let margin = h.metrics.booking_margin.get();
    eprintln!("booking margin at the end: {margin:.2} s");
    assert!(margin > 2.2, "the margin learnt the lateness: {margin} s");
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_held_back_by_its_permits_waits_outside_the_process_too() {
    // Two permits and 800 ms calls hold the instance to 2.5 calls/s, far below its rate of
    // 10/s: its bookings follow how long its permits are held, so the backlog waits in the
    // wait queues, not for permits in the prefetch window, and the permits never idle.
    const LATENCY: Duration = Duration::from_millis(800);
    let busy = Backlog {
        instance: "ffffffff-0000-4000-8000-000000000001",
        caller: CALLER,
        requests: 60,
        rate: 10.0,
        in_flight: Some(2),
        hook: None,
    };
    let idle = Trickle {
        instance: "ffffffff-0000-4000-8000-000000000002",
        caller: CALLER,
        requests: 16,
        every: Duration::from_millis(500),
    };
    let mut s = settings();
    cap(&mut s, &busy, false);
    // The default: room for the first bookings, made at the rate before any call ended, that
    // wait for their start and then up to `max_wait_ms` for a permit (10/s × 2.5 s).
    s.amqp.prefetch = 64;
    let sim = SimConfig {
        latency: LATENCY,
        ..SimConfig::default()
    };
    let h = started(s, sim).await;
    let published = run(&h, std::slice::from_ref(&busy), &idle).await;
    let dials = h.simulator.dials();
    assert_prompt("idle", &dials_of(&dials, idle.instance, CALLER), &published);
    let permits_pace = 2.0 / LATENCY.as_secs_f64();
    assert_paced_at(
        "busy",
        &dials_of(&dials, busy.instance, CALLER),
        &busy,
        permits_pace,
        0.95,
    );
    h.cleanup().await.unwrap();
}
