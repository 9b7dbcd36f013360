//! The `dialex-worker` command line: `run` (the worker), `sim` (the CCC simulator), `dnc`,
//! `demo`, and `check-config` (print the effective configuration).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use dialex_worker::ccc::HttpCccClient;
use dialex_worker::ccc::simulator::{self, SimConfig, Simulator};
use dialex_worker::config::{Credentials, Settings, StoreBackend};
use dialex_worker::gates::dnc::{DncList, DncSettings};
use dialex_worker::phone::PhoneNumber;
use dialex_worker::{app, bench, demo, startup, telemetry};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "Turns dial requests on RabbitMQ into Alibaba Cloud Call Center DialEx calls"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker: consume dial requests, dial, publish outcomes.
    Run {
        /// A TOML file layered over the built-in defaults (config/default.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
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
    /// Add or remove numbers on the shared do-not-call set (Redis store only).
    Dnc {
        #[command(subcommand)]
        action: DncAction,
        #[arg(long, global = true)]
        config: Option<PathBuf>,
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
    },
    /// The bare floor `bench` compares the worker against (started by `bench`).
    #[command(hide = true)]
    BenchFloor,
    /// Validate the configuration and print it as `run` would use it (defaults, then the
    /// file, then DIALEX_* variables) as TOML, secrets redacted.
    CheckConfig {
        /// A TOML file layered over the built-in defaults (config/default.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DncAction {
    /// Never call these numbers (any format the worker accepts, e.g. "+86 157-3203-6617").
    Add(Numbers),
    /// Take these numbers off the shared list.
    Remove(Numbers),
}

/// Numbers for `dnc`: on the command line, or (kept out of shell history and `ps`) read from
/// a file or standard input.
#[derive(clap::Args)]
struct Numbers {
    /// Numbers as arguments. They show in shell history and `ps`: prefer --from.
    numbers: Vec<String>,
    /// Read numbers from FILE, one per line, `-` for standard input; blank lines and lines
    /// starting with `#` are skipped.
    #[arg(long, value_name = "FILE")]
    from: Option<PathBuf>,
}

impl Numbers {
    /// Every number given, the arguments first.
    fn all(&self) -> anyhow::Result<Vec<String>> {
        let mut numbers = self.numbers.clone();
        let Some(from) = &self.from else {
            return Ok(numbers);
        };
        let text = if from.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).context("reading numbers from stdin")?
        } else {
            std::fs::read_to_string(from)
                .with_context(|| format!("reading numbers from {}", from.display()))?
        };
        numbers.extend(
            text.lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with('#'))
                .map(str::to_owned),
        );
        Ok(numbers)
    }
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
        Command::Run { config } => Ok(app::serve(config.as_deref()).await?),
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
        Command::Dnc { action, config } => {
            let settings = Settings::load(config.as_deref())?;
            telemetry::init(&settings.log);
            // The shared set is in Redis whatever store.backend says.
            if let Some(warning) = settings.public_hash_key() {
                tracing::warn!("{warning}");
            }
            let list = DncList::start(DncSettings {
                file: None,
                reload_interval: Duration::from_secs(60),
                redis: Some(startup::shared_dnc(&settings)),
            })
            .await?;
            let (numbers, add) = match &action {
                DncAction::Add(numbers) => (numbers.all()?, true),
                DncAction::Remove(numbers) => (numbers.all()?, false),
            };
            for (i, raw) in numbers.iter().enumerate() {
                // The message names the argument, not the number: it may be someone's phone.
                let number = PhoneNumber::parse(raw)
                    .with_context(|| format!("number {} is not dialable", i + 1))?;
                if add {
                    list.add(&number).await?;
                } else {
                    list.remove(&number).await?;
                }
                println!("{} {number}", if add { "added" } else { "removed" });
            }
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
        Command::CheckConfig { config } => check_config(config.as_deref()),
        Command::Bench {
            requests,
            store,
            prefetch,
            latency_ms,
            no_paced,
            rounds,
            paced_rate,
        } => {
            let store = match store.as_str() {
                "embedded" => StoreBackend::Embedded,
                "redis" => StoreBackend::Redis,
                other => anyhow::bail!("--store must be embedded or redis, not {other:?}"),
            };
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
            let client = HttpCccClient::new(&settings.ccc, Credentials::from_env()?)?;
            let shutdown = CancellationToken::new();
            tokio::spawn(app::cancel_on_signal(shutdown.clone()));
            bench::floor::run(&settings, client, shutdown).await
        }
    }
}

/// Loads and validates the settings exactly as `run` does and prints them, then says which
/// CCC credential variables are set (never their values). Missing credentials are reported,
/// not an error: `run` checks them.
fn check_config(file: Option<&Path>) -> anyhow::Result<()> {
    let settings = Settings::load(file)?;
    let mut report = String::from(
        "# dialex-worker effective configuration: defaults, then --config, then DIALEX_*\n\
         # variables. Secrets are shown as ***.\n\n",
    );
    report.push_str(&settings.to_redacted_toml()?);
    report.push_str("\n# CCC credentials in the environment (values never shown):\n");
    let mut missing = Vec::new();
    for (name, set) in Credentials::presence_in_env() {
        let state = match (set, name == Credentials::SECURITY_TOKEN) {
            (true, _) => "set",
            (false, false) => "not set",
            (false, true) => "not set (optional: only STS credentials need it)",
        };
        report.push_str(&format!("# {name}: {state}\n"));
        if !set && name != Credentials::SECURITY_TOKEN {
            missing.push(name);
        }
    }
    if !missing.is_empty() {
        report.push_str(&format!(
            "# warning: `run` will refuse to start without {}.\n",
            missing.join(" and ")
        ));
    }
    for warning in settings.warnings() {
        report.push_str(&format!("# warning: {warning}.\n"));
    }
    std::io::stdout()
        .lock()
        .write_all(report.as_bytes())
        .context("writing to stdout")
}
