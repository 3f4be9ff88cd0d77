//! Replay files (JSON Lines of events): each line parses or is an error,
//! and what parses goes through the window builder as replay feeds it.
#![no_main]

use monitor::{event::Event, model::window::WindowBuilder};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut windows = WindowBuilder::new(std::time::Duration::from_secs(10));
    for line in data.split(|&b| b == b'\n') {
        if let Ok(event) = serde_json::from_slice::<Event>(line) {
            let _ = serde_json::to_vec(&event);
            let _ = windows.push(&event);
        }
    }
    let _ = windows.finish();
});
