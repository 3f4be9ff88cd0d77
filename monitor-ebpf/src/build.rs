//! Building a large record in a per-CPU area and sending it packed, sized
//! to its contents (see `monitor_common::packing`).
//!
//! A record reserved in the ring buffer cannot shrink after it is filled,
//! and `bpf_ringbuf_reserve` takes only a size the verifier knows as a
//! constant. So the record is built at its fixed layout in `BUILD[0]`, its
//! used bytes are copied one area after another into `BUILD[1]`, and
//! `bpf_ringbuf_output` sends that many.
//!
//! The areas are this CPU's. A program preempted while it builds (on
//! kernels that run programs preemptibly) may find them taken over by
//! another program on the same CPU: each build carries an owner token, and
//! a record whose token changed is counted as `build_taken` and not sent,
//! never sent mixed.

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

/// Index 0: the record at its fixed layout. Index 1: the record packed.
#[map]
static BUILD: PerCpuArray<BuildArea> = PerCpuArray::with_max_entries(2, 0);

/// The owner token of this CPU's areas.
#[map]
static BUILD_OWNER: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// A record of type `T` being built in this CPU's area.
pub struct Build<T> {
    /// The record, at its fixed layout. Its bytes are those of the last
    /// record built here until written.
    pub rec: *mut T,
    packed: *mut u8,
    owner: u64,
}

/// Takes this CPU's areas for a record of type `T` and kind
/// `record_kind` (counted as `build_taken` if the areas cannot be had).
#[inline(always)]
pub fn start<T>(record_kind: u8) -> Option<Build<T>> {
    const { assert!(core::mem::size_of::<T>() <= BUILD_AREA) };
    let (Some(fixed), Some(packed), Some(slot)) = (
        BUILD.get_ptr_mut(0),
        BUILD.get_ptr_mut(1),
        BUILD_OWNER.get_ptr_mut(0),
    ) else {
        count(COUNTER_BUILD_TAKEN + u32::from(record_kind));
        return None;
    };
    // SAFETY: a helper without arguments.
    let owner = unsafe { bpf_ktime_get_ns() } | 1;
    // SAFETY: this CPU's map value.
    unsafe { *slot = owner };
    Some(Build {
        rec: fixed.cast(),
        packed: packed.cast(),
        owner,
    })
}

impl<T> Build<T> {
    /// True while no other program has taken the areas over.
    #[inline(always)]
    fn still_ours(&self) -> bool {
        match BUILD_OWNER.get_ptr_mut(0) {
            // SAFETY: this CPU's map value.
            Some(slot) => unsafe { *slot == self.owner },
            None => false,
        }
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
