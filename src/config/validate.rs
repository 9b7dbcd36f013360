//! [`Settings::validate`]: every rule serde's types cannot express, all problems reported at
//! once.

use secrecy::ExposeSecret;

use super::{ConfigError, Settings, StoreBackend};
use crate::gates::limits::InstanceLimits as Caps;

/// The most metrics classes `limits.instances` may name.
const MAX_CLASSES: usize = 32;
/// The longest `store.replica_ack_timeout_ms`: a claim waits this long for its replicas on a
/// connection every request shares.
const MAX_REPLICA_ACK_TIMEOUT_MS: u64 = 2_000;

/// The caps of `[limits]` (`section` "limits") or of one `[limits.instances."<id>"]`, where
/// a cap left out is `[limits]`'s.
fn check_caps(problems: &mut Problems, section: &str, caps: &Caps) {
    let key = |name: &str| format!("{section}.{name}");
    if caps.max_in_flight == Some(0) {
        problems.invalid_at(key("max_in_flight"), "must be at least 1");
    }
    if caps
        .calls_per_second
        .is_some_and(|rate| !(rate.is_finite() && rate > 0.0))
    {
        problems.invalid_at(key("calls_per_second"), "must be a positive number");
    }
    if caps.burst == Some(0) {
        problems.invalid_at(key("burst"), "must be at least 1");
    }
    if caps
        .per_caller_calls_per_second
        .is_some_and(|rate| !(rate.is_finite() && rate >= 0.0))
    {
        problems.invalid_at(
            key("per_caller_calls_per_second"),
            "must be 0 (off) or a positive number",
        );
    }
    let class_ok = |class: &str| {
        (1..=32).contains(&class.len())
            && class
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    };
    if caps.class.as_deref().is_some_and(|class| !class_ok(class)) {
        problems.invalid_at(
            key("class"),
            "must be 1 to 32 characters of a-z, 0-9, `_` and `-`",
        );
    }
}

impl Settings {
    /// Every rule that serde's types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Problems::default();
        let amqp = &self.amqp;
        let nodes = amqp.nodes();
        let amqp_url = |url: &&str| {
            (url.starts_with("amqp://") || url.starts_with("amqps://"))
                && url.parse::<lapin::uri::AMQPUri>().is_ok()
        };
        if !nodes.iter().all(amqp_url) {
            problems.invalid(
                "amqp.url",
                "must be a URL starting with amqp:// or amqps://, or several separated by commas",
            );
        }
        let plain = nodes.iter().any(|url| !url.starts_with("amqps://"));
        if plain && !amqp.tls_ca_file.as_os_str().is_empty() {
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
        if store.min_replicas_acked > 0 && store.backend != StoreBackend::Redis {
            problems.invalid(
                "store.min_replicas_acked",
                "needs store.backend = \"redis\" (the embedded store has no replicas)",
            );
        }
        if !(1..=MAX_REPLICA_ACK_TIMEOUT_MS).contains(&store.replica_ack_timeout_ms) {
            problems.invalid(
                "store.replica_ack_timeout_ms",
                format!(
                    "must be 1 to {MAX_REPLICA_ACK_TIMEOUT_MS} (well within the 5 s a Redis answer may take)"
                ),
            );
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
            if !store.sentinels.is_empty() && url.starts_with("rediss://") {
                problems.invalid(
                    "store.sentinels",
                    "cannot be used with a rediss:// store.url yet (no TLS to sentinels)",
                );
            }
        } else if !store.sentinels.is_empty() {
            problems.invalid("store.sentinels", "needs store.backend = \"redis\"");
        }
        for sentinel in &store.sentinels {
            if super::host_port(sentinel).is_none() {
                problems.invalid("store.sentinels", format!("{sentinel:?} is not host:port"));
            }
        }
        if !store.sentinels.is_empty() && store.sentinel_service.is_empty() {
            problems.invalid(
                "store.sentinel_service",
                "must name the primary the sentinels monitor",
            );
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
        check_caps(
            &mut problems,
            "limits",
            &Caps {
                max_in_flight: Some(limits.max_in_flight),
                calls_per_second: Some(limits.calls_per_second),
                burst: Some(limits.burst),
                per_caller_calls_per_second: Some(limits.per_caller_calls_per_second),
                class: None,
            },
        );
        for (id, own) in &limits.instances {
            check_caps(&mut problems, &format!("limits.instances.{id}"), own);
        }
        let classes: std::collections::BTreeSet<_> = limits
            .instances
            .values()
            .filter_map(|own| own.class.as_deref())
            .collect();
        if classes.len() > MAX_CLASSES {
            problems.invalid(
                "limits.instances",
                format!(
                    "names {} classes; at most {MAX_CLASSES} (each is a series of every \
                     per-class metric)",
                    classes.len()
                ),
            );
        }
        if !(limits.throttle_factor > 0.0 && limits.throttle_factor <= 1.0) {
            problems.invalid("limits.throttle_factor", "must be in (0, 1]");
        }
        let outage = &self.outage;
        if outage.window_ms == 0 {
            problems.invalid("outage.window_ms", "must be positive");
        }
        if !(outage.failure_ratio > 0.0 && outage.failure_ratio <= 1.0) {
            problems.invalid("outage.failure_ratio", "must be in (0, 1]");
        }
        if outage.max_probe_interval_ms < 1000 {
            problems.invalid("outage.max_probe_interval_ms", "must be at least 1000");
        }
        let followup = &self.followup;
        if followup.polls_ms.is_empty() || followup.polls_ms.contains(&0) {
            problems.invalid("followup.polls_ms", "must list at least one positive delay");
        } else if !followup.polls_ms.is_sorted_by(|a, b| a < b) {
            problems.invalid("followup.polls_ms", "must be increasing");
        }
        if !(followup.queries_per_second.is_finite() && followup.queries_per_second > 0.0) {
            problems.invalid("followup.queries_per_second", "must be a positive number");
        }
        if followup.match_window_ms == 0 {
            problems.invalid("followup.match_window_ms", "must be positive");
        }
        if followup.max_query_failures == 0 {
            problems.invalid("followup.max_query_failures", "must be at least 1");
        }
        if followup.prefetch == 0 {
            problems.invalid("followup.prefetch", "must be at least 1");
        }
        if followup.enabled && amqp.names.followup_queue.is_empty() {
            problems.invalid(
                "amqp.names.followup_queue",
                "must be set with followup.enabled",
            );
        }
        if followup.enabled && amqp.names.result_routing_prefix.is_empty() {
            problems.invalid(
                "amqp.names.result_routing_prefix",
                "must be set with followup.enabled",
            );
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

    fn invalid_at(&mut self, key: String, reason: impl Into<String>) {
        self.0.push(ConfigError::InvalidAt {
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
