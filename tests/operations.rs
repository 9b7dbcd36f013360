//! Operating the worker: its metrics and probes, SIGTERM mid-run, losing the broker
//! connections under load, and a Redis outage under load. The broker and Redis faults hit
//! only this test's own connections and its own Redis server, so these tests run beside the
//! others without disturbing them.

mod helpers;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use dialex_devkit::harness::{Harness, Received};
use dialex_devkit::simulator::SimConfig;
use dialex_worker::config::StoreBackend;
use dialex_worker::outcome::Status;
use helpers::{
    WAIT, assert_dialed_at_most_once, assert_dialed_once, callee, only_outcome, request, settings,
    settings_with, spawn_worker_process, started,
};
use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use secrecy::{ExposeSecret as _, SecretString};

/// Every request's statuses and event ids, from the events received so far.
#[derive(Default)]
struct Tally(HashMap<String, HashSet<(uuid::Uuid, Status)>>);

impl Tally {
    fn add(&mut self, received: &Received) {
        self.0
            .entry(received.event.request_id.clone())
            .or_default()
            .insert((received.event.event_id, received.event.status));
    }

    /// Requests with a terminal status.
    fn terminal(&self) -> usize {
        self.0
            .values()
            .filter(|seen| seen.iter().any(|(_, s)| *s != Status::Deferred))
            .count()
    }

    /// How many requests ended in each terminal status, for the test's log.
    fn summary(&self) -> String {
        let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
        for seen in self.0.values() {
            for (_, status) in seen.iter().filter(|(_, s)| *s != Status::Deferred) {
                *counts.entry(status.as_str()).or_default() += 1;
            }
        }
        format!("{counts:?}")
    }

    /// Every request has exactly one terminal status (re-published events share its id).
    fn assert_one_terminal_each(&self, requests: usize) {
        eprintln!("observed outcomes: {}", self.summary());
        assert_eq!(self.0.len(), requests, "every request has an outcome");
        for (id, seen) in &self.0 {
            let terminal: HashSet<_> = seen
                .iter()
                .filter(|(_, s)| *s != Status::Deferred)
                .collect();
            assert_eq!(terminal.len(), 1, "{id}: {seen:?}");
        }
    }
}

async fn publish_many(h: &Harness, prefix: &str, count: usize) {
    for i in 0..count {
        h.publish_request(&request(&format!("{prefix}-{i}"), &callee(i), "ivr"), None)
            .await
            .unwrap();
    }
}

/// Reads events into `tally` until `done` requests have a terminal status.
async fn collect(h: &mut Harness, tally: &mut Tally, done: usize) {
    while tally.terminal() < done {
        let Some(r) = h.next_outcome(WAIT).await.unwrap() else {
            panic!(
                "no outcome for {WAIT:?} with {} of {done} done",
                tally.terminal()
            );
        };
        tally.add(&r);
    }
}

/// The value of one sample line of a Prometheus text page, e.g.
/// `dialex_outcomes_total{status="dialed"}`.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_probes_tell_what_happened() {
    let mut h = started(settings(), SimConfig::default()).await;
    assert_eq!(h.probe("/healthz").await.unwrap(), (200, "ok\n".to_owned()));
    publish_many(&h, "metered", 50).await;
    for id in ["bad-1", "bad-2", "bad-3"] {
        h.publish_request(&request(id, "12345", "ivr"), None)
            .await
            .unwrap();
    }
    let received = h.outcomes(53, WAIT).await.unwrap();
    assert_eq!(
        received
            .iter()
            .filter(|r| r.event.status == Status::Rejected)
            .count(),
        3
    );
    let page = h.metrics_text().await.unwrap();
    let value =
        |series: &str| sample(&page, series).unwrap_or_else(|| panic!("{series} in\n{page}"));
    assert_eq!(value("dialex_outcomes_total{status=\"dialed\"}"), 50.0);
    assert_eq!(value("dialex_outcomes_total{status=\"rejected\"}"), 3.0);
    assert_eq!(value("dialex_requests_received_total"), 53.0);
    assert_eq!(
        value("dialex_ccc_attempts_total{class=\"ok\",code=\"OK\"}"),
        50.0
    );
    assert_eq!(
        value("dialex_dead_letters_total{reason=\"invalid_callee\"}"),
        3.0
    );
    assert_eq!(value("dialex_ccc_request_duration_seconds_count"), 50.0);
    assert_eq!(
        value("dialex_queue_to_dial_seconds_count{class=\"default\"}"),
        50.0
    );
    assert_eq!(value("dialex_in_flight"), 0.0);
    assert!(value("dialex_last_dial_timestamp_seconds") > 1.7e9);
    assert!(value("dialex_publish_confirm_seconds_count") >= 56.0);
    // Rejected requests never reach the store; every dialed one is claimed, then recorded.
    for op in ["claim", "record"] {
        assert_eq!(
            value(&format!(
                "dialex_store_operation_duration_seconds_count{{op=\"{op}\"}}"
            )),
            50.0
        );
    }
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            !line.contains("metered-"),
            "no request id in a label: {line}"
        );
        assert!(
            !line.contains("1390000"),
            "no phone number in a label: {line}"
        );
    }
    let (status, _) = h.readyz().await.unwrap();
    assert_eq!(status, 200);
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_drains_exits_zero_and_a_second_worker_finishes_the_rest() {
    let sim = SimConfig {
        latency: Duration::from_millis(20),
        ..SimConfig::default()
    };
    let mut h = Harness::start(settings_with(StoreBackend::Redis), sim)
        .await
        .expect("RabbitMQ must be reachable");
    const REQUESTS: usize = 2_000;
    publish_many(&h, "term", REQUESTS).await;

    let mut first = spawn_worker_process(&h);
    let mut tally = Tally::default();
    collect(&mut h, &mut tally, 300).await;
    let pid = first.id().expect("the worker runs");
    let signalled = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
    let drain = h.settings.shutdown.drain_timeout();
    let status = tokio::time::timeout(drain + Duration::from_secs(5), first.wait())
        .await
        .expect("the worker exits within the drain timeout")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        tally.terminal() < REQUESTS,
        "the signal came mid-run, with work left"
    );

    let mut second = spawn_worker_process(&h);
    collect(&mut h, &mut tally, REQUESTS).await;
    second.start_kill().unwrap();
    second.wait().await.unwrap();
    tally.assert_one_terminal_each(REQUESTS);
    assert_eq!(assert_dialed_at_most_once(&h), REQUESTS);
    h.cleanup().await.unwrap();
}

/// The broker's pids of this harness's worker connections whose name contains `name`
/// (`<connection_name> <role> <host>`: the role is `consume` or `publish`).
fn worker_connections(name: &str) -> Vec<String> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "pid",
            "client_properties",
            "--no-table-headers",
            "-q",
        ])
        .output()
        .expect("rabbitmqctl runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.contains(name))
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_answer_is_passed_over_for_the_next_in_amqp_url() {
    // The first node listed takes no connections (nothing listens on port 1); the worker (and
    // the harness, with the same settings) connect to the next one, consume and publish.
    let mut s = settings();
    let broker = s.amqp.url.expose_secret().to_owned();
    s.amqp.url = SecretString::from(format!("amqp://guest:guest@127.0.0.1:1/%2f,{broker}"));
    let mut h = started(s, SimConfig::default()).await;
    let event = only_outcome(&mut h, &request("nodes-1", &callee(1), "ivr")).await;
    assert_dialed_once(&event, &h.simulator);
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_the_broker_cancels_is_started_again_like_a_lost_connection() {
    let mut h = started(settings(), SimConfig::default()).await;
    let first = only_outcome(&mut h, &request("cancel-1", &callee(1), "ivr")).await;
    assert_eq!(first.status, Status::Dialed);
    // Deleting the request queue makes the broker cancel the worker's consumer (as a quorum
    // queue's leader moving away can): never a silent stop.
    let connection = dialex_worker::amqp::connect(&h.settings.amqp, "test: cancel")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = h.settings.amqp.names.request_queue.clone();
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut seen_unready = false;
    loop {
        let (status, _) = h.readyz().await.unwrap();
        seen_unready |= status == 503;
        if seen_unready && status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never consumed again (seen not ready: {seen_unready})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The worker declared the queue again and consumes it.
    let second = only_outcome(&mut h, &request("cancel-2", &callee(2), "ivr")).await;
    assert_eq!(second.status, Status::Dialed);
    assert_eq!(h.simulator.dials().len(), 2);
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_workers_connections_under_load_loses_nothing_and_dials_nothing_twice() {
    // Paced, so the connections are closed while most of the work is still ahead (rabbitmqctl
    // takes seconds under load).
    let mut s = settings();
    s.limits.calls_per_second = 150.0;
    s.limits.burst = 20;
    let mut h = started(s, SimConfig::default()).await;
    const REQUESTS: usize = 2_000;
    publish_many(&h, "reconnect", REQUESTS).await;
    let mut tally = Tally::default();
    collect(&mut h, &mut tally, 200).await;
    let name = h.settings.amqp.connection_name.clone();
    let pids = worker_connections(&name);
    assert_eq!(pids.len(), 2, "consume and publish connections: {pids:?}");
    // Closing one makes the worker drop the other itself, which may then be gone already.
    // The closing runs beside the readiness watch: rabbitmqctl can take longer than the
    // worker takes to reconnect.
    let closing = tokio::task::spawn_blocking(move || {
        for pid in &pids {
            let _ = std::process::Command::new("rabbitmqctl")
                .args(["close_connection", pid, "test: broker-side close"])
                .status();
        }
    });
    let closed_at = tally.terminal();
    // The worker reconnects at once (a lost session that was running is retried without a
    // pause), too quickly for the readiness probe to see every time: wait for the reconnect
    // count, and check that whatever not-ready answer shows says why.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = h.readyz().await.unwrap();
        if status == 503 {
            assert!(
                body.contains("not consuming") || body.contains("paused: RabbitMQ"),
                "{body}"
            );
        }
        let page = h.metrics_text().await.unwrap();
        if sample(&page, "dialex_amqp_reconnects_total").unwrap_or(0.0) >= 1.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never reconnected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    closing.await.unwrap();
    collect(&mut h, &mut tally, REQUESTS).await;
    assert!(
        closed_at < REQUESTS / 2,
        "closed mid-run ({closed_at} done)"
    );
    tally.assert_one_terminal_each(REQUESTS);
    assert_eq!(assert_dialed_at_most_once(&h), REQUESTS);
    // Ready again once the reconnected session consumes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while h.readyz().await.unwrap().0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let page = h.metrics_text().await.unwrap();
    assert!(
        sample(&page, "dialex_amqp_reconnects_total").unwrap_or(0.0) >= 1.0,
        "{page}"
    );
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_the_broker_refuses_are_never_dead_lettered_and_keep_their_task_ids() {
    // A downstream queue refuses new messages for a while (a length limit with
    // `reject-publish`): the broker nacks the worker's outcome publishes while the request
    // queue works. A result that could not be published must go
    // back to the queue (it is recorded), never to the dead-letter queue.
    let mut s = settings();
    s.limits.calls_per_second = 200.0;
    s.limits.burst = 20;
    let mut h = started(s, SimConfig::default()).await;
    const REQUESTS: usize = 1_500;
    publish_many(&h, "refused", REQUESTS).await;
    let mut tally = Tally::default();
    let mut events = Vec::new();
    while tally.terminal() < 200 {
        let r = h.next_outcome(WAIT).await.unwrap().expect("an outcome");
        tally.add(&r);
        events.push(r.event);
    }
    // A queue of its own, bound to every outcome, that holds one message and refuses the
    // rest: the broker nacks a publish that any of its queues refuses.
    let connection = dialex_worker::amqp::connect(&h.settings.amqp, "test: full queue")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let full = format!("{}.full", h.settings.amqp.names.outcome_catch_all_queue);
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    channel
        .queue_declare(
            full.as_str().into(),
            QueueDeclareOptions::default(),
            arguments,
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            full.as_str().into(),
            h.settings.amqp.names.outcome_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let refused_at = tally.terminal();
    let mut paused = false;
    // Requests without a free pace slot book one and wait outside first, so the next dial
    // (and the refused outcome) may come seconds later; on a loaded machine the wait queues
    // return them later still. Nothing can finish while the queue refuses every outcome, so
    // the deadline only bounds a worker that never pauses.
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    while !paused && tokio::time::Instant::now() < until {
        let (status, body) = h.readyz().await.unwrap();
        paused |= status == 503 && body.contains("RabbitMQ does not take");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    channel
        .queue_delete(full.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    while tally.terminal() < REQUESTS {
        let Some(r) = h.next_outcome(WAIT).await.unwrap() else {
            panic!("no outcome with {} of {REQUESTS} done", tally.terminal());
        };
        tally.add(&r);
        events.push(r.event);
    }
    assert!(
        refused_at < REQUESTS / 2,
        "refused mid-run ({refused_at} done)"
    );
    assert!(
        paused,
        "the worker paused while the broker refused its outcomes"
    );
    tally.assert_one_terminal_each(REQUESTS);
    assert_eq!(assert_dialed_at_most_once(&h), REQUESTS);
    // Every dialed event carries the task id of the one dial of its callee.
    let task_of: HashMap<String, String> = h
        .simulator
        .dials()
        .into_iter()
        .map(|d| (d.callee, d.task_id))
        .collect();
    for event in events.iter().filter(|e| e.status == Status::Dialed) {
        let index: usize = event
            .request_id
            .rsplit('-')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            event.task_id.as_ref(),
            task_of.get(&callee(index)),
            "{event:?}"
        );
    }
    let parked = h.dead_letters().await.unwrap();
    assert!(parked.is_empty(), "dead-lettered: {}", parked.len());
    h.cleanup().await.unwrap();
}

/// A Redis server of this test's own, on a free port, persisting to its own directory so a
/// restart brings the data back (as a production Redis with AOF would).
struct OwnRedis {
    port: u16,
    dir: std::path::PathBuf,
    server: Option<std::process::Child>,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("dialex-redis-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = OwnRedis {
            port,
            dir,
            server: None,
        };
        redis.up();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn cli(&self, args: &[&str]) -> bool {
        std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .is_ok_and(|out| out.status.success() && out.stdout.starts_with(b"PONG"))
    }

    fn up(&mut self) {
        let server = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--appendonly", "yes", "--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (see the README)");
        self.server = Some(server);
        for _ in 0..100 {
            if self.cli(&["ping"]) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server on port {} did not answer", self.port);
    }

    fn down(&mut self) {
        let _ = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown"])
            .output();
        if let Some(mut server) = self.server.take() {
            let _ = server.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ccc_outage_pauses_the_worker_and_burns_no_request() {
    // CCC answers 503 to everything for 60 s under a backlog of 500 requests. Per request,
    // each would spend its attempts within seconds (the test settings retry after 0.5 s) and
    // end `failed`; the outage breaker must pause the worker instead, with the requests back
    // in the queue and their attempts unspent, until CCC answers again.
    let mut s = settings();
    // Probe at least every 5 s, so the test does not wait long once CCC is back.
    s.outage.max_probe_interval_ms = 5_000;
    let mut h = started(s, SimConfig::default()).await;
    h.simulator.set_down(true);
    const REQUESTS: usize = 500;
    publish_many(&h, "ccc-down", REQUESTS).await;
    let mut tally = Tally::default();
    let (mut not_ready, mut paused_metric) = (false, false);
    let up_at = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < up_at {
        let (status, body) = h.readyz().await.unwrap();
        not_ready |= status == 503 && body.contains("CCC fails for everyone");
        let page = h.metrics_text().await.unwrap();
        paused_metric |= sample(&page, "dialex_paused{cause=\"ccc_outage\"}") == Some(1.0);
        while let Some(r) = h.next_outcome(Duration::from_millis(100)).await.unwrap() {
            tally.add(&r);
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let ended_during_outage = tally.terminal();
    h.simulator.set_down(false);
    collect(&mut h, &mut tally, REQUESTS).await;

    assert!(not_ready, "/readyz never named the outage");
    assert!(
        paused_metric,
        "dialex_paused{{cause=\"ccc_outage\"}} never showed 1"
    );
    assert_eq!(ended_during_outage, 0, "{}", tally.summary());
    tally.assert_one_terminal_each(REQUESTS);
    for (id, seen) in &tally.0 {
        assert!(
            seen.iter()
                .all(|(_, s)| matches!(s, Status::Dialed | Status::Deferred)),
            "{id}: {seen:?}"
        );
    }
    assert_eq!(assert_dialed_at_most_once(&h), REQUESTS);
    let parked = h.dead_letters().await.unwrap();
    assert!(parked.is_empty(), "dead-lettered: {}", parked.len());
    let page = h.metrics_text().await.unwrap();
    assert_eq!(
        sample(&page, "dialex_paused{cause=\"ccc_outage\"}"),
        Some(0.0)
    );
    assert_eq!(h.readyz().await.unwrap().0, 200);
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_under_load_pauses_the_worker_and_never_dials_without_a_claim() {
    let mut redis = OwnRedis::start();
    let mut s = settings_with(StoreBackend::Redis);
    s.store.url = redis.url().into();
    // 15 s of work at this pace: `redis-cli shutdown` can take seconds on a busy machine, and
    // the store must go down while most requests are still ahead.
    s.limits.calls_per_second = 100.0;
    s.limits.burst = 20;
    let mut h = started(s, SimConfig::default()).await;
    const REQUESTS: usize = 1_500;
    publish_many(&h, "outage", REQUESTS).await;
    let mut tally = Tally::default();
    // Down once 200 are dialed, counted where they are dialed: the events (a `deferred` one
    // for each booked request besides its outcome) can be read far behind the worker on a
    // busy machine, which then finished every request before the store went down.
    while h.simulator.dial_count() < 200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    redis.down();
    assert!(
        h.simulator.dial_count() < REQUESTS,
        "the store went down before the run ended"
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = h.readyz().await.unwrap();
        if status == 503 && body.contains("store") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never paused: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let page = h.metrics_text().await.unwrap();
    assert_eq!(sample(&page, "dialex_paused{cause=\"store\"}"), Some(1.0));
    let dials_while_down = h.simulator.dial_count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        h.simulator.dial_count(),
        dials_while_down,
        "nothing is dialed while the store is down"
    );

    redis.up();
    collect(&mut h, &mut tally, REQUESTS).await;
    tally.assert_one_terminal_each(REQUESTS);
    assert_dialed_at_most_once(&h);
    // Every call placed belongs to a request whose outcome says it was (or may have been).
    let dialed_callees: HashSet<String> =
        h.simulator.dials().into_iter().map(|d| d.callee).collect();
    for (id, seen) in &tally.0 {
        let i: usize = id.trim_start_matches("outage-").parse().unwrap();
        let status = seen.iter().find(|(_, s)| *s != Status::Deferred).unwrap().1;
        let was_dialed = dialed_callees.contains(&callee(i));
        match status {
            Status::Dialed => assert!(was_dialed, "{id}"),
            Status::Unknown => {}
            other => assert!(!was_dialed, "{id} is {other:?} but was dialed"),
        }
    }
    assert_eq!(h.readyz().await.unwrap().0, 200);
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placed_call_whose_record_fails_ends_with_one_outcome_and_its_task_id() {
    // Redis goes away while the call is in flight (0.8 s at the simulator), so the result
    // cannot be recorded when the answer comes. It must not be published unrecorded: a
    // duplicate after the claim's lease would then end the request a second time, `unknown`.
    let mut redis = OwnRedis::start();
    let mut s = settings_with(StoreBackend::Redis);
    s.store.url = redis.url().into();
    let sim = SimConfig {
        latency: Duration::from_millis(800),
        ..SimConfig::default()
    };
    let mut h = started(s, sim).await;
    let body = request("record-fails", &callee(800), "ivr");
    h.publish_request(&body, None).await.unwrap();
    let published = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.simulator.dial_count(), 0, "still in flight");
    redis.down();
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.up();
    let first = h.outcomes(1, WAIT).await.unwrap().remove(0).event;
    helpers::assert_dialed_once(&first, &h.simulator);
    // A duplicate once the claim's lease (8 s) is over finds the recorded result.
    tokio::time::sleep_until(published + Duration::from_secs(9)).await;
    h.publish_request(&body, None).await.unwrap();
    let again = h.outcomes(1, WAIT).await.unwrap().remove(0).event;
    assert_eq!(
        (again.status, again.event_id),
        (first.status, first.event_id)
    );
    assert_eq!(again.task_id, first.task_id);
    assert!(
        h.next_outcome(Duration::from_secs(2))
            .await
            .unwrap()
            .is_none(),
        "one outcome, published twice at most"
    );
    assert_eq!(h.simulator.dial_count(), 1);
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_record_for_one_request_parks_it_and_never_pauses_the_worker() {
    // The request's key in Redis holds a list: every claim answers WRONGTYPE, while Redis
    // itself answers. That request is parked after its deliveries; the others are dialed.
    let mut h = started(settings_with(StoreBackend::Redis), SimConfig::default()).await;
    let key = format!("{}:req:wrongtype", h.settings.store.key_prefix);
    let pushed = std::process::Command::new("redis-cli")
        .args(["RPUSH", &key, "not-a-record"])
        .output()
        .unwrap();
    assert!(pushed.status.success());
    h.publish_request(&request("wrongtype", &callee(810), "ivr"), None)
        .await
        .unwrap();
    for i in 0..5 {
        h.publish_request(
            &request(&format!("fine-{i}"), &callee(811 + i), "ivr"),
            None,
        )
        .await
        .unwrap();
    }
    let received = h.outcomes(6, WAIT).await.unwrap();
    let bad = helpers::the_one_not_dialed(&received, "wrongtype");
    assert_eq!(bad.status, Status::Unknown);
    assert_eq!(bad.code.as_deref(), Some("store_error"));
    assert_eq!(h.simulator.dial_count(), 5);
    let parked = helpers::dead_letters_soon(&h, 1).await;
    assert_eq!(parked[0].reason.as_deref(), Some("store_error"));
    let page = h.metrics_text().await.unwrap();
    assert_eq!(sample(&page, "dialex_paused{cause=\"store\"}"), Some(0.0));
    assert_eq!(h.readyz().await.unwrap().0, 200);
    let _ = std::process::Command::new("redis-cli")
        .args(["DEL", &key])
        .output();
    h.cleanup().await.unwrap();
}
