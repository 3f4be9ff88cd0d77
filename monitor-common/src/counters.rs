//! Indices into the per-CPU `COUNTERS` array the kernel programs keep.
//!
//! Loss is counted where it happens, in the kernel, so that the agent can
//! report it next to what it did receive (a failed ring-buffer reserve is
//! visible only to the program that tried it). The agent sums the per-CPU
//! slots. Append-only: a retired index stays reserved.

use crate::records::kind;

/// Ring-buffer reserve failed (buffer full): `RINGBUF_FULL + kind`.
pub const COUNTER_RINGBUF_FULL: u32 = 0;
/// A user-memory read failed (page not present or bad pointer) while building
/// a record; the record was still sent with the field marked: `USER_FAULT + kind`.
pub const COUNTER_USER_FAULT: u32 = 16;
/// A kernel-memory read failed while building a record: `KERNEL_FAULT + kind`.
pub const COUNTER_KERNEL_FAULT: u32 = 32;
/// A new thread could not get a syscall-counts slot (map full): its
/// syscalls went uncounted.
pub const COUNTER_COUNTS_MAP_FULL: u32 = 48;
/// Syscalls that could not be counted: the thread had no counts slot (then
/// `COUNTER_COUNTS_MAP_FULL` counts too), or a batch of its calls reached
/// its counts after the thread had exited or its id had been reused (see
/// `monitor-ebpf/src/counting.rs`).
pub const COUNTER_UNCOUNTED_SYSCALLS: u32 = 49;
/// A syscall's entry arguments could not be stashed for its exit (map full):
/// that event was lost.
pub const COUNTER_PENDING_MAP_FULL: u32 = 50;
/// A syscall exit found no stashed entry (the agent attached mid-call, or the
/// stash was lost): that event was lost.
pub const COUNTER_PENDING_MISSING: u32 = 51;
/// Paths truncated at the capture bounds (not loss: the record says so).
pub const COUNTER_PATH_TRUNCATED: u32 = 52;
/// File records a process was over its budget for (`FILE_BUDGET`): not
/// written, counted per process in the map.
pub const COUNTER_RATE_LIMITED: u32 = 53;
/// A record built in a per-CPU area (see [`crate::packing`]) was not sent:
/// another program took the area over while this one was preempted, on a
/// kernel that runs programs preemptibly. `BUILD_TAKEN + kind`.
pub const COUNTER_BUILD_TAKEN: u32 = 64;
/// Number of counter slots.
pub const COUNTER_SLOTS: u32 = 80;

const _: () = assert!(kind::COUNT <= 16);

/// Stable name of a counter slot, or `None` for an unused slot.
pub fn counter_name(index: u32) -> Option<(&'static str, Option<&'static str>)> {
    let kind_of = |base: u32| kind::name((index - base) as u8);
    Some(match index {
        0..16 => ("ringbuf_full", Some(kind_of(COUNTER_RINGBUF_FULL))),
        16..32 => ("user_read_fault", Some(kind_of(COUNTER_USER_FAULT))),
        32..48 => ("kernel_read_fault", Some(kind_of(COUNTER_KERNEL_FAULT))),
        COUNTER_COUNTS_MAP_FULL => ("counts_map_full", None),
        COUNTER_UNCOUNTED_SYSCALLS => ("uncounted_syscalls", None),
        COUNTER_PENDING_MAP_FULL => ("pending_map_full", None),
        COUNTER_PENDING_MISSING => ("pending_missing", None),
        COUNTER_PATH_TRUNCATED => ("path_truncated", None),
        COUNTER_RATE_LIMITED => ("rate_limited", Some("file")),
        64..80 => ("build_taken", Some(kind_of(COUNTER_BUILD_TAKEN))),
        _ => return None,
    })
}
