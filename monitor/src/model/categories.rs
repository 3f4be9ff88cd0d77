//! Semantic categories of syscalls, the alphabet of the sequence model.
//!
//! A sequence model over raw syscall names learns that a loop is
//! `poll, clock_gettime`; a loop of `select, time` then looks new although
//! it does the same thing. Over these categories both are `WAIT, TIME`, so
//! the model generalises to programs and libc versions it has not seen,
//! while a process that starts reading files, changing identities or
//! spawning children in an unusual order still stands out.
//!
//! The table is keyed by canonical (x86_64) names; see `crate::syscalls`.

/// Number of categories, [`OTHER`] included.
pub const COUNT: usize = 13;
/// The category of every syscall not in the table.
pub const OTHER: u8 = 12;

/// Category names, indexed by category id.
pub const NAMES: [&str; COUNT] = [
    "fd",
    "read_write",
    "metadata",
    "file_change",
    "memory",
    "process",
    "signal",
    "identity",
    "time",
    "wait",
    "network",
    "system",
    "other",
];

/// Members of each category (canonical names), indexed by category id.
const MEMBERS: [&[&str]; COUNT - 1] = [
    // fd
    &[
        "open",
        "creat",
        "openat",
        "openat2",
        "close",
        "close_range",
        "dup",
        "dup2",
        "dup3",
        "pipe",
        "pipe2",
        "fcntl",
        "flock",
    ],
    // read_write
    &[
        "read",
        "write",
        "readv",
        "writev",
        "pread64",
        "pwrite64",
        "preadv",
        "pwritev",
        "preadv2",
        "pwritev2",
        "lseek",
        "sendfile",
        "readlink",
        "readlinkat",
        "fsync",
        "fdatasync",
        "sync_file_range",
        "truncate",
        "ftruncate",
        "fallocate",
        "fadvise64",
        "fadvise64_64",
        "copy_file_range",
        "splice",
        "tee",
    ],
    // metadata
    &[
        "stat",
        "lstat",
        "fstat",
        "newfstatat",
        "statx",
        "access",
        "faccessat",
        "faccessat2",
        "statfs",
        "fstatfs",
        "getdents",
        "getdents64",
        "getcwd",
        "chdir",
        "fchdir",
        "getxattr",
        "lgetxattr",
        "fgetxattr",
        "listxattr",
        "llistxattr",
        "flistxattr",
        "utime",
        "utimes",
        "utimensat",
    ],
    // file_change
    &[
        "unlink",
        "unlinkat",
        "rename",
        "renameat",
        "renameat2",
        "mkdir",
        "mkdirat",
        "rmdir",
        "link",
        "linkat",
        "symlink",
        "symlinkat",
        "chmod",
        "fchmod",
        "fchmodat",
        "chown",
        "lchown",
        "fchown",
        "fchownat",
        "umask",
        "setxattr",
        "lsetxattr",
        "fsetxattr",
        "mount",
        "umount2",
        "umount",
        "chroot",
        "pivot_root",
    ],
    // memory
    &[
        "brk",
        "mmap",
        "munmap",
        "mprotect",
        "mremap",
        "madvise",
        "mlock",
        "munlock",
        "mlockall",
        "msync",
        "memfd_create",
    ],
    // process
    &[
        "execve",
        "execveat",
        "clone",
        "clone3",
        "fork",
        "vfork",
        "exit",
        "exit_group",
        "wait4",
        "waitid",
        "kill",
        "tkill",
        "tgkill",
        "ptrace",
        "setsid",
        "setpgid",
        "getpgrp",
        "getpgid",
        "getsid",
        "prctl",
        "personality",
        "pidfd_open",
        "pidfd_send_signal",
        "process_vm_readv",
        "process_vm_writev",
    ],
    // signal
    &[
        "rt_sigaction",
        "rt_sigprocmask",
        "rt_sigreturn",
        "rt_sigpending",
        "rt_sigtimedwait",
        "rt_sigsuspend",
        "sigaltstack",
        "alarm",
        "setitimer",
        "getitimer",
        "timer_create",
        "timer_settime",
        "timer_delete",
        "signalfd4",
    ],
    // identity
    &[
        "getpid",
        "getppid",
        "gettid",
        "getuid",
        "getgid",
        "geteuid",
        "getegid",
        "getresuid",
        "getresgid",
        "getgroups",
        "setgroups",
        "setuid",
        "setgid",
        "setreuid",
        "setregid",
        "setresuid",
        "setresgid",
        "setfsuid",
        "setfsgid",
        "capget",
        "capset",
    ],
    // time
    &[
        "time",
        "times",
        "gettimeofday",
        "clock_gettime",
        "clock_getres",
        "settimeofday",
        "clock_settime",
        "adjtimex",
        "nanosleep",
        "clock_nanosleep",
    ],
    // wait
    &[
        "poll",
        "ppoll",
        "select",
        "pselect6",
        "epoll_wait",
        "epoll_pwait",
        "epoll_pwait2",
        "epoll_create",
        "epoll_create1",
        "epoll_ctl",
        "futex",
        "sched_yield",
        "eventfd",
        "eventfd2",
        "timerfd_create",
        "timerfd_settime",
        "inotify_add_watch",
        "inotify_rm_watch",
        "inotify_init",
        "inotify_init1",
        "io_uring_enter",
    ],
    // network
    &[
        "socketcall",
        "socket",
        "socketpair",
        "connect",
        "accept",
        "accept4",
        "bind",
        "listen",
        "sendto",
        "recvfrom",
        "sendmsg",
        "recvmsg",
        "sendmmsg",
        "recvmmsg",
        "shutdown",
        "getsockname",
        "getpeername",
        "setsockopt",
        "getsockopt",
    ],
    // system
    &[
        "uname",
        "sysinfo",
        "getrlimit",
        "setrlimit",
        "prlimit64",
        "getrusage",
        "getpriority",
        "setpriority",
        "sched_setparam",
        "sched_getparam",
        "sched_setscheduler",
        "sched_getscheduler",
        "sched_get_priority_max",
        "sched_get_priority_min",
        "sched_getaffinity",
        "sched_setaffinity",
        "set_thread_area",
        "arch_prctl",
        "set_tid_address",
        "set_robust_list",
        "rseq",
        "ioctl",
        "ioprio_set",
        "iopl",
        "ioperm",
        "vhangup",
        "init_module",
        "finit_module",
        "delete_module",
        "ipc",
        "getrandom",
    ],
];

/// The category of a canonical syscall id.
pub fn of(id: u16) -> u8 {
    static TABLE: std::sync::OnceLock<std::collections::HashMap<u16, u8>> =
        std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = std::collections::HashMap::new();
        for (category, names) in MEMBERS.iter().enumerate() {
            for name in *names {
                let id = crate::syscalls::canonical_id(name);
                // Names a kernel ABI lacks all map to `sys_unknown`; skip them.
                if crate::syscalls::canonical_name(id) == *name {
                    t.insert(id, category as u8);
                }
            }
        }
        t
    });
    table.get(&id).copied().unwrap_or(OTHER)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscalls::{Abi, canonical_id};

    #[test]
    fn same_behaviour_same_category_across_abis() {
        // i386 `_newselect`/`time` and x86_64 `poll`/`clock_gettime`.
        assert_eq!(of(Abi::I386.canonical_id(142)), of(canonical_id("poll")));
        assert_eq!(
            of(Abi::I386.canonical_id(13)),
            of(canonical_id("clock_gettime"))
        );
        assert_eq!(of(Abi::I386.canonical_id(102)), 10, "socketcall is network");
        assert_eq!(of(Abi::I386.canonical_id(192)), 4, "mmap2 is memory");
        assert_eq!(NAMES[usize::from(of(canonical_id("execve")))], "process");
        assert_eq!(of(canonical_id("no_such_call")), OTHER);
    }

    #[test]
    fn no_name_is_in_two_categories() {
        let mut seen = std::collections::HashSet::new();
        for names in MEMBERS {
            for n in names {
                assert!(seen.insert(*n), "{n} listed twice");
            }
        }
    }
}
