//! `dialex-devkit bench`: pushes N requests through the full worker (a `run` process) against
//! the real RabbitMQ and the CCC simulator, and through the bare floor (a `bench-floor`
//! process: consume, sign, call, publish, ack, nothing else) seconds before, on the same
//! machine, and prints both with the worker's throughput as a ratio of the floor's.
//!
//! Machines are shared and noisy; the ratio, not the absolute figures, is what compares.

pub mod backlog;
pub mod floor;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use jiff::Timestamp;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use crate::harness::Harness;
use crate::simulator::SimConfig;
use dialex_worker::config::{Settings, StoreBackend};

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    pub requests: usize,
    pub store: StoreBackend,
    pub prefetch: u16,
    /// Added by the simulator to every dial.
    pub latency: Duration,
    /// Also run the worker paced at half the floor's rate, for queue-to-dial latency.
    pub paced: bool,
    /// Floor-then-worker pairs to run; the median ratio is reported.
    pub rounds: usize,
    /// Rate of the paced runs, requests/s; half the floor's measured rate if not given.
    pub paced_rate: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Floor,
    Worker,
}

/// One measured run.
#[derive(Debug)]
struct Phase {
    name: String,
    requests: usize,
    elapsed: Duration,
    dialed: usize,
    ready: Duration,
    idle_rss_kib: u64,
    peak_rss_kib: u64,
    cpu: Duration,
    rtt: (Duration, Duration),
    queue_to_dial: (Duration, Duration),
    /// The worker's own view of the waits on each request's path, from its metrics.
    waits: Option<Waits>,
}

/// p50 and p99 of the steps of a dialed request inside the worker, from its own metrics.
#[derive(Debug)]
struct Waits {
    /// From the delivery reaching the worker to its DialEx call.
    delivery_to_dial: (Duration, Duration),
    claim: (Duration, Duration),
    limiter: (Duration, Duration),
    record: (Duration, Duration),
    confirm: (Duration, Duration),
}

impl Phase {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs the floor, the worker and (optionally) the paced worker, and prints the report.
pub async fn run(options: &Options) -> anyhow::Result<()> {
    println!(
        "{} requests, {} store, prefetch {}, simulated CCC latency {} ms",
        options.requests,
        match options.store {
            StoreBackend::Embedded => "embedded",
            StoreBackend::Redis => "redis",
        },
        options.prefetch,
        options.latency.as_millis()
    );
    let mut ratios = Vec::new();
    for round in 1..=options.rounds.max(1) {
        let floor = measure(Kind::Floor, options, None).await?;
        let worker = measure(Kind::Worker, options, None).await?;
        ratios.push(worker.rate() / floor.rate());
        let mut phases = vec![floor, worker];
        if options.paced && round == options.rounds.max(1) {
            let rate = options.paced_rate.unwrap_or(phases[0].rate() / 2.0);
            let paced = Options {
                requests: (options.requests / 2).max(1),
                ..options.clone()
            };
            // The floor at the same pace: how much of the latency is the broker's and the
            // machine's, not the worker's.
            phases.push(measure(Kind::Floor, &paced, Some(rate)).await?);
            phases.push(measure(Kind::Worker, &paced, Some(rate)).await?);
        }
        println!("\nround {round}");
        print_report(&phases);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "\nworker / floor throughput over {} round(s): median {:.2} (min {:.2}, max {:.2})",
        ratios.len(),
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );
    Ok(())
}

fn print_report(phases: &[Phase]) {
    let floor_rate = phases[0].rate();
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1000.0);
    println!(
        "{:<22} {:>9} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>10}",
        "run",
        "req/s",
        "vs floor",
        "dialed",
        "q2d p50",
        "q2d p99",
        "rtt p50",
        "rtt p99",
        "ready",
        "idle RSS",
        "peak RSS",
        "CPU s/1k"
    );
    for phase in phases {
        println!(
            "{:<22} {:>9.0} {:>8.2} {:>7} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>10.3}",
            phase.name,
            phase.rate(),
            phase.rate() / floor_rate,
            phase.dialed,
            ms(phase.queue_to_dial.0),
            ms(phase.queue_to_dial.1),
            ms(phase.rtt.0),
            ms(phase.rtt.1),
            format!("{} ms", phase.ready.as_millis()),
            format!("{} MB", phase.idle_rss_kib / 1024),
            format!("{} MB", phase.peak_rss_kib / 1024),
            phase.cpu.as_secs_f64() * 1000.0 / phase.requests as f64,
        );
    }
    println!(
        "(q2d: publish to the simulator starting the dial; rtt: one DialEx HTTP exchange as the process saw it; ms)"
    );
    for phase in phases {
        if let Some(waits) = &phase.waits {
            let pair = |(p50, p99): (Duration, Duration)| format!("{} / {}", ms(p50), ms(p99));
            println!(
                "{}: delivery to dial {} (of which store claim {}, limiter {}), store record {}, publish confirm {} (p50 / p99 ms)",
                phase.name,
                pair(waits.delivery_to_dial),
                pair(waits.claim),
                pair(waits.limiter),
                pair(waits.record),
                pair(waits.confirm),
            );
        }
    }
}

/// The settings every benchmark process runs with: the defaults, open around the clock, no
/// cooldown, limits far above what the machine can push, quiet logs.
fn bench_settings(store: StoreBackend, prefetch: u16) -> anyhow::Result<Settings> {
    let mut settings = Settings::load_from(None, Vec::new())?;
    settings.store.backend = store;
    settings.amqp.prefetch = prefetch;
    settings.cooldown.window_ms = 0;
    settings.limits.max_in_flight = 100_000;
    settings.limits.calls_per_second = 1_000_000.0;
    settings.limits.burst = 1_000_000;
    settings.log.level = "warn".into();
    settings.business_hours.open_around_the_clock();
    settings.validate()?;
    Ok(settings)
}

fn body(run: &str, i: usize) -> Vec<u8> {
    serde_json::json!({
        "request_id": format!("bench-{run}-{i}"),
        "instance_id": "bench-instance",
        "caller": "02285196281",
        "callee": callee(i),
        "answer_mode": "ivr",
        "rout_point": "paEF_1GAQXXJ",
    })
    .to_string()
    .into_bytes()
}

fn callee(i: usize) -> String {
    format!("139{i:08}")
}

async fn measure(kind: Kind, options: &Options, pace: Option<f64>) -> anyhow::Result<Phase> {
    let sim = SimConfig {
        latency: options.latency,
        ..SimConfig::default()
    };
    let mut h = Harness::start(bench_settings(options.store, options.prefetch)?, sim)
        .await
        .context("starting the simulator and declaring the topology (is RabbitMQ running?)")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let exe = std::env::current_exe()?;
    let spawned = Instant::now();
    let mut child = Command::new(exe)
        .arg(match kind {
            Kind::Floor => "bench-floor",
            Kind::Worker => "run",
        })
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(h.worker_env())
        .env("DIALEX_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .envs(std::env::vars().filter(|(k, _)| k == "TOKIO_WORKER_THREADS"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the measured process")?;
    let pid = child.id().context("the measured process exited at once")?;
    let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
    match kind {
        Kind::Floor => expect_line(&mut stdout, "ready").await?,
        Kind::Worker => wait_ready(port).await?,
    }
    let ready = spawned.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss_kib = proc_status(pid, "VmRSS:")?;
    let cpu_before = cpu_time(pid)?;

    let run = uuid::Uuid::new_v4().simple().to_string();
    let run = &run[..8];
    let mut published = Vec::with_capacity(options.requests);
    let started = Instant::now();
    for i in 0..options.requests {
        if let Some(rate) = pace {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        published.push(Timestamp::now());
        h.publish_unconfirmed(&body(run, i)).await?;
    }
    h.confirmed().await?;
    let mut dialed = 0;
    for received in 0..options.requests {
        let delivery = h
            .next_outcome_delivery(Duration::from_secs(60))
            .await?
            .with_context(|| format!("no outcome for a minute after {received}"))?;
        if delivery.routing_key.as_str().ends_with(".dialed") {
            dialed += 1;
        }
    }
    let elapsed = started.elapsed();
    let cpu = cpu_time(pid)?.saturating_sub(cpu_before);
    let peak_rss_kib = proc_status(pid, "VmHWM:")?;

    let page = match kind {
        Kind::Worker => Some(
            reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
                .await?
                .text()
                .await?,
        ),
        Kind::Floor => None,
    };
    stop(&mut child, pid).await?;
    let p50_p99 = |page: &str, name: &str, labels: &str| {
        (
            histogram_quantile(page, name, labels, 0.50),
            histogram_quantile(page, name, labels, 0.99),
        )
    };
    let (rtt, waits) = match &page {
        None => (floor_round_trips(&mut stdout).await?, None),
        Some(page) => {
            let store = "dialex_store_operation_duration_seconds";
            let waits = Waits {
                delivery_to_dial: p50_p99(
                    page,
                    "dialex_queue_to_dial_seconds",
                    "class=\"default\"",
                ),
                claim: p50_p99(page, store, "op=\"claim\""),
                limiter: p50_p99(page, "dialex_limiter_wait_seconds", ""),
                record: p50_p99(page, store, "op=\"record\""),
                confirm: p50_p99(page, "dialex_publish_confirm_seconds", ""),
            };
            let rtt = p50_p99(page, "dialex_ccc_request_duration_seconds", "");
            (rtt, Some(waits))
        }
    };

    let index: HashMap<String, usize> = (0..options.requests).map(|i| (callee(i), i)).collect();
    let mut queue_to_dial: Vec<Duration> = h
        .simulator
        .dials()
        .iter()
        .filter_map(|dial| {
            let i = index.get(&dial.callee)?;
            dial.started_at
                .duration_since(published[*i])
                .try_into()
                .ok()
        })
        .collect();
    queue_to_dial.sort_unstable();
    h.cleanup().await?;
    Ok(Phase {
        name: match (kind, pace) {
            (Kind::Floor, None) => "floor".to_owned(),
            (Kind::Floor, Some(rate)) => format!("floor paced {rate:.0}/s"),
            (Kind::Worker, None) => "worker".to_owned(),
            (Kind::Worker, Some(rate)) => format!("worker paced {rate:.0}/s"),
        },
        requests: options.requests,
        elapsed,
        dialed,
        ready,
        idle_rss_kib,
        peak_rss_kib,
        cpu,
        rtt,
        queue_to_dial: (
            quantile(&queue_to_dial, 0.50),
            quantile(&queue_to_dial, 0.99),
        ),
        waits,
    })
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let at = ((sorted.len() as f64 * q) as usize).min(sorted.len() - 1);
    sorted[at]
}

async fn expect_line(stdout: &mut BufReader<ChildStdout>, want: &str) -> anyhow::Result<()> {
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(30), stdout.read_line(&mut line))
        .await
        .context("the floor did not start")??;
    if line.trim() != want {
        bail!("the floor said {line:?}, not {want:?}");
    }
    Ok(())
}

async fn floor_round_trips(
    stdout: &mut BufReader<ChildStdout>,
) -> anyhow::Result<(Duration, Duration)> {
    let mut line = String::new();
    stdout.read_line(&mut line).await?;
    let micros: Vec<u64> = line
        .strip_prefix("rtt_us ")
        .context("the floor printed no round trips")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    match micros[..] {
        [p50, p99] => Ok((Duration::from_micros(p50), Duration::from_micros(p99))),
        _ => bail!("unexpected round-trip line {line:?}"),
    }
}

async fn wait_ready(port: u16) -> anyhow::Result<()> {
    let url = format!("http://127.0.0.1:{port}/readyz");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(response) = client.get(&url).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    bail!("the worker was not ready within 30 s")
}

async fn stop(child: &mut Child, pid: u32) -> anyhow::Result<()> {
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await?;
    tokio::time::timeout(Duration::from_secs(40), child.wait())
        .await
        .context("the measured process did not stop")??;
    Ok(())
}

/// A `kB` line of `/proc/<pid>/status`.
fn proc_status(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// User plus system CPU time of a process so far.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) in parentheses.
    let after = stat.rsplit_once(')').context("unreadable stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks =
        |i: usize| -> anyhow::Result<u64> { Ok(fields.get(i).context("short stat")?.parse()?) };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_secs_f64(
        total as f64 / clock_ticks_per_second(),
    ))
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A quantile of a Prometheus histogram on a text page, interpolated linearly within the
/// bucket it falls in. `labels` picks one series of a family, as its labels are printed after
/// `le` (`op="claim"`); empty for a histogram without any.
fn histogram_quantile(page: &str, name: &str, labels: &str, q: f64) -> Duration {
    let prefix = format!("{name}_bucket{{le=\"");
    let suffix = if labels.is_empty() {
        "} ".to_owned()
    } else {
        format!(",{labels}}} ")
    };
    let buckets: Vec<(f64, f64)> = page
        .lines()
        .filter_map(|line| {
            let (le, rest) = line.strip_prefix(&prefix)?.split_once('"')?;
            let count = rest.strip_prefix(&suffix)?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.split_whitespace().next()?.parse().ok()?))
        })
        .collect();
    let Some(&(_, total)) = buckets.last() else {
        return Duration::ZERO;
    };
    let target = total * q;
    let mut previous = (0.0, 0.0);
    for &(le, count) in &buckets {
        if count >= target {
            if le.is_infinite() {
                return Duration::from_secs_f64(previous.0);
            }
            let share = if count > previous.1 {
                (target - previous.1) / (count - previous.1)
            } else {
                0.0
            };
            return Duration::from_secs_f64(previous.0 + (le - previous.0) * share);
        }
        previous = (le, count);
    }
    Duration::ZERO
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_read_from_a_histogram_page() {
        let page = "\
# TYPE x histogram
x_bucket{le=\"0.001\"} 10
x_bucket{le=\"0.002\"} 90
x_bucket{le=\"0.004\"} 100
x_bucket{le=\"+Inf\"} 100
x_count 100
";
        let ms = |q| histogram_quantile(page, "x", "", q).as_secs_f64() * 1000.0;
        assert!((ms(0.05) - 0.5).abs() < 1e-9);
        assert!((ms(0.50) - 1.5).abs() < 1e-9);
        assert!((ms(0.95) - 3.0).abs() < 1e-9);
        assert_eq!(histogram_quantile("", "x", "", 0.5), Duration::ZERO);
    }

    #[test]
    fn one_series_of_a_histogram_family_is_picked_by_its_labels() {
        let page = "\
# TYPE y histogram
y_bucket{le=\"0.001\",op=\"claim\"} 100
y_bucket{le=\"+Inf\",op=\"claim\"} 100
y_bucket{le=\"0.001\",op=\"record\"} 0
y_bucket{le=\"0.002\",op=\"record\"} 100
y_bucket{le=\"+Inf\",op=\"record\"} 100
";
        let ms = |labels, q| histogram_quantile(page, "y", labels, q).as_secs_f64() * 1000.0;
        assert!((ms("op=\"claim\"", 0.5) - 0.5).abs() < 1e-9);
        assert!((ms("op=\"record\"", 0.5) - 1.5).abs() < 1e-9);
        assert_eq!(ms("", 0.5), 0.0);
    }

    #[test]
    fn the_worker_s_own_metrics_page_is_read() {
        // The worker's encoder, not a hand-written page: a change in how it orders labels
        // would otherwise make the bench print zeros without failing.
        let metrics = dialex_worker::metrics::Metrics::default();
        for _ in 0..100 {
            metrics.store_op(
                dialex_worker::metrics::StoreOp::Claim,
                Duration::from_micros(600),
            );
            metrics.store_op(
                dialex_worker::metrics::StoreOp::Record,
                Duration::from_millis(3),
            );
        }
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let mut page = String::new();
        prometheus_client::encoding::text::encode(&mut page, &registry).unwrap();
        let name = "dialex_store_operation_duration_seconds";
        let claim = histogram_quantile(&page, name, "op=\"claim\"", 0.5);
        let record = histogram_quantile(&page, name, "op=\"record\"", 0.5);
        // Within the 1.5x bucket around each true value.
        assert!(
            claim > Duration::from_micros(400) && claim < Duration::from_micros(900),
            "{claim:?}"
        );
        assert!(
            record > Duration::from_millis(2) && record < Duration::from_millis(5),
            "{record:?}"
        );
    }

    #[test]
    fn quantiles_of_samples() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&samples, 0.5), Duration::from_millis(51));
        assert_eq!(quantile(&samples, 0.99), Duration::from_millis(100));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }
}
