//! `cargo xtask bench overhead`: what the agent costs the workloads it watches.
//!
//! Four workloads, five configurations, several rounds, interleaved (each
//! round runs every configuration, in an order rotated per round, so drift in
//! the machine's speed spreads over all of them); medians and ratios to
//! `none` are printed and written to `docs/performance.md`.
//!
//! Workloads (static C programs compiled here, so their syscalls are exactly
//! the ones counted):
//! - W1: 5,000,000 `getppid` calls in a tight loop;
//! - W2: 3,000 sequential fork+exec of `/bin/true`;
//! - W3: 300,000 open+read+close of a small file;
//! - W4: `make -j2` of 50 small C files.
//!
//! Configurations: none; an empty BPF program on every syscall (the floor
//! for hooking every syscall); the agent with everything on; the agent with
//! syscall counts off; bpftrace counting per (pid, syscall).
//!
//! Before the timed rounds, a counting pass (`cost`) adds up the agent's
//! own CPU and its programs' run time over one run of each workload: the
//! same cost from counters, which move far less with the host's speed.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::cost;
use crate::prepare::{self, step};

const W1_CALLS: u64 = 5_000_000;
const W2_EXECS: u64 = 3_000;
const W3_OPENS: u64 = 300_000;
const W4_FILES: usize = 50;

const W1_C: &str = r#"
#include <unistd.h>
#include <sys/syscall.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    for (long i = 0; i < n; i++) syscall(SYS_getppid);
    return 0;
}
"#;

const W2_C: &str = r#"
#include <unistd.h>
#include <stdlib.h>
#include <sys/wait.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    char *child_argv[] = {"true", argv[2], NULL};
    char *envp[] = {NULL};
    for (long i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid == 0) { execve("/bin/true", child_argv, envp); _exit(127); }
        int status;
        waitpid(pid, &status, 0);
    }
    return 0;
}
"#;

const W3_C: &str = r#"
#include <fcntl.h>
#include <unistd.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    char buf[256];
    for (long i = 0; i < n; i++) {
        int fd = open(argv[2], O_RDONLY);
        if (fd < 0) return 1;
        if (read(fd, buf, sizeof buf) < 0) return 1;
        close(fd);
    }
    return 0;
}
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Config {
    None,
    EmptyHook,
    AgentFull,
    AgentNoCounts,
    Bpftrace,
}

impl Config {
    const ALL: [Config; 5] = [
        Config::None,
        Config::EmptyHook,
        Config::AgentFull,
        Config::AgentNoCounts,
        Config::Bpftrace,
    ];

    fn name(self) -> &'static str {
        match self {
            Config::None => "none",
            Config::EmptyHook => "empty hook",
            Config::AgentFull => "agent (all on)",
            Config::AgentNoCounts => "agent (counts off)",
            Config::Bpftrace => "bpftrace",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Workload {
    W1,
    W2,
    W3,
    W4,
}

impl Workload {
    const ALL: [Workload; 4] = [Workload::W1, Workload::W2, Workload::W3, Workload::W4];

    /// Runs per configuration and round. W2 and W4 have the tightest
    /// floors (x1.05) and the most run-to-run noise on a small VM (even
    /// 'none' varies by a tenth), so their medians take more samples.
    fn repeats(self) -> usize {
        match self {
            Workload::W2 => 3,
            Workload::W4 => 2,
            Workload::W1 | Workload::W3 => 1,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Workload::W1 => "W1 5M getppid",
            Workload::W2 => "W2 3k fork+exec",
            Workload::W3 => "W3 300k open+read+close",
            Workload::W4 => "W4 make -j2, 50 C files",
        }
    }
}

/// One run of a workload.
struct Ran {
    took: Duration,
    pid: u32,
    /// CPU time of the workload's processes (all of them, waited for).
    cpu: Duration,
}

/// What the counting pass found (see `cost`).
struct Accounting {
    /// The statistics' own cost per program run, from an empty program.
    stats_ns_per_run: f64,
    costs: BTreeMap<Workload, cost::Cost>,
}

/// A running configuration.
struct Running {
    child: Option<Child>,
    output: Option<PathBuf>,
    stderr_log: Option<PathBuf>,
}

impl Running {
    /// The configuration's process (0 for 'none').
    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }
}

/// What one agent run saw.
#[derive(Debug, Default, Clone)]
struct AgentRun {
    cpu_secs: f64,
    peak_rss_kib: u64,
    w2_execs: u64,
    w2_exec_drops: u64,
    w3_openat: u64,
    w3_counts_drops: u64,
}

struct Bench {
    dir: PathBuf,
    agent: PathBuf,
    rounds: usize,
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    if !prepare::is_root() {
        bail!(
            "the overhead benchmark loads eBPF programs and needs root; run `sudo -E cargo xtask bench overhead`"
        );
    }
    let rounds = match args.iter().position(|a| a == "--rounds") {
        Some(i) => args
            .get(i + 1)
            .context("--rounds needs a number")?
            .parse()
            .context("--rounds")?,
        None => 5,
    };
    let agent = prepare::build()?;
    prepare::mounts()?;
    prepare::apt_packages(&[("bpftrace", "bpftrace"), ("make", "make"), ("gcc", "gcc")])?;
    check_audit();
    check_no_other_tracers()?;
    let dir = std::env::temp_dir().join("monitor-bench-overhead");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let bench = Bench { dir, agent, rounds };
    bench.compile()?;
    let started = Instant::now();
    // First, so that a kernel without the statistics fails the run at once.
    let accounting = bench.account()?;
    let (times, agents) = bench.measure()?;
    let idle = bench.idle()?;
    let report = render(
        &times,
        &agents,
        &accounting,
        idle,
        rounds,
        started.elapsed(),
    );
    println!("\n{report}");
    let doc = prepare::root().join("docs/performance.md");
    super::write_section(&doc, "overhead", "Overhead on workloads", &report)?;
    step("done", "report", &doc.display().to_string());
    Ok(())
}

/// Waits for a signalled child; kills it if it has not exited by `limit`
/// (said loudly: for the agent, its figures are then lost and the run fails).
fn wait_or_kill(child: &mut Child, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    step(
        "!!",
        "stop",
        &format!(
            "pid {} still running {limit:?} after the signal; killed",
            child.id()
        ),
    );
    child.kill()?;
    Ok(child.wait()?)
}

/// Audit rules make every task pay an audit context on each syscall; the
/// numbers would then measure auditd, not us.
fn check_audit() {
    match prepare::output(Command::new("auditctl").arg("-l")) {
        Some(rules) if !rules.contains("No rules") && !rules.trim().is_empty() => {
            step(
                "!!",
                "auditd",
                "audit rules are loaded: figures include audit's cost (`auditctl -D`)",
            );
        }
        _ => step("ok", "auditd", "no audit rules"),
    }
}

/// Another tracer on the syscall or scheduler hooks (an agent left running,
/// a bpftrace) would be measured in every configuration, 'none' included,
/// and the ratios would mean nothing: the run refuses to start.
fn check_no_other_tracers() -> anyhow::Result<()> {
    let me = std::process::id();
    let mut holders = Vec::new();
    for entry in std::fs::read_dir("/proc").context("cannot list /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        // A process may end, or keep its fds private, meanwhile.
        let Ok(fds) = std::fs::read_dir(entry.path().join("fdinfo")) else {
            continue;
        };
        let holds_tracer = fds.filter_map(Result::ok).any(|fd| {
            std::fs::read_to_string(fd.path()).is_ok_and(|info| cost::is_tracing_program(&info))
        });
        if holds_tracer {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            holders.push(format!("{pid} ({})", comm.trim()));
        }
    }
    if !holders.is_empty() {
        bail!(
            "other processes hold tracing BPF programs: {}. Stop them first: every \
             configuration, 'none' included, would pay for them",
            holders.join(", ")
        );
    }
    step(
        "ok",
        "tracers",
        "no other process holds a tracing BPF program",
    );
    Ok(())
}

impl Bench {
    fn compile(&self) -> anyhow::Result<()> {
        for (name, src) in [("w1", W1_C), ("w2", W2_C), ("w3", W3_C)] {
            let c = self.dir.join(format!("{name}.c"));
            std::fs::write(&c, src)?;
            prepare::run_cmd(
                Command::new("gcc")
                    .args(["-O2", "-static", "-o"])
                    .arg(self.dir.join(name))
                    .arg(&c),
            )
            .with_context(|| format!("cannot compile workload {name}"))?;
        }
        std::fs::write(self.dir.join("small.txt"), "a small file\n")?;
        let w4 = self.dir.join("w4");
        std::fs::create_dir_all(&w4)?;
        let mut objs = Vec::new();
        for i in 0..W4_FILES {
            let src = format!(
                "#include <string.h>\n#include <stdio.h>\n\
                 static int table_{i}[64];\n\
                 int f{i}(int x) {{ for (int k = 0; k < 64; k++) table_{i}[k] = x * k + {i}; return table_{i}[x & 63]; }}\n\
                 int g{i}(const char *s) {{ char b[64]; snprintf(b, sizeof b, \"%s-{i}\", s); return (int)strlen(b); }}\n"
            );
            std::fs::write(w4.join(format!("f{i}.c")), src)?;
            objs.push(format!("f{i}.o"));
        }
        std::fs::write(
            w4.join("Makefile"),
            format!(
                "OBJS = {}\nall: libw4.a\nlibw4.a: $(OBJS)\n\tar rcs $@ $(OBJS)\n%.o: %.c\n\tgcc -O2 -c $< -o $@\nclean:\n\trm -f $(OBJS) libw4.a\n",
                objs.join(" ")
            ),
        )?;
        step(
            "ok",
            "workloads",
            &format!("compiled in {}", self.dir.display()),
        );
        Ok(())
    }

    /// Runs one workload.
    fn workload(&self, w: Workload, token: &str) -> anyhow::Result<Ran> {
        let mut cmd = match w {
            Workload::W1 => {
                let mut c = Command::new(self.dir.join("w1"));
                c.arg(W1_CALLS.to_string());
                c
            }
            Workload::W2 => {
                let mut c = Command::new(self.dir.join("w2"));
                c.arg(W2_EXECS.to_string()).arg(token);
                c
            }
            Workload::W3 => {
                let mut c = Command::new(self.dir.join("w3"));
                c.arg(W3_OPENS.to_string()).arg(self.dir.join("small.txt"));
                c
            }
            Workload::W4 => {
                prepare::run_cmd(
                    Command::new("make")
                        .args(["-s", "clean"])
                        .current_dir(self.dir.join("w4")),
                )?;
                let mut c = Command::new("make");
                c.args(["-s", "-j2"]).current_dir(self.dir.join("w4"));
                c
            }
        };
        let cpu_before = cost::children_cpu();
        let started = Instant::now();
        let mut child = cmd
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot run {w:?}"))?;
        let pid = child.id();
        let status = child.wait()?;
        let took = started.elapsed();
        if !status.success() {
            bail!("workload {w:?} failed: {status}");
        }
        Ok(Ran {
            took,
            pid,
            cpu: cost::children_cpu().saturating_sub(cpu_before),
        })
    }

    fn start(&self, config: Config, round: usize) -> anyhow::Result<Running> {
        let mut running = Running {
            child: None,
            output: None,
            stderr_log: None,
        };
        let (mut cmd, ready_marker) = match config {
            Config::None => return Ok(running),
            Config::EmptyHook => {
                let mut c = Command::new(&self.agent);
                c.arg("bench-floor");
                (c, "ready")
            }
            Config::AgentFull | Config::AgentNoCounts => {
                let out = self.dir.join(format!("agent-{round}-{config:?}.jsonl"));
                let mut c = Command::new(&self.agent);
                c.args(["record", "--output"]).arg(&out);
                if config == Config::AgentNoCounts {
                    c.arg("--no-syscall-counts");
                }
                running.output = Some(out);
                (c, "ready")
            }
            Config::Bpftrace => {
                let mut c = Command::new("bpftrace");
                c.args([
                    "-e",
                    "tracepoint:raw_syscalls:sys_enter { @[pid, args->id] = count(); }",
                ]);
                c.stdout(Stdio::null());
                (c, "Attaching")
            }
        };
        let log = self.dir.join(format!("stderr-{round}-{config:?}.log"));
        let mut child = cmd
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .stdout(if config == Config::Bpftrace {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .spawn()
            .with_context(|| format!("cannot start {}", config.name()))?;
        // bpftrace announces on stdout, the agent on stderr.
        let stream: Box<dyn std::io::Read + Send> = if config == Config::Bpftrace {
            Box::new(child.stdout.take().expect("piped"))
        } else {
            Box::new(child.stderr.take().expect("piped"))
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let log_path = log.clone();
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(&log_path).ok();
            let mut sent = false;
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if let Some(f) = file.as_mut() {
                    use std::io::Write as _;
                    let _ = writeln!(f, "{line}");
                }
                if !sent && line.contains(ready_marker) {
                    let _ = tx.send(());
                    sent = true;
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            bail!(
                "{} did not become ready (see {})",
                config.name(),
                log.display()
            );
        }
        // Let start-up work (process table seeding, first windows) settle.
        std::thread::sleep(Duration::from_millis(500));
        running.child = Some(child);
        running.stderr_log = Some(log);
        Ok(running)
    }

    /// Stops a configuration; for the agent, returns what it saw.
    fn stop(
        &self,
        running: Running,
        w2_token: &str,
        w3_pid: u32,
    ) -> anyhow::Result<Option<AgentRun>> {
        let Some(mut child) = running.child else {
            return Ok(None);
        };
        let pid = child.id();
        let (cpu_secs, peak_rss_kib) = proc_usage(pid)?;
        // The agent gets SIGTERM, as from systemd. bpftrace stops on SIGINT
        // (Ctrl-C): it once ignored a SIGTERM here and the run waited six
        // minutes for it. The empty hook takes either.
        let signal = if running.output.is_some() {
            libc::SIGTERM
        } else {
            libc::SIGINT
        };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, signal) };
        let status = wait_or_kill(&mut child, Duration::from_secs(20))?;
        let Some(out) = running.output else {
            return Ok(None);
        };
        if !status.success() {
            bail!(
                "the agent exited with {status}; see {:?}",
                running.stderr_log
            );
        }
        let mut run = AgentRun {
            cpu_secs,
            peak_rss_kib,
            ..Default::default()
        };
        let text = std::fs::read_to_string(&out)
            .with_context(|| format!("cannot read {}", out.display()))?;
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("bad JSON from the agent: {line}"))?;
            let total = |k: &str| v["totals"][k].as_u64().unwrap_or(0);
            match v["kind"].as_str() {
                // The children exec /bin/true with the token; the w2 driver's
                // own exec carries it too, so match the path.
                Some("exec")
                    if v["path"].as_str().is_some_and(|p| p.ends_with("/true"))
                        && v["args"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|x| x == w2_token)) =>
                {
                    run.w2_execs += 1;
                }
                Some("syscall_counts") if v["process"]["pid"] == w3_pid => {
                    run.w3_openat += v["counts"]["openat"].as_u64().unwrap_or(0);
                }
                Some("loss") => {
                    run.w2_exec_drops = run.w2_exec_drops.max(total("ringbuf_full.exec"));
                    run.w3_counts_drops = run
                        .w3_counts_drops
                        .max(total("ringbuf_full.thread_exit") + total("counts_map_full"));
                }
                _ => {}
            }
        }
        let _ = std::fs::remove_file(&out);
        Ok(Some(run))
    }

    #[allow(clippy::type_complexity, reason = "local result tables")]
    fn measure(
        &self,
    ) -> anyhow::Result<(
        BTreeMap<(Config, Workload), Vec<f64>>,
        BTreeMap<Config, Vec<AgentRun>>,
    )> {
        let mut times: BTreeMap<(Config, Workload), Vec<f64>> = BTreeMap::new();
        let mut agents: BTreeMap<Config, Vec<AgentRun>> = BTreeMap::new();
        for round in 0..self.rounds {
            let mut order = Config::ALL.to_vec();
            let n = order.len();
            order.rotate_left(round % n);
            for config in order {
                let running = self.start(config, round)?;
                let token = format!("bench-w2-{round}-{config:?}");
                let mut w3_pid = 0;
                let mut line = Vec::new();
                for w in Workload::ALL {
                    for _ in 0..w.repeats() {
                        let ran = self.workload(w, &token)?;
                        if w == Workload::W3 {
                            w3_pid = ran.pid;
                        }
                        let took = ran.took.as_secs_f64();
                        times.entry((config, w)).or_default().push(took);
                        line.push(format!("{w:?} {took:.2}s"));
                    }
                }
                // Give the agent time to drain the last windows before stopping.
                std::thread::sleep(Duration::from_millis(300));
                if let Some(run) = self.stop(running, &token, w3_pid)? {
                    agents.entry(config).or_default().push(run);
                }
                step(
                    "..",
                    &format!("round {}/{} {}", round + 1, self.rounds, config.name()),
                    &line.join(", "),
                );
            }
        }
        Ok((times, agents))
    }

    /// The counting pass (see `cost`): one agent (all on) counted over each
    /// workload, between two measures of the statistics' own cost per
    /// program run, whose mean is used (it moves with the host's speed).
    /// The statistics are off again when it returns, however it returns:
    /// the timed rounds must not pay for them.
    fn account(&self) -> anyhow::Result<Accounting> {
        const ROUND: usize = 998; // names its files apart from the rounds'
        let _stats = cost::StatsOn::enable()?;
        let stats_before = self.stats_cost_per_run(ROUND)?;
        let agent = self.start(Config::AgentFull, ROUND)?;
        let pid = agent.pid();
        let mut costs = BTreeMap::new();
        for w in Workload::ALL {
            let (programs, agent_cpu) = (cost::program_time(pid)?, cost::process_cpu(pid)?);
            let ran = self.workload(w, "bench-account")?;
            // The agent handles the last events of the run meanwhile.
            std::thread::sleep(Duration::from_millis(300));
            let cost = cost::Cost {
                programs: cost::program_time(pid)?.since(programs),
                agent_cpu: cost::process_cpu(pid)?.saturating_sub(agent_cpu),
                workload_cpu: ran.cpu,
            };
            step(
                "..",
                &format!("counted {w:?}"),
                &format!(
                    "programs {:.1} ms in {} runs (the statistics' cost included), agent \
                     {:.1} ms, workload {:.2} s",
                    cost.programs.ns as f64 / 1e6,
                    cost.programs.runs,
                    cost.agent_cpu.as_secs_f64() * 1e3,
                    cost.workload_cpu.as_secs_f64()
                ),
            );
            costs.insert(w, cost);
        }
        self.stop(agent, "bench-account", 0)?;
        let stats_after = self.stats_cost_per_run(ROUND)?;
        step(
            "ok",
            "statistics' own cost",
            &format!("{stats_before:.1} ns per run before the agent, {stats_after:.1} ns after"),
        );
        Ok(Accounting {
            stats_ns_per_run: (stats_before + stats_after) / 2.0,
            costs,
        })
    }

    /// What the BPF run-time statistics measure for an empty program on
    /// every syscall, per run, over W1: their own cost.
    fn stats_cost_per_run(&self, round: usize) -> anyhow::Result<f64> {
        let floor = self.start(Config::EmptyHook, round)?;
        let before = cost::program_time(floor.pid())?;
        self.workload(Workload::W1, "")?;
        let empty = cost::program_time(floor.pid())?.since(before);
        self.stop(floor, "", 0)?;
        if empty.runs < W1_CALLS {
            bail!(
                "the empty hook ran {} times over {W1_CALLS} syscalls: its statistics are \
                 not counting",
                empty.runs
            );
        }
        Ok(empty.ns as f64 / empty.runs as f64)
    }

    /// The agent on an idle host: CPU share of one core and RSS.
    fn idle(&self) -> anyhow::Result<(f64, u64)> {
        let running = self.start(Config::AgentFull, 999)?;
        let pid = running.pid();
        std::thread::sleep(Duration::from_secs(5));
        let (cpu0, _) = proc_usage(pid)?;
        let window = Duration::from_secs(20);
        std::thread::sleep(window);
        let (cpu1, rss) = proc_usage(pid)?;
        let _ = self.stop(running, "", 0)?;
        let share = (cpu1 - cpu0) / window.as_secs_f64() * 100.0;
        step(
            "ok",
            "idle agent",
            &format!("{share:.2}% of one core, peak RSS {} KiB", rss),
        );
        Ok((share, rss))
    }
}

/// CPU seconds (user + system, every thread) and peak RSS (KiB) of a process.
fn proc_usage(pid: u32) -> anyhow::Result<(f64, u64)> {
    Ok((
        cost::process_cpu(pid)?.as_secs_f64(),
        super::proc_kib(pid, "VmHWM:"),
    ))
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

/// The interquartile range of `values` over their median: how far apart
/// runs of one configuration land, so a ratio inside it reads as noise.
fn spread(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.len() < 2 {
        return f64::NAN;
    }
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.75) - at(0.25)) / median(values)
}

/// The issue's floors for the agent with everything on: workload, the
/// configuration it is compared with, and the most the ratio may be.
const FLOORS: [(Workload, Config, f64); 4] = [
    (Workload::W1, Config::EmptyHook, 1.15),
    (Workload::W2, Config::None, 1.05),
    (Workload::W3, Config::None, 1.6),
    (Workload::W4, Config::None, 1.05),
];

/// The ratio of runs `a` to runs `b` as a Hodges-Lehmann estimate (the
/// median of the ratios of every run of `a` to every run of `b`) with its
/// distribution-free 95% interval (the Mann-Whitney order statistics of the
/// same ratios). `None` when there are too few runs for an interval.
fn ratio_interval(a: &[f64], b: &[f64]) -> Option<(f64, f64, f64)> {
    let (m, n) = (a.len(), b.len());
    let mut ratios: Vec<f64> = a
        .iter()
        .flat_map(|x| b.iter().map(move |y| x / y))
        .collect();
    ratios.sort_by(f64::total_cmp);
    let pairs = (m * n) as f64;
    let sd = (pairs * (m + n + 1) as f64 / 12.0).sqrt();
    // Pairwise ratios cut from each end: the interval is from the k-th
    // smallest to the k-th largest.
    let k = (pairs / 2.0 - 1.96 * sd).floor();
    if k < 1.0 {
        return None;
    }
    let k = k as usize;
    Some((median(&ratios), ratios[k - 1], ratios[ratios.len() - k]))
}

/// Whether a floor is met, and whether this run's noise could overturn
/// it: the ratio of medians decides, and the pairwise interval says whether
/// it reaches across the floor (either way).
fn floor_verdict(ratio: f64, lo: f64, hi: f64, limit: f64) -> &'static str {
    match (ratio <= limit, hi <= limit, lo > limit) {
        (true, true, _) => "met",
        (true, false, _) => "met, within noise",
        (false, _, true) => "not met",
        (false, _, false) => "not met, within noise",
    }
}

/// The floors table: each ratio twice (of the medians, and Hodges-Lehmann
/// with its interval), and whether the floor is met beyond this run's noise.
fn render_floors(times: &BTreeMap<(Config, Workload), Vec<f64>>) -> String {
    let mut out = String::from(
        "\n| floor: agent (all on) against | ratio of medians | pairwise ratio (95% interval) | at most | verdict |\n|---|---|---|---|---|\n",
    );
    for (w, base, limit) in FLOORS {
        let agent = &times[&(Config::AgentFull, w)];
        let against = &times[&(base, w)];
        let ratio = median(agent) / median(against);
        let (pairwise, verdict) = match ratio_interval(agent, against) {
            Some((mid, lo, hi)) => (
                format!("x{mid:.3} (x{lo:.3}-{hi:.3})"),
                floor_verdict(ratio, lo, hi, limit),
            ),
            None => (
                "too few runs".to_owned(),
                if ratio > limit { "not met" } else { "met" },
            ),
        };
        out.push_str(&format!(
            "| {}: {} | x{ratio:.3} | {pairwise} | x{limit} | {verdict} |\n",
            w.label(),
            base.name()
        ));
    }
    out.push_str(
        "\nThe pairwise ratio is the median of every agent run over every run it is compared \
         with; its interval treats runs as independent, which the interleaved rounds only \
         approximate. \"Within noise\": the interval reaches across the floor, so another \
         run may well give the other verdict.\n",
    );
    out
}

/// The counting pass's table (see `cost`).
fn render_accounting(accounting: &Accounting) -> String {
    let per_run = accounting.stats_ns_per_run;
    let mut out = String::from(
        "\nCounted, not timed: one agent (all on), with the kernel's BPF run-time statistics on, \
         over one run of each workload (`xtask/src/bench/cost.rs`).\n\n\
         | workload | agent's programs: runs, time | agent's own CPU | workload's CPU | direct cost: programs | direct cost: all |\n\
         |---|---|---|---|---|---|\n",
    );
    for (w, cost) in &accounting.costs {
        out.push_str(&format!(
            "| {} | {} runs, {:.1} ms | {:.1} ms | {:.3} s | x{:.3} | x{:.3} |\n",
            w.label(),
            cost.programs.runs,
            cost.program_body_ns(per_run) / 1e6,
            cost.agent_cpu.as_secs_f64() * 1e3,
            cost.workload_ns(per_run) / 1e9,
            cost.in_line_ratio(per_run),
            cost.ratio(per_run)
        ));
    }
    out.push_str(&format!(
        "\nThe programs' time is less the statistics' own clock reads, {per_run:.1} ns per run \
         as an empty program measured them (the mean of a measure before the agent's pass and \
         one after), and so is the workload's. Direct cost: the \
         workload's CPU time, over the same less the programs' time; \"all\" adds the agent's \
         own CPU, which a workload pays when it keeps every core busy (W4) and barely when it \
         leaves one idle (W2 runs one process at a time). Counters move far less with the \
         host's speed than the timings above, but they leave out the hook's dispatch and the \
         caches the agent cools: the baseline is the empty hook, as in W1's floor. For the \
         floors against none, multiply by the empty hook's ratio to none.\n"
    ));
    out
}

fn render(
    times: &BTreeMap<(Config, Workload), Vec<f64>>,
    agents: &BTreeMap<Config, Vec<AgentRun>>,
    accounting: &Accounting,
    idle: (f64, u64),
    rounds: usize,
    took: Duration,
) -> String {
    let mut out = String::new();
    let machine = super::machine_line();
    out.push_str(&format!(
        "Measured {} on {machine}; {rounds} interleaved rounds (W2 run {} times and W4 {} times per round), medians; whole run {:.0} s.\n\n",
        super::date(),
        Workload::W2.repeats(),
        Workload::W4.repeats(),
        took.as_secs_f64()
    ));
    out.push_str("| workload | ");
    out.push_str(
        &Config::ALL
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(" | "),
    );
    out.push_str(" | spread of 'none' |\n|---|");
    out.push_str(&"---|".repeat(Config::ALL.len() + 1));
    out.push('\n');
    for w in Workload::ALL {
        let none = median(&times[&(Config::None, w)]);
        out.push_str(&format!("| {} |", w.label()));
        for c in Config::ALL {
            let m = median(&times[&(c, w)]);
            if c == Config::None {
                out.push_str(&format!(" {m:.3} s |"));
            } else {
                out.push_str(&format!(" {m:.3} s (x{:.2}) |", m / none));
            }
        }
        out.push_str(&format!(
            " {:.0}% |\n",
            spread(&times[&(Config::None, w)]) * 100.0
        ));
    }
    out.push_str(
        "\nThe spread is the interquartile range of the 'none' runs over their median: \
         this machine's run-to-run noise on that workload, against which to read the ratios.\n",
    );
    out.push_str(&render_floors(times));
    out.push_str(&render_accounting(accounting));
    out.push_str("\n| agent | W2 execs captured + dropped / expected | W3 openat counted + dropped / expected | agent CPU s per round | agent peak RSS |\n|---|---|---|---|---|\n");
    for c in [Config::AgentFull, Config::AgentNoCounts] {
        let runs = agents.get(&c).cloned().unwrap_or_default();
        let sum = |f: fn(&AgentRun) -> u64| runs.iter().map(f).sum::<u64>();
        let n = runs.len() as u64;
        let cpu = median(&runs.iter().map(|r| r.cpu_secs).collect::<Vec<_>>());
        let rss = runs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0);
        let w3 = if c == Config::AgentFull {
            format!(
                "{} + {} / {}",
                sum(|r| r.w3_openat),
                sum(|r| r.w3_counts_drops),
                W3_OPENS * n
            )
        } else {
            "counts off".to_owned()
        };
        out.push_str(&format!(
            "| {} | {} + {} / {} | {} | {:.2} | {:.1} MiB |\n",
            c.name(),
            sum(|r| r.w2_execs),
            sum(|r| r.w2_exec_drops),
            W2_EXECS * Workload::W2.repeats() as u64 * n,
            w3,
            cpu,
            rss as f64 / 1024.0
        ));
    }
    out.push_str(&format!(
        "\nIdle host, agent (all on): {:.2}% of one core over 20 s, peak RSS {:.1} MiB (floors: 2%, 64 MiB).\n",
        idle.0,
        idle.1 as f64 / 1024.0
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pairwise_ratio_of_equal_samples_is_one_and_its_interval_holds_one() {
        let runs = [1.0, 1.1, 0.9, 1.05, 0.95];
        let (mid, lo, hi) = ratio_interval(&runs, &runs).unwrap();
        assert!((mid - 1.0).abs() < 1e-12, "{mid}");
        assert!(lo < 1.0 && hi > 1.0, "{lo}-{hi}");
    }

    #[test]
    fn the_pairwise_ratio_finds_a_shift_and_narrows_with_more_runs() {
        let base: Vec<f64> = (0..15).map(|i| 1.0 + 0.01 * f64::from(i % 5)).collect();
        let slower: Vec<f64> = base.iter().map(|x| x * 1.2).collect();
        let (mid, lo, hi) = ratio_interval(&slower, &base).unwrap();
        assert!((mid - 1.2).abs() < 0.01, "{mid}");
        assert!(lo > 1.1 && hi < 1.3 && lo <= mid && mid <= hi, "{lo}-{hi}");
        let (_, lo5, hi5) = ratio_interval(&slower[..5], &base[..5]).unwrap();
        assert!(hi5 - lo5 > hi - lo, "5 runs {lo5}-{hi5}, 15 runs {lo}-{hi}");
    }

    #[test]
    fn too_few_runs_give_no_interval() {
        assert_eq!(ratio_interval(&[1.0, 1.1], &[1.0, 1.2]), None);
        assert_eq!(ratio_interval(&[], &[1.0]), None);
    }

    #[test]
    fn the_floors_table_says_whether_noise_could_overturn_a_verdict() {
        let mut times = BTreeMap::new();
        let none: Vec<f64> = (0..15).map(|i| 1.0 + 0.02 * f64::from(i % 7)).collect();
        for c in Config::ALL {
            for w in Workload::ALL {
                times.insert((c, w), none.clone());
            }
        }
        // W2 3% over none with a 6% spread: under x1.05, not beyond noise.
        let w2: Vec<f64> = none.iter().map(|x| x * 1.03).collect();
        times.insert((Config::AgentFull, Workload::W2), w2);
        // W4 10% over: not met, beyond noise.
        let w4: Vec<f64> = none.iter().map(|x| x * 1.10).collect();
        times.insert((Config::AgentFull, Workload::W4), w4);
        // W3 x1.62 against x1.6: over, but not beyond noise.
        let w3: Vec<f64> = none.iter().map(|x| x * 1.62).collect();
        times.insert((Config::AgentFull, Workload::W3), w3);
        let table = render_floors(&times);
        let row = |label: &str| {
            table
                .lines()
                .find(|l| l.contains(label))
                .unwrap_or_else(|| panic!("no row {label} in\n{table}"))
                .to_owned()
        };
        assert!(row("W2 3k").ends_with("| met, within noise |"), "{table}");
        assert!(row("W4 make").ends_with("| not met |"), "{table}");
        assert!(
            row("W3 300k").ends_with("| not met, within noise |"),
            "{table}"
        );
        assert!(row("W1 5M").contains("empty hook"), "{table}");
        assert!(row("W1 5M").ends_with("| met |"), "{table}");
    }
}
