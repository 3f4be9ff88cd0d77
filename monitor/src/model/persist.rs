//! The model file: versioned, checksummed, written atomically.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! "MONITOR-MODEL\n"   14-byte magic
//! u32 format version  (FORMAT_VERSION)
//! u32 reserved        (0)
//! u64 body length
//! u32 CRC-32 of the body
//! body                gzip-compressed JSON of ModelFile
//! ```
//!
//! A missing, truncated, corrupt or foreign file is a [`ModelError`] naming
//! the file and what is wrong; the caller decides (and documents) whether to
//! relearn or stop. Writes go to a temporary file in the same directory,
//! created 0600, fsynced, then renamed over the old one, so a crash leaves
//! either the old model or the new one, never half of one.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::baseline::Baseline;
use crate::event::Timestamp;

/// Magic bytes at the start of every model file.
pub const MAGIC: &[u8; 14] = b"MONITOR-MODEL\n";
/// The format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 14 + 4 + 4 + 8 + 4;
/// Largest decompressed body read: a small file must not expand into all
/// of memory.
const MAX_DECOMPRESSED: u64 = 64 << 20;

/// What the file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFile {
    /// When the baseline was learned.
    pub created: Timestamp,
    /// When the file was written.
    pub saved: Timestamp,
    /// Host it was learned on.
    pub host: String,
    /// Agent version that wrote it.
    pub agent_version: String,
    /// The baseline.
    pub baseline: Baseline,
}

/// Errors reading or writing a model file.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// No file there.
    #[error("no model file at {0}")]
    Missing(PathBuf),
    /// Not a model file.
    #[error("{0} is not a monitor model file (wrong magic bytes)")]
    Foreign(PathBuf),
    /// Written by another format version.
    #[error("{path} is model format version {found}; this agent reads version {supported}")]
    Version {
        /// File.
        path: PathBuf,
        /// Version found.
        found: u32,
        /// Version supported.
        supported: u32,
    },
    /// Shorter than its header says.
    #[error("{path} is truncated: {got} bytes of body, the header says {expected}")]
    Truncated {
        /// File.
        path: PathBuf,
        /// Bytes promised.
        expected: u64,
        /// Bytes found.
        got: u64,
    },
    /// Checksum or content wrong.
    #[error("{path} is corrupt: {reason}")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// I/O failure.
    #[error("cannot {action} {path}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// File.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl ModelError {
    /// True when the file simply is not there (first start).
    pub fn is_missing(&self) -> bool {
        matches!(self, ModelError::Missing(_))
    }
}

/// Encodes a model file.
pub fn encode(file: &ModelFile) -> Vec<u8> {
    encode_json(&serde_json::to_vec(file).expect("a model serializes"))
}

/// A well-formed model file (header, gzip, CRC-32) around a JSON body,
/// whatever the body says: for [`encode`], and for tests and the fuzzer,
/// which need files whose checksum is right and whose contents are not.
pub fn encode_json(json: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(json).expect("writing to memory");
    let body = gz.finish().expect("writing to memory");
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes a model file's bytes; `path` names it in errors.
pub fn decode(bytes: &[u8], path: &Path) -> Result<ModelFile, ModelError> {
    let corrupt = |reason: String| ModelError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(ModelError::Foreign(path.to_owned()));
    }
    if bytes.len() < HEADER_LEN {
        return Err(ModelError::Truncated {
            path: path.to_owned(),
            expected: HEADER_LEN as u64,
            got: bytes.len() as u64,
        });
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let version = u32_at(14);
    if version != FORMAT_VERSION {
        return Err(ModelError::Version {
            path: path.to_owned(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let len = u64::from_le_bytes(bytes[22..30].try_into().expect("8 bytes"));
    let crc = u32_at(30);
    let body = &bytes[HEADER_LEN..];
    if (body.len() as u64) < len {
        return Err(ModelError::Truncated {
            path: path.to_owned(),
            expected: len,
            got: body.len() as u64,
        });
    }
    if body.len() as u64 > len {
        return Err(corrupt(format!(
            "{} bytes after the body",
            body.len() as u64 - len
        )));
    }
    if crc32fast::hash(body) != crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(MAX_DECOMPRESSED + 1)
        .read_to_end(&mut json)
        .map_err(|e| corrupt(format!("cannot decompress: {e}")))?;
    if json.len() as u64 > MAX_DECOMPRESSED {
        return Err(corrupt(format!(
            "decompresses to more than {} MiB (a model is a few MiB)",
            MAX_DECOMPRESSED >> 20
        )));
    }
    let file: ModelFile =
        serde_json::from_slice(&json).map_err(|e| corrupt(format!("bad content: {e}")))?;
    file.baseline
        .validate()
        .map_err(|e| corrupt(format!("inconsistent content: {e}")))?;
    Ok(file)
}

/// Reads a model file.
pub fn load(path: &Path) -> Result<ModelFile, ModelError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ModelError::Missing(path.to_owned()));
        }
        Err(source) => {
            return Err(ModelError::Io {
                action: "read model file",
                path: path.to_owned(),
                source,
            });
        }
    };
    decode(&bytes, path)
}

/// Writes a model file atomically (0600, fsync, rename).
pub fn save(path: &Path, file: &ModelFile) -> Result<u64, ModelError> {
    let bytes = encode(file);
    crate::fileio::atomic::write_atomically(path, &bytes).map_err(|(action, source)| {
        ModelError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    })?;
    Ok(bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::window::Window;

    fn sample() -> ModelFile {
        let windows: Vec<Window> = (0..60)
            .map(|i| {
                let seq: Vec<u16> = (0..50).map(|j| ((i + j) % 7) as u16).collect();
                let mut w = Window::from_sequence("/usr/bin/x", seq);
                w.pid = i as u32;
                w
            })
            .collect();
        ModelFile {
            created: Timestamp(1),
            saved: Timestamp(2),
            host: "h".into(),
            agent_version: "t".into(),
            baseline: Baseline::fit(&windows).unwrap(),
        }
    }

    #[test]
    fn round_trip() {
        let f = sample();
        let back = decode(&encode(&f), Path::new("m")).unwrap();
        assert!(back == f, "the model survives encoding exactly");
        // Live windows carry counts, not sequences: no sequence model, an
        // empty sequence calibration, and still a valid model.
        let mut live = sample();
        let windows: Vec<Window> = (0..60)
            .map(|i| {
                let seq: Vec<u16> = (0..50).map(|j| ((i + j) % 7) as u16).collect();
                let mut w = Window::from_sequence("/usr/bin/x", seq);
                w.sequence.clear();
                w.pid = i as u32;
                w
            })
            .collect();
        live.baseline = Baseline::fit(&windows).unwrap();
        assert!(live.baseline.sequence.is_none());
        decode(&encode(&live), Path::new("m")).unwrap();
    }

    #[test]
    fn bad_files_are_named_and_explained() {
        let p = Path::new("/state/model.bin");
        let good = encode(&sample());
        let err = decode(b"GIF89a....", p).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/state/model.bin is not a monitor model file (wrong magic bytes)"
        );
        let err = decode(&good[..good.len() - 10], p).unwrap_err();
        assert!(
            err.to_string().starts_with("/state/model.bin is truncated"),
            "{err}"
        );
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        assert!(
            decode(&flipped, p)
                .unwrap_err()
                .to_string()
                .contains("checksum mismatch")
        );
        let mut future = good.clone();
        future[14] = 9;
        assert!(
            decode(&future, p)
                .unwrap_err()
                .to_string()
                .contains("format version 9")
        );
        let err = load(Path::new("/nonexistent/model.bin")).unwrap_err();
        assert!(err.is_missing());
    }

    /// The sample, changed by `edit`, as a checksummed file.
    fn edited(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut v = serde_json::to_value(sample()).unwrap();
        edit(&mut v);
        encode_json(&serde_json::to_vec(&v).unwrap())
    }

    #[test]
    fn a_checksummed_model_that_does_not_fit_together_is_refused_naming_the_field() {
        let p = Path::new("/state/model.bin");
        let refused = |bytes: Vec<u8>| decode(&bytes, p).unwrap_err().to_string();
        // Each of these panicked in scoring before (an index out of bounds
        // or a NaN distance), after a load that succeeded.
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                edited(|v| v["baseline"]["global"]["clusters"]["spreads"] = serde_json::json!([])),
                "baseline.global.clusters.spreads has 0 entries for",
            ),
            (
                edited(|v| {
                    v["baseline"]["global"]["clusters"]["centroids"] = serde_json::json!([])
                }),
                "baseline.global.clusters.centroids is empty",
            ),
            (
                edited(|v| {
                    v["baseline"]["global"]["clusters"]["centroids"][0] = serde_json::json!([1.0])
                }),
                "baseline.global.clusters.centroids[0] has 1 dimensions",
            ),
            (
                edited(|v| {
                    v["baseline"]["global"]["clusters"]["exemplar_spread"] = serde_json::json!(0.0)
                }),
                "baseline.global.clusters.exemplar_spread = 0",
            ),
            (
                edited(|v| v["baseline"]["space"]["idf"] = serde_json::json!([])),
                "baseline.space.idf has 0 weights for",
            ),
            (
                edited(|v| {
                    v["baseline"]["calibration"]["distance"]["tail_count"] =
                        serde_json::json!(1_000_000)
                }),
                "baseline.calibration.distance.tail_count 1000000 is more than",
            ),
            (
                edited(|v| v["baseline"]["sequence"]["modes"] = serde_json::json!([])),
                "baseline.sequence.modes has 0 entries for",
            ),
        ];
        for (bytes, expected) in cases {
            let err = refused(bytes);
            assert!(
                err.starts_with("/state/model.bin is corrupt: inconsistent content: ")
                    && err.contains(expected),
                "{err}\nexpected: {expected}"
            );
        }
        // A small file that would decompress into gigabytes.
        let mut bomb = b"{\"pad\":\"".to_vec();
        bomb.resize(70 << 20, b'a');
        let err = refused(encode_json(&bomb));
        assert!(err.contains("decompresses to more than 64 MiB"), "{err}");
    }

    #[test]
    fn atomic_save_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("monitor-persist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.bin");
        save(&path, &sample()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(load(&path).unwrap() == sample());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
