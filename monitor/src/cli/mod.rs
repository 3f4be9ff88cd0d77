//! Command-line commands. Each returns `anyhow::Result`; `main` prints the
//! error chain once and maps it to exit code 2.

pub mod record;

use clap::{Parser, Subcommand};

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
    /// Capture kernel events and write them as JSON Lines (needs root).
    Record(record::RecordArgs),
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

/// Waits for SIGINT or SIGTERM.
pub async fn shutdown_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
