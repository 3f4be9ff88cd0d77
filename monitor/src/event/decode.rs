//! Raw ring-buffer records to owned, typed values: the edge where kernel
//! bytes stop and the event model starts.
//!
//! Records come from our own programs, but the decoder still treats them as
//! untrusted input: every length is checked against the record and its area,
//! and a bad record is a [`DecodeError`] naming the kind and what is wrong,
//! never a panic or a silently empty field.

use std::mem::{offset_of, size_of};

use monitor_common::{
    BATCH_ENTRIES, BATCH_FLUSH, ExecRecord, ExitRecord, ForkRecord, KernelPath, PATH_AREA,
    RecordHeader, SYSCALL_SLOTS, SyscallBatch, TaskInfo, ThreadCallsRecord, ThreadExitRecord,
    ThreadProfile, exec_flags, kind, path_flags, thread_exit_flags,
};

use super::{ByteString, Detail, ExecDetail, ExitDetail, ForkDetail};

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than a header.
    #[error("record of {len} bytes is shorter than a record header ({min} bytes)")]
    NoHeader {
        /// Bytes received.
        len: usize,
        /// Bytes needed.
        min: usize,
    },
    /// Unknown kind tag (an object from another ABI version?).
    #[error("record has unknown kind tag {0}")]
    UnknownKind(u8),
    /// Shorter than its kind needs.
    #[error("{kind} record of {len} bytes is shorter than its layout ({min} bytes)")]
    Short {
        /// Kind name.
        kind: &'static str,
        /// Bytes received.
        len: usize,
        /// Bytes needed.
        min: usize,
    },
    /// A length field points past its area.
    #[error("{kind} record: field `{field}` claims {claimed} bytes, its area holds {max}")]
    BadLength {
        /// Kind name.
        kind: &'static str,
        /// Field name.
        field: &'static str,
        /// Claimed length.
        claimed: usize,
        /// Area size.
        max: usize,
    },
    /// A field holds a value its layout rules out.
    #[error("{kind} record: field `{field}` is {value}, {rule}")]
    BadValue {
        /// Kind name.
        kind: &'static str,
        /// Field name.
        field: &'static str,
        /// What it holds.
        value: u64,
        /// What it must be.
        rule: String,
    },
}

/// The task fields every record carries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskFacts {
    /// Thread id.
    pub tid: u32,
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// Effective uid.
    pub euid: u32,
    /// Effective gid.
    pub egid: u32,
    /// cgroup id.
    pub cgroup_id: u64,
    /// Boot-time start of the process, ns.
    pub start_ns: u64,
    /// comm.
    pub comm: ByteString,
}

impl From<&TaskInfo> for TaskFacts {
    fn from(t: &TaskInfo) -> Self {
        Self {
            tid: t.tid,
            pid: t.pid,
            ppid: t.ppid,
            uid: t.uid,
            gid: t.gid,
            euid: t.euid,
            egid: t.egid,
            cgroup_id: t.cgroup_id,
            start_ns: t.start_ns,
            comm: ByteString::from(until_nul(&t.comm)),
        }
    }
}

/// A decoded record.
#[derive(Debug, Clone)]
pub struct KernelEvent {
    /// Boot-time ns when it happened.
    pub ktime_ns: u64,
    /// Who (absent for records without a task).
    pub task: Option<TaskFacts>,
    /// What.
    pub payload: Payload,
}

/// What a record says.
#[derive(Debug, Clone)]
pub enum Payload {
    /// An event for the stream.
    Event(Detail),
    /// A thread's final syscall profile (internal: feeds profile windows).
    ThreadExit {
        /// Thread id.
        tid: u32,
        /// Process id.
        pid: u32,
        /// Final counters.
        profile: Box<ThreadProfile>,
    },
}

/// Bytes up to the first NUL.
pub fn until_nul(bytes: &[u8]) -> &[u8] {
    match bytes.iter().position(|&b| b == 0) {
        Some(i) => &bytes[..i],
        None => bytes,
    }
}

/// Reads a `T` at `offset` of `bytes` (length already checked by the caller).
fn read_at<T: Copy>(bytes: &[u8], offset: usize) -> T {
    assert!(offset + size_of::<T>() <= bytes.len());
    // SAFETY: in bounds (asserted); T is a #[repr(C)] plain-old-data ABI
    // type valid for any bit pattern; read_unaligned has no alignment needs.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().add(offset).cast::<T>()) }
}

fn check_len<T>(bytes: &[u8], kind: &'static str) -> Result<(), DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short {
            kind,
            len: bytes.len(),
            min: size_of::<T>(),
        });
    }
    Ok(())
}

/// A [`KernelPath`] turned into bytes, with whether it is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedPath {
    /// `/a/b/c` for dentry walks; the raw string for user strings.
    pub path: ByteString,
    /// Cut at a bound.
    pub truncated: bool,
    /// A read failed part way.
    pub fault: bool,
    /// Holds a raw user string (may be relative).
    pub user_string: bool,
    /// Not captured (not applicable).
    pub absent: bool,
}

/// Decodes a [`KernelPath`] found at `offset` in a record of kind `kind`.
pub fn decode_path(
    bytes: &[u8],
    offset: usize,
    kind: &'static str,
    field: &'static str,
) -> Result<DecodedPath, DecodeError> {
    let len = read_at::<u16>(bytes, offset + offset_of!(KernelPath, len)) as usize;
    let flags = read_at::<u8>(bytes, offset + offset_of!(KernelPath, flags));
    if len > PATH_AREA {
        return Err(DecodeError::BadLength {
            kind,
            field,
            claimed: len,
            max: PATH_AREA,
        });
    }
    let data_at = offset + offset_of!(KernelPath, data);
    let data = &bytes[data_at..data_at + len];
    let user_string = flags & path_flags::USER_STRING != 0;
    let path = if user_string {
        ByteString::from(until_nul(data))
    } else {
        join_components(data)
    };
    Ok(DecodedPath {
        path,
        truncated: flags & path_flags::TRUNCATED != 0,
        fault: flags & path_flags::FAULT != 0,
        user_string,
        absent: flags & path_flags::ABSENT != 0,
    })
}

/// Leaf-first NUL-terminated components to `/root/.../leaf`. A path whose
/// walk found no component is `/`.
fn join_components(data: &[u8]) -> ByteString {
    let mut parts: Vec<&[u8]> = data.split(|&b| b == 0).collect();
    // split() yields a trailing empty piece after the last NUL.
    if parts.last().is_some_and(|p| p.is_empty()) {
        parts.pop();
    }
    let mut out = Vec::with_capacity(data.len() + 1);
    for part in parts.iter().rev() {
        out.push(b'/');
        out.extend_from_slice(part);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    ByteString(out)
}

/// Splits a NUL-separated argument block into arguments. A block cut at the
/// capture bound ends without a NUL; its last argument is kept as captured.
pub fn split_args(block: &[u8]) -> Vec<ByteString> {
    let mut args: Vec<ByteString> = block.split(|&b| b == 0).map(ByteString::from).collect();
    if block.last() == Some(&0) || block.is_empty() {
        args.pop();
    }
    args
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    if bytes.len() < size_of::<RecordHeader>() {
        return Err(DecodeError::NoHeader {
            len: bytes.len(),
            min: size_of::<RecordHeader>(),
        });
    }
    let header: RecordHeader = read_at(bytes, 0);
    let name = kind::name(header.kind);
    let task_at = size_of::<RecordHeader>();
    let task = |bytes: &[u8]| Some(TaskFacts::from(&read_at::<TaskInfo>(bytes, task_at)));
    let payload;
    let facts;
    match header.kind {
        kind::EXEC => {
            check_len::<ExecRecord>(bytes, name)?;
            facts = task(bytes);
            payload = Payload::Event(Detail::Exec(decode_exec(bytes, header.flags)?));
        }
        kind::FORK => {
            check_len::<ForkRecord>(bytes, name)?;
            facts = task(bytes);
            let parent_tid = read_at::<u32>(bytes, offset_of!(ForkRecord, parent_tid));
            payload = Payload::Event(Detail::Fork(ForkDetail { parent_tid }));
        }
        kind::EXIT => {
            check_len::<ExitRecord>(bytes, name)?;
            facts = task(bytes);
            let status = read_at::<u32>(bytes, offset_of!(ExitRecord, exit_code));
            payload = Payload::Event(Detail::Exit(exit_detail(status)));
        }
        kind::THREAD_EXIT if header.flags & thread_exit_flags::CALLS != 0 => {
            check_len::<ThreadCallsRecord>(bytes, name)?;
            facts = None;
            let rec: ThreadCallsRecord = read_at(bytes, 0);
            payload = Payload::ThreadExit {
                tid: rec.tid,
                pid: rec.pid,
                profile: replay_calls(&rec.calls, rec.pid)?,
            };
        }
        kind::THREAD_EXIT => {
            check_len::<ThreadExitRecord>(bytes, name)?;
            facts = None;
            let rec: ThreadExitRecord = read_at(bytes, 0);
            payload = Payload::ThreadExit {
                tid: rec.tid,
                pid: rec.pid,
                profile: Box::new(rec.profile),
            };
        }
        other => return crate::event::decode_security::decode(bytes, header, other),
    }
    Ok(KernelEvent {
        ktime_ns: header.ktime_ns,
        task: facts,
        payload,
    })
}

/// The profile of a thread whose whole life is one batch of calls. It was
/// never in the kernel's map, so no drain has a snapshot of it: its birth
/// time is 0, which no map entry has.
fn replay_calls(calls: &SyscallBatch, pid: u32) -> Result<Box<ThreadProfile>, DecodeError> {
    const KIND: &str = "thread_exit";
    let bad = |field, value: u64, rule: String| DecodeError::BadValue {
        kind: KIND,
        field,
        value,
        rule,
    };
    let len = calls.len as usize;
    if len > BATCH_ENTRIES {
        return Err(bad(
            "calls.len",
            len as u64,
            format!("a batch holds at most {BATCH_ENTRIES} entries"),
        ));
    }
    let mut sum = 0u64;
    for (&nr, &repeats) in calls.nr[..len].iter().zip(&calls.repeats[..len]) {
        if usize::from(nr) >= SYSCALL_SLOTS {
            let rule = format!("it must be a syscall slot (below {SYSCALL_SLOTS})");
            return Err(bad("calls.nr", nr.into(), rule));
        }
        if repeats == 0 {
            let rule = "every entry has at least one call".to_owned();
            return Err(bad("calls.repeats", 0, rule));
        }
        sum += u64::from(repeats);
    }
    if sum != u64::from(calls.calls) || calls.calls > BATCH_FLUSH {
        let rule =
            format!("it must be the sum of the entries' repeats ({sum}), at most {BATCH_FLUSH}");
        return Err(bad("calls.calls", calls.calls.into(), rule));
    }
    let mut profile = Box::new(ThreadProfile::empty(pid, 0));
    profile.add_batch(calls);
    Ok(profile)
}

fn decode_exec(bytes: &[u8], flags: u16) -> Result<ExecDetail, DecodeError> {
    const KIND: &str = "exec";
    let argv_len = read_at::<u32>(bytes, offset_of!(ExecRecord, argv_len)) as usize;
    let argv_max = size_of::<[u8; monitor_common::EXEC_ARGV_MAX]>();
    if argv_len > argv_max {
        return Err(DecodeError::BadLength {
            kind: KIND,
            field: "argv_len",
            claimed: argv_len,
            max: argv_max,
        });
    }
    let filename_len = read_at::<u16>(bytes, offset_of!(ExecRecord, filename_len)) as usize;
    if filename_len > monitor_common::EXEC_FILENAME_MAX {
        return Err(DecodeError::BadLength {
            kind: KIND,
            field: "filename_len",
            claimed: filename_len,
            max: monitor_common::EXEC_FILENAME_MAX,
        });
    }
    let filename_at = offset_of!(ExecRecord, filename);
    let argv_at = offset_of!(ExecRecord, argv);
    let path = decode_path(bytes, offset_of!(ExecRecord, path), KIND, "path")?;
    let mode = read_at::<u32>(bytes, offset_of!(ExecRecord, exe_mode));
    let task: TaskInfo = read_at(bytes, size_of::<RecordHeader>());
    let old_tid = read_at::<u32>(bytes, offset_of!(ExecRecord, old_tid));
    Ok(ExecDetail {
        path: path.path,
        filename: ByteString::from(&bytes[filename_at..filename_at + filename_len]),
        args: split_args(&bytes[argv_at..argv_at + argv_len]),
        args_truncated: flags & (exec_flags::ARGV_TRUNCATED | exec_flags::ARGV_FAULT) != 0,
        args_size: read_at::<u32>(bytes, offset_of!(ExecRecord, argv_total)),
        path_truncated: path.truncated || path.fault,
        fileless: flags & exec_flags::FILELESS != 0,
        script: flags & exec_flags::SCRIPT != 0,
        setuid: mode & 0o6000 != 0,
        file_uid: read_at::<u32>(bytes, offset_of!(ExecRecord, exe_uid)),
        file_mode: mode & 0o7777,
        inode: read_at::<u64>(bytes, offset_of!(ExecRecord, exe_ino)),
        old_tid: (old_tid != task.pid && old_tid != 0).then_some(old_tid),
    })
}

/// Splits a wait status into exit code, signal and core flag.
pub fn exit_detail(status: u32) -> ExitDetail {
    let signal = (status & 0x7f) as i32;
    ExitDetail {
        exit_code: (signal == 0).then_some(((status >> 8) & 0xff) as i32),
        signal: (signal != 0).then_some(signal),
        core_dumped: status & 0x80 != 0,
        status,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use monitor_common::{EXEC_ARGV_MAX, PATH_CAPTURE_MAX};

    use super::*;

    /// A zeroed record of type `T` as bytes, with `kind` set.
    pub(crate) fn blank<T>(kind: u8) -> Vec<u8> {
        let mut bytes = vec![0u8; size_of::<T>()];
        bytes[0] = kind;
        bytes[4..8].copy_from_slice(&(size_of::<T>() as u32).to_le_bytes());
        bytes
    }

    pub(crate) fn put<T: Copy>(bytes: &mut [u8], offset: usize, value: T) {
        // SAFETY: test helper; bounds checked by the slice index below.
        let raw =
            unsafe { std::slice::from_raw_parts((&raw const value).cast::<u8>(), size_of::<T>()) };
        bytes[offset..offset + size_of::<T>()].copy_from_slice(raw);
    }

    pub(crate) fn put_task(bytes: &mut [u8], pid: u32, ppid: u32, comm: &[u8]) {
        let mut task = TaskInfo {
            tid: pid,
            pid,
            ppid,
            uid: 1000,
            gid: 1000,
            euid: 1000,
            egid: 1000,
            ..Default::default()
        };
        task.comm[..comm.len()].copy_from_slice(comm);
        put(bytes, size_of::<RecordHeader>(), task);
    }

    pub(crate) fn put_path(
        bytes: &mut [u8],
        offset: usize,
        components_leaf_first: &[&[u8]],
        flags: u8,
    ) {
        let mut data = Vec::new();
        for c in components_leaf_first {
            data.extend_from_slice(c);
            data.push(0);
        }
        put(bytes, offset, data.len() as u16);
        put(bytes, offset + 2, components_leaf_first.len() as u8);
        put(bytes, offset + 3, flags);
        let at = offset + offset_of!(KernelPath, data);
        bytes[at..at + data.len()].copy_from_slice(&data);
    }

    fn exec_record(args: &[u8]) -> Vec<u8> {
        let mut b = blank::<ExecRecord>(kind::EXEC);
        put_task(&mut b, 42, 7, b"echo");
        let filename = b"/bin/echo";
        let at = offset_of!(ExecRecord, filename);
        b[at..at + filename.len()].copy_from_slice(filename);
        put(
            &mut b,
            offset_of!(ExecRecord, filename_len),
            filename.len() as u16,
        );
        put_path(
            &mut b,
            offset_of!(ExecRecord, path),
            &[b"echo", b"bin", b"usr"],
            0,
        );
        let at = offset_of!(ExecRecord, argv);
        b[at..at + args.len()].copy_from_slice(args);
        put(&mut b, offset_of!(ExecRecord, argv_len), args.len() as u32);
        put(
            &mut b,
            offset_of!(ExecRecord, argv_total),
            args.len() as u32,
        );
        put(&mut b, offset_of!(ExecRecord, exe_mode), 0o100755u32);
        put(&mut b, offset_of!(ExecRecord, old_tid), 42u32);
        b
    }

    #[test]
    fn decodes_an_exec_record() {
        let b = exec_record(b"/bin/echo\0probe-token-1\0bad\xff\0");
        let ev = decode(&b).unwrap();
        let task = ev.task.unwrap();
        assert_eq!(
            (task.pid, task.ppid, task.comm.as_bytes()),
            (42, 7, &b"echo"[..])
        );
        let Payload::Event(Detail::Exec(exec)) = ev.payload else {
            panic!("not exec")
        };
        assert_eq!(exec.path.as_bytes(), b"/usr/bin/echo");
        assert_eq!(exec.filename.as_bytes(), b"/bin/echo");
        let args: Vec<&[u8]> = exec.args.iter().map(|a| a.as_bytes()).collect();
        assert_eq!(args, vec![&b"/bin/echo"[..], b"probe-token-1", b"bad\xff"]);
        assert_eq!(exec.file_mode, 0o755);
        assert!(!exec.setuid && !exec.args_truncated && exec.old_tid.is_none());
    }

    #[test]
    fn a_cut_argument_block_keeps_its_last_argument() {
        let mut block = b"sh\0-c\0".to_vec();
        block.extend(std::iter::repeat_n(b'x', 100));
        let args = split_args(&block);
        assert_eq!(args.len(), 3);
        assert_eq!(args[2].as_bytes().len(), 100);
        assert!(split_args(b"").is_empty());
        assert_eq!(split_args(b"a\0\0b\0").len(), 3, "empty arguments are kept");
    }

    #[test]
    fn rejects_short_and_lying_records() {
        assert!(matches!(
            decode(&[1, 0, 0]),
            Err(DecodeError::NoHeader { .. })
        ));
        let b = exec_record(b"x\0");
        let err = decode(&b[..100]).unwrap_err();
        assert!(
            err.to_string().starts_with("exec record of 100 bytes"),
            "{err}"
        );
        let mut b = exec_record(b"x\0");
        put(
            &mut b,
            offset_of!(ExecRecord, argv_len),
            (EXEC_ARGV_MAX + 1) as u32,
        );
        assert!(matches!(
            decode(&b),
            Err(DecodeError::BadLength {
                field: "argv_len",
                ..
            })
        ));
        let mut b = exec_record(b"x\0");
        put(&mut b, offset_of!(ExecRecord, path), (PATH_AREA + 1) as u16);
        assert!(matches!(
            decode(&b),
            Err(DecodeError::BadLength { field: "path", .. })
        ));
        let mut b = blank::<ForkRecord>(200);
        b[0] = 200;
        assert_eq!(decode(&b).unwrap_err(), DecodeError::UnknownKind(200));
    }

    #[test]
    fn path_edge_cases() {
        let mut b = exec_record(b"");
        put_path(&mut b, offset_of!(ExecRecord, path), &[], 0);
        let Payload::Event(Detail::Exec(exec)) = decode(&b).unwrap().payload else {
            panic!()
        };
        assert_eq!(exec.path.as_bytes(), b"/");
        // A final component cut without its NUL at the capture bound.
        let mut b = exec_record(b"");
        let long = vec![b'a'; PATH_CAPTURE_MAX];
        put_path(
            &mut b,
            offset_of!(ExecRecord, path),
            &[&long[..10]],
            path_flags::TRUNCATED,
        );
        let Payload::Event(Detail::Exec(exec)) = decode(&b).unwrap().payload else {
            panic!()
        };
        assert!(exec.path_truncated);
    }

    #[test]
    fn exit_status_is_split() {
        assert_eq!(exit_detail(3 << 8).exit_code, Some(3));
        let killed = exit_detail(9);
        assert_eq!((killed.exit_code, killed.signal), (None, Some(9)));
        assert!(exit_detail(11 | 0x80).core_dumped);
    }

    #[test]
    fn decodes_fork_and_exit() {
        let mut b = blank::<ForkRecord>(kind::FORK);
        put_task(&mut b, 50, 42, b"sh");
        put(&mut b, offset_of!(ForkRecord, parent_tid), 43u32);
        let ev = decode(&b).unwrap();
        assert_eq!(ev.task.unwrap().ppid, 42);
        assert!(matches!(
            ev.payload,
            Payload::Event(Detail::Fork(ForkDetail { parent_tid: 43 }))
        ));
        let mut b = blank::<ExitRecord>(kind::EXIT);
        put_task(&mut b, 50, 42, b"sh");
        put(&mut b, offset_of!(ExitRecord, exit_code), 1u32 << 8);
        let Payload::Event(Detail::Exit(exit)) = decode(&b).unwrap().payload else {
            panic!()
        };
        assert_eq!(exit.exit_code, Some(1));
    }

    /// A calls-only thread exit: 3 x getppid (110), then close (3).
    fn calls_record(len: u32, calls: u32, nr: [u16; 2], repeats: [u16; 2]) -> Vec<u8> {
        let mut b = blank::<ThreadCallsRecord>(kind::THREAD_EXIT);
        put(
            &mut b,
            offset_of!(RecordHeader, flags),
            thread_exit_flags::CALLS,
        );
        put(&mut b, offset_of!(ThreadCallsRecord, tid), 51u32);
        put(&mut b, offset_of!(ThreadCallsRecord, pid), 50u32);
        let at = offset_of!(ThreadCallsRecord, calls);
        put(&mut b, at + offset_of!(SyscallBatch, len), len);
        put(&mut b, at + offset_of!(SyscallBatch, calls), calls);
        put(&mut b, at + offset_of!(SyscallBatch, nr), nr);
        put(&mut b, at + offset_of!(SyscallBatch, repeats), repeats);
        b
    }

    #[test]
    fn replays_a_calls_only_thread_exit_into_a_profile() {
        let ev = decode(&calls_record(2, 4, [110, 3], [3, 1])).unwrap();
        let Payload::ThreadExit { tid, pid, profile } = ev.payload else {
            panic!()
        };
        assert_eq!((tid, pid, profile.pid, profile.born_ns), (51, 50, 50, 0));
        assert_eq!(
            (profile.counts[110], profile.counts[3], profile.total),
            (3, 1, 4)
        );
        let pairs = |a, b| profile.pairs[monitor_common::pair_bucket(a, b)];
        assert_eq!((pairs(110, 110), pairs(110, 3)), (2, 1));
        assert_eq!(profile.pairs.iter().sum::<u32>(), 3);
        assert_eq!(profile.last, 3);
    }

    #[test]
    fn rejects_calls_only_thread_exits_that_break_the_layout() {
        let err = |b: Vec<u8>| decode(&b).unwrap_err().to_string();
        assert_eq!(
            err(calls_record(65, 4, [110, 3], [3, 1])),
            "thread_exit record: field `calls.len` is 65, a batch holds at most 64 entries"
        );
        assert_eq!(
            err(calls_record(2, 4, [600, 3], [3, 1])),
            "thread_exit record: field `calls.nr` is 600, it must be a syscall slot (below 512)"
        );
        assert_eq!(
            err(calls_record(2, 3, [110, 3], [3, 0])),
            "thread_exit record: field `calls.repeats` is 0, every entry has at least one call"
        );
        assert!(
            err(calls_record(2, 5, [110, 3], [3, 1]))
                .starts_with("thread_exit record: field `calls.calls` is 5, it must be the sum")
        );
        let mut short = calls_record(2, 4, [110, 3], [3, 1]);
        short.truncate(100);
        assert!(err(short).contains("shorter than its layout"));
    }
}
