//! The follow-up: did the customer answer? One call-result event per dialed request.
//!
//! `dialed` says CCC accepted the call; how it went (answered, no answer, busy, voicemail,
//! how long) is in CCC's call detail records minutes later. API 2017-07-05 cannot look a
//! record up by `TaskId`, so the follow-up polls the records of the request's number around
//! its dial time and correlates ([`matching`]), then publishes the result ([`result`]): one
//! `dial.result.<disposition>` event per request, the same one however often it is worked
//! out again.

pub mod matching;
pub mod result;
