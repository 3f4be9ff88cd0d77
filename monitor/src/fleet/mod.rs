//! A fleet, not a host: what agents share through a NATS JetStream cluster
//! the operators run. Everything here is off unless configured; a host with
//! no cluster works exactly as before.
//!
//! - [`connection`]: where the cluster is and how to prove who we are;
//! - [`golden`]: one learned baseline published to the cluster's object
//!   store and pulled by identical hosts (`monitor model publish|pull`).
//!
//! Findings reach the cluster through the `nats` sink
//! (`crate::output::nats`), behind the spool like every sink.

pub mod connection;
pub mod golden;
