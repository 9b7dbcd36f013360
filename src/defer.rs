//! Deferral: how a request that may not be handled yet leaves the process and comes back.
//!
//! There is one wait queue per delay ("tier"), each with a queue-level TTL and dead-lettering
//! back to the request exchange, so a request parked there returns by itself when its tier's
//! delay has passed and is evaluated again. One TTL per queue means messages expire in order
//! (RabbitMQ only expires messages at the head of a queue). Requeueing with `nack` is never
//! used to mean "not now": that would spin the message through the worker at full speed.

use std::time::Duration;

use jiff::Timestamp;

use crate::config::{AmqpNames, DeferralSettings};

/// How long from now until `at`; zero once it has passed.
pub fn time_until(at: Timestamp) -> Duration {
    at.duration_since(Timestamp::now())
        .try_into()
        .unwrap_or(Duration::ZERO)
}

/// How much longer than the delay asked for a tier may be.
pub const TIER_TOLERANCE: Duration = Duration::from_secs(1);

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

    /// The shortest tier.
    pub fn shortest(&self) -> &Tier {
        &self.0[0]
    }

    /// The largest tier not above `delay`, without tolerance (the shortest for shorter
    /// delays): for a request that must not come back late, such as one with a booked start.
    pub fn at_most(&self, delay: Duration) -> &Tier {
        self.0
            .iter()
            .rev()
            .find(|tier| tier.delay <= delay)
            .unwrap_or(self.shortest())
    }

    /// The largest tier not above `delay` (give or take [`TIER_TOLERANCE`]); the shortest tier
    /// for shorter delays.
    ///
    /// The tolerance keeps a delay computed a moment after its deadline was set (29.99 s for a
    /// 30 s wait) in the tier it was meant for, instead of the next shorter one; the request
    /// then comes back at most the tolerance late. One that comes back early (a longer delay is
    /// made of several hops) waits again: its deferral carries the time it waits for.
    pub fn for_delay(&self, delay: Duration) -> &Tier {
        let shortest = self.shortest();
        let delay = delay.saturating_add(TIER_TOLERANCE);
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
                "dial.requests.wait.1s",
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
        assert_eq!(pick(0), 1);
        assert_eq!(pick(3), 1);
        assert_eq!(pick(4), 5);
        assert_eq!(pick(5), 5);
        assert_eq!(pick(28), 5);
        assert_eq!(pick(30), 30);
        assert_eq!(pick(298), 30);
        assert_eq!(pick(3_600), 1_800);
        assert_eq!(pick(86_400), 7_200);
    }

    #[test]
    fn a_delay_a_moment_short_of_a_tier_still_takes_that_tier() {
        let t = tiers();
        let pick = |ms: u64| t.for_delay(Duration::from_millis(ms)).delay.as_secs();
        // A 30 s wait computed a few milliseconds after it was set.
        assert_eq!(pick(29_995), 30);
        assert_eq!(pick(29_001), 30);
        assert_eq!(pick(28_999), 5);
        assert_eq!(pick(299_990), 300);
    }
}
