//! Publishes N dial requests to the default request exchange and waits for N outcome events
//! on the catch-all queue, printing the elapsed time. Run it against a separate `run` worker
//! and `sim` simulator (see the README's "Throughput" section):
//!
//! ```text
//! cargo run --release --example load -- 10000
//! ```

use std::time::{Duration, Instant};

use dialex_worker::amqp::{self, topology};
use dialex_worker::config::Settings;
use dialex_worker::defer::Tiers;
use dialex_worker::harness::read_queue;
use futures_util::StreamExt as _;
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueuePurgeOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let count: usize = std::env::args().nth(1).map_or(Ok(10_000), |n| n.parse())?;
    let settings = Settings::load(None)?;
    let names = &settings.amqp.names;
    let connection = amqp::connect(&settings.amqp.url, "dialex-worker load").await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let tiers = Tiers::new(&settings.deferral, names);
    topology::declare(&channel, &settings.amqp, &tiers).await?;
    channel
        .queue_purge(
            names.outcome_catch_all_queue.as_str().into(),
            QueuePurgeOptions::default(),
        )
        .await?;
    let mut outcomes = read_queue(&channel, &names.outcome_catch_all_queue).await?;

    let run = uuid::Uuid::new_v4().simple().to_string();
    let started = Instant::now();
    for i in 0..count {
        let body = serde_json::json!({
            "request_id": format!("load-{}-{i}", &run[..8]),
            "instance_id": "load-instance",
            "caller": "02285196281",
            "callee": format!("139{:08}", i),
            "answer_mode": "ivr",
            "rout_point": "paEF_1GAQXXJ",
        })
        .to_string();
        // Confirms are awaited in bulk below, the way a busy upstream publishes.
        channel
            .basic_publish(
                names.request_exchange.as_str().into(),
                names.request_routing_key.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
    }
    channel.wait_for_confirms().await?;
    let published = started.elapsed();
    let mut dialed = 0usize;
    for _ in 0..count {
        let delivery = tokio::time::timeout(Duration::from_secs(60), outcomes.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("outcome consumer closed"))??;
        if delivery.routing_key.as_str().ends_with(".dialed") {
            dialed += 1;
        }
    }
    let elapsed = started.elapsed();
    println!(
        "{count} requests: published in {:.2} s, all outcomes in {:.2} s ({:.0} requests/s), {dialed} dialed",
        published.as_secs_f64(),
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
