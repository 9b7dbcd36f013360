//! The `dialex-worker` command line: `run` (the worker), `dnc` (the shared do-not-call set),
//! `dead` (the dead-letter queue) and `check-config` (print the effective configuration). The simulator, the demo and the
//! benchmark are the devkit's (`devkit/`), never shipped.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use dialex_worker::config::Settings;
use dialex_worker::credentials::Credentials;
use dialex_worker::dead::{self, commands};
use dialex_worker::gates::dnc::SharedList as _;
use dialex_worker::phone::PhoneNumber;
use dialex_worker::store::redis::dnc::{RedisDnc, RedisDncSet};
use dialex_worker::{app, telemetry};
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
    /// Add or remove numbers on the shared do-not-call set (Redis store only).
    Dnc {
        #[command(subcommand)]
        action: DncAction,
        #[arg(long, global = true)]
        config: Option<PathBuf>,
    },
    /// See what sits on the dead-letter queue, and replay or purge part of it.
    Dead {
        #[command(subcommand)]
        action: DeadAction,
        #[arg(long, global = true)]
        config: Option<PathBuf>,
    },
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

#[derive(Subcommand)]
enum DeadAction {
    /// A table of the parked messages, oldest first; every message stays parked, in order.
    List {
        #[command(flatten)]
        filter: DeadFilter,
        /// Show at most N of the matching messages.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Counts of the parked messages by reason and by instance.
    Summary {
        #[command(flatten)]
        filter: DeadFilter,
        /// JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Put matching messages back on the request queue: each goes through dedup and every gate
    /// again, so one whose call was (or may have been) placed is never dialed again.
    Replay {
        #[command(flatten)]
        filter: DeadFilter,
        /// Replay at most N messages.
        #[arg(long, value_name = "N")]
        max: Option<u64>,
        /// At most R replays per second.
        #[arg(long, value_name = "R")]
        rate: Option<f64>,
        /// Say what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Replay requests parked for their content too (invalid JSON, a bad callee...).
        #[arg(long)]
        include_rejected: bool,
        /// Leave a message parked once it was replayed this often.
        #[arg(long, value_name = "N", default_value_t = 3)]
        max_replays: u32,
        /// JSON instead of sentences.
        #[arg(long)]
        json: bool,
    },
    /// Delete matching messages for good; without --yes, only say how many it would.
    Purge {
        #[command(flatten)]
        filter: DeadFilter,
        /// Really delete them.
        #[arg(long)]
        yes: bool,
        /// JSON instead of sentences.
        #[arg(long)]
        json: bool,
    },
}

/// Which parked messages a `dead` command acts on; every filter given must match.
#[derive(clap::Args)]
struct DeadFilter {
    /// The reason code (`invalid_callee`, `poison_message`, `delivery_limit`, ...).
    #[arg(long)]
    reason: Option<String>,
    /// The request's instance_id.
    #[arg(long)]
    instance: Option<String>,
    /// Parked at or after this time (RFC 3339, e.g. 2026-12-07T03:00:00Z).
    #[arg(long, value_name = "TIME")]
    since: Option<jiff::Timestamp>,
    /// One request.
    #[arg(long, value_name = "ID")]
    request_id: Option<String>,
}

impl DeadFilter {
    fn into_filter(self) -> dead::Filter {
        dead::Filter {
            reason: self.reason,
            instance_id: self.instance,
            request_id: self.request_id,
            since: self.since,
        }
    }
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
        Command::Dnc { action, config } => {
            let settings = Settings::load(config.as_deref())?;
            telemetry::init(&settings.log);
            // The shared set is in Redis whatever store.backend says.
            if let Some(warning) = settings.public_hash_key() {
                tracing::warn!("{warning}");
            }
            let list = RedisDncSet::connect(&RedisDnc::from_settings(&settings)).await?;
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
        Command::Dead { action, config } => {
            let settings = Settings::load(config.as_deref())?;
            telemetry::init(&settings.log);
            dead_command(action, &settings).await
        }
        Command::CheckConfig { config } => check_config(config.as_deref()),
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
    for (name, set) in Credentials::presence_in_env() {
        let state = match (set, name == Credentials::SECURITY_TOKEN) {
            (true, _) => "set",
            (false, false) => "not set",
            (false, true) => "not set (optional: only STS credentials need it)",
        };
        report.push_str(&format!("# {name}: {state}\n"));
    }
    match dialex_worker::credentials::from_env() {
        Ok(provider) => report.push_str(&format!(
            "# `run` signs with credentials from the {} provider.\n",
            provider.name()
        )),
        Err(error) => report.push_str(&format!(
            "# warning: `run` will refuse to start: {error}.\n"
        )),
    }
    for warning in settings.warnings() {
        report.push_str(&format!("# warning: {warning}.\n"));
    }
    std::io::stdout()
        .lock()
        .write_all(report.as_bytes())
        .context("writing to stdout")
}

/// Runs one `dead` command: a progress bar on a terminal, the result on stdout, Ctrl-C stops
/// after the message in hand.
async fn dead_command(action: DeadAction, settings: &Settings) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    tokio::spawn(app::cancel_on_signal(stop.clone()));
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} read ({eta} left)")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut progress = |read: u64, counted: u64| {
        bar.set_length(counted);
        bar.set_position(read);
    };
    let amqp = &settings.amqp;
    let mut out = std::io::stdout().lock();
    match action {
        DeadAction::List {
            filter,
            limit,
            json,
        } => {
            let listing =
                commands::list(amqp, &filter.into_filter(), limit, &stop, &mut progress).await;
            bar.finish_and_clear();
            let listing = listing?;
            if json {
                serde_json::to_writer_pretty(&mut out, &listing)?;
                writeln!(out)?;
            } else {
                commands::print_listing(&listing, &mut out)?;
            }
        }
        DeadAction::Summary { filter, json } => {
            let summary =
                commands::summary(amqp, &filter.into_filter(), &stop, &mut progress).await;
            bar.finish_and_clear();
            let summary = summary?;
            if json {
                serde_json::to_writer_pretty(&mut out, &summary)?;
                writeln!(out)?;
            } else {
                commands::print_summary(&summary, &mut out)?;
            }
        }
        DeadAction::Replay {
            filter,
            max,
            rate,
            dry_run,
            include_rejected,
            max_replays,
            json,
        } => {
            let rules = dead::ReplayRules {
                include_rejected,
                max_replays,
                max,
            };
            let acted = commands::replay(
                amqp,
                &filter.into_filter(),
                &rules,
                rate,
                dry_run,
                &stop,
                &mut progress,
            )
            .await;
            bar.finish_and_clear();
            print_acted(acted?, "replayed", json, &mut out)?;
        }
        DeadAction::Purge { filter, yes, json } => {
            let acted =
                commands::purge(amqp, &filter.into_filter(), yes, &stop, &mut progress).await;
            bar.finish_and_clear();
            print_acted(acted?, "purged", json, &mut out)?;
        }
    }
    Ok(())
}

fn print_acted(
    acted: commands::Acted,
    verb: &str,
    json: bool,
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, &acted)?;
        writeln!(out)?;
    } else {
        commands::print_acted(&acted, verb, out)?;
    }
    Ok(())
}
