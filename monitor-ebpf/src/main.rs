//! Kernel side of monitor: tracepoint and BTF-tracepoint programs.
//!
//! Every program is a thin entry point that calls a `try_*` function and
//! ignores its error: the error paths have already counted what they lost in
//! `COUNTERS` (see `monitor_common::counters`). Kernel structure offsets and
//! settings come from read-only globals the agent fills at load time
//! (`monitor_common::KernelOffsets`, `ProbeConfig`).
#![no_std]
#![no_main]

mod agent_objects;
mod build;
mod counting;
mod exits;
mod fds;
mod files;
mod iouring;
mod kernel;
mod lifecycle;
mod memory;
mod net;
mod pending;
mod recent;
mod security;
mod vfs;

/// A reachable panic would be an infinite loop, which the verifier rejects:
/// a program that could panic fails to load instead of misbehaving.
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL: required by the probe-read and task helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
