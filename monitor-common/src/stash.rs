//! Operations the entry program stashes arguments for.
//!
//! The `sys_enter` program serves every security syscall: it looks the
//! syscall number up in the `SYSCALL_OPS` array (filled by the agent from
//! its syscall table, so the kernel side has no per-architecture numbers)
//! and stashes the arguments under the op found. The `sys_exit` program
//! takes the stash back for the same op and hands it to the op's family.

/// Not watched.
pub const NONE: u32 = 0;
/// connect(fd, addr, len)
pub const CONNECT: u32 = 1;
/// bind(fd, addr, len)
pub const BIND: u32 = 2;
/// listen(fd, backlog)
pub const LISTEN: u32 = 3;
/// accept and accept4: handled at exit only (the new fd is the result).
pub const ACCEPT: u32 = 4;
/// openat(dfd, name, flags, mode)
pub const OPENAT: u32 = 10;
/// open(name, flags, mode)
pub const OPEN: u32 = 11;
/// creat(name, mode)
pub const CREAT: u32 = 12;
/// openat2(dfd, name, how, size)
pub const OPENAT2: u32 = 13;
/// unlink(name)
pub const UNLINK: u32 = 20;
/// unlinkat(dfd, name, flags)
pub const UNLINKAT: u32 = 21;
/// rename(old, new)
pub const RENAME: u32 = 22;
/// renameat(olddfd, old, newdfd, new)
pub const RENAMEAT: u32 = 23;
/// renameat2(olddfd, old, newdfd, new, flags)
pub const RENAMEAT2: u32 = 24;
/// link(old, new)
pub const LINK: u32 = 25;
/// linkat(olddfd, old, newdfd, new, flags)
pub const LINKAT: u32 = 26;
/// symlink(target, linkpath)
pub const SYMLINK: u32 = 27;
/// symlinkat(target, newdfd, linkpath)
pub const SYMLINKAT: u32 = 28;
/// Credential syscalls: `CRED + cred_op::*` (31..=39).
pub const CRED: u32 = 30;
/// ptrace(request, pid, addr, data)
pub const PTRACE: u32 = 40;
/// bpf(cmd, attr, size)
pub const BPF: u32 = 41;
/// memfd_create(name, flags)
pub const MEMFD: u32 = 42;
/// kill(pid, sig)
pub const KILL: u32 = 50;
/// tkill(tid, sig)
pub const TKILL: u32 = 51;
/// tgkill(tgid, tid, sig)
pub const TGKILL: u32 = 52;
/// init_module(image, len, params)
pub const INIT_MODULE: u32 = 60;
/// finit_module(fd, params, flags)
pub const FINIT_MODULE: u32 = 61;
/// mmap(addr, len, prot, flags, fd, off): checked at entry, not stashed.
pub const MMAP: u32 = 70;
/// mprotect(start, len, prot): checked at entry, not stashed.
pub const MPROTECT: u32 = 71;

// Syscalls reported as called (`SyscallRecord`: op, first arguments,
// result, one path for the mount family). Read back at exit, not stashed.
/// process_vm_readv(pid, ...)
pub const PROCESS_VM_READV: u32 = 80;
/// process_vm_writev(pid, ...)
pub const PROCESS_VM_WRITEV: u32 = 81;
/// pidfd_send_signal(pidfd, sig, info, flags)
pub const PIDFD_SEND_SIGNAL: u32 = 82;
/// pidfd_getfd(pidfd, targetfd, flags)
pub const PIDFD_GETFD: u32 = 83;
/// rt_sigqueueinfo(tgid, sig, info)
pub const RT_SIGQUEUEINFO: u32 = 84;
/// rt_tgsigqueueinfo(tgid, tid, sig, info)
pub const RT_TGSIGQUEUEINFO: u32 = 85;
/// mount(source, target, type, flags, data)
pub const MOUNT: u32 = 86;
/// umount2(target, flags)
pub const UMOUNT2: u32 = 87;
/// unshare(flags)
pub const UNSHARE: u32 = 88;
/// setns(fd, nstype)
pub const SETNS: u32 = 89;
/// pivot_root(new_root, put_old)
pub const PIVOT_ROOT: u32 = 90;
/// io_uring_setup(entries, params)
pub const IO_URING_SETUP: u32 = 91;
/// Not a syscall: an io_uring operation submitted (the io_uring submit
/// tracepoint). `args`: the `IORING_OP_*` opcode, how many such
/// submissions the record covers (the first, and those not reported since).
pub const IO_URING_SUBMIT: u32 = 92;

/// True for the ops reported as called (see [`PROCESS_VM_READV`]).
pub const fn is_plain(op: u32) -> bool {
    op >= PROCESS_VM_READV && op <= IO_URING_SUBMIT
}

/// io_uring operations that act on files, sockets or other processes'
/// view of the system, which the syscall tracepoints never see when they
/// go through a ring: `IORING_OP_*` and its name.
pub const IO_URING_WATCHED: &[(u8, &str)] = &[
    (13, "accept"),
    (16, "connect"),
    (18, "openat"),
    (28, "openat2"),
    (35, "renameat"),
    (36, "unlinkat"),
    (37, "mkdirat"),
    (38, "symlinkat"),
    (39, "linkat"),
    (45, "socket"),
    (56, "bind"),
    (57, "listen"),
];

/// The name of a watched io_uring opcode.
pub fn io_uring_op_name(opcode: u64) -> Option<&'static str> {
    IO_URING_WATCHED
        .iter()
        .find(|(op, _)| u64::from(*op) == opcode)
        .map(|(_, name)| *name)
}

/// The syscall name of a plain op.
pub const fn plain_name(op: u32) -> &'static str {
    match op {
        PROCESS_VM_READV => "process_vm_readv",
        PROCESS_VM_WRITEV => "process_vm_writev",
        PIDFD_SEND_SIGNAL => "pidfd_send_signal",
        PIDFD_GETFD => "pidfd_getfd",
        RT_SIGQUEUEINFO => "rt_sigqueueinfo",
        RT_TGSIGQUEUEINFO => "rt_tgsigqueueinfo",
        MOUNT => "mount",
        UMOUNT2 => "umount2",
        UNSHARE => "unshare",
        SETNS => "setns",
        PIVOT_ROOT => "pivot_root",
        IO_URING_SETUP => "io_uring_setup",
        IO_URING_SUBMIT => "io_uring_submit",
        _ => "unknown",
    }
}

/// The exit program that reports `op` (see `monitor-ebpf/src/exits.rs`), or
/// `None` for ops reported at entry. One program per family keeps each
/// program's verification small: one program for all of them cost 51,401
/// processed instructions on Linux 6.1.
pub const fn exit_program(op: u32) -> Option<&'static str> {
    match op {
        CONNECT | BIND | LISTEN | ACCEPT => Some("sys_exit_net"),
        OPENAT | OPEN | CREAT | OPENAT2 => Some("sys_exit_open"),
        UNLINK | UNLINKAT | RENAME | RENAMEAT | RENAMEAT2 | LINK | LINKAT | SYMLINK | SYMLINKAT => {
            Some("sys_exit_names")
        }
        NONE | MMAP | MPROTECT => None,
        _ => Some("sys_exit_other"),
    }
}

/// Syscall name -> op, for the agent to fill `SYSCALL_OPS`.
pub const BY_NAME: &[(&str, u32)] = &[
    ("connect", CONNECT),
    ("bind", BIND),
    ("listen", LISTEN),
    ("accept", ACCEPT),
    ("accept4", ACCEPT),
    ("openat", OPENAT),
    ("open", OPEN),
    ("creat", CREAT),
    ("openat2", OPENAT2),
    ("unlink", UNLINK),
    ("unlinkat", UNLINKAT),
    ("rename", RENAME),
    ("renameat", RENAMEAT),
    ("renameat2", RENAMEAT2),
    ("link", LINK),
    ("linkat", LINKAT),
    ("symlink", SYMLINK),
    ("symlinkat", SYMLINKAT),
    ("process_vm_readv", PROCESS_VM_READV),
    ("process_vm_writev", PROCESS_VM_WRITEV),
    ("pidfd_send_signal", PIDFD_SEND_SIGNAL),
    ("pidfd_getfd", PIDFD_GETFD),
    ("rt_sigqueueinfo", RT_SIGQUEUEINFO),
    ("rt_tgsigqueueinfo", RT_TGSIGQUEUEINFO),
    ("mount", MOUNT),
    ("umount2", UMOUNT2),
    ("unshare", UNSHARE),
    ("setns", SETNS),
    ("pivot_root", PIVOT_ROOT),
    ("io_uring_setup", IO_URING_SETUP),
    ("setuid", CRED + crate::cred_op::SETUID as u32),
    ("setreuid", CRED + crate::cred_op::SETREUID as u32),
    ("setresuid", CRED + crate::cred_op::SETRESUID as u32),
    ("setfsuid", CRED + crate::cred_op::SETFSUID as u32),
    ("setgid", CRED + crate::cred_op::SETGID as u32),
    ("setregid", CRED + crate::cred_op::SETREGID as u32),
    ("setresgid", CRED + crate::cred_op::SETRESGID as u32),
    ("setfsgid", CRED + crate::cred_op::SETFSGID as u32),
    ("capset", CRED + crate::cred_op::CAPSET as u32),
    ("ptrace", PTRACE),
    ("bpf", BPF),
    ("memfd_create", MEMFD),
    ("kill", KILL),
    ("tkill", TKILL),
    ("tgkill", TGKILL),
    ("init_module", INIT_MODULE),
    ("finit_module", FINIT_MODULE),
    ("mmap", MMAP),
    ("mprotect", MPROTECT),
];
