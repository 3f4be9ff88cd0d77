//! `cargo xtask bench rss`: the agent's memory at steady state while it
//! tracks 1,000 live, active processes.
//!
//! Method: start `monitor run` (built-in defaults, a private state
//! directory, a short learning period), fork 1,000 children that each open
//! and read a file every two seconds (so every one of them has syscall
//! counts and windows, not just a process-table entry), let the agent
//! learn and switch to detection, then sample its resident memory every five
//! seconds for a minute. Reports the tracked-process count the agent itself
//! publishes in `status.json`, the steady-state RSS (median of the samples),
//! the highest sample and the kernel's peak (VmHWM), against the 64 MiB
//! floor; writes the table into `docs/performance.md`.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{proc_kib, write_section};
use crate::prepare::{self, step};

const CHILDREN: usize = 1000;
const LEARN_FOR: &str = "30s";
const STEADY: Duration = Duration::from_secs(60);
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const FLOOR_MIB: f64 = 64.0;

pub fn run() -> anyhow::Result<()> {
    if !prepare::is_root() {
        bail!(
            "the RSS benchmark runs the agent and needs root; run `sudo -E cargo xtask bench rss`"
        );
    }
    let agent = prepare::build()?;
    prepare::mounts()?;
    let dir = std::env::temp_dir().join("monitor-bench-rss");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let started = Instant::now();

    let mut monitor = start_agent(&agent, &dir)?;
    let status_file = dir.join("state/status.json");
    let result = measure(&mut monitor, &status_file);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(monitor.id() as i32, libc::SIGTERM) };
    let _ = monitor.wait();
    let report = render(&result?, started.elapsed());
    println!("\n{report}");
    let doc = prepare::root().join("docs/performance.md");
    write_section(&doc, "rss", "Memory with 1,000 live processes", &report)?;
    step("done", "report", &doc.display().to_string());
    Ok(())
}

struct Measured {
    tracked: u64,
    samples_kib: Vec<u64>,
    peak_kib: u64,
    findings: u64,
    lost: u64,
}

fn start_agent(agent: &Path, dir: &Path) -> anyhow::Result<Child> {
    let child = Command::new(agent)
        .args([
            "run",
            "--learn-for",
            LEARN_FOR,
            "--api-listen",
            "",
            "--state-dir",
        ])
        .arg(dir.join("state"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("findings.jsonl"))?)
        .stderr(std::fs::File::create(dir.join("agent.log"))?)
        .spawn()
        .context("cannot start the agent")?;
    step(
        "ok",
        "agent",
        &format!(
            "monitor run, learning for {LEARN_FOR} (log: {})",
            dir.join("agent.log").display()
        ),
    );
    Ok(child)
}

fn measure(monitor: &mut Child, status_file: &Path) -> anyhow::Result<Measured> {
    wait_for(
        monitor,
        status_file,
        "the agent to publish its status",
        |_| true,
    )?;
    let children = ActiveChildren::fork(CHILDREN)?;
    step(
        "ok",
        "children",
        &format!("{CHILDREN} active processes forked"),
    );
    wait_for(monitor, status_file, "the agent to finish learning", |s| {
        s["phase"] == "detecting"
    })?;
    step("ok", "agent", "detecting; sampling memory");
    let mut samples_kib = Vec::new();
    let deadline = Instant::now() + STEADY;
    while Instant::now() < deadline {
        std::thread::sleep(SAMPLE_EVERY);
        samples_kib.push(proc_kib(monitor.id(), "VmRSS:"));
    }
    let status = read_status(status_file).context("the agent's last status")?;
    let measured = Measured {
        tracked: status["processes"].as_u64().unwrap_or(0),
        samples_kib,
        peak_kib: proc_kib(monitor.id(), "VmHWM:"),
        findings: status["findings"].as_u64().unwrap_or(0),
        lost: status["lost"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum()),
    };
    drop(children);
    if measured.tracked < CHILDREN as u64 {
        bail!(
            "the agent tracked only {} processes with {CHILDREN} children alive",
            measured.tracked
        );
    }
    Ok(measured)
}

fn read_status(file: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(file).ok()?).ok()
}

fn wait_for(
    monitor: &mut Child,
    status_file: &Path,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(status) = monitor.try_wait()? {
            bail!("the agent exited ({status}) while waiting for {what}");
        }
        if read_status(status_file).is_some_and(|s| done(&s)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Forked children that open and read `/proc/self/stat` every two seconds
/// until dropped (or until xtask dies: they get SIGKILL with their parent).
struct ActiveChildren(Vec<libc::pid_t>);

impl ActiveChildren {
    fn fork(n: usize) -> anyhow::Result<Self> {
        let mut children = Self(Vec::with_capacity(n));
        for _ in 0..n {
            // SAFETY: xtask is single-threaded here, and the child only
            // calls async-signal-safe functions before it exits.
            match unsafe { libc::fork() } {
                -1 => bail!("fork failed: {}", std::io::Error::last_os_error()),
                0 => unsafe { active_child() },
                pid => children.0.push(pid),
            }
        }
        Ok(children)
    }
}

/// The child's whole life; never returns.
unsafe fn active_child() -> ! {
    // SAFETY: plain syscalls on stack memory.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        let mut buf = [0u8; 512];
        let pause = libc::timespec {
            tv_sec: 2,
            tv_nsec: 0,
        };
        loop {
            let fd = libc::open(c"/proc/self/stat".as_ptr(), libc::O_RDONLY);
            if fd >= 0 {
                libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                libc::close(fd);
            }
            libc::nanosleep(&pause, std::ptr::null_mut());
        }
    }
}

impl Drop for ActiveChildren {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: our own children.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for &pid in &self.0 {
            // SAFETY: reaping our own children.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        }
    }
}

fn render(m: &Measured, took: Duration) -> String {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut sorted = m.samples_kib.clone();
    sorted.sort_unstable();
    let steady = sorted.get(sorted.len() / 2).copied().unwrap_or(0);
    let highest = sorted.last().copied().unwrap_or(0);
    let verdict = if mib(steady) < FLOOR_MIB {
        "under"
    } else {
        "OVER"
    };
    format!(
        "Measured {} on {}; whole run {:.0} s.\n\n\
         | processes tracked | steady-state RSS (median of {} samples) | highest sample | peak (VmHWM) | findings | lost events |\n\
         |---|---|---|---|---|---|\n\
         | {} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {} | {} |\n\n\
         Steady-state RSS is {verdict} the {FLOOR_MIB:.0} MiB floor.\n",
        super::date(),
        super::machine_line(),
        took.as_secs_f64(),
        m.samples_kib.len(),
        m.tracked,
        mib(steady),
        mib(highest),
        mib(m.peak_kib),
        m.findings,
        m.lost,
    )
}
