//! Ring-buffer records: one [`RecordHeader`] followed by a per-kind payload.
//!
//! Small records are reserved at their fixed size in the ring buffer and
//! filled in place. The large ones (exec, file, an executable mapping of a
//! written file) are built in a per-CPU area and sent packed, each variable
//! area cut to its used length (see [`crate::packing`]). Variable-length
//! areas carry their used length in a field; bytes beyond it are undefined
//! and must not be read.

use core::mem::{offset_of, size_of};

/// Record kind tags (the first byte of every record). Append-only.
pub mod kind {
    /// A process replaced its image ([`super::ExecRecord`]).
    pub const EXEC: u8 = 1;
    /// A new process (not a thread) was created ([`super::ForkRecord`]).
    pub const FORK: u8 = 2;
    /// The last thread of a process exited ([`super::ExitRecord`]).
    pub const EXIT: u8 = 3;
    /// A socket `connect`, `accept`, `bind` or `listen` ([`super::NetRecord`]).
    pub const NET: u8 = 4;
    /// A file open, unlink or rename ([`super::FileRecord`]).
    pub const FILE: u8 = 5;
    /// A credential change: setuid/setgid families, capset ([`super::CredRecord`]).
    pub const CRED: u8 = 6;
    /// A `ptrace` request against another process ([`super::PtraceRecord`]).
    pub const PTRACE: u8 = 7;
    /// A kernel module load attempt ([`super::ModuleRecord`]).
    pub const MODULE: u8 = 8;
    /// A `bpf(BPF_PROG_LOAD)` by a process other than the agent ([`super::BpfRecord`]).
    pub const BPF: u8 = 9;
    /// A `memfd_create` ([`super::MemfdRecord`]).
    pub const MEMFD: u8 = 10;
    /// An `mmap`/`mprotect` that makes anonymous memory executable ([`super::MemExecRecord`]).
    pub const MEM_EXEC: u8 = 11;
    /// A signal sent to another process ([`super::KillRecord`]).
    pub const KILL: u8 = 12;
    /// A thread exited; carries its final syscall counts
    /// ([`super::ThreadExitRecord`]).
    pub const THREAD_EXIT: u8 = 13;
    /// A watched syscall reported as called ([`super::SyscallRecord`]).
    pub const SYSCALL: u8 = 14;
    /// Number of kind slots (kinds are `1..COUNT`; 0 is never used).
    pub const COUNT: usize = 15;

    /// Stable lower-case name of a kind, for counters and messages.
    pub const fn name(kind: u8) -> &'static str {
        match kind {
            EXEC => "exec",
            FORK => "fork",
            EXIT => "exit",
            NET => "net",
            FILE => "file",
            CRED => "cred",
            PTRACE => "ptrace",
            MODULE => "module",
            BPF => "bpf",
            MEMFD => "memfd",
            MEM_EXEC => "mem_exec",
            KILL => "kill",
            THREAD_EXIT => "thread_exit",
            SYSCALL => "syscall",
            _ => "unknown",
        }
    }
}

/// Starts every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RecordHeader {
    /// One of [`kind`].
    pub kind: u8,
    /// Always zero.
    pub _pad0: u8,
    /// Per-kind flag bits (see each record).
    pub flags: u16,
    /// Size in bytes of the whole record, header included, as the kernel
    /// reserved it. The decoder rejects a record shorter than its kind needs.
    pub size: u32,
    /// When the event happened (`bpf_ktime_get_boot_ns`).
    pub ktime_ns: u64,
}
const _: () = assert!(size_of::<RecordHeader>() == 16);
const _: () = assert!(offset_of!(RecordHeader, ktime_ns) == 8);

/// The identity every record carries: who did it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskInfo {
    /// Thread id (the kernel's `pid`).
    pub tid: u32,
    /// Process id (the kernel's `tgid`).
    pub pid: u32,
    /// Process id of the real parent (`real_parent->tgid`).
    pub ppid: u32,
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// Effective user id.
    pub euid: u32,
    /// Effective group id.
    pub egid: u32,
    /// Always zero.
    pub _pad0: u32,
    /// cgroup v2 id of the task (`bpf_get_current_cgroup_id`).
    pub cgroup_id: u64,
    /// Boot-time start of the process (`group_leader->start_boottime`), ns.
    /// Together with `pid` it names one process even across pid reuse.
    pub start_ns: u64,
    /// `comm`, NUL-padded (at most 15 bytes + NUL).
    pub comm: [u8; 16],
}
const _: () = assert!(size_of::<TaskInfo>() == 64);
const _: () = assert!(offset_of!(TaskInfo, cgroup_id) == 32);

/// Bound on the bytes of path components captured from kernel memory.
pub const PATH_CAPTURE_MAX: usize = 4096;
/// Bound on one component read (`NAME_MAX` + NUL).
pub const NAME_READ_MAX: usize = 256;
/// Size of a [`KernelPath`] data area: writes start below
/// `PATH_CAPTURE_MAX` and may run `NAME_READ_MAX` past it, which is what lets
/// the verifier prove them in bounds.
pub const PATH_AREA: usize = PATH_CAPTURE_MAX + NAME_READ_MAX;
/// Bound on dentries walked for one path.
pub const PATH_DEPTH_MAX: u32 = 64;

/// Flag bits of [`KernelPath::flags`].
pub mod path_flags {
    /// Components were dropped: the path is longer than the bounds allow.
    pub const TRUNCATED: u8 = 1;
    /// A kernel read failed part way; what was captured is still valid.
    pub const FAULT: u8 = 2;
    /// `data` holds one raw string as a process passed it (user memory), not
    /// dentry components.
    pub const USER_STRING: u8 = 4;
    /// Nothing was captured because the path does not apply (e.g. absolute
    /// user string needs no base directory).
    pub const ABSENT: u8 = 8;
}

/// A path captured in the kernel.
///
/// Normally built by walking `dentry->d_parent` (and crossing mounts) from a
/// `struct path`, so it is the kernel's view, free of `..`, symlinks and
/// relative names: `data` then holds the components leaf first, each followed
/// by a NUL; the agent reverses them into `/a/b/leaf`. With
/// [`path_flags::USER_STRING`] it holds one NUL-terminated raw string instead.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct KernelPath {
    /// Bytes of `data` in use.
    pub len: u16,
    /// Number of components captured.
    pub depth: u8,
    /// [`path_flags`] bits.
    pub flags: u8,
    /// Always zero.
    pub _pad0: u32,
    /// See the type docs.
    pub data: [u8; PATH_AREA],
}
const _: () = assert!(size_of::<KernelPath>() == 8 + PATH_AREA);

/// Bound on bytes of `bprm->filename` captured.
pub const EXEC_FILENAME_MAX: usize = 512;
/// Bound on bytes of the argument vector captured (the NUL-separated block
/// between `mm->arg_start` and `mm->arg_end`).
pub const EXEC_ARGV_MAX: usize = 8192;

/// Flag bits of an exec record's header.
pub mod exec_flags {
    /// `filename` was cut at [`super::EXEC_FILENAME_MAX`].
    pub const FILENAME_TRUNCATED: u16 = 1;
    /// `argv` was cut at [`super::EXEC_ARGV_MAX`]; `argv_total` has the real size.
    pub const ARGV_TRUNCATED: u16 = 2;
    /// Reading the argument vector from the new image's memory failed.
    pub const ARGV_FAULT: u16 = 4;
    /// The executed file has no links (memfd, or deleted after open): fileless.
    pub const FILELESS: u16 = 8;
    /// A script: `bprm->interp` differs from `bprm->filename`, so `path` is
    /// the interpreter and `filename` the script.
    pub const SCRIPT: u16 = 16;
    /// Reading `bprm->filename` failed.
    pub const FILENAME_FAULT: u16 = 32;
    /// The executed file was opened for writing within
    /// [`super::RECENT_WRITE_NS`] (a file dropped and run).
    pub const RECENTLY_WRITTEN: u16 = 64;
    /// The record is an [`super::ExecScriptRecord`]: it carries the working
    /// directory a relative script name is relative to.
    pub const CWD: u16 = 128;
}

/// `sched_process_exec`: a process replaced its image.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecRecord {
    /// `kind::EXEC`, flags from [`exec_flags`].
    pub header: RecordHeader,
    /// The process after the exec (new `comm`, credentials after setuid bits).
    pub task: TaskInfo,
    /// Thread id that called exec, if not the leader (else equal to `task.pid`).
    pub old_tid: u32,
    /// Bytes of `argv` in use.
    pub argv_len: u32,
    /// Size of the whole argument block in the process (may exceed `argv_len`).
    pub argv_total: u32,
    /// Bytes of `filename` in use (without the NUL).
    pub filename_len: u16,
    /// Always zero.
    pub _pad0: u16,
    /// Inode number of the executed file.
    pub exe_ino: u64,
    /// Device of the executed file (kernel `dev_t` encoding: major << 20 | minor).
    pub exe_dev: u32,
    /// `i_mode` of the executed file (type and permission bits, incl. setuid).
    pub exe_mode: u32,
    /// Owner uid of the executed file.
    pub exe_uid: u32,
    /// Link count of the executed file (0: fileless).
    pub exe_nlink: u32,
    /// `bprm->filename`: the name as passed to exec (may be relative or a symlink).
    pub filename: [u8; EXEC_FILENAME_MAX],
    /// The executed file, resolved in the kernel.
    pub path: KernelPath,
    /// The argument vector: NUL-separated arguments, as in `/proc/PID/cmdline`.
    pub argv: [u8; EXEC_ARGV_MAX],
}
const _: () = assert!(offset_of!(ExecRecord, task) == 16);
const _: () = assert!(offset_of!(ExecRecord, exe_ino) == 96);
const _: () = assert!(offset_of!(ExecRecord, filename) == 120);
const _: () = assert!(size_of::<ExecRecord>().is_multiple_of(8));

/// The exec of a `#!` script ([`exec_flags::SCRIPT`], [`exec_flags::CWD`]):
/// an [`ExecRecord`] and the working directory at exec, read in the kernel
/// so a relative script name resolves to the file that ran (read later from
/// `/proc`, the process may have changed directory, or be gone).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecScriptRecord {
    /// The exec.
    pub exec: ExecRecord,
    /// The working directory, from kernel memory.
    pub cwd: KernelPath,
}
const _: () = assert!(size_of::<ExecScriptRecord>().is_multiple_of(8));

/// `sched_process_fork` for a new process (thread creation is not reported).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ForkRecord {
    /// `kind::FORK`.
    pub header: RecordHeader,
    /// The child (its `ppid` is its real parent, which `CLONE_PARENT` may make
    /// differ from the forking process).
    pub task: TaskInfo,
    /// Thread id of the thread that forked.
    pub parent_tid: u32,
    /// Process id of the forking process.
    pub parent_pid: u32,
}
const _: () = assert!(size_of::<ForkRecord>() == 88);

/// `sched_process_exit` of the last thread of a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ExitRecord {
    /// `kind::EXIT`.
    pub header: RecordHeader,
    /// The exiting process (`tid` is the last thread to exit).
    pub task: TaskInfo,
    /// Wait status as the parent sees it: `(code << 8) | signal`, plus 0x80
    /// when a core was dumped.
    pub exit_code: u32,
    /// Always zero.
    pub _pad0: u32,
}
const _: () = assert!(size_of::<ExitRecord>() == 88);

/// A thread exited: its final syscall counts, so the last window of every
/// thread reaches the agent (the kernel deletes the map entry right after).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ThreadExitRecord {
    /// `kind::THREAD_EXIT`.
    pub header: RecordHeader,
    /// Thread id.
    pub tid: u32,
    /// Process id.
    pub pid: u32,
    /// The counters as they stood at exit.
    pub counts: crate::counting::ThreadCounts,
}
const _: () =
    assert!(size_of::<ThreadExitRecord>() == 24 + size_of::<crate::counting::ThreadCounts>());

/// Flag bits of a thread exit record's header.
pub mod thread_exit_flags {
    /// The thread exited before any of its calls reached the counts entry
    /// (most short-lived processes): the record is a
    /// [`super::ThreadCallsRecord`] carrying the calls themselves, which
    /// spares the kernel an entry's creation, copy and deletion.
    pub const CALLS: u16 = 1;
}

/// `kind::THREAD_EXIT` with [`thread_exit_flags::CALLS`]: a thread's whole
/// life of syscalls, as one batch. The agent replays it into an empty
/// counts with [`crate::counting::ThreadCounts::add_batch`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ThreadCallsRecord {
    /// `kind::THREAD_EXIT`, flag [`thread_exit_flags::CALLS`].
    pub header: RecordHeader,
    /// Thread id.
    pub tid: u32,
    /// Process id.
    pub pid: u32,
    /// The calls (`regs` zeroed).
    pub calls: crate::counting::SyscallBatch,
}
const _: () =
    assert!(size_of::<ThreadCallsRecord>() == 24 + size_of::<crate::counting::SyscallBatch>());

/// Operations of a [`NetRecord`].
pub mod net_op {
    /// `connect(2)`: outbound. Address from the caller's `sockaddr`.
    pub const CONNECT: u8 = 1;
    /// `accept(2)`/`accept4(2)`: inbound. Addresses from the new socket.
    pub const ACCEPT: u8 = 2;
    /// `bind(2)`. Address from the caller's `sockaddr`.
    pub const BIND: u8 = 3;
    /// `listen(2)`. Address from the socket.
    pub const LISTEN: u8 = 4;
}

/// Flag bits of a net record's header.
pub mod net_flags {
    /// Reading the `sockaddr` from user memory failed (page not present).
    pub const ADDR_FAULT: u16 = 1;
    /// Reading socket state from kernel memory failed.
    pub const SOCK_FAULT: u16 = 2;
}

/// Bound on a unix socket path (`sun_path`).
pub const UNIX_PATH_MAX: usize = 108;

/// A socket operation.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NetRecord {
    /// `kind::NET`, flags from [`net_flags`].
    pub header: RecordHeader,
    /// Who.
    pub task: TaskInfo,
    /// One of [`net_op`].
    pub op: u8,
    /// Always zero.
    pub _pad0: u8,
    /// `AF_INET` (2), `AF_INET6` (10), `AF_UNIX` (1) or another family.
    pub family: u16,
    /// Return value of the syscall (fd for accept, 0 or -errno otherwise).
    pub ret: i32,
    /// The socket fd the call was made on.
    pub fd: i32,
    /// `listen` backlog; 0 otherwise.
    pub backlog: i32,
    /// Remote port for connect/accept, local port for bind/listen (host order).
    pub port: u16,
    /// Local port for accept (host order); 0 otherwise.
    pub local_port: u16,
    /// Socket type (`SOCK_STREAM` 1, `SOCK_DGRAM` 2...), 0 if unknown.
    pub sock_type: u16,
    /// Bytes of `unix_path` in use.
    pub unix_path_len: u16,
    /// Remote address for connect/accept, local for bind/listen: IPv4 in the
    /// first 4 bytes, IPv6 in all 16 (network order).
    pub addr: [u8; 16],
    /// Local address for accept (same layout); zero otherwise.
    pub local_addr: [u8; 16],
    /// Unix socket path (abstract names start with a NUL byte).
    pub unix_path: [u8; UNIX_PATH_MAX],
    /// Always zero.
    pub _pad1: [u8; 4],
}
const _: () = assert!(offset_of!(NetRecord, op) == 80);
const _: () = assert!(offset_of!(NetRecord, addr) == 104);
const _: () = assert!(size_of::<NetRecord>().is_multiple_of(8));

/// Operations of a [`FileRecord`].
pub mod file_op {
    /// An open/openat/openat2/creat that succeeded.
    pub const OPEN: u8 = 1;
    /// unlink/unlinkat/rmdir via unlinkat(AT_REMOVEDIR).
    pub const UNLINK: u8 = 2;
    /// rename/renameat/renameat2.
    pub const RENAME: u8 = 3;
    /// link/linkat: `path` the existing file, `path2` the new name.
    pub const LINK: u8 = 4;
    /// symlink/symlinkat: `path` the link made, `path2` the target as
    /// given (any text).
    pub const SYMLINK: u8 = 5;
}

/// Flag bits of a file record's header.
pub mod file_flags {
    /// The open writes, creates or truncates.
    pub const WRITE: u16 = 1;
    /// The file lies under a sensitive location (kernel-side match).
    pub const SENSITIVE: u16 = 2;
    /// Reading a path string from user memory failed (page not present).
    pub const USER_FAULT: u16 = 4;
}

/// A file operation.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FileRecord {
    /// `kind::FILE`, flags from [`file_flags`].
    pub header: RecordHeader,
    /// Who.
    pub task: TaskInfo,
    /// One of [`file_op`].
    pub op: u8,
    /// Always zero.
    pub _pad0: [u8; 3],
    /// Return value of the syscall.
    pub ret: i32,
    /// Open flags (`O_*`) as passed; rename flags for renameat2; unlinkat flags.
    pub open_flags: u32,
    /// Mode argument of open/creat.
    pub mode: u32,
    /// Inode number (open only).
    pub ino: u64,
    /// Open: the opened file, from kernel memory. Unlink/rename: the user
    /// string ([`path_flags::USER_STRING`]).
    pub path: KernelPath,
    /// Rename: the new name (user string). Unused otherwise.
    pub path2: KernelPath,
    /// Directory a relative user string is relative to (the cwd or `dirfd`),
    /// from kernel memory; [`path_flags::ABSENT`] when not needed.
    pub base: KernelPath,
}
const _: () = assert!(offset_of!(FileRecord, path) == 104);
const _: () = assert!(size_of::<FileRecord>().is_multiple_of(8));

/// Operations of a [`CredRecord`] (the syscall).
pub mod cred_op {
    /// setuid(2)
    pub const SETUID: u8 = 1;
    /// setreuid(2)
    pub const SETREUID: u8 = 2;
    /// setresuid(2)
    pub const SETRESUID: u8 = 3;
    /// setfsuid(2)
    pub const SETFSUID: u8 = 4;
    /// setgid(2)
    pub const SETGID: u8 = 5;
    /// setregid(2)
    pub const SETREGID: u8 = 6;
    /// setresgid(2)
    pub const SETRESGID: u8 = 7;
    /// setfsgid(2)
    pub const SETFSGID: u8 = 8;
    /// capset(2)
    pub const CAPSET: u8 = 9;
}

/// A credential change syscall, reported at exit with before/after ids.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CredRecord {
    /// `kind::CRED`.
    pub header: RecordHeader,
    /// Who, with credentials as they are after the call.
    pub task: TaskInfo,
    /// One of [`cred_op`].
    pub op: u8,
    /// Always zero.
    pub _pad0: [u8; 3],
    /// Return value.
    pub ret: i32,
    /// The syscall's id arguments (unused ones are 0; `u32::MAX` means "unchanged").
    pub args: [u32; 3],
    /// Real, effective, saved uid before the call.
    pub old_uid: [u32; 3],
    /// Real, effective, saved gid before the call.
    pub old_gid: [u32; 3],
    /// Real, effective, saved uid after the call.
    pub new_uid: [u32; 3],
    /// Real, effective, saved gid after the call.
    pub new_gid: [u32; 3],
    /// Always zero.
    pub _pad1: u32,
    /// Effective capabilities before the call.
    pub old_cap_effective: u64,
    /// Effective capabilities after the call.
    pub new_cap_effective: u64,
}
const _: () = assert!(offset_of!(CredRecord, args) == 88);
const _: () = assert!(offset_of!(CredRecord, old_cap_effective) == 152);
const _: () = assert!(size_of::<CredRecord>() == 168);

/// A `ptrace` request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PtraceRecord {
    /// `kind::PTRACE`.
    pub header: RecordHeader,
    /// Who.
    pub task: TaskInfo,
    /// `PTRACE_*` request.
    pub request: i64,
    /// Target thread id.
    pub target: i32,
    /// Return value.
    pub ret: i32,
}
const _: () = assert!(size_of::<PtraceRecord>() == 96);

/// Bound on a module name / parameter string captured.
pub const MODULE_ARGS_MAX: usize = 128;

/// A kernel module load attempt (`init_module` or `finit_module`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleRecord {
    /// `kind::MODULE`.
    pub header: RecordHeader,
    /// Who.
    pub task: TaskInfo,
    /// 1: init_module (image from memory), 2: finit_module (from an fd).
    pub op: u8,
    /// Always zero.
    pub _pad0: [u8; 3],
    /// Return value.
    pub ret: i32,
    /// The fd (finit_module) or -1.
    pub fd: i32,
    /// Bytes of `args` in use.
    pub args_len: u32,
    /// Parameter string.
    pub args: [u8; MODULE_ARGS_MAX],
    /// The module file (finit_module), from kernel memory.
    pub path: KernelPath,
}
const _: () = assert!(size_of::<ModuleRecord>().is_multiple_of(8));

/// A BPF program load by another process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BpfRecord {
    /// `kind::BPF`.
    pub header: RecordHeader,
    /// Who.
    pub task: TaskInfo,
    /// `bpf(2)` command (one of [`bpf_cmd`]).
    pub cmd: u32,
    /// `BPF_PROG_LOAD`: `prog_type` from the attributes. Other commands:
    /// the [`agent_object`] kind of the agent's object they reach.
    pub prog_type: u32,
    /// `BPF_PROG_LOAD`: number of instructions. Other commands: the id of
    /// the agent's object they reach.
    pub insn_cnt: u32,
    /// Return value (the new program fd, or -errno).
    pub ret: i32,
    /// `prog_name` (NUL-padded).
    pub prog_name: [u8; 16],
}
const _: () = assert!(size_of::<BpfRecord>() == 112);

/// `bpf(2)` commands the kernel programs look at: loads by anyone, and
/// commands that reach one of the agent's own programs, maps or links.
pub mod bpf_cmd {
    /// `BPF_MAP_UPDATE_ELEM`
    pub const MAP_UPDATE_ELEM: u32 = 2;
    /// `BPF_MAP_DELETE_ELEM`
    pub const MAP_DELETE_ELEM: u32 = 3;
    /// `BPF_PROG_LOAD`
    pub const PROG_LOAD: u32 = 5;
    /// `BPF_PROG_GET_FD_BY_ID`
    pub const PROG_GET_FD_BY_ID: u32 = 13;
    /// `BPF_MAP_GET_FD_BY_ID`
    pub const MAP_GET_FD_BY_ID: u32 = 14;
    /// `BPF_MAP_LOOKUP_AND_DELETE_ELEM`
    pub const MAP_LOOKUP_AND_DELETE_ELEM: u32 = 21;
    /// `BPF_MAP_FREEZE`
    pub const MAP_FREEZE: u32 = 22;
    /// `BPF_MAP_LOOKUP_AND_DELETE_BATCH`
    pub const MAP_LOOKUP_AND_DELETE_BATCH: u32 = 25;
    /// `BPF_MAP_UPDATE_BATCH`
    pub const MAP_UPDATE_BATCH: u32 = 26;
    /// `BPF_MAP_DELETE_BATCH`
    pub const MAP_DELETE_BATCH: u32 = 27;
    /// `BPF_LINK_UPDATE`
    pub const LINK_UPDATE: u32 = 29;
    /// `BPF_LINK_GET_FD_BY_ID`
    pub const LINK_GET_FD_BY_ID: u32 = 30;
    /// `BPF_LINK_DETACH`
    pub const LINK_DETACH: u32 = 34;

    /// The kind of object ([`super::agent_object`]) a command acts on by
    /// id (`*_GET_FD_BY_ID`: the id is the attributes' first word).
    pub const fn by_id(cmd: u32) -> u32 {
        match cmd {
            PROG_GET_FD_BY_ID => super::agent_object::PROG,
            MAP_GET_FD_BY_ID => super::agent_object::MAP,
            LINK_GET_FD_BY_ID => super::agent_object::LINK,
            _ => 0,
        }
    }

    /// The kind of object a command changes through a file descriptor
    /// (the attributes' first word).
    pub const fn by_fd(cmd: u32) -> u32 {
        match cmd {
            MAP_UPDATE_ELEM
            | MAP_DELETE_ELEM
            | MAP_LOOKUP_AND_DELETE_ELEM
            | MAP_FREEZE
            | MAP_LOOKUP_AND_DELETE_BATCH
            | MAP_UPDATE_BATCH
            | MAP_DELETE_BATCH => super::agent_object::MAP,
            LINK_UPDATE | LINK_DETACH => super::agent_object::LINK,
            _ => 0,
        }
    }

    /// Stable lower-case name of a command, for events.
    pub const fn name(cmd: u32) -> &'static str {
        match cmd {
            MAP_UPDATE_ELEM => "map_update_elem",
            MAP_DELETE_ELEM => "map_delete_elem",
            PROG_LOAD => "prog_load",
            PROG_GET_FD_BY_ID => "prog_get_fd_by_id",
            MAP_GET_FD_BY_ID => "map_get_fd_by_id",
            MAP_LOOKUP_AND_DELETE_ELEM => "map_lookup_and_delete_elem",
            MAP_FREEZE => "map_freeze",
            MAP_LOOKUP_AND_DELETE_BATCH => "map_lookup_and_delete_batch",
            MAP_UPDATE_BATCH => "map_update_batch",
            MAP_DELETE_BATCH => "map_delete_batch",
            LINK_UPDATE => "link_update",
            LINK_GET_FD_BY_ID => "link_get_fd_by_id",
            LINK_DETACH => "link_detach",
            _ => "other",
        }
    }
}

/// Kinds of the agent's own BPF objects, in the key of the kernel's
/// agent-objects map (`kind << 32 | id`) and in a [`BpfRecord`] that
/// reaches one.
pub mod agent_object {
    /// A program.
    pub const PROG: u32 = 1;
    /// A map.
    pub const MAP: u32 = 2;
    /// A link.
    pub const LINK: u32 = 3;

    /// The key of object `id` of `kind`.
    pub const fn key(kind: u32, id: u32) -> u64 {
        (kind as u64) << 32 | id as u64
    }

    /// Stable lower-case name of a kind.
    pub const fn name(kind: u32) -> &'static str {
        match kind {
            PROG => "program",
            MAP => "map",
            LINK => "link",
            _ => "object",
        }
    }
}

/// Bound on a memfd name captured.
pub const MEMFD_NAME_MAX: usize = 256;

/// A `memfd_create`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MemfdRecord {
    /// `kind::MEMFD`, `file_flags::USER_FAULT` if the name was unreadable.
    pub header: RecordHeader,
    /// Who.
    pub task: TaskInfo,
    /// `MFD_*` flags.
    pub flags: u32,
    /// Return value (the fd).
    pub ret: i32,
    /// Bytes of `name` in use.
    pub name_len: u32,
    /// Always zero.
    pub _pad0: u32,
    /// The name passed (shown as `memfd:NAME` in `/proc/PID/maps`).
    pub name: [u8; MEMFD_NAME_MAX],
}
const _: () = assert!(size_of::<MemfdRecord>() == 352);

/// Operations of a [`MemExecRecord`].
pub mod mem_op {
    /// `mmap` with `PROT_EXEC` and `MAP_ANONYMOUS`.
    pub const MMAP: u8 = 1;
    /// `mprotect` adding `PROT_EXEC` to an anonymous mapping (one that no
    /// file backs: the kernel checks the VMA).
    pub const MPROTECT: u8 = 2;
    /// `mmap` with `PROT_EXEC` of a file opened for writing within
    /// [`super::RECENT_WRITE_NS`]: a [`super::MemExecFileRecord`].
    pub const MMAP_WRITTEN_FILE: u8 = 3;
}

/// How long after a write-open a file counts as recently written, for
/// executable mappings and execs of it.
pub const RECENT_WRITE_NS: u64 = 600_000_000_000;

/// Who last opened a file for writing, and when: a value of the kernel's
/// recent-writes map, keyed by [`InodeKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RecentWrite {
    /// When (`bpf_ktime_get_boot_ns`).
    pub ktime_ns: u64,
    /// The writing process.
    pub pid: u32,
    /// Its real user id.
    pub uid: u32,
}
const _: () = assert!(size_of::<RecentWrite>() == 16);

/// Anonymous memory made executable.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MemExecRecord {
    /// `kind::MEM_EXEC`.
    pub header: RecordHeader,
    /// Who.
    pub task: TaskInfo,
    /// One of [`mem_op`].
    pub op: u8,
    /// Always zero.
    pub _pad0: [u8; 3],
    /// `PROT_*` requested.
    pub prot: u32,
    /// `MAP_*` flags (mmap only).
    pub map_flags: u32,
    /// Always 0: reported when the call is made (the request itself is
    /// the behaviour of interest).
    pub ret: i32,
    /// Start address (mmap: the mapped address on success).
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
}
const _: () = assert!(size_of::<MemExecRecord>() == 112);

/// A file written recently, mapped executable ([`mem_op::MMAP_WRITTEN_FILE`]):
/// a [`MemExecRecord`] followed by the file and its writer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MemExecFileRecord {
    /// The mapping (`kind::MEM_EXEC`, `op` [`mem_op::MMAP_WRITTEN_FILE`]).
    pub mem: MemExecRecord,
    /// The file's device, kernel encoding.
    pub dev: u32,
    /// The file descriptor mapped.
    pub fd: i32,
    /// The file's inode.
    pub ino: u64,
    /// Its last write-open.
    pub written: RecentWrite,
    /// The file, from kernel memory.
    pub path: KernelPath,
}
const _: () = assert!(offset_of!(MemExecFileRecord, path) == 144);
const _: () = assert!(size_of::<MemExecFileRecord>().is_multiple_of(8));

/// A signal sent to another process (kill, tkill, tgkill).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KillRecord {
    /// `kind::KILL`.
    pub header: RecordHeader,
    /// Who.
    pub task: TaskInfo,
    /// Target pid (or tid for tkill/tgkill; negative: a process group).
    pub target: i32,
    /// Signal number.
    pub signal: i32,
    /// Return value.
    pub ret: i32,
    /// 1: kill, 2: tkill, 3: tgkill.
    pub syscall: u32,
}
const _: () = assert!(size_of::<KillRecord>() == 96);

/// File records a process may write per second (`FILE_BUDGET`), after a
/// burst of [`FILE_BURST`]: one process writing files as fast as it can
/// must not fill the ring buffer that every other process's events share.
/// Records of sensitive opens are not limited.
pub const FILE_RATE: u64 = 500;
/// The burst a process may write before [`FILE_RATE`] applies.
pub const FILE_BURST: u64 = 256;

/// A process's budget of file records (value of the `FILE_BUDGET` map,
/// keyed by process id): a token bucket kept as the time its next record
/// is due (GCRA), and what it was refused.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FileBudget {
    /// Boot-clock time at which the budget is back to empty use.
    pub due_ns: u64,
    /// File records not written because the budget was spent.
    pub suppressed: u64,
}
const _: () = assert!(size_of::<FileBudget>() == 16);

/// Bytes of path a [`SyscallRecord`] carries.
pub const SYSCALL_TEXT_MAX: usize = 256;

/// A watched syscall reported as called: process_vm_*, pidfd_*,
/// rt_*sigqueueinfo, the mount family, unshare, setns, io_uring_setup.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SyscallRecord {
    /// `kind::SYSCALL`, `file_flags::USER_FAULT` if `text` was unreadable.
    pub header: RecordHeader,
    /// Who.
    pub task: TaskInfo,
    /// Which syscall (a plain op of [`crate::stash`]).
    pub op: u32,
    /// Bytes of `text` in use.
    pub text_len: u32,
    /// Return value.
    pub ret: i64,
    /// The first four arguments, as passed.
    pub args: [u64; 4],
    /// The path a mount (its target), umount2 or pivot_root (the new root)
    /// names, cut at [`SYSCALL_TEXT_MAX`].
    pub text: [u8; SYSCALL_TEXT_MAX],
}
const _: () = assert!(size_of::<SyscallRecord>() == 384);

/// Key of the `SENSITIVE` map: a directory or file the agent marked as a
/// sensitive location, by device and inode (resolved from configured paths).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InodeKey {
    /// Device, kernel encoding (`major << 20 | minor`).
    pub dev: u32,
    /// Always zero.
    pub _pad0: u32,
    /// Inode number.
    pub ino: u64,
}
const _: () = assert!(size_of::<InodeKey>() == 16);
