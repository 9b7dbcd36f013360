//! What the stages decide, as values: a [`Verdict`] for a claimed request, and the [`Step`]
//! every path ends in. Nothing here does anything; [`super::execute`] carries a step out.

use jiff::Timestamp;

use super::HaltCause;
use crate::ccc::DialFailure;
use crate::followup::FollowupJob;
use crate::outcome::{DeferReason, OutcomeEvent};
use crate::store::StoreError;

/// The last word on a delivery: what to publish, and how to settle it.
#[derive(Debug)]
pub enum Step {
    /// Publish the request's terminal event (recorded first, where there is a record), then
    /// acknowledge.
    Finish(Finish),
    /// Not now: to the wait queue whose delay fits, back by itself to be evaluated again.
    Defer(Deferral),
    /// Back to the request queue whole, as a fresh copy that does not count towards the
    /// delivery limit: the worker is pausing and the request is not at fault.
    GiveBack,
    /// Back to the queue as a redelivery, which counts towards the delivery limit: this
    /// request failed in a way that may pass, and parks on its last allowed delivery.
    Redeliver,
    /// To the dead-letter exchange with a reason, after its event (if any) is published.
    Park(Parking),
}

/// A terminal event and the bytes to publish (for a stored result, the bytes first
/// published, so the re-published event is the same to the byte).
#[derive(Debug)]
pub struct Finish {
    pub event: OutcomeEvent,
    pub json: Vec<u8>,
    /// The follow-up job to schedule after the event, for a `dialed` request when the
    /// follow-up is on.
    pub followup: Option<FollowupJob>,
}

impl Finish {
    pub fn new(event: OutcomeEvent, json: Vec<u8>) -> Finish {
        Finish {
            event,
            json,
            followup: None,
        }
    }
}

/// A request that waits outside the process until `until`.
#[derive(Debug)]
pub struct Deferral {
    pub reason: DeferReason,
    pub until: Timestamp,
    /// DialEx attempts made so far, across hops.
    pub attempts: u32,
    /// The `deferred` event, the first time the request waits for this reason.
    pub announce: Option<OutcomeEvent>,
    /// The start the limiter booked for it (`x-dialex-booking`), signed: it comes back to
    /// take that start without counting the rate again.
    pub booking: Option<String>,
}

/// A request that cannot be handled, parked for an operator.
#[derive(Debug)]
pub struct Parking {
    /// The reason code (`x-dialex-reason`).
    pub reason: &'static str,
    /// A sentence for the operator (`x-dialex-detail`).
    pub detail: String,
    /// The terminal event, when the request id is known.
    pub event: Option<OutcomeEvent>,
}

/// What a stage decided for a claimed request; [`super::Pipeline::conclude`] turns it into a
/// [`Step`], giving back or keeping what the request holds.
#[derive(Debug)]
pub enum Verdict {
    /// A terminal outcome, recorded before it is published.
    Resolve(OutcomeEvent),
    /// Not now: everything held is given back.
    Wait(Deferral),
    /// The store failed while deciding.
    StoreFailed(StoreError),
    /// CCC refused the worker (a systemic answer).
    Refused(DialFailure),
    /// Every request would meet the same fault (CCC is down): everything held is given back,
    /// the worker pauses, and the request goes back whole.
    Pause(HaltCause),
}
