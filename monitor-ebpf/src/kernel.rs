//! Shared plumbing: globals from the agent, maps every program uses, and
//! reads of kernel memory by BTF-resolved offset.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns,
        generated::{bpf_get_current_task_btf, bpf_probe_read_kernel},
    },
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use monitor_common::{
    ABI_VERSION, COUNTER_KERNEL_FAULT, COUNTER_RINGBUF_FULL, COUNTER_SLOTS, KernelOffsets,
    ProbeConfig, RecordHeader, TaskInfo,
};

/// Filled by the agent from BTF before load (read-only data).
#[unsafe(no_mangle)]
pub static OFFSETS: KernelOffsets = KernelOffsets::zeroed();

/// Filled by the agent before load (read-only data).
#[unsafe(no_mangle)]
pub static CONFIG: ProbeConfig = ProbeConfig::zeroed();

/// Streamed records other than process lifecycle. The agent may resize it
/// at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// The lifecycle lane: exec, fork and exit records only. A flood of any
/// other kind (file opens, connects) fills `EVENTS` and cannot crowd these
/// out, so a process is never mislabelled as its parent's program because
/// its exec was lost. The agent may resize it at load time.
#[map]
pub static LIFECYCLE: RingBuf = RingBuf::with_byte_size(2 * 1024 * 1024, 0);

/// `bpf_ringbuf_query` flags and `bpf_ringbuf_submit` flags.
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_RING_SIZE: u64 = 1;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// Submit flags for a record: no wakeup while the ring is less than an
/// eighth full. The agent polls the ring every few milliseconds anyway, so
/// a burst of records costs it one wakeup instead of one per record (on a
/// busy host, per-record wakeups were most of the agent's CPU); a ring
/// filling up wakes it at once.
#[inline(always)]
pub fn wakeup_flags() -> u64 {
    wakeup_flags_of(&EVENTS)
}

/// [`wakeup_flags`] for a record of the lifecycle lane.
#[inline(always)]
pub fn lifecycle_wakeup_flags() -> u64 {
    wakeup_flags_of(&LIFECYCLE)
}

#[inline(always)]
fn wakeup_flags_of(ring: &RingBuf) -> u64 {
    if ring.query(BPF_RB_AVAIL_DATA) >= ring.query(BPF_RB_RING_SIZE) / 8 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Loss and fault counters, see `monitor_common::counters`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Reads one offset from the read-only globals. Volatile so the compiler
/// does not fold the zero placeholder; the verifier then sees the constant
/// the agent wrote.
macro_rules! off {
    ($field:ident) => {
        ($crate::kernel::volatile(&$crate::kernel::OFFSETS.$field) as usize)
    };
}
pub(crate) use off;

/// Reads one setting from the read-only globals.
macro_rules! config {
    ($field:ident) => {
        $crate::kernel::volatile(&$crate::kernel::CONFIG.$field)
    };
}
pub(crate) use config;

/// Reads a global without letting the compiler assume its compiled-in value.
#[inline(always)]
pub fn volatile(field: &u32) -> u32 {
    // SAFETY: a valid reference to a u32.
    unsafe { core::ptr::read_volatile(field) }
}

/// True once the agent has filled the globals for this ABI.
#[inline(always)]
pub fn configured() -> bool {
    config!(abi_version) == ABI_VERSION
}

/// Adds one to a counter slot.
#[inline(always)]
pub fn count(index: u32) {
    count_by(index, 1);
}

/// Adds `n` to a counter slot.
#[inline(always)]
pub fn count_by(index: u32, n: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; programs of one CPU do not run concurrently
        // on the same slot except across preemption, where a lost increment
        // is the accepted cost of not using atomics on a hot path.
        unsafe { *slot += n };
    }
}

/// Counts a failed ring-buffer reserve for `kind`.
#[inline(always)]
pub fn count_ringbuf_full(kind: u8) {
    count(COUNTER_RINGBUF_FULL + u32::from(kind));
}

/// Counts a failed kernel read for `kind`.
#[inline(always)]
pub fn count_kernel_fault(kind: u8) {
    count(COUNTER_KERNEL_FAULT + u32::from(kind));
}

/// Reads a `T` at `base + offset` in kernel memory.
///
/// # Safety
/// Any address is safe to pass (the helper faults gracefully); the caller
/// must only trust the value as much as the offset it used.
#[inline(always)]
pub unsafe fn read<T: Copy>(base: usize, offset: usize) -> Result<T, i64> {
    let mut value = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: the helper writes at most size_of::<T>() bytes into `value`.
    let ret = unsafe {
        bpf_probe_read_kernel(
            value.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u32,
            (base.wrapping_add(offset)) as *const _,
        )
    };
    if ret == 0 {
        // SAFETY: the helper succeeded, so all bytes were written.
        Ok(unsafe { value.assume_init() })
    } else {
        Err(ret)
    }
}

/// Loads a `T` at `base + offset` straight from kernel memory.
///
/// Only for a `base` the verifier knows as a BTF-typed kernel pointer: a
/// `tp_btf` argument, [`current_task`], or a pointer field loaded through
/// one. The verifier checks the access against the type when the program
/// is loaded (it rejects any other base then, at start-up, never at run
/// time) and JITs it as a plain load that reads 0 if the memory faults. A
/// probe read's helper call costs tens of nanoseconds; this costs one.
///
/// # Safety
/// Safe for any such base; a wrong offset reads the wrong field.
#[inline(always)]
pub unsafe fn load<T: Copy>(base: usize, offset: usize) -> T {
    // SAFETY: per the contract, a verified BTF access.
    unsafe { core::ptr::read_volatile(base.wrapping_add(offset) as *const T) }
}

/// Reads a pointer field; a null pointer is an error.
#[inline(always)]
pub fn read_ptr(base: usize, offset: usize) -> Result<usize, i64> {
    // SAFETY: see `read`.
    let ptr: usize = unsafe { read(base, offset)? };
    if ptr == 0 { Err(-14) } else { Ok(ptr) }
}

/// The current task, as a BTF-typed pointer (see [`load`]).
#[inline(always)]
pub fn current_task() -> usize {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_get_current_task_btf() as usize }
}

/// Writes a record header.
#[inline(always)]
pub fn write_header(header: *mut RecordHeader, kind: u8, size: usize) {
    // SAFETY: `header` points into a record being built or reserved.
    unsafe {
        (*header).kind = kind;
        (*header)._pad0 = 0;
        (*header).flags = 0;
        (*header).size = size as u32;
        (*header).ktime_ns = bpf_ktime_get_boot_ns();
    }
}

/// Fills `info` for `task` (any task; the cgroup id is the current task's,
/// which is the same task, or for fork the parent whose cgroup the child
/// inherits).
#[inline(always)]
pub fn fill_task(info: *mut TaskInfo, task: usize) -> Result<(), i64> {
    // SAFETY: `info` points into a record being built or reserved; `task` is a
    // BTF-typed task (the tracepoint's argument or the current task), and
    // its pointer fields are loaded as BTF-typed pointers (see `load`).
    unsafe {
        let cred: usize = load(task, off!(task_cred));
        let parent: usize = load(task, off!(task_real_parent));
        let leader: usize = load(task, off!(task_group_leader));
        (*info).tid = load(task, off!(task_pid));
        (*info).pid = load(task, off!(task_tgid));
        (*info).ppid = load(parent, off!(task_tgid));
        (*info).uid = load(cred, off!(cred_uid));
        (*info).gid = load(cred, off!(cred_gid));
        (*info).euid = load(cred, off!(cred_euid));
        (*info).egid = load(cred, off!(cred_egid));
        (*info)._pad0 = 0;
        (*info).cgroup_id = bpf_get_current_cgroup_id();
        (*info).start_ns = load(leader, off!(task_start_boottime));
        // A probe read: 16 bytes of a char array, which a direct load would
        // read in pieces the verifier checks one by one.
        (*info).comm = read(task, off!(task_comm))?;
    }
    Ok(())
}

/// Thread and process id of the current task.
#[inline(always)]
pub fn current_ids() -> (u32, u32) {
    let id = bpf_get_current_pid_tgid();
    (id as u32, (id >> 32) as u32)
}
