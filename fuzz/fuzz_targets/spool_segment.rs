//! Spool segments: whatever is on disk (torn writes, zeros, flipped bits,
//! records from a crafted file) is read as records and damage, never a
//! panic, and the items cover the bytes exactly.
#![no_main]

use monitor::output::spool_format::{self, Item, Layout};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for layout in [Layout::of(data), Layout::Current, Layout::Legacy] {
        let items = spool_format::scan(data, layout, 0);
        let mut at = 0;
        for item in &items {
            let start = match item {
                Item::Record { at, .. } | Item::Damaged { at, .. } => *at,
            };
            assert_eq!(start, at, "items are contiguous");
            at = item.end();
        }
        assert_eq!(at, data.len(), "items cover the segment");
    }
});
