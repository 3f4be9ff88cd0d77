//! The agent's CPU scheduling: out of the way of the processes it watches
//! while it keeps up, a fair share of the CPU when it falls behind.
//!
//! The agent starts under `SCHED_BATCH` ([`start_as_batch`]): the fair share
//! of any process at its nice level, with wakeups that never preempt a
//! running task. Once capture runs, a small guard thread ([`spawn_guard`])
//! moves every other thread of the agent to `SCHED_IDLE` while the event
//! pipeline keeps up: any runnable process of the host then runs before
//! the agent, which works in the CPU time nobody else wants. When the
//! pipeline falls behind (the source has not found the ring empty for
//! [`BEHIND`]), whether because the host is busy or hostile (CPU hogs, a
//! fork storm) or because events come faster than idle time can absorb,
//! the guard puts the threads back under `SCHED_BATCH`, so the agent cannot
//! be starved. The guard itself stays under `SCHED_BATCH` and sleeps
//! between checks, so it runs promptly when it wakes.
//!
//! Measured on the fork+exec storm of the overhead benchmark (W2), with one
//! agent switched between the two policies on alternate runs: under
//! `SCHED_IDLE` a run took x0.983 of the run beside it under `SCHED_BATCH`
//! (median of 180 pairs), about 1.5% of W2 out of the agent's 3-6%. See
//! docs/performance.md.
//!
//! An agent started under a policy other than the default (systemd's
//! `CPUSchedulingPolicy=`, `chrt`) keeps it, on every thread, for good.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

/// The pipeline is behind when the source last found the ring empty this
/// long ago (it looks every 20 ms when nothing wakes it).
pub const BEHIND: Duration = Duration::from_millis(250);

/// The pipeline keeps up when the source found the ring empty within this.
pub const KEEPING_UP: Duration = Duration::from_millis(100);

/// How long the pipeline must keep up before the agent yields again: long
/// enough that a starved agent does not flap between the two policies on
/// every check.
pub const CALM_FOR: Duration = Duration::from_secs(2);

/// How often the guard checks.
pub const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Name of the guard thread (in `/proc/PID/task/TID/comm`).
pub const GUARD_THREAD: &str = "monitor-sched";

/// Set by [`start_as_batch`] when the agent chose its own policy, so the
/// guard may change it; false when an operator chose one.
static ADAPTIVE: AtomicBool = AtomicBool::new(false);

/// Puts the calling thread, and every thread it creates afterwards, under
/// `SCHED_BATCH`, unless it was started under a policy other than the
/// default, which it then keeps (and [`spawn_guard`] does nothing). Call
/// before the runtime starts its threads.
pub fn start_as_batch() {
    // SAFETY: reads the calling thread's policy.
    let policy = unsafe { libc::sched_getscheduler(0) };
    if policy != libc::SCHED_OTHER {
        tracing::debug!(
            policy,
            "keeping the scheduling policy the agent was started with"
        );
        return;
    }
    match set_policy(0, libc::SCHED_BATCH) {
        Ok(()) => ADAPTIVE.store(true, Ordering::Relaxed),
        Err(error) => tracing::warn!(
            %error,
            "could not switch to SCHED_BATCH; the agent's wakeups may preempt the processes it watches"
        ),
    }
}

/// Starts the guard thread. `lag` says how long ago the pipeline last
/// caught up, or `None` once capture is stopping: the guard then leaves
/// every thread under `SCHED_BATCH`, for the final drain, and ends.
pub fn spawn_guard(lag: impl Fn() -> Option<Duration> + Send + 'static) {
    if !ADAPTIVE.load(Ordering::Relaxed) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name(GUARD_THREAD.into())
        .spawn(move || guard(&lag));
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the scheduling guard; the agent stays under SCHED_BATCH");
    }
}

/// The policy the agent's threads should have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `SCHED_BATCH`: behind, or not yet known to keep up.
    Share,
    /// `SCHED_IDLE`: keeping up.
    Yield,
}

impl Mode {
    /// The policy and its name.
    fn policy(self) -> (i32, &'static str) {
        match self {
            Mode::Share => (libc::SCHED_BATCH, "SCHED_BATCH"),
            Mode::Yield => (libc::SCHED_IDLE, "SCHED_IDLE"),
        }
    }
}

/// If the agent falls behind again within this of yielding, the host is
/// busy for longer than a burst: it waits twice as long before yielding
/// next time (up to [`CALM_FOR_MAX`]), instead of being starved for a
/// quarter of a second every few seconds.
const FELL_BEHIND_SOON: Duration = Duration::from_secs(10);

/// The longest wait before yielding again.
const CALM_FOR_MAX: Duration = Duration::from_secs(60);

/// The guard's decisions, apart from the clock and the system calls.
#[derive(Debug)]
struct Decider {
    mode: Mode,
    /// Since when the pipeline has kept up without a break.
    calm_since: Option<Instant>,
    /// How long it must keep up before the agent yields.
    calm_for: Duration,
    /// When the agent last yielded.
    yielded_at: Option<Instant>,
}

impl Decider {
    fn new() -> Self {
        Self {
            mode: Mode::Share,
            calm_since: None,
            calm_for: CALM_FOR,
            yielded_at: None,
        }
    }

    /// Takes one lag reading; returns the new mode when it changes.
    fn observe(&mut self, lag: Duration, now: Instant) -> Option<Mode> {
        if lag > KEEPING_UP {
            self.calm_since = None;
        } else {
            self.calm_since.get_or_insert(now);
        }
        match self.mode {
            Mode::Yield if lag > BEHIND => {
                let soon = self
                    .yielded_at
                    .is_some_and(|t| now.duration_since(t) < FELL_BEHIND_SOON);
                self.calm_for = if soon {
                    (self.calm_for * 2).min(CALM_FOR_MAX)
                } else {
                    CALM_FOR
                };
                self.mode = Mode::Share;
                Some(Mode::Share)
            }
            Mode::Share
                if self
                    .calm_since
                    .is_some_and(|t| now.duration_since(t) >= self.calm_for) =>
            {
                self.mode = Mode::Yield;
                self.yielded_at = Some(now);
                Some(Mode::Yield)
            }
            _ => None,
        }
    }
}

fn guard(lag: &dyn Fn() -> Option<Duration>) {
    let mut decider = Decider::new();
    loop {
        std::thread::sleep(CHECK_EVERY);
        let Some(behind_by) = lag() else {
            break;
        };
        let Some(mode) = decider.observe(behind_by, Instant::now()) else {
            continue;
        };
        let (policy, name) = mode.policy();
        if let Err(error) = set_other_threads(policy) {
            tracing::warn!(%error, "cannot change the agent's scheduling policy; it stays under SCHED_BATCH");
            let _ = set_other_threads(libc::SCHED_BATCH);
            return;
        }
        tracing::debug!(
            policy = name,
            lag_ms = behind_by.as_millis() as u64,
            calm_for_s = decider.calm_for.as_secs(),
            "changed the agent's scheduling policy"
        );
    }
    if decider.mode == Mode::Yield
        && let Err(error) = set_other_threads(libc::SCHED_BATCH)
    {
        tracing::warn!(%error, "cannot put the agent back under SCHED_BATCH for its final drain");
    }
}

/// Sets `policy` on every thread of the agent but the calling one. Threads
/// created later inherit it from the thread that creates them.
fn set_other_threads(policy: i32) -> std::io::Result<()> {
    // SAFETY: no arguments; returns the caller's thread id.
    let me = unsafe { libc::gettid() };
    for entry in std::fs::read_dir("/proc/self/task")? {
        let Some(tid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if tid == me {
            continue;
        }
        match set_policy(tid, policy) {
            Ok(()) => {}
            // The thread ended since the listing.
            Err(err) if err.raw_os_error() == Some(libc::ESRCH) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

fn set_policy(tid: libc::pid_t, policy: i32) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: changes one thread's policy; reads one sched_param.
    if unsafe { libc::sched_setscheduler(tid, policy, &param) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Duration = Duration::from_millis(30);
    const SLOW: Duration = Duration::from_millis(400);
    const STEP: Duration = Duration::from_millis(100);

    /// Feeds `lag` every `STEP` for `span` from `*now`; returns the changes.
    fn feed(d: &mut Decider, now: &mut Instant, lag: Duration, span: Duration) -> Vec<Mode> {
        let end = *now + span;
        let mut changes = Vec::new();
        while *now < end {
            *now += STEP;
            changes.extend(d.observe(lag, *now));
        }
        changes
    }

    #[test]
    fn yields_only_after_keeping_up_for_a_while() {
        let mut d = Decider::new();
        let mut now = Instant::now();
        assert_eq!(feed(&mut d, &mut now, FAST, CALM_FOR - STEP), vec![]);
        assert_eq!(feed(&mut d, &mut now, FAST, STEP * 2), vec![Mode::Yield]);
    }

    #[test]
    fn shares_as_soon_as_behind_but_not_for_a_lag_between_the_thresholds() {
        let mut d = Decider::new();
        let mut now = Instant::now();
        feed(&mut d, &mut now, FAST, CALM_FOR * 2);
        assert_eq!(d.mode, Mode::Yield);
        assert_eq!(feed(&mut d, &mut now, BEHIND, STEP * 5), vec![]);
        assert_eq!(feed(&mut d, &mut now, SLOW, STEP), vec![Mode::Share]);
        // A lag between the thresholds is not calm: it never yields.
        assert_eq!(feed(&mut d, &mut now, BEHIND, CALM_FOR * 5), vec![]);
    }

    #[test]
    fn falling_behind_soon_after_yielding_doubles_the_wait_up_to_a_bound() {
        let mut d = Decider::new();
        let mut now = Instant::now();
        feed(&mut d, &mut now, FAST, CALM_FOR + STEP);
        let mut waits = Vec::new();
        for _ in 0..8 {
            assert_eq!(feed(&mut d, &mut now, SLOW, STEP), vec![Mode::Share]);
            waits.push(d.calm_for);
            // Keeps up just long enough to yield, then falls behind again.
            let wait = d.calm_for;
            let yielded = feed(&mut d, &mut now, FAST, wait + STEP);
            assert_eq!(yielded, vec![Mode::Yield]);
        }
        let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [4, 8, 16, 32, 60, 60, 60, 60]);
        // Yielded for long enough: the next fall resets the wait.
        feed(&mut d, &mut now, FAST, FELL_BEHIND_SOON);
        assert_eq!(feed(&mut d, &mut now, SLOW, STEP), vec![Mode::Share]);
        assert_eq!(d.calm_for, CALM_FOR);
    }
}
