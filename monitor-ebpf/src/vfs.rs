//! Paths from kernel memory: walking `dentry->d_parent` across mounts.
//!
//! `bpf_d_path` is only callable from fentry/LSM programs, which this agent
//! cannot rely on, so the walk is done by hand, as `d_path` does it: up the
//! dentry chain to the root of the mount, then to the mountpoint in the
//! parent mount, until the root mount (its own parent). Components are
//! written leaf first, each NUL-terminated; the agent reverses them.

use aya_ebpf::{
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_loop, bpf_probe_read_kernel_str, bpf_probe_read_user_str},
    },
    macros::map,
    maps::PerCpuArray,
};
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
    // SAFETY: `out` points into a record being built or reserved.
    unsafe {
        (*out).len = 0;
        (*out).depth = 0;
        (*out).flags = flags;
        (*out)._pad0 = 0;
    }
}

/// State of the path walk in progress on this CPU.
///
/// It lives in a map, not on the stack, on purpose: the verifier knows
/// nothing of a map value's contents, so every step of the walk starts
/// from the same abstract state (unknown scalars) and the `bpf_loop`
/// callback is verified once or twice. Kept on the stack, the length was a
/// precisely tracked scalar that grew by up to `NAME_READ_MAX` per step, and
/// kernels that verify a callback until its state converges (6.8 on, and
/// 6.1 and 6.6 stable backports) explored it again for every possible
/// length: on some builds of 6.18 and on 7.3 that passed the 1M-instruction
/// limit.
#[repr(C)]
#[derive(Clone, Copy)]
struct WalkState {
    /// Who owns the walk (see [`Walk::owner`]).
    owner: u64,
    dentry: u64,
    vfsmnt: u64,
    mnt: u64,
    len: u64,
    depth: u64,
    flags: u64,
}

/// One walk state per CPU.
#[map]
static PATH_WALK: PerCpuArray<WalkState> = PerCpuArray::with_max_entries(1, 0);

/// The callback's context, on the caller's stack: only the output pointer
/// (which cannot be stored in a map) and the walk's owner token.
#[repr(C)]
struct Walk {
    out: *mut KernelPath,
    /// A token unique to this walk (its start time). A program preempted
    /// mid-walk on a preemptible kernel may find the CPU's state taken over
    /// by another program's walk; each step checks the token and stops with
    /// [`path_flags::FAULT`] instead of mixing two paths.
    owner: u64,
}

/// Captures the path of `dentry` in mount `vfsmnt` into `out`.
///
/// The walk runs under `bpf_loop`, so the verifier checks one step instead
/// of unrolling `PATH_DEPTH_MAX` of them.
#[inline(always)]
pub fn capture_dentry(out: *mut KernelPath, dentry: usize, vfsmnt: usize) {
    let Some(state) = PATH_WALK.get_ptr_mut(0) else {
        set_empty(out, path_flags::FAULT);
        return;
    };
    // SAFETY: a helper without arguments.
    let owner = unsafe { bpf_ktime_get_ns() } | 1;
    // SAFETY: this CPU's map value.
    unsafe {
        *state = WalkState {
            owner,
            dentry: dentry as u64,
            vfsmnt: vfsmnt as u64,
            mnt: vfsmnt.wrapping_sub(off!(mount_mnt)) as u64,
            len: 0,
            depth: 0,
            flags: 0,
        };
    }
    let mut walk = Walk { out, owner };
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
    // SAFETY: this CPU's map value, copied out at once.
    let done = unsafe { *state };
    let mut flags = done.flags as u8;
    if done.owner != owner {
        flags |= path_flags::FAULT;
    }
    let mut len = done.len as usize;
    if len > PATH_CAPTURE_MAX {
        // The last component ran past the capture bound into the slack: drop it.
        flags |= path_flags::TRUNCATED;
        len = PATH_CAPTURE_MAX;
    }
    if flags & path_flags::TRUNCATED != 0 {
        count(COUNTER_PATH_TRUNCATED);
    }
    // SAFETY: `out` points into a record being built or reserved.
    unsafe {
        (*out).len = len as u16;
        (*out).depth = done.depth as u8;
        (*out).flags = flags;
        (*out)._pad0 = 0;
    }
}

/// One step of the walk: returns 1 to stop, 0 to go on.
extern "C" fn walk_step(_index: u32, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: bpf_loop passes back the `Walk` given in `capture_dentry`.
    let walk = unsafe { &*ctx.cast::<Walk>() };
    let Some(state) = PATH_WALK.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's map value.
    let w = unsafe { &mut *state };
    if w.owner != walk.owner {
        return 1; // taken over: `capture_dentry` marks the fault
    }
    let fault = |w: &mut WalkState| {
        w.flags |= u64::from(path_flags::FAULT);
        1
    };
    let (dentry, vfsmnt, mnt) = (w.dentry as usize, w.vfsmnt as usize, w.mnt as usize);
    let Ok(mnt_root) = read_ptr(vfsmnt, off!(vfsmount_mnt_root)) else {
        return fault(w);
    };
    let Ok(parent) = read_ptr(dentry, off!(dentry_d_parent)) else {
        return fault(w);
    };
    // A dentry that is its own parent but not its mount's root is a pseudo
    // or disconnected dentry (memfd, anonymous files, file-handle opens):
    // its own name is all there is, so capture it and stop.
    let last = dentry == parent && dentry != mnt_root;
    if dentry == mnt_root {
        let Ok(mnt_parent) = read_ptr(mnt, off!(mount_mnt_parent)) else {
            return fault(w);
        };
        if mnt_parent == mnt {
            return 1; // the root mount: done
        }
        let Ok(mountpoint) = read_ptr(mnt, off!(mount_mnt_mountpoint)) else {
            return fault(w);
        };
        w.dentry = mountpoint as u64;
        w.mnt = mnt_parent as u64;
        w.vfsmnt = mnt_parent.wrapping_add(off!(mount_mnt)) as u64;
        return 0;
    }
    let Ok(name) = read_ptr(dentry, off!(dentry_d_name) + off!(qstr_name)) else {
        return fault(w);
    };
    let len = w.len as usize;
    if len >= PATH_CAPTURE_MAX - 1 {
        w.flags |= u64::from(path_flags::TRUNCATED);
        return 1;
    }
    // The mask proves to the verifier that the write stays inside the area:
    // offset < PATH_CAPTURE_MAX and at most NAME_READ_MAX bytes.
    let at = len & (PATH_CAPTURE_MAX - 1);
    // SAFETY: data[at..at + NAME_READ_MAX] lies inside the PATH_AREA array
    // of the record `out` points to.
    let n = unsafe {
        bpf_probe_read_kernel_str(
            (*walk.out).data.as_mut_ptr().wrapping_add(at).cast(),
            NAME_READ_MAX as u32,
            name as *const _,
        )
    };
    if n <= 0 {
        return fault(w);
    }
    w.len = (at + n as usize) as u64;
    w.depth += 1;
    w.dentry = parent as u64;
    i64::from(last)
}

/// Captures a NUL-terminated string from user memory as a
/// [`path_flags::USER_STRING`] path. Returns false if the read failed.
#[inline(always)]
pub fn capture_user_string(out: *mut KernelPath, src: usize) -> bool {
    // SAFETY: `out` points into a record being built or reserved. the helper
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
