//! `monitor record` then `monitor replay`: a recorded stream of a real
//! server (Python's http.server with CGI, answering requests) in which the
//! server runs a shell through a CGI request near the end gives an explained
//! finding about that shell; the same stream cut before it gives none.

use std::{
    io::{Read, Write},
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use monitor_tests::{kernel_test, python_web_server, test_dir};

use crate::cli::agent;

fn get(port: u16, path: &str) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply
}

fn replay(file: &Path, learn_for: &str) -> (Vec<serde_json::Value>, String) {
    let out = Command::new(agent())
        .args(["replay", "--learn-for", learn_for])
        .arg(file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "replay failed: {stderr}");
    let findings = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("replay output {l:?}: {e}")))
        .collect();
    (findings, stderr)
}

/// A recorded stream of a real server, and the time just before the
/// attack in it: 70 s of pages served, then a shell run through a CGI
/// request, then 15 s more of pages. Recorded once per test process (it
/// takes about 90 s) and shared by the tests that replay it. The caller
/// holds the host alone, then the kernel lock (in that order, as every test
/// does): other tests' programs in the recording made the learned baseline
/// take the shell for usual (a CI run, with the NATS tests alongside).
pub fn recorded_server_stream() -> &'static (std::path::PathBuf, monitor::event::Timestamp) {
    static STREAM: OnceLock<(std::path::PathBuf, monitor::event::Timestamp)> = OnceLock::new();
    STREAM.get_or_init(record_server_stream)
}

fn record_server_stream() -> (std::path::PathBuf, monitor::event::Timestamp) {
    let dir = test_dir("recorded-server");
    let www = dir.join("www");
    std::fs::create_dir_all(www.join("cgi-bin")).unwrap();
    std::fs::write(www.join("index.html"), "hello\n").unwrap();
    let script = www.join("cgi-bin/status.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho 'Content-Type: text/plain'\necho\nid\nuname -a\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    let recording = dir.join("stream.jsonl");
    let mut recorder = Command::new(agent())
        .args(["record", "--drain-interval", "1", "--output"])
        .arg(&recording)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    monitor_tests::wait_until_ready(&mut recorder);

    let (mut server, port) = python_web_server(&www, true);
    let started = Instant::now();
    while !get(port, "/").contains("hello") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the server did not come up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // 70 s of normal service: pages, every 300 ms.
    while started.elapsed() < Duration::from_secs(70) {
        assert!(get(port, "/").contains("hello"));
        std::thread::sleep(Duration::from_millis(300));
    }
    let cut = monitor::event::Timestamp::now();
    std::thread::sleep(Duration::from_secs(2));
    // The attack: the server runs a shell for a request.
    let reply = get(port, "/cgi-bin/status.sh");
    assert!(reply.contains("uid="), "the CGI shell ran: {reply}");
    // Normal service again for a while.
    while started.elapsed() < Duration::from_secs(85) {
        get(port, "/");
        std::thread::sleep(Duration::from_millis(300));
    }
    let _ = server.kill();
    let _ = server.wait();
    // SAFETY: signalling our child.
    unsafe { libc::kill(recorder.id() as i32, libc::SIGTERM) };
    assert!(recorder.wait().unwrap().success());

    (recording, cut)
}

/// The events of `recording` before `cut`, written to `to`.
pub fn cut_before(recording: &Path, cut: monitor::event::Timestamp, to: &Path) {
    // The same stream without the attack: every event before it.
    let text = std::fs::read_to_string(recording).unwrap();
    let before: Vec<&str> = text
        .lines()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let t: monitor::event::Timestamp = serde_json::from_value(v["time"].clone()).unwrap();
            t < cut
        })
        .collect();
    std::fs::write(to, before.join("\n") + "\n").unwrap();
}

#[test]
fn a_shell_from_a_server_is_found_in_replay_and_the_stream_without_it_does_not() {
    let host = monitor_tests::host_alone();
    let Some(_k) =
        kernel_test("a_shell_from_a_server_is_found_in_replay_and_the_stream_without_it_does_not")
    else {
        return;
    };
    let (recording, cut) = recorded_server_stream();
    drop(host);
    let dir = test_dir("replay");
    let clean = dir.join("clean.jsonl");
    cut_before(recording, *cut, &clean);

    let (findings, stderr) = replay(&clean, "45s");
    assert!(
        findings.is_empty(),
        "the stream without the attack raised findings:\n{findings:#?}\n{stderr}"
    );

    let (findings, stderr) = replay(recording, "45s");
    let shell = findings.iter().find(|a| {
        let text = a.to_string();
        text.contains("python")
            && (a["program"].as_str().is_some_and(|p| p.ends_with("sh"))
                || text.contains("/usr/bin/dash"))
    });
    let Some(shell) = shell else {
        panic!("no finding about the server's shell:\n{findings:#?}\n{stderr}");
    };
    // Explained: novelty, the process tree up to the server, the threshold.
    assert!(
        !shell["novelty"].as_array().unwrap().is_empty(),
        "{shell:#}"
    );
    assert!(
        shell["ancestry"].to_string().contains("http.server"),
        "{shell:#}"
    );
    assert!(
        shell["threshold"].as_f64().unwrap() > 0.99
            && shell["score"].as_f64().unwrap() >= shell["threshold"].as_f64().unwrap()
    );
    assert!(
        shell["summary"]
            .as_str()
            .unwrap()
            .contains("behaved unlike its baseline")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
