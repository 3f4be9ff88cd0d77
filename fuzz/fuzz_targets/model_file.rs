//! Model files: decode, validate, and a model that passes is used as the
//! agent uses it (scoring and explaining windows), which must not panic.
//!
//! An input starting with byte 1 is the JSON body of a model: the target
//! wraps it in a well-formed file (gzip, length, CRC-32), so the fuzzer
//! reaches the validation of contents behind the checksum, where a crafted
//! file with a correct checksum would be. Any other input is a whole file.
#![no_main]

use monitor::model::{finding::Finding, persist, window::Window};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let bytes = match data.split_first() {
        Some((1, json)) => persist::encode_json(json),
        _ => data.to_vec(),
    };
    let Ok(file) = persist::decode(&bytes, std::path::Path::new("model.bin")) else {
        return;
    };
    let baseline = &file.baseline;
    for w in [
        Window::from_sequence("/usr/bin/x", vec![0, 1, 2, 1, 0, 59, 231]),
        Window::from_sequence("/usr/bin/never-seen", vec![257, 3, 3, 3]),
        Window::from_sequence("", Vec::new()),
    ] {
        let scored = baseline.score(&w);
        let _ = Finding::new(baseline, &w, &scored, 0.999).explanation();
    }
});
