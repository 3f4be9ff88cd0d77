//! Packed records back to their fixed layout (see `monitor_common::packing`).
//!
//! The kernel sends its large records with each variable area cut to the
//! bytes in use. Expanding them here, before anything reads a field, keeps
//! the decoders working on one layout per kind. Every length is checked
//! against its area and against the bytes received, so a lying record is a
//! [`DecodeError`], never an out-of-bounds read.

use std::{borrow::Cow, mem::size_of};

#[cfg(test)]
use monitor_common::packing::Area;
use monitor_common::{
    KernelPath, RecordHeader, kind,
    packing::{MEM_EXEC_OP_AT, PATH_HEAD, Used, areas_of},
};

use super::record::{DecodeError, bounded_len, read_at};

/// The record at its fixed layout: `bytes` itself for a kind sent at its
/// fixed size, an expanded copy for a packed one.
pub fn unpack(bytes: &[u8], header: RecordHeader) -> Result<Cow<'_, [u8]>, DecodeError> {
    let op = bytes.get(MEM_EXEC_OP_AT).copied().unwrap_or(0);
    let Some(areas) = areas_of(header.kind, header.flags, op) else {
        return Ok(Cow::Borrowed(bytes));
    };
    let name = kind::name(header.kind);
    let prefix = areas[0].at;
    let last = areas[areas.len() - 1];
    let short = |len| DecodeError::Short {
        kind: name,
        len,
        min: prefix,
    };
    if bytes.len() < prefix {
        return Err(short(bytes.len()));
    }
    let mut fixed = vec![0u8; last.at + last.size];
    fixed[..prefix].copy_from_slice(&bytes[..prefix]);
    let mut at = prefix;
    for area in areas {
        let used = match area.used {
            Used::Path => {
                if bytes.len() < at + PATH_HEAD {
                    return Err(short(bytes.len()));
                }
                let len = read_at::<u16>(bytes, at) as usize;
                PATH_HEAD + bounded_len(name, area.name, len, area.size - PATH_HEAD)?
            }
            Used::CountU16(len_at) => {
                let len = read_at::<u16>(&fixed, len_at) as usize;
                bounded_len(name, area.name, len, area.size)?
            }
            Used::CountU32(len_at) => {
                let len = read_at::<u32>(&fixed, len_at) as usize;
                bounded_len(name, area.name, len, area.size)?
            }
        };
        let Some(src) = bytes.get(at..at + used) else {
            return Err(DecodeError::BadLength {
                kind: name,
                field: area.name,
                claimed: used,
                max: bytes.len().saturating_sub(at),
            });
        };
        fixed[area.at..area.at + used].copy_from_slice(src);
        at += used;
    }
    if at != bytes.len() {
        return Err(DecodeError::BadValue {
            kind: name,
            field: "size",
            value: bytes.len() as u64,
            rule: format!("its areas end at byte {at}"),
        });
    }
    Ok(Cow::Owned(fixed))
}

const _: () = assert!(size_of::<KernelPath>() > PATH_HEAD);

/// Packs a record of fixed layout as the kernel does, for tests.
#[cfg(test)]
pub(crate) fn pack(fixed: &[u8]) -> Vec<u8> {
    let header: RecordHeader = read_at(fixed, 0);
    let op = fixed.get(MEM_EXEC_OP_AT).copied().unwrap_or(0);
    let Some(areas) = areas_of(header.kind, header.flags, op) else {
        return fixed.to_vec();
    };
    let mut out = fixed[..areas[0].at].to_vec();
    for area in areas {
        let used = used_len(fixed, area).min(area.size);
        out.extend_from_slice(&fixed[area.at..area.at + used]);
    }
    let size = out.len() as u32;
    out[4..8].copy_from_slice(&size.to_le_bytes());
    out
}

#[cfg(test)]
fn used_len(fixed: &[u8], area: &Area) -> usize {
    match area.used {
        Used::Path => PATH_HEAD + read_at::<u16>(fixed, area.at) as usize,
        Used::CountU16(len_at) => read_at::<u16>(fixed, len_at) as usize,
        Used::CountU32(len_at) => read_at::<u32>(fixed, len_at) as usize,
    }
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use monitor_common::{FileRecord, PATH_AREA, file_op};

    use super::*;
    use crate::event::record::test_records::{blank, put, put_path};

    fn file_fixed() -> Vec<u8> {
        let mut b = blank::<FileRecord>(kind::FILE);
        put(&mut b, offset_of!(FileRecord, op), file_op::RENAME);
        put_path(&mut b, offset_of!(FileRecord, path), &[b"a", b"tmp"], 0);
        put_path(&mut b, offset_of!(FileRecord, path2), &[b"bee", b"tmp"], 0);
        put_path(&mut b, offset_of!(FileRecord, base), &[], 0);
        b
    }

    fn header(b: &[u8]) -> RecordHeader {
        read_at(b, 0)
    }

    #[test]
    fn a_packed_record_is_its_used_bytes_and_expands_to_its_fixed_layout() {
        let fixed = file_fixed();
        let packed = pack(&fixed);
        // The prefix, then three path heads and "a\0tmp\0", "bee\0tmp\0".
        let prefix = offset_of!(FileRecord, path);
        assert_eq!(packed.len(), prefix + 3 * PATH_HEAD + 6 + 8);
        assert_eq!(header(&packed).size as usize, packed.len());
        let back = unpack(&packed, header(&packed)).unwrap();
        assert_eq!(back.len(), fixed.len());
        assert_eq!(&back[8..], &fixed[8..], "all but the header's size");
    }

    #[test]
    fn fixed_size_kinds_pass_through_unchanged() {
        let b = blank::<monitor_common::ForkRecord>(kind::FORK);
        assert!(matches!(unpack(&b, header(&b)), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn a_lying_packed_record_is_refused_with_the_field_named() {
        let packed = pack(&file_fixed());
        let h = header(&packed);
        let prefix = offset_of!(FileRecord, path);

        let err = unpack(&packed[..50], h).unwrap_err();
        assert!(
            err.to_string().starts_with("file record of 50 bytes"),
            "{err}"
        );

        // Cut inside the second path: its claimed bytes are not there.
        let cut = prefix + PATH_HEAD + 6 + PATH_HEAD + 3;
        let err = unpack(&packed[..cut], h).unwrap_err();
        assert!(
            matches!(err, DecodeError::BadLength { field: "path2", .. }),
            "{err}"
        );

        // A path longer than its area.
        let mut lying = packed.clone();
        put(&mut lying, prefix, (PATH_AREA + 1) as u16);
        let err = unpack(&lying, h).unwrap_err();
        assert!(
            matches!(err, DecodeError::BadLength { field: "path", .. }),
            "{err}"
        );

        // Bytes after the last area.
        let mut long = packed.clone();
        long.extend_from_slice(&[0; 8]);
        let err = unpack(&long, h).unwrap_err();
        assert!(err.to_string().contains("areas end at byte"), "{err}");
    }
}
