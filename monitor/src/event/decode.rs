//! Raw ring-buffer records to owned, typed values: the edge where kernel
//! bytes stop and the event model starts.
//!
//! Records come from our own programs, but the decoder still treats them as
//! untrusted input: every length is checked against the record and its area,
//! and a bad record is a [`DecodeError`] naming the kind and what is wrong,
//! never a panic or a silently empty field.

use std::mem::{offset_of, size_of};

use monitor_common::{
    BATCH_ENTRIES, BATCH_FLUSH, ExecRecord, ExecScriptRecord, ExitRecord, ForkRecord, RecordHeader,
    SYSCALL_SLOTS, SyscallBatch, TaskInfo, ThreadCallsRecord, ThreadCounts, ThreadExitRecord,
    exec_flags, kind, thread_exit_flags,
};

pub use super::record::{
    DecodeError, DecodedPath, KernelEvent, Payload, TaskFacts, decode_path, split_args, until_nul,
};
use super::{
    ByteString, Detail, ExecDetail, ExitDetail, ForkDetail,
    record::{bounded_len, check_len, read_at},
};

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    if bytes.len() < size_of::<RecordHeader>() {
        return Err(DecodeError::NoHeader {
            len: bytes.len(),
            min: size_of::<RecordHeader>(),
        });
    }
    let header: RecordHeader = read_at(bytes, 0);
    let unpacked = super::unpack::unpack(bytes, header)?;
    let bytes = &*unpacked;
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
                counts: replay_calls(&rec.calls, rec.pid)?,
            };
        }
        kind::THREAD_EXIT => {
            check_len::<ThreadExitRecord>(bytes, name)?;
            facts = None;
            let rec: ThreadExitRecord = read_at(bytes, 0);
            payload = Payload::ThreadExit {
                tid: rec.tid,
                pid: rec.pid,
                counts: Box::new(rec.counts),
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

/// The counts of a thread whose whole life is one batch of calls. It was
/// never in the kernel's map, so no drain has a snapshot of it: its birth
/// time is 0, which no map entry has.
fn replay_calls(calls: &SyscallBatch, pid: u32) -> Result<Box<ThreadCounts>, DecodeError> {
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
    let mut counts = Box::new(ThreadCounts::empty(pid, 0));
    counts.add_batch(calls);
    Ok(counts)
}

fn decode_exec(bytes: &[u8], flags: u16) -> Result<ExecDetail, DecodeError> {
    const KIND: &str = "exec";
    let argv_len = read_at::<u32>(bytes, offset_of!(ExecRecord, argv_len)) as usize;
    let argv_max = size_of::<[u8; monitor_common::EXEC_ARGV_MAX]>();
    let argv_len = bounded_len(KIND, "argv_len", argv_len, argv_max)?;
    let filename_len = read_at::<u16>(bytes, offset_of!(ExecRecord, filename_len)) as usize;
    let filename_len = bounded_len(
        KIND,
        "filename_len",
        filename_len,
        monitor_common::EXEC_FILENAME_MAX,
    )?;
    let filename_at = offset_of!(ExecRecord, filename);
    let argv_at = offset_of!(ExecRecord, argv);
    let path = decode_path(bytes, offset_of!(ExecRecord, path), KIND, "path")?;
    let mode = read_at::<u32>(bytes, offset_of!(ExecRecord, exe_mode));
    let task: TaskInfo = read_at(bytes, size_of::<RecordHeader>());
    let old_tid = read_at::<u32>(bytes, offset_of!(ExecRecord, old_tid));
    let filename = ByteString::from(&bytes[filename_at..filename_at + filename_len]);
    let script_path = if flags & exec_flags::SCRIPT == 0 {
        None
    } else if flags & exec_flags::CWD != 0 {
        check_len::<ExecScriptRecord>(bytes, KIND)?;
        let cwd = decode_path(bytes, offset_of!(ExecScriptRecord, cwd), KIND, "cwd")?;
        let usable = !(cwd.fault || cwd.truncated || cwd.absent);
        Some(absolute_name(&filename, usable.then_some(&cwd.path)))
    } else {
        Some(absolute_name(&filename, None))
    };
    Ok(ExecDetail {
        path: path.path,
        filename,
        args: split_args(&bytes[argv_at..argv_at + argv_len]),
        args_truncated: flags & (exec_flags::ARGV_TRUNCATED | exec_flags::ARGV_FAULT) != 0,
        args_size: read_at::<u32>(bytes, offset_of!(ExecRecord, argv_total)),
        path_truncated: path.truncated || path.fault,
        fileless: flags & exec_flags::FILELESS != 0,
        script: flags & exec_flags::SCRIPT != 0,
        script_path,
        recently_written: flags & exec_flags::RECENTLY_WRITTEN != 0,
        setuid: mode & 0o6000 != 0,
        file_uid: read_at::<u32>(bytes, offset_of!(ExecRecord, exe_uid)),
        file_mode: mode & 0o7777,
        inode: read_at::<u64>(bytes, offset_of!(ExecRecord, exe_ino)),
        dev: read_at::<u32>(bytes, offset_of!(ExecRecord, exe_dev)),
        identity: None,
        old_tid: (old_tid != task.pid && old_tid != 0).then_some(old_tid),
    })
}

/// `name` made absolute against directory `cwd`, with `.`, `..` and
/// repeated slashes resolved in the text (not through symlinks). A relative
/// name without a usable `cwd` stays as it is.
pub fn absolute_name(name: &ByteString, cwd: Option<&ByteString>) -> ByteString {
    use std::os::unix::ffi::OsStrExt as _;
    let name = std::path::Path::new(std::ffi::OsStr::from_bytes(name.as_bytes()));
    let joined = match cwd {
        _ if name.is_absolute() => name.to_path_buf(),
        Some(cwd) => std::path::Path::new(std::ffi::OsStr::from_bytes(cwd.as_bytes())).join(name),
        None => return ByteString::from(name.as_os_str().as_bytes()),
    };
    let mut clean = std::path::PathBuf::from("/");
    for part in joined.components() {
        match part {
            std::path::Component::Normal(p) => clean.push(p),
            std::path::Component::ParentDir => {
                clean.pop();
            }
            _ => {}
        }
    }
    ByteString::from(clean.as_os_str().as_bytes())
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
mod tests {
    use monitor_common::{EXEC_ARGV_MAX, PATH_AREA, PATH_CAPTURE_MAX, path_flags};

    use super::*;
    use crate::event::record::test_records::{blank, put, put_path, put_task};

    #[test]
    fn a_script_name_is_made_absolute_in_the_text_only() {
        let b = |s: &str| ByteString::from(s.as_bytes());
        let cwd = b("/srv/app/bin");
        assert_eq!(
            absolute_name(&b("./job.sh"), Some(&cwd)),
            b("/srv/app/bin/job.sh")
        );
        assert_eq!(
            absolute_name(&b("../lib//x.py"), Some(&cwd)),
            b("/srv/app/lib/x.py")
        );
        assert_eq!(absolute_name(&b("/opt/./a/../b.sh"), None), b("/opt/b.sh"));
        assert_eq!(absolute_name(&b("../../../../../x"), Some(&cwd)), b("/x"));
        // No directory to resolve against: the name as passed.
        assert_eq!(absolute_name(&b("./job.sh"), None), b("./job.sh"));
        let raw = ByteString::from(&b"caf\xe9.sh"[..]);
        assert_eq!(
            absolute_name(&raw, Some(&cwd)).as_bytes(),
            b"/srv/app/bin/caf\xe9.sh"
        );
    }

    /// An exec record as the kernel sends it: packed.
    fn exec_record(args: &[u8]) -> Vec<u8> {
        crate::event::unpack::pack(&exec_fixed(args))
    }

    fn exec_fixed(args: &[u8]) -> Vec<u8> {
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
        // Packed, the path follows the file name's 9 bytes.
        let path_at = offset_of!(ExecRecord, filename) + b"/bin/echo".len();
        put(&mut b, path_at, (PATH_AREA + 1) as u16);
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
        let mut b = exec_fixed(b"");
        put_path(&mut b, offset_of!(ExecRecord, path), &[], 0);
        let b = crate::event::unpack::pack(&b);
        let Payload::Event(Detail::Exec(exec)) = decode(&b).unwrap().payload else {
            panic!()
        };
        assert_eq!(exec.path.as_bytes(), b"/");
        // A final component cut without its NUL at the capture bound.
        let mut b = exec_fixed(b"");
        let long = vec![b'a'; PATH_CAPTURE_MAX];
        put_path(
            &mut b,
            offset_of!(ExecRecord, path),
            &[&long[..10]],
            path_flags::TRUNCATED,
        );
        let b = crate::event::unpack::pack(&b);
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
    fn replays_a_calls_only_thread_exit_into_empty_counts() {
        let ev = decode(&calls_record(2, 4, [110, 3], [3, 1])).unwrap();
        let Payload::ThreadExit { tid, pid, counts } = ev.payload else {
            panic!()
        };
        assert_eq!((tid, pid, counts.pid, counts.born_ns), (51, 50, 50, 0));
        assert_eq!(
            (counts.counts[110], counts.counts[3], counts.total),
            (3, 1, 4)
        );
        let pairs = |a, b| counts.pairs[monitor_common::pair_bucket(a, b)];
        assert_eq!((pairs(110, 110), pairs(110, 3)), (2, 1));
        assert_eq!(counts.pairs.iter().sum::<u32>(), 3);
        assert_eq!(counts.last, 3);
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
