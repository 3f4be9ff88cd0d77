//! The emit stage: owns every write of what the agent found. Findings go
//! to the spool (for the sinks) and to the local finding log; their windows
//! are kept for `monitor ack`; repeats go to their log; activity and
//! lifecycle records go to the spool.
//!
//! A repeat (a window that showed nothing its program's open finding did
//! not) also reaches the sinks, as an *Update* of that finding (same uid,
//! a count, first and last seen), at most once a minute per finding: the
//! SIEM sees that the behaviour goes on, whoever runs it.
//!
//! It ends when every sender is gone and the channel is empty, so nothing
//! sent before a stop is lost (pending updates are sent then too).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{
    event::Event,
    fileio::rotate::Rotation,
    model::{
        Window,
        finding::{Finding, Repeat},
    },
    output::{
        ocsf::{self, Host, RepeatTally},
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
    /// Rotations of the logs in the state directory.
    pub log_rotations: u64,
}

/// Updates of one finding go out at most this often.
const UPDATE_EVERY: Duration = Duration::from_secs(60);
/// Findings whose repeats are tallied (the most recent).
const TALLIED: usize = 1024;

/// A recent finding and its repeats.
struct Open {
    finding: Box<Finding>,
    tally: Option<RepeatTally>,
    /// Repeats already in an update sent, and when it was sent.
    sent: u64,
    sent_at: Option<Instant>,
}

/// Recent findings by id, oldest first out.
#[derive(Default)]
struct OpenFindings {
    by_id: HashMap<String, Open>,
    order: VecDeque<String>,
}

impl OpenFindings {
    fn insert(&mut self, finding: &Finding) {
        if self.order.len() == TALLIED
            && let Some(oldest) = self.order.pop_front()
        {
            self.by_id.remove(&oldest);
        }
        self.order.push_back(finding.id.clone());
        self.by_id.insert(
            finding.id.clone(),
            Open {
                finding: Box::new(finding.clone()),
                tally: None,
                sent: 0,
                sent_at: None,
            },
        );
    }

    /// Counts a repeat; returns the update to send now, if one is due.
    fn repeat(&mut self, repeat: &Repeat, now: Instant) -> Option<(Box<Finding>, RepeatTally)> {
        let open = self.by_id.get_mut(&repeat.repeat_of)?;
        let tally = open.tally.get_or_insert(RepeatTally {
            repeats: 0,
            first: repeat.time,
            last: repeat.time,
            last_process: None,
        });
        tally.repeats += 1;
        tally.last = tally.last.max(repeat.time);
        tally.last_process = repeat.process.clone();
        Self::due(open, now, false)
    }

    /// Updates whose minute has passed (or all pending ones, at the end).
    fn due_updates(&mut self, now: Instant, all: bool) -> Vec<(Box<Finding>, RepeatTally)> {
        self.by_id
            .values_mut()
            .filter_map(|open| Self::due(open, now, all))
            .collect()
    }

    fn due(open: &mut Open, now: Instant, all: bool) -> Option<(Box<Finding>, RepeatTally)> {
        let tally = open.tally.as_ref()?;
        let waited = open
            .sent_at
            .is_none_or(|at| now.duration_since(at) >= UPDATE_EVERY);
        if tally.repeats == open.sent || !(waited || all) {
            return None;
        }
        open.sent = tally.repeats;
        open.sent_at = Some(now);
        Some((open.finding.clone(), tally.clone()))
    }
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
    /// How the logs are rotated.
    pub logs: Rotation,
}

impl EmitStage {
    /// Runs until the channel ends.
    pub async fn run(self, mut input: Receiver<Emission>) {
        let mut open = OpenFindings::default();
        let mut tick = super::every(Duration::from_secs(5));
        loop {
            tokio::select! {
                emission = input.recv() => match emission {
                    Some(emission) => self.emit(emission, &mut open),
                    None => break,
                },
                _ = tick.tick() => {
                    for (finding, tally) in open.due_updates(Instant::now(), false) {
                        self.send_update(&finding, &tally);
                    }
                }
            }
        }
        for (finding, tally) in open.due_updates(Instant::now(), true) {
            self.send_update(&finding, &tally);
        }
    }

    fn send_update(&self, finding: &Finding, tally: &RepeatTally) {
        spool_append(
            &self.spool,
            Class::Findings,
            &ocsf::finding_update(finding, tally, &self.host),
        );
    }

    fn emit(&self, emission: Emission, open: &mut OpenFindings) {
        match emission {
            Emission::Finding { finding, window } => {
                open.insert(&finding);
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
                self.log(
                    &self.paths.findings(),
                    &logged,
                    "cannot write the local finding log",
                );
                if let Some(w) = window {
                    self.log(
                        &self.paths.finding_windows(),
                        &w,
                        "cannot keep a finding's window; `monitor ack` will not teach it",
                    );
                }
            }
            Emission::Repeat(repeat) => {
                self.log(
                    &self.paths.repeats(),
                    &repeat,
                    "cannot log a repeated finding",
                );
                if let Some((finding, tally)) = open.repeat(&repeat, Instant::now()) {
                    self.send_update(&finding, &tally);
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

impl EmitStage {
    /// Appends a line to a rotated log; a failure is logged with `what`.
    fn log<T: serde::Serialize>(&self, path: &std::path::Path, value: &T, what: &str) {
        match self.logs.append_line(path, value) {
            Ok(rotated) => {
                if rotated {
                    self.stats.lock().expect("emit stats lock").log_rotations += 1;
                    tracing::info!(path = %path.display(), "rotated");
                }
            }
            Err(e) => tracing::error!(error = %e, path = %path.display(), "{what}"),
        }
    }
}

/// Appends a record to the spool; a failure is logged (the spool keeps
/// records in memory and reports itself degraded).
pub fn spool_append(spool: &Spool, class: Class, record: &serde_json::Value) {
    let mut bytes = serde_json::to_vec(record).expect("a JSON value serializes");
    // A byte string that is not UTF-8 (rare: only then is there a base64
    // field) becomes an OCSF string.
    if bytes.windows(9).any(|w| w == b"\"base64\":") {
        let mut record = record.clone();
        crate::output::ocsf::strings_only(&mut record);
        bytes = serde_json::to_vec(&record).expect("a JSON value serializes");
    }
    // What sinks carry is read by people too (syslog viewers, files).
    let bytes = crate::display::json_with_visible_escapes(bytes);
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
                logs: Rotation::default(),
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

    #[test]
    fn repeats_reach_the_sinks_as_updates_of_their_finding_at_most_once_a_minute() {
        let logged: LoggedFinding =
            serde_json::from_str(include_str!("../../benches/fixtures/logged-finding.json"))
                .unwrap();
        let mut open = OpenFindings::default();
        open.insert(&logged.finding);
        let repeat = |at: u64| Repeat {
            repeat_of: logged.finding.id.clone(),
            time: crate::event::Timestamp(at),
            score: 1.0,
            process: None,
            ancestry: Vec::new(),
        };
        let t0 = Instant::now();
        let (_, first) = open
            .repeat(&repeat(10), t0)
            .expect("the first repeat is sent at once");
        assert_eq!(first.repeats, 1);
        assert!(
            open.repeat(&repeat(20), t0).is_none(),
            "within the minute: held"
        );
        assert!(open.repeat(&repeat(30), t0).is_none());
        assert!(
            open.due_updates(t0 + Duration::from_secs(30), false)
                .is_empty()
        );
        let due = open.due_updates(t0 + UPDATE_EVERY, false);
        assert_eq!(due.len(), 1, "a minute later, the held repeats go out");
        assert_eq!(
            (due[0].1.repeats, due[0].1.first.0, due[0].1.last.0),
            (3, 10, 30)
        );
        assert!(
            open.due_updates(t0 + UPDATE_EVERY * 3, true).is_empty(),
            "nothing new"
        );
        let update = ocsf::finding_update(&due[0].0, &due[0].1, &Host::current("h"));
        assert_eq!(update["finding_info"]["uid"], logged.finding.id.as_str());
        assert_eq!(
            (update["activity_id"].as_u64(), update["count"].as_u64()),
            (Some(2), Some(4))
        );
        let unknown = Repeat {
            repeat_of: "not-a-finding".into(),
            ..repeat(40)
        };
        assert!(open.repeat(&unknown, t0).is_none(), "a finding not tallied");
    }
}
