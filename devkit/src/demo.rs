//! `dialex-devkit demo`: the whole product in one command, against the built-in simulator.
//!
//! Starts a simulator and a worker in this process, publishes a handful of sample requests
//! (one per answer mode, a `+86` number, a throttled-then-retried call, an invalid callee and
//! a malformed body), prints the outcome events as a table, then the call results the
//! follow-up found in the simulator's call records, cleans up and exits.

use std::time::Duration;

use anyhow::Context as _;

use crate::harness::{Delivered, Harness, Received};
use crate::simulator::{CallScript, Fault, SimConfig};
use dialex_worker::config::Settings;
use dialex_worker::outcome::Status;

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
pub async fn run(mut settings: Settings) -> anyhow::Result<()> {
    // The follow-up on, looking soon: the simulator's records appear half a second after
    // each call.
    settings.followup.enabled = true;
    settings.followup.polls_ms = vec![1_000, 3_000, 6_000];
    let sim = SimConfig {
        call_record_delay: Duration::from_millis(500),
        ..SimConfig::default()
    };
    let mut harness = Harness::start(settings, sim).await.map_err(|error| {
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
    // How the customers take the calls, for the follow-up to find.
    harness
        .simulator
        .script_call("13900000002", CallScript::disposition("NoAnswer"));
    harness
        .simulator
        .script_call("075512345678", CallScript::disposition("Voicemail"));
    harness.start_worker(Harness::demo_credentials()).await?;

    let run = format!("demo-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let samples = samples(&run);
    for sample in &samples {
        harness
            .publish_request(sample.body.as_bytes(), sample.message_id)
            .await
            .context("publishing a sample request")?;
    }
    // Every sample has an outcome; every dialed one, a call result a few seconds later.
    let mut outcomes: Vec<Received> = Vec::new();
    let mut results = Vec::new();
    let dialed = |outcomes: &[Received]| {
        outcomes
            .iter()
            .filter(|o| o.event.status == Status::Dialed)
            .count()
    };
    while outcomes.len() < samples.len() || results.len() < dialed(&outcomes) {
        match harness.next_event(Duration::from_secs(30)).await? {
            Some(Delivered::Outcome(outcome)) => outcomes.push(outcome),
            Some(Delivered::Result(result)) => results.push(result.event),
            None => anyhow::bail!(
                "no event for 30 s ({} outcomes, {} call results)",
                outcomes.len(),
                results.len()
            ),
        }
    }
    outcomes.sort_by(|a, b| a.event.request_id.cmp(&b.event.request_id));
    results.sort_by(|a, b| a.request_id.cmp(&b.request_id));

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
    println!();
    println!("Call results (dial.result.<disposition>), from the simulator's call records:");
    println!(
        "{:<20} {:<10} {:<12} {:>8} {:>6}",
        "request_id", "result", "CCC", "duration", "polls"
    );
    println!("{}", "-".repeat(60));
    for r in &results {
        println!(
            "{:<20} {:<10} {:<12} {:>8} {:>6}",
            r.request_id,
            r.disposition.as_str(),
            r.ccc_disposition.as_deref().unwrap_or("-"),
            r.duration_s
                .map_or_else(|| "-".to_owned(), |d| format!("{d} s")),
            r.polls,
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
