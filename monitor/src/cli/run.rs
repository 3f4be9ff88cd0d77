//! `monitor run`: the agent. Also `monitor config` and `monitor status`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::config::{DEFAULT_PATH, DEFAULT_TOML, RawConfig, Settings};

/// Arguments of `monitor run` (each overrides the configuration file).
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Configuration file (default: /etc/monitor/monitor.toml if it exists,
    /// else built-in defaults).
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Learning period before detecting (model.learn_for), e.g. 2m, 24h.
    #[arg(long, value_name = "DURATION")]
    pub learn_for: Option<String>,
    /// Fewest windows before detecting (model.min_windows).
    #[arg(long, value_name = "N")]
    pub min_windows: Option<usize>,
    /// False-alarm rate per window (model.false_alarm_rate).
    #[arg(long, value_name = "RATE")]
    pub false_alarm_rate: Option<f64>,
    /// State directory (agent.state_dir).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// API listen address, or "" to turn it off (api.listen).
    #[arg(long, value_name = "ADDR")]
    pub api_listen: Option<String>,
    /// Also export raw activity as OCSF (output.raw_events).
    #[arg(long)]
    pub raw_events: bool,
    /// How often the syscall counts are drained (capture.drain_interval), e.g. 5s.
    #[arg(long, alias = "profile-window", value_name = "DURATION")]
    pub drain_interval: Option<String>,
}

/// Loads the file (or defaults) and applies the flags.
pub fn settings(args: &RunArgs) -> anyhow::Result<Settings> {
    let (path, explicit) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_PATH), false),
    };
    let mut raw = RawConfig::load(&path, explicit)?;
    let dur = |text: &str, flag: &str| {
        humantime::parse_duration(text)
            .with_context(|| format!("{flag} {text:?}: expected a duration like 90s, 15m or 24h"))
    };
    // Each key a flag sets is recorded where it is set: a bad value from a
    // flag is reported as the command line's, not at the file's line for
    // the same key.
    let flagged = &mut raw.source.from_flags;
    if let Some(v) = &args.learn_for {
        raw.model.learn_for = dur(v, "--learn-for")?;
        flagged.push("model.learn_for");
    }
    if let Some(v) = args.min_windows {
        raw.model.min_windows = v;
        flagged.push("model.min_windows");
    }
    if let Some(v) = args.false_alarm_rate {
        raw.model.false_alarm_rate = v;
        flagged.push("model.false_alarm_rate");
    }
    if let Some(v) = &args.state_dir {
        raw.agent.state_dir = v.clone();
    }
    if let Some(v) = &args.api_listen {
        raw.api.listen = v.clone();
        flagged.push("api.listen");
    }
    if args.raw_events {
        raw.output.raw_events = true;
    }
    if let Some(v) = &args.drain_interval {
        raw.capture.drain_interval = dur(v, "--drain-interval")?;
        flagged.push("capture.drain_interval");
    }
    Ok(Settings::from_raw(raw, &path)?)
}

/// Runs the agent.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Signals first: a SIGTERM during start-up still stops cleanly.
    let signals =
        crate::shutdown::ShutdownSignals::install().context("cannot install signal handlers")?;
    let settings = settings(&args)?;
    Ok(crate::agent::run(settings, signals).await?)
}

/// `monitor config`.
#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Print the commented default configuration.
    Default,
    /// Check a configuration file; report errors with file, line and key.
    Check {
        /// The file.
        file: PathBuf,
    },
}

/// Runs `monitor config ...`.
pub fn config(cmd: &ConfigCommand) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Default => {
            print!("{DEFAULT_TOML}");
            Ok(())
        }
        ConfigCommand::Check { file } => {
            let raw = RawConfig::load(file, true)?;
            let settings = Settings::from_raw(raw, file)?;
            for w in &settings.warnings {
                eprintln!("{}: warning: {w}", file.display());
            }
            println!(
                "{}: ok ({} sink{}: {}; state in {})",
                file.display(),
                settings.raw.sink.len(),
                if settings.raw.sink.len() == 1 {
                    ""
                } else {
                    "s"
                },
                settings
                    .raw
                    .sink
                    .iter()
                    .map(crate::output::sink_config::SinkConfig::name)
                    .collect::<Vec<_>>()
                    .join(", "),
                settings.state_dir.display()
            );
            Ok(())
        }
    }
}

/// Arguments of `monitor status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The agent's state directory.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/monitor")]
    pub state_dir: PathBuf,
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
}

/// Asks a running agent for its status on its root-only socket.
fn status_from_socket(socket: &Path) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .ok()?;
    stream
        .write_all(b"GET /status HTTP/1.0\r\nHost: monitor\r\n\r\n")
        .ok()?;
    let mut reply = Vec::new();
    stream.take(16 << 20).read_to_end(&mut reply).ok()?;
    let reply = String::from_utf8(reply).ok()?;
    let (head, body) = reply.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// Shows the state of a running agent: asked on its socket, or read from
/// the status file it refreshes every second (a stopped agent's last).
pub fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let paths = crate::state::paths::StatePaths::new(&args.state_dir);
    let path = paths.status();
    let text = match status_from_socket(&paths.api_socket()) {
        Some(text) => text,
        None => std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no status at {} (is the agent running with --state-dir {}?)",
                path.display(),
                args.state_dir.display()
            )
        })?,
    };
    let s: crate::api::Status = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a status file", path.display()))?;
    if args.json {
        println!("{text}");
        return Ok(());
    }
    let age = crate::event::Timestamp::now().since(s.updated);
    let running = age.as_secs() < 5 && Path::new(&format!("/proc/{}", s.pid)).exists();
    println!(
        "agent      {} (pid {}, version {}, host {})",
        if running {
            "running"
        } else {
            "NOT RUNNING (stale status)"
        },
        s.pid,
        s.version,
        s.host
    );
    println!(
        "since      {} (status {:.0} s old)",
        s.started,
        age.as_secs_f64()
    );
    let p = &s.progress;
    match s.phase {
        crate::model::Phase::Learning => println!(
            "model      learning: {} windows, {} programs, {:.0} s learned, {:.0} s left",
            p.baseline_windows, p.programs, p.learned_secs, p.remaining_secs
        ),
        crate::model::Phase::Detecting => println!(
            "model      detecting: baseline of {} windows, {} programs; {} windows scored",
            p.baseline_windows, p.programs, p.windows_seen
        ),
    }
    println!(
        "events     {} total, {:.0}/s; {} kernel records; {} processes tracked",
        s.events, s.events_per_sec, s.kernel_records, s.processes
    );
    println!(
        "lost       {}",
        crate::kernel::counters::counts_line(&s.lost)
    );
    println!(
        "findings   {} raised{}",
        s.findings,
        s.last_finding
            .as_ref()
            .map(|f| format!("; last: {f}"))
            .unwrap_or_default()
    );
    for sink in &s.sinks {
        println!(
            "sink       {}: {} delivered, {} failures{}",
            sink.name,
            sink.delivered,
            sink.failures,
            sink.last_error
                .as_ref()
                .map(|e| format!(", FAILING: {e}"))
                .unwrap_or_default()
        );
    }
    println!(
        "spool      {} bytes, dropped {} findings / {} activity, {} damaged records skipped{}",
        s.spool.bytes,
        s.spool.dropped_findings,
        s.spool.dropped_activity,
        s.spool.damaged,
        s.spool
            .degraded
            .as_ref()
            .map(|d| format!(", DEGRADED: {d}"))
            .unwrap_or_default()
    );
    for (sensor, report) in &s.sensors {
        if report.state != crate::kernel::SensorCondition::Attached {
            println!("sensor     {sensor}: {report}");
        }
    }
    let b = &p.bounds;
    println!(
        "memory     {:.1} MiB resident; learning store {:.1} MiB",
        s.rss_bytes as f64 / 1048576.0,
        b.learning_bytes as f64 / 1048576.0
    );
    println!(
        "bounds     learning windows evicted {}, refused {}; open findings forgotten early {}; drift facts refused {}; log rotations {}",
        b.learning_evicted,
        b.learning_refused,
        b.open_findings_evicted,
        b.drift_facts_refused,
        s.log_rotations
    );
    Ok(())
}
