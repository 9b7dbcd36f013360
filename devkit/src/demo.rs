//! `dialex-devkit demo`: the whole product in one command, against the built-in simulator.
//!
//! Starts a simulator and a worker in this process, publishes a handful of sample requests
//! (one per answer mode, a `+86` number, a throttled-then-retried call, an invalid callee and
//! a malformed body), prints the outcome events as a table, cleans up and exits.

use std::time::Duration;

use anyhow::Context as _;

use crate::harness::Harness;
use crate::simulator::{Fault, SimConfig};
use dialex_worker::config::Settings;

struct Sample {
    what: &'static str,
    body: String,
    message_id: Option<&'static str>,
}

fn request(id: &str, callee: &str, mode: &str, rout_point: &str) -> String {
    serde_json::json!({
        "request_id": id,
        "instance_id": "demo-instance",
        "caller": "02285196281",
        "callee": callee,
        "answer_mode": mode,
        "rout_point": rout_point,
        "attributes": {"source": "demo"},
    })
    .to_string()
}

fn samples(run: &str) -> Vec<Sample> {
    vec![
        Sample {
            what: "IVR contact flow",
            body: request(&format!("{run}-ivr"), "13800000001", "ivr", "paEF_1GAQXXJ"),
            message_id: None,
        },
        Sample {
            what: "agent, +86 number with dashes",
            body: request(
                &format!("{run}-agent"),
                "+86 139-0000-0002",
                "agent",
                "agent001@DemoCallCenter",
            ),
            message_id: None,
        },
        Sample {
            what: "skill group, landline, numeric mode",
            body: request(
                &format!("{run}-skill"),
                "0755-12345678",
                "2",
                "skillgroup-queue-1",
            )
            .replace("\"2\"", "2"),
            message_id: None,
        },
        Sample {
            what: "throttled once, then retried",
            body: request(
                &format!("{run}-retry"),
                "13800000004",
                "ivr",
                "paEF_1GAQXXJ",
            ),
            message_id: None,
        },
        Sample {
            what: "invalid callee",
            body: request(&format!("{run}-invalid"), "12345", "ivr", "paEF_1GAQXXJ"),
            message_id: None,
        },
        Sample {
            what: "malformed JSON (id from message_id)",
            body: "{\"request_id\": \"oops\", ".to_owned(),
            message_id: Some("demo-malformed"),
        },
    ]
}

/// Runs the demo; returns an error a person can act on.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let mut harness = Harness::start(settings, SimConfig::default())
        .await
        .map_err(|error| {
            anyhow::anyhow!(
                "{error:#}\n\nRabbitMQ must be running on the configured URL (default 127.0.0.1:5672, guest/guest).\n\
                 Start it with `rabbitmq-server -detached` (or `bash scripts/services.sh`), then run the demo again."
            )
        })?;
    println!(
        "CCC simulator on {}; worker consuming {}",
        harness.simulator.endpoint(),
        harness.settings.amqp.names.request_queue
    );
    harness.simulator.inject("13800000004", Fault::Throttle, 1);
    harness.start_worker(Harness::demo_credentials()).await?;

    let run = format!("demo-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let samples = samples(&run);
    for sample in &samples {
        harness
            .publish_request(sample.body.as_bytes(), sample.message_id)
            .await
            .context("publishing a sample request")?;
    }
    let mut outcomes = harness
        .outcomes(samples.len(), Duration::from_secs(30))
        .await?;
    outcomes.sort_by(|a, b| a.event.request_id.cmp(&b.event.request_id));

    println!();
    println!(
        "{:<20} {:<9} {:<20} {:<18} {:>8}",
        "request_id", "status", "task_id", "code", "attempts"
    );
    println!("{}", "-".repeat(79));
    for received in &outcomes {
        let e = &received.event;
        println!(
            "{:<20} {:<9} {:<20} {:<18} {:>8}",
            e.request_id,
            e.status.as_str(),
            e.task_id.as_deref().unwrap_or("-"),
            e.code.as_deref().unwrap_or("-"),
            e.attempts
        );
    }
    let dead = harness.dead_letters().await?;
    println!();
    println!(
        "{} dialed by the simulator; {} message(s) parked on the dead-letter queue:",
        harness.simulator.dial_count(),
        dead.len()
    );
    for letter in &dead {
        println!(
            "  {}: {}",
            letter.reason.as_deref().unwrap_or("?"),
            letter.detail.as_deref().unwrap_or("")
        );
    }
    println!();
    println!(
        "Samples: {}",
        samples
            .iter()
            .map(|s| s.what)
            .collect::<Vec<_>>()
            .join("; ")
    );
    harness.cleanup().await?;
    Ok(())
}
