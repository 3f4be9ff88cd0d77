//! Syscall arguments stashed at entry for the matching exit.
//!
//! Most security events are reported at syscall exit, with the result, and
//! read user memory there: the kernel has just copied that memory itself, so
//! its pages are present. The exit tracepoint only carries the return value,
//! so the `sys_enter` program (which runs on every syscall anyway, for the
//! counts) stashes the arguments of watched syscalls per thread here,
//! under the op that `SYSCALL_OPS[syscall number]` names (see
//! `monitor_common::stash`). The open family is the exception: most opens
//! report nothing, so their exit reads the arguments back from the saved
//! registers only when it reports (`args_at_exit`). One hook on the raw `sys_enter` tracepoint
//! instead of one per syscall keeps start-up and, above all, shutdown fast:
//! the kernel detaches tracepoints one at a time, each after an RCU grace
//! period.

use aya_ebpf::{
    helpers::generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
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
    /// Extra facts taken at entry (e.g. credentials before a setuid, see
    /// [`packed_creds`]).
    pub aux: [u64; 5],
}

/// Thread id -> stashed call. Entries are removed at exit, or when the thread
/// exits without returning (see `lifecycle::try_exit`).
#[map]
pub static PENDING: HashMap<u32, Pending> = HashMap::with_max_entries(16384, 0);

/// The six syscall arguments from the saved user registers.
///
/// On the hot path of every watched syscall: when the six registers lie
/// within one 64-byte block (x86_64: r10..di), this is one probe read
/// instead of six, which measurably cut the entry cost of `openat`.
#[inline(always)]
pub fn reg_args(regs: usize) -> [u64; 6] {
    let offsets = [
        off!(regs_arg0),
        off!(regs_arg1),
        off!(regs_arg2),
        off!(regs_arg3),
        off!(regs_arg4),
        off!(regs_arg5),
    ];
    let lo = offsets.iter().copied().fold(usize::MAX, usize::min);
    let hi = offsets.iter().copied().fold(0, usize::max);
    let aligned = offsets.iter().all(|o| (o - lo) % 8 == 0);
    if hi - lo < BLOCK_WORDS * 8 && aligned {
        // SAFETY: probe read into a local.
        if let Ok(block) = unsafe { read::<[u64; BLOCK_WORDS]>(regs, lo) } {
            // A match keeps every stack access at a constant offset.
            let pick = |o: usize| match (o - lo) / 8 {
                0 => block[0],
                1 => block[1],
                2 => block[2],
                3 => block[3],
                4 => block[4],
                5 => block[5],
                6 => block[6],
                _ => block[7],
            };
            return offsets.map(pick);
        }
    }
    // SAFETY: probe reads.
    offsets.map(|o| unsafe { read::<u64>(regs, o) }.unwrap_or(0))
}

/// Words read at once by [`reg_args`].
const BLOCK_WORDS: usize = 8;

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

/// The current credentials, packed: uid|euid, suid|gid, egid|sgid,
/// effective caps, fsuid|fsgid.
#[inline(always)]
pub fn packed_creds() -> [u64; 5] {
    let Ok(cred) = read_ptr(current_task(), off!(task_cred)) else {
        return [0; 5];
    };
    // SAFETY: probe reads.
    let get = |o: usize| -> u64 { u64::from(unsafe { read::<u32>(cred, o) }.unwrap_or(0)) };
    [
        get(off!(cred_uid)) | get(off!(cred_euid)) << 32,
        get(off!(cred_suid)) | get(off!(cred_gid)) << 32,
        get(off!(cred_egid)) | get(off!(cred_sgid)) << 32,
        // SAFETY: probe read.
        unsafe { read::<u64>(cred, off!(cred_cap_effective)) }.unwrap_or(0),
        get(off!(cred_fsuid)) | get(off!(cred_fsgid)) << 32,
    ]
}

/// Called by `sys_enter` for a watched syscall (`op` from [`op_of_nr`]).
#[inline(always)]
pub fn on_enter(regs: usize, op: u32) {
    if is_open(op) || op::is_plain(op) {
        return; // read back at exit, see `args_at_exit`
    }
    if (op == op::MMAP || op == op::MPROTECT) && !crate::memory::may_exec_memory(regs) {
        // Most mappings are not executable (a dynamic loader makes a dozen
        // per exec): one register read settles them.
        return;
    }
    if is_agent() {
        return;
    }
    let (tid, pid) = current_ids();
    let args = reg_args(regs);
    let arg = |i: usize| args[i];
    let mut aux = [0u64; 5];
    match op {
        op::NONE => return,
        op::MMAP | op::MPROTECT => {
            crate::memory::check_exec_memory(op, arg(0), arg(1), arg(2), arg(3), arg(4));
            return;
        }
        op::PTRACE if !ptrace_reported(arg(0)) => return,
        op::BPF if !crate::agent_objects::bpf_call_of_interest(arg(0), arg(1)) => return,
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
        args,
        aux,
    };
    if PENDING.insert(tid, &pending, 0).is_err() {
        count(COUNTER_PENDING_MAP_FULL);
    }
}

/// The open family: the commonest watched syscalls, and the only ones whose
/// arguments are read back at exit instead of stashed at entry (their exit
/// usually reports nothing, and a stash costs a map insert and a delete).
#[inline(always)]
pub fn is_open(op: u32) -> bool {
    matches!(op, op::OPENAT | op::OPEN | op::CREAT | op::OPENAT2)
}

/// The current syscall's arguments read at its exit, from the user
/// registers the kernel saved at entry: a syscall returns its result in
/// another register and leaves these as they were.
#[inline(always)]
pub fn args_at_exit(op: u32) -> Pending {
    // SAFETY: helpers on the current task.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as usize;
    Pending {
        op,
        _pad0: 0,
        args: reg_args(regs),
        aux: [0; 5],
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
