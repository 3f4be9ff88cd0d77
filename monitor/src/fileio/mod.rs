//! File formats with a guarantee, used wherever the agent writes state:
//! [`atomic`] replacement (the model, the status, spool bookkeeping) and
//! [`jsonl`] append and read (the finding log, acknowledgements, history),
//! and size-based [`rotate`]ion of the logs.
//! A leaf: it knows nothing of what the files hold, so the model, the spool
//! and the state directory can all use it without depending on each other.

pub mod atomic;
pub mod jsonl;
pub mod rotate;
