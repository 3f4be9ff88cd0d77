//! Acknowledgements (`monitor ack`) applied to the running engine: the
//! detect stage re-reads `acks.jsonl` whenever the file changes.

use crate::{detect::Detector, fileio::jsonl::read_lines, state::paths::StatePaths};

/// Applies `acks.jsonl` to the engine whenever the file changes.
#[derive(Default)]
pub struct AckWatch {
    seen: Option<(u64, std::time::SystemTime)>,
}

impl AckWatch {
    /// Re-reads the acknowledgements if the file changed (or `force`).
    pub fn refresh(&mut self, paths: &StatePaths, detector: &mut Detector, force: bool) {
        let meta = std::fs::metadata(paths.acks())
            .ok()
            .map(|m| (m.len(), m.modified().unwrap_or(std::time::UNIX_EPOCH)));
        if !force && meta == self.seen {
            return;
        }
        self.seen = meta;
        if detector.engine().baseline().is_none() {
            return; // applied when learning ends
        }
        let result = (|| -> std::io::Result<_> {
            let (records, bad_acks) = read_lines(&paths.acks())?;
            let active = crate::state::findings::in_force(&records);
            let (acked, bad_logs) = crate::state::findings::acked_findings(
                &active,
                &paths.findings(),
                &paths.finding_windows(),
            )?;
            for b in bad_acks.iter().chain(&bad_logs) {
                tracing::warn!("{b}");
            }
            Ok(acked)
        })();
        match result {
            Ok(acked) => {
                let (added, withdrawn) = detector.engine_mut().reconcile_acknowledged(&acked);
                // At start (forced), say what is in force even if the saved
                // model already had it.
                if added + withdrawn > 0 || (force && !acked.is_empty()) {
                    eprintln!(
                        "monitor: acknowledgements: {added} applied, {withdrawn} withdrawn; {} in force",
                        acked.len()
                    );
                }
            }
            Err(e) => {
                tracing::error!(error = %e, path = %paths.acks().display(), "cannot read acknowledgements")
            }
        }
    }
}
