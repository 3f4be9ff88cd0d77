//! `monitor model show|export|import`.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::{model::persist, state::paths::StatePaths};

/// `monitor model`.
#[derive(Debug, clap::Subcommand)]
pub enum ModelCommand {
    /// Describe a model file (default: the agent's).
    Show {
        /// The model file.
        file: Option<PathBuf>,
        /// The agent's state directory (for the default file).
        #[arg(long, value_name = "DIR", default_value = "/var/lib/monitor")]
        state_dir: PathBuf,
    },
    /// Copy the agent's model to a file, to seed identical hosts.
    Export {
        /// Destination.
        file: PathBuf,
        /// The agent's state directory.
        #[arg(long, value_name = "DIR", default_value = "/var/lib/monitor")]
        state_dir: PathBuf,
    },
    /// Install a model file (checked first) as the agent's model; the agent
    /// detects with it from its next start.
    Import {
        /// Source.
        file: PathBuf,
        /// The agent's state directory.
        #[arg(long, value_name = "DIR", default_value = "/var/lib/monitor")]
        state_dir: PathBuf,
    },
}

/// Runs `monitor model ...`.
pub fn run(cmd: &ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Show { file, state_dir } => {
            let path = file
                .clone()
                .unwrap_or_else(|| StatePaths::new(state_dir).model());
            let m = persist::load(&path)?;
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let b = &m.baseline;
            println!(
                "model      {} ({:.1} KiB, format {})",
                path.display(),
                size as f64 / 1024.0,
                persist::FORMAT_VERSION
            );
            println!(
                "learned    {} on {} by monitor {}; saved {}",
                m.created, m.host, m.agent_version, m.saved
            );
            println!(
                "baseline   {} windows; {} features ({} syscalls)",
                b.windows,
                b.space.len(),
                b.space.vocabulary.len()
            );
            println!(
                "calibrated on {} cross-validated windows; global model: {} clusters",
                b.calibration.windows,
                b.global.clusters.centroids.len()
            );
            println!("novelty rates (host-wide, per window):");
            for (kind, rate) in &b.calibration.novelty_rates {
                println!(
                    "  {:<22} {rate:.2e}  ({})",
                    format!("{kind:?}"),
                    kind.describe()
                );
            }
            let mut programs: Vec<_> = b.programs.iter().collect();
            programs.sort_by_key(|(_, p)| std::cmp::Reverse(p.windows));
            println!("programs with their own model ({}):", programs.len());
            for (name, p) in programs.iter().take(30) {
                println!(
                    "  {:>6} windows  {} clusters  {:>3} syscalls  {}",
                    p.windows,
                    p.clusters.centroids.len(),
                    p.syscalls.len(),
                    name
                );
            }
            if programs.len() > 30 {
                println!("  ... and {} more", programs.len() - 30);
            }
            println!(
                "sequence model: {}",
                if b.sequence.is_some() {
                    "yes (traces with sequences)"
                } else {
                    "no (live windows)"
                }
            );
            Ok(())
        }
        ModelCommand::Export { file, state_dir } => {
            let from = StatePaths::new(state_dir).model();
            let m = persist::load(&from)?;
            let bytes = persist::save(file, &m)?;
            println!(
                "exported {} ({bytes} bytes, {} windows) to {}",
                from.display(),
                m.baseline.windows,
                file.display()
            );
            Ok(())
        }
        ModelCommand::Import { file, state_dir } => {
            let m = persist::load(file)
                .with_context(|| format!("{} cannot be imported", file.display()))?;
            crate::state::paths::prepare_state_dir(state_dir)?;
            // A running agent would overwrite the imported model with its
            // own at its next save: refuse while one holds the directory.
            let _lock = crate::state::paths::StateLock::take(state_dir).context(
                "a model cannot be imported while the agent runs on this state directory: stop the agent (systemctl stop monitor), import, then start it",
            )?;
            let to = StatePaths::new(state_dir).model();
            persist::save(&to, &m)?;
            println!(
                "imported a baseline of {} windows learned on {} into {}; start the agent to use it",
                m.baseline.windows,
                m.host,
                to.display()
            );
            Ok(())
        }
    }
}
