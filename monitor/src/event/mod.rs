//! The one event model: an envelope (time, process, parent, ancestry) and a
//! per-kind detail, serialized as one JSON object per line with a `kind`
//! field and snake_case keys. The format is specified in `docs/events.md`.
//!
//! Kernel records become these typed, owned values once, at the edge
//! ([`decode`]); everything downstream (process table, windows, the model,
//! sinks, replay) sees only this type.

pub mod bytes;
pub mod decode;
pub mod decode_security;
pub mod record;
pub mod shared;
pub mod time;
pub mod unpack;

use std::{borrow::Cow, collections::BTreeMap};

use serde::{Deserialize, Serialize};

use self::shared::Shared;
pub use self::{bytes::ByteString, time::Timestamp};

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// What happened: the `kind` tag and its fields.
    #[serde(flatten)]
    pub detail: Detail,
    /// When it happened (UTC, nanoseconds).
    pub time: Timestamp,
    /// The process that acted (for fork: the new child).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Shared<Process>>,
    /// The image that started this one: the parent process, or, when the
    /// process exec'd again without forking, the image it replaced (same pid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Shared<Process>>,
    /// Every ancestor image, nearest first (the parent first), up to pid 1
    /// (on exec events).
    #[serde(default = "no_ancestry", skip_serializing_if = "is_empty_chain")]
    pub ancestry: Shared<Vec<Ancestor>>,
}

/// An empty ancestry, without an allocation per event.
pub fn no_ancestry() -> Shared<Vec<Ancestor>> {
    static EMPTY: std::sync::LazyLock<Shared<Vec<Ancestor>>> =
        std::sync::LazyLock::new(|| Shared::new(Vec::new()));
    EMPTY.clone()
}

fn is_empty_chain(chain: &Shared<Vec<Ancestor>>) -> bool {
    chain.is_empty()
}

impl Event {
    /// An event with no process context.
    pub fn new(time: Timestamp, detail: Detail) -> Self {
        Self {
            detail,
            time,
            process: None,
            parent: None,
            ancestry: no_ancestry(),
        }
    }

    /// The same event `by` later: its time, its processes' start times and
    /// a count's span (to replay one recording as another host, later).
    pub fn shift(&mut self, by: std::time::Duration) {
        self.time = self.time.plus(by);
        for process in [&mut self.process, &mut self.parent].into_iter().flatten() {
            if let Some(start) = process.start_time {
                let mut later = Process::clone(process);
                later.start_time = Some(start.plus(by));
                *process = Shared::new(later);
            }
        }
        if let Detail::SyscallCounts(counts) = &mut self.detail {
            counts.since = counts.since.plus(by);
            counts.until = counts.until.plus(by);
        }
    }

    /// The `kind` tag as it appears in JSON.
    pub fn kind(&self) -> &'static str {
        self.detail.kind()
    }
}

/// The identity and context of a process, as the agent knows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Process {
    /// Process id (thread group id).
    pub pid: u32,
    /// The thread that acted, when it is not the main thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<u32>,
    /// Parent process id.
    pub ppid: u32,
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// Effective user id.
    pub euid: u32,
    /// Effective group id.
    pub egid: u32,
    /// User name of `uid`, if the host knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Kernel `comm` (at most 15 bytes).
    pub comm: ByteString,
    /// Executable path, resolved by the kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<ByteString>,
    /// The script `exe` interprets, when the image is a `#!` script
    /// (absolute: resolved against the process's working directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<ByteString>,
    /// Argument vector of the current image, when known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<ByteString>,
    /// cgroup v2 id.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cgroup_id: u64,
    /// Container id, when the cgroup path names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// When the process started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Timestamp>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// An ancestor in a process chain.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ancestor {
    /// Process id.
    pub pid: u32,
    /// Executable path, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<ByteString>,
    /// Argument vector, when known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<ByteString>,
    /// `args` was cut (see `process::ANCESTOR_ARGS_MAX`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub args_truncated: bool,
    /// Kernel `comm`.
    pub comm: ByteString,
    /// Real user id.
    pub uid: u32,
}

/// Per-kind details. The variant name, in snake_case, is the `kind` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Detail {
    /// A process replaced its image.
    Exec(ExecDetail),
    /// A new process was created (`process` is the child, `parent` the forker).
    Fork(ForkDetail),
    /// A process ended.
    Exit(ExitDetail),
    /// Outbound socket connection attempt.
    Connect(NetDetail),
    /// Inbound connection accepted.
    Accept(NetDetail),
    /// Socket bound to a local address.
    Bind(NetDetail),
    /// Socket listening.
    Listen(NetDetail),
    /// File opened for writing, or under a sensitive location.
    FileOpen(FileDetail),
    /// File removed.
    FileUnlink(FileDetail),
    /// File renamed.
    FileRename(FileDetail),
    /// Hard link made (`path` the existing file, `new_path` the new name).
    FileLink(FileDetail),
    /// Symbolic link made (`path` the link, `new_path` its target as given).
    FileSymlink(FileDetail),
    /// A watched syscall, as called (process memory access, pidfd,
    /// queued signals, mounts and namespaces, io_uring).
    Syscall(SyscallDetail),
    /// setuid/setgid family or capset.
    CredChange(CredDetail),
    /// ptrace of another process.
    Ptrace(PtraceDetail),
    /// Kernel module load attempt.
    ModuleLoad(ModuleDetail),
    /// BPF program load by another process.
    BpfLoad(BpfDetail),
    /// memfd_create.
    MemfdCreate(MemfdDetail),
    /// Anonymous memory made executable.
    MemExec(MemExecDetail),
    /// Signal sent to another process.
    Kill(KillDetail),
    /// Syscall counts of one process between two drains.
    #[serde(alias = "syscall_profile")]
    SyscallCounts(CountsDetail),
    /// Events the agent could not deliver or see, by reason. Never silent.
    Loss(LossDetail),
}

impl Detail {
    /// The `kind` tag.
    pub fn kind(&self) -> &'static str {
        match self {
            Detail::Exec(_) => "exec",
            Detail::Fork(_) => "fork",
            Detail::Exit(_) => "exit",
            Detail::Connect(_) => "connect",
            Detail::Accept(_) => "accept",
            Detail::Bind(_) => "bind",
            Detail::Listen(_) => "listen",
            Detail::FileOpen(_) => "file_open",
            Detail::FileUnlink(_) => "file_unlink",
            Detail::FileRename(_) => "file_rename",
            Detail::FileLink(_) => "file_link",
            Detail::FileSymlink(_) => "file_symlink",
            Detail::Syscall(_) => "syscall",
            Detail::CredChange(_) => "cred_change",
            Detail::Ptrace(_) => "ptrace",
            Detail::ModuleLoad(_) => "module_load",
            Detail::BpfLoad(_) => "bpf_load",
            Detail::MemfdCreate(_) => "memfd_create",
            Detail::MemExec(_) => "mem_exec",
            Detail::Kill(_) => "kill",
            Detail::SyscallCounts(_) => "syscall_counts",
            Detail::Loss(_) => "loss",
        }
    }
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// Exec details.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecDetail {
    /// The executed file, resolved by the kernel (`/usr/bin/echo` for `/bin/echo`).
    pub path: ByteString,
    /// The name as passed to exec (may be relative, a symlink, or a script).
    pub filename: ByteString,
    /// Argument vector.
    pub args: Vec<ByteString>,
    /// Argument bytes were cut at the capture bound.
    #[serde(default, skip_serializing_if = "is_false")]
    pub args_truncated: bool,
    /// Size in bytes of the whole argument block in the process.
    pub args_size: u32,
    /// The path was cut at the capture bound or could not be fully read.
    #[serde(default, skip_serializing_if = "is_false")]
    pub path_truncated: bool,
    /// The executed file has no name on disk (memfd or deleted): fileless.
    #[serde(default, skip_serializing_if = "is_false")]
    pub fileless: bool,
    /// A script: `path` is its interpreter, `filename` the script.
    #[serde(default, skip_serializing_if = "is_false")]
    pub script: bool,
    /// For a script, `filename` made absolute (against the process's
    /// working directory, as the agent read it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_path: Option<ByteString>,
    /// The executed file was opened for writing in the last 10 minutes (a
    /// file dropped and run), as the kernel saw it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub recently_written: bool,
    /// Set-user-id or set-group-id executable.
    #[serde(default, skip_serializing_if = "is_false")]
    pub setuid: bool,
    /// Owner uid of the executed file.
    pub file_uid: u32,
    /// Permission bits of the executed file (octal in text: e.g. 493 = 0o755).
    pub file_mode: u32,
    /// Inode of the executed file.
    pub inode: u64,
    /// Device of the executed file (kernel encoding: major << 20 | minor).
    #[serde(default)]
    pub dev: u32,
    /// What the executed file is, as the agent identified it (contents
    /// hash, location); absent when it could not be identified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<ExeIdentity>,
    /// Thread that called exec, when not the main thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_tid: Option<u32>,
}

/// The name a program's behaviour is learned and reported under: its
/// executable, and for a script the interpreter and the script both
/// (`/usr/bin/python3 /opt/app/serve.py`), so two scripts of one
/// interpreter are two programs, and a script run by another interpreter
/// is another program.
pub fn program_name(exe: &ByteString, script: Option<&ByteString>) -> String {
    match script {
        Some(script) => format!("{} {}", exe.to_string_lossy(), script.to_string_lossy()),
        None => exe.to_string_lossy().into_owned(),
    }
}

/// What an executed file is (see `process::exe_identity`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExeIdentity {
    /// SHA-256 of its contents (hex), when it was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// It is in a directory anyone can write to (`/tmp`, `/dev/shm`, ...).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub world_writable_dir: bool,
    /// It is on a memory-backed file system (tmpfs, ramfs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub memory_backed: bool,
    /// The process's mount namespace (its inode), when not the agent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_ns: Option<u64>,
}

/// A watched syscall, as called.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyscallDetail {
    /// The syscall (`process_vm_writev`, `mount`, `unshare`, ...).
    pub syscall: String,
    /// Its first four arguments, as passed.
    pub args: Vec<u64>,
    /// The path it names (mount target, umount2 target, pivot_root's new
    /// root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<ByteString>,
    /// Return value.
    pub result: i64,
}

impl SyscallDetail {
    /// The process it acts on, for the calls that name one by pid.
    pub fn target_pid(&self) -> Option<u32> {
        match self.syscall.as_str() {
            "process_vm_readv" | "process_vm_writev" | "rt_sigqueueinfo" | "rt_tgsigqueueinfo" => {
                self.args.first().map(|&a| a as u32)
            }
            _ => None,
        }
    }

    /// The action fact a window learns from it: the syscall, and for
    /// namespaces the kinds asked for.
    pub fn action(&self) -> String {
        let ns = |flags: u64| -> String {
            const NS: [(u64, &str); 7] = [
                (0x0002_0000, "mnt"),
                (0x0400_0000, "uts"),
                (0x0800_0000, "ipc"),
                (0x1000_0000, "user"),
                (0x2000_0000, "pid"),
                (0x4000_0000, "net"),
                (0x0200_0000, "cgroup"),
            ];
            let names: Vec<&str> = NS
                .iter()
                .filter(|(bit, _)| flags & bit != 0)
                .map(|(_, n)| *n)
                .collect();
            if names.is_empty() {
                String::new()
            } else {
                format!(":{}", names.join("+"))
            }
        };
        match self.syscall.as_str() {
            "unshare" => format!("unshare{}", ns(self.args.first().copied().unwrap_or(0))),
            "setns" => format!("setns{}", ns(self.args.get(1).copied().unwrap_or(0))),
            other => other.to_owned(),
        }
    }
}

/// Fork details.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ForkDetail {
    /// Thread of the parent that forked.
    pub parent_tid: u32,
}

/// Exit details.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExitDetail {
    /// Exit status (0-255) when the process exited normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Terminating signal number when it was killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// A core dump was written.
    #[serde(default, skip_serializing_if = "is_false")]
    pub core_dumped: bool,
    /// Raw wait status.
    pub status: u32,
}

/// Socket operation details.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetDetail {
    /// `inet`, `inet6`, `unix` or `af_N`.
    pub family: String,
    /// `stream`, `dgram`, ... when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sock_type: Option<String>,
    /// Remote address (connect, accept) or local address (bind, listen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Remote port (connect, accept) or local port (bind, listen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Local address (accept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_address: Option<String>,
    /// Local port (accept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_port: Option<u16>,
    /// Unix socket path (abstract names start with `@`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix_path: Option<ByteString>,
    /// Socket file descriptor.
    pub fd: i32,
    /// listen backlog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog: Option<i32>,
    /// Syscall result: 0 or a new fd on success, negative errno on failure.
    pub result: i32,
    /// Why a field is missing (e.g. `address unreadable: page not present`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete: Option<String>,
}

/// File operation details.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FileDetail {
    /// The file (for rename: the old name). Absolute when the kernel or the
    /// process context resolved it.
    pub path: ByteString,
    /// Rename: the new name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_path: Option<ByteString>,
    /// Open flags as names (`O_WRONLY`, `O_CREAT`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// The open writes, creates or truncates.
    #[serde(default, skip_serializing_if = "is_false")]
    pub write: bool,
    /// The path is under a configured sensitive location.
    #[serde(default, skip_serializing_if = "is_false")]
    pub sensitive: bool,
    /// Syscall result.
    pub result: i32,
    /// Why the path may be incomplete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete: Option<String>,
}

/// Credential change details.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CredDetail {
    /// The syscall (`setuid`, `setresgid`, `capset`, ...).
    pub syscall: String,
    /// Its id arguments (-1 means unchanged).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<i64>,
    /// Real, effective and saved uid before the call.
    pub old_uids: [u32; 3],
    /// Real, effective and saved gid before the call.
    pub old_gids: [u32; 3],
    /// Real, effective and saved uid after the call.
    pub new_uids: [u32; 3],
    /// Real, effective and saved gid after the call.
    pub new_gids: [u32; 3],
    /// Effective capabilities before (hex).
    pub old_caps: String,
    /// Effective capabilities after (hex).
    pub new_caps: String,
    /// Syscall result.
    pub result: i32,
}

/// ptrace details.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PtraceDetail {
    /// Request name (`PTRACE_ATTACH`, ...) or number.
    pub request: String,
    /// Target thread id.
    pub target_pid: i32,
    /// Syscall result.
    pub result: i32,
}

/// Module load details.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModuleDetail {
    /// `init_module` or `finit_module`.
    pub syscall: String,
    /// The module file (finit_module).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<ByteString>,
    /// Parameter string.
    pub params: ByteString,
    /// Syscall result.
    pub result: i32,
}

/// BPF program load details.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BpfDetail {
    /// Program type name or number (a load).
    pub prog_type: String,
    /// Program name (a load).
    pub prog_name: ByteString,
    /// Instruction count (a load).
    pub insn_count: u32,
    /// Syscall result.
    pub result: i32,
    /// The `bpf(2)` command, when not a program load (`map_update_elem`,
    /// `link_detach`, `map_get_fd_by_id`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The agent's own object the command reached (`map 19`, `link 7`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_object: Option<String>,
}

/// memfd_create details.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemfdDetail {
    /// The name given.
    pub name: ByteString,
    /// `MFD_*` flags as names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// Syscall result (the fd).
    pub result: i32,
}

/// Executable memory details: anonymous memory made executable, or a
/// recently written file mapped executable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemExecDetail {
    /// `mmap` or `mprotect`.
    pub syscall: String,
    /// Start address (hex).
    pub address: String,
    /// Length in bytes.
    pub length: u64,
    /// Protection as names.
    pub prot: Vec<String>,
    /// Syscall result.
    pub result: i32,
    /// The file mapped, when the memory is a file written moments ago
    /// rather than anonymous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<WrittenFile>,
}

/// A file mapped executable shortly after it was opened for writing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WrittenFile {
    /// The file, as the kernel resolved it.
    pub path: ByteString,
    /// Its inode.
    pub inode: u64,
    /// Its device (kernel encoding: major << 20 | minor).
    pub dev: u32,
    /// The process that last opened it for writing.
    pub written_by_pid: u32,
    /// That process's real user id.
    pub written_by_uid: u32,
    /// Milliseconds between that write-open and the mapping.
    pub written_ms_before: u64,
}

/// Signal details.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KillDetail {
    /// `kill`, `tkill` or `tgkill`.
    pub syscall: String,
    /// Target pid (negative: a process group).
    pub target_pid: i32,
    /// Signal number.
    pub signal: i32,
    /// Signal name (`SIGKILL`...).
    pub signal_name: String,
    /// Syscall result.
    pub result: i32,
}

/// Syscall counts of one process between two drains.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CountsDetail {
    /// Counted since (the previous drain, or the thread's start).
    #[serde(alias = "window_start")]
    pub since: Timestamp,
    /// Counted until (this drain).
    #[serde(alias = "window_end")]
    pub until: Timestamp,
    /// Total syscalls counted.
    pub total: u64,
    /// Count by canonical syscall name (names from the syscall table are
    /// borrowed, not allocated per event).
    pub counts: BTreeMap<Cow<'static, str>, u64>,
    /// Counts of consecutive-syscall pair buckets (bucket index -> count).
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "numeric_keys"
    )]
    pub pairs: BTreeMap<u16, u64>,
    /// The process exited since the previous drain: these are its last counts.
    #[serde(default, skip_serializing_if = "is_false", alias = "final_window")]
    pub final_counts: bool,
}

/// Loss report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LossDetail {
    /// New losses since the previous report, by counter name
    /// (e.g. `ringbuf_full.exec`, `user_read_fault.net`).
    pub counts: BTreeMap<String, u64>,
    /// Totals since the agent started.
    pub totals: BTreeMap<String, u64>,
    /// Records refused per process (`rate_limited.file`, by process id):
    /// only these processes' windows miss something.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_process: BTreeMap<u32, u64>,
    /// The process that lost the most, described for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_process: Option<String>,
}

/// Maps with integer keys, written as JSON objects (string keys) and read
/// back from them; serde's own integer-key support does not survive the
/// buffering that `#[serde(flatten)]` does.
mod numeric_keys {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(map: &BTreeMap<u16, u64>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(map.iter().map(|(k, v)| (k.to_string(), v)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u16, u64>, D::Error> {
        BTreeMap::<String, u64>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| {
                k.parse().map(|k| (k, v)).map_err(|_| {
                    D::Error::custom(format!("pair bucket {k:?} is not a number 0-65535"))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_json() {
        let mut counts = BTreeMap::new();
        counts.insert("getppid".into(), 5);
        let mut pairs = BTreeMap::new();
        pairs.insert(56u16, 1u64);
        let details = vec![
            Detail::Exec(ExecDetail {
                path: b"/x\xff".as_slice().into(),
                ..Default::default()
            }),
            Detail::Exit(ExitDetail {
                exit_code: Some(3),
                ..Default::default()
            }),
            Detail::SyscallCounts(CountsDetail {
                counts,
                pairs,
                ..Default::default()
            }),
            Detail::Loss(LossDetail::default()),
        ];
        for detail in details {
            let mut event = Event::new(Timestamp(1), detail);
            event.process = Some(
                Process {
                    pid: 1,
                    ..Default::default()
                }
                .into(),
            );
            let json = serde_json::to_string(&event).unwrap();
            let back: Event = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(back, event, "{json}");
        }
    }
}
