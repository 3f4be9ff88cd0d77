//! Per-thread syscall counting on `raw_syscalls:sys_enter`.
//!
//! The hot path of the whole agent: it runs on every syscall of every
//! thread, so it does one hash lookup and three increments, nothing else.

use aya_ebpf::{
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap},
    programs::BtfTracePointContext,
};
use monitor_common::{
    COUNTER_PROFILE_MAP_FULL, COUNTER_PROFILE_UNCOUNTED, SYSCALL_SLOTS, ThreadProfile, pair_bucket,
};

use crate::kernel::{config, configured, count, current_ids};

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

/// `sys_enter(regs, id)`: counts the syscall, and hands watched ones to the
/// security sensors.
#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter(ctx: BtfTracePointContext) -> i32 {
    if !configured() {
        return 0;
    }
    let id: i64 = ctx.arg(1);
    if config!(profiles_enabled) != 0 {
        count_syscall(id);
    }
    if config!(security_enabled) != 0 {
        let op = crate::pending::op_of_nr(id);
        if op != monitor_common::stash::NONE {
            let regs: usize = ctx.arg(0);
            crate::pending::on_enter(regs, op);
        }
    }
    0
}

#[inline(always)]
fn count_syscall(id: i64) {
    let nr = if (0..SYSCALL_SLOTS as i64).contains(&id) {
        id as u32
    } else {
        (SYSCALL_SLOTS - 1) as u32
    };
    let (tid, pid) = current_ids();
    let profile = match PROFILES.get_ptr_mut(tid) {
        Some(profile) => profile,
        None => match insert(tid, pid) {
            Some(profile) => profile,
            None => {
                count(COUNTER_PROFILE_UNCOUNTED);
                return;
            }
        },
    };
    // SAFETY: a map value of this thread; only this thread writes it, and a
    // thread runs on one CPU at a time.
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
    }
    Some(profile)
}

/// An empty program on every syscall: the floor cost of hooking `sys_enter`,
/// attached only by `monitor bench-floor` for the overhead benchmark.
#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter_empty(_ctx: BtfTracePointContext) -> i32 {
    0
}
