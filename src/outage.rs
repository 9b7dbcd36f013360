//! The outage breaker: when CCC fails for everyone, the worker pauses instead of burning its
//! backlog.
//!
//! A retryable answer (503, 500, a refused connection) normally concerns one request: it is
//! retried in-process, then through the wait queues, and after `ccc.max_total_attempts` it ends
//! `failed`. When the whole gateway is down, that path would consume every request in the queue
//! into `failed` outcomes within a few minutes, and `failed` is final for a request id. So the
//! breaker watches the answers of every `DialEx` attempt over a sliding window: once at least
//! `min_attempts` were made in the last `window_ms` and at least `failure_ratio` of them failed
//! retryably, it opens. The pipeline then gives back the requests in hand without spending their
//! attempts and pauses the worker (`paused{cause="ccc_outage"}`, `/readyz` not ready) until a
//! probe finds CCC answering again; then the window starts afresh.
//!
//! Only answers that prove the gateway is unwell count as failures. `Throttling*` proves it is
//! up (and is paced by the limiter); a permanent or systemic answer, or an ambiguous one, is
//! counted as an answer, not as a failure.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// `[outage]` as configured (`config/default.toml` documents every key).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutageSettings {
    /// How far back the breaker looks.
    pub window_ms: u64,
    /// The fewest attempts in the window before it may open; 0 switches the breaker off.
    pub min_attempts: u32,
    /// The share of those attempts that must have failed retryably, in (0, 1].
    pub failure_ratio: f64,
    /// The longest pause between probes while open.
    pub max_probe_interval_ms: u64,
}

impl OutageSettings {
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }

    pub fn max_probe_interval(&self) -> Duration {
        Duration::from_millis(self.max_probe_interval_ms)
    }
}

/// How many slices the window is counted in: the window slides by a tenth of itself.
const SLICES: usize = 10;

/// What one `DialEx` attempt told the breaker about the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The gateway answered (accepted, refused for a reason of the request, throttled...).
    Answered,
    /// The gateway failed the attempt retryably: 503, 500, a refused connection.
    Failed,
}

/// The sliding window of attempts across every request, and whether it says CCC is down.
#[derive(Debug)]
pub struct OutageBreaker {
    min_attempts: u32,
    failure_ratio: f64,
    slice: Duration,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    /// Attempts and failures per slice, oldest first; `start` is when the newest slice began.
    slices: [(u32, u32); SLICES],
    newest: usize,
    start: Instant,
    open: bool,
}

impl OutageBreaker {
    pub fn new(settings: &OutageSettings) -> OutageBreaker {
        OutageBreaker {
            min_attempts: settings.min_attempts,
            failure_ratio: settings.failure_ratio,
            slice: (settings.window() / SLICES as u32).max(Duration::from_millis(1)),
            state: Mutex::new(Window {
                slices: [(0, 0); SLICES],
                newest: 0,
                start: Instant::now(),
                open: false,
            }),
        }
    }

    /// Counts one attempt's answer. Returns `true` when this answer opened the breaker (once
    /// per outage: later answers while open return `false`).
    pub fn record(&self, answer: Answer) -> bool {
        self.record_at(answer, Instant::now())
    }

    fn record_at(&self, answer: Answer, now: Instant) -> bool {
        if self.min_attempts == 0 {
            return false;
        }
        let mut window = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        window.advance(now, self.slice);
        let newest = window.newest;
        let slice = &mut window.slices[newest];
        slice.0 = slice.0.saturating_add(1);
        if answer == Answer::Failed {
            slice.1 = slice.1.saturating_add(1);
        }
        if window.open {
            return false;
        }
        let (attempts, failures) = window.slices.iter().fold((0u32, 0u32), |(a, f), (sa, sf)| {
            (a.saturating_add(*sa), f.saturating_add(*sf))
        });
        let tripped = attempts >= self.min_attempts
            && f64::from(failures) >= self.failure_ratio * f64::from(attempts);
        if tripped {
            window.open = true;
        }
        tripped
    }

    /// Whether the breaker is open: CCC is failing for everyone.
    pub fn is_open(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open
    }

    /// Closes the breaker and forgets the window: CCC answered a probe.
    pub fn reset(&self) {
        let mut window = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        window.slices = [(0, 0); SLICES];
        window.start = Instant::now();
        window.open = false;
    }
}

impl Window {
    /// Moves the newest slice forward to `now`, emptying the slices it passes.
    fn advance(&mut self, now: Instant, slice: Duration) {
        let passed = now.saturating_duration_since(self.start).as_nanos() / slice.as_nanos();
        if passed == 0 {
            return;
        }
        for _ in 0..passed.min(SLICES as u128) {
            self.newest = (self.newest + 1) % SLICES;
            self.slices[self.newest] = (0, 0);
        }
        // Whole slices only, so each keeps its full length whatever the pace of calls.
        let passed = u32::try_from(passed).unwrap_or(u32::MAX);
        self.start = self
            .start
            .checked_add(slice.saturating_mul(passed))
            .unwrap_or(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(min_attempts: u32, failure_ratio: f64) -> OutageBreaker {
        OutageBreaker::new(&OutageSettings {
            window_ms: 10_000,
            min_attempts,
            failure_ratio,
            max_probe_interval_ms: 15_000,
        })
    }

    #[test]
    fn it_opens_once_failures_dominate_enough_attempts() {
        let b = breaker(10, 0.8);
        let t = Instant::now();
        for _ in 0..9 {
            assert!(!b.record_at(Answer::Failed, t), "fewer than min_attempts");
        }
        assert!(b.record_at(Answer::Failed, t), "the tenth failure opens it");
        assert!(b.is_open());
        assert!(!b.record_at(Answer::Failed, t), "it opens once");
        b.reset();
        assert!(!b.is_open());
    }

    #[test]
    fn answers_keep_it_closed() {
        let b = breaker(10, 0.8);
        let t = Instant::now();
        for i in 0..100 {
            let answer = if i % 4 == 0 {
                Answer::Answered
            } else {
                Answer::Failed
            };
            assert!(!b.record_at(answer, t), "75% failures stay below 80%");
        }
        assert!(!b.is_open());
    }

    #[test]
    fn failures_older_than_the_window_are_forgotten() {
        let b = breaker(10, 0.8);
        let t = Instant::now();
        for _ in 0..9 {
            b.record_at(Answer::Failed, t);
        }
        // Eleven seconds later the nine are out of a ten-second window.
        let later = t + Duration::from_secs(11);
        assert!(!b.record_at(Answer::Failed, later));
        for _ in 0..8 {
            assert!(!b.record_at(Answer::Failed, later));
        }
        assert!(b.record_at(Answer::Failed, later), "ten in the new window");
    }

    #[test]
    fn a_min_attempts_of_zero_switches_it_off() {
        let b = breaker(0, 0.5);
        let t = Instant::now();
        for _ in 0..1000 {
            assert!(!b.record_at(Answer::Failed, t));
        }
        assert!(!b.is_open());
    }
}
