//! Atomic file replacement: readers see the old or the new content, never
//! a mix, and a crash leaves one of the two.

use std::{io::Write as _, path::Path};

/// Writes `bytes` to `path` so that readers see the old or the new content,
/// never a mix: temporary file (0600) in the same directory, fsync, rename,
/// fsync of the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), (&'static str, std::io::Error)> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map_or("model".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| ("create", e))?;
        f.write_all(bytes).map_err(|e| ("write", e))?;
        f.sync_all().map_err(|e| ("sync", e))?;
        std::fs::rename(&tmp, path).map_err(|e| ("rename into place", e))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
