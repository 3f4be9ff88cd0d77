//! The `monitor record` command as a user runs it.

use std::{
    io::BufRead,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use monitor::event::{Detail, Event};
use monitor_tests::{kernel_test, token};

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
    let agent = Command::new(agent())
        .arg("record")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start monitor record");
    std::thread::sleep(Duration::from_millis(1500));
    let token = token("sigterm");
    Command::new("/bin/true").arg(&token).status().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let output = agent.wait_with_output().unwrap();
    let took = started.elapsed();
    assert!(output.status.success(), "exit status {:?}", output.status);
    assert!(took < Duration::from_secs(2), "stopped in {took:?}");
    let events = parse_lines(&output.stdout);
    assert!(
        events.iter().any(|e| match &e.detail {
            Detail::Exec(x) => x.args.iter().any(|a| a.as_bytes() == token.as_bytes()),
            _ => false,
        }),
        "the exec before SIGTERM was flushed"
    );
}

/// The scheduling policy of every thread of `monitor record`, started under
/// `start_policy` (the default when `None`).
fn agent_thread_policies(start_policy: Option<i32>) -> Vec<(i32, i32)> {
    let mut cmd = Command::new(agent());
    cmd.args(["record", "--output", "/dev/null"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(policy) = start_policy {
        // SAFETY: only sched_setscheduler, async-signal-safe, between fork
        // and exec.
        unsafe {
            cmd.pre_exec(move || {
                let param = libc::sched_param { sched_priority: 0 };
                if libc::sched_setscheduler(0, policy, &param) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut agent = cmd.spawn().expect("start monitor record");
    std::thread::sleep(Duration::from_millis(1500));
    let tasks: Vec<i32> = std::fs::read_dir(format!("/proc/{}/task", agent.id()))
        .expect("the agent's threads")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // SAFETY: reads the policy of threads of our own child.
    let policies = tasks
        .iter()
        .map(|&tid| (tid, unsafe { libc::sched_getscheduler(tid) }))
        .collect();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    assert!(agent.wait().unwrap().success());
    policies
}

#[test]
fn record_runs_every_thread_under_sched_batch_unless_started_otherwise() {
    let Some(_kernel) =
        kernel_test("record_runs_every_thread_under_sched_batch_unless_started_otherwise")
    else {
        return;
    };
    for (start, expected) in [
        (None, libc::SCHED_BATCH),
        (Some(libc::SCHED_IDLE), libc::SCHED_IDLE),
    ] {
        let policies = agent_thread_policies(start);
        // The main thread and the runtime's two workers at least.
        assert!(policies.len() >= 3, "threads: {policies:?}");
        assert!(
            policies.iter().all(|&(_, p)| p == expected),
            "started under {start:?}: every thread under policy {expected}: {policies:?}"
        );
    }
}
