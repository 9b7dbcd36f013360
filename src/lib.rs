//! dialex-worker: turns "please call this customer" messages on RabbitMQ into Alibaba Cloud
//! Call Center `DialEx` calls, and publishes one outcome event per request.
//!
//! One request's path, each stage a module that returns a decision:
//!
//! ```text
//! intake      a delivery from dial.requests (manual ack, bounded prefetch)
//!   validate  the body into a DialRequest, or a `rejected` outcome and a dead letter
//!   dedup     claim the request_id in the store, or answer from what it holds
//!   gates     expiry, business hours and not_before, do-not-call, callee cooldown and daily
//!             cap, concurrency and pacing; or wait on a deferral tier (defer)
//!   dial      DialEx, retrying only what cannot have rung anyone
//!   record    the result into the store, before anything is published
//!   outcome   the event, published and confirmed
//! settle      ack (or give back) only then
//! ```
//!
//! [`pipeline`] holds that path (`dedup`, `gates`, `record` are its stages; `execute` is the
//! one place that talks to the broker); [`intake`] feeds it and [`settle`] ends it.
//! [`startup`] wires the stages from [`config::Settings`] and supervises the broker session;
//! [`backend`] opens what `store.backend` names, once; [`app`] is the worker built once, for
//! `run`, the tests, the demo and the bench.
//!
//! Edges, behind small traits where the pipeline meets them: [`amqp`] (connections, topology,
//! the confirmed publisher; [`pipeline::Broker`]), [`ccc`] (the client, answers and their
//! classes; [`ccc::CccClient`]), [`store`] (dial records, cooldowns, counters; embedded or
//! Redis; [`store::DialRecords`] and [`store::CalleeState`]; [`store::redis`] also holds the
//! Redis side of the limiter and of the do-not-call list, behind [`gates::limits::Limiter`] and
//! [`gates::dnc::SharedList`]). Around them: [`gates`] (the checks before a dial), [`dial`],
//! [`defer`] (wait tiers), [`outage`] (the breaker that pauses the worker when CCC fails for
//! everyone), [`outcome`], [`validate`], [`phone`], [`metrics`], [`health`] (`/healthz`,
//! `/readyz`, `/metrics`), [`telemetry`] (logs), [`accept`] (the accept loop of the small HTTP
//! servers), [`credentials`] (the provider chain and the refreshed source every request signs
//! with), [`signature`] (Alibaba Cloud's RPC signature, for CCC and STS alike), and [`dead`] (`dialex-worker dead`: the dead-letter queue, for
//! operators). Private: `tls` (the CA files), `test_hooks` (faults for tests, behind a
//! feature).
//!
//! With `[followup] enabled`, a second, smaller path follows each dialed request: [`followup`]
//! decides from CCC's call records whether the customer answered, and `intake::followups`
//! consumes its jobs and publishes the call-result events.
//!
//! The CCC simulator, the test harness, the demo and the bench are the `dialex-devkit` crate's.

pub mod accept;
pub mod amqp;
pub mod app;
pub mod backend;
pub mod ccc;
pub mod config;
pub mod credentials;
pub mod dead;
pub mod defer;
pub mod dial;
pub mod followup;
pub mod gates;
pub mod health;
pub mod intake;
pub mod metrics;
pub mod outage;
pub mod outcome;
pub mod phone;
pub mod pipeline;
pub mod settle;
pub mod signature;
pub mod startup;
pub mod store;
pub mod telemetry;
#[cfg(feature = "test-hooks")]
mod test_hooks;
mod tls;
pub mod validate;
