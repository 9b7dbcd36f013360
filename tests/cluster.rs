//! A RabbitMQ node lost under load, on a real three-node cluster beside the machine's broker
//! (`scripts/rabbitmq-cluster.sh`, started by the tests themselves).
//!
//! Each scenario publishes 2,000 requests to a quorum request queue replicated to all three
//! nodes; two workers sharing the Redis store dial them at 20 ms simulated CCC latency, paced so
//! the loss lands mid-run. It passes when every request has exactly one terminal outcome, no
//! callee is dialed twice, every `dialed` event carries the simulator's TaskId, and the request
//! queue ends empty. The scenarios share the cluster, so they take turns.

mod helpers;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Command;
use std::time::Duration;

use dialex_devkit::harness::Harness;
use dialex_devkit::simulator::SimConfig;
use dialex_worker::config::StoreBackend;
use dialex_worker::outcome::Status;
use helpers::{WAIT, callee, request, settings_with};
use tokio::time::Instant;

const REQUESTS: usize = 2_000;

/// One scenario at a time: they kill and stop the same three nodes.
static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `scripts/rabbitmq-cluster.sh` with `args`; its output, or a loud failure naming what
/// went wrong (a node that cannot start, RabbitMQ not installed).
fn cluster(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rabbitmq-cluster.sh");
    let output = Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "rabbitmq-cluster.sh {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// [`cluster`] off the test's runtime, so outcomes are read while a node stops or starts.
async fn cluster_in_background(args: [&'static str; 2]) -> String {
    tokio::task::spawn_blocking(move || cluster(&args))
        .await
        .expect("the cluster script ran")
}

/// The AMQP URL of test node `node` (1, 2 or 3).
fn node_url(node: usize) -> String {
    format!("amqp://guest:guest@127.0.0.1:{}/%2f", 5680 + node)
}

/// The node leading quorum queue `queue`, and how many members the queue has.
fn leader(queue: &str) -> (usize, usize) {
    let answer = cluster(&["leader", queue]);
    let mut parts = answer.split_whitespace().map(|p| p.parse::<usize>());
    match (parts.next(), parts.next()) {
        (Some(Ok(leader)), Some(Ok(members))) => (leader, members),
        _ => panic!("unexpected answer from rabbitmq-cluster.sh leader: {answer:?}"),
    }
}

/// What happens to a node once 30 % of the requests have their outcome.
#[derive(Clone, Copy, Debug)]
enum Loss {
    /// `kill -9`; the node stays down until the run ends.
    Kill(&'static str),
    /// A clean stop, then the node starts again while the run goes on.
    StopAndRestart(&'static str),
}

/// What one scenario saw.
struct Run {
    statuses: BTreeMap<String, usize>,
    dials: usize,
    seconds: f64,
    paused: Duration,
    longest_silence: Duration,
}

/// Declares the topology through node `declare_on` (its quorum queues lead there), starts two
/// workers given all three nodes (they connect to node 1), watches from node 3, and loses a
/// node as `loss` says.
async fn lose_a_node(declare_on: usize, loss: Loss) -> Run {
    let _turn = CLUSTER.lock().await;
    cluster(&["up"]);

    let mut settings = settings_with(StoreBackend::Redis);
    settings.amqp.url = node_url(declare_on).into();
    dialex_worker::telemetry::init(&settings.log);
    // Paced so the loss lands mid-run: 2,000 requests take about 13 s.
    settings.limits.calls_per_second = 150.0;
    settings.limits.burst = 10;
    let sim = SimConfig {
        latency: Duration::from_millis(20),
        ..SimConfig::default()
    };
    let mut h = Harness::start(settings, sim)
        .await
        .expect("the test cluster takes connections");
    h.observe_from(&node_url(3)).await.expect("node 3 answers");
    h.settings.amqp.url = [1, 2, 3].map(node_url).join(",").into();

    let queue = h.settings.amqp.names.request_queue.clone();
    let (queue_leader, members) = leader(&queue);
    assert_eq!(members, 3, "{queue} is replicated to all three nodes");
    assert_eq!(
        queue_leader, declare_on,
        "{queue} leads where it was declared"
    );

    for i in 0..REQUESTS {
        h.publish_request(&request(&format!("node-{i}"), &callee(i), "ivr"), None)
            .await
            .expect("request published");
    }
    let started = Instant::now();
    for _ in 0..2 {
        h.start_worker(Harness::demo_credentials())
            .await
            .expect("worker starts");
    }

    let mut events: HashMap<String, HashSet<(uuid::Uuid, Status)>> = HashMap::new();
    let mut task_ids: HashMap<String, String> = HashMap::new();
    let mut loss_task = None;
    let (mut last_outcome, mut last_probe) = (Instant::now(), Instant::now());
    let (mut paused, mut longest_silence) = (Duration::ZERO, Duration::ZERO);
    while events.len() < REQUESTS {
        if let Some(r) = h
            .next_outcome(Duration::from_millis(100))
            .await
            .expect("outcome stream")
        {
            longest_silence = longest_silence.max(last_outcome.elapsed());
            last_outcome = Instant::now();
            if let Some(task_id) = &r.event.task_id {
                task_ids.insert(r.event.request_id.clone(), task_id.clone());
            }
            events
                .entry(r.event.request_id.clone())
                .or_default()
                .insert((r.event.event_id, r.event.status));
        }
        assert!(
            last_outcome.elapsed() < WAIT,
            "no outcome for {WAIT:?} with {} of {REQUESTS} done",
            events.len()
        );
        if last_probe.elapsed() >= Duration::from_millis(100) {
            if h.readyz().await.expect("/readyz answers").0 == 503 {
                paused += last_probe.elapsed();
            }
            last_probe = Instant::now();
        }
        if loss_task.is_none() && events.len() >= REQUESTS * 3 / 10 {
            loss_task = Some(tokio::spawn(async move {
                match loss {
                    Loss::Kill(node) => {
                        cluster_in_background(["kill", node]).await;
                    }
                    Loss::StopAndRestart(node) => {
                        cluster_in_background(["stop", node]).await;
                        cluster_in_background(["start", node]).await;
                    }
                }
            }));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    loss_task
        .expect("the node was lost mid-run")
        .await
        .expect("the loss ran");
    // Duplicates of an outcome may still be on their way: give them a moment to arrive.
    while let Some(r) = h
        .next_outcome(Duration::from_secs(2))
        .await
        .expect("outcome stream")
    {
        events
            .entry(r.event.request_id.clone())
            .or_default()
            .insert((r.event.event_id, r.event.status));
    }
    helpers::assert_request_queue_drains(&h).await;

    let dials = h.simulator.dials();
    let mut per_callee: HashMap<&str, Vec<&str>> = HashMap::new();
    for d in &dials {
        per_callee
            .entry(d.callee.as_str())
            .or_default()
            .push(d.task_id.as_str());
    }
    let dialed_twice = per_callee.values().filter(|t| t.len() > 1).count();
    assert_eq!(dialed_twice, 0, "a customer was rung twice");
    let conflicting = events.values().filter(|set| set.len() > 1).count();
    assert_eq!(conflicting, 0, "a request got two different outcomes");
    let mut statuses = BTreeMap::new();
    for (i, set) in (0..REQUESTS).map(|i| (i, &events[&format!("node-{i}")])) {
        let Some((_, status)) = set.iter().next() else {
            unreachable!("a request is in the map once it has an outcome")
        };
        *statuses.entry(format!("{status:?}")).or_default() += 1;
        if *status == Status::Dialed {
            let task_id = task_ids.get(&format!("node-{i}")).map(String::as_str);
            let dialed = per_callee.get(callee(i).as_str()).map(|t| t[0]);
            assert_eq!(
                task_id, dialed,
                "node-{i}'s event carries its dial's TaskId"
            );
        }
    }
    assert_eq!(
        statuses.get("Dialed"),
        Some(&REQUESTS),
        "a lost broker node leaves nothing but dialed requests: {statuses:?}"
    );
    if let Loss::Kill(node) = loss {
        let (now_leading, _) = leader(&queue);
        assert_ne!(
            now_leading.to_string(),
            node,
            "{queue} is led by a live node"
        );
    }
    // The lost node first: a quorum queue is deleted quickly only with all its members up.
    cluster(&["up"]);
    assert_eq!(leader(&queue).1, 3, "{queue} has its three members again");
    h.cleanup().await.expect("clean up");
    Run {
        statuses,
        dials: dials.len(),
        seconds,
        paused,
        longest_silence,
    }
}

fn report(name: &str, run: &Run) {
    println!(
        "{name}: {REQUESTS} requests, outcomes {:?}, {} dials, {:.1} s, /readyz 503 for {:.1} s, longest wait between outcomes {:.1} s",
        run.statuses,
        run.dials,
        run.seconds,
        run.paused.as_secs_f64(),
        run.longest_silence.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_node_the_workers_use_sends_them_to_the_next() {
    // Queues lead on node 2; the workers are on node 1.
    let run = lose_a_node(2, Loss::Kill("1")).await;
    report("kill -9 the workers' node", &run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_node_that_leads_the_request_queue_moves_the_lead() {
    // The workers stay connected to node 1 while the queue elects a new leader.
    let run = lose_a_node(2, Loss::Kill("2")).await;
    report("kill -9 the request queue's leader", &run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_and_started_again_loses_nothing() {
    // Node 1 both leads the queues and holds the workers' connections.
    let run = lose_a_node(1, Loss::StopAndRestart("1")).await;
    report("stop and restart the workers' and leader's node", &run);
}
