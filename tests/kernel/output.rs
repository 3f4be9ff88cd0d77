//! Delivery: the spool and every sink, against real servers the tests start
//! (rsyslogd from the Debian package, a local HTTPS receiver), including
//! outages, a SIGKILL mid-delivery and a full disk.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use monitor::{
    CancellationToken,
    output::sink_config::{Compression, SinkConfig, SyslogTransport},
    output::{
        dead_letters::DeadLetters,
        sinks::{self, Delivery, Healths, Sink, SinkHealth},
        spool::{Class, Spool, SpoolSettings},
    },
};
use monitor_tests::{kernel_test, receiver::Receiver, rsyslog::Rsyslog, test_dir};

/// The dead letters of a test, in `dir`.
fn dead_letters(dir: &std::path::Path) -> Arc<DeadLetters> {
    Arc::new(DeadLetters::new(
        &dir.join("dead-letters.jsonl"),
        monitor::fileio::rotate::Rotation::default(),
    ))
}

fn finding(i: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "class_uid": 2004,
        "time": 1_700_000_000_000u64 + i as u64,
        "metadata": { "uid": format!("finding-{i:05}"), "version": "1.4.0" },
        "message": format!("finding number {i} with \"quotes\" and a newline\\n"),
    }))
    .unwrap()
}

/// Runs delivery of every sink until `done` holds or `timeout`; refused
/// records go to `dead-letters.jsonl` next to the spool.
fn deliver_until(
    spool: &Arc<Spool>,
    configs: &[SinkConfig],
    timeout: Duration,
    done: impl Fn() -> bool,
) -> Vec<SinkHealth> {
    let letters = dead_letters(spool.dir().parent().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let healths: Healths = Arc::new(Mutex::new(
        configs.iter().map(|c| SinkHealth::new(&c.name())).collect(),
    ));
    let shutdown = CancellationToken::new();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            tasks.push(tokio::spawn(sinks::deliver(Delivery {
                spool: spool.clone(),
                sink: Sink::from_config(c, "test-host").unwrap(),
                name: c.name(),
                index: i,
                batching: sinks::batching(c),
                host: "test-host".into(),
                healths: healths.clone(),
                dead_letters: letters.clone(),
                shutdown: shutdown.clone(),
                drain: Duration::from_millis(100),
            })));
        }
        let deadline = Instant::now() + timeout;
        while !done() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        shutdown.cancel();
        for t in tasks {
            let _ = t.await;
        }
    });
    healths.lock().unwrap().clone()
}

fn hec(url: String, token_env: &str, ca: Option<PathBuf>, batch: usize) -> SinkConfig {
    SinkConfig::SplunkHec {
        url,
        token_file: None,
        token_env: Some(token_env.into()),
        index: Some("main".into()),
        sourcetype: "ocsf:monitor".into(),
        batch_size: batch,
        batch_timeout: Duration::from_millis(100),
        compression: Compression::Gzip,
        ca_file: ca,
    }
}

/// A Splunk HEC sink sending to `receiver` (HTTPS when it has a
/// certificate, which the sink is not told to trust).
fn hec_of(receiver: &Receiver, token_env: &str, batch: usize) -> SinkConfig {
    let scheme = if receiver.ca_pem.is_some() {
        "https"
    } else {
        "http"
    };
    hec(
        format!(
            "{scheme}://127.0.0.1:{}/services/collector/event",
            receiver.addr.port()
        ),
        token_env,
        None,
        batch,
    )
}

/// Spools `finding(0)` for the one sink `config` and runs its delivery for
/// 3 s; returns the spool and the sink's health.
fn deliver_one_for_3s(dir: &std::path::Path, config: &SinkConfig) -> (Arc<Spool>, SinkHealth) {
    let spool = spool_for(dir, "spool", config);
    spool.append(Class::Findings, &finding(0)).unwrap();
    let healths = deliver_until(
        &spool,
        std::slice::from_ref(config),
        Duration::from_secs(3),
        || false,
    );
    (spool, healths[0].clone())
}

/// A spool in `dir/name` for the one sink `config`.
fn spool_for(dir: &std::path::Path, name: &str, config: &SinkConfig) -> Arc<Spool> {
    Spool::open(&dir.join(name), SpoolSettings::default(), &[config.name()]).unwrap()
}

fn uids(docs: &[serde_json::Value]) -> BTreeSet<String> {
    docs.iter()
        .filter_map(|d| d["metadata"]["uid"].as_str().map(str::to_owned))
        .collect()
}

fn expected(n: usize) -> BTreeSet<String> {
    (0..n).map(|i| format!("finding-{i:05}")).collect()
}

#[test]
fn syslog_over_udp_tcp_and_unix_reaches_a_real_rsyslog() {
    let _host = monitor_tests::host_shared();
    let dir = test_dir("rsyslog");
    let rsyslog = Rsyslog::start(&dir);
    let sink =
        |transport, address: Option<String>, path: Option<PathBuf>, app: &str| SinkConfig::Syslog {
            transport,
            address,
            path,
            app_name: app.into(),
            facility: "local3".into(),
            max_message: 8192,
        };
    let configs = vec![
        sink(
            SyslogTransport::Udp,
            Some(format!("127.0.0.1:{}", rsyslog.udp_port)),
            None,
            "mon-udp",
        ),
        sink(
            SyslogTransport::Tcp,
            Some(format!("127.0.0.1:{}", rsyslog.tcp_port)),
            None,
            "mon-tcp",
        ),
        sink(
            SyslogTransport::Unix,
            None,
            Some(rsyslog.socket.clone()),
            "mon-unix",
        ),
    ];
    let names: Vec<String> = configs.iter().map(SinkConfig::name).collect();
    let spool = Spool::open(&dir.join("spool"), SpoolSettings::default(), &names).unwrap();
    const N: usize = 21;
    for i in 0..N - 1 {
        spool.append(Class::Findings, &finding(i)).unwrap();
    }
    // A 200 KB finding: over every transport's limit, it once failed on
    // every retry. Shortened to 8 KiB, still JSON, marked truncated.
    let mut big: serde_json::Value = serde_json::from_slice(&finding(N - 1)).unwrap();
    big["actor"] = serde_json::json!({ "process": { "cmd_line": "A".repeat(200_000) } });
    spool
        .append(Class::Findings, &serde_json::to_vec(&big).unwrap())
        .unwrap();
    spool
        .append(
            Class::Activity,
            br#"{"class_uid":6002,"message":"heartbeat"}"#,
        )
        .unwrap();
    let healths = deliver_until(&spool, &configs, Duration::from_secs(20), || {
        names.iter().all(|n| spool.pending(n) == 0)
    });
    let lines = rsyslog.lines(3 * (N + 1));
    for app in ["mon-udp", "mon-tcp", "mon-unix"] {
        let mine: Vec<&String> = lines
            .iter()
            .filter(|l| l.starts_with(&format!("{app}|")))
            .collect();
        let findings: Vec<&&String> = mine
            .iter()
            .filter(|l| l.split('|').nth(1) == Some("finding"))
            .collect();
        assert_eq!(
            findings.len(),
            N,
            "{app}: every finding arrived; healths {healths:?}\n{lines:#?}"
        );
        let got: BTreeSet<String> = findings
            .iter()
            .map(|l| {
                let parts: Vec<&str> = l.splitn(4, '|').collect();
                assert!(
                    parts[2].contains("monitor@32473 id=\"finding-"),
                    "structured data: {l}"
                );
                let json = &parts[3][parts[3].find('{').unwrap()..];
                let v: serde_json::Value = serde_json::from_str(json)
                    .unwrap_or_else(|e| panic!("{app}: message is not the JSON record: {e}: {l}"));
                let uid = v["metadata"]["uid"].as_str().unwrap().to_owned();
                let truncated = v["unmapped"]["monitor"]["truncated"] == true;
                assert_eq!(
                    truncated,
                    uid == format!("finding-{:05}", N - 1),
                    "{app}: only the 200 KB finding is shortened: {uid}"
                );
                assert!(l.len() <= 8192, "{app}: {} bytes", l.len());
                uid
            })
            .collect();
        assert_eq!(got, expected(N), "{app}");
        assert!(
            mine.iter()
                .any(|l| l.split('|').nth(1) == Some("lifecycle")),
            "{app}: lifecycle record"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn http_sinks_batch_compress_authenticate_and_verify_tls() {
    let _host = monitor_tests::host_shared();
    let dir = test_dir("http");
    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap(), true, &dir);
    let token_file = dir.join("hec.token");
    std::fs::write(&token_file, "hec-secret-token\n").unwrap();
    // SAFETY: set before any thread reads the environment in this test.
    unsafe { std::env::set_var("MONITOR_TEST_ES_KEY", "es-api-key") };
    let hec_config = SinkConfig::SplunkHec {
        url: format!(
            "https://127.0.0.1:{}/services/collector/event",
            receiver.addr.port()
        ),
        token_file: Some(token_file),
        token_env: None,
        index: Some("main".into()),
        sourcetype: "ocsf:monitor".into(),
        batch_size: 50,
        batch_timeout: Duration::from_millis(200),
        compression: Compression::Gzip,
        ca_file: receiver.ca_pem.clone(),
    };
    let es_config = SinkConfig::Elasticsearch {
        url: format!("https://127.0.0.1:{}", receiver.addr.port()),
        index: "monitor-findings".into(),
        token_file: None,
        token_env: Some("MONITOR_TEST_ES_KEY".into()),
        batch_size: 50,
        batch_timeout: Duration::from_millis(200),
        compression: Compression::None,
        ca_file: receiver.ca_pem.clone(),
    };
    let configs = vec![hec_config, es_config];
    let names: Vec<String> = configs.iter().map(SinkConfig::name).collect();
    let spool = Spool::open(&dir.join("spool"), SpoolSettings::default(), &names).unwrap();
    const N: usize = 230;
    for i in 0..N {
        spool.append(Class::Findings, &finding(i)).unwrap();
    }
    deliver_until(&spool, &configs, Duration::from_secs(30), || {
        names.iter().all(|n| spool.pending(n) == 0)
    });
    let requests = receiver.received.lock().unwrap().clone();
    let hec: Vec<_> = requests
        .iter()
        .filter(|r| r.path == "/services/collector/event")
        .collect();
    let es: Vec<_> = requests.iter().filter(|r| r.path == "/_bulk").collect();
    assert!(
        hec.len() >= 5 && hec.len() < N,
        "batched: {} HEC requests for {N} findings",
        hec.len()
    );
    assert!(
        hec.iter().all(|r| r.encoding.as_deref() == Some("gzip")),
        "compressed"
    );
    assert!(
        hec.iter()
            .all(|r| r.authorization.as_deref() == Some("Splunk hec-secret-token"))
    );
    assert!(
        es.iter()
            .all(|r| r.authorization.as_deref() == Some("ApiKey es-api-key"))
    );
    let hec_text = String::from_utf8_lossy(&hec[0].body).into_owned();
    let first: serde_json::Value = serde_json::from_str(hec_text.lines().next().unwrap()).unwrap();
    assert_eq!(
        (
            first["sourcetype"].as_str(),
            first["index"].as_str(),
            first["host"].as_str()
        ),
        (Some("ocsf:monitor"), Some("main"), Some("test-host"))
    );
    assert!(
        String::from_utf8_lossy(&es[0].body).contains(r#"{"create":{"_id":"finding-"#)
            || String::from_utf8_lossy(&es[0].body).contains(r#""_id":"finding-"#)
    );
    let docs = receiver.documents();
    assert_eq!(uids(&docs).len(), N);
    assert_eq!(docs.len(), 2 * N, "each sink got each finding once");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_untrusted_certificate_is_refused() {
    let _host = monitor_tests::host_shared();
    let dir = test_dir("tls-refused");
    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap(), true, &dir);
    // SAFETY: test-local variable.
    unsafe { std::env::set_var("MONITOR_TEST_TOKEN_X", "t") };
    let config = hec_of(&receiver, "MONITOR_TEST_TOKEN_X", 10);
    let (spool, health) = deliver_one_for_3s(&dir, &config);
    assert!(
        receiver.received.lock().unwrap().is_empty(),
        "nothing sent to an unverified server"
    );
    let err = health.last_error.clone().unwrap_or_default();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert_eq!(
        spool.pending(&config.name()),
        1,
        "the finding waits in the spool"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_sink_down_for_30_seconds_then_back_delivers_every_finding() {
    let _host = monitor_tests::host_shared();
    let dir = test_dir("outage");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // SAFETY: test-local variable.
    unsafe { std::env::set_var("MONITOR_TEST_TOKEN_OUTAGE", "t") };
    let config = hec(
        format!("http://{addr}/services/collector/event"),
        "MONITOR_TEST_TOKEN_OUTAGE",
        None,
        25,
    );
    let spool = Spool::open(
        &dir.join("spool"),
        SpoolSettings::default(),
        &[config.name()],
    )
    .unwrap();
    const N: usize = 100;
    for i in 0..N {
        spool.append(Class::Findings, &finding(i)).unwrap();
    }
    let receiver: Arc<Mutex<Option<Receiver>>> = Arc::new(Mutex::new(None));
    let started = Instant::now();
    let (r2, d2) = (receiver.clone(), dir.clone());
    let starter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(30));
        *r2.lock().unwrap() = Some(Receiver::start(addr, false, &d2));
    });
    let healths = deliver_until(
        &spool,
        std::slice::from_ref(&config),
        Duration::from_secs(90),
        || spool.pending(&config.name()) == 0,
    );
    starter.join().unwrap();
    let took = started.elapsed();
    let guard = receiver.lock().unwrap();
    let docs = guard.as_ref().unwrap().documents();
    assert_eq!(
        uids(&docs),
        expected(N),
        "every finding delivered after the outage"
    );
    assert!(took >= Duration::from_secs(30), "{took:?}");
    assert!(
        healths[0].failures >= 3,
        "failures were counted while down: {healths:?}"
    );
    eprintln!(
        "outage: {N} findings delivered {took:?} after start, {} failed attempts",
        healths[0].failures
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_delivery_killed_with_sigkill_delivers_every_finding_after_restart() {
    let _host = monitor_tests::host_shared();
    let dir = test_dir("sigkill");
    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap(), false, &dir);
    receiver.behaviour.lock().unwrap().delay = Duration::from_millis(150);
    let url = format!("http://{}/services/collector/event", receiver.addr);
    let spool_dir = dir.join("spool");
    const N: usize = 300;
    let helper = env!("CARGO_BIN_EXE_deliver");
    let mut first = std::process::Command::new(helper)
        .args([spool_dir.to_str().unwrap(), &url, &N.to_string()])
        .env("DELIVER_TOKEN", "t")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.documents().len() < 40 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill().unwrap(); // SIGKILL, mid-delivery
    first.wait().unwrap();
    let before = uids(&receiver.documents());
    assert!(
        !before.is_empty() && before.len() < N,
        "killed mid-delivery ({} of {N} delivered)",
        before.len()
    );
    receiver.behaviour.lock().unwrap().delay = Duration::ZERO;
    let out = std::process::Command::new(helper)
        .args([spool_dir.to_str().unwrap(), &url, "0"])
        .env("DELIVER_TOKEN", "t")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restart failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = receiver.documents();
    assert_eq!(
        uids(&docs),
        expected(N),
        "every finding delivered after the restart"
    );
    eprintln!(
        "sigkill: {} delivered before the kill, {} documents in all ({} duplicates, allowed by at-least-once)",
        before.len(),
        docs.len(),
        docs.len() - N
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_full_disk_gives_a_clear_error_and_keeps_the_findings() {
    let Some(_k) = kernel_test("a_full_disk_gives_a_clear_error_and_keeps_the_findings") else {
        return;
    };
    let dir = test_dir("fulldisk");
    let mnt = dir.join("tiny");
    std::fs::create_dir_all(&mnt).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(status.success(), "mount a 64 KiB tmpfs");
    // Unmounted even when an assertion fails.
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let out_file = dir.join("out.jsonl");
    let config = SinkConfig::File {
        path: out_file.clone(),
        max_size: 100 << 20,
        keep: 1,
    };
    let spool = Spool::open(
        &mnt.join("spool"),
        SpoolSettings::default(),
        &[config.name()],
    )
    .unwrap();
    let mut first_error = None;
    const N: usize = 3000;
    for i in 0..N {
        if let Err(e) = spool.append(Class::Findings, &finding(i)) {
            first_error.get_or_insert(monitor::error::error_chain(&e));
        }
    }
    let err = first_error.expect("a 64 KiB disk fills up");
    assert!(
        err.contains("No space left on device") && err.contains(&mnt.display().to_string()),
        "{err}"
    );
    let stats = spool.stats();
    assert!(stats.degraded.is_some() && stats.in_memory > 0, "{stats:?}");
    deliver_until(
        &spool,
        std::slice::from_ref(&config),
        Duration::from_secs(10),
        || spool.pending(&config.name()) == 0,
    );
    let text = std::fs::read_to_string(&out_file).unwrap();
    let got: BTreeSet<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["metadata"]["uid"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        got,
        expected(N),
        "findings held in memory were still delivered"
    );
}

/// A finding whose message carries `marker`.
fn finding_with(i: usize, marker: &str) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&finding(i)).unwrap();
    v["message"] = format!("finding number {i}: {marker}").into();
    serde_json::to_vec(&v).unwrap()
}

/// The dead letters kept next to a test's spool.
fn letters_in(dir: &std::path::Path) -> Vec<serde_json::Value> {
    monitor::fileio::jsonl::read_lines::<serde_json::Value>(&dir.join("dead-letters.jsonl"))
        .map(|(lines, _)| lines)
        .unwrap_or_default()
}

#[test]
fn elasticsearch_item_errors_are_dead_lettered_and_throttled_items_retried() {
    let _host = monitor_tests::host_shared();
    let dir = test_dir("es-items");
    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap(), false, &dir);
    receiver.behaviour.lock().unwrap().es_items = true;
    // SAFETY: test-local variable.
    unsafe { std::env::set_var("MONITOR_TEST_ES_ITEMS", "k") };
    let config = SinkConfig::Elasticsearch {
        url: format!("http://127.0.0.1:{}", receiver.addr.port()),
        index: "monitor".into(),
        token_file: None,
        token_env: Some("MONITOR_TEST_ES_ITEMS".into()),
        batch_size: 25,
        batch_timeout: Duration::from_millis(100),
        compression: Compression::None,
        ca_file: None,
    };
    let spool = spool_for(&dir, "spool", &config);
    const N: usize = 60;
    let conflicts = [5, 17, 44];
    let throttled = [8, 30];
    for i in 0..N {
        let payload = if conflicts.contains(&i) {
            finding_with(i, "MAPPING-CONFLICT")
        } else if throttled.contains(&i) {
            finding_with(i, "THROTTLE-ONCE")
        } else {
            finding(i)
        };
        spool.append(Class::Findings, &payload).unwrap();
    }
    let healths = deliver_until(
        &spool,
        std::slice::from_ref(&config),
        Duration::from_secs(30),
        || spool.pending(&config.name()) == 0,
    );
    let stored = receiver.stored.lock().unwrap().clone();
    let good: BTreeSet<String> = (0..N)
        .filter(|i| !conflicts.contains(i))
        .map(|i| format!("finding-{i:05}"))
        .collect();
    assert_eq!(uids(&stored), good, "every other finding stored");
    assert_eq!(
        stored.len(),
        good.len(),
        "each once (a retried batch is a 409)"
    );
    let letters = letters_in(&dir);
    let refused: BTreeSet<String> = letters
        .iter()
        .map(|l| l["record"]["metadata"]["uid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        refused,
        conflicts
            .iter()
            .map(|i| format!("finding-{i:05}"))
            .collect(),
        "{letters:#?}"
    );
    assert!(
        letters.iter().all(|l| l["reason"]
            .as_str()
            .unwrap()
            .contains("HTTP 400: mapper_parsing_exception")
            && l["sink"] == config.name()),
        "{letters:#?}"
    );
    assert_eq!(
        (healths[0].delivered, healths[0].rejected),
        ((N - conflicts.len()) as u64, conflicts.len() as u64)
    );
    eprintln!(
        "elasticsearch: {} stored, {} dead-lettered, {} requests, health {:?}",
        stored.len(),
        letters.len(),
        receiver.received.lock().unwrap().len(),
        healths[0]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_413_splits_the_batch_and_a_400_dead_letters_only_the_record_refused() {
    let _host = monitor_tests::host_shared();
    let dir = test_dir("hec-split");
    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap(), false, &dir);
    {
        let mut b = receiver.behaviour.lock().unwrap();
        b.max_body = Some(4000); // about ten findings
        b.refuse_containing = Some("POISON".into());
    }
    // SAFETY: test-local variable.
    unsafe { std::env::set_var("MONITOR_TEST_HEC_SPLIT", "t") };
    let config = hec_of(&receiver, "MONITOR_TEST_HEC_SPLIT", 100);
    let spool = spool_for(&dir, "spool", &config);
    const N: usize = 80;
    for i in 0..N {
        let payload = if i == 33 {
            finding_with(i, "POISON")
        } else {
            finding(i)
        };
        spool.append(Class::Findings, &payload).unwrap();
    }
    let healths = deliver_until(
        &spool,
        std::slice::from_ref(&config),
        Duration::from_secs(30),
        || spool.pending(&config.name()) == 0,
    );
    let docs = receiver.documents();
    let mut good = expected(N);
    good.remove("finding-00033");
    assert_eq!(uids(&docs), good);
    assert_eq!(docs.len(), N - 1, "each once");
    let requests = receiver.received.lock().unwrap().clone();
    let answered = receiver.answered.lock().unwrap().clone();
    let count = |status: u16| answered.iter().filter(|(s, _)| *s == status).count();
    assert!(
        count(413) >= 1 && count(400) >= 1,
        "the batch was too large, then refused: {answered:?}"
    );
    assert!(
        answered.iter().all(|&(s, len)| s != 200 || len <= 4000),
        "only what fits was taken: {answered:?}"
    );
    let letters = letters_in(&dir);
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert_eq!(letters[0]["record"]["metadata"]["uid"], "finding-00033");
    assert!(letters[0]["reason"].as_str().unwrap().contains("HTTP 400"));
    assert_eq!(
        (healths[0].delivered, healths[0].rejected),
        ((N - 1) as u64, 1)
    );
    eprintln!(
        "hec: {} delivered in {} accepted requests ({} answered 413, {} answered 400), 1 dead-lettered",
        docs.len(),
        requests.len(),
        count(413),
        count(400)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn redirects_are_not_followed_and_a_huge_reply_is_not_read_whole() {
    let _host = monitor_tests::host_shared();
    let dir = test_dir("http-hostile");
    // SAFETY: test-local variable.
    unsafe { std::env::set_var("MONITOR_TEST_HEC_HOSTILE", "secret-token") };
    let elsewhere = Receiver::start("127.0.0.1:0".parse().unwrap(), false, &dir);
    let redirecting = Receiver::start("127.0.0.1:0".parse().unwrap(), false, &dir);
    redirecting.behaviour.lock().unwrap().redirect_to = Some(format!(
        "http://127.0.0.1:{}/services/collector/event",
        elsewhere.addr.port()
    ));
    let config = hec_of(&redirecting, "MONITOR_TEST_HEC_HOSTILE", 10);
    let (spool, health) = deliver_one_for_3s(&dir, &config);
    assert!(
        elsewhere.received.lock().unwrap().is_empty(),
        "the finding and the token went where the redirect pointed"
    );
    let err = health.last_error.clone().unwrap_or_default();
    assert!(
        err.contains("302") && err.contains("redirects are not followed"),
        "{err}"
    );
    assert_eq!(
        spool.pending(&config.name()),
        1,
        "the finding waits in the spool"
    );

    // A destination that answers with 256 MiB: the agent reads 1 MiB.
    let huge = Receiver::start("127.0.0.1:0".parse().unwrap(), false, &dir);
    huge.behaviour.lock().unwrap().reply_bytes = Some(256 << 20);
    let config = hec_of(&huge, "MONITOR_TEST_HEC_HOSTILE", 10);
    let spool = spool_for(&dir, "spool2", &config);
    for i in 0..3 {
        spool.append(Class::Findings, &finding(i)).unwrap();
    }
    let healths = deliver_until(
        &spool,
        std::slice::from_ref(&config),
        Duration::from_secs(20),
        || spool.pending(&config.name()) == 0,
    );
    let sent = huge.reply_sent.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "huge reply: {sent} bytes handed to the connection for {} requests; health {:?}",
        huge.received.lock().unwrap().len(),
        healths[0]
    );
    assert_eq!(healths[0].delivered, 3, "{:?}", healths[0]);
    let requests = huge.received.lock().unwrap().len() as u64;
    assert!(
        sent < requests * (16 << 20),
        "{sent} bytes of reply for {requests} requests: the reply was read whole"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The stream the NATS tests publish to.
const NATS_STREAM: &str = "MONITOR";

/// Every message of the test stream: how many it holds, and each one's
/// `Nats-Msg-Id` with the finding id in its payload.
async fn nats_stream_contents(url: &str) -> (u64, Vec<(String, String)>) {
    use async_nats::jetstream::{self, consumer::pull};
    use futures_util::StreamExt as _;
    let client = async_nats::connect(url).await.unwrap();
    let js = jetstream::new(client);
    let mut stream = js.get_stream(NATS_STREAM).await.unwrap();
    let count = stream.info().await.unwrap().state.messages;
    let consumer = stream
        .create_consumer(pull::Config {
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut seen = Vec::new();
    while (seen.len() as u64) < count {
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .unwrap();
        let before = seen.len();
        while let Some(m) = batch.next().await {
            let m = m.unwrap();
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(ToString::to_string)
                .unwrap_or_default();
            let doc: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            let uid = doc["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            seen.push((id, uid));
        }
        assert!(
            seen.len() > before,
            "the stream stopped giving messages at {}",
            seen.len()
        );
    }
    (count, seen)
}

/// A runtime for the test's own NATS calls, the test stream made through
/// `url`, and a `nats` sink publishing to it through `sink_urls`.
fn nats_stream_and_sink(
    url: &str,
    sink_urls: Vec<String>,
    batch: usize,
) -> (tokio::runtime::Runtime, SinkConfig) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(monitor_tests::nats::create_stream(
        url,
        NATS_STREAM,
        "monitor.>",
    ));
    let config = monitor_tests::nats::sink_config(
        sink_urls,
        "monitor",
        NATS_STREAM,
        batch,
        Duration::from_millis(50),
        Compression::None,
    );
    (rt, config)
}

/// Prints the delivery counts and checks that the test stream, read
/// through `url`, holds findings `0..n` each once, under its own id.
fn assert_stream_holds_each_once(
    rt: &tokio::runtime::Runtime,
    url: &str,
    n: usize,
    took: Duration,
    health: &SinkHealth,
) {
    let (count, seen) = rt.block_on(nats_stream_contents(url));
    let ids: BTreeSet<String> = seen.iter().map(|(id, _)| id.clone()).collect();
    let mismatched = seen.iter().filter(|(id, uid)| id != uid).count();
    eprintln!(
        "nats: {n} findings sent in {took:?} ({} failed attempts); in the stream: {count} messages, {} distinct ids, {} duplicates",
        health.failures,
        ids.len(),
        seen.len() - ids.len()
    );
    assert_eq!(
        mismatched, 0,
        "each message's Nats-Msg-Id is its finding id"
    );
    assert_eq!(ids, expected(n), "every finding is in the stream");
    assert_eq!(count, n as u64, "and each exactly once");
    assert_eq!(health.delivered, n as u64);
}

/// 10,000 findings reach a real three-node JetStream cluster exactly once
/// while the agent's connection is cut and a server is killed and started
/// again mid-stream: a batch whose acknowledgements were lost is sent again
/// whole, and the stream drops what it already has by `Nats-Msg-Id`.
#[test]
fn a_jetstream_cluster_gets_every_finding_exactly_once_through_a_node_kill_and_a_cut() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use monitor_tests::nats::{Cluster, Relay};
    let _host = monitor_tests::host_shared();
    let dir = test_dir("nats");
    let cluster = Mutex::new(Cluster::start(&dir));
    let (url0, url1, port0) = {
        let c = cluster.lock().unwrap();
        (c.url(0), c.url(1), c.port(0))
    };
    // The agent knows one server, through a relay the test can cut.
    let relay = Relay::start(port0);
    let (rt, config) =
        nats_stream_and_sink(&url0, vec![format!("nats://127.0.0.1:{}", relay.port)], 100);
    let name = config.name();
    let spool = spool_for(&dir, "spool", &config);
    const N: usize = 10_000;
    // Findings arrive over ten seconds, so the cut and the kill fall in the
    // middle of the stream, not before or after it.
    let appended = Arc::new(AtomicUsize::new(0));
    let feeder = {
        let (spool, appended) = (spool.clone(), appended.clone());
        std::thread::spawn(move || {
            for i in 0..N {
                spool.append(Class::Findings, &finding(i)).unwrap();
                appended.store(i + 1, Ordering::Relaxed);
                if i % 100 == 99 {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
    };
    let started = Instant::now();
    // 0: nothing yet; 1: cut; 2: node killed; 3: node back.
    let step = AtomicUsize::new(0);
    let killed_at = Mutex::new(None::<Instant>);
    let healths = deliver_until(
        &spool,
        std::slice::from_ref(&config),
        Duration::from_secs(240),
        || {
            let n = appended.load(Ordering::Relaxed);
            match step.load(Ordering::Relaxed) {
                0 if n >= 2_500 => {
                    let cut = relay.cut();
                    eprintln!("nats: cut {cut} connection(s) at {n} findings appended");
                    step.store(1, Ordering::Relaxed);
                }
                1 if n >= 5_000 => {
                    cluster.lock().unwrap().kill_node(2);
                    eprintln!("nats: killed server n2 at {n} findings appended");
                    *killed_at.lock().unwrap() = Some(Instant::now());
                    step.store(2, Ordering::Relaxed);
                }
                2 if killed_at.lock().unwrap().unwrap().elapsed() > Duration::from_secs(3) => {
                    cluster.lock().unwrap().start_node(2);
                    eprintln!("nats: server n2 started again at {n} findings appended");
                    step.store(3, Ordering::Relaxed);
                }
                _ => {}
            }
            step.load(Ordering::Relaxed) == 3 && n == N && spool.pending(&name) == 0
        },
    );
    feeder.join().unwrap();
    let took = started.elapsed();
    assert_eq!(
        spool.pending(&name),
        0,
        "delivered within 240 s: {healths:?}"
    );
    assert_eq!(
        step.load(Ordering::Relaxed),
        3,
        "the cut and the kill happened"
    );
    assert_stream_holds_each_once(&rt, &url1, N, took, &healths[0]);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The sink keeps one batch in flight while it publishes the next. When the
/// whole cluster freezes, the acknowledgements of both time out; both are
/// sent again from the spool, and the stream keeps each finding once.
#[test]
fn a_frozen_cluster_fails_the_batches_in_flight_and_each_finding_is_still_stored_once() {
    use monitor_tests::nats::Cluster;
    let _host = monitor_tests::host_shared();
    let dir = test_dir("nats-frozen");
    let cluster = Cluster::start(&dir);
    let (rt, config) =
        nats_stream_and_sink(&cluster.url(0), vec![cluster.url(0), cluster.url(1)], 500);
    let name = config.name();
    let spool = spool_for(&dir, "spool", &config);
    // A backlog, so two batches are always in flight.
    const N: usize = 40_000;
    for i in 0..N {
        spool.append(Class::Findings, &finding(i)).unwrap();
    }
    let started = Instant::now();
    // 0: delivering; 1: frozen; 2: thawed.
    let step = std::sync::atomic::AtomicUsize::new(0);
    let frozen_at = Mutex::new(None::<Instant>);
    let healths = deliver_until(
        &spool,
        std::slice::from_ref(&config),
        Duration::from_secs(180),
        || {
            use std::sync::atomic::Ordering::Relaxed;
            match step.load(Relaxed) {
                0 if started.elapsed() > Duration::from_millis(300) => {
                    cluster.freeze();
                    eprintln!(
                        "nats: froze all three servers {:?} into the delivery",
                        started.elapsed()
                    );
                    *frozen_at.lock().unwrap() = Some(Instant::now());
                    step.store(1, Relaxed);
                }
                // Past the sink's 10 s wait for an acknowledgement.
                1 if frozen_at.lock().unwrap().unwrap().elapsed() > Duration::from_secs(12) => {
                    cluster.thaw();
                    eprintln!("nats: thawed them after 12 s");
                    step.store(2, Relaxed);
                }
                _ => {}
            }
            step.load(Relaxed) == 2 && spool.pending(&name) == 0
        },
    );
    let took = started.elapsed();
    assert_eq!(
        spool.pending(&name),
        0,
        "delivered within 180 s: {healths:?}"
    );
    assert!(
        healths[0].failures >= 1,
        "the freeze failed a batch: {healths:?}"
    );
    assert_stream_holds_each_once(&rt, &cluster.url(1), N, took, &healths[0]);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
