//! Sensitive locations: where even reading is worth reporting, and where a
//! write is a persistence or tampering risk.
//!
//! Two lists, because they answer different questions. Reading `/etc` is what
//! every process start does (`/etc/ld.so.cache`, `/etc/localtime`), so
//! reporting every read there would drown the stream; reading `/etc/shadow`
//! or a private SSH key is not. Writing anywhere under `/etc` or a systemd
//! unit directory, on the other hand, always deserves a flag.
//!
//! - **read** patterns (credential stores) are resolved to device and inode
//!   and handed to the kernel, which reports any open under them;
//! - **write** patterns (plus the read ones) mark write-opens, unlinks and
//!   renames as `sensitive` and decide which unlinks and renames are kept.
//!
//! A pattern is an absolute path whose components may be `*` (one whole
//! component), e.g. `/home/*/.ssh`. A path matches when the pattern is a
//! component-wise prefix of it.

use std::{collections::HashSet, os::unix::ffi::OsStrExt, path::PathBuf};

use monitor_common::InodeKey;

/// Default read patterns: credential and key stores.
pub const DEFAULT_READ: &[&str] = &[
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/security/opasswd",
    "/etc/ssh",
    "/root/.ssh",
    "/root/.aws",
    "/root/.gnupg",
    "/home/*/.ssh",
    "/home/*/.aws",
    "/home/*/.gnupg",
    "/var/spool/cron",
    "/etc/crontab",
    "/etc/cron.d",
];

/// Default write patterns: configuration, persistence and binaries.
pub const DEFAULT_WRITE: &[&str] = &[
    "/etc",
    "/root",
    "/home/*/.ssh",
    "/home/*/.bashrc",
    "/home/*/.counts",
    "/home/*/.bash_profile",
    "/var/spool/cron",
    "/usr/lib/systemd",
    "/lib/systemd",
    "/usr/local/bin",
    "/usr/local/sbin",
    "/usr/bin",
    "/usr/sbin",
    "/bin",
    "/sbin",
    "/boot",
    "/var/log",
];

/// A pattern that is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sensitive path pattern {pattern:?} {problem}")]
pub struct PatternError {
    /// The pattern.
    pub pattern: String,
    /// What is wrong.
    pub problem: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Component {
    Literal(Vec<u8>),
    Any,
}

/// One parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    components: Vec<Component>,
}

impl Pattern {
    /// Parses an absolute pattern.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let err = |problem| PatternError {
            pattern: text.to_owned(),
            problem,
        };
        if !text.starts_with('/') {
            return Err(err("is not absolute (must start with /)"));
        }
        let mut components = Vec::new();
        for part in text.split('/').filter(|p| !p.is_empty()) {
            match part {
                "*" => components.push(Component::Any),
                "." | ".." => return Err(err("contains . or .. components")),
                p if p.contains('*') => {
                    return Err(err(
                        "uses * inside a component (only a whole-component * is supported)",
                    ));
                }
                p => components.push(Component::Literal(p.as_bytes().to_vec())),
            }
        }
        if components.is_empty() {
            return Err(err("is the root directory, which would match everything"));
        }
        Ok(Self {
            text: text.to_owned(),
            components,
        })
    }

    /// True if the pattern is a component-wise prefix of `path`, taken
    /// lexically normalised (see [`normalised`]): `/etc/./shadow`,
    /// `//etc//shadow` and `/tmp/../etc/shadow` all match `/etc/shadow`.
    pub fn matches(&self, path: &[u8]) -> bool {
        let parts = normalised(path);
        let mut parts = parts.iter();
        self.components.iter().all(|c| match (c, parts.next()) {
            (Component::Any, Some(_)) => true,
            (Component::Literal(l), Some(p)) => l.as_slice() == *p,
            (_, None) => false,
        })
    }

    /// The existing paths the pattern names the pattern names (expanding `*` through the
    /// filesystem).
    pub fn expand(&self) -> Vec<PathBuf> {
        let mut current = vec![PathBuf::from("/")];
        for c in &self.components {
            let mut next = Vec::new();
            for dir in &current {
                match c {
                    Component::Literal(l) => {
                        let p = dir.join(std::ffi::OsStr::from_bytes(l));
                        if std::fs::symlink_metadata(&p).is_ok() {
                            next.push(p);
                        }
                    }
                    Component::Any => {
                        if let Ok(entries) = std::fs::read_dir(dir) {
                            next.extend(entries.filter_map(Result::ok).map(|e| e.path()));
                        }
                    }
                }
            }
            current = next;
        }
        current
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Both lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SensitivePaths {
    read: Vec<Pattern>,
    write: Vec<Pattern>,
}

impl Default for SensitivePaths {
    fn default() -> Self {
        Self::new(DEFAULT_READ, DEFAULT_WRITE).expect("defaults are valid")
    }
}

impl SensitivePaths {
    /// Parses both lists.
    pub fn new<S: AsRef<str>>(read: &[S], write: &[S]) -> Result<Self, PatternError> {
        Ok(Self {
            read: read
                .iter()
                .map(|p| Pattern::parse(p.as_ref()))
                .collect::<Result<_, _>>()?,
            write: write
                .iter()
                .map(|p| Pattern::parse(p.as_ref()))
                .collect::<Result<_, _>>()?,
        })
    }

    /// True if reading `path` is sensitive.
    pub fn read_matches(&self, path: &[u8]) -> bool {
        self.read.iter().any(|p| p.matches(path))
    }

    /// True if changing `path` is sensitive (write or read lists).
    pub fn write_matches(&self, path: &[u8]) -> bool {
        self.write.iter().chain(&self.read).any(|p| p.matches(path))
    }

    /// Device and inode of every existing path the read patterns name, for
    /// the kernel's `SENSITIVE` map.
    pub fn read_inodes(&self) -> HashSet<InodeKey> {
        use std::os::unix::fs::MetadataExt;
        let mut keys = HashSet::new();
        for pattern in &self.read {
            for path in pattern.expand() {
                // Follow symlinks: the kernel sees the target's inode.
                if let Ok(meta) = std::fs::metadata(&path) {
                    keys.insert(InodeKey {
                        dev: kernel_dev(meta.dev()),
                        _pad0: 0,
                        ino: meta.ino(),
                    });
                }
            }
        }
        keys
    }
}

/// A userspace `st_dev` in the kernel's internal encoding (`major << 20 | minor`).
pub fn kernel_dev(dev: u64) -> u32 {
    let major = libc::major(dev);
    let minor = libc::minor(dev);
    (major << 20) | minor
}

/// The components of an absolute path with `.` and empty components
/// dropped and `..` taking the previous one away (lexically, as the kernel
/// would if no component were a symlink: the names the watched processes
/// pass are matched as written, so `..` must not hide a sensitive path).
pub fn normalised(path: &[u8]) -> Vec<&[u8]> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_and_doubled_slashes_do_not_hide_a_sensitive_path() {
        let paths = SensitivePaths::default();
        for evasive in [
            "/etc/./shadow",
            "//etc//shadow",
            "/tmp/../etc/shadow",
            "/etc/ssh/../shadow",
            "/../../etc/cron.d/job",
            "/root/./.ssh/../.ssh/authorized_keys",
        ] {
            assert!(paths.write_matches(evasive.as_bytes()), "{evasive}");
        }
        assert!(paths.read_matches(b"/etc/./shadow"));
        assert!(!paths.write_matches(b"/etc/../tmp/x"));
        assert!(!paths.read_matches(b"/etc/shadow/../passwd"));
    }

    #[test]
    fn prefix_matching_by_component() {
        let p = Pattern::parse("/home/*/.ssh").unwrap();
        assert!(p.matches(b"/home/alice/.ssh/id_ed25519"));
        assert!(p.matches(b"/home/alice/.ssh"));
        assert!(!p.matches(b"/home/alice/.sshx/key"));
        assert!(!p.matches(b"/home/alice"));
        let etc = Pattern::parse("/etc").unwrap();
        assert!(etc.matches(b"/etc/passwd"));
        assert!(!etc.matches(b"/etcetera/passwd"));
    }

    #[test]
    fn bad_patterns_are_named() {
        let err = Pattern::parse("etc").unwrap_err();
        assert!(err.to_string().contains("\"etc\" is not absolute"), "{err}");
        assert!(Pattern::parse("/home/a*").is_err());
        assert!(Pattern::parse("/").is_err());
        assert!(Pattern::parse("/etc/../root").is_err());
    }

    #[test]
    fn read_inodes_resolve_existing_paths() {
        let dir = std::env::temp_dir().join(format!("monitor-sensitive-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("u1/.ssh")).unwrap();
        std::fs::create_dir_all(dir.join("u2")).unwrap();
        let pattern = format!("{}/*/.ssh", dir.display());
        let s = SensitivePaths::new(&[pattern.as_str()], &[]).unwrap();
        assert_eq!(s.read_inodes().len(), 1, "only u1 has .ssh");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn defaults_split_reads_from_writes() {
        let s = SensitivePaths::default();
        assert!(
            !s.read_matches(b"/etc/ld.so.cache"),
            "every process reads it"
        );
        assert!(s.read_matches(b"/etc/shadow"));
        assert!(s.write_matches(b"/etc/ld.so.cache"));
        assert!(s.write_matches(b"/home/bob/.ssh/authorized_keys"));
        assert!(!s.write_matches(b"/tmp/x"));
    }
}
