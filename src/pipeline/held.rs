//! What a claimed request holds, in one guard: the claim, the callee's cooldown slot and
//! daily count, and the limiter permit.
//!
//! [`super::Pipeline::conclude`] decides, once, what is kept and what is given back. Dropped
//! without that (a panic), the permit goes back by itself, the callee's slot ends with its
//! window, and the claim's lease makes the request `unknown` rather than dialed again.

use std::time::{Duration, Instant};

use crate::gates::limits::Permit;
use crate::store::ClaimToken;

/// The callee gate's take, kept or given back once the dial's fate is known.
#[derive(Debug)]
pub(super) struct CalleeHold {
    /// The keyed hash of instance and callee.
    pub key: String,
    /// The cooldown slot, with its window.
    pub cooldown: Option<Duration>,
    /// The day whose count was reserved.
    pub day: Option<String>,
}

#[derive(Debug)]
pub(super) struct Held {
    claim: ClaimToken,
    claimed_at: Instant,
    pub callee: Option<CalleeHold>,
    pub permit: Option<Permit>,
}

impl Held {
    pub fn new(claim: ClaimToken) -> Held {
        Held {
            claim,
            claimed_at: Instant::now(),
            callee: None,
            permit: None,
        }
    }

    /// When the claim was taken, by this process's clock.
    pub fn claimed_at(&self) -> Instant {
        self.claimed_at
    }

    pub fn claim(&self) -> &ClaimToken {
        &self.claim
    }

    /// Gives the limiter permit back, if one is held.
    pub async fn release_permit(&mut self) {
        if let Some(permit) = self.permit.take() {
            permit.release().await;
        }
    }

    pub fn into_claim(self) -> ClaimToken {
        self.claim
    }
}
