//! Ring-buffer records, every kind: the decoder must return an event or an
//! error naming what is wrong, never panic, whatever the bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = monitor::event::decode::decode(data);
});
