//! Logging set-up: one JSON object per line for log pipelines (`log.format = "json"`), one
//! readable line per event for people (`"pretty"`), always on stderr; `RUST_LOG` overrides
//! `log.level`.
//!
//! In JSON, every event logged while a request is handled carries the request's span: the
//! innermost span as `span` and every enclosing span as `spans`, so a span nested inside the
//! request later cannot hide its `request_id`, `instance_id` and masked `callee`. Nothing here
//! masks anything: phone numbers and secrets are kept out of logs by their types
//! (`PhoneNumber`, `SecretString`), which is why span fields use their `Display` form.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Used when neither `RUST_LOG` nor `log.level` is a valid filter.
const FALLBACK_LEVEL: &str = "info";

/// Installs the global subscriber. Safe to call more than once: only the first call installs
/// one, later calls do nothing (the tests start many workers in one process).
pub fn init(settings: &LogSettings) {
    let rust_log = std::env::var(EnvFilter::DEFAULT_ENV).ok();
    let (filter, problems) = filter(rust_log.as_deref(), &settings.level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let installed = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    if installed.is_ok() {
        for problem in problems {
            tracing::warn!("{problem}");
        }
    }
}

/// The filter from `RUST_LOG` when it is set and valid, else from `level`, else
/// [`FALLBACK_LEVEL`]; with a note for each source passed over, to log once logging works
/// (the filter parser would otherwise print them to stderr, breaking one-JSON-per-line).
fn filter(rust_log: Option<&str>, level: &str) -> (EnvFilter, Vec<String>) {
    let mut problems = Vec::new();
    let sources = [
        (
            EnvFilter::DEFAULT_ENV,
            rust_log.filter(|v| !v.trim().is_empty()),
        ),
        ("log.level", Some(level)),
    ];
    for (name, directives) in sources {
        let Some(directives) = directives else {
            continue;
        };
        match EnvFilter::try_new(directives) {
            Ok(filter) => return (filter, problems),
            Err(error) => problems.push(format!("{name} is not a valid log filter ({error})")),
        }
    }
    problems.push(format!("logging at {FALLBACK_LEVEL}"));
    (EnvFilter::new(FALLBACK_LEVEL), problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chosen(rust_log: Option<&str>, level: &str) -> (String, usize) {
        let (filter, problems) = filter(rust_log, level);
        (filter.to_string(), problems.len())
    }

    #[test]
    fn rust_log_overrides_the_configured_level() {
        assert_eq!(
            chosen(Some("dialex_worker=debug"), "warn"),
            ("dialex_worker=debug".to_owned(), 0)
        );
    }

    #[test]
    fn the_configured_level_applies_when_rust_log_is_unset_or_empty() {
        assert_eq!(chosen(None, "warn"), ("warn".to_owned(), 0));
        assert_eq!(chosen(Some(""), "warn"), ("warn".to_owned(), 0));
        assert_eq!(chosen(Some("  "), "info,lapin=warn").0, "lapin=warn,info");
    }

    #[test]
    fn invalid_filters_fall_back_and_say_so() {
        assert_eq!(chosen(Some("=bogus=="), "warn"), ("warn".to_owned(), 1));
        assert_eq!(chosen(None, "loud[").0, FALLBACK_LEVEL);
        assert_eq!(chosen(Some("x=[="), "loud[").1, 3);
    }
}
