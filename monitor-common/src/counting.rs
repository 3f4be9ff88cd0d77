//! Per-thread syscall counts, aggregated in the kernel.
//!
//! The `sys_enter` program counts every syscall of every thread into a
//! [`ThreadCounts`] keyed by thread id. Keying by thread (not process) means
//! only one CPU ever writes an entry at a time, so plain increments are exact
//! without atomics. Counters only grow; the agent keeps the last snapshot of
//! each entry and takes differences (wrapping), so draining never races with
//! counting and nothing is reset.

/// Slots of the per-syscall count array (x86_64 numbers are below 512).
pub const SYSCALL_SLOTS: usize = 512;
/// Hash buckets of consecutive syscall pairs.
pub const PAIR_BUCKETS: usize = 256;

/// Value of the `SYSCALL_COUNTS` map (key: thread id).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ThreadCounts {
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
    assert!(core::mem::size_of::<ThreadCounts>() == 24 + 4 * (SYSCALL_SLOTS + PAIR_BUCKETS));

/// Bucket of the consecutive pair (`prev`, `next`) of syscall numbers.
///
/// A multiplicative hash (Knuth) of the packed pair; both sides call this one
/// function so the agent can name which pairs a bucket may hold.
#[inline(always)]
pub const fn pair_bucket(prev: u32, next: u32) -> usize {
    let packed = (prev & 0xffff) << 16 | (next & 0xffff);
    (packed.wrapping_mul(2_654_435_761) >> 24) as usize % PAIR_BUCKETS
}

impl ThreadCounts {
    /// The counts with no calls yet, of a thread of process `pid`.
    pub const fn empty(pid: u32, born_ns: u64) -> Self {
        Self {
            pid,
            last: u32::MAX,
            total: 0,
            born_ns,
            counts: [0; SYSCALL_SLOTS],
            pairs: [0; PAIR_BUCKETS],
        }
    }

    /// Adds a batch's calls, and the consecutive pairs they make with this
    /// counts's last syscall and among themselves. The kernel adds batches
    /// to live threads' entries with it, and the agent replays the batch of
    /// a thread that exited before it had an entry: one definition, so the
    /// two cannot count differently.
    #[inline(always)]
    pub fn add_batch(&mut self, batch: &SyscallBatch) {
        let mut last = self.last;
        for i in 0..BATCH_ENTRIES {
            if i as u32 >= batch.len {
                break;
            }
            let nr = u32::from(batch.nr[i]);
            let repeats = u32::from(batch.repeats[i]);
            let slot = (nr as usize) & (SYSCALL_SLOTS - 1);
            self.counts[slot] = self.counts[slot].wrapping_add(repeats);
            if last != u32::MAX {
                let bucket = pair_bucket(last, nr);
                self.pairs[bucket] = self.pairs[bucket].wrapping_add(1);
            }
            if repeats > 1 {
                let bucket = pair_bucket(nr, nr);
                self.pairs[bucket] = self.pairs[bucket].wrapping_add(repeats - 1);
            }
            last = nr;
        }
        self.last = last;
        self.total = self.total.wrapping_add(u64::from(batch.calls));
    }
}

/// Distinct consecutive syscalls a [`SyscallBatch`] holds (a power of two).
/// Large enough for the whole life of most short-lived processes
/// (`/bin/true` makes about 40 calls), which then never need a map entry.
pub const BATCH_ENTRIES: usize = 64;

/// Calls after which a batch is added to the thread's counts even though
/// the thread goes on: a window's counts lag by at most this many calls of
/// a running thread.
pub const BATCH_FLUSH: u32 = 256;

/// Calls a thread made on one CPU that are not yet in its [`ThreadCounts`],
/// in order: entry `i` is `repeats[i]` consecutive calls of `nr[i]`. Each
/// CPU keeps one, for the thread it is running.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SyscallBatch {
    /// The address of the thread's saved user registers (0 for none): the
    /// top of its kernel stack, unique among live threads, and `sys_enter`'s
    /// first argument, so recognising the thread costs no helper call (this
    /// kernel does not inline the task helpers). Cleared when the thread
    /// leaves the CPU or exits: a thread given its stack later must not
    /// continue its batch. Zero in records.
    pub regs: u64,
    /// The thread id.
    pub tid: u32,
    /// Its process, to recognise a reused thread id.
    pub pid: u32,
    /// Entries in use (at most [`BATCH_ENTRIES`]).
    pub len: u32,
    /// Calls in all entries (the sum of `repeats`, at most [`BATCH_FLUSH`]).
    pub calls: u32,
    /// Syscall slot of each entry (below [`SYSCALL_SLOTS`]); neighbouring
    /// entries differ.
    pub nr: [u16; BATCH_ENTRIES],
    /// Calls of each entry, at least 1.
    pub repeats: [u16; BATCH_ENTRIES],
}
const _: () = assert!(core::mem::size_of::<SyscallBatch>() == 24 + 4 * BATCH_ENTRIES);
const _: () = assert!(SYSCALL_SLOTS <= u16::MAX as usize && BATCH_FLUSH < u16::MAX as u32);
