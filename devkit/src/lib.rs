//! What dialex-worker is developed and measured with, kept out of the shipped worker: the CCC
//! simulator (a gateway as strict as the real one), the harness the tests and the demo run the
//! worker in, the demo, and the benchmark against a bare floor.
//!
//! ```text
//! simulator  the DialEx gateway: signatures, nonces, faults, a log of executed dials
//! harness    a simulator, a fresh RabbitMQ topology and workers (in-process or as processes)
//! demo       six sample requests through a harness, their outcomes printed
//! bench      the worker against the floor, both as processes of their own
//! vectors    published signing cases, for the signer's and the verifier's tests
//! ```

pub mod bench;
pub mod demo;
pub mod harness;
pub mod simulator;
pub mod vectors;
