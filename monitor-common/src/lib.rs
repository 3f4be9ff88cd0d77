//! The kernel/user ABI of monitor.
//!
//! Everything the eBPF programs (`monitor-ebpf`) and the agent (`monitor`)
//! exchange is defined here and nowhere else: ring-buffer records, map values,
//! counter indices and the kernel structure offsets the agent resolves from
//! BTF at start-up.
//!
//! Rules this crate keeps (and that `const` assertions next to each struct
//! enforce):
//! - every shared struct is `#[repr(C)]` + `Copy`, with every padding byte
//!   written out as a named `_pad` field (the verifier rejects, and userspace
//!   would otherwise read, uninitialised padding);
//! - no `bool` and no Rust enums in shared structs: flags are integers and
//!   kind tags are `u8` constants, so a corrupt record can never be undefined
//!   behaviour on the user side;
//! - kind tags and counter indices are append-only; a retired value stays
//!   listed as reserved and is never reused.
//!
//! Units: times are nanoseconds of `CLOCK_BOOTTIME` (`bpf_ktime_get_boot_ns`),
//! sizes are bytes, ids are the kernel's (`pid` is the thread id, `tgid` the
//! process id).
#![no_std]
#![deny(missing_docs)]

pub mod counters;
pub mod counting;
pub mod offsets;
pub mod packing;
pub mod records;
pub mod stash;

pub use counters::*;
pub use counting::*;
pub use offsets::KernelOffsets;
pub use records::*;

/// Version of this ABI. The agent refuses an eBPF object built for another one.
pub const ABI_VERSION: u32 = 1;

pub use offsets::ProbeConfig;

#[cfg(feature = "user")]
mod pod {
    //! `aya::Pod` for the records the agent reads out of maps.
    // SAFETY: #[repr(C)] structs of integers and byte arrays whose padding is
    // spelled out as fields: every bit pattern is a valid value.
    unsafe impl aya::Pod for crate::ThreadCounts {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::InodeKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::FileBudget {}
}
