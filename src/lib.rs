//! dialex-worker: turns "please call this customer" messages on RabbitMQ into Alibaba Cloud
//! Call Center `DialEx` calls, and publishes one outcome event per request.
//!
//! The pipeline, one module per stage:
//!
//! ```text
//! intake -> validate -> dial -> outcome (publish, confirmed) -> settle (ack)
//! ```
//!
//! [`pipeline`] wires the stages for one request; [`startup`] builds the whole worker from
//! [`config::Settings`]. Adapters sit at the edges: [`amqp`] (connections, topology, confirmed
//! publisher) and [`ccc`] (signing, client, answers). The stages in the middle speak
//! domain types ([`validate::DialRequest`], [`outcome::OutcomeEvent`], [`dial::DialResult`]).

pub mod accept;
pub mod amqp;
pub mod app;
pub mod ccc;
pub mod config;
pub mod defer;
pub mod dial;
pub mod gates;
pub mod health;
pub mod intake;
pub mod metrics;
pub mod outcome;
pub mod phone;
pub mod pipeline;
mod redis_conn;
pub mod settle;
pub mod startup;
pub mod store;
pub mod telemetry;
#[cfg(feature = "test-hooks")]
mod test_hooks;
mod tls;
pub mod validate;
