//! `dialex-worker dead` against a real RabbitMQ and a running worker: listing leaves the
//! dead-letter queue as it was, replay puts back only what it is asked to (and a replayed
//! request is dialed at most once, even when the replay is killed and run again), purge
//! deletes only with `--yes`.

mod helpers;

use std::collections::HashMap;
use std::time::Duration;

use dialex_devkit::harness::Harness;
use dialex_devkit::simulator::SimConfig;
use dialex_worker::outcome::Status;
use helpers::{WAIT, callee, hooked, outcomes_until, request, settings, started};
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use serde_json::Value;

/// Runs `dialex-worker dead ARGS` against the harness's broker names; its standard output.
fn dead(h: &Harness, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dialex-worker"))
        .arg("dead")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(h.worker_env())
        .output()
        .expect("the dead command starts");
    assert!(
        out.status.success(),
        "dead {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn dead_json(h: &Harness, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    serde_json::from_str(&dead(h, &args)).expect("JSON output")
}

/// The request ids of `dead list --json`, in queue order.
fn listed_ids(h: &Harness) -> Vec<String> {
    dead_json(h, &["list"])["shown"]
        .as_array()
        .expect("shown")
        .iter()
        .map(|row| row["request_id"].as_str().unwrap_or("-").to_owned())
        .collect()
}

/// Parks a good request on the dead-letter queue the way the broker parks the bystanders of a
/// worker that keeps dying (a delivery limit passed), with the broker's own headers.
async fn park_as_the_broker_would(h: &Harness, body: &[u8]) {
    let connection = dialex_worker::amqp::connect(&h.settings.amqp, "test: park")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut death = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    death.insert("reason".into(), text("delivery_limit"));
    death.insert("queue".into(), text(&h.settings.amqp.names.request_queue));
    death.insert("count".into(), AMQPValue::LongLongInt(1));
    let now = jiff::Timestamp::now().as_second() as u64;
    death.insert("time".into(), AMQPValue::Timestamp(now));
    let mut headers = FieldTable::default();
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
    );
    headers.insert("x-first-death-reason".into(), text("delivery_limit"));
    headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(3));
    channel
        .basic_publish(
            "".into(),
            h.settings.amqp.names.dead_queue.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            BasicProperties::default()
                .with_headers(headers)
                .with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    connection.close(200, "bye".into()).await.unwrap();
}

async fn dead_depth(h: &Harness) -> u32 {
    h.queue_depth(&h.settings.amqp.names.dead_queue)
        .await
        .unwrap()
}

/// Waits until the dead-letter queue holds `count` messages.
async fn dead_depth_reaches(h: &Harness, count: u32) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while dead_depth(h).await != count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dial.dead holds {}, not {count}",
            dead_depth(h).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Parks two requests rejected for their content and one poison message (the worker parks
/// them), then six good requests as the broker parks a dying worker's bystanders.
async fn a_dead_letter_queue(h: &mut Harness) -> usize {
    h.publish_request(b"{not json", Some("bad-json"))
        .await
        .unwrap();
    h.publish_request(&request("bad-callee", "12", "ivr"), None)
        .await
        .unwrap();
    h.publish_request_with(&request("poison", &callee(900), "ivr"), hooked("panic"))
        .await
        .unwrap();
    outcomes_until(h, WAIT, |r| r.len() == 3).await;
    dead_depth_reaches(h, 3).await;
    const BYSTANDERS: usize = 6;
    for i in 0..BYSTANDERS {
        park_as_the_broker_would(h, &request(&format!("bystander-{i}"), &callee(i), "ivr")).await;
    }
    dead_depth_reaches(h, 3 + BYSTANDERS as u32).await;
    BYSTANDERS
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_shows_why_each_is_parked_and_leaves_the_queue_as_it_was() {
    let mut h = started(settings(), SimConfig::default()).await;
    a_dead_letter_queue(&mut h).await;

    let listing = dead_json(&h, &["list"]);
    let rows = listing["shown"].as_array().unwrap();
    assert_eq!(rows.len(), 9);
    let reasons: Vec<&str> = rows.iter().map(|r| r["reason"].as_str().unwrap()).collect();
    // The worker handles the two rejections concurrently: either may be parked first.
    let mut first_three = reasons[..3].to_vec();
    first_three.sort_unstable();
    assert_eq!(
        first_three,
        ["invalid_callee", "invalid_json", "poison_message"]
    );
    assert!(reasons[3..].iter().all(|r| *r == "delivery_limit"));
    let bad_json = rows.iter().find(|r| r["reason"] == "invalid_json").unwrap();
    assert_eq!(
        bad_json["request_id"], "bad-json",
        "the message id stands in"
    );
    assert!(
        rows[..3].iter().all(|r| r["parked_at"].is_string()),
        "the worker stamps when it parked"
    );
    assert_eq!(rows[3]["deaths"], 1);
    // No phone number leaves the body.
    assert!(!listing.to_string().contains(&callee(0)));

    // Listed again and again: the same messages in the same order, nothing requeued.
    let first = listed_ids(&h);
    for _ in 0..3 {
        assert_eq!(listed_ids(&h), first);
    }
    assert_eq!(dead_depth(&h).await, 9);

    let limited = dead_json(&h, &["list", "--reason", "delivery_limit", "--limit", "2"]);
    assert_eq!(limited["matched"], 6);
    assert_eq!(limited["shown"].as_array().unwrap().len(), 2);
    let table = dead(&h, &["list", "--request-id", "poison"]);
    assert!(table.starts_with("REQUEST_ID"), "{table}");
    assert!(table.contains("1 of 9 parked messages match"), "{table}");

    let summary = dead_json(&h, &["summary"]);
    assert_eq!(summary["total"], 9);
    assert_eq!(summary["by_reason"]["delivery_limit"], 6);
    assert_eq!(summary["by_reason"]["invalid_json"], 1);
    assert_eq!(
        summary["by_instance"]["-"], 1,
        "the unreadable body has none"
    );
    assert_eq!(h.simulator.dial_count(), 0);
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_puts_back_what_it_is_asked_to_and_nothing_is_dialed_twice() {
    let mut h = started(settings(), SimConfig::default()).await;
    let bystanders = a_dead_letter_queue(&mut h).await;

    // A dry run changes nothing, and says what it would do and why some would stay.
    let dry = dead_json(&h, &["replay", "--dry-run"]);
    assert_eq!(dry["matched"], 9);
    assert_eq!(dry["acted"], 7, "{dry}");
    assert_eq!(dry["skipped"]["rejected_for_content"], 2, "{dry}");
    assert_eq!(dead_depth(&h).await, 9);

    // Two, paced.
    let two = dead_json(
        &h,
        &[
            "replay",
            "--reason",
            "delivery_limit",
            "--max",
            "2",
            "--rate",
            "20",
        ],
    );
    assert_eq!(two["acted"], 2, "{two}");
    assert_eq!(two["skipped"]["max_reached"], 4, "{two}");
    let received = h.outcomes(2, WAIT).await.unwrap();
    assert!(received.iter().all(|r| r.event.status == Status::Dialed));
    dead_depth_reaches(&h, 7).await;

    // Killed mid-way, then run again: nothing lost, nothing dialed twice.
    let mut slow = tokio::process::Command::new(env!("CARGO_BIN_EXE_dialex-worker"))
        .args([
            "dead",
            "replay",
            "--reason",
            "delivery_limit",
            "--rate",
            "2",
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(h.worker_env())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    slow.start_kill().unwrap();
    slow.wait().await.unwrap();
    let rest = dead_json(&h, &["replay", "--reason", "delivery_limit"]);
    eprintln!("after the kill: {rest}");
    assert!(rest["acted"].as_u64().unwrap() >= 1, "{rest}");

    // Every bystander is dialed exactly once.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut per_callee: HashMap<String, usize> = HashMap::new();
        for d in h.simulator.dials() {
            *per_callee.entry(d.callee).or_default() += 1;
        }
        assert!(per_callee.values().all(|n| *n == 1), "{per_callee:?}");
        if per_callee.len() == bystanders {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dialed {} of {bystanders}",
            per_callee.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What was not replayed is still parked (a kill may leave a duplicate copy, never a gap).
    let left = listed_ids(&h);
    eprintln!("left parked: {left:?}");
    for id in ["bad-json", "bad-callee", "poison"] {
        assert!(left.iter().any(|l| l == id), "{id} is gone: {left:?}");
    }
    assert!(
        left.iter().all(|l| !l.starts_with("bystander-")),
        "{left:?}"
    );
    let page = h.metrics_text().await.unwrap();
    let replays = page
        .lines()
        .find_map(|l| l.strip_prefix("dialex_replays_received_total "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(replays >= bystanders as f64, "{replays}");

    // Purge: only with --yes, only what matches.
    let would = dead_json(&h, &["purge", "--reason", "invalid_json"]);
    assert_eq!(
        (would["acted"].as_u64(), would["dry_run"].as_bool()),
        (Some(1), Some(true))
    );
    let before = dead_depth(&h).await;
    let purged = dead_json(&h, &["purge", "--reason", "invalid_json", "--yes"]);
    assert_eq!(purged["acted"], 1);
    assert_eq!(dead_depth(&h).await, before - 1);
    assert!(!listed_ids(&h).iter().any(|l| l == "bad-json"));
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bystanders_of_a_worker_that_keeps_dying_are_replayed_and_rung_at_most_once() {
    // A message that kills the worker process takes every delivery in hand down with it; after
    // the delivery limit the broker parks them all, the killer and its bystanders alike.
    let mut s = settings();
    s.amqp.delivery_limit = 2;
    s.amqp.prefetch = 8;
    let mut h = Harness::start(s, SimConfig::default())
        .await
        .expect("RabbitMQ must be reachable");
    h.publish_request_with(&request("killer", &callee(950), "ivr"), hooked("abort"))
        .await
        .unwrap();
    const BYSTANDERS: usize = 5;
    for i in 0..BYSTANDERS {
        h.publish_request(&request(&format!("bystander-{i}"), &callee(i), "ivr"), None)
            .await
            .unwrap();
    }
    let mut crashes = 0;
    let _survivor = loop {
        let mut worker = helpers::spawn_worker_process(&h);
        match tokio::time::timeout(Duration::from_secs(5), worker.wait()).await {
            Ok(status) => {
                assert!(!status.unwrap().success(), "the hook aborts the process");
                crashes += 1;
                assert!(crashes <= 10, "the killer was never parked");
            }
            // Still running: the killer is parked; this worker handles what comes back.
            Err(_) => break worker,
        }
    };
    let listing = dead_json(&h, &["list", "--reason", "delivery_limit"]);
    let parked: Vec<String> = listing["shown"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["request_id"].as_str().unwrap().to_owned())
        .collect();
    eprintln!("{crashes} crashes; parked by the broker: {parked:?}");
    assert!(parked.iter().any(|id| id == "killer"), "{parked:?}");

    // Replay the bystanders one by one, never the killer.
    for id in parked.iter().filter(|id| id.starts_with("bystander-")) {
        let replayed = dead_json(&h, &["replay", "--request-id", id]);
        assert_eq!(replayed["acted"], 1, "{id}: {replayed}");
    }
    // Every bystander ends with one terminal outcome (dialed, or unknown if a dying worker
    // had claimed it mid-call), and nobody is rung twice.
    let mut terminal: HashMap<String, Status> = HashMap::new();
    while terminal.len() < BYSTANDERS {
        let Some(r) = h.next_outcome(WAIT).await.unwrap() else {
            panic!("no outcome with {terminal:?}");
        };
        if r.event.status != Status::Deferred {
            let earlier = terminal.insert(r.event.request_id.clone(), r.event.status);
            assert!(
                earlier.is_none_or(|s| s == r.event.status),
                "{}: {earlier:?} then {:?}",
                r.event.request_id,
                r.event.status
            );
        }
    }
    eprintln!("outcomes: {terminal:?}");
    assert!(!terminal.contains_key("killer"));
    let mut per_callee: HashMap<String, usize> = HashMap::new();
    for d in h.simulator.dials() {
        *per_callee.entry(d.callee).or_default() += 1;
    }
    assert!(per_callee.values().all(|n| *n == 1), "{per_callee:?}");
    assert!(
        !per_callee.contains_key(&callee(950)),
        "the killer is never dialed"
    );
    for (id, status) in &terminal {
        let i: usize = id.trim_start_matches("bystander-").parse().unwrap();
        match status {
            Status::Dialed => assert!(per_callee.contains_key(&callee(i)), "{id}"),
            Status::Unknown => {}
            other => panic!("{id} ended {other:?}"),
        }
    }
    assert_eq!(listed_ids(&h), ["killer"]);
    h.cleanup().await.unwrap();
}
