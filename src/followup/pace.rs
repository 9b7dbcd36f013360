//! The follow-up's own pace: at most `followup.queries_per_second` record queries per
//! instance from this replica, so polling never eats into what CCC lets the dials do.
//!
//! One start per interval per instance (GCRA without a burst): a query takes the instance's
//! next free start and sleeps until it. Held for microseconds, never across an `await`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub struct Pace {
    interval: Duration,
    next: Mutex<HashMap<String, Instant>>,
}

impl Pace {
    /// `per_second` must be positive (the settings are validated).
    pub fn new(per_second: f64) -> Pace {
        let interval = Duration::try_from_secs_f64(1.0 / per_second).unwrap_or(Duration::ZERO);
        Pace {
            interval,
            next: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for `instance_id`'s next query start.
    pub async fn start(&self, instance_id: &str) {
        let at = {
            let mut next = self
                .next
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            let at = next
                .get(instance_id)
                .copied()
                .filter(|&free| free > now)
                .unwrap_or(now);
            next.insert(instance_id.to_owned(), at + self.interval);
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn queries_start_an_interval_apart_per_instance() {
        let pace = Pace::new(4.0);
        let begin = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..5 {
            pace.start("a").await;
            starts.push(begin.elapsed());
        }
        let expected: Vec<Duration> = (0..5).map(|i| Duration::from_millis(250 * i)).collect();
        assert_eq!(starts, expected);
        // Another instance has its own pace.
        let before = Instant::now();
        pace.start("b").await;
        assert_eq!(before.elapsed(), Duration::ZERO);
    }
}
