//! `monitor drill`: safe, self-cleaning simulations of attacker behaviour,
//! run against a live agent, each reported as flagged or not, by which
//! finding, how fast, and how the finding reads.
//!
//! Each drill runs as its own process (`monitor drill-step`, see [`steps`]),
//! and a finding belongs to a drill when that process is the finding's
//! process or one of its ancestors. The runner watches the agent's local
//! finding log, so it works whatever sinks the agent ships findings to.

pub mod steps;

use std::{
    io::{Read as _, Seek as _},
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    event::{Ancestor, Process},
    model::finding::{Repeat, printable},
    state::findings::LoggedFinding,
    state::paths::StatePaths,
};

/// One drill.
#[derive(Debug, Clone, Copy)]
pub struct Drill {
    /// Name on the command line.
    pub name: &'static str,
    /// MITRE ATT&CK technique ids it simulates.
    pub techniques: &'static [&'static str],
    /// One line: what it does.
    pub description: &'static str,
}

/// Every drill, in the order `--all` runs them.
pub const DRILLS: &[Drill] = &[
    Drill {
        name: "webshell",
        techniques: &["T1059.004", "T1082"],
        description: "a process serving HTTP runs a shell from a request; the shell runs discovery commands",
    },
    Drill {
        name: "reverse-shell",
        techniques: &["T1059.004", "T1071"],
        description: "a shell connects out to a local listener and takes its commands from it",
    },
    Drill {
        name: "credential-files",
        techniques: &["T1003.008", "T1552.004"],
        description: "reads /etc/shadow, /etc/gshadow and a decoy private key planted in /root/.ssh",
    },
    Drill {
        name: "persistence",
        techniques: &["T1053.003", "T1543.002", "T1098.004"],
        description: "writes an inert cron file, a never-enabled systemd unit and a decoy authorized key, then removes them",
    },
    Drill {
        name: "memfd-exec",
        techniques: &["T1620"],
        description: "copies /bin/true into a memfd and executes it from memory (execveat)",
    },
    Drill {
        name: "download-exec",
        techniques: &["T1105"],
        description: "downloads a program over HTTP from a local server into /tmp and runs it",
    },
    Drill {
        name: "privesc-probe",
        techniques: &["T1548"],
        description: "as nobody: tries setuid(0) in a loop, searches setuid programs, runs `sudo -n -l` three times",
    },
    Drill {
        name: "log-tamper",
        techniques: &["T1070"],
        description: "writes a log file under /var/log, truncates it and deletes it",
    },
    Drill {
        name: "discovery-burst",
        techniques: &["T1057", "T1049", "T1082"],
        description: "ps, ss/netstat, /proc/net/tcp, id, uname, ip addr, /etc/passwd and every process's command line at once",
    },
    Drill {
        name: "agent-tamper",
        techniques: &["T1562.001"],
        description: "sends SIGCONT to the agent, ptrace-seizes it (detached at once), loads a BPF program, writes into its state directory",
    },
];

/// The outcome of one drill.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Drill name.
    pub drill: String,
    /// Techniques.
    pub techniques: Vec<String>,
    /// A finding was raised for it in time.
    pub flagged: bool,
    /// Seconds from the drill's start to the first finding seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// The first finding's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finding: Option<String>,
    /// Every finding raised for it.
    pub findings: Vec<String>,
    /// The first finding's summary (how the explanation read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The first finding's severity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// Why the drill could not run, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How to run drills.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// The agent's state directory.
    pub state_dir: PathBuf,
    /// How long to wait for a finding after a drill ends.
    pub timeout: Duration,
}

/// Why drills cannot be chosen or run.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// No drill was named.
    #[error("name the drills to run, or --all (see `monitor drill --list`)")]
    NoneNamed,
    /// A name that is not a drill.
    #[error("no drill named {name:?}; choose from {choices}")]
    Unknown {
        /// The name given.
        name: String,
        /// The drills there are.
        choices: String,
    },
    /// No agent status file: no agent runs on this state directory.
    #[error("no running agent: cannot read {} (start it with `monitor run`)", .path.display())]
    NoAgent {
        /// The status file.
        path: PathBuf,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
    /// The status file is not one.
    #[error("{} is not an agent status file", .path.display())]
    NotAStatus {
        /// The status file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: serde_json::Error,
    },
    /// The status file is stale: the agent is gone.
    #[error("no running agent: {} is {age_secs} s old (pid {pid} gone?)", .path.display())]
    AgentGone {
        /// The status file.
        path: PathBuf,
        /// Its age.
        age_secs: u64,
        /// The pid it names.
        pid: u32,
    },
    /// The agent is still learning; drills need a detecting agent.
    #[error(
        "the agent is still learning this host's baseline ({remaining_secs:.0} s and {windows_needed} windows to go); drills need a detecting agent"
    )]
    StillLearning {
        /// Learning time left.
        remaining_secs: f64,
        /// Windows still needed.
        windows_needed: u64,
    },
    /// A file or process operation failed.
    #[error("{action}")]
    Io {
        /// What was being done.
        action: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// An operation failed without saying what it was doing.
    #[error(transparent)]
    UnnamedIo(#[from] std::io::Error),
    /// A drill step could not do what it plays.
    #[error("{0}")]
    Step(String),
}

/// Names what an I/O operation was doing when it failed.
trait Doing<T> {
    fn doing(self, action: impl Into<String>) -> Result<T, DrillError>;
}

impl<T> Doing<T> for std::io::Result<T> {
    fn doing(self, action: impl Into<String>) -> Result<T, DrillError> {
        self.map_err(|source| DrillError::Io {
            action: action.into(),
            source,
        })
    }
}

/// Looks drills up by name (`all` for every one).
pub fn select(names: &[String], all: bool) -> Result<Vec<Drill>, DrillError> {
    if all {
        return Ok(DRILLS.to_vec());
    }
    if names.is_empty() {
        return Err(DrillError::NoneNamed);
    }
    names
        .iter()
        .map(|n| {
            DRILLS
                .iter()
                .find(|d| d.name == n)
                .copied()
                .ok_or_else(|| DrillError::Unknown {
                    name: n.clone(),
                    choices: DRILLS.iter().map(|d| d.name).collect::<Vec<_>>().join(", "),
                })
        })
        .collect()
}

/// What the runner needs from the agent's status file.
struct AgentInfo {
    pid: u32,
}

fn agent_info(paths: &StatePaths) -> Result<AgentInfo, DrillError> {
    let path = paths.status();
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(source) => return Err(DrillError::NoAgent { path, source }),
    };
    let status: crate::api::Status = match serde_json::from_str(&text) {
        Ok(status) => status,
        Err(source) => return Err(DrillError::NotAStatus { path, source }),
    };
    let age = crate::event::Timestamp::now().since(status.updated);
    if age > Duration::from_secs(5) || !Path::new(&format!("/proc/{}", status.pid)).exists() {
        return Err(DrillError::AgentGone {
            path,
            age_secs: age.as_secs(),
            pid: status.pid,
        });
    }
    if status.phase == crate::model::Phase::Learning {
        return Err(DrillError::StillLearning {
            remaining_secs: status.progress.remaining_secs,
            windows_needed: status.progress.windows_needed,
        });
    }
    Ok(AgentInfo { pid: status.pid })
}

/// Reads the records of type `T` appended to a JSON Lines log after
/// `offset`; returns the new offset. Lines that are not a `T` are skipped.
fn new_records<T: serde::de::DeserializeOwned>(path: &Path, offset: u64, out: &mut Vec<T>) -> u64 {
    let Ok(mut file) = std::fs::File::open(path) else {
        return offset;
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    // Shorter than where we were: the agent rotated it, read the new one whole.
    let offset = if len < offset { 0 } else { offset };
    if len == offset || file.seek(std::io::SeekFrom::Start(offset)).is_err() {
        return offset;
    }
    let mut chunk = Vec::new();
    if file.take(len - offset).read_to_end(&mut chunk).is_err() {
        return offset;
    }
    // Only whole lines: a line being written is read next time.
    let complete = chunk.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    for line in chunk[..complete].split(|&b| b == b'\n') {
        if let Ok(record) = serde_json::from_slice::<T>(line) {
            out.push(record);
        }
    }
    offset + complete as u64
}

/// True if the finding is about process `root` or one of its descendants.
pub fn belongs_to(f: &LoggedFinding, root: u32) -> bool {
    in_tree(f.finding.process.as_ref(), &f.finding.ancestry, root)
}

/// True if `process` (with its `ancestry`) is `root` or descends from it.
fn in_tree(process: Option<&Process>, ancestry: &[Ancestor], root: u32) -> bool {
    process.is_some_and(|p| p.pid == root) || ancestry.iter().any(|a| a.pid == root)
}

/// A directory made with `mkdtemp` (mode 0700, a name nobody can predict),
/// removed with everything in it when dropped.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new() -> Result<Self, DrillError> {
        use std::os::unix::ffi::OsStringExt as _;
        let template = std::env::temp_dir().join("monitor-drill-XXXXXX");
        let mut bytes = template.into_os_string().into_vec();
        bytes.push(0);
        // SAFETY: `bytes` is a NUL-terminated template that mkdtemp
        // rewrites in place (same length).
        let made = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
        if made.is_null() {
            return Err(std::io::Error::last_os_error())
                .doing("cannot make a private directory for the drills (mkdtemp)");
        }
        bytes.pop();
        Ok(Self(PathBuf::from(std::ffi::OsString::from_vec(bytes))))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the drills one after the other against the running agent.
pub fn run(drills: &[Drill], settings: &RunSettings) -> Result<Vec<Outcome>, DrillError> {
    let paths = StatePaths::new(&settings.state_dir);
    let agent = agent_info(&paths)?;
    let exe = std::env::current_exe().doing("cannot find the monitor binary")?;
    let mut outcomes = Vec::new();
    // One private directory for every file a drill makes in a shared
    // place: its name cannot be predicted, and no other user can have
    // planted anything in it.
    let private = PrivateDir::new()?;
    for drill in drills {
        let sandbox = private.path().join(drill.name);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&sandbox)
            .doing(format!("cannot create {}", sandbox.display()))?;
        let outcome = run_one(drill, settings, &paths, &exe, &sandbox, agent.pid);
        let _ = std::fs::remove_dir_all(&sandbox);
        eprintln!(
            "monitor: drill {:<16} {}",
            drill.name,
            match (&outcome.error, outcome.flagged) {
                (Some(e), _) => format!("could not run: {e}"),
                (None, true) => format!("flagged in {:.1} s", outcome.seconds.unwrap_or_default()),
                (None, false) => "NOT flagged".to_owned(),
            }
        );
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

fn run_one(
    drill: &Drill,
    settings: &RunSettings,
    paths: &StatePaths,
    exe: &Path,
    sandbox: &Path,
    agent_pid: u32,
) -> Outcome {
    let mut outcome = Outcome {
        drill: drill.name.to_owned(),
        techniques: drill.techniques.iter().map(|t| (*t).to_owned()).collect(),
        flagged: false,
        seconds: None,
        finding: None,
        findings: Vec::new(),
        summary: None,
        severity: None,
        error: None,
    };
    let log = paths.findings();
    let mut offset = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let mut repeats = RepeatLog::new(paths.repeats());
    let started = Instant::now();
    let tag = format!("monitor-drill-{}-{}", std::process::id(), drill.name);
    let child = Command::new(exe)
        .arg("drill-step")
        .arg(drill.name)
        .arg("--sandbox")
        .arg(sandbox)
        .arg("--tag")
        .arg(&tag)
        .arg("--agent-pid")
        .arg(agent_pid.to_string())
        .arg("--state-dir")
        .arg(&settings.state_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            outcome.error = Some(format!("cannot start {}: {e}", exe.display()));
            return outcome;
        }
    };
    let root = child.id();
    // The step must finish on its own; a hung one is killed (with its group
    // of processes waited for by the step itself).
    let deadline = started + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                if !status.success() {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    outcome.error =
                        Some(format!("the drill step failed ({status}): {}", err.trim()));
                }
                break;
            }
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                outcome.error = Some("the drill step did not finish within 60 s".into());
                break;
            }
            Ok(None) => {}
            Err(e) => {
                outcome.error = Some(format!("cannot wait for the drill step: {e}"));
                break;
            }
        }
        offset = new_records(&log, offset, &mut seen);
        note(&mut outcome, &seen, root, started);
        repeats.note(&mut outcome, root, started);
        std::thread::sleep(Duration::from_millis(50));
    }
    // Then wait for the finding (windows close at process exit or at the
    // next counts drain).
    let wait_until = Instant::now() + settings.timeout;
    while outcome.error.is_none() && Instant::now() < wait_until {
        offset = new_records(&log, offset, &mut seen);
        note(&mut outcome, &seen, root, started);
        repeats.note(&mut outcome, root, started);
        if outcome.flagged {
            // Give related findings (children that exit a moment later) a
            // short while to land, so the table lists them too.
            std::thread::sleep(Duration::from_millis(500));
            offset = new_records(&log, offset, &mut seen);
            note(&mut outcome, &seen, root, started);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = offset;
    outcome
}

fn note(outcome: &mut Outcome, seen: &[LoggedFinding], root: u32, started: Instant) {
    for f in seen.iter().filter(|f| belongs_to(f, root)) {
        if outcome.findings.contains(&f.finding.id) {
            continue;
        }
        outcome.findings.push(f.finding.id.clone());
        if !outcome.flagged {
            outcome.flagged = true;
            outcome.seconds = Some((started.elapsed().as_secs_f64() * 10.0).round() / 10.0);
            outcome.finding = Some(f.finding.id.clone());
            outcome.summary = Some(f.finding.summary.clone());
            outcome.severity = Some(f.finding.guidance.severity.name().to_owned());
        }
    }
}

/// The agent's log of repeated findings, read from where it was when the
/// drill started.
struct RepeatLog {
    path: PathBuf,
    offset: u64,
    seen: Vec<Repeat>,
}

impl RepeatLog {
    fn new(path: PathBuf) -> Self {
        let offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        Self {
            path,
            offset,
            seen: Vec::new(),
        }
    }

    /// A drill whose behaviour repeats a finding that is still open (an
    /// earlier run of the same drill, within the finding quarantine) was
    /// recognised too: it counts as flagged, by that finding.
    fn note(&mut self, outcome: &mut Outcome, root: u32, started: Instant) {
        self.offset = new_records(&self.path, self.offset, &mut self.seen);
        if outcome.flagged {
            return;
        }
        let ours = |r: &&Repeat| in_tree(r.process.as_ref(), &r.ancestry, root);
        if let Some(r) = self.seen.iter().find(ours) {
            outcome.flagged = true;
            outcome.seconds = Some((started.elapsed().as_secs_f64() * 10.0).round() / 10.0);
            outcome.finding = Some(r.repeat_of.clone());
            outcome.findings.push(r.repeat_of.clone());
            outcome.summary = Some(format!(
                "repeats open finding {} (not raised again within the finding quarantine; `monitor findings -x {}`)",
                r.repeat_of, r.repeat_of
            ));
        }
    }
}

/// The results as a table for a terminal.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = format!(
        "{:<17} {:<28} {:<8} {:>8}  {:<17} {}\n",
        "DRILL", "TECHNIQUE", "FLAGGED", "SECONDS", "FINDING", "HOW IT READ"
    );
    for o in outcomes {
        let mut summary = o
            .error
            .clone()
            .unwrap_or_else(|| o.summary.clone().unwrap_or_else(|| "-".into()));
        if summary.chars().count() > 110 {
            summary = summary.chars().take(107).collect::<String>() + "...";
        }
        out.push_str(&format!(
            "{:<17} {:<28} {:<8} {:>8}  {:<17} {}\n",
            o.drill,
            o.techniques.join(","),
            if o.flagged { "yes" } else { "NO" },
            o.seconds.map_or("-".into(), |s| format!("{s:.1}")),
            o.finding.as_deref().unwrap_or("-"),
            printable(&summary)
        ));
    }
    let flagged = outcomes.iter().filter(|o| o.flagged).count();
    let mut secs: Vec<f64> = outcomes.iter().filter_map(|o| o.seconds).collect();
    secs.sort_by(f64::total_cmp);
    let median = if secs.is_empty() {
        "-".to_owned()
    } else {
        let m = if secs.len().is_multiple_of(2) {
            (secs[secs.len() / 2 - 1] + secs[secs.len() / 2]) / 2.0
        } else {
            secs[secs.len() / 2]
        };
        format!("{m:.1} s")
    };
    out.push_str(&format!(
        "\n{flagged}/{} drills flagged; median time to finding {median}\n",
        outcomes.len()
    ));
    out
}

/// The `--list` text.
pub fn list() -> String {
    let mut out = String::new();
    for d in DRILLS {
        out.push_str(&format!(
            "{:<17} {:<28} {}\n",
            d.name,
            d.techniques.join(","),
            d.description
        ));
    }
    out
}
