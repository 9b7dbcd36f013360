//! No input can exhaust the worker: a burst of bodies far over the size limit is parked as it
//! arrives, the requests around it are dialed, and the worker's memory stays bounded by what
//! its prefetch window can hold.

mod helpers;

use std::collections::HashSet;

use dialex_devkit::harness::Harness;
use dialex_devkit::simulator::SimConfig;
use dialex_worker::outcome::Status;
use dialex_worker::validate::MAX_BODY_BYTES;
use helpers::{WAIT, callee, dead_letters_soon, request, settings, spawn_worker_process};

/// The worker's peak resident memory under load without large messages, rounded up (the
/// README's Performance section measured 37 MB); its documented peak adds what the prefetch
/// window of the largest messages the broker admits can hold.
const BASELINE_BYTES: u64 = 64 * 1024 * 1024;

/// The highest resident set size of process `pid`, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmHWM in /proc status");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_huge_bodies_is_parked_without_holding_more_than_the_prefetch_window() {
    const HUGE: usize = 2 * 1024 * 1024;
    const HUGE_COUNT: usize = 96;
    const GOOD_COUNT: usize = 24;
    let mut settings = settings();
    settings.amqp.prefetch = 64;
    let mut h = Harness::start(settings, SimConfig::default())
        .await
        .expect("RabbitMQ must be reachable");

    // Huge bodies with good requests among them, all queued before the worker starts, so
    // the broker fills the whole prefetch window with them at once.
    let huge = {
        let mut body = b"{\"pad\":\"".to_vec();
        body.resize(HUGE - 2, b'x');
        body.extend_from_slice(b"\"}");
        body
    };
    assert!(huge.len() > MAX_BODY_BYTES);
    let mut good = HashSet::new();
    for i in 0..HUGE_COUNT + GOOD_COUNT {
        if i % 5 == 4 {
            let id = format!("good-{i}");
            h.publish_request(&request(&id, &callee(i), "ivr"), None)
                .await
                .unwrap();
            good.insert(id);
        } else {
            h.publish_request(&huge, Some(&format!("huge-{i}")))
                .await
                .unwrap();
        }
    }
    assert_eq!(good.len(), GOOD_COUNT);

    let mut worker = spawn_worker_process(&h);
    let pid = worker.id().expect("the worker process id");
    let received = h.outcomes(HUGE_COUNT + GOOD_COUNT, WAIT).await.unwrap();
    // Every huge body is parked, whole. A request's event goes out before its dead letter,
    // so the worker lives until the letters are in: killed at the last event, it could take
    // the last letter with it (the delivery then goes back to the queue, unparked).
    let dead = dead_letters_soon(&h, HUGE_COUNT).await;
    assert!(dead.iter().all(|d| d.body == huge));
    let peak = peak_rss(pid);
    worker.start_kill().unwrap();
    worker.wait().await.unwrap();

    let mut rejected = 0;
    for r in &received {
        let e = &r.event;
        if good.contains(&e.request_id) {
            assert_eq!(e.status, Status::Dialed, "{}", e.request_id);
        } else {
            assert!(e.request_id.starts_with("huge-"), "{}", e.request_id);
            assert_eq!(e.status, Status::Rejected, "{}", e.request_id);
            assert_eq!(e.code.as_deref(), Some("body_too_large"));
            rejected += 1;
        }
    }
    assert_eq!(rejected, HUGE_COUNT);
    assert_eq!(h.simulator.dials().len(), GOOD_COUNT);

    // At most one prefetch window of huge bodies was ever in memory at once: none was copied
    // to be parked.
    let bound = BASELINE_BYTES + 64 * HUGE as u64;
    eprintln!(
        "peak RSS with {HUGE_COUNT} bodies of {HUGE} bytes at prefetch 64: {} MiB (bound {} MiB)",
        peak >> 20,
        bound >> 20
    );
    assert!(
        peak <= bound,
        "peak RSS {} MiB over {} MiB",
        peak >> 20,
        bound >> 20
    );
    h.cleanup().await.unwrap();
}
