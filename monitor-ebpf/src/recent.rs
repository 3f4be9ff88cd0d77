//! Files written recently: the latest write-open of each regular file, so
//! that code from a fresh write (an executable mapping or an exec of a file
//! written moments ago) is recognised in the kernel.

use aya_ebpf::{macros::map, maps::LruHashMap};
use monitor_common::{InodeKey, RECENT_WRITE_NS, RecentWrite};

use crate::kernel::current_ids;

/// Regular files by device and inode -> their latest write-open, so an
/// executable mapping or an exec of a file written moments ago (a dropped
/// payload) is recognised in the kernel, however the write was limited or
/// reported. Least recently written files make room.
#[map]
pub static RECENT_WRITES: LruHashMap<InodeKey, RecentWrite> =
    LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
pub fn note_write(dev: u32, ino: u64) {
    let key = InodeKey { dev, _pad0: 0, ino };
    let value = RecentWrite {
        // SAFETY: helpers without arguments.
        ktime_ns: unsafe { aya_ebpf::helpers::bpf_ktime_get_boot_ns() },
        pid: current_ids().1,
        uid: aya_ebpf::helpers::bpf_get_current_uid_gid() as u32,
    };
    let _ = RECENT_WRITES.insert(&key, &value, 0);
}

/// The latest write-open of (`dev`, `ino`), if within [`RECENT_WRITE_NS`].
#[inline(always)]
pub fn written(dev: u32, ino: u64) -> Option<RecentWrite> {
    let key = InodeKey { dev, _pad0: 0, ino };
    // SAFETY: a value of the map, copied out at once.
    let written = *unsafe { RECENT_WRITES.get(&key) }?;
    // SAFETY: a helper without arguments.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_boot_ns() };
    (now.saturating_sub(written.ktime_ns) < RECENT_WRITE_NS).then_some(written)
}
