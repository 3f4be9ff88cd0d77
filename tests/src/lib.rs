//! Helpers for monitor's integration tests: a privilege gate, a live capture
//! that collects events in the background, and partial event matchers.

pub mod nats;
pub mod receiver;
pub mod rsyslog;

use std::{
    sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::{Duration, Instant},
};

use monitor::{
    capture::{Capture, CaptureSettings},
    event::{Detail, Event},
};

/// Kernel tests hold this lock: they attach probes that see every process on
/// the host, and exact counts (an exec storm) must not see another test's
/// processes.
static KERNEL: Mutex<()> = Mutex::new(());

/// Tests that start processes without the kernel lock (the sink tests:
/// rsyslogd, Python receivers, delivery helpers; `monitor config check`)
/// share this lock; a test that learns what the host normally does and
/// expects a finding takes it alone, so that no other test's programs run
/// during its learning and detection. Without it, the sink tests' programs
/// (Python reading TLS keys, among others) taught the baseline that new
/// sensitive reads and new programs are common on this host, and the
/// drill and shadow-read findings sometimes stayed under the threshold.
static HOST: RwLock<()> = RwLock::new(());

/// For a test that starts processes of its own outside the kernel lock.
pub fn host_shared() -> RwLockReadGuard<'static, ()> {
    HOST.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// For a test that needs this host quiet but for its own workload.
pub fn host_alone() -> RwLockWriteGuard<'static, ()> {
    HOST.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Takes the kernel lock if this process may load eBPF programs.
///
/// Without root the test cannot run: under `cargo xtask test`
/// (`MONITOR_REQUIRE_KERNEL=1`) that is a failure; otherwise it prints a loud
/// SKIPPED line and the test returns.
pub fn kernel_test(name: &str) -> Option<MutexGuard<'static, ()>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        if std::env::var_os("MONITOR_REQUIRE_KERNEL").is_some() {
            panic!("{name}: needs root to load eBPF programs (MONITOR_REQUIRE_KERNEL is set)");
        }
        eprintln!(
            "SKIPPED {name}: needs root to load eBPF programs; run `sudo -E cargo xtask test`"
        );
        return None;
    }
    Some(
        KERNEL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    )
}

/// A capture running on its own runtime, collecting every event.
pub struct Recorder {
    runtime: tokio::runtime::Runtime,
    capture: Option<Capture>,
    /// Events collected so far.
    pub events: Vec<Event>,
}

impl Recorder {
    /// Starts a capture with default settings.
    pub fn start() -> Self {
        Self::with_settings(CaptureSettings::default())
    }

    /// Starts a capture with these settings.
    pub fn with_settings(settings: CaptureSettings) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let capture = runtime
            .block_on(async { Capture::start(&settings) })
            .expect("capture starts");
        Self {
            runtime,
            capture: Some(capture),
            events: Vec::new(),
        }
    }

    /// The capture.
    pub fn capture(&self) -> &Capture {
        self.capture.as_ref().expect("running")
    }

    /// Collects events until `done` holds for the collected set, or panics
    /// after `timeout` with what was seen.
    pub fn until(&mut self, timeout: Duration, what: &str, done: impl Fn(&[Event]) -> bool) {
        let deadline = Instant::now() + timeout;
        let capture = self.capture.as_mut().expect("running");
        let events = &mut self.events;
        self.runtime.block_on(async {
            while !done(events) {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, capture.next()).await {
                    Ok(Some(event)) => events.push(event),
                    Ok(None) => break,
                    Err(_) => break,
                }
            }
        });
        if !done(&self.events) {
            let kinds: Vec<&str> = self.events.iter().map(Event::kind).collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}; saw {} events: {kinds:?}",
                self.events.len()
            );
        }
    }

    /// Collects for `duration` regardless of content.
    pub fn collect_for(&mut self, duration: Duration) {
        let deadline = Instant::now() + duration;
        let capture = self.capture.as_mut().expect("running");
        let events = &mut self.events;
        self.runtime.block_on(async {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, capture.next()).await {
                    Ok(Some(event)) => events.push(event),
                    _ => break,
                }
            }
        });
    }

    /// Stops the sources and collects everything still queued.
    pub fn stop(&mut self) {
        let Some(mut capture) = self.capture.take() else {
            return;
        };
        let events = &mut self.events;
        self.runtime.block_on(async {
            capture.stop_sources();
            while let Ok(Some(event)) =
                tokio::time::timeout(Duration::from_secs(10), capture.next()).await
            {
                events.push(event);
            }
        });
        self.capture = Some(capture);
    }
}

/// Exec events whose arguments contain `token`.
pub fn execs_with<'a>(events: &'a [Event], token: &'a str) -> impl Iterator<Item = &'a Event> + 'a {
    events.iter().filter(move |e| match &e.detail {
        Detail::Exec(x) => x.args.iter().any(|a| a.as_bytes() == token.as_bytes()),
        _ => false,
    })
}

/// Waits until `child` (a `monitor record` or `run` with stderr piped)
/// says "monitor: ready" on stderr, at most 30 s; the rest of its stderr is
/// then read and dropped, so it never blocks on a full pipe.
pub fn wait_until_ready(child: &mut std::process::Child) {
    use std::io::Read as _;
    let mut err = child.stderr.take().expect("stderr piped");
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !String::from_utf8_lossy(&seen).contains("monitor: ready") {
        let mut b = [0u8; 256];
        let n = err.read(&mut b).unwrap();
        assert!(
            n > 0 && std::time::Instant::now() < deadline,
            "monitor did not start: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&b[..n]);
    }
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
}

/// A unique token for one test's processes.
pub fn token(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("monitor-test-{name}-{}-{nanos}", std::process::id())
}

/// A fresh directory for one test.
pub fn test_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(token(name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("its address")
        .port()
}

/// `python3 -m http.server` on a free port serving `www` (with `--cgi`,
/// scripts under `www/cgi-bin` run), once it accepts connections.
pub fn python_web_server(www: &std::path::Path, cgi: bool) -> (std::process::Child, u16) {
    let port = free_tcp_port();
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-m", "http.server"]);
    if cgi {
        cmd.arg("--cgi");
    }
    let server = cmd
        .args([&port.to_string(), "--bind", "127.0.0.1", "--directory"])
        .arg(www)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 -m http.server (python3 is on every machine of this kind)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the web server did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    (server, port)
}
