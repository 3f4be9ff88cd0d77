//! `monitor eval adfa DIR`: the model on the ADFA-LD dataset.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::model::eval::{Dataset, evaluate};

/// Arguments of `monitor eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Which dataset (only `adfa` today).
    #[arg(value_parser = ["adfa"])]
    pub dataset: String,
    /// The dataset directory (e.g. ../shared/datasets/adfa-ld/ADFA-LD).
    pub dir: PathBuf,
    /// Write one CSV row per test trace (`path,label,score`) here.
    #[arg(long, value_name = "PATH")]
    pub scores: Option<PathBuf>,
}

/// Runs the evaluation and prints the metrics table.
pub fn run(args: &EvalArgs) -> anyhow::Result<()> {
    let data = Dataset::load(&args.dir)?;
    let report = evaluate(&data)?;
    print!("{}", report.render());
    if let Some(path) = &args.scores {
        std::fs::write(path, report.csv())
            .with_context(|| format!("cannot write scores to {}", path.display()))?;
        println!(
            "scores of {} test traces written to {}",
            report.scores.len(),
            path.display()
        );
    }
    Ok(())
}
