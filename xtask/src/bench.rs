//! `cargo xtask bench WHICH`: benchmarks that need the real kernel or the
//! built agent. `overhead`, `rss` and `startup` are here; the model and sink benchmarks are
//! `cargo bench` targets of the agent crate, and the NATS one of the tests
//! crate (it starts a cluster with the tests' helper), which this command
//! runs too.

mod cost;
mod overhead;
mod rss;
mod startup;

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::prepare;

pub fn bench(which: &str, args: Vec<String>) -> anyhow::Result<()> {
    match which {
        "overhead" => overhead::run(&args),
        "rss" => rss::run(),
        "startup" => startup::run(),
        "model" | "sinks" => {
            crate::prepare::build()?;
            let mut cmd = crate::prepare::cargo();
            cmd.args(["bench", "--package", "monitor", "--bench", which])
                .current_dir(crate::prepare::root())
                .env("PATH", crate::prepare::path_with_cargo_bin());
            if !args.is_empty() {
                cmd.arg("--").args(&args);
            }
            crate::prepare::run_cmd(&mut cmd)
        }
        "nats" => {
            crate::prepare::build()?;
            crate::prepare::apt_packages(&[("nats-server", "/usr/sbin/nats-server")])?;
            let mut cmd = crate::prepare::cargo();
            cmd.args(["bench", "--package", "monitor-tests", "--bench", "nats"])
                .current_dir(crate::prepare::root())
                .env("PATH", crate::prepare::path_with_cargo_bin());
            crate::prepare::run_cmd(&mut cmd)
        }
        other => {
            bail!(
                "unknown benchmark `{other}`; choose overhead, rss, startup, model, sinks or nats"
            )
        }
    }
}

/// The machine, for a report: kernel, cores, CPU model.
fn machine_line() -> String {
    let kernel = prepare::output(Command::new("uname").arg("-r")).unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("Linux {} ({cores} cores, {cpu})", kernel.trim())
}

fn date() -> String {
    prepare::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Replaces the `key` section of `docs/performance.md` (between its
/// markers) with `report`, or appends it under `title`.
fn write_section(doc: &Path, key: &str, title: &str, report: &str) -> anyhow::Result<()> {
    let header = "# Performance\n\nFigures written by `cargo xtask bench overhead` and `cargo xtask bench rss`\n(see `xtask/src/bench/` for the methods). Each run replaces its section.\n";
    let existing = std::fs::read_to_string(doc).unwrap_or_default();
    let marker = format!("<!-- {key}:start -->");
    let end = format!("<!-- {key}:end -->");
    let section = format!("{marker}\n{report}{end}");
    let text = match (existing.find(&marker), existing.find(&end)) {
        (Some(a), Some(b)) => format!(
            "{}{}{}",
            &existing[..a],
            section,
            &existing[b + end.len()..]
        ),
        _ if existing.is_empty() => format!("{header}\n## {title}\n\n{section}\n"),
        _ => format!("{}\n\n## {title}\n\n{section}\n", existing.trim_end()),
    };
    std::fs::write(doc, text).with_context(|| format!("cannot write {}", doc.display()))
}

/// A `/proc/PID/status` field in KiB.
fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
