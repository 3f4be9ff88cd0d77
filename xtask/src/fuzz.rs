//! `cargo xtask fuzz --seconds N`: every fuzz target under `fuzz/` (cargo
//! fuzz, libFuzzer, nightly; optimised, with debug assertions and overflow
//! checks, so a length that wraps is a crash) for N seconds each, from its
//! checked-in seeds
//! (`fuzz/corpus/TARGET`). New inputs go to `target/fuzz/corpus/TARGET`,
//! crashes to `target/fuzz/artifacts/TARGET/`. Prints executions per second
//! and the corpus size of each target, and fails if one crashed.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
};

use anyhow::{Context, bail};

use crate::prepare::{self, run_cmd, step};

/// cargo-fuzz, pinned.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// What one target's run gave.
struct Run {
    target: String,
    ok: bool,
    executions: u64,
    per_second: u64,
    corpus: usize,
    log: std::path::PathBuf,
}

pub fn fuzz(seconds: u64, jobs: usize, only: Option<String>) -> anyhow::Result<()> {
    prepare::nightly_rust_src()?;
    cargo_fuzz()?;
    let root = prepare::root();
    let dir = root.join("fuzz");
    let out = root.join("target/fuzz");
    step(
        "run",
        "fuzz targets",
        "build (sanitizers; minutes the first time)",
    );
    run_cmd(
        prepare::cargo()
            .current_dir(&dir)
            .env("PATH", prepare::path_with_cargo_bin())
            .args(["+nightly", "fuzz", "build", "-O", "-a"]),
    )?;
    let listed = prepare::output(
        prepare::cargo()
            .current_dir(&dir)
            .env("PATH", prepare::path_with_cargo_bin())
            .args(["+nightly", "fuzz", "list"]),
    )
    .context("cargo fuzz list failed")?;
    let targets: Vec<String> = listed
        .lines()
        .map(str::trim)
        .filter(|t| !t.is_empty() && only.as_deref().is_none_or(|o| t.contains(o)))
        .map(str::to_owned)
        .collect();
    if targets.is_empty() {
        bail!("no fuzz target matches {only:?}");
    }
    let mut runs = Vec::new();
    let mut running: Vec<(String, Child, std::path::PathBuf)> = Vec::new();
    let mut queue = targets.into_iter();
    loop {
        while running.len() < jobs.max(1) {
            let Some(target) = queue.next() else { break };
            step("run", "fuzz", &format!("{target} for {seconds} s"));
            let (child, log) = start(&dir, &out, &target, seconds)?;
            running.push((target, child, log));
        }
        if running.is_empty() {
            break;
        }
        let (target, mut child, log) = running.remove(0);
        let status = child
            .wait()
            .with_context(|| format!("waiting for {target}"))?;
        runs.push(read_run(target, status.success(), log, &out));
    }
    println!(
        "\n{:<16} {:>12} {:>10} {:>8}  result",
        "target", "executions", "exec/s", "corpus"
    );
    for r in &runs {
        println!(
            "{:<16} {:>12} {:>10} {:>8}  {}",
            r.target,
            r.executions,
            r.per_second,
            r.corpus,
            if r.ok { "0 crashes" } else { "CRASHED" }
        );
    }
    let failed: Vec<&Run> = runs.iter().filter(|r| !r.ok).collect();
    if !failed.is_empty() {
        for r in &failed {
            eprintln!("--- {} (log {}):", r.target, r.log.display());
            let log = std::fs::read_to_string(&r.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
        bail!(
            "fuzzing found crashes in {:?}; inputs in {}",
            failed.iter().map(|r| &r.target).collect::<Vec<_>>(),
            out.join("artifacts").display()
        );
    }
    Ok(())
}

fn start(
    dir: &Path,
    out: &Path,
    target: &str,
    seconds: u64,
) -> anyhow::Result<(Child, std::path::PathBuf)> {
    let corpus = out.join("corpus").join(target);
    let artifacts = out.join("artifacts").join(target);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    let log = out.join(format!("{target}.log"));
    let log_file = std::fs::File::create(&log)?;
    let child = prepare::cargo()
        .current_dir(dir)
        .env("PATH", prepare::path_with_cargo_bin())
        .args(["+nightly", "fuzz", "run", "-O", "-a", target])
        .arg(&corpus)
        .arg(dir.join("corpus").join(target))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1")
        .arg("-rss_limit_mb=2048")
        .arg("-max_len=65536")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("cannot start cargo fuzz run {target}"))?;
    Ok((child, log))
}

fn read_run(target: String, ok: bool, log: std::path::PathBuf, out: &Path) -> Run {
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let stat = |name: &str| {
        text.lines()
            .rev()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let corpus = std::fs::read_dir(out.join("corpus").join(&target))
        .map(|d| d.count())
        .unwrap_or(0);
    Run {
        executions: stat("number_of_executed_units"),
        per_second: stat("average_exec_per_sec"),
        corpus,
        ok,
        target,
        log,
    }
}

/// cargo-fuzz from crates.io, if missing or another version.
fn cargo_fuzz() -> anyhow::Result<()> {
    let version = prepare::output(
        Command::new("cargo")
            .env("PATH", prepare::path_with_cargo_bin())
            .args(["fuzz", "--version"]),
    )
    .unwrap_or_default();
    if version.contains(CARGO_FUZZ_VERSION) {
        step("ok", "cargo-fuzz", version.trim());
        return Ok(());
    }
    step(
        "run",
        "cargo-fuzz",
        &format!("cargo install cargo-fuzz {CARGO_FUZZ_VERSION}"),
    );
    run_cmd(prepare::cargo().args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]))
}
