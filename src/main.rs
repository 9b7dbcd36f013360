//! The `dialex-worker` command line: `run` (the worker), `dnc` (the shared do-not-call set)
//! and `check-config` (print the effective configuration). The simulator, the demo and the
//! benchmark are the devkit's (`devkit/`), never shipped.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use dialex_worker::config::Settings;
use dialex_worker::credentials::Credentials;
use dialex_worker::gates::dnc::SharedList as _;
use dialex_worker::phone::PhoneNumber;
use dialex_worker::store::redis::dnc::{RedisDnc, RedisDncSet};
use dialex_worker::{app, telemetry};

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
