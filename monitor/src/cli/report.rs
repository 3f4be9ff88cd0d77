//! `monitor report`.

use std::path::PathBuf;

use anyhow::Context as _;

/// `monitor report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Where to write the HTML file.
    #[arg(long, short = 'o', value_name = "FILE", default_value = "report.html")]
    pub output: PathBuf,
    /// The agent's state directory.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/monitor")]
    pub state_dir: PathBuf,
}

/// Runs `monitor report`.
pub fn run(args: &ReportArgs) -> anyhow::Result<()> {
    let inputs = crate::report::Inputs::read(&args.state_dir)?;
    let html = crate::report::render(&inputs);
    std::fs::write(&args.output, html)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    println!(
        "wrote {} ({} findings, {} history points{})",
        args.output.display(),
        inputs.findings.len(),
        inputs.history.len(),
        if inputs.model.is_some() {
            ", model"
        } else {
            ", no model yet"
        }
    );
    Ok(())
}
