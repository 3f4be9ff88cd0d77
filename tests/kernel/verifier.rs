//! The verifier budget (issue 18): every program, under every setting,
//! verifies on this kernel in at most a tenth of the kernel's limit.

use std::process::Command;

use monitor::kernel::verifier::{BUDGET, ProgramCost, Switches};
use monitor_tests::kernel_test;

use crate::cli::agent;

#[test]
fn r18_every_program_verifies_within_budget_in_every_setting() {
    let Some(_k) = kernel_test("r18_every_program_verifies_within_budget_in_every_setting") else {
        return;
    };
    let out = Command::new(agent())
        .args(["verifier", "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let costs: Vec<ProgramCost> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    eprintln!("{}", monitor::cli::verifier::table("this kernel", &costs));
    // Every program of the object, in each of the four settings.
    let programs: std::collections::BTreeSet<&str> =
        costs.iter().map(|c| c.program.as_str()).collect();
    for name in [
        "sched_process_exec",
        "sys_enter",
        "sys_exit_net",
        "sys_exit_open",
        "sys_exit_names",
        "sys_exit_other",
    ] {
        assert!(programs.contains(name), "{name} measured: {programs:?}");
    }
    assert_eq!(costs.len(), programs.len() * Switches::ALL.len());
    for cost in &costs {
        assert!(
            cost.within_budget(),
            "{} ({}): {:?} processed instructions, budget {BUDGET}, refused: {:?}",
            cost.program,
            cost.switches.label(),
            cost.processed_insns,
            cost.refused
        );
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
