//! Decoding of the security-relevant records: network, files, credentials,
//! ptrace, modules, BPF loads, memfd, executable memory, signals.

use std::{
    mem::{offset_of, size_of},
    net::{Ipv4Addr, Ipv6Addr},
};

use monitor_common::{
    BpfRecord, CredRecord, FileRecord, KillRecord, MEMFD_NAME_MAX, MODULE_ARGS_MAX,
    MemExecFileRecord, MemExecRecord, MemfdRecord, ModuleRecord, NetRecord, PtraceRecord,
    RecordHeader, SYSCALL_TEXT_MAX, SyscallRecord, TaskInfo, UNIX_PATH_MAX, agent_object, bpf_cmd,
    cred_op, file_flags, file_op, kind, mem_op, net_flags, net_op, stash,
};

use super::{
    BpfDetail, ByteString, CredDetail, Detail, FileDetail, KillDetail, MemExecDetail, MemfdDetail,
    ModuleDetail, NetDetail, PtraceDetail, SyscallDetail, WrittenFile,
    record::{
        DecodeError, DecodedPath, KernelEvent, Payload, TaskFacts, bounded_len, check_len,
        decode_path, read_at, until_nul,
    },
};

/// Decodes a record whose kind is not a process-lifecycle kind.
pub fn decode(bytes: &[u8], header: RecordHeader, tag: u8) -> Result<KernelEvent, DecodeError> {
    let name = kind::name(tag);
    let detail = match tag {
        kind::NET => {
            check_len::<NetRecord>(bytes, name)?;
            net(&read_at::<NetRecord>(bytes, 0))
        }
        kind::FILE => {
            check_len::<FileRecord>(bytes, name)?;
            file(bytes, header.flags)?
        }
        kind::CRED => {
            check_len::<CredRecord>(bytes, name)?;
            cred(&read_at::<CredRecord>(bytes, 0))
        }
        kind::PTRACE => {
            check_len::<PtraceRecord>(bytes, name)?;
            let r: PtraceRecord = read_at(bytes, 0);
            Detail::Ptrace(PtraceDetail {
                request: ptrace_request(r.request),
                target_pid: r.target,
                result: r.ret,
            })
        }
        kind::MODULE => {
            check_len::<ModuleRecord>(bytes, name)?;
            module(bytes)?
        }
        kind::BPF => {
            check_len::<BpfRecord>(bytes, name)?;
            let r: BpfRecord = read_at(bytes, 0);
            if r.cmd == bpf_cmd::PROG_LOAD {
                Detail::BpfLoad(BpfDetail {
                    prog_type: bpf_prog_type(r.prog_type),
                    prog_name: ByteString::from(until_nul(&r.prog_name)),
                    insn_count: r.insn_cnt,
                    result: r.ret,
                    ..BpfDetail::default()
                })
            } else {
                // A call that reached one of the agent's own objects.
                Detail::BpfLoad(BpfDetail {
                    command: Some(bpf_cmd::name(r.cmd).into()),
                    agent_object: Some(format!(
                        "{} {}",
                        agent_object::name(r.prog_type),
                        r.insn_cnt
                    )),
                    result: r.ret,
                    ..BpfDetail::default()
                })
            }
        }
        kind::MEMFD => {
            check_len::<MemfdRecord>(bytes, name)?;
            let r: MemfdRecord = read_at(bytes, 0);
            let len = bounded_len(name, "name_len", r.name_len as usize, MEMFD_NAME_MAX)?;
            Detail::MemfdCreate(MemfdDetail {
                name: ByteString::from(&r.name[..len]),
                flags: flag_names(r.flags, MFD_FLAGS),
                result: r.ret,
            })
        }
        kind::MEM_EXEC => {
            check_len::<MemExecRecord>(bytes, name)?;
            let r: MemExecRecord = read_at(bytes, 0);
            let file = if r.op == mem_op::MMAP_WRITTEN_FILE {
                check_len::<MemExecFileRecord>(bytes, name)?;
                Some(written_file(bytes, header.ktime_ns)?)
            } else {
                None
            };
            Detail::MemExec(MemExecDetail {
                syscall: if r.op == mem_op::MPROTECT {
                    "mprotect"
                } else {
                    "mmap"
                }
                .into(),
                address: format!("{:#x}", r.addr),
                length: r.len,
                prot: flag_names(r.prot, PROT_FLAGS),
                result: r.ret,
                file,
            })
        }
        kind::KILL => {
            check_len::<KillRecord>(bytes, name)?;
            let r: KillRecord = read_at(bytes, 0);
            Detail::Kill(KillDetail {
                syscall: match r.syscall {
                    2 => "tkill",
                    3 => "tgkill",
                    _ => "kill",
                }
                .into(),
                target_pid: r.target,
                signal: r.signal,
                signal_name: signal_name(r.signal),
                result: r.ret,
            })
        }
        kind::SYSCALL => {
            check_len::<SyscallRecord>(bytes, name)?;
            let r: SyscallRecord = read_at(bytes, 0);
            let len = bounded_len(name, "text_len", r.text_len as usize, SYSCALL_TEXT_MAX)?;
            if !stash::is_plain(r.op) {
                return Err(DecodeError::BadValue {
                    kind: name,
                    field: "op",
                    value: u64::from(r.op),
                    rule: format!(
                        "a syscall op between {} and {}",
                        stash::PROCESS_VM_READV,
                        stash::IO_URING_SUBMIT
                    ),
                });
            }
            let syscall = if r.op == stash::IO_URING_SUBMIT {
                let Some(name) = stash::io_uring_op_name(r.args[0]) else {
                    return Err(DecodeError::BadValue {
                        kind: name,
                        field: "args[0]",
                        value: r.args[0],
                        rule: "a watched io_uring opcode".into(),
                    });
                };
                format!("io_uring_{name}")
            } else {
                stash::plain_name(r.op).to_owned()
            };
            Detail::Syscall(SyscallDetail {
                syscall,
                args: r.args.to_vec(),
                path: (len > 0).then(|| ByteString::from(&r.text[..len])),
                result: r.ret,
            })
        }
        other => return Err(DecodeError::UnknownKind(other)),
    };
    let task: TaskInfo = read_at(bytes, size_of::<RecordHeader>());
    Ok(KernelEvent {
        ktime_ns: header.ktime_ns,
        task: Some(TaskFacts::from(&task)),
        payload: Payload::Event(detail),
    })
}

fn net(r: &NetRecord) -> Detail {
    let family = match r.family {
        1 => "unix".to_owned(),
        2 => "inet".to_owned(),
        10 => "inet6".to_owned(),
        16 => "netlink".to_owned(),
        17 => "packet".to_owned(),
        0 => "unknown".to_owned(),
        n => format!("af_{n}"),
    };
    let ip = |a: &[u8; 16]| match r.family {
        2 => Some(Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string()),
        10 => Some(Ipv6Addr::from(*a).to_string()),
        _ => None,
    };
    let inet = matches!(r.family, 2 | 10);
    let unix_path = (r.family == 1 && r.unix_path_len > 0).then(|| {
        let len = (r.unix_path_len as usize).min(UNIX_PATH_MAX);
        let raw = &r.unix_path[..len];
        match raw.first() {
            // Abstract socket: a leading NUL, shown as `@` (as `ss` does).
            Some(0) => {
                let mut shown = b"@".to_vec();
                shown.extend_from_slice(until_nul(&raw[1..]));
                ByteString(shown)
            }
            _ => ByteString::from(until_nul(raw)),
        }
    });
    let mut incomplete = Vec::new();
    if r.header.flags & net_flags::ADDR_FAULT != 0 {
        incomplete.push("address unreadable: user memory not present");
    }
    if r.header.flags & net_flags::SOCK_FAULT != 0 {
        incomplete.push("socket state unreadable");
    }
    let accept = r.op == net_op::ACCEPT;
    let detail = NetDetail {
        family,
        sock_type: match r.sock_type {
            0 => None,
            1 => Some("stream".into()),
            2 => Some("dgram".into()),
            3 => Some("raw".into()),
            5 => Some("seqpacket".into()),
            n => Some(format!("type_{n}")),
        },
        address: if inet { ip(&r.addr) } else { None },
        port: inet.then_some(r.port),
        local_address: if accept && inet {
            ip(&r.local_addr)
        } else {
            None
        },
        local_port: (accept && inet).then_some(r.local_port),
        unix_path,
        fd: r.fd,
        backlog: (r.op == net_op::LISTEN).then_some(r.backlog),
        result: r.ret,
        incomplete: (!incomplete.is_empty()).then(|| incomplete.join("; ")),
    };
    match r.op {
        net_op::CONNECT => Detail::Connect(detail),
        net_op::ACCEPT => Detail::Accept(detail),
        net_op::BIND => Detail::Bind(detail),
        _ => Detail::Listen(detail),
    }
}

/// Joins a base directory and a relative name, resolving `.` and `..`
/// lexically (the kernel's own resolution may differ through symlinks).
pub fn join_relative(base: &[u8], name: &[u8]) -> ByteString {
    let mut parts: Vec<&[u8]> = Vec::new();
    let joined = if name.first() == Some(&b'/') {
        name.to_vec()
    } else {
        [base, b"/", name].concat()
    };
    for part in joined.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    let mut out = Vec::with_capacity(joined.len());
    for p in parts {
        out.push(b'/');
        out.extend_from_slice(p);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    ByteString(out)
}

fn resolve(path: &DecodedPath, base: &DecodedPath) -> ByteString {
    if path.user_string && !base.absent && !base.path.is_empty() {
        join_relative(base.path.as_bytes(), path.path.as_bytes())
    } else {
        path.path.clone()
    }
}

/// The file part of a [`MemExecFileRecord`] (length already checked).
fn written_file(bytes: &[u8], mapped_ns: u64) -> Result<WrittenFile, DecodeError> {
    let r: MemExecFileRecord = read_at(bytes, 0);
    let path = decode_path(
        bytes,
        offset_of!(MemExecFileRecord, path),
        "mem_exec",
        "path",
    )?;
    Ok(WrittenFile {
        path: path.path,
        inode: r.ino,
        dev: r.dev,
        written_by_pid: r.written.pid,
        written_by_uid: r.written.uid,
        written_ms_before: mapped_ns.saturating_sub(r.written.ktime_ns) / 1_000_000,
    })
}

fn file(bytes: &[u8], hflags: u16) -> Result<Detail, DecodeError> {
    const KIND: &str = "file";
    let op: u8 = read_at(bytes, offset_of!(FileRecord, op));
    let ret: i32 = read_at(bytes, offset_of!(FileRecord, ret));
    let open_flags: u32 = read_at(bytes, offset_of!(FileRecord, open_flags));
    let path = decode_path(bytes, offset_of!(FileRecord, path), KIND, "path")?;
    let path2 = decode_path(bytes, offset_of!(FileRecord, path2), KIND, "path2")?;
    let base = decode_path(bytes, offset_of!(FileRecord, base), KIND, "base")?;
    let mut incomplete = Vec::new();
    if hflags & file_flags::USER_FAULT != 0 {
        incomplete.push("name unreadable: user memory not present");
    }
    if path.truncated || path2.truncated {
        incomplete.push("path truncated at the capture bound");
    }
    if path.fault || base.fault {
        incomplete.push("path partly unreadable in kernel memory");
    }
    let detail = FileDetail {
        path: resolve(&path, &base),
        new_path: match op {
            _ if path2.absent => None,
            file_op::RENAME | file_op::LINK => Some(resolve(&path2, &base)),
            // A symlink's target is text, resolved only when followed.
            file_op::SYMLINK => Some(path2.path.clone()),
            _ => None,
        },
        flags: if op == file_op::OPEN {
            open_flag_names(open_flags)
        } else {
            Vec::new()
        },
        write: hflags & file_flags::WRITE != 0,
        sensitive: hflags & file_flags::SENSITIVE != 0,
        result: ret,
        incomplete: (!incomplete.is_empty()).then(|| incomplete.join("; ")),
    };
    Ok(match op {
        file_op::OPEN => Detail::FileOpen(detail),
        file_op::UNLINK => Detail::FileUnlink(detail),
        file_op::LINK => Detail::FileLink(detail),
        file_op::SYMLINK => Detail::FileSymlink(detail),
        _ => Detail::FileRename(detail),
    })
}

fn cred(r: &CredRecord) -> Detail {
    let (name, nargs) = match r.op {
        cred_op::SETUID => ("setuid", 1),
        cred_op::SETREUID => ("setreuid", 2),
        cred_op::SETRESUID => ("setresuid", 3),
        cred_op::SETFSUID => ("setfsuid", 1),
        cred_op::SETGID => ("setgid", 1),
        cred_op::SETREGID => ("setregid", 2),
        cred_op::SETRESGID => ("setresgid", 3),
        cred_op::SETFSGID => ("setfsgid", 1),
        _ => ("capset", 0),
    };
    Detail::CredChange(CredDetail {
        syscall: name.into(),
        args: r.args[..nargs]
            .iter()
            .map(|&a| i64::from(a as i32))
            .collect(),
        old_uids: r.old_uid,
        old_gids: r.old_gid,
        new_uids: r.new_uid,
        new_gids: r.new_gid,
        old_caps: format!("{:#x}", r.old_cap_effective),
        new_caps: format!("{:#x}", r.new_cap_effective),
        result: r.ret,
    })
}

fn module(bytes: &[u8]) -> Result<Detail, DecodeError> {
    let r_op: u8 = read_at(bytes, offset_of!(ModuleRecord, op));
    let ret: i32 = read_at(bytes, offset_of!(ModuleRecord, ret));
    let len = bounded_len(
        "module",
        "args_len",
        read_at::<u32>(bytes, offset_of!(ModuleRecord, args_len)) as usize,
        MODULE_ARGS_MAX,
    )?;
    let at = offset_of!(ModuleRecord, args);
    let path = decode_path(bytes, offset_of!(ModuleRecord, path), "module", "path")?;
    Ok(Detail::ModuleLoad(ModuleDetail {
        syscall: if r_op == 2 {
            "finit_module"
        } else {
            "init_module"
        }
        .into(),
        path: (!path.absent).then_some(path.path),
        params: ByteString::from(&bytes[at..at + len]),
        result: ret,
    }))
}

fn flag_names(value: u32, table: &[(u32, &str)]) -> Vec<String> {
    let mut names: Vec<String> = table
        .iter()
        .filter(|(bit, _)| value & bit != 0)
        .map(|(_, n)| (*n).to_owned())
        .collect();
    let known: u32 = table.iter().map(|(b, _)| b).fold(0, |a, b| a | b);
    if value & !known != 0 {
        names.push(format!("{:#x}", value & !known));
    }
    names
}

const MFD_FLAGS: &[(u32, &str)] = &[
    (0x1, "MFD_CLOEXEC"),
    (0x2, "MFD_ALLOW_SEALING"),
    (0x4, "MFD_HUGETLB"),
    (0x8, "MFD_NOEXEC_SEAL"),
    (0x10, "MFD_EXEC"),
];
const PROT_FLAGS: &[(u32, &str)] = &[(0x1, "PROT_READ"), (0x2, "PROT_WRITE"), (0x4, "PROT_EXEC")];

/// Open flags as names; the access mode first.
pub fn open_flag_names(flags: u32) -> Vec<String> {
    const FLAGS: &[(u32, &str)] = &[
        (0o100, "O_CREAT"),
        (0o200, "O_EXCL"),
        (0o400, "O_NOCTTY"),
        (0o1000, "O_TRUNC"),
        (0o2000, "O_APPEND"),
        (0o4000, "O_NONBLOCK"),
        (0o10000, "O_DSYNC"),
        (0o40000, "O_DIRECT"),
        (0o100000, "O_LARGEFILE"),
        (0o200000, "O_DIRECTORY"),
        (0o400000, "O_NOFOLLOW"),
        (0o1000000, "O_NOATIME"),
        (0o2000000, "O_CLOEXEC"),
        (0o4010000, "O_SYNC"),
        (0o10000000, "O_PATH"),
        (0o20200000, "O_TMPFILE"),
    ];
    let mode = match flags & 0o3 {
        0 => "O_RDONLY",
        1 => "O_WRONLY",
        2 => "O_RDWR",
        _ => "O_ACCMODE",
    };
    let mut names = vec![mode.to_owned()];
    let mut rest = flags & !0o3;
    for &(bits, name) in FLAGS {
        if bits & rest == bits {
            names.push(name.to_owned());
            rest &= !bits;
        }
    }
    if rest != 0 {
        names.push(format!("{rest:#o}"));
    }
    names
}

fn ptrace_request(request: i64) -> String {
    match request {
        0 => "PTRACE_TRACEME".into(),
        4 => "PTRACE_POKETEXT".into(),
        5 => "PTRACE_POKEDATA".into(),
        6 => "PTRACE_POKEUSER".into(),
        13 => "PTRACE_SETREGS".into(),
        15 => "PTRACE_SETFPREGS".into(),
        16 => "PTRACE_ATTACH".into(),
        0x4205 => "PTRACE_SETREGSET".into(),
        0x4206 => "PTRACE_SEIZE".into(),
        n => format!("PTRACE_{n}"),
    }
}

fn bpf_prog_type(t: u32) -> String {
    const NAMES: &[&str] = &[
        "unspec",
        "socket_filter",
        "kprobe",
        "sched_cls",
        "sched_act",
        "tracepoint",
        "xdp",
        "perf_event",
        "cgroup_skb",
        "cgroup_sock",
        "lwt_in",
        "lwt_out",
        "lwt_xmit",
        "sock_ops",
        "sk_skb",
        "cgroup_device",
        "sk_msg",
        "raw_tracepoint",
        "cgroup_sock_addr",
        "lwt_seg6local",
        "lirc_mode2",
        "sk_reuseport",
        "flow_dissector",
        "cgroup_sysctl",
        "raw_tracepoint_writable",
        "cgroup_sockopt",
        "tracing",
        "struct_ops",
        "ext",
        "lsm",
        "sk_lookup",
        "syscall",
        "netfilter",
    ];
    NAMES
        .get(t as usize)
        .map_or_else(|| format!("type_{t}"), |n| (*n).to_owned())
}

/// Signal name (`SIGKILL`), or the number.
pub fn signal_name(sig: i32) -> String {
    const NAMES: &[&str] = &[
        "",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    match sig {
        1..=31 => NAMES[sig as usize].to_owned(),
        34..=64 => format!("SIGRTMIN+{}", sig - 34),
        n => format!("signal {n}"),
    }
}

#[cfg(test)]
mod tests {
    use monitor_common::path_flags;

    use super::*;
    use crate::event::record::test_records::{blank, put, put_path, put_task};

    /// Decodes a whole record, header first, as `decode::decode` does for
    /// the security kinds.
    fn decode_any(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
        let header: RecordHeader = read_at(bytes, 0);
        decode(bytes, header, header.kind)
    }

    #[test]
    fn decodes_a_connect_record() {
        let mut b = blank::<NetRecord>(kind::NET);
        put_task(&mut b, 9, 1, b"curl");
        put(&mut b, offset_of!(NetRecord, op), net_op::CONNECT);
        put(&mut b, offset_of!(NetRecord, family), 2u16);
        put(&mut b, offset_of!(NetRecord, port), 8080u16);
        put(
            &mut b,
            offset_of!(NetRecord, addr),
            [127u8, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        );
        put(&mut b, offset_of!(NetRecord, sock_type), 1u16);
        let ev = decode_any(&b).unwrap();
        let Payload::Event(Detail::Connect(net)) = ev.payload else {
            panic!("not connect")
        };
        assert_eq!(net.address.as_deref(), Some("127.0.0.1"));
        assert_eq!(net.port, Some(8080));
        assert_eq!(net.sock_type.as_deref(), Some("stream"));
        assert_eq!(net.incomplete, None);
    }

    #[test]
    fn a_faulted_address_says_so() {
        let mut b = blank::<NetRecord>(kind::NET);
        b[2..4].copy_from_slice(&net_flags::ADDR_FAULT.to_le_bytes());
        put(&mut b, offset_of!(NetRecord, op), net_op::CONNECT);
        let Payload::Event(Detail::Connect(net)) = decode_any(&b).unwrap().payload else {
            panic!()
        };
        assert!(net.incomplete.unwrap().contains("not present"));
        assert_eq!(net.address, None);
    }

    #[test]
    fn abstract_unix_sockets_are_shown_with_an_at_sign() {
        let mut b = blank::<NetRecord>(kind::NET);
        put(&mut b, offset_of!(NetRecord, op), net_op::CONNECT);
        put(&mut b, offset_of!(NetRecord, family), 1u16);
        let at = offset_of!(NetRecord, unix_path);
        b[at..at + 5].copy_from_slice(b"\0bus\0");
        put(&mut b, offset_of!(NetRecord, unix_path_len), 5u16);
        let Payload::Event(Detail::Connect(net)) = decode_any(&b).unwrap().payload else {
            panic!()
        };
        assert_eq!(net.unix_path.unwrap().as_bytes(), b"@bus");
    }

    #[test]
    fn relative_names_join_their_base() {
        let mut b = blank::<FileRecord>(kind::FILE);
        put(&mut b, offset_of!(FileRecord, op), file_op::UNLINK);
        let path_at = offset_of!(FileRecord, path);
        put_path(&mut b, path_at, &[], path_flags::USER_STRING);
        let data = path_at + 8;
        b[data..data + 10].copy_from_slice(b"../x/y.txt");
        put(&mut b, path_at, 11u16);
        put_path(&mut b, offset_of!(FileRecord, base), &[b"sub", b"tmp"], 0);
        put_path(
            &mut b,
            offset_of!(FileRecord, path2),
            &[],
            path_flags::ABSENT,
        );
        let Payload::Event(Detail::FileUnlink(f)) = decode_any(&b).unwrap().payload else {
            panic!()
        };
        assert_eq!(f.path.as_bytes(), b"/tmp/x/y.txt");
        assert_eq!(join_relative(b"/", b"..").as_bytes(), b"/");
    }

    #[test]
    fn names_flags_and_signals() {
        assert_eq!(
            open_flag_names(0o1101),
            vec!["O_WRONLY", "O_CREAT", "O_TRUNC"]
        );
        assert_eq!(open_flag_names(0o2000000), vec!["O_RDONLY", "O_CLOEXEC"]);
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(35), "SIGRTMIN+1");
        assert_eq!(flag_names(0x5, PROT_FLAGS), vec!["PROT_READ", "PROT_EXEC"]);
    }

    #[test]
    fn short_security_records_are_rejected() {
        let b = blank::<CredRecord>(kind::CRED);
        let err = decode_any(&b[..100]).unwrap_err();
        assert!(
            matches!(err, DecodeError::Short { kind: "cred", .. }),
            "{err}"
        );
    }
}
