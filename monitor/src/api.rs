//! The local operations API: Prometheus metrics (`/metrics`), health
//! (`/healthz`) and the agent's status (`/status`, JSON). Read-only, on two
//! listeners ([`Exposure`]): TCP (`api.listen`, loopback by default) for
//! metrics and health without finding details, and a root-only unix socket
//! for everything. Both are bounded ([`ApiLimits`]).

use std::{
    collections::BTreeMap,
    convert::Infallible,
    fmt::Write as _,
    sync::{Arc, Mutex},
};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, service::service_fn};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{
    channel::ChannelStats,
    event::Timestamp,
    kernel::SensorCondition,
    model::{Phase, Progress},
    output::{sinks::SinkHealth, spool::SpoolStats},
};

/// What a running agent reports about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Agent process id.
    pub pid: u32,
    /// Agent version.
    pub version: String,
    /// Host name.
    pub host: String,
    /// When it started.
    pub started: Timestamp,
    /// When this status was taken.
    pub updated: Timestamp,
    /// Learning or detecting.
    pub phase: Phase,
    /// Model progress and counters.
    pub progress: Progress,
    /// Events processed.
    pub events: u64,
    /// Events per second over the last interval.
    pub events_per_sec: f64,
    /// Kernel records received.
    pub kernel_records: u64,
    /// Lost events by reason (never silent).
    pub lost: BTreeMap<String, u64>,
    /// Events lost within the last minute, by reason (the health).
    #[serde(default)]
    pub lost_last_minute: BTreeMap<String, u64>,
    /// Degraded fields by reason (e.g. user memory not present).
    pub faults: BTreeMap<String, u64>,
    /// Sensor states, by sensor name.
    pub sensors: BTreeMap<String, SensorReport>,
    /// Sinks.
    pub sinks: Vec<SinkHealth>,
    /// The spool.
    pub spool: SpoolStats,
    /// The bounded channels between the agent's stages, by name.
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelStats>,
    /// Findings raised since start.
    pub findings: u64,
    /// The last finding's one-line summary.
    pub last_finding: Option<String>,
    /// Processes tracked.
    pub processes: usize,
    /// Resident memory of the agent, bytes.
    pub rss_bytes: u64,
    /// Rotations of the logs in the state directory.
    #[serde(default)]
    pub log_rotations: u64,
}

/// A sensor's state as the status, the metrics and the heartbeat report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SensorReport {
    /// `attached`, `disabled` or `unavailable`.
    pub state: SensorCondition,
    /// Why it is unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl SensorReport {
    /// The report of a sensor state.
    pub fn of(state: &crate::kernel::SensorState) -> Self {
        Self {
            state: state.condition(),
            reason: state.reason(),
        }
    }

    /// True when the host is partly blind because of this sensor.
    pub fn is_unavailable(&self) -> bool {
        self.state == SensorCondition::Unavailable
    }
}

impl std::fmt::Display for SensorReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reason {
            Some(why) => write!(f, "{}: {why}", self.state.name()),
            None => f.write_str(self.state.name()),
        }
    }
}

/// Shared status.
pub type SharedStatus = Arc<Mutex<Option<Status>>>;

/// Healthy, or why not.
pub fn health(status: &Status) -> Result<(), String> {
    let mut problems = Vec::new();
    for s in &status.sinks {
        if s.failing_for_secs.is_some_and(|t| t > 60.0) {
            problems.push(format!(
                "sink {} failing: {}",
                s.name,
                s.last_error.clone().unwrap_or_default()
            ));
        }
    }
    if !status.lost_last_minute.is_empty() {
        problems.push(format!(
            "events lost in the last minute: {}",
            crate::kernel::counters::counts_line(&status.lost_last_minute)
        ));
    }
    if let Some(why) = &status.spool.degraded {
        problems.push(format!("spool degraded: {why}"));
    }
    for (sensor, report) in &status.sensors {
        if report.is_unavailable() {
            problems.push(format!("sensor {sensor} {report}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The status in Prometheus text exposition format. `Public` leaves out
/// what would tell a local user whether their behaviour was flagged.
pub fn metrics(s: &Status, exposure: Exposure) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, lines: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in lines {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |v: f64| vec![(String::new(), v)];
    metric("monitor_up", "gauge", "1 while the agent runs.", one(1.0));
    metric(
        "monitor_learning",
        "gauge",
        "1 while learning the baseline, 0 while detecting.",
        one(f64::from(u8::from(s.phase == Phase::Learning))),
    );
    metric(
        "monitor_sensor_up",
        "gauge",
        "1 if the sensor runs, 0 if it is unavailable on this kernel (the reason label says why) or disabled.",
        s.sensors
            .iter()
            .map(|(name, r)| {
                (
                    format!(
                        "{{sensor=\"{}\",state=\"{}\",reason=\"{}\"}}",
                        escape_label(name),
                        r.state.name(),
                        escape_label(r.reason.as_deref().unwrap_or(""))
                    ),
                    f64::from(u8::from(r.state == SensorCondition::Attached)),
                )
            })
            .collect(),
    );
    metric(
        "monitor_events_total",
        "counter",
        "Events processed.",
        one(s.events as f64),
    );
    metric(
        "monitor_kernel_records_total",
        "counter",
        "Records received from the kernel.",
        one(s.kernel_records as f64),
    );
    metric(
        "monitor_lost_events_total",
        "counter",
        "Events lost, by reason.",
        s.lost
            .iter()
            .map(|(k, v)| (format!("{{reason=\"{}\"}}", escape_label(k)), *v as f64))
            .collect(),
    );
    metric(
        "monitor_windows_total",
        "counter",
        "Behaviour windows closed.",
        one(s.progress.windows_seen as f64),
    );
    metric(
        "monitor_baseline_windows",
        "gauge",
        "Windows in the baseline.",
        one(s.progress.baseline_windows as f64),
    );
    metric(
        "monitor_programs",
        "gauge",
        "Behaviour programs in the baseline.",
        one(s.progress.programs as f64),
    );
    if exposure == Exposure::Private {
        metric(
            "monitor_findings_total",
            "counter",
            "Findings raised.",
            one(s.findings as f64),
        );
        metric(
            "monitor_findings_suppressed_total",
            "counter",
            "Finding-worthy windows folded into an open finding.",
            one(s.progress.suppressed as f64),
        );
    }
    {
        use std::sync::atomic::Ordering;
        metric(
            "monitor_api_connections_refused_total",
            "counter",
            "API connections closed on accept because the most allowed were being served.",
            one(CONNECTIONS_REFUSED.load(Ordering::Relaxed) as f64),
        );
        metric(
            "monitor_api_accept_errors_total",
            "counter",
            "Failed accepts on the API (for example out of file descriptors).",
            one(ACCEPT_ERRORS.load(Ordering::Relaxed) as f64),
        );
    }
    for (name, help, value) in [
        (
            "monitor_channel_depth",
            "Items waiting in a channel between two stages of the agent.",
            (|c: &ChannelStats| c.depth) as fn(&ChannelStats) -> u64,
        ),
        (
            "monitor_channel_sent_total",
            "Items sent through a channel between two stages.",
            |c| c.sent,
        ),
        (
            "monitor_channel_waited_total",
            "Sends that found a channel full and waited (backpressure).",
            |c| c.waited,
        ),
        (
            "monitor_channel_dropped_total",
            "Items dropped because a channel was full (raw events only; findings wait).",
            |c| c.dropped,
        ),
    ] {
        metric(
            name,
            if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            },
            help,
            s.channels
                .iter()
                .map(|(k, c)| {
                    (
                        format!("{{channel=\"{}\"}}", escape_label(k)),
                        value(c) as f64,
                    )
                })
                .collect(),
        );
    }
    let b = &s.progress.bounds;
    metric(
        "monitor_learning_store_bytes",
        "gauge",
        "Estimated memory of the windows kept for learning (model.learning_memory bounds it).",
        one(b.learning_bytes as f64),
    );
    metric(
        "monitor_bounded_total",
        "counter",
        "What the agent's memory bounds gave up, by bound: learning windows evicted or refused, open findings forgotten early, drift facts not learned.",
        [
            ("learning_evicted", b.learning_evicted),
            ("learning_refused", b.learning_refused),
            ("open_findings_evicted", b.open_findings_evicted),
            ("drift_facts_refused", b.drift_facts_refused),
        ]
        .into_iter()
        .map(|(bound, v)| (format!("{{bound=\"{bound}\"}}"), v as f64))
        .collect(),
    );
    metric(
        "monitor_log_rotations_total",
        "counter",
        "Rotations of the logs in the state directory (agent.log_max_size).",
        one(s.log_rotations as f64),
    );
    metric(
        "monitor_processes_tracked",
        "gauge",
        "Processes in the process table.",
        one(s.processes as f64),
    );
    metric(
        "monitor_resident_memory_bytes",
        "gauge",
        "Resident memory of the agent.",
        one(s.rss_bytes as f64),
    );
    metric(
        "monitor_spool_bytes",
        "gauge",
        "Bytes in the spool.",
        one(s.spool.bytes as f64),
    );
    metric(
        "monitor_spool_dropped_total",
        "counter",
        "Records dropped because the spool was full, by class.",
        vec![
            (
                "{class=\"findings\"}".into(),
                s.spool.dropped_findings as f64,
            ),
            (
                "{class=\"activity\"}".into(),
                s.spool.dropped_activity as f64,
            ),
        ],
    );
    metric(
        "monitor_spool_damaged_total",
        "counter",
        "Damaged stretches of spool segments (torn writes, zeros, flipped bits) skipped.",
        one(s.spool.damaged as f64),
    );
    metric(
        "monitor_spool_degraded",
        "gauge",
        "1 while the spool's disk refuses writes.",
        one(f64::from(u8::from(s.spool.degraded.is_some()))),
    );
    let sink = |f: fn(&SinkHealth) -> f64| -> Vec<(String, f64)> {
        s.sinks
            .iter()
            .map(|h| (format!("{{sink=\"{}\"}}", escape_label(&h.name)), f(h)))
            .collect()
    };
    metric(
        "monitor_sink_delivered_total",
        "counter",
        "Records delivered, by sink.",
        sink(|h| h.delivered as f64),
    );
    metric(
        "monitor_sink_failures_total",
        "counter",
        "Failed delivery attempts, by sink.",
        sink(|h| h.failures as f64),
    );
    metric(
        "monitor_sink_rejected_total",
        "counter",
        "Records the destination rejected, by sink.",
        sink(|h| h.rejected as f64),
    );
    metric(
        "monitor_sink_up",
        "gauge",
        "1 while the sink delivers.",
        sink(|h| f64::from(u8::from(h.last_error.is_none()))),
    );
    out
}

/// Who can reach a listener, and so what it may tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// TCP (`api.listen`, loopback by default): any local user can connect.
    /// Serves `/metrics` and `/healthz` only, without the finding counters:
    /// an attacker must not be able to test whether what they did was
    /// flagged.
    Public,
    /// The unix socket in the state directory (0600, in a 0700 directory):
    /// root only. Serves everything, `/status` included; `monitor status`
    /// reads it.
    Private,
}

/// Limits that keep the API from being used to exhaust the agent.
#[derive(Debug, Clone, Copy)]
pub struct ApiLimits {
    /// Connections served at once; more are closed as soon as accepted.
    pub max_connections: usize,
    /// Time for a client to send its request headers.
    pub header_timeout: std::time::Duration,
    /// Longest a connection may live (one request each: no keep-alive).
    pub connection_timeout: std::time::Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            max_connections: 32,
            header_timeout: std::time::Duration::from_secs(5),
            connection_timeout: std::time::Duration::from_secs(15),
        }
    }
}

/// Connections closed because `max_connections` were being served.
pub static CONNECTIONS_REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Failed `accept` calls (for example out of file descriptors).
pub static ACCEPT_ERRORS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Something that accepts connections: a TCP or a unix listener.
pub trait Acceptor: Send + 'static {
    /// The connection type.
    type Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    /// The next connection.
    fn accept(&self) -> impl std::future::Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Acceptor for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<Self::Stream> {
        tokio::net::TcpListener::accept(self).await.map(|(s, _)| s)
    }
}

impl Acceptor for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<Self::Stream> {
        tokio::net::UnixListener::accept(self).await.map(|(s, _)| s)
    }
}

/// Serves the API on `listener` until `shutdown`.
///
/// Under a flood of connections the agent stays whole: at most
/// `max_connections` are served at once (the rest are closed on accept,
/// and counted), a client gets `header_timeout` to send its request and
/// `connection_timeout` in all, and failed accepts (out of descriptors)
/// back off up to a second instead of spinning.
pub async fn serve<A: Acceptor>(
    listener: A,
    exposure: Exposure,
    limits: ApiLimits,
    status: SharedStatus,
    shutdown: CancellationToken,
) {
    use std::sync::atomic::Ordering;
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut backoff = std::time::Duration::ZERO;
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            () = shutdown.cancelled() => return,
        };
        let stream = match conn {
            Ok(stream) => {
                backoff = std::time::Duration::ZERO;
                stream
            }
            Err(e) => {
                let n = ACCEPT_ERRORS.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::warn!(error = %e, failed_accepts = n + 1, "the API cannot accept connections; backing off");
                }
                backoff = (backoff * 2).clamp(
                    std::time::Duration::from_millis(10),
                    std::time::Duration::from_secs(1),
                );
                tokio::select! {
                    () = tokio::time::sleep(backoff) => continue,
                    () = shutdown.cancelled() => return,
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            CONNECTIONS_REFUSED.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let status = status.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let status = status.clone();
                async move { Ok::<_, Infallible>(respond(req.uri().path(), exposure, &status)) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .keep_alive(false)
                .serve_connection(io, service);
            let _ = tokio::time::timeout(limits.connection_timeout, connection).await;
        });
    }
}

fn respond(path: &str, exposure: Exposure, status: &SharedStatus) -> Response<Full<Bytes>> {
    let snapshot = status.lock().expect("status lock").clone();
    let reply = |code: u16, ctype: &str, body: String| {
        Response::builder()
            .status(code)
            .header("Content-Type", ctype)
            .body(Full::new(Bytes::from(body)))
            .expect("valid response")
    };
    let Some(s) = snapshot else {
        return reply(503, "text/plain", "starting\n".into());
    };
    match (path, exposure) {
        ("/metrics", _) => reply(200, "text/plain; version=0.0.4", metrics(&s, exposure)),
        ("/healthz", _) => match health(&s) {
            Ok(()) => reply(200, "text/plain", "ok\n".into()),
            Err(why) => reply(503, "text/plain", format!("unhealthy: {why}\n")),
        },
        ("/status", Exposure::Private) => reply(
            200,
            "application/json",
            serde_json::to_string_pretty(&s).unwrap_or_default(),
        ),
        ("/status", Exposure::Public) => reply(
            403,
            "text/plain",
            "the status is served to root only: `monitor status` (the unix socket api.sock in the state directory)\n".into(),
        ),
        _ => reply(
            404,
            "text/plain",
            "not found: try /metrics or /healthz\n".into(),
        ),
    }
}
