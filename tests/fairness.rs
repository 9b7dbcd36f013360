//! Fair dispatch: one instance's backlog at its pace never holds back another instance's
//! requests, and the busy instance still uses its whole pace.

mod helpers;

use std::collections::HashMap;
use std::time::Duration;

use dialex_devkit::simulator::SimConfig;
use helpers::{WAIT, callee, settings, started};
use jiff::Timestamp;

const BUSY: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const IDLE: &str = "bbbbbbbb-0000-4000-8000-000000000002";

fn request_for(instance: &str, request_id: &str, callee: &str) -> Vec<u8> {
    serde_json::json!({
        "request_id": request_id,
        "instance_id": instance,
        "caller": "02285196281",
        "callee": callee,
        "answer_mode": "ivr",
        "rout_point": "paEF_1GAQXXJ",
    })
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_instance_is_dialed_at_once_behind_another_instances_backlog() {
    // 400 requests for one instance paced at 5 calls/s, then 20 for another instance behind
    // them: the 20 must not wait for the 400 (80 s of pace), and the busy instance must keep
    // to its pace, whole.
    const RATE: f64 = 5.0;
    const BACKLOG: usize = 400;
    const TRICKLE: usize = 20;
    let mut s = settings();
    s.limits.calls_per_second = RATE;
    s.limits.burst = 1;
    s.limits.max_in_flight = 10;
    let h = started(s, SimConfig::default()).await;
    for i in 0..BACKLOG {
        h.publish_request(&request_for(BUSY, &format!("busy-{i}"), &callee(i)), None)
            .await
            .unwrap();
    }
    // Once the busy instance is at its pace.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut published = HashMap::new();
    for i in 0..TRICKLE {
        let number = callee(10_000 + i);
        h.publish_request(&request_for(IDLE, &format!("idle-{i}"), &number), None)
            .await
            .unwrap();
        published.insert(number, Timestamp::now());
    }
    // Wait until the trickle is dialed, and the busy instance for a while after it.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let idle_dialed = h
            .simulator
            .dials()
            .iter()
            .filter(|d| d.instance_id == IDLE)
            .count();
        if idle_dialed == TRICKLE {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{idle_dialed} of {TRICKLE} idle-instance requests dialed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(20)).await;

    let dials = h.simulator.dials();
    // The idle instance has a pace of its own (5/s, burst 1): its k-th call cannot start
    // before k intervals after the first publish. What counts is the wait beyond that.
    let first_published = published.values().min().copied().unwrap();
    let mut idle: Vec<_> = dials.iter().filter(|d| d.instance_id == IDLE).collect();
    idle.sort_by_key(|d| d.started_at);
    let latencies: Vec<i64> = idle
        .iter()
        .enumerate()
        .map(|(k, d)| {
            let own_pace = (k as f64 * 1_000.0 / RATE) as i64;
            let earliest = published[&d.callee]
                .max(first_published + jiff::SignedDuration::from_millis(own_pace));
            d.started_at.duration_since(earliest).as_millis() as i64
        })
        .collect();
    let slowest = latencies.iter().max().copied().unwrap_or(0);
    let mut busy: Vec<Timestamp> = dials
        .iter()
        .filter(|d| d.instance_id == BUSY)
        .map(|d| d.started_at)
        .collect();
    busy.sort();
    let (first, last) = (busy[0], busy[busy.len() - 1]);
    let span = last.duration_since(first).as_secs_f64();
    let used = (busy.len() - 1) as f64 / span / RATE;
    // Never over the pace: no second holds more than its calls (and one at its edge).
    let most_in_a_second = busy
        .iter()
        .map(|start| {
            busy.iter()
                .filter(|t| **t >= *start && t.duration_since(*start).as_millis() < 1_000)
                .count()
        })
        .max()
        .unwrap_or(0);
    let secs: Vec<usize> = {
        let mut per = vec![0usize; (span as usize) + 2];
        for t in &busy {
            per[t.duration_since(first).as_secs() as usize] += 1;
        }
        per
    };
    eprintln!("busy calls per second: {secs:?}");
    let gaps: Vec<(usize, i64)> = busy
        .windows(2)
        .enumerate()
        .map(|(i, w)| (i, w[1].duration_since(w[0]).as_millis() as i64))
        .filter(|(_, gap)| *gap < 150)
        .collect();
    eprintln!("gaps under 150 ms (index, ms): {gaps:?}");
    eprintln!(
        "idle instance: at most {slowest} ms beyond its own pace; busy instance: {} dialed \
         over {span:.1} s, {:.1} % of its pace, at most {most_in_a_second} in a second",
        busy.len(),
        used * 100.0
    );
    assert!(
        slowest <= 2_000,
        "idle requests waited up to {slowest} ms: {latencies:?}"
    );
    assert!(
        used >= 0.95,
        "the busy instance used {:.1} % of its pace",
        used * 100.0
    );
    assert!(
        most_in_a_second <= RATE as usize + 1,
        "{most_in_a_second} calls in a second"
    );
    let mut per_callee: HashMap<&str, usize> = HashMap::new();
    for d in &dials {
        *per_callee.entry(d.callee.as_str()).or_default() += 1;
    }
    assert!(per_callee.values().all(|n| *n == 1), "dialed twice");
    h.cleanup().await.unwrap();
}
