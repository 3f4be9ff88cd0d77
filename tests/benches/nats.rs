//! `cargo bench -p monitor-tests --bench nats` (or `cargo xtask bench
//! nats`): findings per second through the agent's spool and NATS sink into
//! a real three-node JetStream cluster on loopback, the stream replicated
//! three ways, every record acknowledged. It prints each figure against the
//! floor of 10,000 findings/s (met or NOT MET); it does not fail on it, a
//! benchmark reports. It runs twice: with the servers' defaults, and with
//! Go's `GOGC=400` for the servers, the setting `docs/operations.md`
//! recommends for a findings cluster.
//!
//! The finding is a real one rendered as OCSF (the sink benchmark's
//! fixture, 6,886 bytes), and a smaller one of about 1 KiB, so the figure
//! says how much is per message and how much per byte.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use monitor::{
    CancellationToken,
    output::{
        ocsf::{self, Host},
        sink_config::Compression,
        sinks::{self, Delivery, Sink, SinkHealth},
        spool::{Class, Spool, SpoolSettings},
    },
    state::findings::LoggedFinding,
};
use monitor_tests::nats::Cluster;

const FINDINGS: usize = 30_000;
/// Records per batch.
const BATCH: usize = 2000;
const FLOOR: f64 = 10_000.0;

fn ocsf_finding() -> serde_json::Value {
    let text = include_str!("../../monitor/benches/fixtures/logged-finding.json");
    let logged: LoggedFinding = serde_json::from_str(text).expect("fixture is a logged finding");
    let host = Host {
        name: "bench-host".into(),
        kernel: "6.18".into(),
    };
    ocsf::finding(&logged.finding, &host)
}

/// The finding with its own id, optionally cut to about 1 KiB.
fn numbered(base: &serde_json::Value, i: usize, small: bool) -> Vec<u8> {
    let mut v = if small {
        serde_json::json!({
            "class_uid": base["class_uid"],
            "message": base["message"],
            "finding_info": { "title": base["finding_info"]["title"] },
            "metadata": {},
            "padding": "x".repeat(700),
        })
    } else {
        base.clone()
    };
    v["metadata"]["uid"] = serde_json::Value::String(format!("bench-{i:06}"));
    serde_json::to_vec(&v).expect("serializes")
}

/// The messages in stream `name`, which is then removed (the servers'
/// stores hold a few runs, not all of them).
async fn stream_messages_then_remove(url: &str, name: &str) -> u64 {
    let js = async_nats::jetstream::new(async_nats::connect(url).await.expect("connect"));
    let mut stream = js.get_stream(name).await.expect("stream");
    let messages = stream.info().await.expect("info").state.messages;
    js.delete_stream(name).await.expect("remove the stream");
    messages
}

/// Spools `n` findings for a NATS sink publishing to `stream` and delivers
/// them; returns (findings/s end to end, bytes per finding).
fn run_once(
    rt: &tokio::runtime::Runtime,
    cluster: &Cluster,
    dir: &std::path::Path,
    stream: &str,
    small: bool,
    gzip: bool,
) -> (f64, usize) {
    let base = ocsf_finding();
    rt.block_on(monitor_tests::nats::create_stream(
        &cluster.url(0),
        stream,
        &format!("{}.>", stream.to_lowercase()),
    ));
    let config = monitor_tests::nats::sink_config(
        vec![cluster.url(0), cluster.url(1)],
        &stream.to_lowercase(),
        stream,
        BATCH,
        Duration::from_millis(200),
        if gzip {
            Compression::Gzip
        } else {
            Compression::None
        },
    );
    let name = config.name();
    let settings = SpoolSettings {
        max_bytes: 1 << 34,
        ..SpoolSettings::default()
    };
    let spool =
        Spool::open(&dir.join(stream), settings, std::slice::from_ref(&name)).expect("spool");
    let records: Vec<Vec<u8>> = (0..FINDINGS).map(|i| numbered(&base, i, small)).collect();
    let started = Instant::now();
    for r in &records {
        spool.append(Class::Findings, r).expect("append");
    }
    let appended = started.elapsed().as_secs_f64();
    rt.block_on(async {
        let shutdown = CancellationToken::new();
        let job = Delivery {
            spool: spool.clone(),
            sink: Sink::from_config(&config, "bench-host").expect("sink"),
            name: name.clone(),
            index: 0,
            batching: sinks::batching(&config),
            host: "bench-host".into(),
            healths: Arc::new(std::sync::Mutex::new(vec![SinkHealth::new(&name)])),
            dead_letters: Arc::new(monitor::output::dead_letters::DeadLetters::new(
                &dir.join("dead-letters.jsonl"),
                monitor::fileio::rotate::Rotation::default(),
            )),
            shutdown: shutdown.clone(),
            drain: Duration::from_secs(600),
        };
        let task = tokio::spawn(sinks::deliver(job));
        shutdown.cancel();
        task.await.expect("delivery task");
    });
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(spool.pending(&name), 0, "everything delivered");
    let stored = rt.block_on(stream_messages_then_remove(&cluster.url(2), stream));
    assert_eq!(stored, FINDINGS as u64, "every finding stored once");
    println!(
        "      ({} B findings{}: spool append {:.0}/s alone, delivery {:.0}/s alone)",
        records[0].len(),
        if gzip { ", gzip" } else { "" },
        FINDINGS as f64 / appended,
        FINDINGS as f64 / (secs - appended)
    );
    (FINDINGS as f64 / secs, records[0].len())
}

/// Runs of each kind; the median is the figure.
const RUNS: usize = 3;

/// The cluster's server settings compared: the defaults, and the Go
/// garbage collector's target raised (`docs/operations.md`, sizing).
const SERVER_SETTINGS: [(&str, &[(&str, &str)]); 2] =
    [("server defaults", &[]), ("GOGC=400", &[("GOGC", "400")])];

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "NATS sink benchmark: 3-node JetStream cluster on loopback, stream R3, batches of {BATCH}, {FINDINGS} findings a run, median of {RUNS} runs"
    );
    for (setting, env) in SERVER_SETTINGS {
        let dir = std::env::temp_dir().join(format!("monitor-bench-nats-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("bench dir");
        let cluster = Cluster::start_with_env(&dir, env);
        cluster.wait_for_jetstream(0);
        println!("  servers: {setting}");
        let kinds = [
            ("FULL", false, false),
            ("FULLGZIP", false, true),
            ("SMALL", true, false),
        ];
        let mut rates = vec![Vec::new(); kinds.len()];
        let mut sizes = vec![0; kinds.len()];
        // Kinds interleaved, so a slow second of the machine is not all one kind's.
        for run in 0..RUNS {
            for (k, (kind, small, gzip)) in kinds.iter().enumerate() {
                let stream = format!("BENCH{kind}{run}");
                let (rate, bytes) = run_once(&rt, &cluster, &dir, &stream, *small, *gzip);
                rates[k].push(rate);
                sizes[k] = bytes;
            }
        }
        for (k, (_, _, gzip)) in kinds.iter().enumerate() {
            let r = &mut rates[k];
            r.sort_by(f64::total_cmp);
            let median = r[r.len() / 2];
            let verdict = if median >= FLOOR { "met" } else { "NOT MET" };
            let compression = if *gzip { "gzip" } else { "none" };
            let runs: Vec<String> = r.iter().map(|x| format!("{x:.0}")).collect();
            println!(
                "    {:>5} B findings, compression {compression}: median {median:>6.0} findings/s end to end (runs {}), floor {FLOOR:.0}/s: {verdict}",
                sizes[k],
                runs.join(", ")
            );
        }
        drop(cluster);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
