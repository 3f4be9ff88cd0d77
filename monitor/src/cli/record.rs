//! `monitor record`: capture events to JSON Lines.

use std::{fs::File, io::Write, path::PathBuf, time::Duration};

use anyhow::Context as _;

use crate::{
    capture::{Capture, CaptureSettings},
    kernel::counters::counts_line,
    output::jsonl::JsonLines,
};

/// Arguments of `monitor record`.
#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// Stop after this many seconds (default: until Ctrl-C or SIGTERM).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Write to this file instead of stdout.
    #[arg(long, short, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Do not count syscalls per process (no `syscall_counts` events).
    #[arg(long, alias = "no-syscall-profiles")]
    pub no_syscall_counts: bool,
    /// How often the syscall counts are drained from the kernel, seconds.
    #[arg(
        long,
        alias = "profile-window",
        value_name = "SECS",
        default_value_t = 5.0
    )]
    pub drain_interval: f64,
}

/// Runs the command; returns when stopped and flushed.
pub async fn run(args: RecordArgs) -> anyhow::Result<()> {
    let mut signals =
        crate::shutdown::ShutdownSignals::install().context("cannot install signal handlers")?;
    let out: Box<dyn Write + Send> = match &args.output {
        Some(path) => Box::new(
            File::create(path)
                .with_context(|| format!("cannot create output file {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let mut writer = JsonLines::new(out);

    let mut settings = CaptureSettings::default();
    settings.probes.syscall_counts = !args.no_syscall_counts;
    settings.counts.drain_every = positive_secs(args.drain_interval, "--drain-interval")?;
    let mut capture = Capture::start(&settings).context("cannot start capture")?;
    let sensors: Vec<&str> = capture
        .probes()
        .sensors()
        .iter()
        .filter(|(_, state)| **state == crate::kernel::SensorState::Attached)
        .map(|(sensor, _)| sensor.name())
        .collect();
    tracing::info!(
        sensors = sensors.join(","),
        programs = capture.probes().attached().len(),
        processes = capture.seed_stats().processes,
        "recording"
    );
    // A plain line for scripts that wait for readiness.
    eprintln!("monitor: ready");

    let deadline = match args.duration {
        Some(secs) => Some(tokio::time::Instant::now() + positive_secs(secs, "--duration")?),
        None => None,
    };
    let sleep = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep);
    let mut stopping = false;
    let mut stop_deadline = None;
    let mut broken_pipe = false;
    loop {
        tokio::select! {
            event = capture.next() => match event {
                Some(event) => {
                    if broken_pipe {
                        continue;
                    }
                    if let Err(err) = writer.write(&event) {
                        if err.kind() == std::io::ErrorKind::BrokenPipe {
                            // The reader went away (e.g. `| head`): stop quietly.
                            broken_pipe = true;
                            capture.stop_sources();
                            continue;
                        }
                        return Err(err).context("cannot write event");
                    }
                }
                None => break,
            },
            () = &mut sleep, if !stopping => {
                stopping = true;
                stop_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                capture.stop_sources();
            }
            sig = signals.recv(), if !stopping => {
                tracing::info!(signal = %sig.describe(), "stopping");
                stopping = true;
                stop_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                capture.stop_sources();
            }
            () = async { tokio::time::sleep_until(stop_deadline.unwrap()).await }, if stop_deadline.is_some() => {
                tracing::warn!("draining took longer than 2 s; stopping with events still queued");
                break;
            }
        }
    }
    if !broken_pipe {
        writer.flush().context("cannot flush output")?;
    }

    let loss = capture.loss_totals();
    let faults = capture.fault_totals();
    eprintln!(
        "monitor: {} events written from {} kernel records",
        writer.written(),
        capture.records_in()
    );
    eprintln!("monitor: dropped events: {}", counts_line(&loss));
    if !faults.is_empty() {
        eprintln!("monitor: degraded fields: {}", counts_line(&faults));
    }
    Ok(())
}

/// Parses a positive number of seconds.
pub fn positive_secs(secs: f64, flag: &str) -> anyhow::Result<Duration> {
    if !(secs.is_finite() && secs > 0.0) {
        anyhow::bail!("{flag} must be a positive number of seconds, got {secs}");
    }
    Ok(Duration::from_secs_f64(secs))
}
