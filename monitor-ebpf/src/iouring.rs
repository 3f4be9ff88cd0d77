//! io_uring submissions. Operations submitted through a ring (open,
//! connect, accept, unlink, link...) run without their syscall, so the
//! syscall tracepoints never see them: a process could open files or
//! connect out unseen. The submit tracepoint sees every operation; watched
//! ones are reported, at most once a second per process and operation,
//! with how many the report covers (a ring submits millions a second).

use aya_ebpf::{
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use monitor_common::stash;

use crate::{
    kernel::{config, configured, current_ids},
    pending::is_agent,
};

/// Reports of one (process, opcode) at most this often.
const REPORT_EVERY_NS: u64 = 1_000_000_000;

/// (pid << 8 | opcode) -> when it was last reported and how many
/// submissions since went unreported.
#[map]
static IO_URING_TALLY: LruHashMap<u64, Tally> = LruHashMap::with_max_entries(4096, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct Tally {
    reported_ns: u64,
    unreported: u64,
}

/// `io_uring:io_uring_submit_req` (`io_uring_submit_sqe` before 5.18).
#[tracepoint]
pub fn io_uring_submit(ctx: TracePointContext) -> i32 {
    if configured() && config!(security_enabled) != 0 && !is_agent() {
        try_submit(&ctx);
    }
    0
}

fn try_submit(ctx: &TracePointContext) {
    let at = config!(io_uring_opcode_at) as usize;
    if at == 0 {
        return;
    }
    // SAFETY: a read of the tracepoint record at an offset from its format.
    let Ok(opcode) = (unsafe { ctx.read_at::<u8>(at) }) else {
        return;
    };
    if !stash::IO_URING_WATCHED.iter().any(|(op, _)| *op == opcode) {
        return;
    }
    let pid = current_ids().1;
    let key = u64::from(pid) << 8 | u64::from(opcode);
    // SAFETY: a helper without arguments.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_boot_ns() };
    let covered = match IO_URING_TALLY.get_ptr_mut(&key) {
        Some(tally) => {
            // SAFETY: a value of the map, for this call's duration.
            let tally = unsafe { &mut *tally };
            if now.saturating_sub(tally.reported_ns) < REPORT_EVERY_NS {
                tally.unreported += 1;
                return;
            }
            let covered = tally.unreported + 1;
            tally.reported_ns = now;
            tally.unreported = 0;
            covered
        }
        None => {
            let fresh = Tally {
                reported_ns: now,
                unreported: 0,
            };
            let _ = IO_URING_TALLY.insert(&key, &fresh, 0);
            1
        }
    };
    crate::security::emit_syscall(
        stash::IO_URING_SUBMIT,
        0,
        [u64::from(opcode), covered, 0, 0],
        0,
    );
}
