//! The configuration file: parses into settings or is an error naming the
//! file, line and key.
#![no_main]

use monitor::config::{RawConfig, Settings};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("monitor.toml");
    if let Ok(raw) = RawConfig::parse(text, path) {
        let _ = Settings::from_raw(raw, path);
    }
});
