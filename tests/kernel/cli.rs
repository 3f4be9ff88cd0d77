//! The `monitor record` command as a user runs it.

use std::{
    io::BufRead,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use monitor::event::{Detail, Event};
use monitor_tests::{kernel_test, test_dir, token};

use crate::agent::Agent;

/// The agent binary (`MONITOR_BIN`, set by `cargo xtask test`, or the
/// release build next to this workspace).
pub fn agent() -> PathBuf {
    std::env::var_os("MONITOR_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/monitor"),
        PathBuf::from,
    )
}

fn parse_lines(bytes: &[u8]) -> Vec<Event> {
    bytes
        .lines()
        .map(|line| {
            let line = line.expect("utf-8 line");
            serde_json::from_str::<Event>(&line)
                .unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}"))
        })
        .collect()
}

#[test]
fn record_writes_valid_json_lines_for_hostile_names() {
    let Some(_kernel) = kernel_test("record_writes_valid_json_lines_for_hostile_names") else {
        return;
    };
    let dir = std::env::temp_dir().join(token("record"));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("events.jsonl");
    let agent = Command::new(agent())
        .args(["record", "--duration", "4", "--output"])
        .arg(&out)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start monitor record");
    std::thread::sleep(Duration::from_millis(1500));
    // A program whose name has a newline, an escape sequence and invalid UTF-8.
    let hostile = dir.join("evil\nname\x1b[31m\u{7f}");
    std::fs::copy("/bin/true", &hostile).unwrap();
    let token = token("hostile");
    let status = Command::new(&hostile)
        .arg(&token)
        .arg(std::ffi::OsStr::from_bytes_compat(b"\xff\xfe\x00?"))
        .status()
        .unwrap();
    assert!(status.success());
    let output = agent.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "monitor record failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("dropped events:"),
        "drop counters printed on exit: {stderr}"
    );

    let bytes = std::fs::read(&out).unwrap();
    assert!(bytes.ends_with(b"\n"), "last line complete");
    let events = parse_lines(&bytes);
    let exec = events
        .iter()
        .find(|e| match &e.detail {
            Detail::Exec(x) => x.args.iter().any(|a| a.as_bytes() == token.as_bytes()),
            _ => false,
        })
        .expect("exec of the hostile program");
    let Detail::Exec(x) = &exec.detail else {
        unreachable!()
    };
    assert_eq!(
        x.path.as_bytes(),
        hostile.as_os_str().as_encoded_bytes(),
        "path survives exactly"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

trait FromBytesCompat {
    fn from_bytes_compat(b: &[u8]) -> &Self;
}
impl FromBytesCompat for std::ffi::OsStr {
    fn from_bytes_compat(b: &[u8]) -> &Self {
        use std::os::unix::ffi::OsStrExt;
        // Arguments cannot hold NUL: keep the bytes before it.
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        std::ffi::OsStr::from_bytes(&b[..end])
    }
}

#[test]
fn record_stops_cleanly_on_sigterm_and_flushes() {
    let Some(_kernel) = kernel_test("record_stops_cleanly_on_sigterm_and_flushes") else {
        return;
    };
    let mut agent = Command::new(agent())
        .arg("record")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start monitor record");
    // Ready once it says so (loading can take seconds while other tests
    // load theirs); a fixed wait here made the exec race the attach.
    monitor_tests::wait_until_ready(&mut agent);
    let token = token("sigterm");
    Command::new("/bin/true").arg(&token).status().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let output = agent.wait_with_output().unwrap();
    let took = started.elapsed();
    assert!(output.status.success(), "exit status {:?}", output.status);
    // Each tracepoint hook's detach waits for RCU grace periods, one hook
    // after another in the kernel (about 50 ms each): 1.8-2.1 s for the 37
    // hooks on this machine. The service manager allows 10 s.
    assert!(took < Duration::from_secs(3), "stopped in {took:?}");
    let events = parse_lines(&output.stdout);
    assert!(
        events.iter().any(|e| match &e.detail {
            Detail::Exec(x) => x.args.iter().any(|a| a.as_bytes() == token.as_bytes()),
            _ => false,
        }),
        "the exec before SIGTERM was flushed"
    );
}

/// One busy thread per CPU, under the default policy, until dropped (also
/// when a failed assertion ends the test).
struct Hogs {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Hogs {
    fn start() -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..cpus)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// `(thread name, policy)` of every thread of process `pid`.
fn thread_policies(pid: u32) -> Vec<(String, i32)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|e| {
            let e = e.ok()?;
            let tid: i32 = e.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(e.path().join("comm")).ok()?;
            // SAFETY: reads the policy of a thread of our own child.
            let policy = unsafe { libc::sched_getscheduler(tid) };
            (policy >= 0).then(|| (name.trim().to_string(), policy))
        })
        .collect()
}

/// True when the agent yields: every thread but the guard under
/// `SCHED_IDLE`, the guard under `SCHED_BATCH`.
fn yields(policies: &[(String, i32)]) -> bool {
    policies.len() >= 4
        && policies.iter().all(|(name, policy)| {
            *policy
                == if name == monitor::sched::GUARD_THREAD {
                    libc::SCHED_BATCH
                } else {
                    libc::SCHED_IDLE
                }
        })
}

/// The agent shares the CPU: every thread, the guard's included, under
/// `SCHED_BATCH`.
fn shares(policies: &[(String, i32)]) -> bool {
    policies.len() >= 4 && policies.iter().all(|(_, p)| *p == libc::SCHED_BATCH)
}

/// Polls the agent's thread policies until `done` holds; panics with the
/// last ones after `limit`.
fn wait_for_policies(
    pid: u32,
    limit: Duration,
    what: &str,
    done: impl Fn(&[(String, i32)]) -> bool,
) {
    let started = Instant::now();
    loop {
        let policies = thread_policies(pid);
        if done(&policies) {
            eprintln!("{what} after {:?}: {policies:?}", started.elapsed());
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{what}: not within {limit:?}; threads: {policies:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// While the event pipeline keeps up, the agent runs under `SCHED_IDLE`
/// (it costs the fork+exec storm of the benchmark about 1.5% less than
/// `SCHED_BATCH`); CPU hogs that starve it make it take its fair share
/// again, and it loses nothing meanwhile.
#[test]
fn record_runs_under_sched_idle_while_it_keeps_up_and_sched_batch_when_starved() {
    let Some(_kernel) =
        kernel_test("record_runs_under_sched_idle_while_it_keeps_up_and_sched_batch_when_starved")
    else {
        return;
    };
    let dir = test_dir("sched");
    let mut cmd = Command::new(agent());
    cmd.arg("record");
    let agent = Agent::spawn(&dir, cmd);
    let pid = agent.id();
    wait_for_policies(pid, Duration::from_secs(15), "yielding at start", yields);

    // Execs go on until the agent is seen sharing: starved with nothing
    // to do, it may keep up even under the hogs, and rightly yield.
    let hogs = Hogs::start();
    let token = token("starved");
    let started = Instant::now();
    let mut execs = 0;
    loop {
        for _ in 0..50 {
            assert!(
                Command::new("/bin/true")
                    .arg(&token)
                    .status()
                    .unwrap()
                    .success()
            );
            execs += 1;
        }
        let policies = thread_policies(pid);
        if shares(&policies) {
            eprintln!(
                "sharing under CPU hogs after {:?} and {execs} execs: {policies:?}",
                started.elapsed()
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "sharing under CPU hogs: not within 30s and {execs} execs; threads: {policies:?}"
        );
    }
    drop(hogs);
    // The wait before yielding again may have doubled a few times.
    wait_for_policies(pid, Duration::from_secs(40), "yielding again", yields);

    let out = agent.stdout_path().to_owned();
    let (status, _, stderr) = agent.stop();
    assert!(status.success(), "exit status {status:?}");
    let events = parse_lines(&std::fs::read(&out).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
    let captured = events
        .iter()
        .filter(|e| match &e.detail {
            Detail::Exec(x) => x.args.iter().any(|a| a.as_bytes() == token.as_bytes()),
            _ => false,
        })
        .count();
    assert_eq!(
        captured, execs,
        "every exec made under the hogs was captured"
    );
    assert!(
        stderr.contains("dropped events: none"),
        "no loss while starved: {stderr}"
    );
}

/// An agent started under a policy an operator chose keeps it on every
/// thread, and runs no guard.
#[test]
fn record_keeps_the_sched_policy_it_was_started_under() {
    let Some(_kernel) = kernel_test("record_keeps_the_sched_policy_it_was_started_under") else {
        return;
    };
    let dir = test_dir("sched-kept");
    let mut cmd = Command::new(agent());
    cmd.args(["record", "--output", "/dev/null"]);
    // SAFETY: only sched_setscheduler, async-signal-safe, between fork and
    // exec.
    unsafe {
        cmd.pre_exec(|| {
            let param = libc::sched_param { sched_priority: 0 };
            if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let agent = Agent::spawn(&dir, cmd);
    // Long enough for a guard to have yielded or shared.
    std::thread::sleep(Duration::from_secs(4));
    let policies = thread_policies(agent.id());
    assert!(agent.stop().0.success());
    let _ = std::fs::remove_dir_all(&dir);
    // The main thread and the runtime's two workers at least.
    assert!(policies.len() >= 3, "threads: {policies:?}");
    assert!(
        policies
            .iter()
            .all(|(name, p)| *p == libc::SCHED_IDLE && name != monitor::sched::GUARD_THREAD),
        "every thread under SCHED_IDLE, no guard: {policies:?}"
    );
}
