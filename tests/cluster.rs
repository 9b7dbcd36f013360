//! A RabbitMQ node lost under load, on a real three-node cluster beside the machine's broker
//! (`scripts/rabbitmq-cluster.sh`, started by the tests themselves).
//!
//! Each scenario publishes 2,000 requests to a quorum request queue replicated to all three
//! nodes; two workers sharing the Redis store dial them at 20 ms simulated CCC latency, paced so
//! the loss lands mid-run. It passes when every request has exactly one terminal outcome, no
//! callee is dialed twice, every `dialed` event carries the simulator's TaskId, and the request
//! queue ends empty. The scenarios share the cluster, so they take turns.

mod helpers;

use std::time::Duration;

use dialex_devkit::harness::Harness;
use dialex_devkit::simulator::SimConfig;
use dialex_worker::config::StoreBackend;
use helpers::chaos::{self, script};
use helpers::settings_with;

const REQUESTS: usize = 2_000;

/// One scenario at a time: they kill and stop the same three nodes.
static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `scripts/rabbitmq-cluster.sh` with `args`.
fn cluster(args: &[&str]) -> String {
    script("rabbitmq-cluster.sh", args)
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

/// Declares the topology through node `declare_on` (its quorum queues lead there), starts two
/// workers given all three nodes (they connect to node 1), watches from node 3, and loses a
/// node as `loss` says.
async fn lose_a_node(name: &str, declare_on: usize, loss: Loss) {
    let _turn = CLUSTER.lock().await;
    // A new cluster each time: nothing a killed or restarted node left behind carries over.
    cluster(&["fresh"]);

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

    let mut lost = None;
    let mut run = chaos::run(&mut h, "node", REQUESTS, 2, "RabbitMQ", |progress| {
        if lost.is_none() && progress.done >= REQUESTS * 3 / 10 {
            lost = Some(tokio::spawn(async move {
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
    })
    .await;
    lost.expect("the node was lost mid-run")
        .await
        .expect("the loss ran");
    let statuses = run.judge(&mut h, "node", REQUESTS).await;
    run.report(name, &statuses, h.simulator.dial_count());
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_node_the_workers_use_sends_them_to_the_next() {
    // Queues lead on node 2; the workers are on node 1.
    lose_a_node("kill -9 the workers' node", 2, Loss::Kill("1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_node_that_leads_the_request_queue_moves_the_lead() {
    // The workers stay connected to node 1 while the queue elects a new leader.
    lose_a_node("kill -9 the request queue's leader", 2, Loss::Kill("2")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_and_started_again_loses_nothing() {
    // Node 1 both leads the queues and holds the workers' connections.
    lose_a_node(
        "stop and restart the workers' and leader's node",
        1,
        Loss::StopAndRestart("1"),
    )
    .await;
}
