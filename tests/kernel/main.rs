//! Kernel integration tests: the real eBPF programs, loaded into the running
//! kernel, observing processes the tests start themselves. Run as root with
//! `cargo xtask test`.

mod agent;
mod cli;
mod e2e;
mod fleet;
mod output;
mod process;
mod replay;
mod security;
mod verifier;
