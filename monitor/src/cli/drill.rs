//! `monitor drill`: run attack drills against the running agent.

use std::{path::PathBuf, time::Duration};

use crate::drill::{self, RunSettings, steps::StepContext};

/// `monitor drill`.
#[derive(Debug, clap::Args)]
pub struct DrillArgs {
    /// Drills to run (see --list).
    pub names: Vec<String>,
    /// Run every drill.
    #[arg(long, conflicts_with = "names")]
    pub all: bool,
    /// Describe each drill in one line and exit.
    #[arg(long)]
    pub list: bool,
    /// How long to wait for a drill's finding after it ends.
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Print one JSON object per drill instead of the table.
    #[arg(long)]
    pub json: bool,
    /// The running agent's state directory.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/monitor")]
    pub state_dir: PathBuf,
}

/// `monitor drill-step` (internal: one drill's actions, in a process of
/// their own).
#[derive(Debug, clap::Args)]
pub struct DrillStepArgs {
    /// The drill.
    pub name: String,
    /// Its private directory.
    #[arg(long)]
    pub sandbox: PathBuf,
    /// Its unique tag.
    #[arg(long)]
    pub tag: String,
    /// The agent's pid.
    #[arg(long)]
    pub agent_pid: Option<u32>,
    /// The agent's state directory.
    #[arg(long)]
    pub state_dir: PathBuf,
}

/// Runs `monitor drill`. Exits non-zero if a drill was not flagged.
pub fn run(args: &DrillArgs) -> anyhow::Result<()> {
    if args.list {
        print!("{}", drill::list());
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "drills write under /etc, /root and /var/log and change users: run them as root"
        );
    }
    let drills = drill::select(&args.names, args.all)?;
    let outcomes = drill::run(
        &drills,
        &RunSettings {
            state_dir: args.state_dir.clone(),
            timeout: args.timeout,
        },
    )?;
    if args.json {
        for o in &outcomes {
            let line = crate::display::json_with_visible_escapes(serde_json::to_vec(o)?);
            println!("{}", String::from_utf8_lossy(&line));
        }
    } else {
        print!("{}", drill::table(&outcomes));
    }
    let missed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.flagged)
        .map(|o| o.drill.as_str())
        .collect();
    if !missed.is_empty() {
        anyhow::bail!("not flagged: {}", missed.join(", "));
    }
    Ok(())
}

/// Runs `monitor drill-step`.
pub fn step(args: &DrillStepArgs) -> anyhow::Result<()> {
    Ok(drill::steps::run(
        &args.name,
        &StepContext {
            sandbox: args.sandbox.clone(),
            tag: args.tag.clone(),
            agent_pid: args.agent_pid,
            state_dir: args.state_dir.clone(),
        },
    )?)
}
