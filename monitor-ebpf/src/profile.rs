//! Per-thread syscall counting on `raw_syscalls:sys_enter`.
//!
//! The hot path of the whole agent: it runs on every syscall of every
//! thread. Programs repeat syscalls in runs (read loops, `epoll_wait`,
//! `futex`, a benchmark's `getppid` loop), so each CPU keeps the run its
//! current thread is making in a per-CPU slot ([`RUNS`]): a repeat is one
//! increment there, with no hash lookup, and the run is added to the
//! thread's [`PROFILES`] entry when the thread or the syscall changes, after
//! [`RUN_FLUSH`] repeats, and when the thread exits. Every call is counted;
//! a window may see up to `RUN_FLUSH` of a thread's calls per CPU one window
//! late.

use aya_ebpf::{
    helpers::generated::{bpf_get_current_task_btf, bpf_ktime_get_boot_ns, bpf_task_pt_regs},
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, PerCpuArray},
    programs::BtfTracePointContext,
};
use monitor_common::{
    COUNTER_PROFILE_MAP_FULL, COUNTER_PROFILE_UNCOUNTED, SYSCALL_SLOTS, ThreadProfile, pair_bucket,
};

use crate::kernel::{config, configured, count, count_by, current_ids};

/// Thread id -> counters. Entries are created on a thread's first syscall
/// and removed by `sched_process_exit`. Not preallocated: memory follows the
/// number of live threads. The agent may resize it at load time.
#[map]
pub static PROFILES: HashMap<u32, ThreadProfile> =
    HashMap::with_max_entries(16384, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// One all-zero profile, never written: the source for inserts (a profile
/// does not fit on the 512-byte stack).
#[map]
static ZERO_PROFILE: Array<ThreadProfile> = Array::with_max_entries(1, 0);

/// The run of one syscall that a thread is making on this CPU: `repeats`
/// calls of `nr` after the one already in the thread's profile.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SyscallRun {
    /// The address of the thread's saved user registers (0 for none): the
    /// top of its kernel stack, unique among live threads, and the
    /// tracepoint's first argument, so recognising the thread costs no
    /// helper call (this kernel does not inline the task helpers). A
    /// thread that exits ends its run on its CPU (`end_run_of_exiting`),
    /// so a new thread given the same stack does not continue it there.
    regs: u64,
    /// The thread id.
    tid: u32,
    /// Its process, to recognise a reused thread id.
    pid: u32,
    /// The repeated syscall slot.
    nr: u32,
    /// Calls not yet added to the profile.
    repeats: u32,
}

/// One [`SyscallRun`] per CPU.
#[map]
static RUNS: PerCpuArray<SyscallRun> = PerCpuArray::with_max_entries(1, 0);

/// Repeats after which a run is added to the profile even though it goes
/// on, so a window's counts lag by at most this many calls per CPU.
const RUN_FLUSH: u32 = 64;

/// `sys_enter(regs, id)`: counts the syscall, and hands watched ones to the
/// security sensors.
#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter(ctx: BtfTracePointContext) -> i32 {
    if !configured() {
        return 0;
    }
    let regs: usize = ctx.arg(0);
    let id: i64 = ctx.arg(1);
    if config!(profiles_enabled) != 0 {
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
        id as u32
    } else {
        (SYSCALL_SLOTS - 1) as u32
    };
    let Some(run) = RUNS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot. Programs on one CPU run one at a time (the
    // kernel is not preemptible inside them here); on a fully preemptible
    // kernel a preemption mid-update can misplace a count, not more.
    unsafe {
        if (*run).regs == regs && (*run).nr == nr && (*run).repeats < RUN_FLUSH {
            (*run).repeats += 1;
            return;
        }
    }
    count_new_run(run, regs, nr);
}

/// The slow path: the thread or the syscall changed (or the run is long).
/// Adds the previous run to its thread's profile, counts this call there,
/// and starts a run of it.
#[inline(always)]
fn count_new_run(run: *mut SyscallRun, regs: u64, nr: u32) {
    // SAFETY: this CPU's slot, see `count_syscall`.
    let previous = unsafe { *run };
    let (tid, pid) = current_ids();
    let profile = match PROFILES.get_ptr_mut(tid) {
        Some(profile) => Some(profile),
        None => insert(tid, pid),
    };
    if previous.repeats != 0 {
        let owner = if previous.tid == tid {
            profile
        } else {
            // Another thread's run (it moved to another CPU, or was
            // switched out mid-run). Its entry is gone if it exited
            // elsewhere: those calls are counted as uncounted.
            PROFILES.get_ptr_mut(previous.tid)
        };
        add_run(owner, &previous);
    }
    let Some(profile) = profile else {
        count(COUNTER_PROFILE_UNCOUNTED);
        // No run to continue: the slot is emptied, so the run just added
        // is not added again by the next slow path.
        // SAFETY: as above.
        unsafe {
            *run = SyscallRun {
                regs: 0,
                tid: 0,
                pid: 0,
                nr: 0,
                repeats: 0,
            }
        };
        return;
    };
    // SAFETY: a map value of this thread; only this thread writes it, and a
    // thread runs on one CPU at a time (a run flushed from another CPU is
    // the rare exception: a lost update there costs a count, not memory).
    unsafe {
        let slot = (nr as usize) & (SYSCALL_SLOTS - 1);
        (*profile).counts[slot] = (*profile).counts[slot].wrapping_add(1);
        let last = (*profile).last;
        if last != u32::MAX {
            let bucket = pair_bucket(last, nr);
            (*profile).pairs[bucket] = (*profile).pairs[bucket].wrapping_add(1);
        }
        (*profile).last = nr;
        (*profile).total = (*profile).total.wrapping_add(1);
        *run = SyscallRun {
            regs,
            tid,
            pid,
            nr,
            repeats: 0,
        };
    }
}

/// Adds a run's repeats, each a call of `nr` preceded by `nr`, to `profile`.
#[inline(always)]
fn add_run(profile: Option<*mut ThreadProfile>, run: &SyscallRun) {
    let Some(profile) = profile else {
        count_by(COUNTER_PROFILE_UNCOUNTED, u64::from(run.repeats));
        return;
    };
    // SAFETY: a map value; see `count_new_run` on who writes it.
    unsafe {
        if (*profile).pid != run.pid {
            // The thread id was reused by another process.
            count_by(COUNTER_PROFILE_UNCOUNTED, u64::from(run.repeats));
            return;
        }
        let slot = (run.nr as usize) & (SYSCALL_SLOTS - 1);
        (*profile).counts[slot] = (*profile).counts[slot].wrapping_add(run.repeats);
        let bucket = pair_bucket(run.nr, run.nr);
        (*profile).pairs[bucket] = (*profile).pairs[bucket].wrapping_add(run.repeats);
        (*profile).total = (*profile).total.wrapping_add(u64::from(run.repeats));
    }
}

/// Adds this CPU's run to the profile of the exiting current thread, if
/// the run is its, and ends the run (a later thread given the same stack
/// must not continue it). Called by `sched_process_exit` before the final
/// profile is sent. A run the thread left on another CPU is added when
/// that CPU next counts a syscall, to the profile if it is still there,
/// otherwise to the uncounted counter.
#[inline(always)]
pub fn end_run_of_exiting() {
    let Some(run) = RUNS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot, see `count_syscall`.
    unsafe {
        if (*run).regs != bpf_task_pt_regs(bpf_get_current_task_btf()) as u64 {
            return;
        }
        let previous = *run;
        (*run).regs = 0;
        (*run).repeats = 0;
        if previous.repeats != 0 {
            add_run(PROFILES.get_ptr_mut(previous.tid), &previous);
        }
    }
}

#[cold]
fn insert(tid: u32, pid: u32) -> Option<*mut ThreadProfile> {
    let zero = ZERO_PROFILE.get(0)?;
    if PROFILES
        .insert(tid, zero, aya_ebpf::bindings::BPF_NOEXIST.into())
        .is_err()
    {
        // Either the map is full, or another program on this thread inserted
        // first (impossible today: only this program inserts).
        count(COUNTER_PROFILE_MAP_FULL);
        return None;
    }
    let profile = PROFILES.get_ptr_mut(tid)?;
    // SAFETY: the entry just inserted for this thread; only it writes it.
    unsafe {
        (*profile).pid = pid;
        (*profile).last = u32::MAX;
        (*profile).born_ns = bpf_ktime_get_boot_ns();
    }
    Some(profile)
}

/// An empty program on every syscall: the floor cost of hooking `sys_enter`,
/// attached only by `monitor bench-floor` for the overhead benchmark.
#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter_empty(_ctx: BtfTracePointContext) -> i32 {
    0
}
