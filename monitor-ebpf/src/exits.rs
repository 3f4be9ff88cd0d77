//! `sys_exit(regs, ret)`: the one exit hook of the security sensors.
//!
//! For a watched syscall (see `pending`), it takes back the arguments
//! stashed at entry and hands them, with the result, to the syscall's
//! family. Every other syscall costs an array lookup.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use monitor_common::stash as op;

use crate::{
    files, net,
    kernel::{config, configured, off, read},
    pending::{is_agent, op_of_nr, take},
    security,
};

#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit(ctx: BtfTracePointContext) -> i32 {
    if configured() && config!(security_enabled) != 0 {
        try_exit(&ctx);
    }
    0
}

#[inline(always)]
fn try_exit(ctx: &BtfTracePointContext) {
    let regs: usize = ctx.arg(0);
    // SAFETY: probe read of the saved syscall number.
    let nr: i64 = unsafe { read::<i64>(regs, off!(regs_syscall_nr)) }.unwrap_or(-1);
    let op = op_of_nr(nr);
    if op == op::NONE || op == op::MMAP || op == op::MPROTECT || is_agent() {
        return;
    }
    let ret: i64 = ctx.arg(1);
    if op == op::ACCEPT {
        net::on_accept(ret);
        return;
    }
    let Some(p) = take(op) else {
        return;
    };
    match op {
        op::CONNECT | op::BIND | op::LISTEN => net::on_exit(&p, ret),
        op::OPENAT | op::OPEN | op::CREAT | op::OPENAT2 => files::on_open_exit(&p, ret),
        op::UNLINK | op::UNLINKAT | op::RENAME | op::RENAMEAT | op::RENAMEAT2 => files::on_names_exit(&p, ret),
        op::PTRACE => security::on_ptrace_exit(&p, ret),
        op::BPF => security::on_bpf_exit(&p, ret),
        op::MEMFD => security::on_memfd_exit(&p, ret),
        op::KILL | op::TKILL | op::TGKILL => security::on_kill_exit(&p, ret),
        op::INIT_MODULE | op::FINIT_MODULE => security::on_module_exit(&p, ret),
        _ => security::on_cred_exit(&p, ret),
    }
}
