//! Shared set-up for the black-box scenarios: a harness (simulator + isolated broker names)
//! tuned for fast tests, and request builders.

#![allow(dead_code)]

use std::time::Duration;

use dialex_worker::ccc::simulator::SimConfig;
use dialex_worker::config::Settings;
use dialex_worker::harness::Harness;

/// Generous: the broker and the worker share two cores with other tests.
pub const WAIT: Duration = Duration::from_secs(60);

/// Settings for tests: the defaults with quick retries and short HTTP timeouts.
pub fn settings() -> Settings {
    let mut settings = Settings::load_from(None, Vec::new()).expect("default settings load");
    settings.ccc.initial_backoff_ms = 5;
    settings.ccc.max_backoff_ms = 20;
    settings.ccc.request_timeout_ms = 3_000;
    settings.ccc.connect_timeout_ms = 1_000;
    settings.amqp.prefetch = 32;
    settings
}

/// A harness with a running worker using the simulator's credentials. Fails loudly when
/// RabbitMQ is unreachable: the tests never skip.
pub async fn started(settings: Settings, sim: SimConfig) -> Harness {
    let mut harness = Harness::start(settings, sim).await.expect(
        "RabbitMQ must be reachable on 127.0.0.1:5672 (start it with `rabbitmq-server -detached`)",
    );
    harness
        .start_worker(Harness::demo_credentials())
        .expect("worker starts");
    harness
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
