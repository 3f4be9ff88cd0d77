//! `monitor run` as an operator runs it: learning, detection, OCSF output
//! validated against the official schema, the API, status, stopping,
//! resuming, and bad state.

use std::{
    io::{Read, Write},
    os::unix::{ffi::OsStrExt, fs::PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use monitor_tests::{free_tcp_port, kernel_test, test_dir};

use crate::cli::agent;

/// A running agent with its stdout and stderr in files.
pub(crate) struct Agent {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Agent {
    /// `monitor run` with `args`.
    pub(crate) fn start(dir: &Path, args: &[&str]) -> Self {
        let mut cmd = Command::new(agent());
        cmd.arg("run").args(args);
        Self::spawn(dir, cmd)
    }

    /// `monitor run` on state directory `state`, API on `api_listen` (""
    /// for none), after it has learned this host for 20 s (30 windows at
    /// least, counts drained every second).
    pub(crate) fn learned(dir: &Path, state: &str, api_listen: &str) -> Self {
        Self::learned_with(dir, state, api_listen, &[])
    }

    /// [`Agent::learned`], with `extra` arguments (`--config FILE`).
    pub(crate) fn learned_with(dir: &Path, state: &str, api_listen: &str, extra: &[&str]) -> Self {
        let mut args = vec![
            "--learn-for",
            "20s",
            "--min-windows",
            "30",
            "--drain-interval",
            "1s",
            "--state-dir",
            state,
            "--api-listen",
            api_listen,
        ];
        args.extend_from_slice(extra);
        let running = Self::start(dir, &args);
        running.wait_for("the end of learning", Duration::from_secs(90), |a| {
            a.stderr().contains("; detecting")
        });
        running
    }

    /// The agent as `cmd` sets it up (subcommand, arguments, pre-exec
    /// steps), with its stdout and stderr in files under `dir`.
    pub(crate) fn spawn(dir: &Path, mut cmd: Command) -> Self {
        let stdout = dir.join("stdout.jsonl");
        let stderr = dir.join("stderr.log");
        let child = cmd
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start the agent");
        Self {
            child,
            stdout,
            stderr,
        }
    }

    pub(crate) fn id(&self) -> u32 {
        self.child.id()
    }

    /// The file its stdout goes to.
    pub(crate) fn stdout_path(&self) -> &Path {
        &self.stdout
    }

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The stdout records whose line contains one of `needles` (a cheap
    /// filter before parsing, for long outputs).
    pub(crate) fn records_containing(&self, needles: &[&str]) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.stdout)
            .unwrap_or_default()
            .lines()
            .filter(|l| needles.iter().any(|n| l.contains(n)))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub(crate) fn records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.stdout)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON: {e}: {l}"))
            })
            .collect()
    }

    pub(crate) fn wait_for(&self, what: &str, timeout: Duration, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM; returns the exit status, how long the stop took and the
    /// agent's stderr.
    pub(crate) fn stop(mut self) -> (std::process::ExitStatus, Duration, String) {
        self.terminate()
    }

    fn terminate(&mut self) -> (std::process::ExitStatus, Duration, String) {
        // SAFETY: signalling our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let started = Instant::now();
        let status = self.child.wait().unwrap();
        (status, started.elapsed(), self.stderr())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // A failed test must not leave an agent running.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("API reachable");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// Validates OCSF JSON Lines with the official schema (`tests/ocsf/validate.py`).
pub fn validate_ocsf(file: &Path) -> String {
    let python = match std::env::var("MONITOR_OCSF_PYTHON") {
        Ok(p) => p,
        Err(_) if std::env::var_os("MONITOR_REQUIRE_KERNEL").is_some() => {
            panic!(
                "MONITOR_OCSF_PYTHON is not set: run the tests through `cargo xtask test`, which installs the OCSF schema"
            )
        }
        Err(_) => {
            eprintln!(
                "SKIPPED OCSF schema validation: MONITOR_OCSF_PYTHON not set (use `cargo xtask test`)"
            );
            return String::new();
        }
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("ocsf/validate.py");
    let out = Command::new(python)
        .arg(script)
        .arg(file)
        .output()
        .expect("run the OCSF validator");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "OCSF schema validation failed:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn run_learns_then_reports_a_schema_valid_finding_for_a_shadow_read() {
    // Learns this host: no other test may start programs meanwhile.
    let _host = monitor_tests::host_alone();
    let Some(_k) = kernel_test("run_learns_then_reports_a_schema_valid_finding_for_a_shadow_read")
    else {
        return;
    };
    let dir = test_dir("run");
    let state = dir.join("state");
    let port = free_tcp_port();
    let running = Agent::start(
        &dir,
        &[
            "--learn-for",
            "20s",
            "--min-windows",
            "30",
            "--drain-interval",
            "1s",
            "--raw-events",
            "--state-dir",
            state.to_str().unwrap(),
            "--api-listen",
            &format!("127.0.0.1:{port}"),
        ],
    );
    running.wait_for("learning progress", Duration::from_secs(30), |a| {
        a.stderr().contains("monitor: learning:")
    });
    running.wait_for("the end of learning", Duration::from_secs(90), |a| {
        a.stderr().contains("detecting")
    });
    // The API's snapshot refreshes every second.
    running.wait_for(
        "the API to report detecting",
        Duration::from_secs(5),
        |_| http_get(port, "/metrics").1.contains("monitor_learning 0"),
    );
    let (code, metrics) = http_get(port, "/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("monitor_learning 0") && metrics.contains("monitor_lost_events_total"),
        "{metrics}"
    );
    let (code, health) = http_get(port, "/healthz");
    assert_eq!((code, health.trim()), (200, "ok"));
    // The status is root's: on the unix socket, which `monitor status` asks.
    let (code, _) = http_get(port, "/status");
    assert_eq!(code, 403, "/status over TCP");
    let status_json = Command::new(agent())
        .args(["status", "--json", "--state-dir", state.to_str().unwrap()])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status_json.stdout);
    assert!(status.contains("\"phase\": \"detecting\""), "{status}");
    let status_cli = Command::new(agent())
        .args(["status", "--state-dir", state.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status_cli.stdout);
    assert!(
        status_cli.status.success()
            && text.contains("agent      running")
            && text.contains("detecting"),
        "{text}"
    );

    let attack = Command::new("sh")
        .args(["-c", "cat /etc/shadow > /dev/null; id; uname -a"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(attack.success());
    let shadow_finding = |a: &Agent| {
        a.records().into_iter().any(|r| {
            r["class_uid"] == 2004
                && r["actor"]["process"]["cmd_line"]
                    .as_str()
                    .is_some_and(|c| c.contains("cat /etc/shadow"))
        })
    };
    running.wait_for(
        "a finding for the shadow read",
        Duration::from_secs(20),
        shadow_finding,
    );
    let finding = running
        .records()
        .into_iter()
        .find(|r| {
            r["class_uid"] == 2004
                && r["actor"]["process"]["cmd_line"]
                    .as_str()
                    .is_some_and(|c| c.contains("cat /etc/shadow"))
        })
        .unwrap();
    let novelty = finding["unmapped"]["monitor"]["novelty"].to_string();
    assert!(
        novelty.contains("new_sensitive_path") && novelty.contains("/etc/shadow"),
        "{novelty}"
    );
    assert!(
        finding["finding_info"]["desc"]
            .as_str()
            .unwrap()
            .contains("observed vs expected")
            || !novelty.is_empty()
    );
    assert_eq!(
        finding["actor"]["process"]["parent_process"]["file"]["path"],
        "/usr/bin/dash"
    );

    // A program whose name carries a right-to-left override: shown as
    // "...hs.fdp" it would read as a PDF. Every text a person reads shows
    // the escape, and the JSON keeps the name exactly.
    let rlo_name = "report\u{202E}fdp.sh";
    let rlo = dir.join(rlo_name);
    std::fs::copy("/usr/bin/true", &rlo).unwrap();
    assert!(Command::new(&rlo).status().unwrap().success());
    running.wait_for(
        "a finding for the program named with U+202E",
        Duration::from_secs(20),
        |a| !a.records_containing(&["202e"]).is_empty(),
    );
    // A name that is not UTF-8: every field stays a string (an object in
    // one record and a string in the next is a mapping conflict for
    // Elasticsearch), with the exact bytes beside it.
    let raw_name = std::ffi::OsStr::from_bytes(b"bad\xffname");
    let raw = dir.join(raw_name);
    std::fs::copy("/usr/bin/true", &raw).unwrap();
    assert!(Command::new(&raw).status().unwrap().success());
    running.wait_for(
        "a finding for the program whose name is not UTF-8",
        Duration::from_secs(20),
        |a| !a.records_containing(&["bad\\\\xffname"]).is_empty(),
    );
    // The program's own finding (its parent's window may also name it, as
    // a program it started).
    let not_utf8 = running.records_containing(&["bad\\\\xffname"]);
    let process = not_utf8
        .iter()
        .map(|r| &r["unmapped"]["monitor"]["process"])
        .find(|p| {
            p["exe"]
                .as_str()
                .is_some_and(|e| e.ends_with("bad\\xffname"))
        })
        .unwrap_or_else(|| panic!("no finding about the program itself: {not_utf8:#?}"));
    assert!(process["exe_base64"].is_string(), "{process:#}");
    let (status, took, stderr) = running.stop();
    assert!(status.success(), "exit {status:?}: {stderr}");
    // Each tracepoint hook's detach waits for RCU grace periods, one hook
    // after another in the kernel (about 50 ms each): 1.8-2.1 s for the 37
    // hooks on this machine. The service manager allows 10 s.
    assert!(took < Duration::from_secs(3), "stopped in {took:?}");
    let stdout = std::fs::read_to_string(dir.join("stdout.jsonl")).unwrap();
    assert!(
        !stdout.contains('\u{202E}'),
        "a raw U+202E reached the sink's text"
    );
    let rlo_findings: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.contains("202e"))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        rlo_findings
            .iter()
            .any(|r| r["class_uid"] == 2004 && r.to_string().contains(rlo_name)),
        "the JSON value keeps the name: {rlo_findings:?}"
    );
    let listed = Command::new(agent())
        .args(["findings", "--state-dir", state.to_str().unwrap()])
        .output()
        .unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(
        listed.contains("report\\u{202e}fdp.sh") && !listed.contains('\u{202E}'),
        "{listed}"
    );
    let report = dir.join("report.html");
    let made = Command::new(agent())
        .args(["report", "--state-dir", state.to_str().unwrap(), "-o"])
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(
        html.contains("report\\u{202e}fdp.sh") && !html.contains('\u{202E}'),
        "the report shows the escape"
    );
    let model = state.join("model.bin");
    assert_eq!(
        std::fs::metadata(&model).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(state.join("findings.jsonl"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let validated = validate_ocsf(&dir.join("stdout.jsonl"));
    eprintln!("{validated}");
    for class in ["x2004", "x1007", "x6002"] {
        assert!(
            validated.is_empty() || validated.contains(class),
            "{class} produced and validated: {validated}"
        );
    }

    // Restart: resumes from the saved model without learning.
    let again = Agent::start(
        &dir,
        &["--state-dir", state.to_str().unwrap(), "--api-listen", ""],
    );
    again.wait_for("resume", Duration::from_secs(20), |a| {
        a.stderr().contains("(detecting)")
    });
    assert!(
        again.stderr().contains("resuming from the saved model"),
        "{}",
        again.stderr()
    );
    // An import under a running agent would be overwritten at its next
    // save: refused, saying why.
    let base = dir.join("base.model");
    std::fs::copy(state.join("model.bin"), &base).unwrap();
    let import = Command::new(agent())
        .args(["model", "import"])
        .arg(&base)
        .args(["--state-dir", state.to_str().unwrap()])
        .output()
        .unwrap();
    let import_err = String::from_utf8_lossy(&import.stderr);
    assert!(
        !import.status.success() && import_err.contains("cannot be imported while the agent runs"),
        "{import_err}"
    );
    let (status, _, _) = again.stop();
    assert!(status.success());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_model_is_relearned_or_refused_as_configured() {
    let Some(_k) = kernel_test("a_bad_model_is_relearned_or_refused_as_configured") else {
        return;
    };
    let dir = test_dir("badmodel");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("model.bin"),
        b"MONITOR-MODEL\n\x01\x00\x00\x00truncated",
    )
    .unwrap();
    let stop_conf = dir.join("stop.toml");
    std::fs::write(&stop_conf, "[model]\non_bad_model = \"stop\"\n").unwrap();
    let out = Command::new(agent())
        .args([
            "run",
            "--config",
            stop_conf.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--api-listen",
            "",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("model.bin is truncated") && stderr.contains("on_bad_model"),
        "{stderr}"
    );

    let relearn = Agent::start(
        &dir,
        &["--state-dir", state.to_str().unwrap(), "--api-listen", ""],
    );
    relearn.wait_for("relearning", Duration::from_secs(20), |a| {
        a.stderr().contains("(learning)")
    });
    assert!(
        relearn.stderr().contains("learning again"),
        "{}",
        relearn.stderr()
    );
    let (status, _, _) = relearn.stop();
    assert!(status.success());
    let moved = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("model.bin.bad-")
        });
    assert!(moved, "the bad model was moved aside, not deleted");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn config_check_names_the_file_line_and_key() {
    let _host = monitor_tests::host_shared();
    let dir = test_dir("config");
    let file = dir.join("monitor.toml");
    std::fs::write(
        &file,
        "[capture]\nsyscall_counts = true\nring_bufer = \"16MiB\"\n",
    )
    .unwrap();
    let out = Command::new(agent())
        .args(["config", "check", file.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains(&format!(
            "{}:3:1: capture.ring_bufer: unknown field `ring_bufer`",
            file.display()
        )),
        "{stderr}"
    );
    let default = Command::new(agent())
        .args(["config", "default"])
        .output()
        .unwrap();
    std::fs::write(&file, &default.stdout).unwrap();
    let ok = Command::new(agent())
        .args(["config", "check", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // A zero interval once passed the check and panicked the agent.
    std::fs::write(&file, "[output]\nheartbeat = \"0s\"\n").unwrap();
    let zero = Command::new(agent())
        .args(["config", "check", file.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&zero.stderr);
    assert_eq!(zero.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:2:1: output.heartbeat: must be between 1s and 1day, got 0s",
            file.display()
        )),
        "{stderr}"
    );
    std::fs::write(&file, "[api]\nlisten = \"0.0.0.0:9464\"\n").unwrap();
    let open = Command::new(agent())
        .args(["config", "check", file.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&open.stderr);
    assert!(open.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: api.listen = 0.0.0.0:9464 is reachable from other hosts"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unwritable_state_directory_is_a_clear_error() {
    let Some(_k) = kernel_test("an_unwritable_state_directory_is_a_clear_error") else {
        return;
    };
    let dir = test_dir("rostate");
    let blocker = dir.join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let state = blocker.join("state");
    let out = Command::new(agent())
        .args([
            "run",
            "--state-dir",
            state.to_str().unwrap(),
            "--api-listen",
            "",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains(&format!(
            "cannot create state directory {}",
            state.display()
        )),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn findings_of(state: &Path) -> Vec<monitor::state::findings::LoggedFinding> {
    monitor::fileio::jsonl::read_lines(&state.join("findings.jsonl"))
        .unwrap()
        .0
}

fn shadow_findings(state: &Path) -> Vec<monitor::state::findings::LoggedFinding> {
    findings_of(state)
        .into_iter()
        .filter(|f| {
            f.finding.program.ends_with("/cat")
                && f.finding.novelty.iter().any(|n| n.value == "/etc/shadow")
        })
        .collect()
}

#[test]
fn an_acknowledged_behaviour_stops_raising_findings_until_the_ack_is_withdrawn() {
    // Learns this host: no other test may start programs meanwhile.
    let _host = monitor_tests::host_alone();
    let Some(_k) =
        kernel_test("an_acknowledged_behaviour_stops_raising_findings_until_the_ack_is_withdrawn")
    else {
        return;
    };
    let dir = test_dir("ack");
    let state = dir.join("state");
    let s = state.to_str().unwrap();
    let running = Agent::learned(&dir, s, "");
    let read_shadow = || {
        let ok = Command::new("sh")
            .args(["-c", "cat /etc/shadow > /dev/null"])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    read_shadow();
    running.wait_for(
        "a finding for the shadow read",
        Duration::from_secs(20),
        |_| !shadow_findings(&state).is_empty(),
    );
    let first = shadow_findings(&state)[0].finding.id.clone();

    // The analyst says it is benign; the running agent picks it up.
    let ack = Command::new(agent())
        .args([
            "ack",
            &first[..8],
            "--reason",
            "backup job reads it",
            "--state-dir",
            s,
        ])
        .output()
        .unwrap();
    assert!(
        ack.status.success(),
        "{}",
        String::from_utf8_lossy(&ack.stderr)
    );
    running.wait_for("the ack applied", Duration::from_secs(10), |a| {
        a.stderr().contains("acknowledgements: 1 applied")
    });
    let list = Command::new(agent())
        .args(["ack", "--list", "--state-dir", s])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains(&first) && text.contains("in force") && text.contains("backup job reads it"),
        "{text}"
    );
    let findings = Command::new(agent())
        .args(["findings", "--state-dir", s])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&findings.stdout).contains("[acknowledged by"),
        "{}",
        String::from_utf8_lossy(&findings.stdout)
    );

    // The same behaviour no longer raises a finding.
    read_shadow();
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        shadow_findings(&state).len(),
        1,
        "the acknowledged behaviour was raised again"
    );

    // Withdrawn: it raises findings again.
    let undo = Command::new(agent())
        .args(["ack", &first, "--withdraw", "--state-dir", s])
        .output()
        .unwrap();
    assert!(
        undo.status.success(),
        "{}",
        String::from_utf8_lossy(&undo.stderr)
    );
    running.wait_for("the withdrawal applied", Duration::from_secs(10), |a| {
        a.stderr().contains("1 withdrawn")
    });
    read_shadow();
    running.wait_for(
        "a new finding after the withdrawal",
        Duration::from_secs(20),
        |_| shadow_findings(&state).len() == 2,
    );

    // The explanation reads well on a terminal.
    let explain = Command::new(agent())
        .args(["findings", &first, "--state-dir", s])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&explain.stdout);
    for part in [
        "process tree",
        "never seen in this host's baseline",
        "/etc/shadow",
        "T1003.008",
        "why it matters",
        "next steps",
    ] {
        assert!(text.contains(part), "explanation lacks {part:?}:\n{text}");
    }

    // Issue 20, item 5: a restart with a 1 GiB finding log takes under 5 s,
    // and an acknowledgement in force holds without that log being read.
    let second = shadow_findings(&state)[1].finding.id.clone();
    let ack = Command::new(agent())
        .args(["ack", &second, "--state-dir", s])
        .output()
        .unwrap();
    assert!(
        ack.status.success(),
        "{}",
        String::from_utf8_lossy(&ack.stderr)
    );
    running.wait_for("the second ack applied", Duration::from_secs(10), |a| {
        a.stderr()
            .contains("acknowledgements: 1 applied, 0 withdrawn; 1 in force")
    });
    let (status, _, _) = running.stop();
    assert!(status.success());
    let log = state.join("findings.jsonl");
    grow_to(&log, 1 << 30);
    let started = Instant::now();
    let running = Agent::start(
        &dir,
        &[
            "--state-dir",
            s,
            "--api-listen",
            "",
            "--drain-interval",
            "1s",
        ],
    );
    running.wait_for("the restart", Duration::from_secs(60), |a| {
        let e = a.stderr();
        e.contains("monitor: running on") && e.contains("0 withdrawn; 1 in force")
    });
    let took = started.elapsed();
    eprintln!(
        "restart with a {:.2} GiB finding log: running with its acknowledgement in force after {:.2} s",
        std::fs::metadata(&log).unwrap().len() as f64 / f64::from(1 << 30),
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(5), "the restart took {took:?}");
    read_shadow();
    std::thread::sleep(Duration::from_secs(6));
    // As `shadow_findings` tells them, in what went to the sink (the
    // finding log is the 1 GiB one).
    let raised: Vec<serde_json::Value> = running
        .records()
        .into_iter()
        .filter(|r| {
            let m = &r["unmapped"]["monitor"];
            r["class_uid"] == 2004
                && m["program"].as_str().is_some_and(|p| p.ends_with("/cat"))
                && m["novelty"]
                    .as_array()
                    .is_some_and(|n| n.iter().any(|n| n["value"] == "/etc/shadow"))
        })
        .collect();
    assert!(
        raised.is_empty(),
        "the acknowledged read was raised after the restart: {raised:?}"
    );
    let (status, _, _) = running.stop();
    assert!(status.success());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Appends copies of the first line of the JSON Lines file `path` until it
/// holds `size` bytes.
fn grow_to(path: &Path, size: u64) {
    let text = std::fs::read_to_string(path).unwrap();
    let line = text.lines().next().expect("a first line");
    let mut block = String::new();
    while block.len() < 1 << 20 {
        block.push_str(line);
        block.push('\n');
    }
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    let mut len = f.metadata().unwrap().len();
    while len < size {
        f.write_all(block.as_bytes()).unwrap();
        len += block.len() as u64;
    }
}

/// Issue 18: a sensor the kernel refuses is reported unavailable, with the
/// reason, in `monitor status`, `/metrics`, `/healthz`, the heartbeat and
/// once as a record to the sinks, and the agent goes on without it. The
/// refusal is injected (`MONITOR_FAULT_REFUSE`): this kernel refuses nothing.
#[test]
fn r18_a_refused_sensor_is_reported_unavailable_everywhere_and_the_rest_runs() {
    let Some(_k) =
        kernel_test("r18_a_refused_sensor_is_reported_unavailable_everywhere_and_the_rest_runs")
    else {
        return;
    };
    let dir = test_dir("refused-sensor");
    let state = dir.join("state");
    let conf = dir.join("heartbeat.toml");
    std::fs::write(&conf, "[output]\nheartbeat = \"1s\"\n").unwrap();
    let port = free_tcp_port();
    let mut cmd = Command::new(agent());
    cmd.args([
        "run",
        "--config",
        conf.to_str().unwrap(),
        "--raw-events",
        "--state-dir",
        state.to_str().unwrap(),
        "--api-listen",
        &format!("127.0.0.1:{port}"),
    ])
    .env("MONITOR_FAULT_REFUSE", "sys_exit_open");
    let running = Agent::spawn(&dir, cmd);
    running.wait_for("the agent to start", Duration::from_secs(30), |a| {
        a.stderr().contains("monitor: running on")
    });
    // The API's snapshot refreshes every second.
    running.wait_for("the API's first snapshot", Duration::from_secs(5), |_| {
        http_get(port, "/metrics").1.contains("monitor_sensor_up")
    });
    let (_, metrics) = http_get(port, "/metrics");
    let security = metrics
        .lines()
        .find(|l| l.starts_with("monitor_sensor_up{sensor=\"security\""))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(
        security.contains("state=\"unavailable\"")
            && security.contains("MONITOR_FAULT_REFUSE")
            && security.ends_with(" 0"),
        "{security}"
    );
    assert!(
        metrics.contains("monitor_sensor_up{sensor=\"process\",state=\"attached\",reason=\"\"} 1"),
        "{metrics}"
    );
    let (code, health) = http_get(port, "/healthz");
    assert_eq!(code, 503, "{health}");
    assert!(health.contains("sensor security unavailable"), "{health}");
    let status = Command::new(agent())
        .args(["status", "--state-dir", state.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("sensor     security: unavailable: kernel")
            && text.contains("refused program `sys_exit_open`"),
        "{text}"
    );
    // The process sensor still captures: an exec of ours reaches the sink.
    let token = monitor_tests::token("r18-still-captures");
    Command::new("/bin/true").arg(&token).status().unwrap();
    running.wait_for("the exec to reach the sink", Duration::from_secs(10), |a| {
        a.records().iter().any(|r| {
            r["class_uid"] == 1007
                && r["process"]["cmd_line"]
                    .as_str()
                    .is_some_and(|c| c.contains(&token))
        })
    });
    running.wait_for("a heartbeat", Duration::from_secs(10), |a| {
        a.records()
            .iter()
            .any(|r| r["activity_name"] == "Heartbeat")
    });
    let records = running.records();
    let sensor_records: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["class_uid"] == 6002 && r["unmapped"]["monitor"]["sensor"] == "security")
        .collect();
    assert_eq!(
        sensor_records.len(),
        1,
        "once, to the sinks: {sensor_records:?}"
    );
    assert_eq!(
        sensor_records[0]["unmapped"]["monitor"]["state"],
        "unavailable"
    );
    let heartbeat = records
        .iter()
        .find(|r| r["activity_name"] == "Heartbeat")
        .unwrap();
    assert_eq!(
        heartbeat["unmapped"]["monitor"]["sensors"]["security"]["state"], "unavailable",
        "{heartbeat}"
    );
    let (status, _, stderr) = running.stop();
    assert!(status.success(), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Issue 18: when process capture itself cannot load, the agent refuses to
/// start with one line naming the kernel and the program, and the full
/// verifier log path; no verifier dump reaches the operator.
#[test]
fn r18_a_refused_process_sensor_stops_the_agent_with_one_line() {
    let Some(_k) = kernel_test("r18_a_refused_process_sensor_stops_the_agent_with_one_line") else {
        return;
    };
    let dir = test_dir("refused-process");
    let out = Command::new(agent())
        .args(["run", "--api-listen", "", "--state-dir"])
        .arg(dir.join("state"))
        .env("MONITOR_FAULT_REFUSE", "sched_process_exec")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("monitor: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(
        errors[0].contains(kernel.trim())
            && errors[0].contains("refused program `sched_process_exec`")
            && errors[0].contains("process capture cannot start"),
        "{}",
        errors[0]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `http_get`, retried while the agent closes the connection unserved (all
/// its API slots busy), for up to `within`.
fn http_get_served(port: u16, path: &str, within: Duration) -> (u16, String) {
    let started = Instant::now();
    loop {
        let reply = (|| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            )
            .ok()?;
            let mut text = String::new();
            s.read_to_string(&mut text).ok()?;
            let code = text.split_whitespace().nth(1)?.parse().ok()?;
            Some((code, text.split_once("\r\n\r\n")?.1.to_owned()))
        })();
        if let Some(reply) = reply {
            return reply;
        }
        assert!(
            started.elapsed() < within,
            "{path}: no answer within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The agent's CPU time so far (user + system), from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis((f[11] + f[12]) * 1000 / hz)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn r20_idle_connections_held_by_nobody_neither_starve_nor_blind_the_agent() {
    // Learns this host: no other test may start programs meanwhile.
    let _host = monitor_tests::host_alone();
    let Some(_k) =
        kernel_test("r20_idle_connections_held_by_nobody_neither_starve_nor_blind_the_agent")
    else {
        return;
    };
    let dir = test_dir("api-flood");
    let state = dir.join("state");
    let s = state.to_str().unwrap();
    let port = free_tcp_port();
    let listen = format!("127.0.0.1:{port}");
    let running = Agent::learned(&dir, s, &listen);

    // As nobody: 2,000 connections opened and held, not a byte sent.
    let mut flood = Command::new(env!("CARGO_BIN_EXE_actor"))
        .args(["hold-connections", "65534", &listen, "2000", "40"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(flood.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "held 2000", "the flood opened its connections");
    let cpu_before = cpu_time(running.id());
    let measuring = Instant::now();
    let fds = open_fds(running.id());

    // Meanwhile an attack is still seen and delivered.
    let attack = Command::new("sh")
        .args(["-c", "cat /etc/shadow > /dev/null"])
        .status()
        .unwrap();
    assert!(attack.success());
    running.wait_for(
        "the shadow read delivered to the sink during the flood",
        Duration::from_secs(20),
        |a| {
            a.records().into_iter().any(|r| {
                r["class_uid"] == 2004
                    && r["actor"]["process"]["cmd_line"]
                        .as_str()
                        .is_some_and(|c| c.contains("cat /etc/shadow"))
            })
        },
    );
    // The flood's connections past the cap were closed on accept, and the
    // ones served time out after 5 s without a request: health answers
    // again while the flood still holds its sockets.
    let asked = Instant::now();
    let (code, health) = http_get_served(port, "/healthz", Duration::from_secs(12));
    assert_eq!(
        (code, health.trim()),
        (200, "ok"),
        "/healthz during the flood"
    );
    eprintln!(
        "/healthz answered {:.1} s after the finding, during the flood",
        asked.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(10));
    let cpu = cpu_time(running.id()).saturating_sub(cpu_before);
    let measured = measuring.elapsed();
    eprintln!(
        "agent during the flood: {} ms of CPU over {:.1} s ({:.2}% of one core; limit 5%), {fds} descriptors open",
        cpu.as_millis(),
        measured.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / measured.as_secs_f64()
    );
    assert!(
        cpu.as_secs_f64() < 0.05 * measured.as_secs_f64(),
        "the agent spent {cpu:?} of CPU in {measured:?} during the flood"
    );
    assert!(
        fds < 400,
        "the agent holds {fds} descriptors: the flood's connections are not capped"
    );
    let _ = flood.kill();
    let _ = flood.wait();

    // What any local user reaches tells nothing about findings.
    let (code, _) = http_get_served(port, "/status", Duration::from_secs(12));
    assert_eq!(code, 403, "/status over TCP");
    let (_, metrics) = http_get_served(port, "/metrics", Duration::from_secs(12));
    assert!(
        !metrics.contains("monitor_findings_total")
            && metrics.contains("monitor_api_connections_refused_total"),
        "{metrics}"
    );
    // Root gets everything on the socket, which nobody can open.
    let socket = state.join("api.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket's mode");
    let status = Command::new(agent())
        .args(["status", "--json", "--state-dir", s])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(status["findings"].as_u64().unwrap() >= 1, "{status}");
    let as_nobody = Command::new(env!("CARGO_BIN_EXE_actor"))
        .args(["connect-unix-as", "65534", socket.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&as_nobody.stdout).contains("refused"),
        "nobody reached the socket: {}",
        String::from_utf8_lossy(&as_nobody.stdout)
    );
    let (status, _, stderr) = running.stop();
    assert!(status.success(), "{stderr}");
}

#[test]
fn r20_a_stop_from_another_process_names_the_sender_and_a_kill_is_reported_as_downtime() {
    let Some(_k) = kernel_test(
        "r20_a_stop_from_another_process_names_the_sender_and_a_kill_is_reported_as_downtime",
    ) else {
        return;
    };
    let dir = test_dir("stop-sender");
    let state = dir.join("state");
    let s = state.to_str().unwrap();
    let args = ["--state-dir", s, "--api-listen", ""];
    let started = |a: &Agent| a.stderr().contains("monitor: running on");

    // A SIGTERM from kill(1): reported, with the sender, before the exit.
    let running = Agent::start(&dir, &args);
    running.wait_for("the start", Duration::from_secs(30), started);
    std::thread::sleep(Duration::from_millis(1500)); // a status written
    let kill = Command::new("/bin/kill")
        .args(["-TERM", &running.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    running.wait_for("the stop", Duration::from_secs(10), |a| {
        a.stderr().contains("monitor: stopped")
    });
    let stopped_by = running
        .records()
        .into_iter()
        .find(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.contains("monitor stopped by SIGTERM from pid"))
        })
        .unwrap_or_else(|| panic!("no record of who stopped the agent:\n{}", running.stderr()));
    let text = stopped_by.to_string();
    assert!(text.contains("kill"), "the sender's executable: {text}");
    drop(running);

    // Killed: the next start reports the time it was down.
    let running = Agent::start(&dir, &args);
    running.wait_for("the start", Duration::from_secs(30), started);
    assert!(
        !running
            .records()
            .iter()
            .any(|r| r.to_string().contains("was down from")),
        "after a clean stop, no downtime"
    );
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: signalling our child.
    unsafe { libc::kill(running.id() as i32, libc::SIGKILL) };
    drop(running);
    let running = Agent::start(&dir, &args);
    running.wait_for("the start", Duration::from_secs(30), started);
    running.wait_for("the downtime record", Duration::from_secs(5), |a| {
        a.records().iter().any(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.contains("was down from"))
        })
    });
    let (status, _, stderr) = running.stop();
    assert!(status.success(), "{stderr}");
}

#[test]
fn r20_a_decoy_finding_as_nobody_hides_neither_its_repeats_nor_another_users_act() {
    // Learns this host: no other test may start programs meanwhile.
    let _host = monitor_tests::host_alone();
    let Some(_k) = kernel_test(
        "r20_a_decoy_finding_as_nobody_hides_neither_its_repeats_nor_another_users_act",
    ) else {
        return;
    };
    let dir = test_dir("decoy");
    let state = dir.join("state");
    let s = state.to_str().unwrap();
    let running = Agent::learned(&dir, s, "");
    let read_shadow_as = |uid: u32| {
        let _ = Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "cat",
                "/etc/shadow",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
    };
    let by = |uid: u32| {
        let state = state.clone();
        move || -> Vec<monitor::state::findings::LoggedFinding> {
            shadow_findings(&state)
                .into_iter()
                .filter(|f| f.finding.process.as_ref().is_some_and(|p| p.uid == uid))
                .collect()
        }
    };
    // The decoy: nobody tries /etc/shadow (refused) and gets a finding.
    read_shadow_as(65534);
    let decoys = by(65534);
    running.wait_for("the decoy's finding", Duration::from_secs(20), |_| {
        !decoys().is_empty()
    });
    let decoy = decoys()[0].finding.id.clone();
    // Again as nobody: not a new finding, but an update of it in the sink.
    read_shadow_as(65534);
    running.wait_for(
        "the repeat delivered as an update of the decoy finding",
        Duration::from_secs(20),
        |a| {
            a.records().iter().any(|r| {
                r["class_uid"] == 2004
                    && r["activity_id"] == 2
                    && r["finding_info"]["uid"] == decoy.as_str()
                    && r["count"].as_u64().is_some_and(|c| c >= 2)
            })
        },
    );
    assert_eq!(decoys().len(), 1, "the repeat raised no new finding");
    // The real act, by root, within the decoy's quarantine: its own finding.
    read_shadow_as(0);
    let real = by(0);
    running.wait_for(
        "a finding for root's read despite the open decoy finding",
        Duration::from_secs(20),
        |_| !real().is_empty(),
    );
    assert_ne!(real()[0].finding.id, decoy);
    let (status, _, stderr) = running.stop();
    assert!(status.success(), "{stderr}");
    // The updates validate against the schema like the findings (the
    // validator fails the test on any invalid record).
    let validated = validate_ocsf(&dir.join("stdout.jsonl"));
    eprintln!("{validated}");
}

/// The agent's peak resident memory (VmHWM), bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM in /proc/PID/status")
        * 1024
}

/// `monitor status --json` of the agent on `state`.
fn status_of(state: &str) -> serde_json::Value {
    let out = Command::new(agent())
        .args(["status", "--json", "--state-dir", state])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Issue 20, item 5: during learning, nobody runs 20,000 distinct
/// executables (hard links with long paths, so 20,000 programs). The agent
/// stays under 96 MiB resident, loses no event, and says what its bounds
/// gave up.
#[test]
fn r20_twenty_thousand_programs_run_by_nobody_while_learning_keep_the_agent_bounded() {
    const PROGRAMS: usize = 20_000;
    const RSS_LIMIT: u64 = 96 << 20;
    // Learns this host: no other test may start programs meanwhile.
    let _host = monitor_tests::host_alone();
    let Some(_k) = kernel_test(
        "r20_twenty_thousand_programs_run_by_nobody_while_learning_keep_the_agent_bounded",
    ) else {
        return;
    };
    let dir = test_dir("many-programs");
    let state = dir.join("state");
    let s = state.to_str().unwrap();
    // 200-character directory, 170-character names: 400-byte paths.
    let links = dir.join("links").join("d".repeat(200));
    std::fs::create_dir_all(&links).unwrap();
    let base = dir.join("links").join("true");
    std::fs::copy("/bin/true", &base).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    for i in 0..PROGRAMS {
        std::fs::hard_link(
            &base,
            links.join(format!("prog-{i:05}-{}", "x".repeat(158))),
        )
        .unwrap();
    }
    Command::new("chown")
        .args(["-R", "65534:65534", dir.join("links").to_str().unwrap()])
        .status()
        .unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();

    let running = Agent::start(
        &dir,
        &[
            "--learn-for",
            "30m",
            "--drain-interval",
            "1s",
            "--state-dir",
            s,
            "--api-listen",
            "",
        ],
    );
    running.wait_for("the start", Duration::from_secs(30), |a| {
        a.stderr().contains("monitor: running on")
    });
    let flood = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_actor"))
        .args(["exec-each-as", "65534", links.to_str().unwrap()])
        .output()
        .unwrap();
    let ran = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(
        ran,
        format!("ran {PROGRAMS} of {PROGRAMS}"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flood = flood.elapsed();
    running.wait_for("every window counted", Duration::from_secs(30), |_| {
        status_of(s)["progress"]["windows_seen"]
            .as_u64()
            .unwrap_or(0)
            >= PROGRAMS as u64
    });
    let status = status_of(s);
    let peak = peak_rss(running.id());
    let p = &status["progress"];
    eprintln!(
        "{PROGRAMS} programs run by nobody in {:.1} s; agent peak RSS {:.1} MiB (limit {} MiB); \
         learning: {} windows seen, {} kept from {} programs ({:.1} MiB estimated); bounds: {}; lost: {}; channels: {}",
        flood.as_secs_f64(),
        peak as f64 / 1048576.0,
        RSS_LIMIT >> 20,
        p["windows_seen"],
        p["baseline_windows"],
        p["programs"],
        p["bounds"]["learning_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        p["bounds"],
        status["lost"],
        status["channels"],
    );
    assert_eq!(
        status["phase"], "learning",
        "still learning: the flood hit the learning store"
    );
    assert!(peak < RSS_LIMIT, "peak RSS {peak} bytes");
    assert_eq!(status["lost"], serde_json::json!({}), "no event lost");
    for (name, channel) in status["channels"].as_object().unwrap() {
        assert_eq!(channel["dropped"], 0, "channel {name} dropped items");
    }
    let refused = p["bounds"]["learning_refused"].as_u64().unwrap();
    assert!(
        refused > 0,
        "the bound was reached and counted: {}",
        p["bounds"]
    );
    assert!(p["programs"].as_u64().unwrap() <= 4096);
    let metrics = Command::new(agent())
        .args(["status", "--state-dir", s])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&metrics.stdout);
    assert!(text.contains(&format!("refused {refused}")), "{text}");
    let (status, _, stderr) = running.stop();
    assert!(status.success(), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The agent's eBPF map named `name`, opened by id from its open file
/// descriptors (the way bpftool finds a process's maps).
fn agent_map(agent_pid: u32, name: &str) -> aya::maps::Map {
    for fd in std::fs::read_dir(format!("/proc/{agent_pid}/fdinfo")).unwrap() {
        let info = std::fs::read_to_string(fd.unwrap().path()).unwrap_or_default();
        let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("map_id:"))
            .and_then(|v| v.trim().parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(map) = aya::maps::MapData::from_id(id)
            && map.info().is_ok_and(|i| i.name_as_str() == Some(name))
        {
            return aya::maps::Map::from_map_data(map).unwrap();
        }
    }
    panic!("the agent (pid {agent_pid}) holds no map named {name}")
}

/// Issue 20, item 7: root changes the agent's maps behind its back (through
/// `bpf()` from another process, as bpftool would) and one of its hooks is
/// detached. Within the check interval the agent puts the maps back and
/// raises a finding naming each change.
#[test]
fn r20_a_sensor_tampered_with_by_root_is_put_back_and_reported() {
    let Some(_k) = kernel_test("r20_a_sensor_tampered_with_by_root_is_put_back_and_reported")
    else {
        return;
    };
    let dir = test_dir("tamper");
    let state = dir.join("state");
    let s = state.to_str().unwrap();
    let mut cmd = Command::new(agent());
    cmd.args(["run", "--state-dir", s, "--api-listen", ""])
        .env("MONITOR_FAULT_DETACH", "sys_exit_net");
    let running = Agent::spawn(&dir, cmd);
    running.wait_for("the start", Duration::from_secs(30), |a| {
        a.stderr().contains("monitor: running on")
    });
    let openat = 257u32;
    let mut ops: aya::maps::Array<_, u32> =
        aya::maps::Array::try_from(agent_map(running.id(), "SYSCALL_OPS")).unwrap();
    let op = ops.get(&openat, 0).unwrap();
    assert_ne!(op, 0, "openat is captured");
    ops.set(openat, 0, 0).unwrap();
    let mut sensitive: aya::maps::HashMap<_, monitor_common::InodeKey, u8> =
        aya::maps::HashMap::try_from(agent_map(running.id(), "SENSITIVE")).unwrap();
    let keys: Vec<_> = sensitive.keys().map(Result::unwrap).collect();
    assert!(!keys.is_empty(), "the sensitive files are loaded");
    for k in &keys {
        sensitive.remove(k).unwrap();
    }
    let tampering = |a: &Agent| -> String {
        a.records()
            .iter()
            .filter(|r| {
                r["class_uid"] == 2004 && r["finding_info"]["types"][0] == "Sensor Tampering"
            })
            .map(|r| r["message"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
            .join("\n")
    };
    running.wait_for(
        "findings naming every change",
        Duration::from_secs(30),
        |a| {
            let t = tampering(a);
            t.contains("SYSCALL_OPS")
                && t.contains("SENSITIVE")
                && t.contains("program sys_exit_net")
        },
    );
    eprintln!("{}", tampering(&running));
    assert_eq!(ops.get(&openat, 0).unwrap(), op, "SYSCALL_OPS put back");
    assert_eq!(sensitive.keys().count(), keys.len(), "SENSITIVE put back");
    running.wait_for("the count in the status", Duration::from_secs(10), |_| {
        status_of(s)["faults"]["sensor_tampered"]
            .as_u64()
            .unwrap_or(0)
            >= 3
    });
    let (status, _, stderr) = running.stop();
    assert!(status.success(), "{stderr}");
    eprintln!("{}", validate_ocsf(&dir.join("stdout.jsonl")));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs `script` with `sh -c` as nobody; returns its exit status.
fn sh_as_nobody(script: &str) -> std::process::ExitStatus {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
}

/// Issue 20, item 3: a program is judged by what its file is, not by its
/// name. As nobody, inside `unshare -Urm`, a copy of `sleep` bind-mounted
/// over `/usr/sbin` runs as `/usr/sbin/nologin`, a program the baseline
/// knows; then a copy of `sleep` runs from `/tmp` under a new name.
#[test]
fn r20_a_look_alike_or_a_renamed_copy_is_told_by_its_file_not_its_name() {
    use monitor::model::baseline::NoveltyKind;
    // Learns this host: no other test may start programs meanwhile.
    let _host = monitor_tests::host_alone();
    let Some(_k) =
        kernel_test("r20_a_look_alike_or_a_renamed_copy_is_told_by_its_file_not_its_name")
    else {
        return;
    };
    let dir = test_dir("identity");
    let state = dir.join("state");
    let s = state.to_str().unwrap();
    // What the baseline learns: the real nologin and sleep.
    let teach = std::thread::spawn(|| {
        let until = Instant::now() + Duration::from_secs(16);
        while Instant::now() < until {
            let _ = Command::new("/usr/sbin/nologin")
                .stdout(Stdio::null())
                .status();
            let _ = Command::new("/usr/bin/sleep").arg("0.2").status();
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    let running = Agent::learned(&dir, s, "");
    teach.join().unwrap();
    let with_novelty = |program: &str, kind: NoveltyKind| {
        findings_of(&state).into_iter().find(|f| {
            f.finding.program == program && f.finding.novelty.iter().any(|n| n.kind == kind)
        })
    };

    // The look-alike: another file at a known program's name.
    let fake = dir.join("fake-sbin");
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::copy("/usr/bin/sleep", fake.join("nologin")).unwrap();
    Command::new("chown")
        .args(["-R", "65534:65534", fake.to_str().unwrap()])
        .status()
        .unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ran = sh_as_nobody(&format!(
        "unshare -Urm sh -c 'mount --bind {} /usr/sbin && exec /usr/sbin/nologin 2'",
        fake.display()
    ));
    assert!(ran.success(), "the look-alike ran: {ran}");
    running.wait_for(
        "a finding on the look-alike",
        Duration::from_secs(20),
        |_| with_novelty("/usr/sbin/nologin", NoveltyKind::ReplacedImage).is_some(),
    );
    let f = with_novelty("/usr/sbin/nologin", NoveltyKind::ReplacedImage).unwrap();
    let text = f.finding.explanation();
    eprintln!("look-alike: {}", f.finding.summary);
    assert!(text.contains("not the one the baseline knows"), "{text}");
    assert!(text.contains("T1036.005"), "{text}");

    // The renamed copy, from a directory anyone can write to.
    let copy = format!("/tmp/kworker-{}", std::process::id());
    let ran = sh_as_nobody(&format!("cp /usr/bin/sleep {copy} && {copy} 2"));
    assert!(ran.success(), "the copy ran: {ran}");
    running.wait_for("a finding on the copy", Duration::from_secs(20), |_| {
        with_novelty(&copy, NoveltyKind::CopiedImage).is_some()
    });
    let f = with_novelty(&copy, NoveltyKind::CopiedImage).unwrap();
    eprintln!("copy: {}", f.finding.summary);
    let copied = f
        .finding
        .novelty
        .iter()
        .find(|n| n.kind == NoveltyKind::CopiedImage)
        .unwrap();
    assert!(
        copied.value.contains("/usr/bin/sleep"),
        "names the binary it copies: {}",
        copied.value
    );
    let process = f.finding.process.as_ref().expect("the copy's process");
    assert_eq!(
        process
            .exe
            .as_ref()
            .map(|e| e.to_string_lossy().into_owned()),
        Some(copy.clone())
    );
    assert_eq!(process.uid, 65534);
    assert!(
        f.finding
            .novelty
            .iter()
            .any(|n| n.value == "exec_world_writable_dir"),
        "{:?}",
        f.finding.novelty
    );
    let _ = std::fs::remove_file(&copy);
    let (status, _, stderr) = running.stop();
    assert!(status.success(), "{stderr}");
    eprintln!("{}", validate_ocsf(&dir.join("stdout.jsonl")));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Issue 20, item 2: during learning, two processes of nobody write-open
/// files as fast as they can for 30 s. Meanwhile a new binary's exec reaches
/// the sink with its own program (the lifecycle lane cannot be flooded), and
/// another process's connect does too (or its loss does, within 10 s), the flooders are limited in the kernel and named in a "sensor
/// degraded" record, and learning still ends on time.
#[test]
fn r20_a_file_flood_by_nobody_neither_hides_an_exec_and_a_connect_nor_stalls_learning() {
    const LEARN: u64 = 45;
    // Learns this host: no other test may start programs meanwhile.
    let _host = monitor_tests::host_alone();
    let Some(_k) = kernel_test(
        "r20_a_file_flood_by_nobody_neither_hides_an_exec_and_a_connect_nor_stalls_learning",
    ) else {
        return;
    };
    let dir = test_dir("file-flood");
    let state = dir.join("state");
    let s = state.to_str().unwrap();
    let flood_dir = dir.join("flood");
    std::fs::create_dir_all(&flood_dir).unwrap();
    Command::new("chown")
        .args(["65534:65534", flood_dir.to_str().unwrap()])
        .status()
        .unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let started = Instant::now();
    let running = Agent::start(
        &dir,
        &[
            "--learn-for",
            &format!("{LEARN}s"),
            "--min-windows",
            "30",
            "--drain-interval",
            "1s",
            "--state-dir",
            s,
            "--api-listen",
            "",
            "--raw-events",
        ],
    );
    running.wait_for("the start", Duration::from_secs(30), |a| {
        a.stderr().contains("monitor: running on")
    });
    let flooders: Vec<Child> = (0..2)
        .map(|_| {
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(env!("CARGO_BIN_EXE_actor"))
                .args(["open-flood", flood_dir.to_str().unwrap(), "30"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_secs(5));

    // A new binary, and a connect by another process, mid-flood.
    let probe = dir.join("flood-probe-exe");
    std::fs::copy("/bin/true", &probe).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let acted = Instant::now();
    let mut exec = Command::new(&probe).spawn().unwrap();
    let exec_pid = exec.id();
    let mut connect = Command::new(env!("CARGO_BIN_EXE_actor"))
        .args(["connect", &port.to_string()])
        .spawn()
        .unwrap();
    let connect_pid = connect.id();
    let by_pid = |r: &serde_json::Value, pid: u32| r["actor"]["process"]["pid"] == pid;
    let lost = |r: &serde_json::Value, kind: &str| {
        r["message"].as_str().is_some_and(|m| {
            m.starts_with("monitor sensor degraded") && m.contains(&format!("ringbuf_full.{kind}"))
        })
    };
    let probe_path = probe.to_str().unwrap().to_owned();
    running.wait_for(
        "the exec and the connect, or their loss, in the sink",
        Duration::from_secs(10),
        |a| {
            let records = a.records_containing(&[
                &format!("\"pid\":{exec_pid}"),
                &format!("\"pid\":{connect_pid}"),
                "sensor degraded",
            ]);
            // Execs travel in the lifecycle lane, which the flood cannot
            // fill: this one must be captured, with its own program.
            let exec = records.iter().any(|r| {
                r["class_uid"] == 1007
                    && r["process"]["pid"] == exec_pid
                    && r["process"]["file"]["path"] == probe_path.as_str()
            });
            let connected = records
                .iter()
                .any(|r| (r["class_uid"] == 4001 && by_pid(r, connect_pid)) || lost(r, "net"));
            exec && connected
        },
    );
    eprintln!(
        "the exec and the connect reached the sink {:.1} s after they happened",
        acted.elapsed().as_secs_f64()
    );
    let _ = (exec.wait(), connect.wait());
    let opened: Vec<String> = flooders
        .into_iter()
        .map(|c| {
            String::from_utf8_lossy(&c.wait_with_output().unwrap().stdout)
                .trim()
                .to_owned()
        })
        .collect();
    running.wait_for(
        "the end of learning",
        Duration::from_secs(LEARN + 30),
        |a| a.stderr().contains("; detecting"),
    );
    let learned_after = started.elapsed();
    let degraded: Vec<String> = running
        .records_containing(&["sensor degraded"])
        .iter()
        .filter_map(|r| r["message"].as_str())
        .filter(|m| m.starts_with("monitor sensor degraded"))
        .map(str::to_owned)
        .collect();
    eprintln!(
        "flooders: {opened:?}; learning ended {:.0} s after start (learn_for {LEARN} s); degraded records: {}; first: {:?}",
        learned_after.as_secs_f64(),
        degraded.len(),
        degraded.first()
    );
    assert!(
        degraded
            .iter()
            .any(|m| m.contains("rate_limited.file") && m.contains("uid 65534")),
        "the flooders were limited and named: {degraded:?}"
    );
    assert!(
        !degraded.iter().any(|m| m.contains("ringbuf_full.exec")
            || m.contains("ringbuf_full.fork")
            || m.contains("ringbuf_full.exit")),
        "the file flood crowded out lifecycle records: {degraded:?}"
    );
    assert!(
        learned_after < Duration::from_secs(LEARN + 20),
        "learning ended {learned_after:?} after start"
    );
    let (status, _, stderr) = running.stop();
    assert!(status.success(), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
