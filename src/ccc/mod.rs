//! The Alibaba Cloud Call Center edge: request signing, the `DialEx` client, the typed answers
//! and their classification. (The gateway's simulator is the devkit's.)
//!
//! The pipeline sees only [`CccClient`], [`DialParams`], [`DialAccepted`] and [`DialFailure`];
//! the follow-up sees [`CallRecords`] and the [`records`] types: nothing of HTTP leaks past this
//! module.

pub mod client;
pub mod records;
pub mod response;
pub mod scrub;
mod settings;

pub use client::{ClientBuildError, HttpCccClient};
pub use records::{CallDetailRecord, CallEnding, RecordPage, RecordQuery};
pub use response::{ApiError, Classifier, DialAccepted, DialFailure, ErrorClass};
pub use settings::CccSettings;

use std::future::Future;

/// The business parameters of one `DialEx` call, borrowed from a validated request.
#[derive(Clone, Copy)]
pub struct DialParams<'a> {
    pub instance_id: &'a str,
    pub caller: &'a str,
    pub callee: &'a str,
    /// `"0"` (IVR), `"1"` (agent) or `"2"` (skill group).
    pub answer_mode: &'static str,
    pub rout_point: &'a str,
    pub provider: Option<&'a str>,
}

/// `DialEx` over the wire. Every attempt is signed afresh ([`CccClient::sign`]: new nonce and
/// timestamp); [`CccClient::send`] may send the very same signed request twice, which is how an
/// ambiguous send is resolved without risking a second call: the gateway executes a nonce at
/// most once. Retrying is the caller's decision, made from the failure's class.
pub trait CccClient: Send + Sync + 'static {
    /// One signed request, ready to send (and to send again unchanged).
    type Signed: Send + Sync;

    fn sign(&self, params: &DialParams<'_>) -> Self::Signed;

    fn send(
        &self,
        signed: &Self::Signed,
    ) -> impl Future<Output = Result<DialAccepted, DialFailure>> + Send;

    /// Checks that CCC answers and accepts the worker itself (credentials, signature, clock)
    /// without placing a call. `Err` carries the failure while it does not: a refusal of the
    /// worker, or a gateway that fails (503, 500, unreachable).
    fn probe(&self) -> impl Future<Output = Result<(), DialFailure>> + Send;
}

/// CCC's call records, read after a dial to learn how the call went (see
/// [`crate::followup`]). Queries only: asking again is always safe.
pub trait CallRecords: Send + Sync + 'static {
    /// One page of `ListCallDetailRecords`.
    fn list_call_records(
        &self,
        query: &RecordQuery<'_>,
    ) -> impl Future<Output = Result<RecordPage, DialFailure>> + Send;

    /// How one call ended (`ListCallEventDetailByContactId`).
    fn call_ending(
        &self,
        instance_id: &str,
        contact_id: &str,
    ) -> impl Future<Output = Result<CallEnding, DialFailure>> + Send;
}
