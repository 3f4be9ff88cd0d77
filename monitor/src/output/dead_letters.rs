//! Dead letters: records a destination refused for good (an Elasticsearch
//! mapping conflict, HTTP 400 or 422, a record larger than the destination
//! accepts). Retrying them cannot help and would jam the sink; dropping
//! them would lose findings. They are kept here, rotated like the agent's
//! other logs, each with the sink and the reason, and counted per sink
//! (`rejected` in `monitor status` and `/metrics`), so an operator can fix
//! the destination and send them again.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
};

use serde::Serialize;

use crate::fileio::rotate::Rotation;

/// The dead-letter log of one agent.
#[derive(Debug)]
pub struct DeadLetters {
    path: PathBuf,
    rotation: Rotation,
    /// One writer at a time: sinks deliver concurrently.
    write: Mutex<()>,
}

#[derive(Serialize)]
struct Letter<'a> {
    time: crate::event::Timestamp,
    sink: &'a str,
    reason: &'a str,
    /// The record as it was spooled (JSON).
    record: &'a serde_json::value::RawValue,
}

#[derive(Serialize)]
struct UnreadableLetter<'a> {
    time: crate::event::Timestamp,
    sink: &'a str,
    reason: &'a str,
    /// The record's bytes, when they are not JSON.
    record_text: std::borrow::Cow<'a, str>,
}

impl DeadLetters {
    /// The log at `path` (`dead-letters.jsonl` in the state directory).
    pub fn new(path: &Path, rotation: Rotation) -> Self {
        Self {
            path: path.to_owned(),
            rotation,
            write: Mutex::new(()),
        }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps one refused record. Returns whether the log rotated.
    pub fn keep(&self, sink: &str, reason: &str, payload: &[u8]) -> std::io::Result<bool> {
        let time = crate::event::Timestamp::now();
        let _one = self
            .write
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match serde_json::from_slice::<&serde_json::value::RawValue>(payload) {
            Ok(record) => self.rotation.append_line(
                &self.path,
                &Letter {
                    time,
                    sink,
                    reason,
                    record,
                },
            ),
            Err(_) => self.rotation.append_line(
                &self.path,
                &UnreadableLetter {
                    time,
                    sink,
                    reason,
                    record_text: String::from_utf8_lossy(payload),
                },
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_record_is_kept_whole_with_its_sink_and_reason() {
        let dir = std::env::temp_dir().join(format!("monitor-dead-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let letters = DeadLetters::new(&dir.join("dead-letters.jsonl"), Rotation::default());
        letters
            .keep(
                "es",
                "HTTP 400: mapper_parsing_exception",
                br#"{"a":[1,2]}"#,
            )
            .unwrap();
        letters.keep("es", "not json", b"\xff oops").unwrap();
        let (lines, bad) =
            crate::fileio::jsonl::read_lines::<serde_json::Value>(letters.path()).unwrap();
        assert!(bad.is_empty());
        assert_eq!(lines[0]["record"], serde_json::json!({"a": [1, 2]}));
        assert_eq!(lines[0]["sink"], "es");
        assert_eq!(lines[0]["reason"], "HTTP 400: mapper_parsing_exception");
        assert_eq!(lines[1]["record_text"], "\u{FFFD} oops");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
