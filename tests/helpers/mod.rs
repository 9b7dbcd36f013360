//! Shared set-up for the black-box scenarios: a harness (simulator + isolated broker names)
//! tuned for fast tests, and request builders.

#![allow(dead_code)]

pub mod chaos;
pub mod tls;

use std::time::Duration;

use dialex_devkit::harness::{DeadLetter, Harness, Received};
use dialex_devkit::simulator::{SimConfig, Simulator};
use dialex_worker::config::{Settings, StoreBackend};
use dialex_worker::outcome::{OutcomeEvent, Status};

/// Generous: the broker and the worker share two cores with other tests.
pub const WAIT: Duration = Duration::from_secs(60);

/// Settings for tests: the defaults with quick retries and short HTTP timeouts.
pub fn settings() -> Settings {
    let mut settings = Settings::load_from(None, Vec::new()).expect("default settings load");
    settings.ccc.initial_backoff_ms = 5;
    settings.ccc.max_backoff_ms = 20;
    settings.ccc.request_timeout_ms = 1_000;
    settings.ccc.connect_timeout_ms = 500;
    settings.amqp.prefetch = 32;
    // Short leases and wait tiers so crash scenarios resolve in seconds; still longer than the
    // longest dial (3 attempts and a replay of 1 s each, plus backoffs), as validation demands,
    // with room for a few seconds' wait for a pacing slot (a request waits only as long as its
    // claim outlasts the dial).
    settings.store.lease_ms = 8_000;
    settings.deferral.tiers_ms = vec![500, 2_000, 10_000];
    // Retries that outlast the in-process attempts come back through the shortest tier.
    settings.ccc.requeue_delay_ms = 500;
    settings.ccc.max_requeue_delay_ms = 2_000;
    settings.log.level = "warn".into();
    // Limits far above what a test pushes, unless a test is about them.
    settings.limits.max_in_flight = 10_000;
    settings.limits.calls_per_second = 100_000.0;
    settings.limits.burst = 100_000;
    // Tests run at any hour: the call centre is always open unless a test says otherwise.
    settings.business_hours.open_around_the_clock();
    settings.validate().expect("test settings are valid");
    settings
}

/// [`settings`] with the given store backend.
pub fn settings_with(backend: StoreBackend) -> Settings {
    let mut settings = settings();
    settings.store.backend = backend;
    settings
}

/// A worker as a separate process (`dialex-worker run`), wired to the harness; killed when
/// dropped. Its log goes to a file in the store's directory's parent.
pub fn spawn_worker_process(harness: &Harness) -> tokio::process::Child {
    let log = std::env::temp_dir().join(format!("{}.log", harness.settings.store.key_prefix));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("worker log file");
    tokio::process::Command::new(env!("CARGO_BIN_EXE_dialex-worker"))
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(harness.worker_env())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("the worker binary starts")
}

/// Reads outcome events until `done` says so, or no event arrives for `idle`.
pub async fn outcomes_until(
    harness: &mut Harness,
    idle: Duration,
    mut done: impl FnMut(&[Received]) -> bool,
) -> Vec<Received> {
    let mut received = Vec::new();
    while !done(&received) {
        match harness.next_outcome(idle).await.expect("outcome stream") {
            Some(event) => received.push(event),
            None => panic!(
                "no outcome for {idle:?} after {} events; giving up",
                received.len()
            ),
        }
    }
    received
}

/// A harness and its simulator, no worker yet. Fails loudly when RabbitMQ is unreachable:
/// the tests never skip.
pub async fn harness(settings: Settings, sim: SimConfig) -> Harness {
    dialex_worker::telemetry::init(&settings.log);
    Harness::start(settings, sim).await.expect(
        "RabbitMQ must be reachable on 127.0.0.1:5672 (start it with `rabbitmq-server -detached`)",
    )
}

/// A harness with a running worker using the simulator's credentials.
pub async fn started(settings: Settings, sim: SimConfig) -> Harness {
    let mut harness = harness(settings, sim).await;
    harness
        .start_worker(Harness::demo_credentials())
        .await
        .expect("worker starts");
    harness
}

/// No callee was rung more than once (each request has its own callee); the number of
/// dials.
pub fn assert_dialed_at_most_once(h: &Harness) -> usize {
    let dials = h.simulator.dials();
    let mut per_callee: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for d in &dials {
        *per_callee.entry(d.callee.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = per_callee.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "dialed twice: {twice:?}");
    dials.len()
}

/// Publishes one request and returns the next outcome event (the only one expected).
pub async fn only_outcome(
    harness: &mut Harness,
    body: &[u8],
) -> dialex_worker::outcome::OutcomeEvent {
    harness
        .publish_request(body, None)
        .await
        .expect("request published");
    let mut received = harness.outcomes(1, WAIT).await.expect("an outcome");
    received.remove(0).event
}

/// `event` reports the one dial `simulator` executed: `dialed`, with that dial's task id.
pub fn assert_dialed_once(event: &OutcomeEvent, simulator: &Simulator) {
    assert_eq!(event.status, Status::Dialed);
    let dials = simulator.dials();
    assert_eq!(dials.len(), 1, "dialed exactly once");
    assert_eq!(event.task_id.as_deref(), Some(dials[0].task_id.as_str()));
}

/// The request queue empties (every delivery settled) within ten seconds.
pub async fn assert_request_queue_drains(harness: &Harness) {
    let queue = &harness.settings.amqp.names.request_queue;
    let depth = harness
        .settled_depth(queue, 0, Duration::from_secs(10))
        .await
        .expect("queue depth");
    assert_eq!(depth, 0, "{queue} still holds {depth} message(s)");
}

/// The dead letters, once `count` have arrived (a request's event is published before its
/// dead letter); fails if more arrive, or fewer within ten seconds.
pub async fn dead_letters_soon(harness: &Harness, count: usize) -> Vec<DeadLetter> {
    let mut dead = Vec::new();
    for _ in 0..100 {
        dead.extend(harness.dead_letters().await.expect("dead letters"));
        if dead.len() >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dead.len(), count, "dead letters");
    dead
}

/// Among `received`, the outcome of `request_id`, asserting every other request was dialed.
pub fn the_one_not_dialed<'a>(received: &'a [Received], request_id: &str) -> &'a OutcomeEvent {
    let others: Vec<_> = received
        .iter()
        .filter(|r| r.event.request_id != request_id)
        .map(|r| (r.event.request_id.as_str(), r.event.status))
        .collect();
    assert!(
        others.iter().all(|(_, status)| *status == Status::Dialed),
        "{others:?}"
    );
    &received
        .iter()
        .find(|r| r.event.request_id == request_id)
        .unwrap_or_else(|| panic!("an outcome for {request_id}"))
        .event
}

/// A valid request body.
pub fn request(request_id: &str, callee: &str, answer_mode: &str) -> Vec<u8> {
    let rout_point = match answer_mode {
        "agent" | "1" => "agent001@ExampleCallCenter",
        "skill_group" | "2" => "skillgroup-1",
        _ => "paEF_1GAQXXJ",
    };
    serde_json::json!({
        "request_id": request_id,
        "instance_id": "d278629c-c687-4aa3-b044-4fe9b012e7ef",
        "caller": "02285196281",
        "callee": callee,
        "answer_mode": answer_mode,
        "rout_point": rout_point,
        "attributes": {"ticket": request_id},
    })
    .to_string()
    .into_bytes()
}

/// A unique mobile number per index, so the simulator's log can be matched per request.
pub fn callee(index: usize) -> String {
    format!("138{:08}", index)
}

/// Properties carrying the test hook `hook` (`panic`, `abort`; the `test-hooks` feature).
pub fn hooked(hook: &str) -> lapin::BasicProperties {
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        "x-dialex-test-hook".into(),
        lapin::types::AMQPValue::LongString(lapin::types::LongString::from(hook)),
    );
    lapin::BasicProperties::default().with_headers(headers)
}
