//! Writing events and findings out: JSON Lines, OCSF records, the spool,
//! and the sinks that deliver from it.

pub mod dead_letters;
pub mod jsonl;
pub mod nats;
pub mod ocsf;
pub mod shorten;
pub mod sink_config;
pub mod sinks;
pub mod spool;
pub mod spool_format;
pub mod syslog;
