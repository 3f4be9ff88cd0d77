//! The state directory: where each file lives, the lock that keeps a second
//! agent out, and its creation (0700).

use std::{
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

/// Errors setting up the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The directory could not be created.
    #[error("cannot create state directory {}", dir.display())]
    Create {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The directory exists but cannot be written.
    #[error("state directory {} is not writable", dir.display())]
    NotWritable {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another agent holds the directory.
    #[error(
        "another agent is running with state directory {} (pid {pid}); stop it or choose another --state-dir",
        dir.display()
    )]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// The holder's pid, as it wrote it.
        pid: String,
    },
    /// A file of the directory could not be used.
    #[error("cannot {what} {}", path.display())]
    Io {
        /// What failed.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Files in the state directory.
#[derive(Debug, Clone)]
pub struct StatePaths {
    /// The directory.
    pub dir: PathBuf,
}

impl StatePaths {
    /// Paths under `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }
    /// The model file.
    pub fn model(&self) -> PathBuf {
        self.dir.join("model.bin")
    }
    /// The spool directory.
    pub fn spool(&self) -> PathBuf {
        self.dir.join("spool")
    }
    /// The local finding log.
    pub fn findings(&self) -> PathBuf {
        self.dir.join("findings.jsonl")
    }
    /// Repeats of open findings (`model::finding::Repeat`), one JSON object a line.
    pub fn repeats(&self) -> PathBuf {
        self.dir.join("repeats.jsonl")
    }
    /// Records sinks refused for good (`output::dead_letters`).
    pub fn dead_letters(&self) -> PathBuf {
        self.dir.join("dead-letters.jsonl")
    }
    /// Acknowledgements.
    pub fn acks(&self) -> PathBuf {
        self.dir.join("acks.jsonl")
    }
    /// The status file.
    pub fn status(&self) -> PathBuf {
        self.dir.join("status.json")
    }
    /// The root-only API socket (`/status`, full `/metrics`).
    pub fn api_socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }
    /// The history the report draws (`crate::state::history`).
    pub fn history(&self) -> PathBuf {
        self.dir.join("history.jsonl")
    }
    /// Windows of recent findings, for acknowledgement.
    pub fn finding_windows(&self) -> PathBuf {
        self.dir.join("finding-windows.jsonl")
    }
}

/// Holds the state directory for one agent: a second agent on the same
/// directory would corrupt the spool and the model.
pub struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    /// Takes the lock, or says which agent holds it.
    pub fn take(dir: &Path) -> Result<Self, StateError> {
        use std::os::fd::AsRawFd;
        let path = dir.join("agent.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|source| StateError::Io {
                what: "open",
                path: path.clone(),
                source,
            })?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(StateError::Locked {
                dir: dir.to_owned(),
                pid: holder.trim().to_owned(),
            });
        }
        file.set_len(0).ok();
        let _ = write!(file, "{}", std::process::id());
        Ok(Self { _file: file })
    }
}

/// Creates the state directory (0700) and checks it is usable.
pub fn prepare_state_dir(dir: &Path) -> Result<(), StateError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StateError::Create {
            dir: dir.to_owned(),
            source,
        })?;
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"").map_err(|source| StateError::NotWritable {
        dir: dir.to_owned(),
        source,
    })?;
    let _ = std::fs::remove_file(probe);
    // Earlier versions called the findings' windows alert windows.
    let old = dir.join("alert-windows.jsonl");
    let new = dir.join("finding-windows.jsonl");
    if old.exists() && !new.exists() {
        let _ = std::fs::rename(old, new);
    }
    Ok(())
}
