//! Syscall arguments stashed at entry for the matching exit.
//!
//! Most security events are reported at syscall exit, with the result, and
//! read user memory there: the kernel has just copied that memory itself, so
//! its pages are present. The exit tracepoint only carries the return value,
//! so one entry program, attached to every watched `sys_enter_*` tracepoint,
//! stashes the arguments per thread here under the op that
//! `SYSCALL_OPS[syscall number]` names (see `monitor_common::stash`).

use aya_ebpf::{
    macros::{map, tracepoint},
    maps::{Array, HashMap},
    programs::TracePointContext,
};
use monitor_common::{COUNTER_PENDING_MAP_FULL, COUNTER_PENDING_MISSING, stash as op};

use crate::kernel::{config, configured, count, current_ids, current_task, off, read, read_ptr};

/// Syscall number -> stash op (0: not watched). Filled by the agent.
#[map]
pub static SYSCALL_OPS: Array<u32> = Array::with_max_entries(512, 0);

/// What an entry stashed.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    /// Which syscall family stashed it (an `op` constant of the caller).
    pub op: u32,
    /// Always zero.
    pub _pad0: u32,
    /// The six syscall arguments.
    pub args: [u64; 6],
    /// Extra facts taken at entry (e.g. credentials before a setuid).
    pub aux: [u64; 4],
}

/// Thread id -> stashed call. Entries are removed at exit, or when the thread
/// exits without returning (see `lifecycle::try_exit`).
#[map]
pub static PENDING: HashMap<u32, Pending> = HashMap::with_max_entries(16384, 0);

/// Offset of argument `i` in a `syscalls:sys_enter_*` record.
const fn arg_offset(i: usize) -> usize {
    16 + 8 * i
}

/// Reads syscall argument `i` of an entry tracepoint.
#[inline(always)]
pub fn arg(ctx: &TracePointContext, i: usize) -> u64 {
    // SAFETY: the tracepoint record has six 8-byte arguments from offset 16.
    unsafe { ctx.read_at::<u64>(arg_offset(i)) }.unwrap_or(0)
}

/// The return value of a `syscalls:sys_exit_*` record.
#[inline(always)]
pub fn ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: `long ret` sits at offset 16.
    unsafe { ctx.read_at::<i64>(16) }.unwrap_or(0)
}

/// True if the current process is the agent (its own actions are not
/// reported, so it cannot feed on itself).
#[inline(always)]
pub fn is_agent() -> bool {
    current_ids().1 == config!(agent_pid)
}

/// The op watched for the syscall of a `sys_enter_*`/`sys_exit_*` record.
#[inline(always)]
fn op_of(ctx: &TracePointContext) -> u32 {
    // SAFETY: `int __syscall_nr` sits at offset 8 of both record kinds.
    let nr: i32 = unsafe { ctx.read_at(8) }.unwrap_or(-1);
    if !(0..512).contains(&nr) {
        return op::NONE;
    }
    SYSCALL_OPS.get(nr as u32).copied().unwrap_or(op::NONE)
}

/// ptrace requests that take control of, or write into, another process.
/// Reads (PEEK*) are what debuggers do in loops and are not reported.
fn ptrace_reported(request: u64) -> bool {
    matches!(request, 0 | 4 | 5 | 6 | 13 | 15 | 16 | 0x4205 | 0x4206)
}

/// Ops whose entry filter may decide not to stash: a missing stash at their
/// exit is expected, not loss.
fn filtered(op: u32) -> bool {
    matches!(op, op::PTRACE | op::BPF | op::KILL | op::TKILL | op::TGKILL)
}

/// The current credentials, packed: uid|euid, suid|gid, egid|sgid, caps.
#[inline(always)]
fn packed_creds() -> [u64; 4] {
    let Ok(cred) = read_ptr(current_task(), off!(task_cred)) else {
        return [0; 4];
    };
    // SAFETY: probe reads.
    let get = |o: usize| -> u64 { u64::from(unsafe { read::<u32>(cred, o) }.unwrap_or(0)) };
    [
        get(off!(cred_uid)) | get(off!(cred_euid)) << 32,
        get(off!(cred_suid)) | get(off!(cred_gid)) << 32,
        get(off!(cred_egid)) | get(off!(cred_sgid)) << 32,
        // SAFETY: probe read.
        unsafe { read::<u64>(cred, off!(cred_cap_effective)) }.unwrap_or(0),
    ]
}

/// The one entry program of the security sensors.
#[tracepoint]
pub fn sys_enter_stash(ctx: TracePointContext) -> u32 {
    if configured() && !is_agent() {
        try_stash(&ctx);
    }
    0
}

#[inline(always)]
fn try_stash(ctx: &TracePointContext) {
    let op = op_of(ctx);
    let (tid, pid) = current_ids();
    let mut aux = [0u64; 4];
    match op {
        op::NONE => return,
        op::PTRACE if !ptrace_reported(arg(ctx, 0)) => return,
        op::BPF if arg(ctx, 0) != 5 => return, // only BPF_PROG_LOAD
        // Signals to self and existence probes (signal 0) are not reported.
        op::KILL if arg(ctx, 1) == 0 || arg(ctx, 0) as i32 == pid as i32 => return,
        op::TKILL if arg(ctx, 1) == 0 || arg(ctx, 0) as i32 == tid as i32 => return,
        op::TGKILL if arg(ctx, 2) == 0 || arg(ctx, 0) as i32 == pid as i32 => return,
        o if (op::CRED + 1..op::CRED + 10).contains(&o) => aux = packed_creds(),
        _ => {}
    }
    let pending = Pending {
        op,
        _pad0: 0,
        args: [arg(ctx, 0), arg(ctx, 1), arg(ctx, 2), arg(ctx, 3), arg(ctx, 4), arg(ctx, 5)],
        aux,
    };
    if PENDING.insert(tid, &pending, 0).is_err() {
        count(COUNTER_PENDING_MAP_FULL);
    }
}

/// Takes the current thread's stash for the syscall this exit record is of.
#[inline(always)]
pub fn take(ctx: &TracePointContext) -> Option<Pending> {
    if !configured() || is_agent() {
        return None;
    }
    let op = op_of(ctx);
    let tid = current_ids().0;
    // SAFETY: copied out before the entry is removed.
    let pending = unsafe { PENDING.get(tid) }.copied();
    match pending {
        Some(p) if p.op == op => {
            let _ = PENDING.remove(tid);
            Some(p)
        }
        _ => {
            if !filtered(op) {
                count(COUNTER_PENDING_MISSING);
            }
            None
        }
    }
}

/// Forgets the stash of an exiting thread.
#[inline(always)]
pub fn forget(tid: u32) {
    let _ = PENDING.remove(tid);
}
