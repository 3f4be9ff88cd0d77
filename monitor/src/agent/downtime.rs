//! Whether the agent was down without a clean stop (killed, crashed, the
//! host lost power): a blind spot the SOC must hear about.
//!
//! A clean stop leaves `clean-stop.json` after the last status was written.
//! At the next start, a status file without a later clean-stop marker means
//! the last run ended uncleanly; it was down from its last status to now.

use serde::{Deserialize, Serialize};

use crate::{event::Timestamp, state::paths::StatePaths};

/// Written at a clean stop.
#[derive(Debug, Serialize, Deserialize)]
struct CleanStop {
    time: Timestamp,
    reason: String,
}

/// A stretch of time the agent did not watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downtime {
    /// The last sign of life of the previous run.
    pub from: Timestamp,
    /// This start.
    pub until: Timestamp,
}

impl Downtime {
    /// One line for logs and records.
    pub fn describe(&self) -> String {
        format!(
            "monitor was down from {} to {} ({}) after a stop that was not clean (killed, crashed or power lost): nothing was watched meanwhile",
            self.from,
            self.until,
            humantime::format_duration(std::time::Duration::from_secs(
                self.until.since(self.from).as_secs()
            ))
        )
    }
}

fn marker(paths: &StatePaths) -> std::path::PathBuf {
    paths.dir.join("clean-stop.json")
}

/// The downtime since the previous run, if it did not stop cleanly. Removes
/// the marker, so that this run is judged on its own stop.
pub fn since_last_run(paths: &StatePaths) -> Option<Downtime> {
    let clean: Option<CleanStop> = std::fs::read(marker(paths))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let _ = std::fs::remove_file(marker(paths));
    let last: crate::api::Status = std::fs::read(paths.status())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())?;
    if clean.is_some_and(|c| c.time >= last.updated) {
        return None;
    }
    Some(Downtime {
        from: last.updated,
        until: Timestamp::now(),
    })
}

/// Records a clean stop (after the last status was written).
pub fn stopped_cleanly(paths: &StatePaths, reason: &str) {
    let record = CleanStop {
        time: Timestamp::now(),
        reason: reason.to_owned(),
    };
    let bytes = serde_json::to_vec(&record).expect("serializes");
    if let Err((action, e)) = crate::fileio::atomic::write_atomically(&marker(paths), &bytes) {
        tracing::warn!(error = %e, action, "cannot record the clean stop; the next start will report downtime");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> StatePaths {
        let d =
            std::env::temp_dir().join(format!("monitor-downtime-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        StatePaths::new(&d)
    }

    fn write_status(paths: &StatePaths, updated: Timestamp) {
        let mut status: serde_json::Value =
            serde_json::from_str(include_str!("../../benches/fixtures/status.json")).unwrap();
        status["updated"] = serde_json::to_value(updated).unwrap();
        std::fs::write(paths.status(), serde_json::to_vec(&status).unwrap()).unwrap();
    }

    #[test]
    fn a_run_that_left_no_clean_stop_is_reported_as_downtime_once() {
        let paths = dir("unclean");
        assert_eq!(
            since_last_run(&paths),
            None,
            "first start: nothing to report"
        );
        let last = Timestamp(Timestamp::now().0 - 60_000_000_000);
        write_status(&paths, last);
        let down = since_last_run(&paths).expect("killed: downtime");
        assert_eq!(down.from, last);
        assert!(down.describe().contains("1m"), "{}", down.describe());
        stopped_cleanly(&paths, "SIGTERM from the service manager");
        assert_eq!(
            since_last_run(&paths),
            None,
            "a clean stop after the last status"
        );
        let _ = std::fs::remove_dir_all(&paths.dir);
    }
}
