//! How a spool record is laid out on disk, and how a segment is read back
//! when some of it is damaged.
//!
//! A record is `[magic "MSR\x01"][u32 length][u32 CRC-32][payload]` (little
//! endian), the CRC covering the length and the payload. The magic makes a
//! zero-filled stretch (a file extended but never written, after a crash)
//! read as damage, not as records of length 0; the CRC catches torn writes
//! and flipped bits. Damage is skipped by searching for the next magic whose
//! record checks out, so one bad record costs that record, not the rest of
//! its segment.
//!
//! Segments written before the magic existed (`[u32 length][u32 CRC-32]
//! [payload]`) are still read. Their first four bytes are a length, and the
//! magic read as a length is about 22 MB, past [`MAX_PAYLOAD`], so the two
//! layouts cannot be confused. In them damage ends the segment, as it did
//! then.

use std::ops::Range;

/// The first bytes of every record.
pub const MAGIC: [u8; 4] = *b"MSR\x01";

/// Bytes before a record's payload.
pub const HEADER: usize = 12;

/// Header of a segment written before [`MAGIC`] existed.
const LEGACY_HEADER: usize = 8;

/// The largest payload a record may claim: a length past it is damage.
/// Findings are at most a few hundred KiB.
pub const MAX_PAYLOAD: usize = 16 << 20;

/// Appends one encoded record to `out`.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    let len = (payload.len() as u32).to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len);
    crc.update(payload);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(payload);
}

/// What a stretch of a segment holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A whole record: where it starts, and its payload's bytes.
    Record {
        /// Offset of its header.
        at: usize,
        /// Its payload, as a range of the scanned bytes.
        payload: Range<usize>,
    },
    /// Bytes that are no record: zeros, a torn write, a flipped bit.
    Damaged {
        /// Offset of the first bad byte.
        at: usize,
        /// How many bytes up to the next good record (or the end).
        len: usize,
    },
}

impl Item {
    /// Offset just past this item.
    pub fn end(&self) -> usize {
        match self {
            Item::Record { payload, .. } => payload.end,
            Item::Damaged { at, len } => at + len,
        }
    }
}

/// The two layouts a segment can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Records with [`MAGIC`].
    Current,
    /// Records without it (written by earlier versions).
    Legacy,
}

impl Layout {
    /// The layout of a segment, from its first bytes. An empty segment, or
    /// one whose start is damaged, is read as current: new segments are
    /// only ever written so.
    pub fn of(start: &[u8]) -> Layout {
        if start.len() >= LEGACY_HEADER
            && !start.starts_with(&MAGIC)
            && legacy_record(start, 0).is_some()
        {
            Layout::Legacy
        } else {
            Layout::Current
        }
    }
}

/// Bytes before a payload in a segment of `layout`.
pub fn header_len(layout: Layout) -> usize {
    match layout {
        Layout::Current => HEADER,
        Layout::Legacy => LEGACY_HEADER,
    }
}

/// The payload length a header claims, if the header is plausible (its
/// magic, a length within [`MAX_PAYLOAD`]); the CRC is checked by
/// [`checked`] once the payload is read.
pub fn claimed_len(header: &[u8], layout: Layout) -> Option<usize> {
    let (len_at, plausible) = match layout {
        Layout::Current => (4, header.get(..4)? == MAGIC),
        Layout::Legacy => (0, true),
    };
    let len = u32::from_le_bytes(header.get(len_at..len_at + 4)?.try_into().ok()?) as usize;
    (plausible && len <= MAX_PAYLOAD && (len > 0 || layout == Layout::Current)).then_some(len)
}

/// The payload range of the whole, checked record of `layout` at `at`.
pub fn checked(bytes: &[u8], layout: Layout, at: usize) -> Option<Range<usize>> {
    match layout {
        Layout::Current => record_at(bytes, at),
        Layout::Legacy => legacy_record(bytes, at),
    }
}

/// The payload range of the whole, checked record at `at`, if there is one.
pub fn record_at(bytes: &[u8], at: usize) -> Option<Range<usize>> {
    let header = bytes.get(at..at.checked_add(HEADER)?)?;
    if header[..4] != MAGIC {
        return None;
    }
    let len_bytes: [u8; 4] = header[4..8].try_into().ok()?;
    let len = u32::from_le_bytes(len_bytes) as usize;
    let stored = u32::from_le_bytes(header[8..12].try_into().ok()?);
    if len > MAX_PAYLOAD {
        return None;
    }
    let payload = at + HEADER..at + HEADER + len;
    let body = bytes.get(payload.clone())?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len_bytes);
    crc.update(body);
    (crc.finalize() == stored).then_some(payload)
}

/// The payload range of a legacy record at `at`. A legacy record of length
/// 0 is damage: the agent never wrote an empty one, and eight zero bytes
/// read as exactly that.
fn legacy_record(bytes: &[u8], at: usize) -> Option<Range<usize>> {
    let header = bytes.get(at..at.checked_add(LEGACY_HEADER)?)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let stored = u32::from_le_bytes(header[4..8].try_into().ok()?);
    if len == 0 || len > MAX_PAYLOAD {
        return None;
    }
    let payload = at + LEGACY_HEADER..at + LEGACY_HEADER + len;
    let body = bytes.get(payload.clone())?;
    (crc32fast::hash(body) == stored).then_some(payload)
}

/// The next offset after `from` where a checked record starts.
fn next_record(bytes: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(i) = bytes
        .get(at..)?
        .windows(MAGIC.len())
        .position(|w| w == MAGIC)
    {
        if record_at(bytes, at + i).is_some() {
            return Some(at + i);
        }
        at += i + 1;
    }
    None
}

/// The items of `bytes` (a segment of `layout`) from offset `from`.
pub fn scan(bytes: &[u8], layout: Layout, from: usize) -> Vec<Item> {
    let mut items = Vec::new();
    let mut at = from;
    while at < bytes.len() {
        if let Some(payload) = checked(bytes, layout, at) {
            let start = at;
            at = payload.end;
            items.push(Item::Record { at: start, payload });
            continue;
        }
        let resume = match layout {
            Layout::Current => next_record(bytes, at + 1),
            Layout::Legacy => None,
        };
        let end = resume.unwrap_or(bytes.len());
        items.push(Item::Damaged { at, len: end - at });
        at = end;
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            encode(p, &mut out);
        }
        out
    }

    fn payloads(bytes: &[u8], items: &[Item]) -> Vec<Vec<u8>> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Record { payload, .. } => Some(bytes[payload.clone()].to_vec()),
                Item::Damaged { .. } => None,
            })
            .collect()
    }

    fn damaged(items: &[Item]) -> Vec<(usize, usize)> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Damaged { at, len } => Some((*at, *len)),
                Item::Record { .. } => None,
            })
            .collect()
    }

    #[test]
    fn whole_records_read_back_in_order() {
        let bytes = records(&[b"one", b"two", b"{}"]);
        let items = scan(&bytes, Layout::of(&bytes), 0);
        assert_eq!(
            payloads(&bytes, &items),
            [b"one".to_vec(), b"two".to_vec(), b"{}".to_vec()]
        );
        assert!(damaged(&items).is_empty());
        // From the second record's offset.
        let second = items[1].clone();
        let Item::Record { at, .. } = second else {
            panic!()
        };
        assert_eq!(
            payloads(&bytes, &scan(&bytes, Layout::Current, at)).len(),
            2
        );
    }

    #[test]
    fn zeros_are_damage_not_empty_records() {
        let mut bytes = records(&[b"kept"]);
        let good = bytes.len();
        bytes.extend_from_slice(&[0; 8]);
        bytes.extend_from_slice(&[0; 4096]);
        let items = scan(&bytes, Layout::of(&bytes), 0);
        assert_eq!(payloads(&bytes, &items), [b"kept".to_vec()]);
        assert_eq!(damaged(&items), [(good, 4096 + 8)]);
        // A segment that is nothing but zeros.
        let zeros = vec![0u8; 8];
        let items = scan(&zeros, Layout::of(&zeros), 0);
        assert_eq!(damaged(&items), [(0, 8)]);
    }

    #[test]
    fn a_flipped_bit_costs_its_record_only() {
        let mut bytes = records(&[b"first", b"second", b"third"]);
        let second_payload = HEADER + 5 + HEADER;
        bytes[second_payload + 2] ^= 0x10;
        let items = scan(&bytes, Layout::Current, 0);
        assert_eq!(
            payloads(&bytes, &items),
            [b"first".to_vec(), b"third".to_vec()]
        );
        assert_eq!(damaged(&items), [(HEADER + 5, HEADER + 6)]);
        // A flipped bit in a length is caught too (the CRC covers it).
        let mut bytes = records(&[b"first", b"second", b"third"]);
        bytes[HEADER + 5 + 4] ^= 0x01;
        let items = scan(&bytes, Layout::Current, 0);
        assert_eq!(
            payloads(&bytes, &items),
            [b"first".to_vec(), b"third".to_vec()]
        );
    }

    #[test]
    fn a_torn_write_at_the_end_is_damage_to_the_end() {
        let mut bytes = records(&[b"whole"]);
        let good = bytes.len();
        let mut torn = Vec::new();
        encode(b"torn in the middle", &mut torn);
        bytes.extend_from_slice(&torn[..torn.len() - 5]);
        let items = scan(&bytes, Layout::Current, 0);
        assert_eq!(payloads(&bytes, &items), [b"whole".to_vec()]);
        assert_eq!(damaged(&items), [(good, bytes.len() - good)]);
    }

    #[test]
    fn a_magic_inside_a_payload_does_not_fake_a_record() {
        let mut inner = Vec::new();
        encode(b"fake", &mut inner);
        let mut bytes = records(&[b"a", &inner, b"b"]);
        // Damage the outer record: the inner one checks out, and is what a
        // resynchronising reader finds; it is a record a writer never
        // appended, but only a CRC collision or the payload's own bytes
        // make one, and the agent's payloads are JSON, never this.
        bytes[HEADER + 1 + 4] ^= 0x01;
        let items = scan(&bytes, Layout::Current, 0);
        let got = payloads(&bytes, &items);
        assert_eq!(got.first(), Some(&b"a".to_vec()));
        assert_eq!(got.last(), Some(&b"b".to_vec()));
    }

    #[test]
    fn legacy_segments_still_read_and_their_zeros_are_damage() {
        let mut bytes = Vec::new();
        for p in [&b"old one"[..], b"old two"] {
            bytes.extend_from_slice(&(p.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&crc32fast::hash(p).to_le_bytes());
            bytes.extend_from_slice(p);
        }
        let good = bytes.len();
        bytes.extend_from_slice(&[0; 8]);
        assert_eq!(Layout::of(&bytes), Layout::Legacy);
        let items = scan(&bytes, Layout::Legacy, 0);
        assert_eq!(
            payloads(&bytes, &items),
            [b"old one".to_vec(), b"old two".to_vec()]
        );
        assert_eq!(damaged(&items), [(good, 8)]);
    }
}
