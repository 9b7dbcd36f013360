//! Per-callee fault queues.
//!
//! Faults are keyed by `Callee` (exactly as sent in the request) so that concurrent tests, each
//! dialing its own number, cannot steal each other's faults. A queue entry is a fault and how many
//! more requests it applies to; entries are used in the order they were injected.

use std::collections::{HashMap, VecDeque};

use super::Fault;

#[derive(Debug, Default)]
pub(crate) struct FaultQueues {
    by_callee: HashMap<String, VecDeque<(Fault, u32)>>,
}

impl FaultQueues {
    /// Queues `times` occurrences of `fault` after whatever is already queued for `callee`.
    pub(crate) fn inject(&mut self, callee: &str, fault: Fault, times: u32) {
        if times == 0 {
            return;
        }
        self.by_callee
            .entry(callee.to_owned())
            .or_default()
            .push_back((fault, times));
    }

    /// Takes the next fault for `callee` only if it is `fault`.
    pub(crate) fn take_if(&mut self, callee: &str, fault: Fault) -> bool {
        let next = self
            .by_callee
            .get(callee)
            .and_then(|queue| queue.front())
            .map(|(f, _)| *f);
        next == Some(fault) && self.take(callee).is_some()
    }

    /// Takes the next fault for `callee`, if any.
    pub(crate) fn take(&mut self, callee: &str) -> Option<Fault> {
        let queue = self.by_callee.get_mut(callee)?;
        let (fault, left) = queue.front_mut()?;
        let fault = *fault;
        *left -= 1;
        if *left == 0 {
            queue.pop_front();
            if queue.is_empty() {
                // Keep the map small so the common no-fault lookup stays cheap.
                self.by_callee.remove(callee);
            }
        }
        Some(fault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_consumed_in_order_per_callee() {
        let mut q = FaultQueues::default();
        q.inject("1", Fault::Throttle, 2);
        q.inject("1", Fault::Slow, 1);
        q.inject("2", Fault::InternalError, 0);
        assert_eq!(q.take("2"), None);
        assert_eq!(q.take("1"), Some(Fault::Throttle));
        assert_eq!(q.take("1"), Some(Fault::Throttle));
        assert_eq!(q.take("1"), Some(Fault::Slow));
        assert_eq!(q.take("1"), None);
        assert!(q.by_callee.is_empty());
    }
}
