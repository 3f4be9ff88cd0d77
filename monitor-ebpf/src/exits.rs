//! The exit hooks of the security sensors, attached to the exit tracepoint of
//! each watched syscall (`syscalls/sys_exit_<name>`), one program per
//! family of syscalls: each takes back the arguments stashed at entry and
//! hands them, with the result, to the family's reporter.
//!
//! One program on the raw `sys_exit` hook would be simpler, but it runs on
//! every syscall of the host: measured here, an *empty* program there adds
//! about 65 ns to each syscall. The per-syscall tracepoints cost the other
//! syscalls only a bitmap test in the kernel.

use aya_ebpf::{EbpfContext as _, macros::tracepoint, programs::TracePointContext};
use monitor_common::stash as op;

use crate::{
    files,
    kernel::{config, configured},
    net,
    pending::{is_agent, is_open, op_of_nr, take},
    security,
};

/// Offsets in the `syscalls/sys_exit_*` tracepoint record (see its
/// `format` file): the syscall number and the return value.
const NR_OFFSET: usize = 8;
const RET_OFFSET: usize = 16;

/// The syscall families, one exit program each (see
/// `monitor_common::stash::exit_program`): each program holds only its own
/// family's code, so each is verified on its own and stays small.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Net,
    Open,
    Names,
    Other,
}

#[tracepoint]
pub fn sys_exit_net(ctx: TracePointContext) -> i32 {
    on_exit(&ctx, Family::Net)
}

#[tracepoint]
pub fn sys_exit_open(ctx: TracePointContext) -> i32 {
    on_exit(&ctx, Family::Open)
}

#[tracepoint]
pub fn sys_exit_names(ctx: TracePointContext) -> i32 {
    on_exit(&ctx, Family::Names)
}

#[tracepoint]
pub fn sys_exit_other(ctx: TracePointContext) -> i32 {
    on_exit(&ctx, Family::Other)
}

#[inline(always)]
fn on_exit(ctx: &TracePointContext, family: Family) -> i32 {
    if configured() && config!(security_enabled) != 0 {
        try_exit(ctx, family);
    }
    0
}

#[inline(always)]
fn try_exit(ctx: &TracePointContext, family: Family) {
    // Direct loads from the record (constant offsets, which the verifier
    // checks against the record): cheaper than a probe read each.
    let record = ctx.as_ptr().cast::<u8>();
    // SAFETY: fields of the tracepoint record, at the offsets of its format.
    let (nr, ret) = unsafe {
        (
            core::ptr::read(record.add(NR_OFFSET).cast::<i32>()),
            core::ptr::read(record.add(RET_OFFSET).cast::<i64>()),
        )
    };
    let op = op_of_nr(i64::from(nr));
    if op == op::NONE || op == op::MMAP || op == op::MPROTECT || is_agent() {
        return;
    }
    // `family` is a constant in each program: the compiler keeps only its
    // branch.
    match family {
        Family::Net => {
            if op == op::ACCEPT {
                net::on_accept(ret);
            } else if matches!(op, op::CONNECT | op::BIND | op::LISTEN)
                && let Some(p) = take(op)
            {
                net::on_exit(&p, ret);
            }
        }
        Family::Open => {
            if is_open(op) {
                files::on_open_exit(op, ret);
            }
        }
        Family::Names => {
            if matches!(
                op,
                op::UNLINK
                    | op::UNLINKAT
                    | op::RENAME
                    | op::RENAMEAT
                    | op::RENAMEAT2
                    | op::LINK
                    | op::LINKAT
                    | op::SYMLINK
                    | op::SYMLINKAT
            ) && let Some(p) = take(op)
            {
                files::on_names_exit(&p, ret);
            }
        }
        Family::Other => {
            if op::is_plain(op) {
                security::on_plain_exit(op, ret);
                return;
            }
            let Some(p) = take(op) else {
                return;
            };
            match op {
                op::PTRACE => security::on_ptrace_exit(&p, ret),
                op::BPF => security::on_bpf_exit(&p, ret),
                op::MEMFD => security::on_memfd_exit(&p, ret),
                op::KILL | op::TKILL | op::TGKILL => security::on_kill_exit(&p, ret),
                op::INIT_MODULE | op::FINIT_MODULE => security::on_module_exit(&p, ret),
                o if (op::CRED + 1..op::CRED + 10).contains(&o) => security::on_cred_exit(&p, ret),
                _ => {}
            }
        }
    }
}
