//! Executable memory that no installed program explains: mmap and mprotect
//! requests that make anonymous memory executable, and executable mappings
//! of a file written moments ago (a dropped library or payload), checked at
//! syscall entry (the request itself is the behaviour of interest).

use aya_ebpf::helpers::generated::{bpf_find_vma, bpf_get_current_task_btf};
use monitor_common::{
    MemExecFileRecord, MemExecRecord, kind, mem_op, packing::MEM_EXEC_FILE_AREAS, stash,
};

use crate::{
    fds::file_of_fd,
    kernel::{
        EVENTS, count_ringbuf_full, current_task, fill_task, off, read, read_ptr, write_header,
    },
    vfs::capture_path,
};

const PROT_EXEC: u64 = 0x4;
const MAP_ANONYMOUS: u64 = 0x20;

/// Whether the mmap or mprotect whose saved registers are at `regs` asks
/// for executable memory (its third argument, `prot`). A failed read says
/// yes, so the full check decides.
#[inline(always)]
pub fn may_exec_memory(regs: usize) -> bool {
    // SAFETY: `regs` is `sys_enter`'s BTF-typed `struct pt_regs *`: a direct
    // load, which the verifier checks against the type (a probe read's
    // helper call cost more than the rest of this check).
    let prot = unsafe { core::ptr::read_volatile((regs + off!(regs_arg2)) as *const u64) };
    prot & PROT_EXEC != 0
}

/// Checks an mmap or mprotect at entry (called from `sys_enter`): reports
/// anonymous memory being made executable, and a recently written file
/// mapped executable. Not stashed: the request itself is the behaviour of
/// interest.
#[inline(always)]
pub fn check_exec_memory(op: u32, addr: u64, len: u64, prot: u64, flags: u64, fd: u64) {
    if prot & PROT_EXEC == 0 {
        return;
    }
    if op == stash::MMAP {
        if flags & MAP_ANONYMOUS != 0 {
            emit_mem(mem_op::MMAP, addr, len, prot, flags);
        } else {
            check_file_mapping(addr, len, prot, flags, fd as i32);
        }
        return;
    }
    let mut check = VmaCheck {
        anonymous: 0,
        _pad0: 0,
    };
    // SAFETY: the callback matches bpf_find_vma's signature and only writes
    // `check` through the context pointer.
    unsafe {
        let task = bpf_get_current_task_btf();
        bpf_find_vma(
            task,
            addr,
            vma_is_anonymous as *mut _,
            (&raw mut check).cast(),
            0,
        );
    }
    if check.anonymous != 0 {
        emit_mem(mem_op::MPROTECT, addr, len, prot, 0);
    }
}

/// Context of the VMA lookup.
#[repr(C)]
struct VmaCheck {
    anonymous: u32,
    _pad0: u32,
}

extern "C" fn vma_is_anonymous(
    _task: *mut core::ffi::c_void,
    vma: *mut core::ffi::c_void,
    ctx: *mut core::ffi::c_void,
) -> i64 {
    // SAFETY: bpf_find_vma passes the VMA and our context back.
    unsafe {
        let file: usize = read(vma as usize, off!(vma_vm_file)).unwrap_or(1);
        (*ctx.cast::<VmaCheck>()).anonymous = u32::from(file == 0);
    }
    0
}

fn emit_mem(op: u8, addr: u64, len: u64, prot: u64, flags: u64) {
    let Some(mut entry) = EVENTS.reserve::<MemExecRecord>(0) else {
        count_ringbuf_full(kind::MEM_EXEC);
        return;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` is the reserved record.
    unsafe {
        write_header(
            &raw mut (*rec).header,
            kind::MEM_EXEC,
            core::mem::size_of::<MemExecRecord>(),
        );
        let _ = fill_task(&raw mut (*rec).task, current_task());
        (*rec).op = op;
        (*rec)._pad0 = [0; 3];
        (*rec).prot = prot as u32;
        (*rec).map_flags = flags as u32;
        (*rec).ret = 0;
        (*rec).addr = addr;
        (*rec).len = len;
    }
    entry.submit(crate::kernel::wakeup_flags());
}

/// An executable mapping of file `fd`: reported when the file was opened for
/// writing within `RECENT_WRITE_NS`. A dynamic loader maps a few libraries
/// per exec this way; each costs one fd-table walk and one map lookup.
#[inline(never)]
fn check_file_mapping(addr: u64, len: u64, prot: u64, flags: u64, fd: i32) {
    let Some(file) = file_of_fd(i64::from(fd)) else {
        return;
    };
    // SAFETY: probe reads of the file's inode and superblock.
    let (dev, ino) = unsafe {
        let Ok(inode) = read_ptr(file, off!(file_f_inode)) else {
            return;
        };
        let sb = read_ptr(inode, off!(inode_i_sb)).unwrap_or(0);
        (
            read::<u32>(sb, off!(sb_s_dev)).unwrap_or(0),
            read::<u64>(inode, off!(inode_i_ino)).unwrap_or(0),
        )
    };
    let Some(written) = crate::recent::written(dev, ino) else {
        return;
    };
    let Some(build) =
        crate::build::start::<MemExecFileRecord>(kind::MEM_EXEC, crate::build::Lane::Events)
    else {
        return;
    };
    let rec = build.rec;
    // SAFETY: `rec` is the record being built, written field by field.
    unsafe {
        let mem = &raw mut (*rec).mem;
        write_header(
            &raw mut (*mem).header,
            kind::MEM_EXEC,
            core::mem::size_of::<MemExecFileRecord>(),
        );
        let _ = fill_task(&raw mut (*mem).task, current_task());
        (*mem).op = mem_op::MMAP_WRITTEN_FILE;
        (*mem)._pad0 = [0; 3];
        (*mem).prot = prot as u32;
        (*mem).map_flags = flags as u32;
        (*mem).ret = 0;
        (*mem).addr = addr;
        (*mem).len = len;
        (*rec).dev = dev;
        (*rec).fd = fd;
        (*rec).ino = ino;
        (*rec).written = written;
        capture_path(&raw mut (*rec).path, file + off!(file_f_path));
    }
    build.send(
        &EVENTS,
        kind::MEM_EXEC,
        &MEM_EXEC_FILE_AREAS,
        crate::kernel::wakeup_flags(),
    );
}
