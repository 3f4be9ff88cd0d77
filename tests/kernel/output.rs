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
        sinks::{self, Delivery, Healths, Sink, SinkHealth},
        spool::{Class, Spool, SpoolSettings},
    },
};
use monitor_tests::{kernel_test, receiver::Receiver, rsyslog::Rsyslog, test_dir};

fn finding(i: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "class_uid": 2004,
        "time": 1_700_000_000_000u64 + i as u64,
        "metadata": { "uid": format!("finding-{i:05}"), "version": "1.4.0" },
        "message": format!("finding number {i} with \"quotes\" and a newline\\n"),
    }))
    .unwrap()
}

/// Runs delivery of every sink until `done` holds or `timeout`.
fn deliver_until(
    spool: &Arc<Spool>,
    configs: &[SinkConfig],
    timeout: Duration,
    done: impl Fn() -> bool,
) -> Vec<SinkHealth> {
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
    const N: usize = 20;
    for i in 0..N {
        spool.append(Class::Findings, &finding(i)).unwrap();
    }
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
                v["metadata"]["uid"].as_str().unwrap().to_owned()
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
    let config = hec(
        format!(
            "https://127.0.0.1:{}/services/collector/event",
            receiver.addr.port()
        ),
        "MONITOR_TEST_TOKEN_X",
        None,
        10,
    );
    let spool = Spool::open(
        &dir.join("spool"),
        SpoolSettings::default(),
        &[config.name()],
    )
    .unwrap();
    spool.append(Class::Findings, &finding(0)).unwrap();
    let healths = deliver_until(
        &spool,
        std::slice::from_ref(&config),
        Duration::from_secs(3),
        || false,
    );
    assert!(
        receiver.received.lock().unwrap().is_empty(),
        "nothing sent to an unverified server"
    );
    let err = healths[0].last_error.clone().unwrap_or_default();
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
