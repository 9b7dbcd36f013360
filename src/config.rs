//! Typed settings: `config/default.toml`, an optional file on top, then `DIALEX_*` environment
//! variables; validated once at start-up, then passed down as plain values.
//!
//! The defaults are compiled in (the same file, embedded), so the binary works from any
//! directory and the file stays the single source of truth for them. Credentials are read here
//! too, from the standard Alibaba Cloud variables, and held in secret types that never print.
//!
//! `Settings` also serializes back to TOML with the file's key names (`dialex-worker
//! check-config`): the secrets in it serialize redacted, so no serialization of the settings
//! can leak them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

use crate::ccc::ErrorClass;
pub use crate::gates::cooldown::CooldownSettings;
pub use crate::gates::hours::BusinessHoursSettings;
use crate::gates::hours::CalendarSettings;
pub use crate::gates::limits::LimitsSettings;

/// The defaults, also shipped as `config/default.toml`.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

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
    #[error("environment variable {0} is not set")]
    MissingEnv(&'static str),
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

/// What [`Settings::validate`] found wrong, in the order it checked.
#[derive(Default)]
struct Problems(Vec<ConfigError>);

impl Problems {
    fn invalid(&mut self, key: &'static str, reason: impl Into<String>) {
        self.0.push(ConfigError::Invalid {
            key,
            reason: reason.into(),
        });
    }

    /// Nothing, the one problem, or all of them.
    fn into_result(mut self) -> Result<(), ConfigError> {
        match self.0.len() {
            0 => Ok(()),
            1 => Err(self.0.remove(0)),
            _ => Err(ConfigError::Several(self.0)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub amqp: AmqpSettings,
    pub deferral: DeferralSettings,
    pub ccc: CccSettings,
    pub store: StoreSettings,
    pub cooldown: CooldownSettings,
    #[serde(serialize_with = "serialize_business_hours")]
    pub business_hours: BusinessHoursSettings,
    pub limits: LimitsSettings,
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
    /// Broker URL; may carry a password, so it never prints.
    #[serde(serialize_with = "serialize_url")]
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

impl AmqpSettings {
    pub fn confirm_timeout(&self) -> Duration {
        Duration::from_millis(self.confirm_timeout_ms)
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
}

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
    #[serde(default, serialize_with = "serialize_error_classes")]
    pub error_classes: BTreeMap<String, ErrorClass>,
}

/// Kept between the end of the longest dial and the end of a claim's lease, for the record
/// and the clocks of worker and store.
pub const LEASE_MARGIN_MS: u64 = 250;

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
    #[serde(serialize_with = "serialize_url")]
    pub url: SecretString,
    /// With `rediss://`: a PEM file of CA certificates trusted instead of the system's; empty
    /// for the system's.
    pub tls_ca_file: std::path::PathBuf,
    pub key_prefix: String,
    pub lease_ms: u64,
    pub record_ttl_ms: u64,
    pub sweep_interval_ms: u64,
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
        warnings
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

    /// Every rule that serde's types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Problems::default();
        let amqp = &self.amqp;
        let url = amqp.url.expose_secret();
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            problems.invalid("amqp.url", "must start with amqp:// or amqps://");
        }
        if !url.starts_with("amqps://") && !amqp.tls_ca_file.as_os_str().is_empty() {
            problems.invalid(
                "amqp.tls_ca_file",
                "is set but amqp.url is not amqps://: the connection would not use TLS",
            );
        }
        if amqp.prefetch == 0 {
            problems.invalid("amqp.prefetch", "must be at least 1");
        }
        if amqp.delivery_limit == 0 {
            problems.invalid("amqp.delivery_limit", "must be at least 1");
        }
        if amqp.publish_attempts == 0 {
            problems.invalid("amqp.publish_attempts", "must be at least 1");
        }
        if amqp.confirm_timeout_ms == 0 {
            problems.invalid("amqp.confirm_timeout_ms", "must be positive");
        }
        let names = &amqp.names;
        for (key, value) in [
            ("amqp.names.request_exchange", &names.request_exchange),
            ("amqp.names.request_queue", &names.request_queue),
            ("amqp.names.request_routing_key", &names.request_routing_key),
            ("amqp.names.dead_exchange", &names.dead_exchange),
            ("amqp.names.dead_queue", &names.dead_queue),
            ("amqp.names.outcome_exchange", &names.outcome_exchange),
            (
                "amqp.names.outcome_routing_prefix",
                &names.outcome_routing_prefix,
            ),
        ] {
            if value.is_empty() || value.len() > 255 {
                problems.invalid(key, "must be 1 to 255 characters");
            }
        }

        let tiers = &self.deferral.tiers_ms;
        if tiers.is_empty() || tiers.contains(&0) {
            problems.invalid("deferral.tiers_ms", "needs at least one positive delay");
        }
        if tiers.windows(2).any(|w| w[0] >= w[1]) {
            problems.invalid("deferral.tiers_ms", "must be strictly increasing");
        }
        if tiers.iter().any(|&t| t > u64::from(u32::MAX)) {
            problems.invalid(
                "deferral.tiers_ms",
                "a delay must fit a queue TTL (at most 49 days)",
            );
        }

        let ccc = &self.ccc;
        if let Err(reason) = check_endpoint(&ccc.endpoint, ccc.allow_insecure_http) {
            problems.invalid("ccc.endpoint", reason);
        }
        if ccc.region_id.is_empty() {
            problems.invalid("ccc.region_id", "must not be empty");
        }
        if ccc.connect_timeout_ms == 0 {
            problems.invalid("ccc.connect_timeout_ms", "must be positive");
        }
        if ccc.request_timeout_ms < ccc.connect_timeout_ms {
            problems.invalid(
                "ccc.request_timeout_ms",
                "must be at least ccc.connect_timeout_ms",
            );
        }
        if ccc.max_attempts == 0 {
            problems.invalid("ccc.max_attempts", "must be at least 1");
        }
        if ccc.max_backoff_ms < ccc.initial_backoff_ms {
            problems.invalid(
                "ccc.max_backoff_ms",
                "must be at least ccc.initial_backoff_ms",
            );
        }
        if ccc.max_total_attempts < ccc.max_attempts {
            problems.invalid(
                "ccc.max_total_attempts",
                "must be at least ccc.max_attempts",
            );
        }
        if ccc.requeue_delay_ms == 0 {
            problems.invalid("ccc.requeue_delay_ms", "must be positive");
        }
        if ccc.max_requeue_delay_ms < ccc.requeue_delay_ms {
            problems.invalid(
                "ccc.max_requeue_delay_ms",
                "must be at least ccc.requeue_delay_ms",
            );
        }
        let store = &self.store;
        let longest_dial = ccc.longest_dial_ms();
        if store.lease_ms <= longest_dial {
            problems.invalid(
                "store.lease_ms",
                format!(
                    "must exceed the longest dial ({longest_dial} ms: ccc.max_attempts x ccc.request_timeout_ms plus backoffs)"
                ),
            );
        }
        if store.record_ttl_ms <= store.lease_ms {
            problems.invalid("store.record_ttl_ms", "must exceed store.lease_ms");
        }
        if store.sweep_interval_ms == 0 {
            problems.invalid("store.sweep_interval_ms", "must be positive");
        }
        if store.key_prefix.is_empty() || store.key_prefix.contains(char::is_whitespace) {
            problems.invalid("store.key_prefix", "must be non-empty without spaces");
        }
        if store.backend == StoreBackend::Redis {
            let url = store.url.expose_secret();
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                problems.invalid("store.url", "must start with redis:// or rediss:// (TLS)");
            }
            if !url.starts_with("rediss://") && !store.tls_ca_file.as_os_str().is_empty() {
                problems.invalid(
                    "store.tls_ca_file",
                    "is set but store.url is not rediss://: the connection would not use TLS",
                );
            }
        }
        if self.cooldown.hash_key.expose_secret().is_empty() {
            problems.invalid("cooldown.hash_key", "must not be empty");
        }
        if let Err(e) = crate::gates::hours::BusinessHours::new(&self.business_hours) {
            problems.0.push(ConfigError::InvalidAt {
                key: e.key,
                reason: e.reason,
            });
        }
        let limits = &self.limits;
        if limits.max_in_flight == 0 {
            problems.invalid("limits.max_in_flight", "must be at least 1");
        }
        if !(limits.calls_per_second.is_finite() && limits.calls_per_second > 0.0) {
            problems.invalid("limits.calls_per_second", "must be a positive number");
        }
        if limits.burst == 0 {
            problems.invalid("limits.burst", "must be at least 1");
        }
        if !(limits.per_caller_calls_per_second.is_finite()
            && limits.per_caller_calls_per_second >= 0.0)
        {
            problems.invalid(
                "limits.per_caller_calls_per_second",
                "must be 0 (off) or a positive number",
            );
        }
        if !(limits.throttle_factor > 0.0 && limits.throttle_factor <= 1.0) {
            problems.invalid("limits.throttle_factor", "must be in (0, 1]");
        }
        if self.dnc.reload_interval_ms == 0 {
            problems.invalid("dnc.reload_interval_ms", "must be positive");
        }
        if self.dnc.shared && self.store.backend != StoreBackend::Redis {
            problems.invalid("dnc.shared", "needs store.backend = \"redis\"");
        }
        if self.shutdown.drain_timeout_ms == 0 {
            problems.invalid("shutdown.drain_timeout_ms", "must be positive");
        }
        if self.log.level.trim().is_empty() {
            problems.invalid("log.level", "must not be empty");
        }
        problems.into_result()
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

/// What a secret prints as.
const REDACTED: &str = "***";

/// `url` with its password replaced by [`REDACTED`], so operators can still check the user,
/// host and vhost; all of it redacted if it does not parse as a URL (it might be a password
/// pasted in the wrong place).
fn redacted_url(url: &SecretString) -> String {
    let Ok(mut parsed) = url::Url::parse(url.expose_secret()) else {
        return REDACTED.to_owned();
    };
    if parsed.password().is_some() && parsed.set_password(Some(REDACTED)).is_err() {
        return REDACTED.to_owned();
    }
    parsed.into()
}

fn serialize_url<S: Serializer>(url: &SecretString, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&redacted_url(url))
}

fn serialize_error_classes<S: Serializer>(
    classes: &BTreeMap<String, ErrorClass>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(classes.iter().map(|(code, class)| (code, class.as_str())))
}

/// One calendar in its configuration shape; plain lists before tables, as TOML needs.
#[derive(Serialize)]
struct CalendarView<'a> {
    timezone: &'a str,
    closed_dates: &'a [String],
    #[serde(serialize_with = "serialize_weekly")]
    weekly: &'a BTreeMap<String, Vec<String>>,
    open_dates: &'a BTreeMap<String, Vec<String>>,
}

impl<'a> CalendarView<'a> {
    fn new(calendar: &'a CalendarSettings) -> Self {
        // Destructured, so a new calendar key fails to compile here until it is printed too.
        let CalendarSettings {
            timezone,
            weekly,
            closed_dates,
            open_dates,
        } = calendar;
        CalendarView {
            timezone,
            closed_dates,
            weekly,
            open_dates,
        }
    }
}

/// Weekdays in calendar order (Monday first), as in `config/default.toml`, rather than
/// alphabetically; any other key after them.
fn serialize_weekly<S: Serializer>(
    weekly: &&BTreeMap<String, Vec<String>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    const ORDER: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let rank = |day: &str| ORDER.iter().position(|d| *d == day).unwrap_or(ORDER.len());
    let mut days: Vec<_> = weekly.iter().collect();
    days.sort_by_key(|(day, _)| rank(day));
    serializer.collect_map(days)
}

/// `[business_hours]` as written in the file: the default calendar's keys side by side with
/// `instances` (the in-memory shape nests them under `default`).
#[derive(Serialize)]
struct BusinessHoursView<'a> {
    #[serde(flatten)]
    default: CalendarView<'a>,
    instances: BTreeMap<&'a str, CalendarView<'a>>,
}

fn serialize_business_hours<S: Serializer>(
    hours: &BusinessHoursSettings,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let BusinessHoursSettings { default, instances } = hours;
    BusinessHoursView {
        default: CalendarView::new(default),
        instances: instances
            .iter()
            .map(|(id, calendar)| (id.as_str(), CalendarView::new(calendar)))
            .collect(),
    }
    .serialize(serializer)
}

/// HTTPS always; plain HTTP only to a loopback host (the simulator) or when explicitly allowed.
fn check_endpoint(endpoint: &str, allow_insecure_http: bool) -> Result<(), String> {
    let url = reqwest::Url::parse(endpoint).map_err(|e| format!("not a URL: {e}"))?;
    if url.path() != "/" || url.query().is_some() {
        return Err("must be a bare origin such as https://ccc.cn-shanghai.aliyuncs.com".into());
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_insecure_http => Ok(()),
        "http" => {
            let loopback = match url.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(d)) => d == "localhost",
                None => false,
            };
            if loopback {
                Ok(())
            } else {
                Err("plain http:// is only allowed to a loopback address; use https:// or set ccc.allow_insecure_http".into())
            }
        }
        other => Err(format!("unsupported scheme {other}")),
    }
}

/// Alibaba Cloud credentials from the standard environment variables.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub access_key_secret: SecretString,
    /// STS token, sent as `SecurityToken` when present.
    pub security_token: Option<SecretString>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret", &"[redacted]")
            .field(
                "security_token",
                &self.security_token.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

impl Credentials {
    pub const ACCESS_KEY_ID: &'static str = "ALIBABA_CLOUD_ACCESS_KEY_ID";
    pub const ACCESS_KEY_SECRET: &'static str = "ALIBABA_CLOUD_ACCESS_KEY_SECRET";
    pub const SECURITY_TOKEN: &'static str = "ALIBABA_CLOUD_SECURITY_TOKEN";

    pub fn new(access_key_id: impl Into<String>, access_key_secret: impl Into<String>) -> Self {
        Credentials {
            access_key_id: access_key_id.into(),
            access_key_secret: SecretString::from(access_key_secret.into()),
            security_token: None,
        }
    }

    /// Reads the three standard variables; the token is optional.
    pub fn from_env() -> Result<Credentials, ConfigError> {
        let var = Self::var;
        let access_key_id =
            var(Self::ACCESS_KEY_ID).ok_or(ConfigError::MissingEnv(Self::ACCESS_KEY_ID))?;
        let access_key_secret =
            var(Self::ACCESS_KEY_SECRET).ok_or(ConfigError::MissingEnv(Self::ACCESS_KEY_SECRET))?;
        Ok(Credentials {
            access_key_id,
            access_key_secret: SecretString::from(access_key_secret),
            security_token: var(Self::SECURITY_TOKEN).map(SecretString::from),
        })
    }

    /// Which of the three variables [`Credentials::from_env`] would find, without their
    /// values: for reports.
    pub fn presence_in_env() -> [(&'static str, bool); 3] {
        [
            Self::ACCESS_KEY_ID,
            Self::ACCESS_KEY_SECRET,
            Self::SECURITY_TOKEN,
        ]
        .map(|name| (name, Self::var(name).is_some()))
    }

    /// An empty variable counts as unset.
    fn var(name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::load_from(
            None,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_load_and_validate() {
        let s = load(&[]).unwrap();
        assert_eq!(s.amqp.prefetch, 64);
        assert_eq!(s.amqp.names.request_queue, "dial.requests");
        assert_eq!(s.ccc.endpoint, "https://ccc.cn-shanghai.aliyuncs.com");
        assert_eq!(s.ccc.region_id, "cn-shanghai");
        assert_eq!(s.log.format, LogFormat::Pretty);
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let s = load(&[
            ("DIALEX_AMQP__PREFETCH", "7"),
            ("DIALEX_AMQP__NAMES__REQUEST_QUEUE", "q"),
            ("DIALEX_CCC__ENDPOINT", "http://127.0.0.1:9999"),
            ("OTHER_AMQP__PREFETCH", "9"),
            ("DIALEX_DEFERRAL__TIERS_MS", "1000,60000"),
            (
                "DIALEX_BUSINESS_HOURS__WEEKLY__SAT",
                "08:00-12:00,13:00-17:00",
            ),
        ])
        .unwrap();
        assert_eq!(
            s.business_hours.default.weekly["sat"],
            ["08:00-12:00", "13:00-17:00"]
        );
        assert_eq!(s.deferral.tiers_ms, [1000, 60000]);
        assert_eq!(s.amqp.prefetch, 7);
        assert_eq!(s.amqp.names.request_queue, "q");
        assert_eq!(s.ccc.endpoint, "http://127.0.0.1:9999");
    }

    #[test]
    fn a_file_layers_over_the_defaults() {
        let dir = std::env::temp_dir().join(format!("dialex-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "[ccc]\nregion_id = \"cn-beijing\"\n").unwrap();
        let s = Settings::load_from(Some(&path), Vec::new()).unwrap();
        assert_eq!(s.ccc.region_id, "cn-beijing");
        assert_eq!(s.amqp.prefetch, 64);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("DIALEX_AMQP__PREFETCH", "0")], "amqp.prefetch"),
            (&[("DIALEX_AMQP__URL", "http://x")], "amqp.url"),
            (
                &[("DIALEX_CCC__ENDPOINT", "http://ccc.example.com")],
                "ccc.endpoint",
            ),
            (&[("DIALEX_CCC__ENDPOINT", "ftp://x")], "ccc.endpoint"),
            (&[("DIALEX_CCC__MAX_ATTEMPTS", "0")], "ccc.max_attempts"),
            (
                &[("DIALEX_CCC__REQUEST_TIMEOUT_MS", "1")],
                "ccc.request_timeout_ms",
            ),
            (
                &[("DIALEX_AMQP__NAMES__DEAD_QUEUE", "")],
                "amqp.names.dead_queue",
            ),
            (
                &[("DIALEX_SHUTDOWN__DRAIN_TIMEOUT_MS", "0")],
                "shutdown.drain_timeout_ms",
            ),
        ];
        for (env, key) in cases {
            let err = load(env).unwrap_err().to_string();
            assert!(err.contains(key), "{env:?}: {err}");
        }
        // Type errors from the config crate name the key as well.
        let err = load(&[("DIALEX_AMQP__PREFETCH", "lots")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("prefetch"), "{err}");
    }

    #[test]
    fn error_classes_extend_from_a_file() {
        let dir = std::env::temp_dir().join(format!("dialex-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "[ccc.error_classes]\n\"Busy.*\" = \"retryable\"\n\"Forbidden.Instance\" = \"permanent\"\n",
        )
        .unwrap();
        let s = Settings::load_from(Some(&path), Vec::new()).unwrap();
        assert_eq!(
            s.ccc.error_classes.get("Busy.*"),
            Some(&crate::ccc::ErrorClass::Retryable)
        );
        std::fs::write(&path, "[ccc.error_classes]\n\"X\" = \"maybe\"\n").unwrap();
        assert!(Settings::load_from(Some(&path), Vec::new()).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn insecure_http_needs_the_switch() {
        let s = load(&[
            ("DIALEX_CCC__ENDPOINT", "http://ccc.internal"),
            ("DIALEX_CCC__ALLOW_INSECURE_HTTP", "true"),
        ]);
        assert!(s.is_ok());
    }

    #[test]
    fn drain_timeout_defaults_to_25_seconds_and_must_be_positive() {
        let s = load(&[]).unwrap();
        assert_eq!(s.shutdown.drain_timeout(), Duration::from_secs(25));
        let s = load(&[("DIALEX_SHUTDOWN__DRAIN_TIMEOUT_MS", "500")]).unwrap();
        assert_eq!(s.shutdown.drain_timeout(), Duration::from_millis(500));
        let err = load(&[("DIALEX_SHUTDOWN__DRAIN_TIMEOUT_MS", "0")]).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    key: "shutdown.drain_timeout_ms",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn unknown_shutdown_keys_are_rejected() {
        let dir = std::env::temp_dir().join(format!("dialex-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "[shutdown]\ndrain_timeout = 5000\n").unwrap();
        let err = Settings::load_from(Some(&path), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("drain_timeout"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut s = Settings::load_from(None, Vec::new()).unwrap();
        s.amqp.prefetch = 0;
        s.limits.burst = 0;
        s.log.level = " ".into();
        let error = s.validate().expect_err("three problems").to_string();
        assert!(error.starts_with("3 configuration problems:"), "{error}");
        for key in ["amqp.prefetch", "limits.burst", "log.level"] {
            assert!(
                error.contains(&format!("\n  - configuration key `{key}`")),
                "{error}"
            );
        }
        // One problem reads as before.
        s.amqp.prefetch = 64;
        s.limits.burst = 1;
        let error = s.validate().expect_err("one problem").to_string();
        assert_eq!(error, "configuration key `log.level`: must not be empty");
    }

    #[test]
    fn a_ca_file_needs_a_tls_url() {
        let mut s = Settings::load_from(None, Vec::new()).unwrap();
        s.amqp.tls_ca_file = "ca.pem".into();
        let error = s
            .validate()
            .expect_err("amqp:// with a CA file")
            .to_string();
        assert!(error.contains("amqp.tls_ca_file"), "{error}");
        s.amqp.url = SecretString::from("amqps://u:p@broker:5671/%2f");
        s.validate().expect("amqps:// with a CA file");

        s.store.backend = StoreBackend::Redis;
        s.store.tls_ca_file = "ca.pem".into();
        let error = s
            .validate()
            .expect_err("redis:// with a CA file")
            .to_string();
        assert!(error.contains("store.tls_ca_file"), "{error}");
        s.store.url = SecretString::from("rediss://:p@redis:6380/0");
        s.validate().expect("rediss:// with a CA file");
        s.store.url = SecretString::from("http://redis:6379/0");
        let error = s.validate().expect_err("not a Redis URL").to_string();
        assert!(error.contains("store.url"), "{error}");
    }

    #[test]
    fn urls_are_redacted_to_user_host_and_path() {
        let cases = [
            (
                "amqp://alice:s3cret@rabbit:5672/%2f",
                "amqp://alice:***@rabbit:5672/%2f",
            ),
            ("redis://:pw@redis:6379/0", "redis://:***@redis:6379/0"),
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            ("amqps://bob@rabbit/vh", "amqps://bob@rabbit/vh"),
            ("s3cret", "***"),
        ];
        for (url, shown) in cases {
            assert_eq!(redacted_url(&SecretString::from(url)), shown);
        }
    }

    #[test]
    fn redacted_toml_loads_back_to_the_same_settings() {
        let dir = std::env::temp_dir().join(format!("dialex-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("in.toml");
        std::fs::write(
            &file,
            r#"
[ccc.error_classes]
"Busy.*" = "retryable"

[business_hours]
closed_dates = ["2026-10-01"]
weekly = { sat = [] }
open_dates = { "2026-10-10" = ["09:00-18:00"] }

[business_hours.instances."inst-1"]
timezone = "Europe/Berlin"
weekly = { mon = ["08:00-12:00", "13:00-17:00"] }
"#,
        )
        .unwrap();
        let original = Settings::load_from(
            Some(&file),
            [
                ("DIALEX_AMQP__URL", "amqp://alice:s3cret-pw@rabbit:5672/%2f"),
                ("DIALEX_STORE__URL", "redis://:r3dis-pw@redis:6379/0"),
                ("DIALEX_COOLDOWN__HASH_KEY", "hash-key-value"),
                ("DIALEX_SHUTDOWN__DRAIN_TIMEOUT_MS", "12345"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        )
        .unwrap();
        let printed = original.to_redacted_toml().unwrap();
        for secret in ["s3cret-pw", "r3dis-pw", "hash-key-value"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        let out = dir.join("out.toml");
        std::fs::write(&out, &printed).unwrap();
        let reloaded = Settings::load_from(Some(&out), Vec::new()).unwrap();
        assert_eq!(reloaded.to_redacted_toml().unwrap(), printed);
        assert_eq!(reloaded.shutdown.drain_timeout_ms, 12345);
        assert_eq!(
            reloaded.amqp.url.expose_secret(),
            "amqp://alice:***@rabbit:5672/%2f"
        );
        assert_eq!(
            reloaded.business_hours.default.weekly["sat"],
            Vec::<String>::new()
        );
        assert_eq!(
            reloaded.business_hours.instances["inst-1"].weekly["mon"],
            ["08:00-12:00", "13:00-17:00"]
        );
        assert_eq!(
            reloaded.ccc.error_classes.get("Busy.*"),
            Some(&ErrorClass::Retryable)
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_public_hash_key_is_warned_about_with_either_store() {
        let defaults = Settings::load_from(None, Vec::new()).unwrap();
        assert_eq!(defaults.cooldown.hash_key.expose_secret(), DEFAULT_HASH_KEY);
        let warnings = defaults.warnings();
        assert_eq!(warnings.len(), 1, "embedded store: the file on disk");
        assert!(warnings[0].contains("store.data_dir"));
        let keyed = Settings::load_from(
            None,
            vec![(
                "DIALEX_COOLDOWN__HASH_KEY".to_owned(),
                "a-real-secret".to_owned(),
            )],
        )
        .unwrap();
        assert!(keyed.warnings().is_empty());

        let redis = Settings::load_from(
            None,
            vec![("DIALEX_STORE__BACKEND".to_owned(), "redis".to_owned())],
        )
        .unwrap();
        let warnings = redis.warnings();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("DIALEX_COOLDOWN__HASH_KEY"));

        let keyed = Settings::load_from(
            None,
            vec![
                ("DIALEX_STORE__BACKEND".to_owned(), "redis".to_owned()),
                (
                    "DIALEX_COOLDOWN__HASH_KEY".to_owned(),
                    "a-real-secret".to_owned(),
                ),
            ],
        )
        .unwrap();
        assert!(keyed.warnings().is_empty());
    }

    #[test]
    fn an_empty_hash_key_prints_empty() {
        let mut s = load(&[]).unwrap();
        s.cooldown.hash_key = SecretString::from("");
        assert!(s.to_redacted_toml().unwrap().contains("hash_key = \"\"\n"));
    }

    #[test]
    fn secrets_never_print() {
        let s = load(&[("DIALEX_AMQP__URL", "amqp://u:hunter2@h/%2f")]).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        let c = Credentials::new("id", "very-secret");
        assert!(!format!("{c:?}").contains("very-secret"));
    }
}
