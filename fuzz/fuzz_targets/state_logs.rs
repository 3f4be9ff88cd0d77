//! The JSON Lines logs in the state directory that the CLI and the agent
//! read back (findings, acknowledgements, status): a line is a record or an
//! error, and what people read of it is escaped.
#![no_main]

use monitor::state::findings::{AckRecord, LoggedFinding};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for line in data.split(|&b| b == b'\n') {
        if let Ok(f) = serde_json::from_slice::<LoggedFinding>(line) {
            let text = f.finding.explanation();
            assert!(
                !text.contains('\u{202E}'),
                "an override reached the terminal"
            );
        }
        let _ = serde_json::from_slice::<AckRecord>(line);
        let _ = serde_json::from_slice::<monitor::api::Status>(line);
    }
});
