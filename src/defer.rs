//! Deferral: how a request that may not be handled yet leaves the process and comes back.
//!
//! There is one wait queue per delay ("tier"), each with a queue-level TTL and dead-lettering
//! back to the request exchange, so a request parked there returns by itself when its tier's
//! delay has passed and is evaluated again. One TTL per queue means messages expire in order
//! (RabbitMQ only expires messages at the head of a queue). Requeueing with `nack` is never
//! used to mean "not now": that would spin the message through the worker at full speed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;

use crate::config::{AmqpNames, DeferralSettings};

/// How long from now until `at`; zero once it has passed.
pub fn time_until(at: Timestamp) -> Duration {
    at.duration_since(Timestamp::now())
        .try_into()
        .unwrap_or(Duration::ZERO)
}

/// How long before its booked start a request comes back from the wait queues, to wait the
/// rest in-process, when the wait queues hand messages back on time: a start missed is a
/// slot of the pace lost. On top of it comes how late they have handed messages back lately
/// (see [`Lateness`]).
pub const BOOKING_MARGIN: Duration = Duration::from_secs(1);

/// The most lateness [`Lateness`] adds to [`BOOKING_MARGIN`]. Every second of margin keeps
/// `calls_per_second` more requests per busy instance waiting in the prefetch window, and a
/// return is late too when it waits in the request queue behind a backlog being taken in
/// (tens of seconds for a large one): a margin that followed that would fill the window with
/// requests waiting for their starts and hold every other request out. Later returns than
/// this miss their starts; a booking that counted only the instance's rate is still taken.
pub const MAX_LATENESS: Duration = Duration::from_secs(2);

/// How fast an observed lateness is forgotten: it halves every minute.
const LATENESS_HALF_LIFE: Duration = Duration::from_secs(60);

/// How late the wait queues have handed messages back lately: the latest of the recent
/// returns, forgotten at [`LATENESS_HALF_LIFE`]. Each hop carries when it was due back
/// (`x-dialex-due`); a booked request comes back this much earlier, so a broker that is slow
/// for a while makes its requests come back earlier instead of missing their starts (each
/// miss a slot of the pace lost, and the request at the end of the line again).
#[derive(Debug, Clone, Default)]
pub struct Lateness(Arc<Mutex<Peak>>);

#[derive(Debug, Default)]
struct Peak {
    seconds: f64,
    at: Option<Instant>,
}

impl Peak {
    fn at(&self, now: Instant) -> f64 {
        let Some(at) = self.at else { return 0.0 };
        let halvings = now.duration_since(at).as_secs_f64() / LATENESS_HALF_LIFE.as_secs_f64();
        self.seconds * 0.5_f64.powf(halvings)
    }
}

impl Lateness {
    /// One return from a wait queue, `late` after it was due.
    pub fn observe(&self, late: Duration) {
        let late = late.min(MAX_LATENESS).as_secs_f64();
        let now = Instant::now();
        let mut peak = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = peak.at(now);
        if late >= current {
            *peak = Peak {
                seconds: late,
                at: Some(now),
            };
        }
    }

    /// How late returns are taken to be now.
    pub fn current(&self) -> Duration {
        let peak = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Duration::from_secs_f64(peak.at(Instant::now()))
    }
}

/// How much longer than the delay asked for a tier may be.
pub const TIER_TOLERANCE: Duration = Duration::from_secs(1);

/// One wait queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub delay: Duration,
    pub queue: String,
}

/// The configured tiers, shortest first, and how late they have handed messages back lately.
#[derive(Debug, Clone)]
pub struct Tiers {
    tiers: Vec<Tier>,
    pub lateness: Lateness,
}

impl Tiers {
    /// The request queue's tiers.
    pub fn new(settings: &DeferralSettings, names: &AmqpNames) -> Self {
        Tiers::of_queue(settings, &names.request_queue)
    }

    /// The follow-up queue's wait tiers (the delays of `[deferral]`), when the follow-up is
    /// on.
    pub fn of_followups(settings: &crate::config::Settings) -> Option<Tiers> {
        settings
            .followup
            .enabled
            .then(|| Tiers::of_queue(&settings.deferral, &settings.amqp.names.followup_queue))
    }

    /// The wait tiers of `queue` (`<queue>.wait.<delay>`), with the configured delays.
    pub fn of_queue(settings: &DeferralSettings, queue: &str) -> Self {
        Tiers {
            tiers: settings
                .tiers_ms
                .iter()
                .map(|&ms| Tier {
                    delay: Duration::from_millis(ms),
                    queue: format!("{queue}.wait.{}", label(ms)),
                })
                .collect(),
            lateness: Lateness::default(),
        }
    }

    pub fn all(&self) -> &[Tier] {
        &self.tiers
    }

    /// The shortest tier.
    pub fn shortest(&self) -> &Tier {
        &self.tiers[0]
    }

    /// How long before its booked start a request comes back: [`BOOKING_MARGIN`] plus how
    /// late the wait queues have been lately.
    pub fn booking_margin(&self) -> Duration {
        BOOKING_MARGIN + self.lateness.current()
    }

    /// Where a request with a booked start `left` from now waits next: the largest tier that
    /// brings it back at least [`Tiers::booking_margin`] before its start, never after it.
    /// `None` when the start is near enough (within the shortest tier and the margin) to be
    /// waited for in-process: through the shortest tier it could come back late.
    pub fn for_booked(&self, left: Duration) -> Option<&Tier> {
        let margin = self.booking_margin();
        if left <= self.shortest().delay + margin {
            return None;
        }
        let delay = left - margin;
        self.tiers.iter().rev().find(|tier| tier.delay <= delay)
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
        self.tiers
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

    #[test]
    fn a_booked_start_comes_back_early_and_never_late() {
        let t = tiers();
        let hop = |ms: u64| {
            t.for_booked(Duration::from_millis(ms))
                .map(|tier| tier.delay.as_millis() as u64)
        };
        // Within the shortest tier and the margin: waited for in-process.
        assert_eq!(hop(0), None);
        assert_eq!(hop(2_000), None);
        // Otherwise the largest tier that comes back at least the margin before the start.
        assert_eq!(hop(2_001), Some(1_000));
        assert_eq!(hop(6_500), Some(5_000));
        assert_eq!(hop(30_999), Some(5_000));
        assert_eq!(hop(31_000), Some(30_000));
        assert_eq!(hop(86_400_000), Some(7_200_000));
    }

    #[test]
    fn late_returns_bring_booked_requests_back_earlier_for_a_while() {
        let t = tiers();
        let hop = |ms: u64| {
            t.for_booked(Duration::from_millis(ms))
                .map(|tier| tier.delay.as_millis() as u64)
        };
        assert_eq!(t.booking_margin(), BOOKING_MARGIN);
        t.lateness.observe(Duration::from_millis(1_500));
        t.lateness.observe(Duration::from_millis(200));
        let margin = t.booking_margin();
        assert!(
            margin > Duration::from_millis(2_490) && margin <= Duration::from_millis(2_500),
            "{margin:?}"
        );
        // 3 s before its start a request now waits in-process; 6.5 s before, it takes the 1 s
        // tier where it took the 5 s one.
        assert_eq!(hop(3_000), None);
        assert_eq!(hop(6_500), Some(1_000));
        assert_eq!(hop(7_500), Some(5_000));
        // An absurd lateness is capped.
        t.lateness.observe(Duration::from_secs(3_600));
        assert!(t.booking_margin() <= BOOKING_MARGIN + MAX_LATENESS);
    }

    #[test]
    fn lateness_is_forgotten_by_halves() {
        let peak = Peak {
            seconds: 4.0,
            at: Some(Instant::now() - LATENESS_HALF_LIFE * 2),
        };
        let now = peak.at(Instant::now());
        assert!((0.99..=1.0).contains(&now), "{now}");
        assert_eq!(Peak::default().at(Instant::now()), 0.0);
    }
}
