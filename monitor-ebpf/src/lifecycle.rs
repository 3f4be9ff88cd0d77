//! Process lifecycle: exec, fork (new processes only) and exit.

use aya_ebpf::{
    helpers::generated::{bpf_probe_read_kernel, bpf_probe_read_kernel_str, bpf_probe_read_user},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use monitor_common::{
    COUNTER_USER_FAULT, EXEC_ARGV_MAX, EXEC_FILENAME_MAX, ExecRecord, ExecScriptRecord, ExitRecord,
    ForkRecord, SyscallBatch, ThreadCallsRecord, ThreadCounts, ThreadExitRecord, exec_flags, kind,
    packing::{EXEC_AREAS, EXEC_SCRIPT_AREAS},
    thread_exit_flags,
};

use crate::{
    build,
    counting::SYSCALL_COUNTS,
    fds::cwd_path,
    kernel::{
        EVENTS, LIFECYCLE, config, configured, count, count_kernel_fault, count_ringbuf_full,
        current_task, fill_task, load, off, read, read_ptr, write_header,
    },
    vfs::{capture_path, set_empty},
};

/// `sched_process_exec(task, old_pid, bprm)`: runs after the new image is
/// set up, in the context of the process, so its argument block is mapped
/// and paths come from `bprm` in kernel memory.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    if configured() {
        try_exec(&ctx);
    }
    0
}

fn try_exec(ctx: &BtfTracePointContext) {
    let task: usize = ctx.arg(0);
    let old_tid: i32 = ctx.arg(1);
    let bprm: usize = ctx.arg(2);
    let filename = read_ptr(bprm, off!(bprm_filename)).unwrap_or(0);
    let interp = read_ptr(bprm, off!(bprm_interp)).unwrap_or(0);
    let Some(build) = build::start::<ExecScriptRecord>(kind::EXEC, build::Lane::Lifecycle) else {
        return;
    };
    let rec = build.rec;
    let flags = crate::kernel::lifecycle_wakeup_flags();
    // SAFETY: the record being built; its exec part is an `ExecRecord`.
    unsafe {
        let exec = &raw mut (*rec).exec;
        if interp == filename {
            fill_exec(exec, task, old_tid, bprm, filename, 0);
            build.send(&LIFECYCLE, kind::EXEC, &EXEC_AREAS, flags);
            return;
        }
        // A script: its name may be relative to the working directory,
        // which is captured with it.
        fill_exec(
            exec,
            task,
            old_tid,
            bprm,
            filename,
            exec_flags::SCRIPT | exec_flags::CWD,
        );
        match cwd_path() {
            Some(cwd) => capture_path(&raw mut (*rec).cwd, cwd),
            None => set_empty(&raw mut (*rec).cwd, monitor_common::path_flags::FAULT),
        }
    }
    build.send(&LIFECYCLE, kind::EXEC, &EXEC_SCRIPT_AREAS, flags);
}

/// Fills an exec record of `bprm->filename` at `filename`; `extra` header
/// flags are added (the caller knows whether it is a script).
///
/// # Safety
/// `rec` must point to a record being built that starts with an exec record.
#[inline(always)]
unsafe fn fill_exec(
    rec: *mut ExecRecord,
    task: usize,
    old_tid: i32,
    bprm: usize,
    filename: usize,
    extra: u16,
) {
    // SAFETY: per the function contract; fields are written in place (the
    // record is far larger than the 512-byte stack).
    unsafe {
        write_header(
            &raw mut (*rec).header,
            kind::EXEC,
            core::mem::size_of::<ExecRecord>(),
        );
        if fill_task(&raw mut (*rec).task, task).is_err() {
            count_kernel_fault(kind::EXEC);
        }
        (*rec).old_tid = old_tid as u32;
        (*rec)._pad0 = 0;
        let mut flags = fill_exe(rec, bprm, filename) | extra;
        flags |= fill_argv(rec, task);
        (*rec).header.flags = flags;
    }
}

/// Filename, resolved path and inode facts of the executed file.
///
/// # Safety
/// `rec` must point to an exec record being built.
#[inline(always)]
unsafe fn fill_exe(rec: *mut ExecRecord, bprm: usize, filename: usize) -> u16 {
    let mut flags = 0;
    // SAFETY: per the function contract.
    unsafe {
        let n = bpf_probe_read_kernel_str(
            (*rec).filename.as_mut_ptr().cast(),
            EXEC_FILENAME_MAX as u32,
            filename as *const _,
        );
        if n > 0 {
            (*rec).filename_len = (n - 1) as u16;
            if n as usize >= EXEC_FILENAME_MAX {
                flags |= exec_flags::FILENAME_TRUNCATED;
            }
        } else {
            (*rec).filename_len = 0;
            flags |= exec_flags::FILENAME_FAULT;
            count_kernel_fault(kind::EXEC);
        }

        (*rec).exe_ino = 0;
        (*rec).exe_dev = 0;
        (*rec).exe_mode = 0;
        (*rec).exe_uid = 0;
        (*rec).exe_nlink = 1;
        // `bprm` is BTF-typed, and so are the file, inode and superblock
        // loaded through it (see `load`).
        let file: usize = load(bprm, off!(bprm_file));
        match file {
            0 => {
                set_empty(&raw mut (*rec).path, monitor_common::path_flags::FAULT);
                count_kernel_fault(kind::EXEC);
            }
            file => {
                capture_path(&raw mut (*rec).path, file + off!(file_f_path));
                let inode: usize = load(file, off!(file_f_inode));
                if inode != 0 {
                    (*rec).exe_ino = load::<u64>(inode, off!(inode_i_ino));
                    (*rec).exe_mode = u32::from(load::<u16>(inode, off!(inode_i_mode)));
                    (*rec).exe_uid = load::<u32>(inode, off!(inode_i_uid));
                    let nlink = load::<u32>(inode, off!(inode_i_nlink));
                    (*rec).exe_nlink = nlink;
                    if nlink == 0 {
                        flags |= exec_flags::FILELESS;
                    }
                    let sb: usize = load(inode, off!(inode_i_sb));
                    if sb != 0 {
                        (*rec).exe_dev = load::<u32>(sb, off!(sb_s_dev));
                    }
                    if crate::recent::written((*rec).exe_dev, (*rec).exe_ino).is_some() {
                        flags |= exec_flags::RECENTLY_WRITTEN;
                    }
                }
            }
        }
    }
    flags
}

/// The argument block `mm->arg_start..arg_end` of the new image.
///
/// # Safety
/// `rec` must point to an exec record being built.
#[inline(always)]
unsafe fn fill_argv(rec: *mut ExecRecord, task: usize) -> u16 {
    let mut flags = 0;
    let (start, end) = match read_ptr(task, off!(task_mm)) {
        Ok(mm) => (
            // SAFETY: probe reads.
            unsafe { read::<u64>(mm, off!(mm_arg_start)) }.unwrap_or(0),
            unsafe { read::<u64>(mm, off!(mm_arg_end)) }.unwrap_or(0),
        ),
        Err(_) => (0, 0),
    };
    let total = end.saturating_sub(start);
    // One byte below the area size, so a mask can prove the bound.
    let mut len = if total > (EXEC_ARGV_MAX - 1) as u64 {
        flags |= exec_flags::ARGV_TRUNCATED;
        (EXEC_ARGV_MAX - 1) as u32
    } else {
        total as u32
    };
    len &= (EXEC_ARGV_MAX - 1) as u32;
    // SAFETY: per the function contract; at most `len` < EXEC_ARGV_MAX bytes
    // are written into the argv array.
    unsafe {
        (*rec).argv_total = total as u32;
        if len > 0
            && bpf_probe_read_user((*rec).argv.as_mut_ptr().cast(), len, start as *const _) != 0
        {
            flags |= exec_flags::ARGV_FAULT;
            count(COUNTER_USER_FAULT + u32::from(kind::EXEC));
            len = 0;
        }
        (*rec).argv_len = len;
    }
    flags
}

/// `sched_process_fork(parent, child)`: reported for new processes only.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    if configured() {
        try_fork(&ctx);
    }
    0
}

fn try_fork(ctx: &BtfTracePointContext) {
    let parent: usize = ctx.arg(0);
    let child: usize = ctx.arg(1);
    // SAFETY: BTF-typed task arguments (see `load`).
    let (tid, pid) = unsafe {
        (
            load::<u32>(child, off!(task_pid)),
            load::<u32>(child, off!(task_tgid)),
        )
    };
    if tid != pid {
        return; // a new thread, not a new process
    }
    let Some(mut entry) = LIFECYCLE.reserve::<ForkRecord>(0) else {
        count_ringbuf_full(kind::FORK);
        return;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` is the reserved record.
    unsafe {
        write_header(
            &raw mut (*rec).header,
            kind::FORK,
            core::mem::size_of::<ForkRecord>(),
        );
        if fill_task(&raw mut (*rec).task, child).is_err() {
            count_kernel_fault(kind::FORK);
        }
        (*rec).parent_tid = load::<u32>(parent, off!(task_pid));
        (*rec).parent_pid = load::<u32>(parent, off!(task_tgid));
    }
    entry.submit(crate::kernel::lifecycle_wakeup_flags());
}

/// `sched_process_exit(task[, group_dead])`: every thread; the process exit
/// is reported once, for the thread that ends the thread group. Each thread
/// also hands over its final syscall counts.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> i32 {
    if configured() {
        try_exit(&ctx);
    }
    0
}

fn try_exit(ctx: &BtfTracePointContext) {
    let task = current_task();
    let (tid, pid) = crate::kernel::current_ids();
    flush_counts(tid, pid);
    crate::pending::forget(tid);

    let group_dead = if config!(exit_has_group_dead) != 0 {
        let arg: u64 = ctx.arg(1);
        arg & 0xff != 0
    } else {
        // Older kernels: the live count was decremented before the tracepoint.
        match read_ptr(task, off!(task_signal)) {
            // SAFETY: probe read.
            Ok(signal) => unsafe { read::<i32>(signal, off!(signal_live)) }.unwrap_or(0) == 0,
            Err(_) => tid == pid,
        }
    };
    if !group_dead {
        return;
    }
    let Some(mut entry) = LIFECYCLE.reserve::<ExitRecord>(0) else {
        count_ringbuf_full(kind::EXIT);
        return;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` is the reserved record.
    unsafe {
        write_header(
            &raw mut (*rec).header,
            kind::EXIT,
            core::mem::size_of::<ExitRecord>(),
        );
        if fill_task(&raw mut (*rec).task, task).is_err() {
            count_kernel_fault(kind::EXIT);
        }
        (*rec).exit_code = load::<u32>(task, off!(task_exit_code));
        (*rec)._pad0 = 0;
    }
    entry.submit(crate::kernel::lifecycle_wakeup_flags());
}

/// Frees the exiting thread's map slot and sends its final counts.
#[inline(always)]
fn flush_counts(tid: u32, pid: u32) {
    if config!(counts_enabled) == 0 {
        return;
    }
    let Some(counts) =
        crate::counting::end_batch_of_exiting(tid, |calls| send_calls(tid, pid, calls))
    else {
        return;
    };
    match EVENTS.reserve::<ThreadExitRecord>(0) {
        Some(mut entry) => {
            let rec = entry.as_mut_ptr();
            // SAFETY: `rec` is the reserved record; `counts` is a map value.
            unsafe {
                write_header(
                    &raw mut (*rec).header,
                    kind::THREAD_EXIT,
                    core::mem::size_of::<ThreadExitRecord>(),
                );
                (*rec).tid = tid;
                (*rec).pid = pid;
                // The kernel's memcpy through the helper: a plain copy of
                // these 3 KiB compiles to a BPF loop that cost more than
                // the rest of the exit (seen in `perf` on W2).
                if bpf_probe_read_kernel(
                    (&raw mut (*rec).counts).cast(),
                    core::mem::size_of::<ThreadCounts>() as u32,
                    counts.cast(),
                ) != 0
                {
                    count_kernel_fault(kind::THREAD_EXIT);
                    (*rec).counts.total = 0;
                }
            }
            // The entry goes before the record is seen: a drain that runs
            // after the agent has read the record cannot find the thread
            // still there and count its calls a second time.
            let _ = SYSCALL_COUNTS.remove(tid);
            entry.submit(crate::kernel::wakeup_flags());
        }
        None => {
            count_ringbuf_full(kind::THREAD_EXIT);
            let _ = SYSCALL_COUNTS.remove(tid);
        }
    }
}

/// Sends the whole life of an exiting thread that never had the counts
/// entry: its one batch.
#[inline(always)]
fn send_calls(tid: u32, pid: u32, calls: &SyscallBatch) {
    let Some(mut entry) = EVENTS.reserve::<ThreadCallsRecord>(0) else {
        count_ringbuf_full(kind::THREAD_EXIT);
        return;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` is the reserved record.
    unsafe {
        write_header(
            &raw mut (*rec).header,
            kind::THREAD_EXIT,
            core::mem::size_of::<ThreadCallsRecord>(),
        );
        (*rec).header.flags = thread_exit_flags::CALLS;
        (*rec).tid = tid;
        (*rec).pid = pid;
        (*rec).calls = *calls;
        (*rec).calls.regs = 0; // a kernel address: not for userspace
    }
    entry.submit(crate::kernel::wakeup_flags());
}
