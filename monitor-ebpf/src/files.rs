//! File operations: opens that write or touch a sensitive location (path from
//! the opened file, in kernel memory), failed opens that were refused, and
//! unlink/rename (the names as passed, plus the directory they are relative
//! to).

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    helpers::generated::{bpf_loop, bpf_probe_read_user},
    macros::map,
    maps::{HashMap, LruHashMap},
};
use monitor_common::{
    COUNTER_RATE_LIMITED, COUNTER_USER_FAULT, FILE_BURST, FILE_RATE, FileBudget, FileRecord,
    InodeKey, KernelPath, file_flags, file_op, kind, packing::FILE_AREAS, path_flags, stash,
};

use crate::{
    build,
    fds::{cwd_path, file_of_fd},
    kernel::{
        EVENTS, count, current_ids, current_task, fill_task, off, read, read_ptr, write_header,
    },
    pending::{Pending, args_at_exit},
    vfs::{capture_path, capture_user_string, set_empty},
};

/// Process id -> its budget of file records (see `FileBudget`). Read by
/// the agent to say which process was limited and by how much.
#[map]
pub static FILE_BUDGET: LruHashMap<u32, FileBudget> = LruHashMap::with_max_entries(8192, 0);

/// True if the current process may write one more file record now; if not,
/// the refusal is counted (per process in `FILE_BUDGET`, in total in the
/// counters). A token bucket kept as the time the next record is due
/// (GCRA): one map lookup, no timer.
#[inline(always)]
fn file_budget_allows() -> bool {
    const INTERVAL_NS: u64 = 1_000_000_000 / FILE_RATE;
    const BURST_NS: u64 = INTERVAL_NS * FILE_BURST;
    let pid = current_ids().1;
    // SAFETY: a helper without arguments.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_boot_ns() };
    match FILE_BUDGET.get_ptr_mut(&pid) {
        Some(budget) => {
            // SAFETY: a value of the map, for this call's duration.
            let budget = unsafe { &mut *budget };
            let due = if budget.due_ns > now {
                budget.due_ns
            } else {
                now
            };
            if due - now >= BURST_NS {
                budget.suppressed += 1;
                count(COUNTER_RATE_LIMITED);
                return false;
            }
            budget.due_ns = due + INTERVAL_NS;
            true
        }
        None => {
            let fresh = FileBudget {
                due_ns: now + INTERVAL_NS,
                suppressed: 0,
            };
            let _ = FILE_BUDGET.insert(&pid, &fresh, 0);
            true
        }
    }
}

/// Sensitive locations (directories or files) by device and inode, filled
/// and refreshed by the agent from its configured paths.
#[map]
pub static SENSITIVE: HashMap<InodeKey, u8> = HashMap::with_max_entries(4096, 0);

/// Directory (by dentry address and device) -> whether it lies under a
/// sensitive location, for [`DIR_VERDICT_TTL_NS`]. Without it every open
/// walked all ancestors of its file, a probe read per step; a hot loop of
/// opens in one directory now costs one lookup. The short life bounds how
/// long a verdict can outlive a rename, a freed-and-reused dentry or a
/// refresh of `SENSITIVE` by the agent.
#[map]
static DIR_VERDICTS: LruHashMap<DirKey, DirVerdict> = LruHashMap::with_max_entries(4096, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct DirKey {
    dentry: u64,
    dev: u32,
    _pad0: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct DirVerdict {
    expires_ns: u64,
    sensitive: u32,
    _pad0: u32,
}

/// How long a directory verdict is trusted.
const DIR_VERDICT_TTL_NS: u64 = 1_000_000_000;

const AT_FDCWD: i64 = -100;
const O_WRONLY: u32 = 0o1;
const O_CREAT: u32 = 0o100;
const O_TRUNC: u32 = 0o1000;
const FMODE_WRITE: u32 = 0x2;
const S_IFMT: u16 = 0o170000;
const S_IFREG: u16 = 0o100000;
const CGROUP_SUPER_MAGIC: u64 = 0x27e0eb;
const CGROUP2_SUPER_MAGIC: u64 = 0x63677270;
const EACCES: i64 = 13;
const EPERM: i64 = 1;
/// Ancestors checked against `SENSITIVE`.
const SENSITIVE_DEPTH: u32 = 24;

/// (dirfd, filename pointer, flags, mode) of an open-family stash.
fn open_args(p: &Pending) -> (i64, u64, u32, u32) {
    match p.op {
        stash::OPENAT => (
            p.args[0] as i64,
            p.args[1],
            p.args[2] as u32,
            p.args[3] as u32,
        ),
        stash::OPEN => (AT_FDCWD, p.args[0], p.args[1] as u32, p.args[2] as u32),
        stash::CREAT => (
            AT_FDCWD,
            p.args[0],
            O_CREAT | O_WRONLY | O_TRUNC,
            p.args[1] as u32,
        ),
        _ => {
            // openat2(dfd, filename, struct open_how *how, size): flags and
            // mode are the first two u64 of `how`, in user memory.
            let mut how = [0u64; 2];
            // SAFETY: reads into a local; the helper faults gracefully.
            let _ =
                unsafe { bpf_probe_read_user(how.as_mut_ptr().cast(), 16, p.args[2] as *const _) };
            (p.args[0] as i64, p.args[1], how[0] as u32, how[1] as u32)
        }
    }
}

/// Exit of open, openat, creat and openat2 (`op`). Most opens report
/// nothing, so their arguments are only read when they do.
#[inline(never)]
pub fn on_open_exit(op: u32, ret: i64) {
    if ret >= 0 {
        let Some(file) = file_of_fd(ret) else {
            return;
        };
        let Ok(inode) = read_ptr(file, off!(file_f_inode)) else {
            return;
        };
        // SAFETY: probe reads.
        let i_mode: u16 = unsafe { read(inode, off!(inode_i_mode)) }.unwrap_or(0);
        if i_mode & S_IFMT != S_IFREG {
            return; // devices (/dev/null), pipes, directories
        }
        let sb = read_ptr(inode, off!(inode_i_sb)).unwrap_or(0);
        // SAFETY: probe read.
        let magic: u64 = unsafe { read(sb, off!(sb_s_magic)) }.unwrap_or(0);
        if magic == CGROUP_SUPER_MAGIC || magic == CGROUP2_SUPER_MAGIC {
            return; // container runtimes write cgroup files constantly
        }
        // SAFETY: probe read.
        let f_mode: u32 = unsafe { read(file, off!(file_f_mode)) }.unwrap_or(0);
        let write = f_mode & FMODE_WRITE != 0;
        // SAFETY: probe read.
        let dev: u32 = unsafe { read(sb, off!(sb_s_dev)) }.unwrap_or(0);
        let dentry = read_ptr(file, off!(file_f_path) + off!(path_dentry)).unwrap_or(0);
        // SAFETY: probe read.
        let ino: u64 = unsafe { read(inode, off!(inode_i_ino)) }.unwrap_or(0);
        if write {
            crate::recent::note_write(dev, ino);
        }
        let sensitive = is_sensitive_file(dentry, dev, ino);
        if !write && !sensitive {
            return;
        }
        let mut hflags = 0;
        if write {
            hflags |= file_flags::WRITE;
        }
        if sensitive {
            hflags |= file_flags::SENSITIVE;
        }
        if !sensitive && !file_budget_allows() {
            return;
        }
        let (_, _, flags, mode) = open_args(&args_at_exit(op));
        emit_open(hflags, flags, mode, ret, ino, OpenPath::Kernel(file));
    } else if (ret == -EACCES || ret == -EPERM) && file_budget_allows() {
        let (dfd, filename, flags, mode) = open_args(&args_at_exit(op));
        // Refused: the file was not opened, so its name is all there is.
        let hflags = if flags & 0o3 != 0 {
            file_flags::WRITE
        } else {
            0
        };
        emit_open(hflags, flags, mode, ret, 0, OpenPath::User(filename, dfd));
    }
}

enum OpenPath {
    /// The opened `struct file`.
    Kernel(usize),
    /// The name as passed, and the dirfd it is relative to.
    User(u64, i64),
}

#[inline(always)]
fn emit_open(hflags: u16, flags: u32, mode: u32, ret: i64, ino: u64, path: OpenPath) {
    let Some(build) = build::start::<FileRecord>(kind::FILE, build::Lane::Events) else {
        return;
    };
    let rec = build.rec;
    // SAFETY: `rec` is the record being built, written field by field.
    unsafe {
        write_header(
            &raw mut (*rec).header,
            kind::FILE,
            core::mem::size_of::<FileRecord>(),
        );
        let _ = fill_task(&raw mut (*rec).task, current_task());
        (*rec).op = file_op::OPEN;
        (*rec)._pad0 = [0; 3];
        (*rec).ret = ret as i32;
        (*rec).open_flags = flags;
        (*rec).mode = mode;
        (*rec).ino = ino;
        set_empty(&raw mut (*rec).path2, path_flags::ABSENT);
        let mut hflags = hflags;
        match path {
            OpenPath::Kernel(file) => {
                capture_path(&raw mut (*rec).path, file + off!(file_f_path));
                set_empty(&raw mut (*rec).base, path_flags::ABSENT);
            }
            OpenPath::User(name, dfd) => {
                hflags |= user_name(&raw mut (*rec).path, &raw mut (*rec).base, name, dfd);
            }
        }
        (*rec).header.flags = hflags;
    }
    build.send(
        &EVENTS,
        kind::FILE,
        &FILE_AREAS,
        crate::kernel::wakeup_flags(),
    );
}

/// Captures a user-memory name, and the directory it is relative to when it
/// does not start with `/`. Returns header flags.
///
/// # Safety
/// `path` and `base` must point into a record being built.
unsafe fn user_name(path: *mut KernelPath, base: *mut KernelPath, name: u64, dfd: i64) -> u16 {
    // SAFETY: per the function contract.
    unsafe {
        if !capture_user_string(path, name as usize) {
            count(COUNTER_USER_FAULT + u32::from(kind::FILE));
            set_empty(base, path_flags::ABSENT);
            return file_flags::USER_FAULT;
        }
        if (*path).data[0] == b'/' {
            set_empty(base, path_flags::ABSENT);
        } else {
            capture_dir(base, dfd);
        }
    }
    0
}

/// Captures the directory a relative name resolves against: the cwd for
/// `AT_FDCWD`, else the directory behind `dfd`.
fn capture_dir(out: *mut KernelPath, dfd: i64) {
    let dir = if dfd == AT_FDCWD {
        cwd_path()
    } else {
        file_of_fd(dfd).map(|f| f + off!(file_f_path))
    };
    match dir {
        Some(path) => capture_path(out, path),
        None => set_empty(out, path_flags::FAULT),
    }
}

/// Walk state for the sensitive-ancestor check.
#[repr(C)]
struct Ancestors {
    dentry: usize,
    dev: u32,
    found: u32,
}

/// True if an opened file, or a directory above it on the same filesystem,
/// is in `SENSITIVE`. The file itself is checked every time; the verdict on
/// its directory comes from `DIR_VERDICTS` when fresh.
fn is_sensitive_file(dentry: usize, dev: u32, ino: u64) -> bool {
    if dentry == 0 {
        return false;
    }
    let key = InodeKey { dev, _pad0: 0, ino };
    // SAFETY: presence check only.
    if unsafe { SENSITIVE.get(&key) }.is_some() {
        return true;
    }
    let Ok(parent) = read_ptr(dentry, off!(dentry_d_parent)) else {
        return false;
    };
    if parent == dentry {
        return false; // the root of this filesystem
    }
    let dir = DirKey {
        dentry: parent as u64,
        dev,
        _pad0: 0,
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: copied out at once.
    if let Some(verdict) = unsafe { DIR_VERDICTS.get(&dir) }.copied()
        && verdict.expires_ns > now
    {
        return verdict.sensitive != 0;
    }
    let sensitive = is_sensitive(parent, dev);
    let verdict = DirVerdict {
        expires_ns: now + DIR_VERDICT_TTL_NS,
        sensitive: u32::from(sensitive),
        _pad0: 0,
    };
    let _ = DIR_VERDICTS.insert(&dir, &verdict, 0);
    sensitive
}

/// True if the dentry or one of its ancestors on the same filesystem is in
/// `SENSITIVE`.
fn is_sensitive(dentry: usize, dev: u32) -> bool {
    if dentry == 0 {
        return false;
    }
    let mut walk = Ancestors {
        dentry,
        dev,
        found: 0,
    };
    // SAFETY: `sensitive_step` has bpf_loop's callback signature and only
    // touches `walk` through the context pointer.
    unsafe {
        bpf_loop(
            SENSITIVE_DEPTH,
            sensitive_step as *mut core::ffi::c_void,
            (&raw mut walk).cast(),
            0,
        );
    }
    walk.found != 0
}

extern "C" fn sensitive_step(_index: u32, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: bpf_loop passes back the `Ancestors` of `is_sensitive`.
    let walk = unsafe { &mut *ctx.cast::<Ancestors>() };
    let Ok(inode) = read_ptr(walk.dentry, off!(dentry_d_inode)) else {
        return 1;
    };
    // SAFETY: probe read.
    let ino: u64 = unsafe { read(inode, off!(inode_i_ino)) }.unwrap_or(0);
    let key = InodeKey {
        dev: walk.dev,
        _pad0: 0,
        ino,
    };
    // SAFETY: presence check only.
    if unsafe { SENSITIVE.get(&key) }.is_some() {
        walk.found = 1;
        return 1;
    }
    let Ok(parent) = read_ptr(walk.dentry, off!(dentry_d_parent)) else {
        return 1;
    };
    if parent == walk.dentry {
        return 1; // root of this filesystem
    }
    walk.dentry = parent;
    0
}

/// Exit of unlink, unlinkat, rename, renameat, renameat2, link, linkat,
/// symlink and symlinkat.
#[inline(never)]
pub fn on_names_exit(p: &Pending, ret: i64) {
    emit_names(p, ret);
}

/// unlink/rename: (op, dirfd, name, second dirfd, second name, flags).
fn name_args(p: &Pending) -> (u8, i64, u64, u64, u32) {
    match p.op {
        stash::UNLINK => (file_op::UNLINK, AT_FDCWD, p.args[0], 0, 0),
        stash::UNLINKAT => (
            file_op::UNLINK,
            p.args[0] as i64,
            p.args[1],
            0,
            p.args[2] as u32,
        ),
        stash::RENAME => (file_op::RENAME, AT_FDCWD, p.args[0], p.args[1], 0),
        stash::RENAMEAT => (file_op::RENAME, p.args[0] as i64, p.args[1], p.args[3], 0),
        stash::LINK => (file_op::LINK, AT_FDCWD, p.args[0], p.args[1], 0),
        stash::LINKAT => (
            file_op::LINK,
            p.args[0] as i64,
            p.args[1],
            p.args[3],
            p.args[4] as u32,
        ),
        // The link made is the path; the target is any text.
        stash::SYMLINK => (file_op::SYMLINK, AT_FDCWD, p.args[1], p.args[0], 0),
        stash::SYMLINKAT => (file_op::SYMLINK, p.args[1] as i64, p.args[2], p.args[0], 0),
        _ => (
            file_op::RENAME,
            p.args[0] as i64,
            p.args[1],
            p.args[3],
            p.args[4] as u32,
        ),
    }
}

fn emit_names(p: &Pending, ret: i64) {
    if ret < 0 || !file_budget_allows() {
        return; // nothing changed on disk, or over budget (counted)
    }
    let (op, dfd, name, name2, flags) = name_args(p);
    let Some(build) = build::start::<FileRecord>(kind::FILE, build::Lane::Events) else {
        return;
    };
    let rec = build.rec;
    // SAFETY: `rec` is the record being built, written field by field.
    unsafe {
        write_header(
            &raw mut (*rec).header,
            kind::FILE,
            core::mem::size_of::<FileRecord>(),
        );
        let _ = fill_task(&raw mut (*rec).task, current_task());
        (*rec).op = op;
        (*rec)._pad0 = [0; 3];
        (*rec).ret = ret as i32;
        (*rec).open_flags = flags;
        (*rec).mode = 0;
        (*rec).ino = 0;
        let mut hflags = user_name(&raw mut (*rec).path, &raw mut (*rec).base, name, dfd);
        if op != file_op::UNLINK {
            if !capture_user_string(&raw mut (*rec).path2, name2 as usize) {
                count(COUNTER_USER_FAULT + u32::from(kind::FILE));
                hflags |= file_flags::USER_FAULT;
            } else if op != file_op::SYMLINK
                && (*rec).base.flags & path_flags::ABSENT != 0
                && (*rec).path2.data[0] != b'/'
            {
                // The new name is relative although the old one was not.
                capture_dir(&raw mut (*rec).base, AT_FDCWD);
            }
        } else {
            set_empty(&raw mut (*rec).path2, path_flags::ABSENT);
        }
        (*rec).header.flags = hflags;
    }
    build.send(
        &EVENTS,
        kind::FILE,
        &FILE_AREAS,
        crate::kernel::wakeup_flags(),
    );
}
