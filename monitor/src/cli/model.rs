//! `monitor model show|export|import|publish|pull`.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::{
    fleet::{
        connection::{Endpoint, EndpointSettings},
        golden,
    },
    model::persist,
    state::paths::StatePaths,
};

/// Where the cluster's object store is, and the model's place in it.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// NATS servers (`nats://host:4222`, `tls://host:4222`; repeat the
    /// option or separate with commas).
    #[arg(
        long = "nats",
        value_name = "URL",
        required = true,
        value_delimiter = ','
    )]
    pub urls: Vec<String>,
    /// A `.creds` file (user JWT and nkey seed).
    #[arg(long, value_name = "FILE")]
    pub creds_file: Option<PathBuf>,
    /// A file holding an nkey seed.
    #[arg(long, value_name = "FILE")]
    pub nkey_file: Option<PathBuf>,
    /// A file holding a token.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Require TLS (also implied by a `tls://` url).
    #[arg(long)]
    pub tls: bool,
    /// Extra CA certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Object store bucket.
    #[arg(long, default_value = golden::DEFAULT_BUCKET)]
    pub bucket: String,
    /// The model's name in the bucket.
    #[arg(long, default_value = golden::DEFAULT_NAME)]
    pub name: String,
}

impl ClusterArgs {
    /// Connects to the cluster.
    async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        let endpoint = Endpoint::new(&EndpointSettings {
            urls: &self.urls,
            creds_file: self.creds_file.as_ref(),
            nkey_file: self.nkey_file.as_ref(),
            token_file: self.token_file.as_ref(),
            token_env: None,
            tls: self.tls,
            ca_file: self.ca_file.as_ref(),
        })
        .map_err(anyhow::Error::msg)?;
        endpoint
            .connect("monitor model")
            .await
            .map_err(anyhow::Error::msg)
    }
}

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
    /// Publish the agent's model to a NATS cluster's object store, for a
    /// fleet of identical hosts to pull (one golden baseline).
    Publish {
        /// The cluster and the model's place in it.
        #[command(flatten)]
        cluster: ClusterArgs,
        /// The agent's state directory (its model is published).
        #[arg(long, value_name = "DIR", default_value = "/var/lib/monitor")]
        state_dir: PathBuf,
        /// Replicas of the bucket, if it has to be created.
        #[arg(long, default_value_t = 3)]
        replicas: usize,
    },
    /// Pull a published model, check it (agent version, format, checksum,
    /// contents) and install it as the agent's model; the agent detects
    /// with it from its next start.
    Pull {
        /// The cluster and the model's place in it.
        #[command(flatten)]
        cluster: ClusterArgs,
        /// The agent's state directory.
        #[arg(long, value_name = "DIR", default_value = "/var/lib/monitor")]
        state_dir: PathBuf,
    },
}

/// Runs `monitor model ...`.
pub async fn run(cmd: &ModelCommand) -> anyhow::Result<()> {
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
            let to = install(state_dir, &m, "imported")?;
            println!(
                "imported a baseline of {} windows learned on {} into {}; start the agent to use it",
                m.baseline.windows,
                m.host,
                to.display()
            );
            Ok(())
        }
        ModelCommand::Publish {
            cluster,
            state_dir,
            replicas,
        } => {
            let from = StatePaths::new(state_dir).model();
            let bytes =
                std::fs::read(&from).with_context(|| format!("cannot read {}", from.display()))?;
            let m = persist::decode(&bytes, &from)
                .with_context(|| format!("{} cannot be published", from.display()))?;
            let client = cluster.connect().await?;
            let g = golden::publish(
                client,
                &cluster.bucket,
                &cluster.name,
                *replicas,
                &bytes,
                &m,
            )
            .await?;
            println!(
                "published {} ({} bytes, sha256 {}, {} windows learned on {} by monitor {}) as {:?} in bucket {:?}",
                from.display(),
                g.size,
                g.sha256,
                g.windows,
                g.learned_on,
                g.agent_version,
                cluster.name,
                cluster.bucket
            );
            Ok(())
        }
        ModelCommand::Pull { cluster, state_dir } => {
            let client = cluster.connect().await?;
            let (_, m, g) = golden::pull(client, &cluster.bucket, &cluster.name).await?;
            let to = install(state_dir, &m, "pulled")?;
            println!(
                "pulled {:?} from bucket {:?} ({} bytes, sha256 {}, {} windows learned on {}) into {}; start the agent to use it",
                cluster.name,
                cluster.bucket,
                g.size,
                g.sha256,
                g.windows,
                g.learned_on,
                to.display()
            );
            Ok(())
        }
    }
}

/// Installs `m` as the agent's model in `state_dir`; refused while an agent
/// runs there (it would overwrite the model with its own at its next save).
/// `verb` says how it came (`imported`, `pulled`) in the refusal.
fn install(
    state_dir: &std::path::Path,
    m: &persist::ModelFile,
    verb: &str,
) -> anyhow::Result<PathBuf> {
    crate::state::paths::prepare_state_dir(state_dir)?;
    let _lock = crate::state::paths::StateLock::take(state_dir).with_context(|| {
        format!("a model cannot be {verb} while the agent runs on this state directory: stop the agent (systemctl stop monitor), then start it once the model is in place")
    })?;
    let to = StatePaths::new(state_dir).model();
    persist::save(&to, m)?;
    Ok(to)
}
