//! Paths from kernel memory: walking `dentry->d_parent` across mounts.
//!
//! `bpf_d_path` is only callable from fentry/LSM programs, which this agent
//! cannot rely on, so the walk is done by hand, as `d_path` does it: up the
//! dentry chain to the root of the mount, then to the mountpoint in the
//! parent mount, until the root mount (its own parent). Components are
//! written leaf first, each NUL-terminated; the agent reverses them.

use aya_ebpf::helpers::generated::{bpf_loop, bpf_probe_read_kernel_str, bpf_probe_read_user_str};
use monitor_common::{
    COUNTER_PATH_TRUNCATED, KernelPath, NAME_READ_MAX, PATH_CAPTURE_MAX, PATH_DEPTH_MAX, path_flags,
};

use crate::kernel::{count, off, read_ptr};

/// Captures the path of a `struct path` at address `path` into `out`.
#[inline(always)]
pub fn capture_path(out: *mut KernelPath, path: usize) {
    let dentry = read_ptr(path, off!(path_dentry));
    let vfsmnt = read_ptr(path, off!(path_mnt));
    match (dentry, vfsmnt) {
        (Ok(dentry), Ok(vfsmnt)) => capture_dentry(out, dentry, vfsmnt),
        _ => set_empty(out, path_flags::FAULT),
    }
}

/// Marks `out` as holding nothing, with `flags`.
#[inline(always)]
pub fn set_empty(out: *mut KernelPath, flags: u8) {
    // SAFETY: `out` points into a reserved ring-buffer record.
    unsafe {
        (*out).len = 0;
        (*out).depth = 0;
        (*out).flags = flags;
        (*out)._pad0 = 0;
    }
}

/// State of one path walk, shared with the `bpf_loop` callback.
#[repr(C)]
struct Walk {
    out: *mut KernelPath,
    dentry: usize,
    vfsmnt: usize,
    mnt: usize,
    len: usize,
    depth: u8,
    flags: u8,
}

/// Captures the path of `dentry` in mount `vfsmnt` into `out`.
///
/// The walk runs under `bpf_loop`, so the verifier checks one step once
/// instead of unrolling `PATH_DEPTH_MAX` of them.
#[inline(always)]
pub fn capture_dentry(out: *mut KernelPath, dentry: usize, vfsmnt: usize) {
    let mut walk = Walk {
        out,
        dentry,
        vfsmnt,
        mnt: vfsmnt.wrapping_sub(off!(mount_mnt)),
        len: 0,
        depth: 0,
        flags: 0,
    };
    // SAFETY: `walk_step` has the callback signature bpf_loop expects and
    // only touches `walk` through the context pointer.
    unsafe {
        bpf_loop(
            PATH_DEPTH_MAX,
            walk_step as *mut core::ffi::c_void,
            (&raw mut walk).cast(),
            0,
        );
    }
    let mut len = walk.len;
    let mut flags = walk.flags;
    if len > PATH_CAPTURE_MAX {
        // The last component ran past the capture bound into the slack: drop it.
        flags |= path_flags::TRUNCATED;
        len = PATH_CAPTURE_MAX;
    }
    if flags & path_flags::TRUNCATED != 0 {
        count(COUNTER_PATH_TRUNCATED);
    }
    // SAFETY: `out` points into a reserved ring-buffer record.
    unsafe {
        (*out).len = len as u16;
        (*out).depth = walk.depth;
        (*out).flags = flags;
        (*out)._pad0 = 0;
    }
}

/// One step of the walk: returns 1 to stop, 0 to go on.
extern "C" fn walk_step(_index: u32, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: bpf_loop passes back the `Walk` given in `capture_dentry`.
    let walk = unsafe { &mut *ctx.cast::<Walk>() };
    let fault = |walk: &mut Walk| {
        walk.flags |= path_flags::FAULT;
        1
    };
    let Ok(mnt_root) = read_ptr(walk.vfsmnt, off!(vfsmount_mnt_root)) else {
        return fault(walk);
    };
    let Ok(parent) = read_ptr(walk.dentry, off!(dentry_d_parent)) else {
        return fault(walk);
    };
    // A dentry that is its own parent but not its mount's root is a pseudo
    // or disconnected dentry (memfd, anonymous files, file-handle opens):
    // its own name is all there is, so capture it and stop.
    let last = walk.dentry == parent && walk.dentry != mnt_root;
    if walk.dentry == mnt_root {
        let Ok(mnt_parent) = read_ptr(walk.mnt, off!(mount_mnt_parent)) else {
            return fault(walk);
        };
        if mnt_parent == walk.mnt {
            return 1; // the root mount: done
        }
        let Ok(mountpoint) = read_ptr(walk.mnt, off!(mount_mnt_mountpoint)) else {
            return fault(walk);
        };
        walk.dentry = mountpoint;
        walk.mnt = mnt_parent;
        walk.vfsmnt = mnt_parent.wrapping_add(off!(mount_mnt));
        return 0;
    }
    let Ok(name) = read_ptr(walk.dentry, off!(dentry_d_name) + off!(qstr_name)) else {
        return fault(walk);
    };
    if walk.len >= PATH_CAPTURE_MAX - 1 {
        walk.flags |= path_flags::TRUNCATED;
        return 1;
    }
    // The mask proves to the verifier that the write stays inside the area:
    // offset < PATH_CAPTURE_MAX and at most NAME_READ_MAX bytes.
    let at = walk.len & (PATH_CAPTURE_MAX - 1);
    // SAFETY: data[at..at + NAME_READ_MAX] lies inside the PATH_AREA array
    // of the reserved record `out` points to.
    let n = unsafe {
        bpf_probe_read_kernel_str(
            (*walk.out).data.as_mut_ptr().wrapping_add(at).cast(),
            NAME_READ_MAX as u32,
            name as *const _,
        )
    };
    if n <= 0 {
        return fault(walk);
    }
    walk.len = at + n as usize;
    walk.depth = walk.depth.wrapping_add(1);
    walk.dentry = parent;
    i64::from(last)
}

/// Captures a NUL-terminated string from user memory as a
/// [`path_flags::USER_STRING`] path. Returns false if the read failed.
#[inline(always)]
pub fn capture_user_string(out: *mut KernelPath, src: usize) -> bool {
    // SAFETY: `out` points into a reserved ring-buffer record; the helper
    // writes at most PATH_CAPTURE_MAX bytes into the PATH_AREA array.
    let n = unsafe {
        bpf_probe_read_user_str(
            (*out).data.as_mut_ptr().cast(),
            PATH_CAPTURE_MAX as u32,
            src as *const _,
        )
    };
    let (len, flags) = if n > 0 {
        let len = n as usize;
        let truncated = if len >= PATH_CAPTURE_MAX {
            path_flags::TRUNCATED
        } else {
            0
        };
        (len, path_flags::USER_STRING | truncated)
    } else {
        (0, path_flags::USER_STRING | path_flags::FAULT)
    };
    // SAFETY: as above.
    unsafe {
        (*out).len = len as u16;
        (*out).depth = 1;
        (*out).flags = flags;
        (*out)._pad0 = 0;
    }
    n > 0
}
