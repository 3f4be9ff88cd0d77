//! `cargo xtask run`: build, then run the agent as root.

use std::process::Command;

use anyhow::Context as _;

use crate::prepare;

pub fn run(args: Vec<String>) -> anyhow::Result<()> {
    let agent = prepare::build()?;
    prepare::mounts()?;
    let args = if args.is_empty() {
        vec!["run".to_owned()]
    } else {
        args
    };
    prepare::step(
        "..",
        "agent",
        &format!("{} {}", agent.display(), args.join(" ")),
    );
    let mut cmd = if prepare::is_root() {
        Command::new(&agent)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg("-E").arg(&agent);
        sudo
    };
    let status = cmd
        .args(&args)
        .status()
        .with_context(|| format!("cannot start {}", agent.display()))?;
    if !status.success() {
        anyhow::bail!("the agent exited with {status}");
    }
    Ok(())
}
