//! `[ccc]`: where the gateway is and how the worker talks to it, defined beside the code that
//! reads it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ErrorClass;

/// `[ccc]` as configured (`config/default.toml` documents every key).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CccSettings {
    pub endpoint: String,
    pub region_id: String,
    pub allow_insecure_http: bool,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub retry_budget_ms: u64,
    pub max_total_attempts: u32,
    pub requeue_delay_ms: u64,
    pub max_requeue_delay_ms: u64,
    pub replay_ambiguous: bool,
    /// Operator additions to the error-class table: code (or `Code.*`) to class.
    #[serde(default)]
    pub error_classes: BTreeMap<String, ErrorClass>,
}

impl CccSettings {
    /// The longest one hop's dial can take: every attempt may time out, an ambiguous one
    /// (which ends the dial) may be replayed once more, with the backoffs in between. A claim's
    /// lease must outlast it.
    pub fn longest_dial_ms(&self) -> u64 {
        let sends = u64::from(self.max_attempts) + u64::from(self.replay_ambiguous);
        sends
            .saturating_mul(self.request_timeout_ms)
            .saturating_add(
                u64::from(self.max_attempts.saturating_sub(1)).saturating_mul(self.max_backoff_ms),
            )
    }
    pub fn longest_dial(&self) -> Duration {
        Duration::from_millis(self.longest_dial_ms())
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    pub fn initial_backoff(&self) -> Duration {
        Duration::from_millis(self.initial_backoff_ms)
    }
    pub fn max_backoff(&self) -> Duration {
        Duration::from_millis(self.max_backoff_ms)
    }
    pub fn retry_budget(&self) -> Duration {
        Duration::from_millis(self.retry_budget_ms)
    }
    pub fn requeue_delay(&self) -> Duration {
        Duration::from_millis(self.requeue_delay_ms)
    }
    pub fn max_requeue_delay(&self) -> Duration {
        Duration::from_millis(self.max_requeue_delay_ms)
    }
}
