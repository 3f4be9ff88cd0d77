//! `cargo xtask test`: everything the tests need, then every test, as root.

use anyhow::bail;

use crate::prepare::{self, run_cmd, step};

pub fn test(filter: Option<String>, kernel: Option<String>) -> anyhow::Result<()> {
    if !prepare::is_root() {
        bail!(
            "the tests load eBPF programs into the running kernel and need root; \
             run `sudo -E cargo xtask test`"
        );
    }
    // Cheap, and a cycle is a design regression: before anything slow.
    crate::cycles::run()?;
    let agent = prepare::build()?;
    match kernel.as_deref() {
        None => {
            let whole = filter.is_none();
            host_suite(&agent, filter)?;
            if whole {
                // Every parser of outside bytes, a minute each.
                crate::fuzz::fuzz(60, 2, None)?;
            }
            crate::vm::matrix("all", &agent)
        }
        Some("host") => host_suite(&agent, filter),
        Some(which) => {
            if filter.is_some() {
                bail!("a test filter applies to this kernel's suite only (`--kernel host`)");
            }
            crate::vm::matrix(which, &agent)
        }
    }
}

/// `cargo xtask verifier`: the budget table on this kernel.
pub fn verifier() -> anyhow::Result<()> {
    if !prepare::is_root() {
        bail!("loading eBPF programs needs root; run `sudo -E cargo xtask verifier`");
    }
    let agent = prepare::build()?;
    prepare::mounts()?;
    run_cmd(std::process::Command::new(&agent).arg("verifier"))
}

/// Every test of the workspace on this kernel.
fn host_suite(agent: &std::path::Path, filter: Option<String>) -> anyhow::Result<()> {
    prepare::mounts()?;
    // The output tests talk to a real rsyslogd and a real NATS JetStream
    // cluster; the OCSF tests validate against the official schema; the
    // report test renders in Chromium.
    prepare::apt_packages(&[
        ("rsyslog", "/usr/sbin/rsyslogd"),
        ("nats-server", "/usr/sbin/nats-server"),
        ("chromium", "/usr/bin/chromium"),
    ])?;
    let ocsf_python = prepare::ocsf_validator()?;
    step(
        "..",
        "cargo test",
        "unit, kernel and end-to-end tests (release profile)",
    );
    let mut cmd = prepare::cargo();
    cmd.args([
        "test",
        "--release",
        "--workspace",
        "--exclude",
        "monitor-ebpf",
    ])
    .current_dir(prepare::root())
    .env("PATH", prepare::path_with_cargo_bin())
    .env("MONITOR_BIN", agent)
    .env("MONITOR_OCSF_PYTHON", &ocsf_python)
    // Kernel tests must run here: a missing privilege is a failure, not a skip.
    .env("MONITOR_REQUIRE_KERNEL", "1");
    if let Some(filter) = filter {
        cmd.args(["--", &filter]);
    }
    run_cmd(&mut cmd)?;
    step("done", "tests", "all passed on this kernel");
    Ok(())
}
