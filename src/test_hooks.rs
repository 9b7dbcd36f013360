//! Faults a test triggers through a request header (`x-dialex-test-hook`), compiled only with
//! the `test-hooks` feature: the validator catches every bad body, so a message that breaks the
//! worker itself has to be made on purpose.
//!
//! - `panic`: handling the delivery panics, every time;
//! - `abort`: the process aborts, as an out-of-memory kill or a segfault would end it.

use lapin::types::AMQPValue;

use crate::amqp::Incoming;

pub const HOOK_HEADER: &str = "x-dialex-test-hook";

pub fn fire(incoming: &Incoming) {
    let hook = incoming
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(HOOK_HEADER).cloned());
    let Some(AMQPValue::LongString(hook)) = hook else {
        return;
    };
    match hook.as_bytes() {
        b"panic" => panic!("test hook: this request makes the handler panic"),
        b"abort" => std::process::abort(),
        _ => {}
    }
}
