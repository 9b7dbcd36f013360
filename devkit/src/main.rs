//! The `dialex-devkit` command line: what the worker is developed and measured with, from a
//! checkout: `sim` (the CCC simulator), `demo` and `bench`. None of it is in the shipped
//! `dialex-worker` binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use dialex_devkit::simulator::{self, SimConfig, Simulator};
use dialex_devkit::{bench, demo};
use dialex_worker::ccc::HttpCccClient;
use dialex_worker::config::{Settings, StoreBackend};
use dialex_worker::credentials::CredentialSource;
use dialex_worker::{app, telemetry};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "The CCC simulator, the demo and the benchmark of dialex-worker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the CCC simulator: a stand-in for the DialEx gateway that checks signatures.
    Sim {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Append every executed dial to this file as JSON lines.
        #[arg(long)]
        dial_log: Option<PathBuf>,
        /// Added latency per executed dial, in milliseconds.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// The AccessKeyId the simulator accepts.
        #[arg(long, env = "ALIBABA_CLOUD_ACCESS_KEY_ID", default_value = simulator::DEMO_ACCESS_KEY_ID)]
        access_key_id: String,
        /// The secret for that AccessKeyId.
        #[arg(long, env = "ALIBABA_CLOUD_ACCESS_KEY_SECRET", default_value = simulator::DEMO_ACCESS_KEY_SECRET, hide_env_values = true, hide_default_value = true)]
        access_key_secret: String,
    },
    /// Run a simulator and a worker in-process, publish sample requests, print the outcomes.
    Demo {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Measure the worker against the bare broker-plus-HTTP floor: N requests through each,
    /// against RabbitMQ and the CCC simulator, then a table of throughput (and its ratio to
    /// the floor), latencies, memory and CPU.
    Bench {
        /// Requests per run.
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// The worker's store: embedded or redis.
        #[arg(long, default_value = "embedded")]
        store: String,
        /// Unacknowledged deliveries each process holds (amqp.prefetch).
        #[arg(long, default_value_t = 64)]
        prefetch: u16,
        /// Latency the simulator adds to every dial, in milliseconds.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Skip the paced run (the worker at half the floor's rate, for queue-to-dial latency).
        #[arg(long)]
        no_paced: bool,
        /// Floor-then-worker pairs; the median ratio is reported (the machine is noisy).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Rate of the paced runs in requests/s (default: half the floor's measured rate).
        #[arg(long)]
        paced_rate: Option<f64>,
        /// Instead of the throughput rounds: a backlog of this many requests for one instance
        /// at `--backlog-rate`, and a trickle for another instance behind it (fair dispatch).
        #[arg(long)]
        backlog: Option<usize>,
        /// The backlog instance's pace, calls per second.
        #[arg(long, default_value_t = 5.0)]
        backlog_rate: f64,
        /// How long the trickle runs, in seconds.
        #[arg(long, default_value_t = 180)]
        backlog_seconds: u64,
    },
    /// The bare floor `bench` compares the worker against (started by `bench`).
    #[command(hide = true)]
    BenchFloor,
    /// The worker exactly as `dialex-worker run` runs it, in a process `bench` starts and
    /// measures.
    #[command(hide = true)]
    Run {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Sim {
            listen,
            dial_log,
            latency_ms,
            access_key_id,
            access_key_secret,
        } => {
            let settings = Settings::load(None)?;
            telemetry::init(&settings.log);
            let config = SimConfig {
                credentials: vec![(access_key_id, SecretString::from(access_key_secret))],
                latency: Duration::from_millis(latency_ms),
                dial_log,
                ..SimConfig::default()
            };
            let sim = Simulator::start(listen, config)
                .await
                .with_context(|| format!("binding {listen}"))?;
            println!("CCC simulator listening on {}", sim.endpoint());
            let shutdown = CancellationToken::new();
            app::cancel_on_signal(shutdown.clone()).await;
            shutdown.cancelled().await;
            sim.shutdown().await;
            Ok(())
        }
        Command::Demo { config } => {
            let mut settings = Settings::load(config.as_deref())?;
            // The demo shows the pipeline at any hour; a --config file keeps its own calendar.
            if config.is_none() {
                settings.business_hours.open_around_the_clock();
            }
            settings.log.level = "error".into();
            telemetry::init(&settings.log);
            demo::run(settings).await
        }
        Command::Bench {
            requests,
            store,
            prefetch,
            latency_ms,
            no_paced,
            rounds,
            paced_rate,
            backlog,
            backlog_rate,
            backlog_seconds,
        } => {
            let store = match store.as_str() {
                "embedded" => StoreBackend::Embedded,
                "redis" => StoreBackend::Redis,
                other => anyhow::bail!("--store must be embedded or redis, not {other:?}"),
            };
            if let Some(requests) = backlog {
                return bench::backlog::run(&bench::backlog::BacklogOptions {
                    requests,
                    rate: backlog_rate,
                    duration: Duration::from_secs(backlog_seconds),
                    store,
                    prefetch,
                })
                .await;
            }
            bench::run(&bench::Options {
                requests,
                store,
                prefetch,
                latency: Duration::from_millis(latency_ms),
                paced: !no_paced,
                rounds,
                paced_rate,
            })
            .await
        }
        Command::BenchFloor => {
            let settings = Settings::load(None)?;
            telemetry::init(&settings.log);
            let credentials =
                CredentialSource::start(dialex_worker::credentials::from_env()?).await;
            let client = HttpCccClient::new(&settings.ccc, credentials)?;
            let shutdown = CancellationToken::new();
            tokio::spawn(app::cancel_on_signal(shutdown.clone()));
            bench::floor::run(&settings, client, shutdown).await
        }
        Command::Run { config } => Ok(app::serve(config.as_deref()).await?),
    }
}
