//! Faults a test triggers through a request header (`x-dialex-test-hook`), compiled only with
//! the `test-hooks` feature: the validator catches every bad body, so a message that breaks the
//! worker itself has to be made on purpose.
//!
//! - `panic`: handling the delivery panics, every time;
//! - `abort`: the process aborts, as an out-of-memory kill or a segfault would end it;
//! - `late:<ms>`: every delivery of it back from a wait queue is handled `<ms>` late, as a
//!   busy broker handing messages back late would deliver it;
//! - `abort-after-result` (on a follow-up job): the process aborts once the job's call result
//!   is recorded and before it is published, on the job's first delivery only.

use std::time::Duration;

use lapin::types::AMQPValue;

use crate::amqp::Incoming;

pub const HOOK_HEADER: &str = "x-dialex-test-hook";

/// Fires the request's hook, if it has one; returns how long to hold the delivery first.
pub fn fire(incoming: &Incoming) -> Option<Duration> {
    let hook = hook(incoming)?;
    match hook.as_bytes() {
        b"panic" => panic!("test hook: this request makes the handler panic"),
        b"abort" => std::process::abort(),
        late => std::str::from_utf8(late)
            .ok()?
            .strip_prefix("late:")?
            .parse()
            .ok()
            .filter(|_| incoming.deferred_reason.is_some())
            .map(Duration::from_millis),
    }
}

/// Fires a follow-up job's `abort-after-result` hook, between recording its result and
/// publishing it.
pub fn after_result(incoming: &Incoming) {
    if !incoming.redelivered
        && hook(incoming).is_some_and(|hook| hook.as_bytes() == b"abort-after-result")
    {
        std::process::abort();
    }
}

fn hook(incoming: &Incoming) -> Option<lapin::types::LongString> {
    let hook = incoming
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(HOOK_HEADER).cloned());
    match hook {
        Some(AMQPValue::LongString(hook)) => Some(hook),
        _ => None,
    }
}
