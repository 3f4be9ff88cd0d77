//! End to end, as a security team would rehearse it: a host with a normal
//! workload (a small web server answering requests, periodic jobs,
//! package-manager-like reads), the agent learning it, then detecting while
//! the workload goes on, and every attack drill run against it.
//!
//! Asserted: every drill is flagged, the median time from drill to finding
//! is under 5 s, the normal workload raises at most one finding in the
//! whole test, and the drills leave the system as they found it (file
//! hashes of the places they write, and the process list).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use monitor::state::findings::LoggedFinding;
use monitor_tests::{kernel_test, python_web_server, test_dir};

use crate::{agent::Agent, cli::agent};

/// The normal workload: runs until dropped. Its processes form trees of
/// their own (the web server; a shell that runs the periodic jobs and the
/// web clients), apart from this test process: the test harness polls the
/// agent, lists /proc and starts the drills, which is not the workload, and
/// its findings are printed, not counted.
struct Workload {
    server: Child,
    jobs: Child,
}

fn get(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = write!(s, "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    reply.starts_with(b"HTTP/1.0 200")
}

/// A web client: one request every 300 ms.
const CLIENT: &str = r#"
import socket, sys, time
port = int(sys.argv[1])
while True:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            while s.recv(65536):
                pass
    except OSError:
        pass
    time.sleep(0.3)
"#;

impl Workload {
    fn start(dir: &Path) -> Self {
        let www = dir.join("www");
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("index.html"), "<html><body>hello</body></html>\n").unwrap();
        let (server, port) = python_web_server(&www, false);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !get(port) {
            assert!(Instant::now() < deadline, "the web server did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        // The clients of the web server, a periodic job and
        // package-manager-like reads, in a process group of their own.
        let script = format!(
            "python3 -c \"$CLIENT\" {port} &\n\
             tick=0\n\
             while :; do\n\
               date > '{out}'; ls /etc > /dev/null; wc -l /etc/passwd > /dev/null\n\
               if [ $((tick % 3)) -eq 0 ]; then\n\
                 cat /var/lib/dpkg/status > /dev/null; ls /usr/share/doc > /dev/null; cat /etc/os-release > /dev/null\n\
               fi\n\
               tick=$((tick + 1)); sleep 2\n\
             done\n",
            out = dir.join("job.out").display()
        );
        let jobs = Command::new("/bin/sh")
            .args(["-c", &script])
            .env("CLIENT", CLIENT)
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self { server, jobs }
    }

    /// True if the finding is about a process of the workload.
    fn raised(&self, f: &LoggedFinding) -> bool {
        [self.server.id(), self.jobs.id()]
            .into_iter()
            .any(|root| monitor::drill::belongs_to(f, root))
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        // SAFETY: kill has no memory preconditions; the group is the jobs
        // shell's own (process_group(0)), so this signals nothing else.
        unsafe { libc::kill(-(self.jobs.id() as i32), libc::SIGKILL) };
        let _ = self.jobs.wait();
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// SHA-256-free but exact fingerprint: every byte of every file under the
/// places the drills write (and the files they read), by path.
fn fingerprint(paths: &[&str]) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(p: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(meta) = std::fs::symlink_metadata(p) else {
            return;
        };
        if meta.is_dir() {
            out.insert(p.to_owned(), b"<dir>".to_vec());
            if let Ok(entries) = std::fs::read_dir(p) {
                for e in entries.filter_map(Result::ok) {
                    walk(&e.path(), out);
                }
            }
        } else if meta.is_file() {
            out.insert(p.to_owned(), std::fs::read(p).unwrap_or_default());
        } else {
            out.insert(p.to_owned(), b"<other>".to_vec());
        }
    }
    let mut out = BTreeMap::new();
    for p in paths {
        walk(Path::new(p), &mut out);
    }
    out
}

/// Names of the entries of a directory (for /var/log and /tmp, whose files
/// other programs change).
fn names(dir: &str) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Command lines of every process.
fn processes() -> BTreeMap<u32, String> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        if let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            out.insert(pid, String::from_utf8_lossy(&cmd).replace('\0', " "));
        }
    }
    out
}

/// What an unprivileged user plants at every name in /tmp the drills of
/// earlier versions used (`/tmp/.monitor-drill-PID-NAME`, a file the
/// runner wrote and ran as root, and `/tmp/monitor-drill-PID-NAME`, a
/// directory it accepted if it existed), for the next pids: files nobody
/// owns, symlinks to nobody's bait script, and world-writable directories.
struct Planted {
    root: PathBuf,
    names: Vec<PathBuf>,
    before: BTreeMap<PathBuf, (Vec<u8>, std::time::SystemTime)>,
}

impl Planted {
    fn as_nobody(pids: std::ops::Range<u32>) -> Self {
        let root = PathBuf::from(format!("/tmp/monitor-e2e-bait-{}", std::process::id()));
        // One process plants everything (a shell would spend the very pids
        // it plants for), with the system's interpreter (root's PATH may
        // lead to a per-user one that nobody cannot run).
        const PLANT: &str = r##"
import os, sys
root, lo, hi, drills = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
os.umask(0)
os.mkdir(root, 0o777)
bait = root + "/bait"
script = "#!/bin/sh\ntouch %s/EXECUTED\n" % root
with open(bait, "w") as f:
    f.write(script)
os.chmod(bait, 0o777)
for pid in range(lo, hi):
    for d in drills:
        name = "/tmp/.monitor-drill-%d-%s" % (pid, d)
        if pid % 2 == 0:
            with open(name, "w") as f:
                f.write(script)
            os.chmod(name, 0o777)
        else:
            os.symlink(bait, name)
        os.mkdir("/tmp/monitor-drill-%d-%s" % (pid, d), 0o777)
"##;
        let mut names = Vec::new();
        for pid in pids.clone() {
            for drill in monitor::drill::DRILLS {
                names.push(PathBuf::from(format!(
                    "/tmp/.monitor-drill-{pid}-{}",
                    drill.name
                )));
                names.push(PathBuf::from(format!(
                    "/tmp/monitor-drill-{pid}-{}",
                    drill.name
                )));
            }
        }
        let status = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "/usr/bin/python3",
                "-c",
                PLANT,
            ])
            .arg(&root)
            .arg(pids.start.to_string())
            .arg(pids.end.to_string())
            .args(monitor::drill::DRILLS.iter().map(|d| d.name))
            .status()
            .unwrap();
        assert!(status.success(), "planting as nobody failed");
        let planted = Self {
            before: Self::state(&root, &names),
            root,
            names,
        };
        assert!(
            planted.before.len() > 1000,
            "planted {}",
            planted.before.len()
        );
        planted
    }

    /// Content and modification time of every planted thing (a directory's
    /// content: its entries).
    fn state(
        root: &Path,
        names: &[PathBuf],
    ) -> BTreeMap<PathBuf, (Vec<u8>, std::time::SystemTime)> {
        let mut out = BTreeMap::new();
        for p in names.iter().chain([&root.join("bait")]) {
            let Ok(meta) = std::fs::symlink_metadata(p) else {
                continue;
            };
            let content = if meta.is_dir() {
                names_of(p)
                    .into_iter()
                    .collect::<Vec<_>>()
                    .join("/")
                    .into_bytes()
            } else if meta.file_type().is_symlink() {
                std::fs::read_link(p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                std::fs::read(p).unwrap()
            };
            out.insert(p.clone(), (content, meta.modified().unwrap()));
        }
        out
    }

    fn assert_untouched(&self) {
        assert!(
            !self.root.join("EXECUTED").exists(),
            "a drill ran a program nobody planted"
        );
        let now = Self::state(&self.root, &self.names);
        let changed: Vec<&PathBuf> = self
            .before
            .iter()
            .filter(|(p, v)| now.get(*p) != Some(v))
            .map(|(p, _)| p)
            .collect();
        assert!(
            changed.is_empty(),
            "the drills wrote through what nobody planted: {changed:?}"
        );
    }
}

impl Drop for Planted {
    fn drop(&mut self) {
        for p in &self.names {
            let _ = std::fs::remove_dir(p).or_else(|_| std::fs::remove_file(p));
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn names_of(dir: &Path) -> BTreeSet<String> {
    names(dir.to_str().unwrap())
}

#[test]
fn every_drill_is_flagged_and_the_normal_workload_stays_quiet() {
    // Learns this host: no other test may start programs meanwhile.
    let _host = monitor_tests::host_alone();
    let Some(_k) = kernel_test("every_drill_is_flagged_and_the_normal_workload_stays_quiet") else {
        return;
    };
    let started = Instant::now();
    let dir = test_dir("e2e");
    let state = dir.join("state");
    // Fingerprints are taken while no agent watches: reading /etc/shadow
    // to check it is exactly what the agent flags.
    let watched = [
        "/etc/cron.d",
        "/etc/systemd/system",
        "/root/.ssh",
        "/etc/shadow",
        "/etc/gshadow",
        "/etc/passwd",
        "/bin/true",
        "/bin/echo",
    ];
    let files_before = fingerprint(&watched);
    let workload = Workload::start(&dir);
    let running = Agent::start(
        &dir,
        &[
            "--learn-for",
            "150s",
            "--min-windows",
            "100",
            "--drain-interval",
            "2s",
            "--state-dir",
            state.to_str().unwrap(),
            "--api-listen",
            "",
        ],
    );
    running.wait_for("the end of learning", Duration::from_secs(300), |a| {
        a.stderr().contains("; detecting")
    });
    let detecting_since = monitor::event::Timestamp::now();
    // Detection with the normal workload alone for a while.
    std::thread::sleep(Duration::from_secs(15));
    let last_pid: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let planted = Planted::as_nobody(last_pid + 1..last_pid + 400);

    let (log_before, tmp_before, state_before) = (
        names("/var/log"),
        names("/tmp"),
        names(state.to_str().unwrap()),
    );
    let processes_before = processes();

    // The drill runner is started by a shell, as the periodic job starts
    // its commands: the test process itself only ever starts shells.
    let drill = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "exec '{}' drill --all --json --state-dir '{}'",
            agent().display(),
            state.display()
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let runner_pid = drill.id();
    assert!(
        (last_pid + 1..last_pid + 400).contains(&runner_pid),
        "the drill runner's pid {runner_pid} is outside the planted range"
    );
    let out = drill.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let outcomes: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("drill output {l:?}: {e}")))
        .collect();
    assert_eq!(
        outcomes.len(),
        monitor::drill::DRILLS.len(),
        "one outcome per drill: {stdout}"
    );

    // The normal workload goes on in detection.
    std::thread::sleep(Duration::from_secs(10));
    // Findings are counted before the agent is stopped: a signal to the
    // agent is tampering, and the agent rightly reports this one too.
    let (logged, bad) =
        monitor::fileio::jsonl::read_lines::<LoggedFinding>(&state.join("findings.jsonl")).unwrap();
    let (status, _, stderr) = running.stop();
    assert!(status.success(), "agent exit {status:?}: {stderr}");
    // Every drill flagged, fast.
    let mut table = String::new();
    for o in &outcomes {
        table.push_str(&format!(
            "{:<17} flagged={} seconds={} finding={} {}\n",
            o["drill"].as_str().unwrap(),
            o["flagged"],
            o["seconds"],
            o["finding"],
            o["summary"].as_str().unwrap_or_default()
        ));
    }
    eprintln!("drills:\n{table}");
    let missed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o["flagged"] != true)
        .map(|o| o["drill"].as_str().unwrap())
        .collect();
    if !missed.is_empty() {
        // What the agent did say, to tell a missed detection from a lost
        // window: every finding it logged, and the end of its diagnostics
        // (loss counters are printed at stop).
        let findings: String = logged
            .iter()
            .map(|f| {
                let pid = f.finding.process.as_ref().map_or(0, |p| p.pid);
                let ancestry: Vec<u32> = f.finding.ancestry.iter().map(|a| a.pid).collect();
                format!("  pid {pid} ancestry {ancestry:?}: {}\n", f.finding.summary)
            })
            .collect();
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "not flagged: {missed:?}\n{table}\nfindings logged:\n{findings}\nagent stderr (end):\n{}",
            tail.join("\n")
        );
    }
    let mut secs: Vec<f64> = outcomes
        .iter()
        .filter_map(|o| o["seconds"].as_f64())
        .collect();
    secs.sort_by(f64::total_cmp);
    let median = (secs[(secs.len() - 1) / 2] + secs[secs.len() / 2]) / 2.0;
    assert!(
        median < 5.0,
        "median time from drill to finding {median:.1} s\n{table}"
    );

    // The normal workload: at most one finding in the whole test.
    assert!(bad.is_empty(), "{bad:?}");
    let drill_findings: BTreeSet<String> = outcomes
        .iter()
        .flat_map(|o| {
            o["findings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap().to_owned())
        })
        .collect();
    // The workload's own trees count. Findings about other processes on the
    // host are printed, not counted: they are not the workload (the test
    // harness itself; on a developer's machine, their shell).
    let outside: Vec<&LoggedFinding> = logged
        .iter()
        .filter(|f| {
            !drill_findings.contains(&f.finding.id) && !monitor::drill::belongs_to(f, runner_pid)
        })
        .collect();
    let normal: Vec<&&LoggedFinding> = outside.iter().filter(|f| workload.raised(f)).collect();
    for f in &outside {
        let whose = if workload.raised(f) {
            "the normal workload"
        } else {
            "another process on this host"
        };
        eprintln!(
            "finding outside the drills, from {whose}:\n{}",
            f.finding.explanation()
        );
    }
    assert!(
        normal.len() <= 1,
        "the normal workload raised {} findings (detecting since {detecting_since})",
        normal.len()
    );
    drop(workload);

    // The drills left the system as they found it.
    assert_eq!(
        fingerprint(&watched),
        files_before,
        "files the drills write or read changed"
    );
    planted.assert_untouched();
    drop(planted);
    assert_eq!(names("/var/log"), log_before, "/var/log entries changed");
    let tmp_after = names("/tmp");
    let leftover: Vec<&String> = tmp_after
        .difference(&tmp_before)
        .filter(|n| n.contains("drill"))
        .collect();
    assert!(
        leftover.is_empty(),
        "drill files left in /tmp: {leftover:?}"
    );
    let state_after = names(state.to_str().unwrap());
    assert!(
        state_after.iter().all(|n| !n.contains("drill")),
        "drill files left in the state directory: {state_after:?} (before: {state_before:?})"
    );
    let after = processes();
    let new_drill_processes: Vec<&String> = after
        .iter()
        .filter(|(pid, cmd)| {
            !processes_before.contains_key(pid) && (cmd.contains("drill") || cmd.contains("memfd:"))
        })
        .map(|(_, c)| c)
        .collect();
    assert!(
        new_drill_processes.is_empty(),
        "drill processes still running: {new_drill_processes:?}"
    );
    // The report of this run, opened in real headless Chromium.
    let report = dir.join("report.html");
    let out = Command::new(agent())
        .args(["report", "--output"])
        .arg(&report)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_report_in_chromium(&report);
    eprintln!(
        "end-to-end test took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    assert!(started.elapsed() < Duration::from_secs(600));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Where test artifacts (the report screenshot) are kept.
fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Renders the report in headless Chromium: the DOM must hold its charts
/// with their data, and the screenshot (kept as a test artifact) must show
/// them: enough coloured pixels, not a blank page.
fn check_report_in_chromium(report: &Path) {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(chromium) = chromium else {
        if std::env::var_os("MONITOR_REQUIRE_KERNEL").is_some() {
            panic!("chromium is missing: `cargo xtask test` installs the Debian package chromium");
        }
        eprintln!(
            "SKIPPED the report rendering check: chromium is not installed (`cargo xtask test` installs it)"
        );
        return;
    };
    let chromium_profile = report.with_file_name("chromium-profile");
    let url = format!("file://{}", report.display());
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ];
    let dom = Command::new(chromium)
        .args(common)
        .arg(format!("--user-data-dir={}", chromium_profile.display()))
        .args(["--dump-dom", &url])
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&dom.stdout);
    let charts = dom.matches("<svg class=\"chart\"").count();
    assert!(
        charts >= 5,
        "the rendered report has {charts} charts, expected learning curve, clusters, scores, timeline, drops"
    );
    for part in [
        "Learning curve",
        "Programs and their clusters",
        "Score distribution",
        "Findings timeline",
        "Drops",
        "Sink health",
    ] {
        assert!(dom.contains(part), "the rendered report lacks {part:?}");
    }
    assert!(
        dom.matches("class=\"point\"").count() >= 10,
        "clusters and findings are drawn as points"
    );
    assert!(
        dom.contains("class=\"series\"") && dom.contains("class=\"bar\""),
        "lines and bars are drawn"
    );
    let shot = artifacts().join("report.png");
    let _ = std::fs::remove_file(&shot);
    let status = Command::new(chromium)
        .args(common)
        .arg(format!("--user-data-dir={}", chromium_profile.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .args(["--window-size=900,3000", "--hide-scrollbars", &url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run chromium");
    assert!(
        status.success() && shot.exists(),
        "chromium wrote no screenshot"
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let coloured = buf[..info.buffer_size()]
        .chunks(channels)
        .filter(|px| {
            let (r, g, b) = (i32::from(px[0]), i32::from(px[1]), i32::from(px[2]));
            (r - g).abs().max((g - b).abs()).max((r - b).abs()) > 60
        })
        .count();
    assert!(
        coloured > 5_000,
        "the screenshot shows only {coloured} coloured pixels: charts did not render"
    );
    eprintln!(
        "report screenshot: {} ({coloured} coloured pixels)",
        shot.display()
    );
    let _ = std::fs::remove_dir_all(&chromium_profile);
}
