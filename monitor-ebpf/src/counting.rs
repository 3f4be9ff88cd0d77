//! Per-thread syscall counting on `raw_syscalls:sys_enter`.
//!
//! The hot path of the whole agent: it runs on every syscall of every
//! thread. A hash lookup of the thread's [`SYSCALL_COUNTS`] entry on every call
//! was most of its cost, so each CPU keeps the recent calls of the thread it
//! is running in a per-CPU slot ([`BATCHES`]): up to [`BATCH_ENTRIES`]
//! distinct consecutive syscalls, each with its repeats. A call is an
//! increment or an append there, with no helper call and no hash lookup. The
//! batch is added to the thread's counts in one lookup when the thread
//! leaves the CPU (`sched_switch`), when it holds [`BATCH_FLUSH`] calls or
//! [`BATCH_ENTRIES`] entries, and when the thread exits. A batch therefore
//! never outlives its thread's turn on the CPU: calls cannot be stranded on
//! a CPU the thread has left. Every call is counted; a window may see up to
//! `BATCH_FLUSH` of a running thread's calls one window late. A thread that
//! exits within its first batch (most short-lived processes) never gets an
//! entry: its exit sends the batch itself.

use aya_ebpf::{
    helpers::generated::{bpf_get_current_task_btf, bpf_ktime_get_boot_ns, bpf_task_pt_regs},
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, PerCpuArray},
    programs::BtfTracePointContext,
};
use monitor_common::{
    BATCH_ENTRIES, BATCH_FLUSH, COUNTER_COUNTS_MAP_FULL, COUNTER_UNCOUNTED_SYSCALLS, SYSCALL_SLOTS,
    SyscallBatch, ThreadCounts,
};

use crate::kernel::{config, configured, count, count_by, current_ids, load, off};

/// Thread id -> counters. An entry is created when a thread's first batch
/// is added, by the thread itself, and removed by `sched_process_exit`. Not
/// preallocated: memory follows the number of live threads. The agent may
/// resize it at load time.
#[map]
pub static SYSCALL_COUNTS: HashMap<u32, ThreadCounts> =
    HashMap::with_max_entries(16384, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// One all-zero counts, never written: the source for inserts (the counts
/// does not fit on the 512-byte stack).
#[map]
static ZERO_COUNTS: Array<ThreadCounts> = Array::with_max_entries(1, 0);

/// One [`SyscallBatch`] per CPU.
#[map]
static BATCHES: PerCpuArray<SyscallBatch> = PerCpuArray::with_max_entries(1, 0);

/// `sys_enter(regs, id)`: counts the syscall, and hands watched ones to the
/// security sensors.
#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter(ctx: BtfTracePointContext) -> i32 {
    if !configured() {
        return 0;
    }
    let regs: usize = ctx.arg(0);
    let id: i64 = ctx.arg(1);
    if config!(counts_enabled) != 0 {
        count_syscall(regs as u64, id);
    }
    if config!(security_enabled) != 0 {
        let op = crate::pending::op_of_nr(id);
        if op != monitor_common::stash::NONE {
            crate::pending::on_enter(regs, op);
        }
    }
    0
}

#[inline(always)]
fn count_syscall(regs: u64, id: i64) {
    let nr = if (0..SYSCALL_SLOTS as i64).contains(&id) {
        id as u16
    } else {
        (SYSCALL_SLOTS - 1) as u16
    };
    let Some(batch) = BATCHES.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot. Programs on one CPU run one at a time (the
    // kernel is not preemptible inside them here); on a fully preemptible
    // kernel a preemption mid-update can misplace a count, not more.
    unsafe {
        let b = &mut *batch;
        if b.regs == regs && b.calls < BATCH_FLUSH {
            let last = (b.len.wrapping_sub(1) as usize) & (BATCH_ENTRIES - 1);
            if b.len != 0 && b.nr[last] == nr {
                b.repeats[last] += 1;
                b.calls += 1;
                return;
            }
            if (b.len as usize) < BATCH_ENTRIES {
                let next = b.len as usize & (BATCH_ENTRIES - 1);
                b.nr[next] = nr;
                b.repeats[next] = 1;
                b.len += 1;
                b.calls += 1;
                return;
            }
        }
    }
    start_batch(batch, regs, nr);
}

/// The slow path: a full batch, or the first call of a thread on this CPU
/// since another thread's. Adds what the slot holds to its thread's counts
/// and starts a new batch with this call.
#[inline(always)]
fn start_batch(batch: *mut SyscallBatch, regs: u64, nr: u16) {
    let (tid, pid) = current_ids();
    // SAFETY: this CPU's slot, see `count_syscall`.
    let b = unsafe { &mut *batch };
    if b.len != 0 {
        let own = b.regs == regs && b.tid == tid;
        // Another thread's calls are here only if the switch program did not
        // run when it left (the kernel skips a program that would recurse):
        // its entry is looked up, never created, since it may have exited.
        flush(b, own);
    }
    b.regs = regs;
    b.tid = tid;
    b.pid = pid;
    b.len = 1;
    b.calls = 1;
    b.nr[0] = nr;
    b.repeats[0] = 1;
}

/// Adds the batch to its thread's counts and empties it. `current` says
/// the batch is the running (or just switched-out) thread's, which alone may
/// create its entry.
#[inline(always)]
fn flush(b: &mut SyscallBatch, current: bool) {
    let counts = match SYSCALL_COUNTS.get_ptr_mut(b.tid) {
        Some(counts) => Some(counts),
        None if current => insert(b.tid, b.pid),
        None => None,
    };
    add_batch(counts, b);
    b.len = 0;
    b.calls = 0;
}

/// Adds a batch's calls to `counts` (see `ThreadCounts::add_batch`).
#[inline(always)]
fn add_batch(counts: Option<*mut ThreadCounts>, b: &SyscallBatch) {
    let Some(counts) = counts else {
        count_by(COUNTER_UNCOUNTED_SYSCALLS, u64::from(b.calls));
        return;
    };
    // SAFETY: a map value of the batch's thread, written only on the CPU
    // the thread runs on (its batches never outlive its turn on a CPU).
    let p = unsafe { &mut *counts };
    if p.pid != b.pid {
        // The thread id was reused by another process.
        count_by(COUNTER_UNCOUNTED_SYSCALLS, u64::from(b.calls));
        return;
    }
    p.add_batch(b);
}

/// `sched_switch(preempt, prev, next, prev_state)`: the thread leaving the
/// CPU takes its batch along into its counts, so no calls wait on a CPU it
/// may never come back to (and may exit elsewhere). Most switches find the
/// slot empty: a check and no lookup.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    if !configured() || config!(counts_enabled) == 0 {
        return 0;
    }
    let Some(batch) = BATCHES.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot, see `count_syscall`.
    let b = unsafe { &mut *batch };
    if b.len != 0 {
        flush_switched_out(b, ctx.arg(1));
    }
    // Resuming here costs the thread a helper call, not a lookup (the slot
    // is empty); a stack freed by an exit elsewhere and given to a new
    // thread cannot match a stale slot.
    b.regs = 0;
    0
}

/// Adds the batch of `prev`, the thread leaving the CPU, to its counts.
#[inline(always)]
fn flush_switched_out(b: &mut SyscallBatch, prev: usize) {
    // SAFETY: `prev` is the tracepoint's BTF-typed task argument.
    let (prev_regs, prev_tid) = unsafe {
        (
            bpf_task_pt_regs(prev as *mut _) as u64,
            load::<u32>(prev, off!(task_pid)),
        )
    };
    // The thread id too: a thread that calls execve while not its process's
    // leader keeps its stack but takes the leader's id, and an entry must
    // never be made for the id it gave up (nothing would remove it).
    flush(b, b.regs == prev_regs && b.tid == prev_tid);
}

/// Ends this CPU's batch if it is the exiting current thread's (a later
/// thread given the same stack must not continue it). Called by
/// `sched_process_exit` before the final counts is sent. A thread with a
/// counts entry gets its batch added to it; a thread without one made no
/// call anywhere else (every batch it left on a CPU would have created
/// the entry), so the batch is its whole life, and `send_alone` sends it as
/// it is: no entry is created, copied and deleted for a thread about to end.
/// Returns the exiting thread's entry, looked up once for both jobs.
#[inline(always)]
pub fn end_batch_of_exiting(
    tid: u32,
    send_alone: impl FnOnce(&SyscallBatch),
) -> Option<*mut ThreadCounts> {
    let batch = BATCHES.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot, see `count_syscall`.
    unsafe {
        let b = &mut *batch;
        if b.regs != bpf_task_pt_regs(bpf_get_current_task_btf()) as u64 {
            return SYSCALL_COUNTS.get_ptr_mut(tid);
        }
        b.regs = 0;
        if b.len == 0 {
            return SYSCALL_COUNTS.get_ptr_mut(tid);
        }
        let own = b.tid == tid;
        let entry = SYSCALL_COUNTS.get_ptr_mut(b.tid);
        match entry {
            Some(counts) => add_batch(Some(counts), b),
            None if own => send_alone(b),
            None => add_batch(None, b),
        }
        b.len = 0;
        b.calls = 0;
        if own {
            entry
        } else {
            SYSCALL_COUNTS.get_ptr_mut(tid)
        }
    }
}

/// Not `#[cold]`: that put it alone in `.text.unlikely.`, at offset 0 like
/// the path walk's callback in `.text`, and aya (0.14) then resolved a
/// `bpf_loop` callback pointer to `.text`+0 as this function in any program
/// that used both (the verifier refused `sys_enter` with `R3 !read_ok`).
#[inline(never)]
fn insert(tid: u32, pid: u32) -> Option<*mut ThreadCounts> {
    let zero = ZERO_COUNTS.get(0)?;
    if SYSCALL_COUNTS
        .insert(tid, zero, aya_ebpf::bindings::BPF_NOEXIST.into())
        .is_err()
    {
        // Either the map is full, or another program on this thread inserted
        // first (impossible: only this thread's own flushes insert).
        count(COUNTER_COUNTS_MAP_FULL);
        return None;
    }
    let counts = SYSCALL_COUNTS.get_ptr_mut(tid)?;
    // SAFETY: the entry just inserted for this thread; only it writes it.
    unsafe {
        (*counts).pid = pid;
        (*counts).last = u32::MAX;
        (*counts).born_ns = bpf_ktime_get_boot_ns();
    }
    Some(counts)
}

/// An empty program on every syscall: the floor cost of hooking `sys_enter`,
/// attached only by `monitor bench-floor` for the overhead benchmark.
#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter_empty(_ctx: BtfTracePointContext) -> i32 {
    0
}
