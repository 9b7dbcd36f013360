//! The in-process limiter: the same rules as the Redis one, on this process's monotonic clock,
//! for a single replica.
//!
//! One mutex guards all state, so an attempt is as atomic as the Redis script: every check,
//! then every update, with nothing in between. Held for microseconds, never across an
//! `await`. Permits carry a lease here too, so a permit leaked without being dropped (say, by
//! `mem::forget`) still comes back.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{
    Attempt, Booked, Booking, CallKey, Common, Hold, LimitError, LimitRules, Limiter, Pace, Permit,
    Slots, WaitFor, gcra_advance, gcra_wait, lock,
};

/// How often expired entries (idle rate states, old pair marks) are swept out.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Paces `DialEx` calls within this process. Cheap to clone: an `Arc` inside.
#[derive(Clone)]
pub struct LocalLimiter {
    pub(super) shared: Arc<Shared>,
}

pub(super) struct Shared {
    pub(super) common: Common,
    pub(super) state: Arc<Mutex<State>>,
}

/// Times are offsets from `base`, on the monotonic clock.
pub(super) struct State {
    base: Instant,
    pub(super) instances: HashMap<String, InstanceState>,
    next_permit: u64,
    next_sweep: Duration,
}

#[derive(Default)]
pub(super) struct InstanceState {
    /// The instance's TAT.
    tat: Duration,
    /// The TAT of the instance's granted starts (see `Pace::spacing`).
    starts: Duration,
    /// Permit id and lease end of each holder.
    holders: Vec<(u64, Duration)>,
    /// Caller key -> its TAT.
    callers: HashMap<String, Duration>,
    /// Pair key -> end of its mark.
    pairs: HashMap<String, Duration>,
}

impl InstanceState {
    fn is_idle(&self, now: Duration) -> bool {
        self.tat <= now
            && self.starts <= now
            && self.holders.is_empty()
            && self.callers.is_empty()
            && self.pairs.is_empty()
    }
}

impl LocalLimiter {
    /// A limiter with these settings (out-of-range values are clamped; see
    /// [`LimitRules`]).
    pub fn new(settings: LimitRules) -> Self {
        LocalLimiter {
            shared: Arc::new(Shared {
                common: Common::new(&settings),
                state: Arc::new(Mutex::new(State {
                    base: Instant::now(),
                    instances: HashMap::new(),
                    next_permit: 0,
                    next_sweep: SWEEP_EVERY,
                })),
            }),
        }
    }

    /// Another limiter on this one's state with other settings: the local stand-in for a
    /// second replica configured differently.
    #[cfg(test)]
    pub(super) fn sharing_state(&self, settings: LimitRules) -> LocalLimiter {
        LocalLimiter {
            shared: Arc::new(Shared {
                common: Common::new(&settings),
                state: self.shared.state.clone(),
            }),
        }
    }
}

impl fmt::Debug for LocalLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalLimiter")
            .field("rules", &self.shared.common.rules)
            .finish_non_exhaustive()
    }
}

impl Limiter for LocalLimiter {
    async fn acquire_within(
        &self,
        key: &CallKey<'_>,
        max_wait: Duration,
    ) -> Result<Option<Permit>, LimitError> {
        self.shared.common.acquire(self, key, max_wait, None).await
    }

    fn throttled(&self, instance_id: &str) {
        self.shared.common.throttled(instance_id);
    }

    fn paces_callers(&self, instance_id: &str) -> bool {
        self.shared.common.rules.paces_callers(instance_id)
    }

    async fn book(&self, key: &CallKey<'_>) -> Result<Booking, LimitError> {
        self.shared.common.book(self, key).await
    }

    async fn acquire_booked(
        &self,
        key: &CallKey<'_>,
        booking: &Booking,
        max_wait: Duration,
    ) -> Result<Option<Permit>, LimitError> {
        self.shared
            .common
            .acquire(self, key, max_wait, Some(booking))
            .await
    }
}

impl Slots for LocalLimiter {
    async fn attempt(&self, key: &CallKey<'_>, pace: &Pace) -> Result<Attempt, LimitError> {
        Ok(self.try_now(key, pace))
    }

    async fn book(&self, key: &CallKey<'_>, pace: &Pace) -> Result<(Duration, Booked), LimitError> {
        Ok(self.book_now(key, pace))
    }
}

impl LocalLimiter {
    /// The GCRA with a future start: the earliest time the instance's rate (with its burst)
    /// and the caller's allow, and the rate that decided advanced from it (both, when it is
    /// the instance's).
    fn book_now(&self, key: &CallKey<'_>, pace: &Pace) -> (Duration, Booked) {
        let mut state = lock(&self.shared.state);
        let now = state.base.elapsed();
        let inst = state
            .instances
            .entry(key.instance_id.to_owned())
            .or_default();
        let slot = now.max(inst.tat.saturating_sub(pace.tolerance));
        if let Some(interval) = pace.caller_interval {
            let caller = inst.callers.entry(key.caller_key.to_owned()).or_default();
            if *caller > slot {
                let start = *caller;
                *caller = gcra_advance(*caller, start, interval);
                return (start - now, Booked::Caller);
            }
            *caller = gcra_advance(*caller, slot, interval);
        }
        inst.tat = gcra_advance(inst.tat, slot, pace.interval);
        (slot - now, Booked::Instance)
    }

    fn try_now(&self, key: &CallKey<'_>, pace: &Pace) -> Attempt {
        let rules = &self.shared.common.rules;
        let mut guard = lock(&self.shared.state);
        let state = &mut *guard;
        let now = state.base.elapsed();
        if now >= state.next_sweep {
            state.sweep(now);
            state.next_sweep = now + SWEEP_EVERY;
        }
        if !state.instances.contains_key(key.instance_id) {
            state
                .instances
                .insert(key.instance_id.to_owned(), InstanceState::default());
        }
        let Some(inst) = state.instances.get_mut(key.instance_id) else {
            unreachable!("inserted above");
        };

        // Pacing first, every rule, reporting the longest wait: nothing can go before it. A
        // zero interval is a booked call: its rate was counted when it was booked.
        let rated = !pace.interval.is_zero();
        let mut refused = (
            WaitFor::Pace,
            if rated {
                gcra_wait(inst.tat, now, pace.tolerance)
            } else {
                Duration::ZERO
            },
        );
        let spacing = gcra_wait(inst.starts, now, pace.spacing_tolerance);
        if spacing > refused.1 {
            refused = (WaitFor::Pace, spacing);
        }
        let caller_tat = pace.caller_interval.map(|_| {
            let tat = inst.callers.get(key.caller_key).copied().unwrap_or(now);
            let wait = gcra_wait(tat, now, Duration::ZERO);
            if wait > refused.1 {
                refused = (WaitFor::CallerPace, wait);
            }
            tat
        });
        if let Some(end) = inst.pairs.get(key.pair_key) {
            let wait = end.saturating_sub(now);
            if wait > refused.1 {
                refused = (WaitFor::Pair, wait);
            }
        }
        if !refused.1.is_zero() {
            return Attempt::Wait {
                reason: refused.0,
                after: refused.1,
            };
        }

        // Then the permit; leases that ran out give their slot back first.
        inst.holders.retain(|(_, end)| *end > now);
        if inst.holders.len() >= pace.max_in_flight as usize {
            let earliest = inst.holders.iter().map(|(_, end)| *end).min();
            return Attempt::Wait {
                reason: WaitFor::Permit,
                after: earliest.map_or(Duration::ZERO, |end| end - now),
            };
        }

        // Everything passed: take it all.
        if rated {
            inst.tat = gcra_advance(inst.tat, now, pace.interval);
        }
        inst.starts = gcra_advance(inst.starts, now, pace.spacing);
        if let (Some(interval), Some(tat)) = (pace.caller_interval, caller_tat) {
            inst.callers
                .insert(key.caller_key.to_owned(), gcra_advance(tat, now, interval));
        }
        inst.pairs.insert(
            key.pair_key.to_owned(),
            now.saturating_add(pace.pair_window),
        );
        let id = state.next_permit;
        state.next_permit += 1;
        inst.holders.push((id, now.saturating_add(rules.lease)));
        drop(guard);

        Attempt::Granted(Permit::new(Box::new(LocalHold {
            shared: self.shared.clone(),
            instance: key.instance_id.to_owned(),
            id,
        })))
    }
}

impl State {
    /// Drops everything that no longer affects a decision, so memory stays proportional to
    /// the calls of the last second or so rather than to every caller and pair ever seen.
    fn sweep(&mut self, now: Duration) {
        self.instances.retain(|_, inst| {
            inst.callers.retain(|_, tat| *tat > now);
            inst.pairs.retain(|_, end| *end > now);
            inst.holders.retain(|(_, end)| *end > now);
            !inst.is_idle(now)
        });
    }
}

/// A local permit's hold: which slot to give back.
struct LocalHold {
    shared: Arc<Shared>,
    instance: String,
    id: u64,
}

impl Hold for LocalHold {
    fn instance(&self) -> &str {
        &self.instance
    }

    fn common(&self) -> &Common {
        &self.shared.common
    }

    fn backend(&self) -> &'static str {
        "local"
    }

    /// Frees the slot (if its lease has not already) and wakes this instance's waiters, at
    /// once.
    fn give_back(self: Box<Self>) -> Option<tokio::task::JoinHandle<()>> {
        {
            let mut state = lock(&self.shared.state);
            if let Some(inst) = state.instances.get_mut(&self.instance)
                && let Some(at) = inst.holders.iter().position(|(id, _)| *id == self.id)
            {
                inst.holders.swap_remove(at);
            }
        }
        self.shared.common.wake(&self.instance);
        None
    }
}
