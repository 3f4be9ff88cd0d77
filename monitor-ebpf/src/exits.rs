//! The exit hook of the security sensors, attached to the exit tracepoint of
//! each watched syscall (`syscalls/sys_exit_<name>`): it takes back the
//! arguments stashed at entry and hands them, with the result, to the
//! syscall's family.
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

#[tracepoint]
pub fn sys_exit_watched(ctx: TracePointContext) -> i32 {
    if configured() && config!(security_enabled) != 0 {
        try_exit(&ctx);
    }
    0
}

#[inline(always)]
fn try_exit(ctx: &TracePointContext) {
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
    if op == op::ACCEPT {
        net::on_accept(ret);
        return;
    }
    if is_open(op) {
        files::on_open_exit(op, ret);
        return;
    }
    let Some(p) = take(op) else {
        return;
    };
    match op {
        op::CONNECT | op::BIND | op::LISTEN => net::on_exit(&p, ret),
        op::UNLINK | op::UNLINKAT | op::RENAME | op::RENAMEAT | op::RENAMEAT2 => {
            files::on_names_exit(&p, ret)
        }
        op::PTRACE => security::on_ptrace_exit(&p, ret),
        op::BPF => security::on_bpf_exit(&p, ret),
        op::MEMFD => security::on_memfd_exit(&p, ret),
        op::KILL | op::TKILL | op::TGKILL => security::on_kill_exit(&p, ret),
        op::INIT_MODULE | op::FINIT_MODULE => security::on_module_exit(&p, ret),
        _ => security::on_cred_exit(&p, ret),
    }
}
