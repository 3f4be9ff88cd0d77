//! `monitor verifier`: what the kernel's verifier spends on each program.

use anyhow::Context as _;
use clap::Args;

use crate::kernel::verifier::{self, BUDGET, ProgramCost, Switches};

/// Arguments of `monitor verifier`.
#[derive(Debug, Args)]
pub struct VerifierArgs {
    /// One JSON object per program and setting, instead of a table: the
    /// cost, plus `kernel`, `settings` (the table's label), `budget` and
    /// `within_budget`.
    #[arg(long)]
    pub json: bool,
}

/// Loads every program under every setting and prints the cost; fails if
/// any program was refused or went over the budget.
pub fn run(args: &VerifierArgs) -> anyhow::Result<()> {
    let kernel = crate::kernel::features::kernel_release();
    let mut all = Vec::new();
    for switches in Switches::ALL {
        let costs = verifier::measure(switches)
            .with_context(|| format!("cannot load the programs ({})", switches.label()))?;
        all.extend(costs);
    }
    if args.json {
        for cost in &all {
            let mut line = serde_json::to_value(cost)?;
            line["kernel"] = kernel.clone().into();
            line["settings"] = cost.switches.label().into();
            line["budget"] = BUDGET.into();
            line["within_budget"] = cost.within_budget().into();
            println!("{line}");
        }
    } else {
        print!("{}", table(&kernel, &all));
    }
    let over: Vec<&ProgramCost> = all.iter().filter(|c| !c.within_budget()).collect();
    if !over.is_empty() {
        let names: Vec<String> = over
            .iter()
            .map(|c| format!("{} ({})", c.program, c.switches.label()))
            .collect();
        anyhow::bail!(
            "{} of {} loads refused or over the budget of {BUDGET} processed instructions: {}",
            over.len(),
            all.len(),
            names.join(", ")
        );
    }
    eprintln!(
        "monitor: {} loads on kernel {kernel}, all within {BUDGET} processed instructions (most: {})",
        all.len(),
        all.iter()
            .filter_map(|c| c.processed_insns)
            .max()
            .unwrap_or(0)
    );
    Ok(())
}

/// The costs as a text table.
pub fn table(kernel: &str, costs: &[ProgramCost]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<19} {:<18} {:>9} {:>6} {:>9} {:>7}  verdict",
        "kernel", "program", "settings", "insns", "peak", "load ms", "margin"
    );
    for c in costs {
        let insns = c
            .processed_insns
            .map_or_else(|| "?".into(), |n| n.to_string());
        let peak = c.peak_states.map_or_else(|| "-".into(), |n| n.to_string());
        let margin = c.processed_insns.map_or_else(
            || "?".into(),
            |n| format!("x{:.0}", f64::from(BUDGET) / f64::from(n.max(1))),
        );
        let verdict = match &c.refused {
            Some(why) => format!("REFUSED: {why}"),
            None if c.within_budget() => "ok".into(),
            None => "OVER BUDGET".into(),
        };
        let _ = writeln!(
            out,
            "{kernel:<20} {:<19} {:<18} {insns:>9} {peak:>6} {:>9.1} {margin:>7}  {verdict}",
            c.program,
            c.switches.label(),
            c.load_ms
        );
    }
    out
}
