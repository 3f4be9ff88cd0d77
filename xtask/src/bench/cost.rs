//! The agent's direct cost on a workload, counted instead of timed.
//!
//! On a small shared VM, wall-clock ratios move by 5-30% from one round to
//! the next: more than the 5% floors they are read against. This pass adds
//! up what the agent itself spends instead, from counters, which move far
//! less with the host's speed of the moment:
//! - the run time of its eBPF programs, which the kernel sums per program
//!   while `kernel.bpf_stats_enabled` is on;
//! - the agent process's own CPU time;
//!
//! both over the CPU time of the workload. What no counter sees is left
//! out: the hook's dispatch before a program runs (the 'empty hook'
//! configuration times that), and caches the agent cools for the workload.
//!
//! The statistics read a clock around every program run, which costs tens
//! of nanoseconds each time on a VM (62-72 ns here, more than the body of
//! the agent's busiest program); an empty program measured the same way
//! gives that cost, and it is subtracted.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context as _;

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled` is on while this lives, and off again after.
/// Only for the counting pass: the statistics cost every program run a
/// clock read, so they must be off while runs are timed.
pub(super) struct StatsOn(());

impl StatsOn {
    /// Turns the statistics on. Refuses if they already are: someone else
    /// turned them on, and the timed rounds would pay for them.
    pub(super) fn enable() -> anyhow::Result<Self> {
        let now = std::fs::read_to_string(STATS_SYSCTL)
            .with_context(|| format!("cannot read {STATS_SYSCTL}"))?;
        if now.trim() != "0" {
            anyhow::bail!(
                "kernel.bpf_stats_enabled is on: every program run would pay for its clock \
                 reads in the timed rounds. Turn it off first \
                 (`sysctl kernel.bpf_stats_enabled=0`)"
            );
        }
        std::fs::write(STATS_SYSCTL, "1")
            .with_context(|| format!("cannot turn on BPF run-time statistics ({STATS_SYSCTL})"))?;
        Ok(Self(()))
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(STATS_SYSCTL, "0") {
            eprintln!("cannot turn {STATS_SYSCTL} off again: {e}");
        }
    }
}

/// Summed run time and run count of a process's tracing programs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct ProgramTime {
    pub ns: u64,
    pub runs: u64,
}

impl ProgramTime {
    /// What was added since `before`.
    pub(super) fn since(self, before: ProgramTime) -> ProgramTime {
        ProgramTime {
            ns: self.ns.saturating_sub(before.ns),
            runs: self.runs.saturating_sub(before.runs),
        }
    }
}

/// The tracing programs that process `pid` holds, each counted once
/// however many fds refer to it.
pub(super) fn program_time(pid: u32) -> anyhow::Result<ProgramTime> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut by_id = BTreeMap::new();
    for fd in std::fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))? {
        // An fd may be closed meanwhile.
        let Ok(text) = std::fs::read_to_string(fd?.path()) else {
            continue;
        };
        if let Some((id, time)) = parse_program(&text) {
            by_id.insert(id, time);
        }
    }
    Ok(by_id
        .values()
        .fold(ProgramTime::default(), |sum, t| ProgramTime {
            ns: sum.ns + t.ns,
            runs: sum.runs + t.runs,
        }))
}

/// The program id and statistics in an fdinfo text, if it is a tracing
/// program.
fn parse_program(fdinfo: &str) -> Option<(u64, ProgramTime)> {
    if !is_tracing_program(fdinfo) {
        return None;
    }
    let field = |name: &str| {
        fdinfo
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    Some((
        field("prog_id:")?,
        ProgramTime {
            ns: field("run_time_ns:")?,
            runs: field("run_cnt:")?,
        },
    ))
}

/// True if `fdinfo` (of `/proc/PID/fdinfo/FD`) is a BPF program of a type
/// that hooks kernel events: kprobe, tracepoint, perf event, raw
/// tracepoint or BTF tracing (`tp_btf`, fentry).
pub(super) fn is_tracing_program(fdinfo: &str) -> bool {
    fdinfo.lines().any(|line| {
        line.strip_prefix("prog_type:")
            .and_then(|t| t.trim().parse::<u32>().ok())
            .is_some_and(|t| matches!(t, 2 | 5 | 7 | 17 | 26))
    })
}

/// CPU time of every thread of process `pid`, to the nanosecond (the
/// process's CPU clock; `/proc/PID/stat` counts in 10 ms ticks).
pub(super) fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let mut clock: libc::clockid_t = 0;
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: both calls write only into the locals passed.
    let ok = unsafe {
        libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) == 0
            && libc::clock_gettime(clock, &mut now) == 0
    };
    if !ok {
        anyhow::bail!("cannot read the CPU clock of pid {pid}");
    }
    Ok(Duration::new(now.tv_sec as u64, now.tv_nsec as u32))
}

/// CPU time (user + system) of this process's children that have been
/// waited for, their own waited-for children included.
pub(super) fn children_cpu() -> Duration {
    // SAFETY: an all-zero rusage is valid; getrusage writes into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid rusage to write.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let of = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    of(usage.ru_utime) + of(usage.ru_stime)
}

/// One workload run under the agent, counted.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cost {
    /// The agent's programs during the run (and the 300 ms after it).
    pub programs: ProgramTime,
    /// The agent's own CPU over the same time.
    pub agent_cpu: Duration,
    /// The workload's CPU time, program runs in its context included.
    pub workload_cpu: Duration,
}

impl Cost {
    /// Program time less the statistics' own cost of `stats_ns_per_run`.
    pub(super) fn program_body_ns(&self, stats_ns_per_run: f64) -> f64 {
        (self.programs.ns as f64 - self.programs.runs as f64 * stats_ns_per_run).max(0.0)
    }

    /// The workload's CPU time as it would be without the statistics
    /// (most program runs are in its context, and each paid for them).
    pub(super) fn workload_ns(&self, stats_ns_per_run: f64) -> f64 {
        let stats = self.programs.runs as f64 * stats_ns_per_run;
        (self.workload_cpu.as_nanos() as f64 - stats).max(1.0)
    }

    /// What the workload would have used without the programs' bodies.
    /// The hooks' dispatch is still in it, so it stands for the empty hook.
    fn alone_ns(&self, stats_ns_per_run: f64) -> f64 {
        (self.workload_ns(stats_ns_per_run) - self.program_body_ns(stats_ns_per_run)).max(1.0)
    }

    /// The workload's CPU time over its time alone: the share it pays on
    /// its own CPU for the programs, whichever core the agent runs on.
    pub(super) fn in_line_ratio(&self, stats_ns_per_run: f64) -> f64 {
        self.workload_ns(stats_ns_per_run) / self.alone_ns(stats_ns_per_run)
    }

    /// The same with the agent's CPU added: the slowdown if all of it were
    /// paid in line, on a CPU the workload keeps busy.
    pub(super) fn ratio(&self, stats_ns_per_run: f64) -> f64 {
        self.in_line_ratio(stats_ns_per_run)
            + self.agent_cpu.as_nanos() as f64 / self.alone_ns(stats_ns_per_run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracing_programs_are_told_apart_from_other_fds() {
        let tp_btf = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\nprog_type:\t26\n\
                      prog_jited:\t1\nprog_tag:\t59f4a931744dcdc6\n";
        assert!(is_tracing_program(tp_btf));
        assert!(is_tracing_program("prog_type:\t5\n"));
        // A cgroup device program (systemd), a map, a plain file.
        assert!(!is_tracing_program("prog_type:\t15\nprog_jited:\t1\n"));
        assert!(!is_tracing_program("map_type:\t27\nkey_size:\t0\n"));
        assert!(!is_tracing_program("pos:\t0\nflags:\t0100000\n"));
    }

    #[test]
    fn program_statistics_are_read_from_fdinfo() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nprog_type:\t26\nprog_jited:\t1\n\
                      prog_tag:\t59f4a931744dcdc6\nmemlock:\t4096\nprog_id:\t8526\n\
                      run_time_ns:\t6430000\nrun_cnt:\t38628\nrecursion_misses:\t0\n";
        assert_eq!(
            parse_program(fdinfo),
            Some((
                8526,
                ProgramTime {
                    ns: 6_430_000,
                    runs: 38_628
                }
            ))
        );
        // A kernel without the statistics fields gives nothing, not zeros.
        assert_eq!(parse_program("prog_type:\t26\nprog_id:\t3\n"), None);
        assert_eq!(parse_program("prog_type:\t15\nprog_id:\t3\n"), None);
    }

    #[test]
    fn the_cost_subtracts_the_statistics_and_counts_the_agent() {
        let cost = Cost {
            programs: ProgramTime {
                ns: 150_000_000,
                runs: 5_000_000,
            },
            agent_cpu: Duration::from_millis(20),
            workload_cpu: Duration::from_secs(2),
        };
        // 20 ns of the 30 per run are the statistics' clock reads: 100 ms
        // of the workload's 2 s, and 50 ms of bodies, so 1.85 s alone,
        // 1.9 s with the programs and 1.92 s with the agent too.
        assert!((cost.program_body_ns(20.0) - 50e6).abs() < 1.0);
        assert!((cost.workload_ns(20.0) - 1.9e9).abs() < 1.0);
        assert!((cost.ratio(20.0) - 1.92 / 1.85).abs() < 1e-9);
        assert!((cost.in_line_ratio(20.0) - 1.9 / 1.85).abs() < 1e-9);
        // Statistics dearer than the whole measured time leave no body.
        assert_eq!(cost.program_body_ns(100.0), 0.0);
    }
}
