//! Records sized to their contents.
//!
//! The large records ([`ExecRecord`], [`ExecScriptRecord`], [`FileRecord`],
//! [`MemExecFileRecord`]) end in variable areas (paths, the file name, the
//! argument vector) whose fixed bounds are kilobytes while their contents
//! are usually tens of bytes. A program builds such a record at its fixed
//! layout in a per-CPU area, then sends it *packed*: the fixed prefix as it
//! is, then each area in order cut to the bytes in use. A file record of a
//! short path is about 200 bytes instead of 13 KiB, so a flood fills the
//! ring buffer 60 times more slowly and the agent copies 60 times less.
//!
//! The agent expands a packed record back to its fixed layout before
//! decoding it (`monitor/src/event/unpack.rs`), checking every length
//! against its area. A record whose areas are all full packs to exactly its
//! fixed layout.

use core::mem::{offset_of, size_of};

use crate::records::{
    EXEC_ARGV_MAX, EXEC_FILENAME_MAX, ExecRecord, ExecScriptRecord, FileRecord, KernelPath,
    MemExecFileRecord, PATH_AREA, exec_flags, kind, mem_op,
};

/// How many bytes of an area are in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Used {
    /// A [`KernelPath`]: its 8-byte head and `len` bytes of data.
    Path,
    /// The count in a `u16` field at this offset of the fixed prefix. A
    /// counted area's size is a power of two and it holds at most `size - 1`
    /// bytes, which lets the kernel side prove its copy in bounds by a mask.
    CountU16(usize),
    /// The count in a `u32` field at this offset of the fixed prefix (same
    /// rules).
    CountU32(usize),
}

/// One variable area of a record's fixed layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Area {
    /// Field name, for error messages.
    pub name: &'static str,
    /// Offset in the fixed layout.
    pub at: usize,
    /// Size in the fixed layout.
    pub size: usize,
    /// How many of its bytes are sent.
    pub used: Used,
}

/// Bytes of a [`KernelPath`] before its data.
pub const PATH_HEAD: usize = offset_of!(KernelPath, data);

const fn path(name: &'static str, at: usize) -> Area {
    Area {
        name,
        at,
        size: size_of::<KernelPath>(),
        used: Used::Path,
    }
}

const EXEC_FILENAME: Area = Area {
    name: "filename_len",
    at: offset_of!(ExecRecord, filename),
    size: EXEC_FILENAME_MAX,
    used: Used::CountU16(offset_of!(ExecRecord, filename_len)),
};
const EXEC_PATH: Area = path("path", offset_of!(ExecRecord, path));
const EXEC_ARGV: Area = Area {
    name: "argv_len",
    at: offset_of!(ExecRecord, argv),
    size: EXEC_ARGV_MAX,
    used: Used::CountU32(offset_of!(ExecRecord, argv_len)),
};

/// The areas of an [`ExecRecord`].
pub const EXEC_AREAS: [Area; 3] = [EXEC_FILENAME, EXEC_PATH, EXEC_ARGV];
/// The areas of an [`ExecScriptRecord`] ([`exec_flags::CWD`]).
pub const EXEC_SCRIPT_AREAS: [Area; 4] = [
    EXEC_FILENAME,
    EXEC_PATH,
    EXEC_ARGV,
    path("cwd", offset_of!(ExecScriptRecord, cwd)),
];
/// The areas of a [`FileRecord`].
pub const FILE_AREAS: [Area; 3] = [
    path("path", offset_of!(FileRecord, path)),
    path("path2", offset_of!(FileRecord, path2)),
    path("base", offset_of!(FileRecord, base)),
];
/// The areas of a [`MemExecFileRecord`] ([`mem_op::MMAP_WRITTEN_FILE`]).
pub const MEM_EXEC_FILE_AREAS: [Area; 1] = [path("path", offset_of!(MemExecFileRecord, path))];

/// True if `areas` follow one another from the first to the end of a
/// `total`-byte layout, with nothing between them.
const fn tiles(areas: &[Area], total: usize) -> bool {
    let mut i = 0;
    while i + 1 < areas.len() {
        if areas[i].at + areas[i].size != areas[i + 1].at {
            return false;
        }
        i += 1;
    }
    let last = areas[areas.len() - 1];
    last.at + last.size == total
}
const _: () = assert!(tiles(&EXEC_AREAS, size_of::<ExecRecord>()));
const _: () = assert!(tiles(&EXEC_SCRIPT_AREAS, size_of::<ExecScriptRecord>()));
const _: () = assert!(tiles(&FILE_AREAS, size_of::<FileRecord>()));
const _: () = assert!(tiles(&MEM_EXEC_FILE_AREAS, size_of::<MemExecFileRecord>()));
const _: () = assert!(PATH_HEAD == 8 && PATH_HEAD + PATH_AREA <= 8191);
const _: () = assert!(EXEC_FILENAME_MAX.is_power_of_two() && EXEC_ARGV_MAX.is_power_of_two());

/// Bytes of the per-CPU areas a packed record is built and packed in: the
/// largest record, and more than any packed size the verifier can bound
/// (each area's length is masked to a power of two, see `monitor-ebpf`'s
/// `build.rs`). A per-CPU map value may not exceed 32 KiB.
pub const BUILD_AREA: usize = 32 * 1024;
const _: () = assert!(size_of::<ExecScriptRecord>() <= BUILD_AREA);
const _: () =
    assert!(offset_of!(ExecRecord, filename) + (EXEC_FILENAME_MAX - 1) + 3 * 8191 <= BUILD_AREA);
const _: () = assert!(offset_of!(FileRecord, path) + 3 * 8191 <= BUILD_AREA);

/// The areas a record of `kind` with header `flags` is packed by, given
/// the `op` byte of a `mem_exec` record ([`mem_op`]); `None` for a kind sent at its
/// fixed size.
pub fn areas_of(record_kind: u8, flags: u16, op: u8) -> Option<&'static [Area]> {
    match record_kind {
        kind::EXEC if flags & exec_flags::CWD != 0 => Some(&EXEC_SCRIPT_AREAS),
        kind::EXEC => Some(&EXEC_AREAS),
        kind::FILE => Some(&FILE_AREAS),
        kind::MEM_EXEC if op == mem_op::MMAP_WRITTEN_FILE => Some(&MEM_EXEC_FILE_AREAS),
        _ => None,
    }
}

/// Offset of the `op` byte of a `mem_exec` record, which says whether it
/// is packed.
pub const MEM_EXEC_OP_AT: usize = offset_of!(crate::records::MemExecRecord, op);
