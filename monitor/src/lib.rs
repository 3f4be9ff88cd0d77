//! monitor: a Linux endpoint agent that learns how a host behaves, from
//! inside the kernel, and reports what deviates — as explained JSON events.
//!
//! The crate is organised along the data flow (see `docs/architecture.md`):
//!
//! - [`kernel`]: loads the eBPF programs (offsets from BTF), attaches them,
//!   reads the ring buffer ([`kernel::source`]) and the loss counters;
//! - [`event`]: the one event model, and the decoder that turns raw records
//!   into it at the edge;
//! - [`process`]: the process table (seeded from `/proc`, ancestry);
//! - [`counts`]: syscall counts windows from the in-kernel counters;
//! - [`capture`]: all of the above as one live stream of events;
//! - [`agent`]: `monitor run`, as stages joined by [`channel`]s;
//! - [`output`]: JSON Lines and the other sinks;
//! - [`fleet`]: what agents share through a NATS JetStream cluster.
#![deny(missing_docs)]

pub mod agent;
pub mod api;
pub mod capture;
pub mod channel;
pub mod cli;
pub mod config;
pub mod detect;
pub mod display;
pub mod drill;
pub mod error;
pub mod event;
pub mod fileio;
pub mod fleet;
pub mod hash;
pub mod kernel;
pub mod model;
pub mod output;
pub mod process;
pub mod report;
pub mod sched;
pub mod secret;
pub mod sensitive;
pub mod shutdown;
pub mod state;
pub mod syscall_counts;
pub mod syscalls;
pub mod units;

/// Re-exported for embedders and tests that drive sinks directly.
pub use tokio_util::sync::CancellationToken;
