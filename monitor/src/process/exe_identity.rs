//! What an executed file *is*, not what it is called. A path says little:
//! it is relative to the process's mount namespace (a bind mount can put
//! any file at `/usr/sbin/sshd`), and a copy of a system utility under a
//! new name is a new path. The agent identifies each executed file by its
//! contents (SHA-256, read through `/proc/PID/exe` so the process's own
//! mount namespace applies, or by its path when the kernel's device and
//! inode say it is the same file) and notes where it lives: a directory
//! anyone can write to, a memory-backed file system, another mount
//! namespace.
//!
//! Hashes are cached by (device, inode, mtime, size), so 20,000 hard links
//! of one binary are read once; files over [`MAX_HASHED`] are not read, and
//! at most [`HASH_BUDGET`] bytes are read per second (a flood of
//! distinct large files must not cost the agent its CPU). What was not
//! hashed is counted, and still identified by device and inode.

use std::{
    collections::HashMap,
    io::Read as _,
    os::unix::fs::MetadataExt as _,
    time::{Duration, Instant},
};

use crate::event::{ExeIdentity, ExecDetail};

/// Files larger than this are not hashed.
pub const MAX_HASHED: u64 = 64 << 20;
/// Bytes hashed per second at most.
pub const HASH_BUDGET: u64 = 64 << 20;
/// Hashes cached at most (the cache is emptied when full).
const CACHED: usize = 8192;

/// Identifies executed files; see the module docs.
pub struct Identifier {
    cache: HashMap<CacheKey, (String, bool)>,
    own_mount_ns: Option<u64>,
    budget_since: Instant,
    hashed_since: u64,
    /// Files not hashed (too large, over the budget, unreadable).
    pub not_hashed: u64,
}

impl Default for Identifier {
    fn default() -> Self {
        Self {
            cache: HashMap::new(),
            own_mount_ns: mount_ns("self"),
            budget_since: Instant::now(),
            hashed_since: 0,
            not_hashed: 0,
        }
    }
}

/// The mount namespace of `/proc/<who>`.
fn mount_ns(who: &str) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{who}/ns/mnt")).ok()?;
    let text = link.to_str()?;
    text.strip_prefix("mnt:[")?.strip_suffix(']')?.parse().ok()
}

/// A file's identity for the cache: device, inode, mtime (ns), size.
type CacheKey = (u64, u64, i64, u64);

fn cache_key(m: &std::fs::Metadata) -> CacheKey {
    (
        m.dev(),
        m.ino(),
        m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        m.len(),
    )
}

/// The kernel's `dev_t` encoding (major << 20 | minor) as (major, minor).
fn kernel_dev(dev: u32) -> (u32, u32) {
    (dev >> 20, dev & 0xf_ffff)
}

impl Identifier {
    /// Identifies the file process `pid` executed.
    pub fn identify(&mut self, pid: u32, exec: &ExecDetail) -> ExeIdentity {
        let mut identity = ExeIdentity::default();
        if exec.fileless || exec.inode == 0 {
            return identity;
        }
        let path = std::path::PathBuf::from(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(exec.path.as_bytes()),
        );
        // The process's own view first (its mount namespace); the path in
        // ours only if it is the same file.
        let same_file = |m: &std::fs::Metadata| {
            m.ino() == exec.inode
                && (libc::major(m.dev()), libc::minor(m.dev())) == kernel_dev(exec.dev)
        };
        // The name is the watched user's to change: by the time the agent
        // looks, it may be a FIFO (an open for reading would block the
        // capture) or a symlink. Only a regular file that is the one the
        // kernel executed is read: checked before opening (never open
        // anything else), opened without blocking or following a final
        // symlink, and checked again on the descriptor. A file seen before
        // (same device, inode, mtime and size) is not opened at all.
        let stat = |p: &std::path::Path, follow: bool| -> Option<std::fs::Metadata> {
            let m = if follow {
                std::fs::metadata(p)
            } else {
                std::fs::symlink_metadata(p)
            }
            .ok()?;
            (m.is_file() && same_file(&m)).then_some(m)
        };
        // The path in our mount namespace first: when it is the file the
        // kernel executed, nothing in /proc is needed (a /proc lookup costs
        // more than the rest of this together). Otherwise the process sees
        // another file at that name: its own view, through /proc/PID/exe,
        // and its mount namespace are looked up.
        let found = stat(&path, false)
            .map(|m| (path.clone(), false, m))
            .or_else(|| {
                identity.mount_ns =
                    mount_ns(&pid.to_string()).filter(|ns| Some(*ns) != self.own_mount_ns);
                let proc_exe = std::path::PathBuf::from(format!("/proc/{pid}/exe"));
                stat(&proc_exe, true).map(|m| (proc_exe, true, m))
            });
        let Some((source, follow, meta)) = found else {
            self.not_hashed += 1;
            return identity;
        };
        identity.world_writable_dir = path
            .parent()
            .and_then(|dir| std::fs::metadata(dir).ok())
            .is_some_and(|m| m.mode() & 0o002 != 0);
        let key = cache_key(&meta);
        if let Some((sha, memory)) = self.cache.get(&key) {
            identity.sha256 = Some(sha.clone());
            identity.memory_backed = *memory;
            return identity;
        }
        let opened = {
            use std::os::unix::fs::OpenOptionsExt as _;
            let nofollow = if follow { 0 } else { libc::O_NOFOLLOW };
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | nofollow)
                .open(&source)
                .ok()
                .and_then(|f| {
                    let m = f.metadata().ok()?;
                    (m.is_file() && cache_key(&m) == key).then_some(f)
                })
        };
        let Some(file) = opened else {
            self.not_hashed += 1;
            return identity;
        };
        identity.memory_backed = memory_backed(&file);
        identity.sha256 = self.hash(file, &meta, key, identity.memory_backed);
        identity
    }

    fn hash(
        &mut self,
        mut file: std::fs::File,
        meta: &std::fs::Metadata,
        key: CacheKey,
        memory_backed: bool,
    ) -> Option<String> {
        if self.budget_since.elapsed() >= Duration::from_secs(1) {
            self.budget_since = Instant::now();
            self.hashed_since = 0;
        }
        if meta.len() > MAX_HASHED || self.hashed_since + meta.len() > HASH_BUDGET {
            self.not_hashed += 1;
            return None;
        }
        self.hashed_since += meta.len();
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => context.update(&buf[..n]),
                Err(_) => {
                    self.not_hashed += 1;
                    return None;
                }
            }
        }
        let hex: String = context
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if self.cache.len() >= CACHED {
            self.cache.clear();
        }
        self.cache.insert(key, (hex.clone(), memory_backed));
        Some(hex)
    }
}

/// True if the file is on tmpfs or ramfs.
fn memory_backed(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd as _;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    // SAFETY: fstatfs writes into the zeroed struct we own.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut fs) } != 0 {
        return false;
    }
    matches!(fs.f_type as i64, TMPFS_MAGIC | RAMFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec_of(path: &str) -> ExecDetail {
        let meta = std::fs::metadata(path).unwrap();
        let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
        ExecDetail {
            path: path.into(),
            inode: meta.ino(),
            dev: (major << 20) | minor,
            ..ExecDetail::default()
        }
    }

    #[test]
    fn a_fifo_put_at_the_executed_name_is_not_opened() {
        let dir = std::env::temp_dir().join(format!("monitor-exe-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("looks-executed");
        let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a path we own.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o644) }, 0);
        // Even when the record names the FIFO itself, it is not opened (an
        // open for reading would wait for a writer: the capture would hang).
        let mut id = Identifier::default();
        let identity = id.identify(u32::MAX - 1, &exec_of(fifo.to_str().unwrap()));
        assert_eq!(identity.sha256, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_copy_has_the_same_hash_and_another_file_at_the_same_name_does_not() {
        let dir = std::env::temp_dir().join(format!("monitor-exe-id-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let copy = dir.join("renamed");
        std::fs::copy("/bin/true", &copy).unwrap();
        let mut id = Identifier::default();
        // A process that is gone: identified by its path, as the same file.
        let gone = u32::MAX - 1;
        let original = id.identify(gone, &exec_of("/bin/true"));
        let copied = id.identify(gone, &exec_of(copy.to_str().unwrap()));
        assert!(original.sha256.is_some());
        assert_eq!(original.sha256, copied.sha256, "same contents");
        // The kernel says another inode: not the file at that path now.
        let mut other = exec_of("/bin/true");
        other.inode += 1;
        assert_eq!(id.identify(gone, &other).sha256, None);
        assert_eq!(id.not_hashed, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
