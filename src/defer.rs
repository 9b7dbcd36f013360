//! Deferral: how a request that may not be handled yet leaves the process and comes back.
//!
//! There is one wait queue per delay ("tier"), each with a queue-level TTL and dead-lettering
//! back to the request exchange, so a request parked there returns by itself when its tier's
//! delay has passed and is evaluated again. One TTL per queue means messages expire in order
//! (RabbitMQ only expires messages at the head of a queue). Requeueing with `nack` is never
//! used to mean "not now": that would spin the message through the worker at full speed.

use std::time::Duration;

use crate::config::{AmqpNames, DeferralSettings};

/// One wait queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub delay: Duration,
    pub queue: String,
}

/// The configured tiers, shortest first.
#[derive(Debug, Clone)]
pub struct Tiers(Vec<Tier>);

impl Tiers {
    pub fn new(settings: &DeferralSettings, names: &AmqpNames) -> Self {
        Tiers(
            settings
                .tiers_ms
                .iter()
                .map(|&ms| Tier {
                    delay: Duration::from_millis(ms),
                    queue: format!("{}.wait.{}", names.request_queue, label(ms)),
                })
                .collect(),
        )
    }

    pub fn all(&self) -> &[Tier] {
        &self.0
    }

    /// The largest tier not above `delay`; the shortest tier for shorter delays.
    pub fn for_delay(&self, delay: Duration) -> &Tier {
        let shortest = &self.0[0];
        self.0
            .iter()
            .rev()
            .find(|tier| tier.delay <= delay)
            .unwrap_or(shortest)
    }
}

/// `5000` → `5s`, `300000` → `5m`, `7200000` → `2h`, `1500` → `1500ms`.
fn label(ms: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(3_600_000, "h"), (60_000, "m"), (1_000, "s"), (1, "ms")];
    UNITS
        .iter()
        .find(|(unit, _)| ms.is_multiple_of(*unit))
        .map_or_else(
            || format!("{ms}ms"),
            |(unit, suffix)| format!("{}{suffix}", ms / unit),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn tiers() -> Tiers {
        let s = Settings::load_from(None, Vec::new()).unwrap();
        Tiers::new(&s.deferral, &s.amqp.names)
    }

    #[test]
    fn tier_queues_are_named_after_their_delay() {
        let tiers = tiers();
        let names: Vec<&str> = tiers.all().iter().map(|t| t.queue.as_str()).collect();
        assert_eq!(
            names,
            [
                "dial.requests.wait.5s",
                "dial.requests.wait.30s",
                "dial.requests.wait.5m",
                "dial.requests.wait.30m",
                "dial.requests.wait.2h"
            ]
        );
        assert_eq!(label(1_500), "1500ms");
        assert_eq!(label(90_000), "90s");
    }

    #[test]
    fn the_largest_tier_not_above_the_delay_is_chosen() {
        let t = tiers();
        let pick = |secs: u64| t.for_delay(Duration::from_secs(secs)).delay.as_secs();
        assert_eq!(pick(0), 5);
        assert_eq!(pick(4), 5);
        assert_eq!(pick(5), 5);
        assert_eq!(pick(29), 5);
        assert_eq!(pick(30), 30);
        assert_eq!(pick(299), 30);
        assert_eq!(pick(3_600), 1_800);
        assert_eq!(pick(86_400), 7_200);
    }
}
