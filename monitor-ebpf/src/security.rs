//! Credential changes, ptrace, module loads, BPF program loads, memfd and
//! signals to other processes (executable memory: `memory.rs`).

use aya_ebpf::helpers::generated::bpf_probe_read_user;
use monitor_common::{
    BpfRecord, COUNTER_USER_FAULT, CredRecord, KillRecord, MEMFD_NAME_MAX, MODULE_ARGS_MAX,
    MemfdRecord, ModuleRecord, PtraceRecord, SYSCALL_TEXT_MAX, SyscallRecord, agent_object,
    bpf_cmd, cred_op, file_flags, kind, path_flags, stash,
};

use crate::{
    agent_objects::{first_attr_word, is_agent_object},
    fds::file_of_fd,
    kernel::{
        EVENTS, count, count_ringbuf_full, current_task, fill_task, off, read, read_ptr,
        write_header,
    },
    pending::Pending,
    vfs::{capture_path, set_empty},
};

// ---- credentials -----------------------------------------------------------

/// True for a successful call of the setuid or setgid family that left
/// every id and the effective capabilities as they were. `make`, among
/// others, calls `setresuid(-1, euid, -1)` in each child it starts; those
/// calls are not credential changes, and reporting them buried the real ones.
/// `packed_creds` holds all that such a call can change (the ids, and the
/// capabilities, which follow uid 0). Failed calls are reported (a refused
/// attempt is the interesting case), and so are `setfsuid`/`setfsgid`, which
/// return the old id whether they succeed or not, and `capset`, which can
/// change sets the record does not carry.
#[inline(always)]
fn changed_nothing(op: u8, ret: i64, old: &[u64; 5], new: &[u64; 5]) -> bool {
    ret == 0 && !matches!(op, cred_op::SETFSUID | cred_op::SETFSGID | cred_op::CAPSET) && old == new
}

/// Exit of the setuid and setgid families and capset.
#[inline(never)]
pub fn on_cred_exit(p: &Pending, ret: i64) {
    let op = (p.op - stash::CRED) as u8;
    let new = crate::pending::packed_creds();
    if changed_nothing(op, ret, &p.aux, &new) {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<CredRecord>(0) else {
        count_ringbuf_full(kind::CRED);
        return;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` is the reserved record.
    unsafe {
        write_header(
            &raw mut (*rec).header,
            kind::CRED,
            core::mem::size_of::<CredRecord>(),
        );
        let _ = fill_task(&raw mut (*rec).task, current_task());
        (*rec).op = op;
        (*rec)._pad0 = [0; 3];
        (*rec).ret = ret as i32;
        (*rec).args = [p.args[0] as u32, p.args[1] as u32, p.args[2] as u32];
        (*rec).old_uid = uids(&p.aux);
        (*rec).old_gid = gids(&p.aux);
        (*rec).new_uid = uids(&new);
        (*rec).new_gid = gids(&new);
        (*rec)._pad1 = 0;
        (*rec).old_cap_effective = p.aux[3];
        (*rec).new_cap_effective = new[3];
    }
    entry.submit(crate::kernel::wakeup_flags());
}

/// [uid, euid, suid] of packed credentials (see `packed_creds`).
#[inline(always)]
fn uids(c: &[u64; 5]) -> [u32; 3] {
    [c[0] as u32, (c[0] >> 32) as u32, c[1] as u32]
}

/// [gid, egid, sgid] of packed credentials (see `packed_creds`).
#[inline(always)]
fn gids(c: &[u64; 5]) -> [u32; 3] {
    [(c[1] >> 32) as u32, c[2] as u32, (c[2] >> 32) as u32]
}

// ---- ptrace ------------------------------------------------------------------

/// Exit of ptrace (only requests the entry filter kept were stashed).
#[inline(never)]
pub fn on_ptrace_exit(p: &Pending, ret: i64) {
    let Some(mut entry) = EVENTS.reserve::<PtraceRecord>(0) else {
        count_ringbuf_full(kind::PTRACE);
        return;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` is the reserved record.
    unsafe {
        write_header(
            &raw mut (*rec).header,
            kind::PTRACE,
            core::mem::size_of::<PtraceRecord>(),
        );
        let _ = fill_task(&raw mut (*rec).task, current_task());
        (*rec).request = p.args[0] as i64;
        (*rec).target = p.args[1] as i32;
        (*rec).ret = ret as i32;
    }
    entry.submit(crate::kernel::wakeup_flags());
}

// ---- bpf ---------------------------------------------------------------------

/// The agent's (object kind, id) that a completed bpf call reached, if any.
#[inline(always)]
fn agent_object_reached(cmd: u32, attr: u64, ret: i64) -> Option<(u32, u32)> {
    let by_id = bpf_cmd::by_id(cmd);
    if by_id != 0 {
        let id = first_attr_word(attr)?;
        return is_agent_object(by_id, id).then_some((by_id, id));
    }
    let object = bpf_cmd::by_fd(cmd);
    // Only a call that succeeded proves its fd was a map (or link), so only
    // then is its `private_data` read as one.
    if object == 0 || ret != 0 {
        return None;
    }
    let fd = first_attr_word(attr)?;
    let file = file_of_fd(i64::from(fd))?;
    let private = read_ptr(file, off!(file_private_data)).ok()?;
    let id_at = if object == agent_object::MAP {
        off!(bpf_map_id)
    } else {
        off!(bpf_link_id)
    };
    // SAFETY: probe read.
    let id: u32 = unsafe { read(private, id_at) }.ok()?;
    is_agent_object(object, id).then_some((object, id))
}

/// Exit of bpf: a program load, or a call that reached one of the agent's
/// objects (see `agent_objects::bpf_call_of_interest`).
#[inline(never)]
pub fn on_bpf_exit(p: &Pending, ret: i64) {
    let cmd = p.args[0] as u32;
    let reached = if cmd == bpf_cmd::PROG_LOAD {
        None
    } else {
        match agent_object_reached(cmd, p.args[1], ret) {
            Some(reached) => Some(reached),
            None => return,
        }
    };
    let Some(mut entry) = EVENTS.reserve::<BpfRecord>(0) else {
        count_ringbuf_full(kind::BPF);
        return;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` is the reserved record; user reads land in its fields.
    unsafe {
        write_header(
            &raw mut (*rec).header,
            kind::BPF,
            core::mem::size_of::<BpfRecord>(),
        );
        let _ = fill_task(&raw mut (*rec).task, current_task());
        (*rec).cmd = cmd;
        (*rec).ret = ret as i32;
        (*rec).prog_name = [0; 16];
        match reached {
            Some((object, id)) => {
                (*rec).prog_type = object;
                (*rec).insn_cnt = id;
            }
            None => {
                (*rec).prog_type = 0;
                (*rec).insn_cnt = 0;
                let attr = p.args[1];
                // union bpf_attr, BPF_PROG_LOAD: prog_type @0, insn_cnt @4, prog_name @48.
                let ok =
                    bpf_probe_read_user((&raw mut (*rec).prog_type).cast(), 4, attr as *const _)
                        == 0
                        && bpf_probe_read_user(
                            (&raw mut (*rec).insn_cnt).cast(),
                            4,
                            (attr + 4) as *const _,
                        ) == 0
                        && bpf_probe_read_user(
                            (*rec).prog_name.as_mut_ptr().cast(),
                            16,
                            (attr + 48) as *const _,
                        ) == 0;
                if !ok {
                    count(COUNTER_USER_FAULT + u32::from(kind::BPF));
                    (*rec).header.flags = file_flags::USER_FAULT;
                }
            }
        }
    }
    entry.submit(crate::kernel::wakeup_flags());
}

// ---- memfd -------------------------------------------------------------------

/// Exit of memfd_create.
#[inline(never)]
pub fn on_memfd_exit(p: &Pending, ret: i64) {
    let Some(mut entry) = EVENTS.reserve::<MemfdRecord>(0) else {
        count_ringbuf_full(kind::MEMFD);
        return;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` is the reserved record.
    unsafe {
        write_header(
            &raw mut (*rec).header,
            kind::MEMFD,
            core::mem::size_of::<MemfdRecord>(),
        );
        let _ = fill_task(&raw mut (*rec).task, current_task());
        (*rec).flags = p.args[1] as u32;
        (*rec).ret = ret as i32;
        (*rec)._pad0 = 0;
        let n = aya_ebpf::helpers::generated::bpf_probe_read_user_str(
            (*rec).name.as_mut_ptr().cast(),
            MEMFD_NAME_MAX as u32,
            p.args[0] as *const _,
        );
        if n > 0 {
            (*rec).name_len = (n - 1) as u32;
        } else {
            (*rec).name_len = 0;
            (*rec).header.flags = file_flags::USER_FAULT;
            count(COUNTER_USER_FAULT + u32::from(kind::MEMFD));
        }
    }
    entry.submit(crate::kernel::wakeup_flags());
}

// ---- signals -----------------------------------------------------------------

/// Exit of kill, tkill and tgkill (signals to self and signal 0 were not
/// stashed).
#[inline(never)]
pub fn on_kill_exit(p: &Pending, ret: i64) {
    let (target, sig, syscall) = match p.op {
        stash::TGKILL => (p.args[1] as i32, p.args[2] as i32, 3),
        stash::TKILL => (p.args[0] as i32, p.args[1] as i32, 2),
        _ => (p.args[0] as i32, p.args[1] as i32, 1),
    };
    let Some(mut entry) = EVENTS.reserve::<KillRecord>(0) else {
        count_ringbuf_full(kind::KILL);
        return;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` is the reserved record.
    unsafe {
        write_header(
            &raw mut (*rec).header,
            kind::KILL,
            core::mem::size_of::<KillRecord>(),
        );
        let _ = fill_task(&raw mut (*rec).task, current_task());
        (*rec).target = target;
        (*rec).signal = sig;
        (*rec).ret = ret as i32;
        (*rec).syscall = syscall;
    }
    entry.submit(crate::kernel::wakeup_flags());
}

// ---- syscalls reported as called -------------------------------------------

/// Exit of process_vm_*, pidfd_*, rt_*sigqueueinfo, the mount family,
/// unshare, setns and io_uring_setup: the call, its first arguments (read
/// back from the saved registers) and its result. Signals queued to the
/// caller itself are not reported.
#[inline(never)]
pub fn on_plain_exit(op: u32, ret: i64) {
    let p = crate::pending::args_at_exit(op);
    let pid = crate::kernel::current_ids().1;
    if matches!(op, stash::RT_SIGQUEUEINFO | stash::RT_TGSIGQUEUEINFO) && p.args[0] as u32 == pid {
        return;
    }
    let text = match op {
        stash::MOUNT => p.args[1],
        stash::UMOUNT2 | stash::PIVOT_ROOT => p.args[0],
        _ => 0,
    };
    emit_syscall(op, ret, [p.args[0], p.args[1], p.args[2], p.args[3]], text);
}

/// Sends a [`SyscallRecord`]: `op`, its result and first arguments, and the
/// user-memory string at `text` unless it is 0.
#[inline(always)]
pub fn emit_syscall(op: u32, ret: i64, args: [u64; 4], text: u64) {
    let Some(mut entry) = EVENTS.reserve::<SyscallRecord>(0) else {
        count_ringbuf_full(kind::SYSCALL);
        return;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` is the reserved record.
    unsafe {
        write_header(
            &raw mut (*rec).header,
            kind::SYSCALL,
            core::mem::size_of::<SyscallRecord>(),
        );
        let _ = fill_task(&raw mut (*rec).task, current_task());
        (*rec).op = op;
        (*rec).ret = ret;
        (*rec).args = args;
        (*rec).text_len = 0;
        if text != 0 {
            let n = aya_ebpf::helpers::generated::bpf_probe_read_user_str(
                (*rec).text.as_mut_ptr().cast(),
                SYSCALL_TEXT_MAX as u32,
                text as *const _,
            );
            if n > 0 {
                (*rec).text_len = (n - 1) as u32;
            } else {
                (*rec).header.flags = file_flags::USER_FAULT;
                count(COUNTER_USER_FAULT + u32::from(kind::SYSCALL));
            }
        }
    }
    entry.submit(crate::kernel::wakeup_flags());
}

// ---- kernel modules ------------------------------------------------------------

/// Exit of init_module and finit_module.
#[inline(never)]
pub fn on_module_exit(p: &Pending, ret: i64) {
    if p.op == stash::FINIT_MODULE {
        module_exit(2, p.args[0] as i64, p.args[1], ret);
    } else {
        module_exit(1, -1, p.args[2], ret);
    }
}

fn module_exit(op: u8, fd: i64, uargs: u64, ret: i64) {
    let Some(mut entry) = EVENTS.reserve::<ModuleRecord>(0) else {
        count_ringbuf_full(kind::MODULE);
        return;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` is the reserved record.
    unsafe {
        write_header(
            &raw mut (*rec).header,
            kind::MODULE,
            core::mem::size_of::<ModuleRecord>(),
        );
        let _ = fill_task(&raw mut (*rec).task, current_task());
        (*rec).op = op;
        (*rec)._pad0 = [0; 3];
        (*rec).ret = ret as i32;
        (*rec).fd = fd as i32;
        let n = aya_ebpf::helpers::generated::bpf_probe_read_user_str(
            (*rec).args.as_mut_ptr().cast(),
            MODULE_ARGS_MAX as u32,
            uargs as *const _,
        );
        (*rec).args_len = if n > 0 { (n - 1) as u32 } else { 0 };
        match file_of_fd(fd) {
            Some(file) => capture_path(&raw mut (*rec).path, file + off!(file_f_path)),
            None => set_empty(&raw mut (*rec).path, path_flags::ABSENT),
        }
    }
    entry.submit(crate::kernel::wakeup_flags());
}
