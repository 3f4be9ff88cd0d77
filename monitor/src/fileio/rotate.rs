//! Size-based rotation of the logs the agent keeps in its state directory
//! (`findings.jsonl`, `finding-windows.jsonl`, `repeats.jsonl`), so that
//! whatever the watched users make the agent log, its disk use is bounded:
//! at most `max_bytes × (keep + 1)` per log. `name.1` is the newest rotated
//! file, `name.{keep}` the oldest; readers read them oldest first.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// How a log is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate before a line would take the file past this.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub keep: usize,
}

impl Default for Rotation {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            keep: 3,
        }
    }
}

/// The rotated file `n` of `path` (`name.n`).
pub fn generation(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// The files of a log that exist, oldest first, the live one last.
pub fn generations(path: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = (1..)
        .map(|n| generation(path, n))
        .take_while(|p| p.exists())
        .collect();
    files.reverse();
    files.push(path.to_owned());
    files
}

/// Reads a rotated log: its rotated files oldest first, then the live one.
pub fn read_log<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> std::io::Result<(Vec<T>, Vec<super::jsonl::BadLine>)> {
    let (mut items, mut bad) = (Vec::new(), Vec::new());
    for file in generations(path) {
        let (more, problems) = super::jsonl::read_lines(&file)?;
        items.extend(more);
        bad.extend(problems);
    }
    Ok((items, bad))
}

impl Rotation {
    /// Rotates `path` if it is at or past the size limit: `name.{keep-1}`
    /// becomes `name.{keep}` (the oldest is dropped), ..., `name` becomes
    /// `name.1`. Returns whether it rotated.
    pub fn rotate_if_full(&self, path: &Path, incoming: u64) -> std::io::Result<bool> {
        let size = match std::fs::metadata(path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        if size == 0 || size + incoming <= self.max_bytes {
            return Ok(false);
        }
        for n in (1..self.keep).rev() {
            let from = generation(path, n);
            if from.exists() {
                std::fs::rename(&from, generation(path, n + 1))?;
            }
        }
        std::fs::rename(path, generation(path, 1))?;
        Ok(true)
    }

    /// Appends one JSON line to the 0600 log `path`, rotating it first when
    /// the line would take it past the limit. Returns whether it rotated.
    pub fn append_line<T: Serialize>(&self, path: &Path, value: &T) -> std::io::Result<bool> {
        let line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
        let rotated = self.rotate_if_full(path, line.len() as u64 + 1)?;
        super::jsonl::append_bytes(path, line)?;
        Ok(rotated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_rotates_at_its_size_keeps_its_generations_and_reads_back_in_order() {
        let dir = std::env::temp_dir().join(format!("monitor-rotate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("findings.jsonl");
        let rotation = Rotation {
            max_bytes: 100,
            keep: 2,
        };
        let mut rotations = 0;
        for i in 0..40u32 {
            // 10 bytes a line ("{\"i\":NN}\n" padded).
            let rotated = rotation
                .append_line(&log, &serde_json::json!({ "i": format!("{i:03}") }))
                .unwrap();
            rotations += u32::from(rotated);
        }
        assert!(rotations >= 4, "{rotations}");
        let files = generations(&log);
        assert_eq!(
            files,
            [generation(&log, 2), generation(&log, 1), log.clone()],
            "two rotated files kept, oldest first"
        );
        let mut seen = Vec::new();
        for f in &files {
            assert!(std::fs::metadata(f).unwrap().len() <= 100);
            let (items, bad) = crate::fileio::jsonl::read_lines::<serde_json::Value>(f).unwrap();
            assert!(bad.is_empty());
            seen.extend(
                items
                    .into_iter()
                    .map(|v| v["i"].as_str().unwrap().to_owned()),
            );
        }
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(seen, sorted, "oldest first, in order");
        assert_eq!(seen.last().map(String::as_str), Some("039"));
        assert!(!generation(&log, 3).exists(), "older ones dropped");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
