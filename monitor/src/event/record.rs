//! What every record decoder shares: the error, the decoded record, the
//! task facts every record carries, bounds-checked reads of the raw bytes
//! and path decoding. `decode` (process lifecycle, counts) and
//! `decode_security` (the security sensors) both build on it.

use std::mem::{offset_of, size_of};

use monitor_common::{KernelPath, PATH_AREA, TaskInfo, ThreadCounts, path_flags};

use super::{ByteString, Detail};

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
    /// A thread's final syscall counts (internal: feeds counts).
    ThreadExit {
        /// Thread id.
        tid: u32,
        /// Process id.
        pid: u32,
        /// Final counters.
        counts: Box<ThreadCounts>,
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
pub(crate) fn read_at<T: Copy>(bytes: &[u8], offset: usize) -> T {
    assert!(offset + size_of::<T>() <= bytes.len());
    // SAFETY: in bounds (asserted); T is a #[repr(C)] plain-old-data ABI
    // type valid for any bit pattern; read_unaligned has no alignment needs.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().add(offset).cast::<T>()) }
}

/// `claimed`, if it is within `max`: a length field of a record, checked
/// before it is used to slice the record.
pub(crate) fn bounded_len(
    kind: &'static str,
    field: &'static str,
    claimed: usize,
    max: usize,
) -> Result<usize, DecodeError> {
    if claimed > max {
        return Err(DecodeError::BadLength {
            kind,
            field,
            claimed,
            max,
        });
    }
    Ok(claimed)
}

pub(crate) fn check_len<T>(bytes: &[u8], kind: &'static str) -> Result<(), DecodeError> {
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
    let len = bounded_len(kind, field, len, PATH_AREA)?;
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

/// Raw records built by hand, for the decoders' tests.
#[cfg(test)]
pub(crate) mod test_records {
    use monitor_common::{RecordHeader, TaskInfo};

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
}
