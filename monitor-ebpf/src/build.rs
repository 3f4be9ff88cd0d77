//! Building a large record in a per-CPU area and sending it packed, sized
//! to its contents (see `monitor_common::packing`).
//!
//! A record reserved in the ring buffer cannot shrink after it is filled,
//! and `bpf_ringbuf_reserve` takes only a size the verifier knows as a
//! constant. So the record is built at its fixed layout in `BUILD[0]`, its
//! used bytes are copied one area after another into `BUILD[1]`, and
//! `bpf_ringbuf_output` sends that many.
//!
//! The areas are this CPU's, and a program can be preempted while it
//! builds (kernels that run programs preemptibly: seen on 7.3, where a
//! file flood on the same CPU took over an exec's area). So each CPU has
//! three slots of two areas, and a program claims a free slot by writing
//! its token into the slot's owner word before it writes, and frees it
//! when done: a preempted program keeps its slot, and the programs that
//! run meanwhile use another. (The bpf target has no compare-and-exchange
//! in Rust; the claim is a read then a write, and the owner is checked
//! again before the send, so a race inside those two instructions costs
//! the record that lost it, counted.) Slot 0 is the lifecycle lane's (execs): no
//! flood of other records can leave an exec without one. A program that
//! finds no free slot, or its slot's owner changed, counts
//! `build_taken.<kind>` and sends nothing, never a mixed record.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, generated::bpf_probe_read_kernel},
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use monitor_common::{
    COUNTER_BUILD_TAKEN, PATH_AREA,
    packing::{Area, BUILD_AREA, PATH_HEAD, Used},
};

use crate::kernel::{count, count_ringbuf_full};

/// One per-CPU area.
#[repr(C, align(8))]
pub struct BuildArea {
    bytes: [u8; BUILD_AREA],
}

/// Slots per CPU: 0 for the lifecycle lane, the others for every other
/// record.
const SLOTS: u32 = 3;

/// Entry `2 * slot`: the record at its fixed layout; `2 * slot + 1`: the
/// record packed.
#[map]
static BUILD: PerCpuArray<BuildArea> = PerCpuArray::with_max_entries(2 * SLOTS, 0);

/// Each slot's owner token; 0 while the slot is free.
#[map]
static BUILD_OWNER: PerCpuArray<u64> = PerCpuArray::with_max_entries(SLOTS, 0);

/// Which slots a record may build in.
#[derive(Clone, Copy)]
pub enum Lane {
    /// Exec records: slot 0 only.
    Lifecycle,
    /// Every other record: slots 1 and up.
    Events,
}

/// A record of type `T` being built in a slot of this CPU's areas; the
/// slot is freed when this is dropped.
pub struct Build<T> {
    /// The record, at its fixed layout. Its bytes are those of the last
    /// record built here until written.
    pub rec: *mut T,
    packed: *mut u8,
    owner: *mut u64,
    token: u64,
}

/// Claims a free slot of this CPU for a record of type `T` and kind
/// `record_kind` (counted as `build_taken` when none is free).
#[inline(always)]
pub fn start<T>(record_kind: u8, lane: Lane) -> Option<Build<T>> {
    const { assert!(core::mem::size_of::<T>() <= BUILD_AREA) };
    // SAFETY: a helper without arguments.
    let token = unsafe { bpf_ktime_get_ns() } | 1;
    let (first, last) = match lane {
        Lane::Lifecycle => (0, 0),
        Lane::Events => (1, SLOTS - 1),
    };
    let mut slot = first;
    while slot <= last {
        if let Some(build) = claim(slot, token) {
            return Some(build);
        }
        slot += 1;
    }
    count(COUNTER_BUILD_TAKEN + u32::from(record_kind));
    None
}

/// Takes slot `slot` for `token` if it is free.
#[inline(always)]
fn claim<T>(slot: u32, token: u64) -> Option<Build<T>> {
    let owner = BUILD_OWNER.get_ptr_mut(slot)?;
    // SAFETY: this CPU's map value; only this CPU's programs touch it.
    unsafe {
        if core::ptr::read_volatile(owner) != 0 {
            return None;
        }
        core::ptr::write_volatile(owner, token);
    }
    match (BUILD.get_ptr_mut(2 * slot), BUILD.get_ptr_mut(2 * slot + 1)) {
        (Some(fixed), Some(packed)) => Some(Build {
            rec: fixed.cast(),
            packed: packed.cast(),
            owner,
            token,
        }),
        _ => {
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(owner, 0) };
            None
        }
    }
}

impl<T> Drop for Build<T> {
    #[inline(always)]
    fn drop(&mut self) {
        if self.still_ours() {
            // SAFETY: the slot's owner word (see `claim`).
            unsafe { core::ptr::write_volatile(self.owner, 0) };
        }
    }
}

impl<T> Build<T> {
    /// True while no other program has taken the slot over.
    #[inline(always)]
    fn still_ours(&self) -> bool {
        // SAFETY: the slot's owner word (see `claim`).
        unsafe { core::ptr::read_volatile(self.owner) == self.token }
    }

    /// Packs the record by `areas` (which must tile the end of `T`'s
    /// layout, see `monitor_common::packing`) and sends it to `ring`. The
    /// header's `size` is set to the packed size. A full ring counts as
    /// `ringbuf_full.<kind>`.
    #[inline(always)]
    pub fn send(self, ring: &RingBuf, record_kind: u8, areas: &[Area], flags: u64) {
        let fixed = self.rec.cast::<u8>();
        let mut at = areas[0].at;
        // SAFETY: copies within this CPU's two areas; every length is
        // bounded by its area and masked so the verifier can prove the
        // copy stays inside the packed area (see the const asserts in
        // `monitor_common::packing`).
        unsafe {
            bpf_probe_read_kernel(self.packed.cast(), at as u32, fixed.cast());
            for area in areas {
                at = append(self.packed, at, fixed, area);
            }
            // The header's size field, at offset 4.
            *self.packed.add(4).cast::<u32>() = at as u32;
        }
        if !self.still_ours() {
            count(COUNTER_BUILD_TAKEN + u32::from(record_kind));
            return;
        }
        // SAFETY: `at` bytes of this CPU's packed area were written above.
        let bytes = unsafe { core::slice::from_raw_parts(self.packed, at) };
        if ring.output::<[u8]>(bytes, flags).is_err() {
            count_ringbuf_full(record_kind);
        }
    }
}

/// Copies the used bytes of `area` of the fixed record to `at` in the
/// packed one; returns the offset after them.
///
/// # Safety
/// `packed` and `fixed` must be this CPU's build areas.
#[inline(always)]
unsafe fn append(packed: *mut u8, at: usize, fixed: *const u8, area: &Area) -> usize {
    let src = fixed.wrapping_add(area.at);
    // SAFETY: the count fields lie in the fixed prefix, the path head at
    // the start of its area.
    let (used, mask) = unsafe {
        match area.used {
            Used::Path => {
                let len = *src.cast::<u16>() as usize;
                (PATH_HEAD + len.min(PATH_AREA), 8191)
            }
            // A counted area holds at most `size - 1` bytes (its writers
            // keep a byte for the NUL or the mask), so a power-of-two size
            // masks to itself minus one.
            Used::CountU16(len_at) => {
                let len = *fixed.add(len_at).cast::<u16>() as usize;
                (len.min(area.size - 1), area.size.next_power_of_two() - 1)
            }
            Used::CountU32(len_at) => {
                let len = *fixed.add(len_at).cast::<u32>() as usize;
                (len.min(area.size - 1), area.size.next_power_of_two() - 1)
            }
        }
    };
    let used = used & mask;
    // SAFETY: per the function contract; `at` and `used` are bounded.
    unsafe {
        bpf_probe_read_kernel(packed.wrapping_add(at).cast(), used as u32, src.cast());
    }
    at + used
}
