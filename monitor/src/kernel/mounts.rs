//! The pseudo-filesystems the probes need, mounted when missing.
//!
//! A fresh host (or a minimal VM, like CI's) may boot without tracefs, bpffs
//! or securityfs mounted. Tracepoint attachment needs tracefs; the others are
//! mounted for pinning and for reporting the active LSMs.

use std::{ffi::CString, path::Path};

/// A filesystem the agent needs.
#[derive(Debug, Clone, Copy)]
pub struct RequiredMount {
    /// Where it goes.
    pub target: &'static str,
    /// Filesystem type.
    pub fstype: &'static str,
    /// What needs it (for messages).
    pub needed_for: &'static str,
}

/// All of them.
pub const REQUIRED: &[RequiredMount] = &[
    RequiredMount {
        target: "/sys/kernel/tracing",
        fstype: "tracefs",
        needed_for: "attaching tracepoints",
    },
    RequiredMount {
        target: "/sys/fs/bpf",
        fstype: "bpf",
        needed_for: "pinning BPF objects",
    },
    RequiredMount {
        target: "/sys/kernel/security",
        fstype: "securityfs",
        needed_for: "reading the active LSMs",
    },
];

/// A mount that is missing and could not be made.
#[derive(Debug, thiserror::Error)]
#[error(
    "{fstype} is not mounted at {target} (needed for {needed_for}) and mounting it failed; \
     run `mount -t {fstype} {fstype} {target}` as root"
)]
pub struct MountError {
    /// Mount point.
    pub target: &'static str,
    /// Filesystem type.
    pub fstype: &'static str,
    /// What needs it.
    pub needed_for: &'static str,
    /// Why mounting failed.
    #[source]
    pub source: std::io::Error,
}

/// True if a filesystem of `fstype` is mounted at `target`.
pub fn is_mounted(target: &str, fstype: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|mounts| {
        mounts.lines().any(|line| {
            let mut f = line.split_whitespace();
            let _source = f.next();
            f.next() == Some(target) && f.next() == Some(fstype)
        })
    })
}

/// Mounts what is missing. Returns the targets it mounted.
pub fn ensure_mounted() -> Result<Vec<&'static str>, MountError> {
    let mut mounted = Vec::new();
    for m in REQUIRED {
        if is_mounted(m.target, m.fstype) {
            continue;
        }
        mount(m).map_err(|source| MountError {
            target: m.target,
            fstype: m.fstype,
            needed_for: m.needed_for,
            source,
        })?;
        tracing::info!(
            target = m.target,
            fstype = m.fstype,
            "mounted missing filesystem"
        );
        mounted.push(m.target);
    }
    Ok(mounted)
}

fn mount(m: &RequiredMount) -> std::io::Result<()> {
    if !Path::new(m.target).is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "mount point does not exist",
        ));
    }
    let c = |s: &str| CString::new(s).expect("no NUL in constant");
    let (source, target, fstype) = (c(m.fstype), c(m.target), c(m.fstype));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let ret = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
