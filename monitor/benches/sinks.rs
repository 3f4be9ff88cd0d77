//! `cargo bench --bench sinks`: findings per second through the agent's own
//! spool and sinks, end to end (append to the on-disk spool, deliver, ack).
//!
//! - file sink: OCSF findings into a JSON Lines file;
//! - HTTP sink: Splunk HEC batches to a local HTTP/1.1 server (keep-alive,
//!   answers 200 like Splunk) started by the benchmark;
//! - spool replay: findings left in the spool by a stopped agent, delivered
//!   after the spool is reopened (a restart).
//!
//! The finding is a real one (`fixtures/logged-finding.json`, a `cat
//! /etc/shadow` finding from this machine) rendered as OCSF, about 5 KiB.

use std::{path::Path, sync::Arc, time::Instant};

use monitor::{
    CancellationToken,
    output::{
        ocsf::{self, Host},
        sink_config::{Compression, SinkConfig},
        sinks::{self, Delivery, Sink, SinkHealth},
        spool::{Class, Spool, SpoolSettings},
    },
    state::findings::LoggedFinding,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const FILE_FINDINGS: usize = 50_000;
const HTTP_FINDINGS: usize = 20_000;
const REPLAY_FINDINGS: usize = 50_000;

fn finding() -> Vec<u8> {
    let text = include_str!("fixtures/logged-finding.json");
    let logged: LoggedFinding = serde_json::from_str(text).expect("fixture is a logged finding");
    let host = Host {
        name: "bench-host".into(),
        kernel: "6.18".into(),
    };
    serde_json::to_vec(&ocsf::finding(&logged.finding, &host)).expect("serializes")
}

fn fill(spool: &Spool, n: usize, record: &[u8]) -> f64 {
    let started = Instant::now();
    for _ in 0..n {
        spool.append(Class::Findings, record).expect("spool append");
    }
    spool.sync();
    n as f64 / started.elapsed().as_secs_f64()
}

/// Delivers everything in the spool to `config`'s sink; returns seconds.
fn deliver(rt: &tokio::runtime::Runtime, spool: &Arc<Spool>, config: &SinkConfig) -> f64 {
    let name = config.name();
    let started = Instant::now();
    rt.block_on(async {
        let shutdown = CancellationToken::new();
        let job = Delivery {
            spool: spool.clone(),
            sink: Sink::from_config(config, "bench-host").expect("sink"),
            name: name.clone(),
            index: 0,
            batching: sinks::batching(config),
            host: "bench-host".into(),
            healths: Arc::new(std::sync::Mutex::new(vec![SinkHealth::new(&name)])),
            dead_letters: Arc::new(monitor::output::dead_letters::DeadLetters::new(
                &spool.dir().join("dead-letters.jsonl"),
                monitor::fileio::rotate::Rotation::default(),
            )),
            shutdown: shutdown.clone(),
            drain: std::time::Duration::from_secs(600),
        };
        let task = tokio::spawn(sinks::deliver(job));
        // Deliver what is spooled, then stop.
        shutdown.cancel();
        task.await.expect("delivery task");
    });
    assert_eq!(spool.pending(&name), 0, "{name}: everything delivered");
    started.elapsed().as_secs_f64()
}

/// The spool under `dir`, for `config`'s sink, big enough for any run.
fn open_spool(dir: &Path, config: &SinkConfig) -> Arc<Spool> {
    let settings = SpoolSettings {
        max_bytes: 1 << 34,
        ..SpoolSettings::default()
    };
    Spool::open(&dir.join("spool"), settings, &[config.name()]).expect("spool")
}

fn file_sink(dir: &Path) -> SinkConfig {
    SinkConfig::File {
        path: dir.join("findings.jsonl"),
        max_size: 1 << 40,
        keep: 1,
    }
}

/// A minimal HTTP/1.1 server answering every request with Splunk's success
/// body; returns its port and how many requests it served.
fn http_server(rt: &tokio::runtime::Runtime) -> (u16, Arc<std::sync::atomic::AtomicU64>) {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = served.clone();
    rt.spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { return };
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::with_capacity(1 << 20);
                loop {
                    // Headers, then Content-Length bytes of body.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 65536];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 65536];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + len);
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let body = br#"{"text":"Success","code":0}"#;
                    let reply = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
                    if conn.write_all(reply.as_bytes()).await.is_err() || conn.write_all(body).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, served)
}

fn main() {
    let record = finding();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let base = std::env::temp_dir().join(format!("monitor-bench-sinks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("bench dir");
    println!("sink benchmark: {} B per OCSF finding", record.len());

    // File sink, end to end.
    let dir = base.join("file");
    let config = file_sink(&dir);
    let spool = open_spool(&dir, &config);
    let started = Instant::now();
    let append_rate = fill(&spool, FILE_FINDINGS, &record);
    let secs = deliver(&rt, &spool, &config);
    let total = started.elapsed().as_secs_f64();
    let lines = std::fs::read_to_string(dir.join("findings.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0);
    assert_eq!(lines, FILE_FINDINGS);
    println!(
        "file sink:    {:>8.0} findings/s end to end ({FILE_FINDINGS} findings in {total:.2} s; spool append {append_rate:.0}/s, delivery {:.0}/s)",
        FILE_FINDINGS as f64 / total,
        FILE_FINDINGS as f64 / secs
    );
    drop(spool);

    // HTTP sink (Splunk HEC, gzip, batches of 500).
    let (port, served) = http_server(&rt);
    let dir = base.join("http");
    let config = SinkConfig::SplunkHec {
        url: format!("http://127.0.0.1:{port}/services/collector/event"),
        token_file: None,
        token_env: Some("MONITOR_BENCH_TOKEN".into()),
        index: None,
        sourcetype: "ocsf:monitor".into(),
        batch_size: 500,
        batch_timeout: std::time::Duration::from_millis(200),
        compression: Compression::Gzip,
        ca_file: None,
    };
    // SAFETY: set before any other thread reads the environment.
    unsafe { std::env::set_var("MONITOR_BENCH_TOKEN", "bench-token") };
    let spool = open_spool(&dir, &config);
    let started = Instant::now();
    fill(&spool, HTTP_FINDINGS, &record);
    let secs = deliver(&rt, &spool, &config);
    let total = started.elapsed().as_secs_f64();
    println!(
        "HTTP sink:    {:>8.0} findings/s end to end ({HTTP_FINDINGS} findings, {} requests, in {total:.2} s; delivery {:.0}/s)",
        HTTP_FINDINGS as f64 / total,
        served.load(std::sync::atomic::Ordering::Relaxed),
        HTTP_FINDINGS as f64 / secs
    );
    drop(spool);

    // Spool replay after a restart.
    let dir = base.join("replay");
    let config = file_sink(&dir);
    {
        let spool = open_spool(&dir, &config);
        fill(&spool, REPLAY_FINDINGS, &record);
    } // the agent stops with everything still spooled
    let started = Instant::now();
    let spool = open_spool(&dir, &config);
    let reopen = started.elapsed().as_secs_f64();
    deliver(&rt, &spool, &config);
    let total = started.elapsed().as_secs_f64();
    println!(
        "spool replay: {:>8.0} findings/s after a restart ({REPLAY_FINDINGS} findings in {total:.2} s, reopening took {:.0} ms)",
        REPLAY_FINDINGS as f64 / total,
        reopen * 1000.0
    );
    drop(spool);
    let _ = std::fs::remove_dir_all(&base);
}
