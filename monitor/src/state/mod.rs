//! Everything the agent keeps on disk in its state directory, and the one
//! place that knows where each file lives:
//!
//! - [`paths`]: the file names, the directory's creation (0700) and the lock
//!   that keeps a second agent out;
//! - [`findings`]: the local finding log and acknowledgements;
//! - [`history`]: the time series the report draws.
//!
//! The spool (`output::spool`) and the model file (`model::persist`) keep
//! their own formats, in files these paths name. How files are written
//! atomically or as JSON Lines is `crate::fileio`, a leaf below the model
//! and the spool, which this module's logs depend on.

pub mod findings;
pub mod history;
pub mod paths;
