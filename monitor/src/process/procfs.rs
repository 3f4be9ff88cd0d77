//! Reading one process's facts from `/proc`.
//!
//! Used to seed the process table with processes older than the agent, and
//! to fill gaps for a process whose exec the agent did not see.

use std::{
    ffi::OsStr,
    fs,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use crate::event::ByteString;

/// What `/proc/PID` says about a process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcFacts {
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// comm.
    pub comm: ByteString,
    /// Real, effective uid.
    pub uid: u32,
    /// Effective uid.
    pub euid: u32,
    /// Real gid.
    pub gid: u32,
    /// Effective gid.
    pub egid: u32,
    /// `/proc/PID/exe` target (absent for kernel threads or when unreadable).
    pub exe: Option<ByteString>,
    /// Argument vector.
    pub args: Vec<ByteString>,
    /// Start time, ns since boot (clock-tick resolution).
    pub start_ns: u64,
    /// cgroup v2 path (from the `0::` line).
    pub cgroup: Option<ByteString>,
    /// A kernel thread (no exe, no argv, parent kthreadd or 0).
    pub kernel_thread: bool,
}

/// Lists the process ids under a procfs root.
pub fn list_pids(root: &Path) -> std::io::Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// Reads the facts of `pid` under a procfs root. `None` if it vanished.
pub fn read_process(root: &Path, pid: u32) -> Option<ProcFacts> {
    let dir = root.join(pid.to_string());
    let stat = fs::read(dir.join("stat")).ok()?;
    let (comm, ppid, start_ticks) = parse_stat(&stat)?;
    let status = fs::read_to_string(dir.join("status")).unwrap_or_default();
    let ids = |key: &str| -> (u32, u32) {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|rest| {
                let mut it = rest.split_whitespace().filter_map(|v| v.parse().ok());
                (it.next().unwrap_or(0), it.next().unwrap_or(0))
            })
            .unwrap_or((0, 0))
    };
    let (uid, euid) = ids("Uid:");
    let (gid, egid) = ids("Gid:");
    let exe = fs::read_link(dir.join("exe"))
        .ok()
        .map(|p| ByteString::from(p.as_os_str().as_bytes()));
    let cmdline = fs::read(dir.join("cmdline")).unwrap_or_default();
    let args = crate::event::decode::split_args(&cmdline);
    let cgroup = fs::read(dir.join("cgroup"))
        .ok()
        .and_then(|c| parse_cgroup_v2(&c));
    let kernel_thread = exe.is_none() && args.is_empty() && (ppid == 2 || ppid == 0) && pid != 1;
    Some(ProcFacts {
        pid,
        ppid,
        comm,
        uid,
        euid,
        gid,
        egid,
        exe,
        args,
        start_ns: start_ticks.saturating_mul(1_000_000_000) / clock_ticks(),
        cgroup,
        kernel_thread,
    })
}

/// Parses `/proc/PID/stat`: comm sits in parentheses and may itself contain
/// spaces and `)`, so the fields start after the last `)`.
pub fn parse_stat(stat: &[u8]) -> Option<(ByteString, u32, u64)> {
    let open = stat.iter().position(|&b| b == b'(')?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    let comm = ByteString::from(stat.get(open + 1..close)?);
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is state (field 3); ppid is field 4, starttime field 22.
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((comm, ppid, start))
}

/// The cgroup v2 path from `/proc/PID/cgroup` (the `0::PATH` line).
pub fn parse_cgroup_v2(content: &[u8]) -> Option<ByteString> {
    content
        .split(|&b| b == b'\n')
        .find_map(|line| line.strip_prefix(b"0::"))
        .map(ByteString::from)
}

/// A container id in a cgroup path: the 64-hex-digit id that Docker,
/// containerd, CRI-O and Podman all embed (`docker-<id>.scope`,
/// `/docker/<id>`, `cri-containerd-<id>.scope`, `libpod-<id>.scope`...).
/// Returns the first 12 digits, the short form operators use.
pub fn container_id(cgroup: &[u8]) -> Option<String> {
    let mut run = 0usize;
    for (i, b) in cgroup.iter().enumerate() {
        if b.is_ascii_hexdigit() && !b.is_ascii_uppercase() {
            run += 1;
            let next_is_hex = cgroup.get(i + 1).is_some_and(|n| n.is_ascii_hexdigit());
            if run == 64 && !next_is_hex {
                let start = i + 1 - 64;
                return Some(String::from_utf8_lossy(&cgroup[start..start + 12]).into_owned());
            }
        } else {
            run = 0;
        }
    }
    None
}

/// The cgroup v2 id of a cgroup path: the inode number of its directory in
/// the cgroup2 mount (which is what `bpf_get_current_cgroup_id` returns).
pub fn cgroup_id(cgroup_root: &Path, cgroup: &[u8]) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let rel = OsStr::from_bytes(cgroup.strip_prefix(b"/").unwrap_or(cgroup));
    let path: PathBuf = cgroup_root.join(rel);
    fs::metadata(path).ok().map(|m| m.ino())
}

/// `sysconf(_SC_CLK_TCK)`.
fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_hostile_comm() {
        let stat = b"1234 (a) b) (c\n) S 77 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 5555 1000 10";
        let (comm, ppid, start) = parse_stat(stat).unwrap();
        assert_eq!(comm.as_bytes(), b"a) b) (c\n");
        assert_eq!(ppid, 77);
        assert_eq!(start, 5555);
        assert!(parse_stat(b"garbage").is_none());
    }

    #[test]
    fn cgroup_and_container_ids() {
        let content = b"0::/system.slice/docker-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope\n";
        let path = parse_cgroup_v2(content).unwrap();
        assert_eq!(
            container_id(path.as_bytes()).as_deref(),
            Some("0123456789ab")
        );
        assert_eq!(
            container_id(b"/user.slice/user-1000.slice/session-3.scope"),
            None
        );
        // 65 hex digits is not an id.
        assert_eq!(container_id(&[b'a'; 65]), None);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let facts = read_process(Path::new("/proc"), me).expect("own /proc entry");
        assert_eq!(facts.pid, me);
        assert!(facts.exe.is_some());
        assert!(!facts.args.is_empty());
        assert!(!facts.kernel_thread);
        assert!(list_pids(Path::new("/proc")).unwrap().contains(&me));
    }
}
