//! Syscall numbers to canonical names, per ABI.
//!
//! Everything above the kernel layer names syscalls by canonical name, so a
//! model learned live (x86_64) and data recorded elsewhere (the ADFA-LD
//! dataset is i386) speak the same language. The per-ABI number tables come
//! from the `syscalls` crate; this module adds the canonicalisation: i386's
//! legacy and 64-bit-file variants (`mmap2`, `stat64`, `getuid32`,
//! `_llseek`, ...) map to their x86_64 equivalents.

use std::borrow::Cow;

/// A syscall ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Abi {
    /// x86_64 (the live ABI on this agent's hosts).
    X86_64,
    /// i386 (ADFA-LD traces).
    I386,
}

impl Abi {
    /// Canonical name of syscall `nr`; `sys_<nr>` when the ABI has no such number.
    pub fn name(self, nr: u32) -> Cow<'static, str> {
        let raw = match self {
            Abi::X86_64 => syscalls::x86_64::Sysno::new(nr as usize).map(|s| s.name()),
            Abi::I386 => syscalls::x86::Sysno::new(nr as usize).map(|s| s.name()),
        };
        match raw {
            Some(name) => Cow::Borrowed(canonical(self, name)),
            None => Cow::Owned(format!("sys_{nr}")),
        }
    }

    /// The x86_64 number of a canonical name.
    pub fn x86_64_number(name: &str) -> Option<u32> {
        name.parse::<syscalls::x86_64::Sysno>()
            .ok()
            .map(|s| s.id() as u32)
    }

    /// Canonical id of syscall `nr` of this ABI (see [`canonical_id`]).
    pub fn canonical_id(self, nr: u32) -> u16 {
        canonical_id(&self.name(nr))
    }
}

/// Names that exist only outside x86_64, with fixed ids above its table.
const EXTRA_NAMES: &[&str] = &["socketcall", "ipc", "sys_unknown"];
/// First id of [`EXTRA_NAMES`].
const EXTRA_BASE: u16 = 1000;

/// A small integer for a canonical syscall name: its x86_64 number, or a
/// fixed id above 1000 for names x86_64 lacks; `sys_<n>` names keep `n`
/// offset by 2000 so they stay distinct.
pub fn canonical_id(name: &str) -> u16 {
    // Hot path (every syscall of every window): a table built once.
    static BY_NAME: std::sync::OnceLock<std::collections::HashMap<&'static str, u16>> =
        std::sync::OnceLock::new();
    let table = BY_NAME.get_or_init(|| {
        (0..1000u32)
            .filter_map(|nr| {
                syscalls::x86_64::Sysno::new(nr as usize).map(|s| (s.name(), nr as u16))
            })
            .chain(
                EXTRA_NAMES
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (*n, EXTRA_BASE + i as u16)),
            )
            .collect()
    });
    if let Some(&id) = table.get(name) {
        return id;
    }
    slow_canonical_id(name)
}

fn slow_canonical_id(name: &str) -> u16 {
    if let Some(nr) = Abi::x86_64_number(name) {
        return nr as u16;
    }
    if let Some(i) = EXTRA_NAMES.iter().position(|n| *n == name) {
        return EXTRA_BASE + i as u16;
    }
    if let Some(n) = name
        .strip_prefix("sys_")
        .and_then(|n| n.parse::<u16>().ok())
    {
        return 2000 + n.min(999);
    }
    EXTRA_BASE + (EXTRA_NAMES.len() - 1) as u16
}

/// The canonical name of a canonical id.
pub fn canonical_name(id: u16) -> Cow<'static, str> {
    match id {
        0..1000 => Abi::X86_64.name(u32::from(id)),
        2000.. => Cow::Owned(format!("sys_{}", id - 2000)),
        _ => Cow::Borrowed(
            EXTRA_NAMES
                .get(usize::from(id - EXTRA_BASE))
                .copied()
                .unwrap_or("sys_unknown"),
        ),
    }
}

/// The canonical (x86_64) name of an ABI's native name.
fn canonical(abi: Abi, name: &'static str) -> &'static str {
    if abi == Abi::X86_64 {
        return name;
    }
    match name {
        "mmap2" | "old_mmap" => "mmap",
        "stat64" | "oldstat" => "stat",
        "lstat64" | "oldlstat" => "lstat",
        "fstat64" | "oldfstat" => "fstat",
        "fstatat64" => "newfstatat",
        "fcntl64" => "fcntl",
        "_llseek" => "lseek",
        "truncate64" => "truncate",
        "ftruncate64" => "ftruncate",
        "statfs64" => "statfs",
        "fstatfs64" => "fstatfs",
        "getdents" => "getdents",
        "_newselect" | "select" => "select",
        "ugetrlimit" => "getrlimit",
        "sigaction" => "rt_sigaction",
        "sigprocmask" => "rt_sigprocmask",
        "sigreturn" => "rt_sigreturn",
        "sigsuspend" => "rt_sigsuspend",
        "sigpending" => "rt_sigpending",
        "waitpid" => "wait4",
        "getuid32" => "getuid",
        "geteuid32" => "geteuid",
        "getgid32" => "getgid",
        "getegid32" => "getegid",
        "setuid32" => "setuid",
        "setgid32" => "setgid",
        "setreuid32" => "setreuid",
        "setregid32" => "setregid",
        "setresuid32" => "setresuid",
        "setresgid32" => "setresgid",
        "getresuid32" => "getresuid",
        "getresgid32" => "getresgid",
        "getgroups32" => "getgroups",
        "setgroups32" => "setgroups",
        "chown32" => "chown",
        "lchown32" => "lchown",
        "fchown32" => "fchown",
        "setfsuid32" => "setfsuid",
        "setfsgid32" => "setfsgid",
        "sendfile64" => "sendfile",
        "pread64" => "pread64",
        "readdir" => "getdents",
        "signal" => "rt_sigaction",
        "nice" => "setpriority",
        // `socketcall` and `ipc` multiplex many calls behind one number and
        // the traces do not carry the selector: they keep their own names.
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_by_abi() {
        assert_eq!(Abi::X86_64.name(110), "getppid");
        assert_eq!(Abi::I386.name(64), "getppid");
        assert_eq!(Abi::I386.name(192), "mmap");
        assert_eq!(Abi::I386.name(195), "stat");
        assert_eq!(Abi::I386.name(199), "getuid");
        assert_eq!(Abi::I386.name(102), "socketcall");
        assert_eq!(Abi::X86_64.name(511), "sys_511");
    }

    #[test]
    fn canonical_ids_round_trip() {
        for name in ["getppid", "mmap", "socketcall", "ipc", "sys_511"] {
            assert_eq!(canonical_name(canonical_id(name)), name);
        }
        assert_eq!(
            Abi::I386.canonical_id(192),
            Abi::X86_64.canonical_id(9),
            "mmap2 is mmap"
        );
    }

    #[test]
    fn x86_64_numbers() {
        assert_eq!(Abi::x86_64_number("getppid"), Some(110));
        assert_eq!(Abi::x86_64_number("no_such_call"), None);
    }
}
