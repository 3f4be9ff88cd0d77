//! JSON Lines files in the state directory: append one record, read them
//! all back. Files are created 0600. A line that cannot be parsed (a torn
//! write after a crash, an edit by hand) is reported with its file and line
//! and skipped: one bad line must not hide every other record.

use std::{
    io::{BufRead as _, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use serde::Serialize;

/// Appends one JSON line to a 0600 file.
pub fn append_line<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    append_bytes(
        path,
        serde_json::to_vec(value).map_err(std::io::Error::other)?,
    )
}

/// Appends `line` and a newline to a 0600 file, in one write.
pub(crate) fn append_bytes(path: &Path, mut line: Vec<u8>) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    line.push(b'\n');
    f.write_all(&line)
}

/// A line that could not be read.
#[derive(Debug, Clone, PartialEq)]
pub struct BadLine {
    /// The file.
    pub path: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub error: String,
}

impl std::fmt::Display for BadLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: skipped an unreadable line: {}",
            self.path.display(),
            self.line,
            self.error
        )
    }
}

/// Reads a JSON Lines file; a missing file is empty.
pub fn read_lines<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> std::io::Result<(Vec<T>, Vec<BadLine>)> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(e),
    };
    let (mut items, mut bad) = (Vec::new(), Vec::new());
    for (i, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
        let line = line?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice(&line) {
            Ok(v) => items.push(v),
            Err(e) => bad.push(BadLine {
                path: path.to_owned(),
                line: i + 1,
                error: e.to_string(),
            }),
        }
    }
    Ok((items, bad))
}
