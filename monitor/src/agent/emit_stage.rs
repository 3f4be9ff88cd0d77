//! The emit stage: owns every write of what the agent found. Findings go
//! to the spool (for the sinks) and to the local finding log; their windows
//! are kept for `monitor ack`; repeats go to their log; activity and
//! lifecycle records go to the spool.
//!
//! It ends when every sender is gone and the channel is empty, so nothing
//! sent before a stop is lost.

use std::sync::{Arc, Mutex};

use crate::{
    event::Event,
    fileio::jsonl::append_line,
    model::{
        Window,
        finding::{Finding, Repeat},
    },
    output::{
        ocsf::{self, Host},
        spool::{Class, Spool},
    },
    state::{findings::LoggedFinding, paths::StatePaths},
};

use crate::channel::Receiver;

/// What the other stages hand to this one.
#[derive(Debug)]
pub enum Emission {
    /// A finding, with the window it was raised on (kept so that `monitor
    /// ack` can teach the model this behaviour).
    Finding {
        /// The finding.
        finding: Box<Finding>,
        /// Its window.
        window: Option<Box<Window>>,
    },
    /// A window that repeated an open finding's behaviour.
    Repeat(Box<Repeat>),
    /// A raw event (`output.raw_events`).
    Activity(Box<Event>),
    /// A record made elsewhere (heartbeat, health, lifecycle).
    Record {
        /// Its spool class.
        class: Class,
        /// The OCSF record.
        record: serde_json::Value,
    },
}

/// What the stage has emitted, for the status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmitStats {
    /// Findings raised since start.
    pub findings: u64,
    /// The last finding's one-line summary.
    pub last_finding: Option<String>,
}

/// The stage's state.
pub struct EmitStage {
    /// Where records go.
    pub spool: Arc<Spool>,
    /// The state directory (finding log, windows, repeats).
    pub paths: StatePaths,
    /// This host.
    pub host: Host,
    /// Read by the status.
    pub stats: Arc<Mutex<EmitStats>>,
}

impl EmitStage {
    /// Runs until the channel ends.
    pub async fn run(self, mut input: Receiver<Emission>) {
        while let Some(emission) = input.recv().await {
            self.emit(emission);
        }
    }

    fn emit(&self, emission: Emission) {
        match emission {
            Emission::Finding { finding, window } => {
                {
                    let mut stats = self.stats.lock().expect("emit stats lock");
                    stats.findings += 1;
                    stats.last_finding = Some(finding.summary.clone());
                }
                spool_append(
                    &self.spool,
                    Class::Findings,
                    &ocsf::finding(&finding, &self.host),
                );
                let logged = LoggedFinding {
                    finding: *finding,
                    host: self.host.name.clone(),
                };
                if let Err(e) = append_line(&self.paths.findings(), &logged) {
                    tracing::error!(error = %e, path = %self.paths.findings().display(), "cannot write the local finding log");
                }
                if let Some(w) = window
                    && let Err(e) = append_line(&self.paths.finding_windows(), &w)
                {
                    tracing::warn!(error = %e, path = %self.paths.finding_windows().display(), "cannot keep a finding's window; `monitor ack` will not teach it");
                }
            }
            Emission::Repeat(repeat) => {
                if let Err(e) = append_line(&self.paths.repeats(), &repeat) {
                    tracing::warn!(error = %e, path = %self.paths.repeats().display(), "cannot log a repeated finding");
                }
            }
            Emission::Activity(event) => {
                if let Some(record) = ocsf::activity(&event, &self.host) {
                    spool_append(&self.spool, Class::Activity, &record);
                }
            }
            Emission::Record { class, record } => spool_append(&self.spool, class, &record),
        }
    }
}

/// Appends a record to the spool; a failure is logged (the spool keeps
/// records in memory and reports itself degraded).
pub fn spool_append(spool: &Spool, class: Class, record: &serde_json::Value) {
    let bytes = serde_json::to_vec(record).expect("a JSON value serializes");
    if let Err(e) = spool.append(class, &bytes) {
        tracing::error!(error = %crate::error::error_chain(&e), "spool write failed; keeping records in memory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{channel, output::spool::SpoolSettings};

    #[tokio::test]
    async fn a_finding_goes_to_the_spool_the_finding_log_and_the_kept_windows() {
        let dir = std::env::temp_dir().join(format!("monitor-emit-stage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let paths = StatePaths::new(&dir);
        let spool = Spool::open(
            &paths.spool(),
            SpoolSettings::default(),
            &["siem".to_owned()],
        )
        .unwrap();
        let logged: LoggedFinding =
            serde_json::from_str(include_str!("../../benches/fixtures/logged-finding.json"))
                .unwrap();
        let stats = Arc::new(Mutex::new(EmitStats::default()));
        let (tx, rx, _) = channel::bounded(4);
        let stage = tokio::spawn(
            EmitStage {
                spool: spool.clone(),
                paths: paths.clone(),
                host: Host::current("test-host"),
                stats: stats.clone(),
            }
            .run(rx),
        );
        let window = Window::from_sequence("/usr/sbin/server", vec![0, 1]);
        tx.send(Emission::Finding {
            finding: Box::new(logged.finding.clone()),
            window: Some(Box::new(window)),
        })
        .await
        .unwrap();
        drop(tx);
        stage.await.unwrap();

        assert_eq!(spool.pending("siem"), 1, "one record for the sinks");
        let log = std::fs::read_to_string(paths.findings()).unwrap();
        assert!(log.contains(&logged.finding.id), "{log}");
        assert!(log.contains("test-host"));
        let windows = std::fs::read_to_string(paths.finding_windows()).unwrap();
        assert!(windows.contains("/usr/sbin/server"));
        let stats = stats.lock().unwrap().clone();
        assert_eq!(stats.findings, 1);
        assert_eq!(
            stats.last_finding.as_deref(),
            Some(logged.finding.summary.as_str())
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
