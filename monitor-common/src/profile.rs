//! Per-thread syscall profiles, aggregated in the kernel.
//!
//! The `sys_enter` program counts every syscall of every thread into a
//! [`ThreadProfile`] keyed by thread id. Keying by thread (not process) means
//! only one CPU ever writes an entry at a time, so plain increments are exact
//! without atomics. Counters only grow; the agent keeps the last snapshot of
//! each entry and takes differences (wrapping), so draining never races with
//! counting and nothing is reset.

/// Slots of the per-syscall count array (x86_64 numbers are below 512).
pub const SYSCALL_SLOTS: usize = 512;
/// Hash buckets of consecutive syscall pairs.
pub const PAIR_BUCKETS: usize = 256;

/// Value of the `PROFILES` map (key: thread id).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ThreadProfile {
    /// Process id of the thread.
    pub pid: u32,
    /// Previous syscall number of this thread (for pairs); `u32::MAX` at start.
    pub last: u32,
    /// Total syscalls counted (wrapping).
    pub total: u64,
    /// When the entry was created (boot ns, the thread's first counted
    /// syscall): with the thread id, which thread this is, since thread ids
    /// are reused.
    pub born_ns: u64,
    /// Count per syscall number (numbers >= `SYSCALL_SLOTS` land in the last slot).
    pub counts: [u32; SYSCALL_SLOTS],
    /// Count per [`pair_bucket`] of consecutive syscalls.
    pub pairs: [u32; PAIR_BUCKETS],
}
const _: () =
    assert!(core::mem::size_of::<ThreadProfile>() == 24 + 4 * (SYSCALL_SLOTS + PAIR_BUCKETS));

/// Bucket of the consecutive pair (`prev`, `next`) of syscall numbers.
///
/// A multiplicative hash (Knuth) of the packed pair; both sides call this one
/// function so the agent can name which pairs a bucket may hold.
#[inline(always)]
pub const fn pair_bucket(prev: u32, next: u32) -> usize {
    let packed = (prev & 0xffff) << 16 | (next & 0xffff);
    (packed.wrapping_mul(2_654_435_761) >> 24) as usize % PAIR_BUCKETS
}
