//! `cargo xtask bench startup`: how soon `monitor run`, on its defaults,
//! captures its first exec after being started.
//!
//! Each round starts the agent (defaults, plus `--raw-events` so captured
//! execs reach stdout, a fresh state directory, no API) and, from the same
//! instant, execs `/bin/true startup-probe-R-N` every 20 ms. The first probe
//! found on the agent's stdout bounds the start-up: capture was running by
//! the time that probe was started. The agent's own log gives the part spent
//! loading and attaching the eBPF programs (mostly the verifier).

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::prepare;

/// What the issue asks of it.
const FLOOR: Duration = Duration::from_secs(3);
const ROUNDS: usize = 5;
const PROBE_EVERY: Duration = Duration::from_millis(20);
const GIVE_UP: Duration = Duration::from_secs(60);

struct Round {
    first_exec: Duration,
    load_attach_ms: Option<u64>,
}

pub fn run() -> anyhow::Result<()> {
    if !prepare::is_root() {
        bail!("the agent needs root; run `sudo -E cargo xtask bench startup`");
    }
    let agent = prepare::build()?;
    prepare::mounts()?;
    let mut rounds = Vec::new();
    for round in 1..=ROUNDS {
        let r = one_round(&agent, round)?;
        println!(
            "round {round}: first exec captured {:.2} s after start (programs loaded and attached in {} ms)",
            r.first_exec.as_secs_f64(),
            r.load_attach_ms.map_or("?".into(), |m| m.to_string())
        );
        rounds.push(r);
    }
    let mut secs: Vec<f64> = rounds.iter().map(|r| r.first_exec.as_secs_f64()).collect();
    secs.sort_by(f64::total_cmp);
    let median = secs[secs.len() / 2];
    let worst = secs[secs.len() - 1];
    let mut loads: Vec<u64> = rounds.iter().filter_map(|r| r.load_attach_ms).collect();
    loads.sort_unstable();
    let report = format!(
        "{}, {}: `monitor run` on defaults, first exec captured after median {median:.2} s, worst {worst:.2} s of {ROUNDS} rounds \
         (x{:.2} and x{:.2} of the {} s floor); programs loaded and attached in median {} ms\n",
        super::machine_line(),
        super::date(),
        median / FLOOR.as_secs_f64(),
        worst / FLOOR.as_secs_f64(),
        FLOOR.as_secs(),
        loads
            .get(loads.len() / 2)
            .map_or("?".into(), |m| m.to_string()),
    );
    print!("{report}");
    super::write_section(
        &prepare::root().join("docs/performance.md"),
        "startup",
        "Start-up",
        &report,
    )?;
    if worst > FLOOR.as_secs_f64() {
        bail!(
            "start-up over the {} s floor: {worst:.2} s",
            FLOOR.as_secs()
        );
    }
    Ok(())
}

fn one_round(agent: &Path, round: usize) -> anyhow::Result<Round> {
    let dir = std::env::temp_dir().join(format!("monitor-bench-startup-{round}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let stdout = dir.join("stdout.jsonl");
    let stderr = dir.join("stderr.log");
    let started = Instant::now();
    let mut child = Command::new(agent)
        .args(["run", "--raw-events", "--api-listen", ""])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout)?)
        .stderr(std::fs::File::create(&stderr)?)
        .spawn()
        .context("cannot start the agent")?;
    let mut probes: Vec<Duration> = Vec::new();
    let found = loop {
        let at = started.elapsed();
        if at > GIVE_UP {
            break None;
        }
        let token = format!("startup-probe-{round}-{}", probes.len());
        probes.push(at);
        let _ = Command::new("/bin/true").arg(&token).status();
        let out = std::fs::read_to_string(&stdout).unwrap_or_default();
        if let Some(first) =
            (0..probes.len()).find(|i| out.contains(&format!("startup-probe-{round}-{i}\"")))
        {
            break Some(probes[first]);
        }
        std::thread::sleep(PROBE_EVERY);
    };
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let log = std::fs::read_to_string(&stderr).unwrap_or_default();
    let Some(first_exec) = found else {
        bail!(
            "no probe exec captured within {} s; agent log:\n{log}",
            GIVE_UP.as_secs()
        );
    };
    let load_attach_ms = log
        .lines()
        .find(|l| l.contains("eBPF programs loaded and attached"))
        .and_then(|l| {
            let at = l.find("took_ms")? + "took_ms".len();
            l[at..]
                .trim_start_matches(|c: char| !c.is_ascii_digit())
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        });
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Round {
        first_exec,
        load_attach_ms,
    })
}
