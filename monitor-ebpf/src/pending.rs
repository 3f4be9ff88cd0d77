//! Syscall arguments stashed at entry for the matching exit.
//!
//! Most security events are reported at syscall exit, with the result, and
//! read user memory there: the kernel has just copied that memory itself, so
//! its pages are present. The exit tracepoint only carries the return value,
//! so the `sys_enter` program (which runs on every syscall anyway, for the
//! profiles) stashes the arguments of watched syscalls per thread here,
//! under the op that `SYSCALL_OPS[syscall number]` names (see
//! `monitor_common::stash`). One hook on the raw `sys_enter` tracepoint
//! instead of one per syscall keeps start-up and, above all, shutdown fast:
//! the kernel detaches tracepoints one at a time, each after an RCU grace
//! period.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap},
};
use monitor_common::{COUNTER_PENDING_MAP_FULL, COUNTER_PENDING_MISSING, stash as op};

use crate::kernel::{config, count, current_ids, current_task, off, read, read_ptr};

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

/// Syscall argument `i` from the saved user registers.
#[inline(always)]
pub fn reg_arg(regs: usize, i: usize) -> u64 {
    let offset = match i {
        0 => off!(regs_arg0),
        1 => off!(regs_arg1),
        2 => off!(regs_arg2),
        3 => off!(regs_arg3),
        4 => off!(regs_arg4),
        _ => off!(regs_arg5),
    };
    // SAFETY: probe read.
    unsafe { read::<u64>(regs, offset) }.unwrap_or(0)
}

/// True if the current process is the agent (its own actions are not
/// reported, so it cannot feed on itself).
#[inline(always)]
pub fn is_agent() -> bool {
    current_ids().1 == config!(agent_pid)
}

/// The op watched for syscall number `nr`.
#[inline(always)]
pub fn op_of_nr(nr: i64) -> u32 {
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

/// Called by `sys_enter` for a watched syscall (`op` from [`op_of_nr`]).
#[inline(always)]
pub fn on_enter(regs: usize, op: u32) {
    if is_agent() {
        return;
    }
    let (tid, pid) = current_ids();
    let arg = |i| reg_arg(regs, i);
    let mut aux = [0u64; 4];
    match op {
        op::NONE => return,
        op::MMAP | op::MPROTECT => {
            crate::security::check_exec_memory(op, arg(0), arg(1), arg(2), arg(3));
            return;
        }
        op::PTRACE if !ptrace_reported(arg(0)) => return,
        op::BPF if arg(0) != 5 => return, // only BPF_PROG_LOAD
        // Signals to self and existence probes (signal 0) are not reported.
        op::KILL if arg(1) == 0 || arg(0) as i32 == pid as i32 => return,
        op::TKILL if arg(1) == 0 || arg(0) as i32 == tid as i32 => return,
        op::TGKILL if arg(2) == 0 || arg(0) as i32 == pid as i32 => return,
        o if (op::CRED + 1..op::CRED + 10).contains(&o) => aux = packed_creds(),
        _ => {}
    }
    let pending = Pending {
        op,
        _pad0: 0,
        args: [arg(0), arg(1), arg(2), arg(3), arg(4), arg(5)],
        aux,
    };
    if PENDING.insert(tid, &pending, 0).is_err() {
        count(COUNTER_PENDING_MAP_FULL);
    }
}

/// Takes the current thread's stash, if it was made for `op`.
#[inline(always)]
pub fn take(op: u32) -> Option<Pending> {
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
