//! `dialex-devkit bench --backlog N`: fair dispatch under a large backlog. N requests for one
//! instance paced at a low rate, then a trickle for another instance (two a second) for a
//! while; reports how soon the trickle is dialed, whether the busy instance keeps its pace,
//! and how many broker messages each dialed request costs.
//!
//! The worker runs in this process (its metrics are read directly); the backlog is far longer
//! than the run, as in production, so the figures are those of a worker in the middle of it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use jiff::Timestamp;

use crate::harness::Harness;
use crate::simulator::SimConfig;
use dialex_worker::config::StoreBackend;
use dialex_worker::defer::{BOOKING_MARGIN, Tiers};
use dialex_worker::gates::limits::InstanceLimits;
use dialex_worker::metrics::{Metrics, ReasonLabels};
use dialex_worker::outcome::Status;

const BUSY: &str = "bench-busy";
const TRICKLE: &str = "bench-trickle";
/// How often the trickle publishes.
const TRICKLE_EVERY: Duration = Duration::from_millis(500);

/// What to measure.
#[derive(Debug, Clone)]
pub struct BacklogOptions {
    /// Requests in the busy instance's backlog.
    pub requests: usize,
    /// The busy instance's pace, calls per second (burst 1).
    pub rate: f64,
    /// How long the trickle runs.
    pub duration: Duration,
    pub store: StoreBackend,
    pub prefetch: u16,
}

/// The worker's counters at one moment.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    deliveries: u64,
    wait_publishes: u64,
    events: u64,
    dials: usize,
    busy_dials: usize,
}

fn sample(h: &Harness, started: Instant) -> Sample {
    let metrics: &Metrics = &h.metrics;
    let dials = h.simulator.dials();
    Sample {
        at: started.elapsed(),
        deliveries: metrics.requests_received.get(),
        wait_publishes: metrics
            .deferrals
            .get_or_create(&ReasonLabels {
                reason: "limits".to_owned(),
            })
            .get(),
        events: Status::ALL
            .iter()
            .map(|status| metrics.outcome_count(*status))
            .sum(),
        dials: dials.len(),
        busy_dials: dials.iter().filter(|d| d.instance_id == BUSY).count(),
    }
}

fn body(instance: &str, run: &str, i: usize) -> Vec<u8> {
    serde_json::json!({
        "request_id": format!("backlog-{run}-{instance}-{i}"),
        "instance_id": instance,
        "caller": "02285196281",
        "callee": callee(instance, i),
        "answer_mode": "ivr",
        "rout_point": "paEF_1GAQXXJ",
    })
    .to_string()
    .into_bytes()
}

fn callee(instance: &str, i: usize) -> String {
    let prefix = if instance == BUSY { "137" } else { "136" };
    format!("{prefix}{i:08}")
}

/// Hops through the wait queues of a request booked `left` ahead (the first deferral and
/// every hop after it), as the worker walks the tiers.
fn hops(tiers: &Tiers, mut left: Duration) -> u32 {
    let mut hops = 1;
    while let Some(tier) = tiers.for_booked(left) {
        left -= tier.delay;
        hops += 1;
    }
    hops
}

pub async fn run(options: &BacklogOptions) -> anyhow::Result<()> {
    let mut settings = super::bench_settings(options.store, options.prefetch)?;
    settings.limits.instances.insert(
        BUSY.to_owned(),
        InstanceLimits {
            calls_per_second: Some(options.rate),
            burst: Some(1),
            class: Some("busy".to_owned()),
            ..InstanceLimits::default()
        },
    );
    settings.limits.instances.insert(
        TRICKLE.to_owned(),
        InstanceLimits {
            class: Some("trickle".to_owned()),
            ..InstanceLimits::default()
        },
    );
    settings.validate()?;
    let tiers = Tiers::new(&settings.deferral, &settings.amqp.names);
    println!(
        "backlog: {} requests for one instance at {} calls/s, then a request for another instance \
         every {} ms for {} s; {} store, prefetch {}, wait tiers {:?} ms",
        options.requests,
        options.rate,
        TRICKLE_EVERY.as_millis(),
        options.duration.as_secs(),
        match options.store {
            StoreBackend::Embedded => "embedded",
            StoreBackend::Redis => "redis",
        },
        options.prefetch,
        settings.deferral.tiers_ms,
    );
    let mut h = Harness::start(settings, SimConfig::default())
        .await
        .context("starting the simulator and declaring the topology (is RabbitMQ running?)")?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let run = &run[..8];
    let publishing = Instant::now();
    for i in 0..options.requests {
        h.publish_unconfirmed(&body(BUSY, run, i)).await?;
    }
    h.confirmed().await?;
    println!(
        "published the backlog in {:.1} s",
        publishing.elapsed().as_secs_f64()
    );
    h.start_worker(Harness::demo_credentials()).await?;

    let started = Instant::now();
    let request_queue = h.settings.amqp.names.request_queue.clone();
    let mut published: HashMap<String, Timestamp> = HashMap::new();
    let mut samples = vec![sample(&h, started)];
    // When every backlog request had been delivered once: the request queue first empty.
    let mut intake_done: Option<Duration> = None;
    let mut i = 0;
    while started.elapsed() < options.duration {
        h.publish_request(&body(TRICKLE, run, i), None).await?;
        published.insert(callee(TRICKLE, i), Timestamp::now());
        i += 1;
        samples.push(sample(&h, started));
        if intake_done.is_none() && h.queue_depth(&request_queue).await? == 0 {
            intake_done = Some(started.elapsed());
        }
        tokio::time::sleep(TRICKLE_EVERY).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while h
        .simulator
        .dials()
        .iter()
        .filter(|d| d.instance_id == TRICKLE)
        .count()
        < published.len()
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the trickle was not dialed within a minute"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = sample(&h, started);
    let dials = h.simulator.dials();
    h.cleanup().await?;

    let intake = intake_done.unwrap_or(options.duration);
    let mut during = Vec::new();
    let mut after = Vec::new();
    for dial in dials.iter().filter(|d| d.instance_id == TRICKLE) {
        let at = published[&dial.callee];
        let waited: Duration = dial
            .started_at
            .duration_since(at)
            .try_into()
            .unwrap_or(Duration::ZERO);
        if started_offset(at, started) < intake {
            during.push(waited);
        } else {
            after.push(waited);
        }
    }
    during.sort_unstable();
    after.sort_unstable();
    let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1000.0);
    let describe = |waits: &[Duration]| {
        if waits.is_empty() {
            "none".to_owned()
        } else {
            format!(
                "{} requests, p50 {} ms, p99 {} ms, max {} ms",
                waits.len(),
                ms(super::quantile(waits, 0.50)),
                ms(super::quantile(waits, 0.99)),
                ms(waits[waits.len() - 1])
            )
        }
    };
    println!(
        "intake: every backlog request delivered and booked once after {:.1} s",
        intake.as_secs_f64()
    );
    println!(
        "trickle queue-to-dial while the backlog was taken in: {}",
        describe(&during)
    );
    println!("trickle queue-to-dial after that: {}", describe(&after));

    // The steady state: from the end of the intake to the end of the run.
    let from = samples
        .iter()
        .find(|s| s.at >= intake)
        .copied()
        .unwrap_or(last);
    let dialed = (last.dials - from.dials).max(1) as f64;
    let window = (last.at.saturating_sub(from.at)).as_secs_f64().max(0.001);
    let busy_used = (last.busy_dials - from.busy_dials) as f64 / window / options.rate;
    let deliveries = (last.deliveries - from.deliveries) as f64;
    let wait_publishes = (last.wait_publishes - from.wait_publishes) as f64;
    let events = (last.events - from.events) as f64;
    println!(
        "after the intake ({window:.0} s): busy instance at {:.1} % of its pace; per dialed \
         request {:.2} deliveries, {:.2} wait-queue publishes, {:.2} events: {:.2} broker \
         messages (a worker without waits: 2)",
        busy_used * 100.0,
        deliveries / dialed,
        wait_publishes / dialed,
        events / dialed,
        (deliveries + wait_publishes + events) / dialed
    );
    let all = (last.deliveries + last.wait_publishes + last.events) as f64 / last.dials as f64;
    println!("whole run, intake included: {all:.1} broker messages per dialed request");
    let total_hops: u64 = (0..options.requests)
        .map(|k| {
            let left = Duration::from_secs_f64(k as f64 / options.rate);
            u64::from(hops(&tiers, left))
        })
        .sum();
    let per_request = total_hops as f64 / options.requests as f64;
    println!(
        "computed from the tier walk (margin {} ms): {per_request:.1} hops per backlog request \
         over its whole wait, i.e. {:.1} broker messages per dialed request (delivery and \
         publish per hop, the first delivery and the outcome)",
        BOOKING_MARGIN.as_millis(),
        2.0 + 2.0 * per_request
    );
    Ok(())
}

/// How long after `started` (an `Instant`) the wall-clock instant `at` was.
fn started_offset(at: Timestamp, started: Instant) -> Duration {
    let now = Timestamp::now();
    let ago: Duration = now.duration_since(at).try_into().unwrap_or(Duration::ZERO);
    started.elapsed().saturating_sub(ago)
}
