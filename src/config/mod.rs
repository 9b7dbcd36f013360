//! Typed settings: `config/default.toml`, an optional file on top, then `DIALEX_*` environment
//! variables; validated once at start-up, then passed down as plain values.
//!
//! The defaults are compiled in (the same file, embedded), so the binary works from any
//! directory and the file stays the single source of truth for them. [`validate`] holds the
//! rules serde's types cannot express (credentials are the `credentials` module's).
//!
//! `Settings` also serializes back to TOML with the file's key names (`dialex-worker
//! check-config`, [`render`]): the secrets in it serialize redacted, so no serialization of the
//! settings can leak them.

use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

pub(crate) mod render;
mod validate;

pub use crate::ccc::CccSettings;
pub use crate::gates::cooldown::CooldownSettings;
pub use crate::gates::hours::BusinessHoursSettings;
pub use crate::gates::limits::LimitsSettings;
pub use crate::outage::OutageSettings;

/// The defaults, also shipped as `config/default.toml`.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// `cooldown.hash_key` in `config/default.toml`: public, so fine for one machine and unfit for
/// hashes shared through Redis (see [`Settings::warnings`]).
pub const DEFAULT_HASH_KEY: &str = "dialex-default-cooldown-key";

/// What can go wrong loading settings; always names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration could not be read: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("configuration key `{key}`: {reason}")]
    InvalidAt { key: String, reason: String },
    #[error("configuration could not be written as TOML: {0}")]
    Render(#[from] toml::ser::Error),
    /// Several keys are wrong: all of them, so one run shows everything to fix.
    #[error("{} configuration problems:{}", .0.len(), list(.0))]
    Several(Vec<ConfigError>),
}

/// `problems`, one per line.
fn list(problems: &[ConfigError]) -> String {
    problems.iter().map(|p| format!("\n  - {p}")).collect()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub amqp: AmqpSettings,
    pub deferral: DeferralSettings,
    pub ccc: CccSettings,
    pub store: StoreSettings,
    pub cooldown: CooldownSettings,
    #[serde(serialize_with = "render::serialize_business_hours")]
    pub business_hours: BusinessHoursSettings,
    pub limits: LimitsSettings,
    pub outage: OutageSettings,
    pub followup: FollowupSettings,
    pub dnc: DncSettings,
    pub http: HttpSettings,
    pub shutdown: ShutdownSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Address of the /healthz, /readyz and /metrics endpoint.
    pub listen: std::net::SocketAddr,
}

/// How the worker stops on SIGTERM or SIGINT.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSettings {
    /// How long the requests in flight get to finish once a stop is requested; whatever is
    /// still unfinished then goes back to the queue. Kubernetes'
    /// `terminationGracePeriodSeconds` must be longer.
    pub drain_timeout_ms: u64,
}

impl ShutdownSettings {
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DncSettings {
    /// Empty: no file.
    pub file: std::path::PathBuf,
    pub reload_interval_ms: u64,
    pub shared: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    /// Broker URL, or the URLs of a cluster's nodes separated by commas (a TOML list is read
    /// as that too; see [`AmqpSettings::nodes`]); may carry a password, so it never prints.
    #[serde(
        serialize_with = "render::serialize_urls",
        deserialize_with = "deserialize_urls"
    )]
    pub url: SecretString,
    /// With `amqps://`: a PEM file of CA certificates trusted beside the system's; empty for
    /// the system's alone.
    pub tls_ca_file: std::path::PathBuf,
    pub prefetch: u16,
    pub delivery_limit: u32,
    pub publish_attempts: u32,
    pub confirm_timeout_ms: u64,
    /// Shown in the broker's connection list, followed by the role and the host name.
    pub connection_name: String,
    pub names: AmqpNames,
}

/// One URL or a list of them, kept as one string with the URLs separated by commas.
fn deserialize_urls<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<SecretString, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Urls {
        One(String),
        Many(Vec<String>),
    }
    // An untagged enum's error names no value, so a URL with its password never reaches it.
    Ok(SecretString::from(match Urls::deserialize(deserializer)? {
        Urls::One(url) => url,
        Urls::Many(urls) => urls.join(","),
    }))
}

/// `host:port` (`[v6]:port` too) as its parts; `None` when it is not that.
pub fn host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.trim().rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse().ok()?;
    (!host.is_empty() && port != 0).then(|| (host.to_owned(), port))
}

/// The URLs in `urls`, in order: split at each comma that starts another `amqp://` or
/// `amqps://` URL, so a comma inside one (in its password, say) stays where it is.
pub(crate) fn split_urls(urls: &str) -> Vec<&str> {
    let mut nodes = Vec::new();
    let mut start = 0;
    for (comma, _) in urls.match_indices(',') {
        let next = urls[comma + 1..].trim_start();
        if next.starts_with("amqp://") || next.starts_with("amqps://") {
            nodes.push(urls[start..comma].trim());
            start = comma + 1;
        }
    }
    nodes.push(urls[start..].trim());
    nodes
}

impl AmqpSettings {
    /// The broker nodes to connect to, in the order they are tried: `amqp.url`'s URLs.
    pub fn nodes(&self) -> Vec<&str> {
        split_urls(self.url.expose_secret())
    }
    pub fn confirm_timeout(&self) -> Duration {
        Duration::from_millis(self.confirm_timeout_ms)
    }
}

/// `[followup]`: the optional call results (see `config/default.toml` and
/// [`crate::followup`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowupSettings {
    pub enabled: bool,
    /// When to poll, in milliseconds after the dial; increasing.
    pub polls_ms: Vec<u64>,
    /// `ListCallDetailRecords` per second per instance, in this replica.
    pub queries_per_second: f64,
    pub clock_skew_ms: u64,
    pub match_window_ms: u64,
    pub fetch_release_reason: bool,
    pub prefetch: u16,
    pub max_query_failures: u32,
}

impl FollowupSettings {
    /// How long after the dial poll `index` (from 0) is due; `None` past the last.
    pub fn poll_after(&self, index: u32) -> Option<Duration> {
        let index = usize::try_from(index).ok()?;
        self.polls_ms
            .get(index)
            .map(|&ms| Duration::from_millis(ms))
    }

    /// How many polls a request gets.
    pub fn polls(&self) -> u32 {
        u32::try_from(self.polls_ms.len()).unwrap_or(u32::MAX)
    }
}

/// Exchange and queue names of the wire contract.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpNames {
    pub request_exchange: String,
    pub request_queue: String,
    pub request_routing_key: String,
    pub dead_exchange: String,
    pub dead_queue: String,
    pub outcome_exchange: String,
    pub outcome_routing_prefix: String,
    /// Empty means "no catch-all queue".
    pub outcome_catch_all_queue: String,
    /// Call-result events go out as `<result_routing_prefix>.<disposition>`.
    pub result_routing_prefix: String,
    /// Where follow-up jobs are consumed from.
    pub followup_queue: String,
}

/// Kept between the end of the longest dial and the end of a claim's lease, for the record
/// and the clocks of worker and store.
pub const LEASE_MARGIN_MS: u64 = 250;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeferralSettings {
    pub tiers_ms: Vec<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    Embedded,
    Redis,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    pub backend: StoreBackend,
    pub data_dir: std::path::PathBuf,
    /// May carry a password, so it never prints.
    #[serde(serialize_with = "render::serialize_url")]
    pub url: SecretString,
    /// With `rediss://`: a PEM file of CA certificates trusted instead of the system's; empty
    /// for the system's.
    pub tls_ca_file: std::path::PathBuf,
    pub key_prefix: String,
    pub lease_ms: u64,
    pub record_ttl_ms: u64,
    pub sweep_interval_ms: u64,
    /// Redis: how many replicas must confirm a claim or a result (`WAIT`) before the worker
    /// acts on it; 0 trusts the primary alone.
    pub min_replicas_acked: u32,
    pub replica_ack_timeout_ms: u64,
    /// Redis Sentinel: `host:port` of each sentinel. When set, the primary is the server the
    /// sentinels name for `sentinel_service`, followed through failovers; `url` then gives
    /// only the user, password and database. Empty: `url` names the primary.
    pub sentinels: Vec<String>,
    pub sentinel_service: String,
    /// The sentinels' own password (`requirepass` in their configuration); empty for none.
    #[serde(serialize_with = "render::serialize_secret")]
    pub sentinel_password: SecretString,
}

impl StoreSettings {
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }
    pub fn record_ttl(&self) -> Duration {
        Duration::from_millis(self.record_ttl_ms)
    }
    pub fn sweep_interval(&self) -> Duration {
        Duration::from_millis(self.sweep_interval_ms)
    }
    pub fn replica_ack_timeout(&self) -> Duration {
        Duration::from_millis(self.replica_ack_timeout_ms)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

impl Settings {
    /// Defaults, then `file`, then `DIALEX_*` variables from the process environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// As [`Settings::load`], with the environment given explicitly (tests use this rather
    /// than mutating the process environment).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        let overrides: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("DIALEX_"))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("DIALEX")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("deferral.tiers_ms")
                .with_list_parse_key("followup.polls_ms")
                .with_list_parse_key("store.sentinels")
                .with_list_parse_key("business_hours.closed_dates")
                .with_list_parse_key("business_hours.weekly.mon")
                .with_list_parse_key("business_hours.weekly.tue")
                .with_list_parse_key("business_hours.weekly.wed")
                .with_list_parse_key("business_hours.weekly.thu")
                .with_list_parse_key("business_hours.weekly.fri")
                .with_list_parse_key("business_hours.weekly.sat")
                .with_list_parse_key("business_hours.weekly.sun")
                .source(Some(overrides)),
        );
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// What is valid but almost certainly a mistake in production: `run` logs each of these at
    /// start-up and `check-config` prints them. (`dnc` always writes to Redis, whatever the
    /// store, so it asks [`Settings::public_hash_key`] itself.)
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        match self.store.backend {
            StoreBackend::Redis => warnings.extend(self.public_hash_key()),
            StoreBackend::Embedded => warnings.extend(self.public_hash_key_on_disk()),
        }
        warnings.extend(self.wait_cut_by_lease());
        warnings.extend(self.followup_window_wider_than_cooldown());
        warnings
    }

    /// A warning when the follow-up is on and two of the worker's own calls to one number may
    /// fall in one match window: the callee cooldown is what keeps them apart. Without it a
    /// poll may take the other call's record while its own is not written yet.
    pub fn followup_window_wider_than_cooldown(&self) -> Option<String> {
        let window = self
            .followup
            .match_window_ms
            .saturating_add(self.followup.clock_skew_ms);
        (self.followup.enabled && self.cooldown.window_ms < window).then(|| {
            format!(
                "cooldown.window_ms ({} ms) is shorter than followup.match_window_ms plus                  followup.clock_skew_ms ({window} ms): two calls to one number can then fall in                  one match window, and a call result may be matched to the other call's record",
                self.cooldown.window_ms
            )
        })
    }

    /// A warning when the claim's lease leaves less room to wait for a concurrency or pacing
    /// slot than `limits.max_wait_ms`: a request is dialed only if its dial can end within
    /// its lease, so the wait is cut to what the lease leaves after the longest dial.
    pub fn wait_cut_by_lease(&self) -> Option<String> {
        let room = self
            .store
            .lease_ms
            .saturating_sub(self.ccc.longest_dial_ms())
            .saturating_sub(LEASE_MARGIN_MS);
        (room < self.limits.max_wait_ms).then(|| {
            format!(
                "limits.max_wait_ms ({} ms) is cut to {room} ms: a request waits for a slot only \
                 as long as store.lease_ms ({} ms) leaves after the longest dial ({} ms); raise \
                 store.lease_ms to wait longer",
                self.limits.max_wait_ms,
                self.store.lease_ms,
                self.ccc.longest_dial_ms()
            )
        })
    }

    /// A warning when the embedded store would keep callee numbers as hashes under the public
    /// default key: whoever can read the store file could reverse them by trying every number.
    pub fn public_hash_key_on_disk(&self) -> Option<String> {
        (self.cooldown.hash_key.expose_secret() == DEFAULT_HASH_KEY).then(|| {
            "cooldown.hash_key is the public default, and the embedded store keeps callee \
             numbers (cooldowns, daily counts, request fingerprints) as hashes under it in \
             store.data_dir: anyone who can read that file can reverse them by trying every \
             number. Set DIALEX_COOLDOWN__HASH_KEY to a secret"
                .to_owned()
        })
    }

    /// A warning when callee numbers would be hashed under the public default key, for
    /// whatever shares its hashes through Redis (the Redis store, the `dnc` command).
    pub fn public_hash_key(&self) -> Option<String> {
        (self.cooldown.hash_key.expose_secret() == DEFAULT_HASH_KEY).then(|| {
            "cooldown.hash_key is the public default, and callee numbers are shared through \
             Redis as hashes under it: anyone who can read Redis can reverse them by trying \
             every number, and a replica or `dnc` command that has the real key hashes \
             differently, so cooldowns and do-not-call entries would not match between them. \
             Set DIALEX_COOLDOWN__HASH_KEY to the same secret for every replica and for `dnc`"
                .to_owned()
        })
    }

    /// The settings as TOML, with the key names of `config/default.toml` and the secrets
    /// redacted: URLs keep user, host and path but show the password as `***` (the whole URL
    /// is `***` if it does not parse), and `cooldown.hash_key` is `***` (or `""` if empty).
    ///
    /// The text loads back as a `--config` file to the same settings, except that the
    /// secrets are then literally the redacted strings.
    pub fn to_redacted_toml(&self) -> Result<String, ConfigError> {
        Ok(toml::to_string(self)?)
    }
}

#[cfg(test)]
mod tests;
