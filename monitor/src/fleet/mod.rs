//! A fleet, not a host: what agents share through a NATS JetStream cluster
//! the operators run. Everything here is off unless configured; a host with
//! no cluster works exactly as before.
//!
//! - [`connection`]: where the cluster is and how to prove who we are;
//! - [`facts`]: the novelty facts of findings and what the fleet makes of
//!   them (prevalence, campaigns), with no network;
//! - [`prevalence`]: sharing and reading facts through a key-value bucket;
//! - [`golden`]: one learned baseline published to the cluster's object
//!   store and pulled by identical hosts (`monitor model publish|pull`).
//!
//! Findings reach the cluster through the `nats` sink
//! (`crate::output::nats`), behind the spool like every sink.

pub mod connection;
pub mod facts;
pub mod golden;
pub mod prevalence;
