//! The halt: how a fault that every request would hit stops consumption, and why.

use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio_util::sync::CancellationToken;

use crate::ccc::DialFailure;
use crate::store::StoreError;

/// Why the worker stopped consuming.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HaltCause {
    /// CCC refused the worker itself (credentials, signature, clock).
    #[error("{}", refusal(.0))]
    Ccc(DialFailure),
    /// Most `DialEx` attempts across requests failed retryably: CCC is down for everyone.
    #[error("CCC fails for everyone (the last answer: {}); waiting until it answers again", .0.code())]
    Outage(DialFailure),
    /// The dial-record store failed: without it no request can be dialed safely.
    #[error("the dial-record store failed: {0}")]
    Store(StoreError),
    /// The broker did not take an outcome, a deferral or a returned request: until it does,
    /// nothing more is dialed (its outcome could not be delivered).
    #[error("RabbitMQ does not take the worker's publishes: {0}")]
    Broker(String),
}

/// Why CCC cannot be called, and what to check.
fn refusal(failure: &DialFailure) -> String {
    let message = failure.message().unwrap_or("no message");
    if failure.code() == "credentials_unavailable" {
        // Nothing was sent: the worker has no credentials to sign with.
        format!(
            "no credentials to sign with: {message}; {}",
            failure.remedy()
        )
    } else {
        format!(
            "CCC answered {}: {message}; {}",
            failure.code(),
            failure.remedy()
        )
    }
}

/// Raised when the worker must stop consuming because every request would fail the same
/// way; the cause is kept for the log and the exit message. Reset when consumption resumes.
#[derive(Default)]
pub struct Halt {
    state: Mutex<(CancellationToken, Option<HaltCause>)>,
}

impl Halt {
    fn state(&self) -> MutexGuard<'_, (CancellationToken, Option<HaltCause>)> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Raises the halt; the first cause is the one kept.
    pub fn trigger(&self, cause: HaltCause) {
        let mut state = self.state();
        if state.1.is_none() {
            tracing::error!(error = %cause, "stopping consumption");
            state.1 = Some(cause);
        }
        state.0.cancel();
    }

    /// Cancelled once the halt is raised (a fresh token after [`Halt::reset`]).
    pub fn token(&self) -> CancellationToken {
        self.state().0.clone()
    }

    pub fn is_raised(&self) -> bool {
        self.state().0.is_cancelled()
    }

    pub fn cause(&self) -> Option<HaltCause> {
        self.state().1.clone()
    }

    /// Clears the halt before consuming again.
    pub fn reset(&self) {
        *self.state() = (CancellationToken::new(), None);
    }
}
