//! The replay guard: `SignatureNonce`s of authenticated requests, remembered long enough that a
//! replay inside the timestamp window is always caught.
//!
//! A request with `Timestamp` T passes the window check only while the clock is within
//! `window` of T, and T itself was within `window` of the moment the first copy arrived; so a
//! replay can pass the timestamp check for at most `2 × window` after that arrival. Nonces are
//! therefore kept in two generations that rotate every `2 × window`: a nonce lives between
//! `2 × window` and `4 × window`, memory stays bounded by the request rate, and pruning costs
//! nothing per request.
//!
//! Only authenticated requests are recorded (a forged or mis-signed request must not be able to
//! burn a nonce), but every authenticated one is, whatever happens next: the worker proves that
//! an unanswered request reached the gateway by replaying it and getting `SignatureNonceUsed`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

pub(crate) struct NonceCache {
    /// Generation age after which it is demoted; `2 × timestamp window`.
    rotate_every: Duration,
    current: HashSet<String>,
    previous: HashSet<String>,
    current_since: Instant,
}

impl NonceCache {
    pub(crate) fn new(timestamp_window: Duration, now: Instant) -> Self {
        Self {
            rotate_every: timestamp_window.saturating_mul(2),
            current: HashSet::new(),
            previous: HashSet::new(),
            current_since: now,
        }
    }

    /// Records `nonce`; `false` if it was already recorded (a replay).
    pub(crate) fn check_and_insert(&mut self, nonce: &str, now: Instant) -> bool {
        if now.saturating_duration_since(self.current_since) >= self.rotate_every {
            self.previous = std::mem::take(&mut self.current);
            self.current_since = now;
        }
        if self.previous.contains(nonce) || self.current.contains(nonce) {
            return false;
        }
        self.current.insert(nonce.to_owned());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_is_caught_until_two_windows_have_passed() {
        let window = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut cache = NonceCache::new(window, t0);
        assert!(cache.check_and_insert("a", t0));
        assert!(!cache.check_and_insert("a", t0));
        // One rotation later it still lives in the previous generation.
        assert!(!cache.check_and_insert("a", t0 + window * 2));
        assert!(!cache.check_and_insert("a", t0 + window * 3));
        // After the second rotation it is forgotten (and could not pass the timestamp check).
        assert!(cache.check_and_insert("a", t0 + window * 4));
        assert!(cache.check_and_insert("b", t0 + window * 4));
    }
}
