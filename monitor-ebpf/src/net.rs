//! Socket operations: connect and bind (address from the caller's
//! `sockaddr`), listen and accept (addresses from the socket itself).

use aya_ebpf::helpers::generated::bpf_probe_read_user;
use monitor_common::{
    COUNTER_USER_FAULT, NetRecord, UNIX_PATH_MAX, kind, net_flags, net_op, stash,
};

use crate::{
    fds::{file_of_fd, sock_of_file},
    kernel::{EVENTS, count, count_ringbuf_full, current_task, fill_task, off, read, write_header},
    pending::Pending,
};

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Exit of connect, bind and listen.
#[inline(never)]
pub fn on_exit(p: &Pending, ret: i64) {
    let op = match p.op {
        stash::CONNECT => net_op::CONNECT,
        stash::BIND => net_op::BIND,
        _ => net_op::LISTEN,
    };
    emit(op, p, ret);
}

/// Exit of accept and accept4: no stash needed, the new fd is the result.
#[inline(never)]
pub fn on_accept(ret: i64) {
    if ret < 0 {
        return; // failed accepts (EAGAIN on non-blocking sockets) are noise
    }
    let pending = Pending {
        op: 0,
        _pad0: 0,
        args: [0; 6],
        aux: [0; 5],
    };
    emit(net_op::ACCEPT, &pending, ret);
}

fn emit(op: u8, p: &Pending, ret: i64) {
    let Some(mut entry) = EVENTS.reserve::<NetRecord>(0) else {
        count_ringbuf_full(kind::NET);
        return;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` is the reserved record, written field by field.
    unsafe {
        write_header(
            &raw mut (*rec).header,
            kind::NET,
            core::mem::size_of::<NetRecord>(),
        );
        let _ = fill_task(&raw mut (*rec).task, current_task());
        (*rec).op = op;
        (*rec)._pad0 = 0;
        (*rec).family = 0;
        (*rec).ret = ret as i32;
        (*rec).fd = if op == net_op::ACCEPT {
            ret as i32
        } else {
            p.args[0] as i32
        };
        (*rec).backlog = if op == net_op::LISTEN {
            p.args[1] as i32
        } else {
            0
        };
        (*rec).port = 0;
        (*rec).local_port = 0;
        (*rec).sock_type = 0;
        (*rec).unix_path_len = 0;
        (*rec).addr = [0; 16];
        (*rec).local_addr = [0; 16];
        (*rec)._pad1 = [0; 4];
        let flags = match op {
            net_op::CONNECT | net_op::BIND => from_user_sockaddr(rec, p.args[1], p.args[2]),
            _ => from_socket(rec, (*rec).fd, op == net_op::ACCEPT),
        };
        (*rec).header.flags = flags;
    }
    entry.submit(crate::kernel::wakeup_flags());
}

/// Fills family/address/port from a `sockaddr` in user memory.
///
/// # Safety
/// `rec` must point to a reserved net record.
unsafe fn from_user_sockaddr(rec: *mut NetRecord, addr: u64, len: u64) -> u16 {
    let mut family: u16 = 0;
    // SAFETY: reads into a local; the helper faults gracefully.
    let fault = unsafe { bpf_probe_read_user((&raw mut family).cast(), 2, addr as *const _) != 0 };
    if fault {
        count(COUNTER_USER_FAULT + u32::from(kind::NET));
        return net_flags::ADDR_FAULT;
    }
    // SAFETY: per the function contract; reads land in fixed arrays of the record.
    unsafe {
        (*rec).family = family;
        let mut port: u16 = 0;
        let ok = match family {
            AF_INET => {
                bpf_probe_read_user((&raw mut port).cast(), 2, (addr + 2) as *const _) == 0
                    && bpf_probe_read_user(
                        (*rec).addr.as_mut_ptr().cast(),
                        4,
                        (addr + 4) as *const _,
                    ) == 0
            }
            AF_INET6 => {
                bpf_probe_read_user((&raw mut port).cast(), 2, (addr + 2) as *const _) == 0
                    && bpf_probe_read_user(
                        (*rec).addr.as_mut_ptr().cast(),
                        16,
                        (addr + 8) as *const _,
                    ) == 0
            }
            AF_UNIX => {
                let mut n = len.saturating_sub(2);
                if n > UNIX_PATH_MAX as u64 {
                    n = UNIX_PATH_MAX as u64;
                }
                let n = (n as u32) & 0x7f;
                (*rec).unix_path_len = n as u16;
                n == 0
                    || bpf_probe_read_user(
                        (*rec).unix_path.as_mut_ptr().cast(),
                        n,
                        (addr + 2) as *const _,
                    ) == 0
            }
            _ => true,
        };
        (*rec).port = u16::from_be(port);
        if !ok {
            (*rec).unix_path_len = 0;
            count(COUNTER_USER_FAULT + u32::from(kind::NET));
            return net_flags::ADDR_FAULT;
        }
    }
    0
}

/// Fills family/addresses/ports from the socket behind `fd`.
///
/// # Safety
/// `rec` must point to a reserved net record.
unsafe fn from_socket(rec: *mut NetRecord, fd: i32, remote: bool) -> u16 {
    let Some((sk, ty)) = file_of_fd(i64::from(fd)).and_then(sock_of_file) else {
        return net_flags::SOCK_FAULT;
    };
    // SAFETY: per the function contract; probe reads of the socket.
    unsafe {
        (*rec).sock_type = ty;
        let family: u16 = read(sk, off!(skc_family)).unwrap_or(0);
        (*rec).family = family;
        let local_port: u16 = read(sk, off!(skc_num)).unwrap_or(0);
        let remote_port: u16 = u16::from_be(read(sk, off!(skc_dport)).unwrap_or(0));
        match family {
            AF_INET => {
                let local: [u8; 4] = read(sk, off!(skc_rcv_saddr)).unwrap_or([0; 4]);
                let peer: [u8; 4] = read(sk, off!(skc_daddr)).unwrap_or([0; 4]);
                let widen =
                    |a: [u8; 4]| [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                if remote {
                    (*rec).addr = widen(peer);
                    (*rec).local_addr = widen(local);
                } else {
                    (*rec).addr = widen(local);
                }
            }
            AF_INET6 => {
                let local: [u8; 16] = read(sk, off!(skc_v6_rcv_saddr)).unwrap_or([0; 16]);
                let peer: [u8; 16] = read(sk, off!(skc_v6_daddr)).unwrap_or([0; 16]);
                if remote {
                    (*rec).addr = peer;
                    (*rec).local_addr = local;
                } else {
                    (*rec).addr = local;
                }
            }
            _ => {}
        }
        if remote {
            (*rec).port = remote_port;
            (*rec).local_port = local_port;
        } else {
            (*rec).port = local_port;
        }
    }
    0
}
