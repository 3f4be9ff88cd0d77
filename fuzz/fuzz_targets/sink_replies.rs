//! What destinations send back and what sinks reshape: an Elasticsearch
//! `_bulk` reply, a record shortened for syslog (always valid JSON within
//! the limit), and a record's byte strings turned into OCSF strings.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = monitor::output::sinks::bulk_items(&text, 3);
    let (fitted, _) = monitor::output::shorten::fit(data, 512);
    assert!(fitted.len() <= 512, "{} bytes", fitted.len());
    if serde_json::from_slice::<serde_json::Value>(data).is_ok() {
        serde_json::from_slice::<serde_json::Value>(&fitted).expect("still JSON");
    }
    if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(data) {
        monitor::output::ocsf::strings_only(&mut v);
    }
});
