//! The pace gate: how many `DialEx` requests run at once, and how fast they start, per
//! call-centre instance.
//!
//! CCC answers `Throttling*` when an instance is called too fast, and every such answer is a
//! retry, a delay and a risk of giving up on a customer. So the worker paces itself below the
//! gateway's limits instead of discovering them. This module owns four rules, all per
//! `instance_id`:
//!
//! - **Concurrency**: at most `max_in_flight` `DialEx` requests in flight. A [`Permit`] is held
//!   for the duration of the HTTP call.
//! - **Rate**: at most `calls_per_second`, with bursts of up to `burst` calls, by the generic
//!   cell rate algorithm (GCRA): one number per key, the *theoretical arrival time* (TAT) of
//!   the next call. A call is allowed when `TAT - now <= (burst - 1) * T` (`T` = 1 / rate),
//!   and then pushes the TAT to `max(TAT, now) + T`. Unlike a fixed window it never lets
//!   `2 * rate` through across a window boundary, and unlike a token bucket it needs no
//!   refill bookkeeping. A refused call is told exactly how long to wait.
//! - **Per caller**: optionally, `per_caller_calls_per_second` per caller number (burst 1),
//!   the same algorithm keyed by an opaque caller key.
//! - **Pairs**: the same caller and callee are never dialed twice within [`PAIR_SPACING`].
//!
//! # One decision, all or nothing
//!
//! [`Limiter::acquire`] takes *every* slot in one atomic step, or none: the pacing rules are
//! checked first (their wait is reported when they refuse, and a request waiting for pace
//! never holds a permit), then the permit; and only if everything passes are the rate
//! states advanced, the pair marked and the permit taken. So a request that has to wait for a
//! permit has not spent a rate slot meanwhile, and calls never bunch up behind a busy
//! semaphore: a call *starts* (takes its permit) at the moment its rate slot is counted, so
//! the rate bounds call starts, which is what the gateway measures.
//!
//! # Waiting is bounded and in-process
//!
//! A refused attempt names its wait: the GCRA's exact retry-after, the pair mark's remaining
//! life, or, for a full semaphore, nothing useful (permits come back when calls end), so the
//! loop polls (5 ms doubling to 50 ms) and is woken at once by permits released in this
//! process. Sleeps get a little random jitter so waiters do not retry in lock step. Waiters
//! refused by an instance's rate, or for its permits, queue in-process (first come, first
//! served) and only the head retries, so a backlog costs one retry per replica per slot, not
//! one per waiter. When the next wait would end past `max_wait`, [`Limiter::acquire`] answers
//! `Ok(None)` at once (or, waiting for a permit or its turn, at the deadline) and the caller
//! defers the request instead of holding a consumer slot.
//!
//! # Booking a later start
//!
//! [`Limiter::book`] answers a call that would wait long with the earliest start the rates
//! leave it (the GCRA can hand out a future slot: the instance's TAT less its burst
//! tolerance, or the caller's TAT), and advances the rate that decided from that start, so
//! later calls and bookings queue behind it at the pace:
//!
//! - the instance's rate is the later one: both rates advance ([`Booked::Instance`]); the
//!   booked call later skips both.
//! - the caller's rate is the later one: only the caller's advances ([`Booked::Caller`]); the
//!   booked call later asks the instance's rate like any other. A busy caller's far start
//!   never moves the instance's frontier, which every other caller shares.
//!
//! A booked call takes its start with [`Limiter::acquire_booked`], which checks the pair
//! spacing, the permits and any rate the booking did not count: each rate counts a call once.
//!
//! # Per-instance caps
//!
//! `[limits.instances."<id>"]` gives one instance caps of its own (permits, rate, burst,
//! per-caller rate); every other instance has `[limits]`'s. The pacing and permit state is
//! per instance anyway, so an instance's own caps change nothing for the others.
//!
//! # Backends
//!
//! The acquire loop is written once; a backend only makes one atomic all-or-nothing attempt
//! at every slot (`Slots`) and gives a slot back (its `Hold`).
//!
//! - [`LocalLimiter`]: in memory, for one replica (the embedded store).
//! - [`RedisLimiter`](crate::store::redis::RedisLimiter): shared by every replica, one Lua
//!   script per attempt, on Redis server time (see [`crate::store::redis::limits`] for the
//!   keys and why).
//!
//! # Throttling feedback
//!
//! [`Limiter::throttled`] records that CCC answered `Throttling*` for an instance: for
//! `throttle_cooldown` this replica's calls to that instance count `1 / throttle_factor` rate
//! slots each, i.e. it runs at `throttle_factor` of the pace. This is in-process only: each
//! replica backs off on what it saw. With Redis the rate state is shared, so a throttled
//! replica's heavier calls slow the whole instance in proportion to its share of the
//! traffic; when every replica is being throttled (the usual case: the gateway limits the
//! instance), the instance runs at `throttle_factor` of its pace overall. Throttling again
//! during a cool-down restarts the cool-down; factors do not compound.

mod local;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex as AsyncMutex, Notify, OwnedMutexGuard};
use tokio::time::Instant;

pub use self::local::LocalLimiter;

/// The same caller and callee are never dialed twice within this time.
pub const PAIR_SPACING: Duration = Duration::from_secs(1);

/// The longest interval between calls a rate can ask for; slower rates are treated as this.
/// It keeps `1 / rate` finite and the arithmetic on it free of overflow.
const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// The smallest throttle factor honoured: a factor of 0 would stop an instance for good.
const MIN_THROTTLE_FACTOR: f64 = 0.01;

/// The longest `max_wait` and `permit_lease` honoured: a day. Far past any sensible value, and
/// it keeps deadline arithmetic on `Instant` from overflowing.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// First and longest poll interval while every permit is taken. Releases in this process
/// wake waiters at once; the poll finds permits released by other replicas (or by leases
/// running out).
const POLL_START: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(50);

/// `[limits]` as configured; see [`LimitRules`] for what each rule means.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSettings {
    pub max_in_flight: u32,
    pub calls_per_second: f64,
    pub burst: u32,
    pub per_caller_calls_per_second: f64,
    pub max_wait_ms: u64,
    pub throttle_factor: f64,
    pub throttle_cooldown_ms: u64,
    /// `[limits.instances."<id>"]`: caps of one instance that differ from the ones above, and
    /// the class its metrics are labelled with.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub instances: BTreeMap<String, InstanceLimits>,
}

/// One instance's own caps (each one left out is `[limits]`'s), and its class.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_caller_calls_per_second: Option<f64>,
    /// The `class` label of this instance's per-instance metrics; instances without one share
    /// [`DEFAULT_CLASS`]. Classes keep those series few: one per class, not one per instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
}

/// The metrics class of every instance that names none.
pub const DEFAULT_CLASS: &str = "default";

/// How fast and how many `DialEx` calls may run per instance.
#[derive(Debug, Clone)]
pub struct LimitRules {
    /// `DialEx` requests in flight at once per instance (at least 1).
    pub max_in_flight: u32,
    /// Calls started per second per instance (positive).
    pub calls_per_second: f64,
    /// Calls that may start back to back after a quiet spell (at least 1).
    pub burst: u32,
    /// Calls per second per caller number, burst 1; 0 switches the rule off.
    pub per_caller_calls_per_second: f64,
    /// Longest in-process wait for all slots; past it, `acquire` answers `None`.
    pub max_wait: Duration,
    /// How long a permit's hold outlives a holder that never releases it (a crashed replica).
    /// Must exceed the longest time a permit is legitimately held (the HTTP timeout, or the
    /// whole dial with its retries if the permit is held across them).
    pub permit_lease: Duration,
    /// Pace multiplier after a `Throttling*` answer, in (0, 1].
    pub throttle_factor: f64,
    /// How long the lowered pace lasts after the last `Throttling*` answer.
    pub throttle_cooldown: Duration,
    /// Instances with caps of their own (the class is not the limiter's concern).
    pub instances: BTreeMap<String, InstanceLimits>,
}

impl LimitRules {
    /// From the `[limits]` configuration, with the permit lease the caller derives from its
    /// HTTP timeout.
    pub fn from_config(limits: &LimitsSettings, permit_lease: Duration) -> Self {
        LimitRules {
            max_in_flight: limits.max_in_flight,
            calls_per_second: limits.calls_per_second,
            burst: limits.burst,
            per_caller_calls_per_second: limits.per_caller_calls_per_second,
            max_wait: Duration::from_millis(limits.max_wait_ms),
            permit_lease,
            throttle_factor: limits.throttle_factor,
            throttle_cooldown: Duration::from_millis(limits.throttle_cooldown_ms),
            instances: limits.instances.clone(),
        }
    }
}

/// What one dial is paced by. All three keys are opaque to the limiter and end up in Redis key
/// names: `caller_key` and `pair_key` must already be hashes (never raw phone numbers).
#[derive(Debug, Clone, Copy)]
pub struct CallKey<'a> {
    /// The CCC instance: concurrency, rate and throttling are counted per instance.
    pub instance_id: &'a str,
    /// The caller number, hashed: the per-caller rate's key (within the instance).
    pub caller_key: &'a str,
    /// Caller and callee, hashed together: the [`PAIR_SPACING`] rule's key (within the
    /// instance).
    pub pair_key: &'a str,
}

/// Why a `Limiter` could not decide. The attempt's effect is unknown (a lost answer may have
/// taken a permit, which then comes back after its lease): do not dial; defer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LimitError {
    /// Redis could not be reached or refused the request. Never contains the URL.
    #[error("redis limiter: {0}")]
    Backend(String),
    /// A limiter key holds something the limiter did not write.
    #[error("redis limiter: {0}")]
    Corrupt(String),
}

/// Paces `DialEx` calls. Implementors are cheap to clone and share (an `Arc` inside).
pub trait Limiter: Send + Sync + 'static {
    /// Waits (in-process, at most `max_wait`) until this call may start, and returns the
    /// permit to hold during the HTTP call. `Ok(None)`: the wait would exceed `max_wait`;
    /// defer the request instead.
    fn acquire(
        &self,
        key: &CallKey<'_>,
    ) -> impl Future<Output = Result<Option<Permit>, LimitError>> + Send {
        self.acquire_within(key, Duration::MAX)
    }

    /// [`Limiter::acquire`], waiting at most `max_wait` if that is shorter than the configured
    /// wait (a request whose claim would not outlast a longer wait and the dial).
    fn acquire_within(
        &self,
        key: &CallKey<'_>,
        max_wait: Duration,
    ) -> impl Future<Output = Result<Option<Permit>, LimitError>> + Send;

    /// CCC answered `Throttling*` for this instance: this replica slows it to
    /// `throttle_factor` of its pace for `throttle_cooldown`.
    fn throttled(&self, instance_id: &str);

    /// Books the earliest start the rates leave for this call, now or later. The rate that
    /// decided advances as if the call started then, so later calls and bookings queue behind
    /// it: a request sent away until its start takes it with [`Limiter::acquire_booked`].
    ///
    /// When the caller's own rate is the later one, only it is booked ([`Booked::Caller`]):
    /// the instance's rate is one frontier for every caller, and booking a busy caller's far
    /// start on it would push every other caller's calls behind that start.
    fn book(&self, key: &CallKey<'_>) -> impl Future<Output = Result<Booking, LimitError>> + Send;

    /// [`Limiter::acquire_within`] for a call whose start [`Limiter::book`] already counted:
    /// the rates it booked are not checked or advanced again; the others, the pair spacing and
    /// the permits are. The caller decides whether a booking is still good to take (see
    /// [`Limiter::takes_late`]).
    fn acquire_booked(
        &self,
        key: &CallKey<'_>,
        booking: &Booking,
        max_wait: Duration,
    ) -> impl Future<Output = Result<Option<Permit>, LimitError>> + Send;

    /// Whether the instance paces each caller number too (`per_caller_calls_per_second`).
    fn paces_callers(&self, instance_id: &str) -> bool;

    /// Whether a booking [`Booking::is_late`] may still be taken: when it counted the
    /// instance's rate and there is no caller rate. The instance's start spacing keeps its
    /// calls at its pace however late they come back together, but nothing spaces one
    /// caller's starts, so late calls of one caller back together would start faster than
    /// the caller's pace. A booking not taken asks the rates again, at the back of the line.
    fn takes_late(&self, instance_id: &str, booking: &Booking) -> bool {
        booking.booked == Booked::Instance && !self.paces_callers(instance_id)
    }
}

/// How late a booked call may come back for its start and still be on time (see
/// [`Limiter::takes_late`]).
pub const BOOKING_LATENESS: SignedDuration = SignedDuration::from_millis(100);

/// A start [`Limiter::book`] counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Booking {
    pub start: Timestamp,
    pub booked: Booked,
}

impl Booking {
    /// Whether its start passed more than [`BOOKING_LATENESS`] ago.
    pub fn is_late(&self) -> bool {
        Timestamp::now().duration_since(self.start) > BOOKING_LATENESS
    }
}

/// Which rates a booking counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Booked {
    /// The instance's rate, and the caller's if that rule is on.
    Instance,
    /// The caller's rate alone: the instance's is asked at the start.
    Caller,
}

impl Booked {
    /// The name carried in a booking header.
    pub fn as_str(self) -> &'static str {
        match self {
            Booked::Instance => "instance",
            Booked::Caller => "caller",
        }
    }

    pub fn parse(name: &str) -> Option<Booked> {
        match name {
            "instance" => Some(Booked::Instance),
            "caller" => Some(Booked::Caller),
            _ => None,
        }
    }
}

/// One concurrency slot, held for the duration of a `DialEx` request.
///
/// Give it back with [`Permit::release`]. Dropping it also gives it back (so an error path or
/// a cancelled task cannot leak a slot): at once for the local limiter; for Redis by a
/// background task on the current Tokio runtime (or, with no runtime, when its lease runs
/// out).
#[must_use = "dropping a permit gives it back at once"]
pub struct Permit {
    hold: Option<Box<dyn Hold>>,
    taken: Instant,
}

/// A slot a backend granted, as that backend gives it back.
pub(crate) trait Hold: Send + Sync + 'static {
    /// The instance the slot belongs to.
    fn instance(&self) -> &str;

    /// The limiter's shared state, told how long the slot was held.
    fn common(&self) -> &Common;

    /// The backend's name, for `Debug`.
    fn backend(&self) -> &'static str;

    /// Gives the slot back and wakes this process's waiters for it. A backend that must talk
    /// to a server does it on a task of its own (so neither a synchronous `Drop` nor a
    /// cancelled `release` loses it) and returns that task; `None` when it is done already,
    /// or when there is no runtime to run it on (the lease frees the slot then).
    fn give_back(self: Box<Self>) -> Option<tokio::task::JoinHandle<()>>;
}

impl Permit {
    pub(crate) fn new(hold: Box<dyn Hold>) -> Permit {
        Permit {
            hold: Some(hold),
            taken: Instant::now(),
        }
    }

    /// Gives the slot back and wakes this process's waiters for it. For Redis the removal
    /// runs on its own task, so cancelling this call does not lose it; a Redis error is
    /// logged (the lease frees the slot later) rather than returned, as there is nothing the
    /// caller could do about it.
    pub async fn release(mut self) {
        if let Some(task) = self.give_back() {
            // A JoinError means the runtime is shutting down; the lease covers it.
            let _ = task.await;
        }
    }

    fn give_back(&mut self) -> Option<tokio::task::JoinHandle<()>> {
        let hold = self.hold.take()?;
        hold.common().held(hold.instance(), self.taken.elapsed());
        hold.give_back()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let _ = self.give_back();
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (backend, instance) = match &self.hold {
            Some(hold) => (hold.backend(), Some(hold.instance())),
            None => ("released", None),
        };
        f.debug_struct("Permit")
            .field("backend", &backend)
            .field("instance_id", &instance)
            .finish()
    }
}

/// The settings with every value made usable. The constructors cannot fail, and configuration
/// validation already rejects these cases, so out-of-range values are replaced (with a
/// warning) rather than trusted to arithmetic that could panic or stop an instance forever:
/// `max_in_flight` and `burst` of 0 become 1; an unusable `calls_per_second` becomes 1/s (an
/// unusable per-caller rate switches that rule off); rates slower than one call an hour are
/// one call an hour; a `throttle_factor` outside (0, 1] becomes 1 (no effect) and one below
/// 0.01 becomes 0.01; `permit_lease` is at least 1 ms; durations are at most a day.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    /// The caps of every instance without its own.
    caps: Caps,
    /// Instances with caps of their own.
    instances: HashMap<String, Caps>,
    max_wait: Duration,
    pub(crate) lease: Duration,
    throttle_factor: f64,
    throttle_cooldown: Duration,
}

/// One instance's caps, made usable.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Caps {
    max_in_flight: u32,
    interval: Duration,
    burst: u32,
    caller_interval: Option<Duration>,
}

impl Caps {
    /// The caps, and whether any value had to be replaced.
    fn new(max_in_flight: u32, rate: f64, burst: u32, caller_rate: f64) -> (Caps, bool) {
        let caps = Caps {
            max_in_flight: max_in_flight.max(1),
            interval: interval(rate).unwrap_or(Duration::from_secs(1)),
            burst: burst.max(1),
            caller_interval: interval(caller_rate),
        };
        let clamped = max_in_flight == 0
            || burst == 0
            || interval(rate).is_none()
            || !(caller_rate.is_finite() && caller_rate >= 0.0);
        (caps, clamped)
    }
}

impl Rules {
    fn new(s: &LimitRules) -> Rules {
        let (caps, mut clamped) = Caps::new(
            s.max_in_flight,
            s.calls_per_second,
            s.burst,
            s.per_caller_calls_per_second,
        );
        let instances = s
            .instances
            .iter()
            .map(|(id, own)| {
                let (own_caps, own_clamped) = Caps::new(
                    own.max_in_flight.unwrap_or(s.max_in_flight),
                    own.calls_per_second.unwrap_or(s.calls_per_second),
                    own.burst.unwrap_or(s.burst),
                    own.per_caller_calls_per_second
                        .unwrap_or(s.per_caller_calls_per_second),
                );
                clamped |= own_clamped;
                (id.clone(), own_caps)
            })
            .collect();
        let mut rules = Rules {
            caps,
            instances,
            max_wait: s.max_wait.min(MAX_DURATION),
            lease: s.permit_lease.clamp(Duration::from_millis(1), MAX_DURATION),
            throttle_factor: s.throttle_factor,
            throttle_cooldown: s.throttle_cooldown.min(MAX_DURATION),
        };
        if !(rules.throttle_factor > 0.0 && rules.throttle_factor <= 1.0) {
            // NaN or above 1 (a "speed-up") falls back to no throttling effect.
            rules.throttle_factor = 1.0;
        }
        rules.throttle_factor = rules.throttle_factor.max(MIN_THROTTLE_FACTOR);
        clamped |= !(s.throttle_factor > 0.0 && s.throttle_factor <= 1.0)
            || s.permit_lease.is_zero()
            || s.max_wait > MAX_DURATION;
        if clamped {
            tracing::warn!(
                settings = ?s,
                rules = ?rules,
                "limit settings out of range; using the nearest usable values"
            );
        }
        rules
    }

    fn caps(&self, instance_id: &str) -> &Caps {
        self.instances.get(instance_id).unwrap_or(&self.caps)
    }

    pub(crate) fn paces_callers(&self, instance_id: &str) -> bool {
        self.caps(instance_id).caller_interval.is_some()
    }

    /// The pace of one attempt, on an instance that is or is not being throttled.
    fn pace(&self, instance_id: &str, throttled: bool) -> Pace {
        let caps = self.caps(instance_id);
        let interval = if throttled {
            Duration::try_from_secs_f64(caps.interval.as_secs_f64() / self.throttle_factor)
                .unwrap_or(MAX_INTERVAL)
                .min(MAX_INTERVAL)
        } else {
            caps.interval
        };
        Pace {
            interval,
            tolerance: interval.saturating_mul(caps.burst - 1),
            spacing: interval,
            spacing_tolerance: interval.saturating_mul(caps.burst - 1),
            caller_interval: caps.caller_interval,
            pair_window: PAIR_SPACING,
            max_in_flight: caps.max_in_flight,
        }
    }
}

/// `1 / rate`, or `None` when the rate is off (0) or unusable (negative, NaN, infinite).
fn interval(rate: f64) -> Option<Duration> {
    if !(rate.is_finite() && rate > 0.0) {
        return None;
    }
    Some(
        Duration::try_from_secs_f64(1.0 / rate)
            .unwrap_or(MAX_INTERVAL)
            .min(MAX_INTERVAL),
    )
}

/// What one attempt checks, as both backends apply it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Pace {
    /// The instance's emission interval `T` for this call (longer while throttled).
    pub(crate) interval: Duration,
    /// `(burst - 1) * T`: how far ahead of now the TAT may be for a call to go.
    pub(crate) tolerance: Duration,
    /// The per-caller interval, burst 1; `None` when the rule is off.
    pub(crate) caller_interval: Option<Duration>,
    /// How long a pair stays marked after its call started.
    pub(crate) pair_window: Duration,
    /// The instance's interval and burst tolerance again, for its *starts*: every granted call,
    /// booked or not, keeps this spacing from the calls granted before it (a second GCRA
    /// state). Bookings count the rate ahead of time; booked calls that wake late together
    /// (a busy machine) are spread out again here instead of starting in a bunch.
    pub(crate) spacing: Duration,
    pub(crate) spacing_tolerance: Duration,
    /// The instance's permits.
    pub(crate) max_in_flight: u32,
}

impl Pace {
    /// The pace of a call whose start was booked: without the rates the booking counted (an
    /// `interval` of zero switches the instance's rule off).
    fn booked(self, booked: Booked) -> Pace {
        let caller_off = Pace {
            caller_interval: None,
            ..self
        };
        match booked {
            Booked::Instance => Pace {
                interval: Duration::ZERO,
                tolerance: Duration::ZERO,
                ..caller_off
            },
            Booked::Caller => caller_off,
        }
    }
}

/// GCRA: how long until a call is allowed (zero: now). `tat` is the stored theoretical
/// arrival time (anything in the past means "idle").
fn gcra_wait(tat: Duration, now: Duration, tolerance: Duration) -> Duration {
    tat.saturating_sub(tolerance).saturating_sub(now)
}

/// GCRA: the TAT after a call allowed at `now`.
fn gcra_advance(tat: Duration, now: Duration, interval: Duration) -> Duration {
    tat.max(now).saturating_add(interval)
}

/// Why an attempt was refused: for logs, and to pick the queue a waiter joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitFor {
    /// The instance's rate.
    Pace,
    /// The caller's rate.
    CallerPace,
    /// The same pair was dialed less than [`PAIR_SPACING`] ago.
    Pair,
    /// Every permit is taken.
    Permit,
}

/// The answer of one attempt.
pub(crate) enum Attempt {
    Granted(Permit),
    /// Refused; `after` is the suggested wait (for [`WaitFor::Permit`], the time until the
    /// earliest lease runs out: an upper bound, as permits usually come back sooner).
    Wait {
        reason: WaitFor,
        after: Duration,
    },
}

/// Where a limiter keeps its slots: one atomic all-or-nothing attempt at every slot of a
/// call, granting a [`Permit`] or naming the wait.
pub(crate) trait Slots: Send + Sync {
    fn attempt(
        &self,
        key: &CallKey<'_>,
        pace: &Pace,
    ) -> impl Future<Output = Result<Attempt, LimitError>> + Send;

    /// Books the earliest start `pace` leaves for the call (see [`Limiter::book`]) and answers
    /// how long from now it is, and which rates it counted.
    fn book(
        &self,
        key: &CallKey<'_>,
        pace: &Pace,
    ) -> impl Future<Output = Result<(Duration, Booked), LimitError>> + Send;
}

/// What both backends share: the rules, the in-process throttling state, how long permits
/// are held, and the wake-ups.
pub(crate) struct Common {
    pub(crate) rules: Rules,
    /// Instance -> end of its throttling cool-down.
    throttles: Mutex<HashMap<String, Instant>>,
    /// Instance -> how long its permits were held lately (a moving average), in this process.
    holds: Mutex<HashMap<String, Duration>>,
    wakers: Wakers,
}

/// The weight of the newest hold in [`Common::holds`]' moving average.
const HOLD_WEIGHT: f64 = 0.2;

/// [`Common::holds`] is emptied when it reaches this many instances, so instance ids that
/// come and go cannot grow it without bound. It fills again with the next calls.
const MAX_HOLDS: usize = 4096;

/// Bookings of a permit-bound instance follow what its permits pass, a little faster: a
/// permit that comes back a moment late is waited for in-process, a booked start with no
/// call in it is capacity lost.
const PERMIT_PACE_FACTOR: f64 = 0.9;

impl Common {
    pub(crate) fn new(settings: &LimitRules) -> Common {
        Common {
            rules: Rules::new(settings),
            throttles: Mutex::new(HashMap::new()),
            holds: Mutex::new(HashMap::new()),
            wakers: Wakers::default(),
        }
    }

    /// A permit of `instance_id` was held for `held`.
    fn held(&self, instance_id: &str, held: Duration) {
        let mut holds = lock(&self.holds);
        if let Some(average) = holds.get_mut(instance_id) {
            *average = average.mul_f64(1.0 - HOLD_WEIGHT) + held.mul_f64(HOLD_WEIGHT);
            return;
        }
        if holds.len() >= MAX_HOLDS {
            holds.clear();
        }
        holds.insert(instance_id.to_owned(), held.min(MAX_DURATION));
    }

    /// The pace bookings follow: [`Common::pace`], or, when the instance's permits pass fewer
    /// calls than its rate (`max_in_flight` permits each held for the average hold), the pace
    /// of its permits. Booked at the rate alone, a permit-bound backlog would come back to
    /// wait for permits in-process, holding the prefetch window as before.
    fn booking_pace(&self, instance_id: &str) -> Pace {
        let mut pace = self.pace(instance_id);
        if let Some(hold) = lock(&self.holds).get(instance_id) {
            let by_permits = hold.mul_f64(PERMIT_PACE_FACTOR) / pace.max_in_flight;
            pace.interval = pace.interval.max(by_permits.min(MAX_INTERVAL));
        }
        pace
    }

    pub(crate) fn throttled(&self, instance_id: &str) {
        if self.rules.throttle_factor >= 1.0 || self.rules.throttle_cooldown.is_zero() {
            return;
        }
        let now = Instant::now();
        let until = now + self.rules.throttle_cooldown;
        let already = {
            let mut throttles = lock(&self.throttles);
            // Forget finished cool-downs so the map stays as small as the set of throttled
            // instances.
            throttles.retain(|_, end| *end > now);
            throttles.insert(instance_id.to_owned(), until).is_some()
        };
        // Loud once per episode; under sustained throttling every answer would repeat it.
        if already {
            tracing::debug!(instance_id, "CCC throttled again; cool-down restarted");
        } else {
            tracing::info!(
                instance_id,
                factor = self.rules.throttle_factor,
                cooldown_ms = self.rules.throttle_cooldown.as_millis() as u64,
                "CCC throttled this instance; slowing its pace on this replica"
            );
        }
    }

    /// Wakes this process's waiters for a permit of `instance_id`: one was given back.
    pub(crate) fn wake(&self, instance_id: &str) {
        self.wakers.wake(instance_id);
    }

    fn pace(&self, instance_id: &str) -> Pace {
        let throttled = lock(&self.throttles)
            .get(instance_id)
            .is_some_and(|end| *end > Instant::now());
        self.rules.pace(instance_id, throttled)
    }

    /// Books a start; see [`Limiter::book`].
    pub(crate) async fn book<S: Slots>(
        &self,
        backend: &S,
        key: &CallKey<'_>,
    ) -> Result<Booking, LimitError> {
        let (wait, booked) = backend
            .book(key, &self.booking_pace(key.instance_id))
            .await?;
        let wait = SignedDuration::try_from(wait).unwrap_or(SignedDuration::MAX);
        Ok(Booking {
            start: Timestamp::now()
                .saturating_add(wait)
                .unwrap_or(Timestamp::MAX),
            booked,
        })
    }

    /// The acquire loop both backends share; see the module documentation. `booking`: the
    /// start a booking already counted for this call.
    pub(crate) async fn acquire<S: Slots>(
        &self,
        backend: &S,
        key: &CallKey<'_>,
        max_wait: Duration,
        booking: Option<&Booking>,
    ) -> Result<Option<Permit>, LimitError> {
        let booked = booking.map(|booking| booking.booked);
        let start = Instant::now();
        let deadline = start + self.rules.max_wait.min(max_wait);
        let local = self.wakers.get(key.instance_id);
        // This process's turn at the instance's rate or permits (see `InstanceWaiters`), held
        // only while refused for that reason.
        let mut turn: Option<(WaitFor, OwnedMutexGuard<()>)> = None;
        let mut poll = POLL_START;
        loop {
            // Registered before the attempt, so a release between the attempt and the sleep
            // still wakes us.
            let mut released = std::pin::pin!(local.released.notified());
            released.as_mut().enable();

            let pace = self.pace(key.instance_id);
            let pace = match booked {
                Some(booked) => pace.booked(booked),
                None => pace,
            };
            let (reason, after) = match backend.attempt(key, &pace).await? {
                Attempt::Granted(permit) => return Ok(Some(permit)),
                Attempt::Wait { reason, after } => (reason, after),
            };
            if turn.as_ref().is_some_and(|(held, _)| *held != reason) {
                // Refused for another reason now: let the next in line for the old one go.
                turn = None;
            }
            if reason != WaitFor::Permit && Instant::now() + after > deadline {
                // A known wait past the deadline holds for everyone in line as well: waiting
                // for a turn would only keep this request from leaving.
                return Ok(defer(key, start, reason));
            }
            if turn.is_none()
                && let Some(queue) = local.queue(reason)
            {
                if Instant::now() >= deadline {
                    return Ok(defer(key, start, reason));
                }
                // Wait for our turn, then try again at once: the previous head may have just
                // taken the slot or permit we were told to wait for.
                match tokio::time::timeout_at(deadline, queue.clone().lock_owned()).await {
                    Ok(guard) => {
                        turn = Some((reason, guard));
                        poll = POLL_START;
                        continue;
                    }
                    Err(_) => return Ok(defer(key, start, reason)),
                }
            }
            let now = Instant::now();
            if reason == WaitFor::Permit {
                // Unknown wait: poll until the deadline, one last attempt at it.
                if now >= deadline {
                    return Ok(defer(key, start, reason));
                }
                let nap = (poll + jitter(poll))
                    .min(after + Duration::from_millis(1))
                    .min(deadline - now);
                tokio::select! {
                    () = tokio::time::sleep(nap) => {}
                    () = released => {}
                }
                poll = (poll * 2).min(POLL_MAX);
            } else {
                // A known wait: if it ends past the deadline, waiting is pointless.
                if now + after > deadline {
                    return Ok(defer(key, start, reason));
                }
                let nap = (after + jitter(after)).min(deadline - now);
                tokio::time::sleep(nap).await;
            }
        }
    }
}

/// Logs a deferral and answers `None`.
fn defer(key: &CallKey<'_>, start: Instant, reason: WaitFor) -> Option<Permit> {
    tracing::debug!(
        instance_id = key.instance_id,
        waited_ms = start.elapsed().as_millis() as u64,
        ?reason,
        "no DialEx slot within max_wait; deferring"
    );
    None
}

/// A small random addition to a sleep (up to a twentieth of it, between 1 and 5 ms) so that
/// waiters told the same retry-after (on different replicas) do not all come back in the
/// same instant. Small, because with burst 1 every bit of lateness is rate not used.
fn jitter(base: Duration) -> Duration {
    let cap = (base / 20).clamp(Duration::from_millis(1), Duration::from_millis(5));
    let micros = u64::try_from(cap.as_micros()).unwrap_or(5_000);
    Duration::from_micros(rand::rng().random_range(0..=micros))
}

/// This process's [`InstanceWaiters`], per instance. Only weak references are kept, so an
/// instance nobody waits on costs nothing once its waiters are gone.
#[derive(Default)]
struct Wakers {
    inner: Mutex<WakerMap>,
}

#[derive(Default)]
struct WakerMap {
    map: HashMap<String, Weak<InstanceWaiters>>,
    /// Dead entries are swept when the map reaches this size (then twice its live size).
    sweep_at: usize,
}

/// One instance's waiters in this process.
///
/// Waiters refused for the same shared reason (the instance's rate, or its permits) would
/// all retry at once (told the same retry-after, or woken by the same release) and all but
/// one be refused again: with Redis, a round trip per waiter per slot, and a stampede that
/// grows with the backlog. So they queue, first come first served, and only the head of each
/// queue retries: one attempt per replica per slot, whatever the backlog, and fairness within
/// a replica. A waiter refused for its own caller or pair waits alone (no one else waits for
/// the same thing).
#[derive(Default)]
struct InstanceWaiters {
    /// Notified (all waiters) when a permit of the instance is released in this process.
    released: Notify,
    /// Held by the one waiter that retries the instance's rate.
    pace_turn: Arc<AsyncMutex<()>>,
    /// Held by the one waiter that retries for a permit.
    permit_turn: Arc<AsyncMutex<()>>,
}

impl InstanceWaiters {
    /// The queue for waiters refused for `reason`, if they queue.
    fn queue(&self, reason: WaitFor) -> Option<&Arc<AsyncMutex<()>>> {
        match reason {
            WaitFor::Pace => Some(&self.pace_turn),
            WaitFor::Permit => Some(&self.permit_turn),
            WaitFor::CallerPace | WaitFor::Pair => None,
        }
    }
}

impl Wakers {
    fn get(&self, instance_id: &str) -> Arc<InstanceWaiters> {
        let mut inner = lock(&self.inner);
        if let Some(waiters) = inner.map.get(instance_id).and_then(Weak::upgrade) {
            return waiters;
        }
        if inner.map.len() >= inner.sweep_at {
            inner.map.retain(|_, weak| weak.strong_count() > 0);
            inner.sweep_at = (inner.map.len() * 2).max(64);
        }
        let waiters = Arc::new(InstanceWaiters::default());
        inner
            .map
            .insert(instance_id.to_owned(), Arc::downgrade(&waiters));
        waiters
    }

    fn wake(&self, instance_id: &str) {
        let waiters = lock(&self.inner)
            .map
            .get(instance_id)
            .and_then(Weak::upgrade);
        if let Some(waiters) = waiters {
            waiters.released.notify_waiters();
        }
    }
}

/// Locks a mutex, ignoring poisoning: the guarded state is plain numbers and maps that are
/// never left half-updated by a panic in this module.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
