//! Command-line commands. Each returns `anyhow::Result`; `main` prints the
//! error chain once and maps it to exit code 2.

pub mod drill;
pub mod eval;
pub mod findings;
pub mod model;
pub mod record;
pub mod replay;
pub mod report;
pub mod run;
pub mod verifier;

use clap::{Parser, Subcommand};

use crate::shutdown::ShutdownSignals;

/// monitor: learns how this Linux host behaves, from inside the kernel, and
/// reports what deviates as explained JSON.
#[derive(Debug, Parser)]
#[command(name = "monitor", version, about, long_about = None)]
pub struct Cli {
    /// Log level for the agent's own diagnostics on stderr (error, warn, info, debug, trace).
    #[arg(long, global = true, default_value = "info", env = "MONITOR_LOG")]
    pub log_level: String,
    /// Write diagnostics as JSON lines instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: learn this host's behaviour, then report what deviates
    /// (needs root). The main job.
    Run(run::RunArgs),
    /// Show the state of a running agent.
    Status(run::StatusArgs),
    /// List, follow or explain the findings the agent raised.
    #[command(alias = "alerts")]
    Findings(findings::FindingsArgs),
    /// Mark a finding benign (the baseline learns it), or withdraw that.
    Ack(findings::AckArgs),
    /// Run safe attack drills against the running agent and report which
    /// were flagged, by which finding, how fast (needs root).
    Drill(drill::DrillArgs),
    /// Write a self-contained HTML report: learning curve, clusters, score
    /// distribution, findings, drops, sink health.
    Report(report::ReportArgs),
    /// One drill's actions (internal, started by `monitor drill`).
    #[command(hide = true)]
    DrillStep(drill::DrillStepArgs),
    /// Print the default configuration, or check a file.
    #[command(subcommand)]
    Config(run::ConfigCommand),
    /// Show, export or import the learned model.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Capture kernel events and write them as JSON Lines (needs root).
    Record(record::RecordArgs),
    /// Evaluate the model on a public dataset (ADFA-LD).
    Eval(eval::EvalArgs),
    /// Run a recorded stream through learning and detection; findings on stdout.
    Replay(replay::ReplayArgs),
    /// Load every eBPF program under every setting and report what the
    /// kernel's verifier spent on each (needs root); fails if one is refused
    /// or over the budget.
    Verifier(verifier::VerifierArgs),
    /// Benchmark floor: attach only an empty program to every syscall and
    /// wait for SIGTERM (used by `cargo xtask bench overhead`).
    #[command(hide = true)]
    BenchFloor,
}

/// `monitor bench-floor`.
pub async fn bench_floor() -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut signals = ShutdownSignals::install().context("cannot install signal handlers")?;
    let probe =
        crate::kernel::FloorProbe::attach().context("cannot attach the empty sys_enter program")?;
    eprintln!("monitor: ready (empty sys_enter hook attached)");
    signals.recv().await;
    drop(probe);
    Ok(())
}

/// Sets up `tracing` on stderr.
pub fn init_logging(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
