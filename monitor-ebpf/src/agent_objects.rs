//! The agent's own BPF programs, maps and links, and the `bpf(2)` calls of
//! other processes that reach them.

use aya_ebpf::{helpers::generated::bpf_probe_read_user, macros::map, maps::HashMap};
use monitor_common::{agent_object, bpf_cmd};

/// The agent's own programs, maps and links (`agent_object::key`), filled
/// by the agent after it attached them. Any other process that takes a
/// handle on one of them by id, or changes one through a handle, is
/// reported: that is how a tool like `bpftool` blinds the programs without
/// stopping the agent (the other ways, ptrace of the agent, `pidfd_getfd`
/// or a module, are reported by their own sensors).
#[map]
pub static AGENT_OBJECTS: HashMap<u64, u8> = HashMap::with_max_entries(512, 0);

/// The first word of `bpf(2)` attributes at `attr` (an id or an fd).
#[inline(always)]
pub fn first_attr_word(attr: u64) -> Option<u32> {
    let mut word = 0u32;
    // SAFETY: reads into a local; the helper faults gracefully.
    let ok = unsafe { bpf_probe_read_user((&raw mut word).cast(), 4, attr as *const _) } == 0;
    ok.then_some(word)
}

#[inline(always)]
pub fn is_agent_object(object: u32, id: u32) -> bool {
    // SAFETY: a presence check; the value is not kept.
    unsafe { AGENT_OBJECTS.get(&agent_object::key(object, id)) }.is_some()
}

/// Whether a `bpf(cmd, attr)` call is worth stashing at entry: loads, calls
/// that change a map or link through an fd (whose object is known only at
/// exit, once the call proved the fd was one), and handles taken by id on
/// one of the agent's own objects.
#[inline(always)]
pub fn bpf_call_of_interest(cmd: u64, attr: u64) -> bool {
    let cmd = cmd as u32;
    if cmd == bpf_cmd::PROG_LOAD || bpf_cmd::by_fd(cmd) != 0 {
        return true;
    }
    let object = bpf_cmd::by_id(cmd);
    object != 0 && first_attr_word(attr).is_some_and(|id| is_agent_object(object, id))
}
