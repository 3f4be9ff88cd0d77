//! The fleet through a real NATS JetStream cluster (the Debian package
//! `nats-server`, three servers on loopback): one golden baseline published
//! to the cluster's object store and pulled, checked, by another host; a
//! model from another agent version, a damaged one or a missing one refused.

use std::{
    collections::HashMap,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use monitor::{
    event::Timestamp,
    fleet::golden,
    model::{
        baseline::Baseline,
        persist::{self, ModelFile},
        window::Window,
    },
};
use monitor_tests::{nats::Cluster, test_dir};

use crate::cli::agent;

/// A small learned model, as the agent would save it.
fn learned_model() -> ModelFile {
    let windows: Vec<Window> = (0..60)
        .map(|i| {
            let seq: Vec<u16> = (0..50).map(|j| ((i + j) % 7) as u16).collect();
            let mut w = Window::from_sequence("/usr/sbin/nginx", seq);
            w.sequence.clear();
            w.pid = i as u32;
            w
        })
        .collect();
    ModelFile {
        created: Timestamp(1_700_000_000_000_000_000),
        saved: Timestamp(1_700_000_100_000_000_000),
        host: "golden-host".into(),
        agent_version: golden::AGENT_VERSION.into(),
        baseline: Baseline::fit(&windows).unwrap(),
    }
}

/// `monitor model ARGS...`: (success, stdout and stderr).
fn model_cmd(args: &[&str]) -> (bool, String) {
    let out = Command::new(agent())
        .arg("model")
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Puts `bytes` as object `name` of the models bucket with `metadata`, as
/// a publisher the agent does not control could.
fn put_object(url: &str, name: &str, bytes: &[u8], metadata: HashMap<String, String>) {
    use async_nats::jetstream::{self, object_store};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let js = jetstream::new(async_nats::connect(url).await.unwrap());
        let store = js.get_object_store(golden::DEFAULT_BUCKET).await.unwrap();
        let meta = object_store::ObjectMetadata {
            name: name.into(),
            metadata,
            ..Default::default()
        };
        let mut reader = bytes;
        store.put(meta, &mut reader).await.unwrap();
    });
}

fn sha256_hex(bytes: &[u8]) -> String {
    monitor::hash::sha256_hex(bytes)
}

fn state_dir(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn a_golden_model_is_published_and_pulled_checked_and_a_foreign_one_refused() {
    let _host = monitor_tests::host_shared();
    let dir = test_dir("golden");
    let cluster = Cluster::start(&dir);
    cluster.wait_for_jetstream(0);
    let urls = format!("{},{}", cluster.url(0), cluster.url(1));

    // Host A learned a model; it publishes it.
    let a = dir.join("host-a");
    monitor::state::paths::prepare_state_dir(&a).unwrap();
    let model = learned_model();
    persist::save(&a.join("model.bin"), &model).unwrap();
    let (ok, out) = model_cmd(&["publish", "--nats", &urls, "--state-dir", state_dir(&a)]);
    eprintln!("{out}");
    assert!(ok && out.contains("published"), "{out}");

    // Host B, knowing another server, pulls it: the same baseline.
    let b = dir.join("host-b");
    let (ok, out) = model_cmd(&[
        "pull",
        "--nats",
        &cluster.url(2),
        "--state-dir",
        state_dir(&b),
    ]);
    eprintln!("{out}");
    assert!(ok && out.contains("pulled"), "{out}");
    let pulled = persist::load(&b.join("model.bin")).unwrap();
    assert!(pulled == model, "host B has host A's model exactly");

    // Refused: another agent version, a changed byte, a broken file, none.
    let good = std::fs::read(a.join("model.bin")).unwrap();
    let meta = |version: &str, sha: &str| {
        HashMap::from([
            ("agent_version".to_owned(), version.to_owned()),
            (
                "model_format".to_owned(),
                persist::FORMAT_VERSION.to_string(),
            ),
            ("sha256".to_owned(), sha.to_owned()),
        ])
    };
    put_object(
        &cluster.url(0),
        "older",
        &good,
        meta("0.0.1", &sha256_hex(&good)),
    );
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    put_object(
        &cluster.url(0),
        "changed",
        &flipped,
        meta(golden::AGENT_VERSION, &sha256_hex(&good)),
    );
    put_object(
        &cluster.url(0),
        "broken",
        &flipped,
        meta(golden::AGENT_VERSION, &sha256_hex(&flipped)),
    );
    let c = dir.join("host-c");
    for (name, says) in [
        ("older", "published by monitor \"0.0.1\""),
        ("changed", "not the"),
        ("broken", "corrupt"),
        ("nothing", "no model \"nothing\""),
    ] {
        let (ok, out) = model_cmd(&[
            "pull",
            "--nats",
            &cluster.url(1),
            "--name",
            name,
            "--state-dir",
            state_dir(&c),
        ]);
        eprintln!("pull {name}: {}", out.trim());
        assert!(
            !ok && out.contains(says),
            "pull of {name} refused, saying {says:?}: {out}"
        );
        assert!(
            !c.join("model.bin").exists(),
            "nothing installed from {name}"
        );
    }
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `monitor replay` of `stream` as host `host`, `shift` later, judged by
/// the fleet of `config`: (findings, campaigns, stderr).
fn replay_as(
    config: &Path,
    stream: &Path,
    host: &str,
    shift: &str,
) -> (Vec<serde_json::Value>, Vec<serde_json::Value>, String) {
    let out = Command::new(agent())
        .env("MONITOR_LOG", "info,monitor::fleet=debug")
        .args(["replay", "--learn-for", "45s", "--config"])
        .arg(config)
        .args(["--host-name", host, "--shift", shift])
        .arg(stream)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "replay as {host} failed: {stderr}");
    let (mut findings, mut campaigns) = (Vec::new(), Vec::new());
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("replay output {line:?}: {e}"));
        match v["kind"].as_str() {
            Some("campaign") => campaigns.push(v),
            _ => findings.push(v),
        }
    }
    (findings, campaigns, stderr)
}

/// The first finding about the shell the server ran (about the shell, or,
/// when the recording's timing split it so, about a program it started),
/// from one replay.
fn shell_finding<'a>(findings: &'a [serde_json::Value], host: &str) -> &'a serde_json::Value {
    findings
        .iter()
        .find(|f| f.to_string().contains("cgi-bin/status.sh"))
        .unwrap_or_else(|| panic!("{host}: no finding about the server's shell: {findings:#?}"))
}

/// Every value in the fleet bucket, as text.
fn bucket_values(url: &str, bucket: &str) -> Vec<(String, String)> {
    use futures_util::StreamExt as _;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
        let kv = js.get_key_value(bucket).await.unwrap();
        let mut keys = Vec::new();
        let mut stream = kv.keys().await.unwrap();
        while let Some(k) = stream.next().await {
            keys.push(k.unwrap());
        }
        let mut values = Vec::new();
        for k in keys {
            let v = kv.get(&k).await.unwrap().unwrap_or_default();
            values.push((k, String::from_utf8_lossy(&v).into_owned()));
        }
        values
    })
}

#[test]
fn fleet_prevalence_tells_a_campaign_from_a_roll_out_across_replayed_hosts() {
    let host = monitor_tests::host_alone();
    let Some(_k) = monitor_tests::kernel_test(
        "fleet_prevalence_tells_a_campaign_from_a_roll_out_across_replayed_hosts",
    ) else {
        return;
    };
    // One real recording (a web server, then a shell run through CGI),
    // replayed as many hosts at different times; and the same stream cut
    // before the shell, for hosts that never see it.
    let (recording, cut) = crate::replay::recorded_server_stream();
    drop(host);
    let dir = test_dir("fleet-prevalence");
    let quiet = dir.join("quiet.jsonl");
    crate::replay::cut_before(recording, *cut, &quiet);

    let cluster = Cluster::start(&dir);
    cluster.wait_for_jetstream(0);
    let key = dir.join("fleet.key");
    std::fs::write(&key, "a fleet secret of the test, 32 chars\n").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let config = dir.join("monitor.toml");
    std::fs::write(
        &config,
        format!(
            r#"[fleet]
urls = ["{}", "{}", "{}"]
replicas = 3
key_file = "{}"
campaign_hosts = 4
campaign_within = "10m"
lower_severity_at = 0.5
lower_severity_min_hosts = 3
"#,
            cluster.url(0),
            cluster.url(1),
            cluster.url(2),
            key.display()
        ),
    )
    .unwrap();

    // A campaign: the shell on five web servers, two minutes apart, with one
    // quiet host in the fleet.
    let (_, campaigns, stderr) = replay_as(&config, &quiet, "db-1", "0s");
    assert!(campaigns.is_empty(), "{stderr}");
    let mut raised: Vec<(String, serde_json::Value)> = Vec::new();
    let mut shells = Vec::new();
    for (i, host) in ["web-1", "web-2", "web-3", "web-4", "web-5"]
        .iter()
        .enumerate()
    {
        let (findings, campaigns, stderr) =
            replay_as(&config, recording, host, &format!("{}m", 2 * i));
        for line in stderr.lines().filter(|l| l.contains("fleet")) {
            eprintln!("{host}: {line}");
        }
        let shell = shell_finding(&findings, host).clone();
        eprintln!("{host}: {}", verdict(&shell));
        for c in campaigns {
            eprintln!("{host} raised: {}", c["id"]);
            raised.push((host.to_string(), c));
        }
        shells.push(shell);
    }
    let fleet = |i: usize| &shells[i]["fleet"];
    assert_eq!(fleet(0)["hosts"], 1, "{:#}", fleet(0));
    assert!(
        fleet(0)["text"]
            .as_str()
            .unwrap()
            .starts_with("first in the fleet (2 hosts"),
        "{:#}",
        fleet(0)
    );
    assert_eq!(
        fleet(1)["text"],
        "seen on 2 of 3 hosts in the last 24h",
        "{:#}",
        fleet(1)
    );
    assert_eq!(fleet(4)["text"], "seen on 5 of 6 hosts in the last 24h");
    // The campaign on the shell's fact, raised once, by the fourth host,
    // naming the four; the fifth's finding points to it.
    let shell_facts: Vec<&str> = fleet(3)["facts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["fact"].as_str().unwrap())
        .collect();
    let on_shell: Vec<&(String, serde_json::Value)> = raised
        .iter()
        .filter(|(_, c)| shell_facts.contains(&c["fact"].as_str().unwrap()))
        .collect();
    assert_eq!(on_shell.len(), 1, "one campaign on the shell: {raised:#?}");
    let (by, campaign) = on_shell[0];
    assert_eq!(by, "web-4");
    let named: Vec<&str> = campaign["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h[0].as_str().unwrap())
        .collect();
    assert_eq!(named, ["web-1", "web-2", "web-3", "web-4"]);
    assert_eq!(fleet(3)["campaign"], campaign["id"]);
    assert_eq!(fleet(4)["campaign"], campaign["id"]);
    let mut ids: Vec<&str> = raised
        .iter()
        .map(|(_, c)| c["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        raised.len(),
        "no campaign raised twice: {raised:#?}"
    );
    // In a campaign nothing is lowered, however many hosts saw it.
    for i in 0..5 {
        assert!(fleet(i).get("lowered_from").is_none(), "{:#}", fleet(i));
    }
    eprintln!("campaign: {}", campaign_summary(campaign));

    // A roll-out three days later: the same new behaviour on six app
    // servers, three hours apart (never four within ten minutes), and a
    // quiet one. It is common, so it is lowered; it is no campaign.
    let day3 = 3 * 24 * 60;
    let (_, campaigns, stderr) = replay_as(&config, &quiet, "app-quiet", &format!("{day3}m"));
    assert!(campaigns.is_empty(), "{stderr}");
    let mut last = serde_json::Value::Null;
    for i in 0..6u32 {
        let host = format!("app-{}", i + 1);
        let (findings, campaigns, stderr) =
            replay_as(&config, recording, &host, &format!("{}m", day3 + 180 * i));
        assert!(
            campaigns.is_empty(),
            "{host}: a roll-out is no campaign: {campaigns:#?}\n{stderr}"
        );
        let shell = shell_finding(&findings, &host).clone();
        eprintln!("{host}: {}", verdict(&shell));
        if i == 0 {
            assert!(
                shell["fleet"]["text"]
                    .as_str()
                    .unwrap()
                    .starts_with("first in the fleet"),
                "the web servers' sightings are three days old: {:#}",
                shell["fleet"]
            );
        }
        last = shell;
    }
    assert_eq!(
        last["fleet"]["text"],
        "seen on 6 of 7 hosts in the last 24h"
    );
    let before = last["fleet"]["lowered_from"].as_str().expect("lowered");
    assert_ne!(
        before,
        last["guidance"]["severity"].as_str().unwrap(),
        "one level lower"
    );
    assert!(
        last["summary"]
            .as_str()
            .unwrap()
            .contains("fleet: seen on 6 of 7")
    );

    // Nothing but ids and kinds reached the cluster: no path, no argument.
    let values = bucket_values(&cluster.url(1), "monitor-fleet");
    assert!(values.len() > 20, "{values:#?}");
    for (k, v) in &values {
        assert!(
            !v.contains('/') && !v.contains("python") && !k.contains('/'),
            "{k} = {v} shares more than ids"
        );
    }
    eprintln!(
        "bucket: {} entries, none with a path or program",
        values.len()
    );

    // The records a SIEM gets validate against the OCSF schema.
    let finding: monitor::model::finding::Finding = serde_json::from_value(last.clone()).unwrap();
    let campaign: monitor::fleet::facts::Campaign =
        serde_json::from_value(campaign.clone()).unwrap();
    let host = monitor::output::ocsf::Host::current("web-4");
    let records = dir.join("ocsf.jsonl");
    std::fs::write(
        &records,
        format!(
            "{}\n{}\n",
            monitor::output::ocsf::finding(&finding, &host),
            monitor::output::ocsf::campaign_finding(&campaign, &host)
        ),
    )
    .unwrap();
    eprintln!("{}", crate::agent::validate_ocsf(&records));
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the fleet said of a finding, in one line.
fn verdict(finding: &serde_json::Value) -> String {
    let fleet = &finding["fleet"];
    format!(
        "{} [{}{}]{}",
        fleet["text"].as_str().unwrap_or("(no fleet context)"),
        finding["guidance"]["severity"].as_str().unwrap_or("?"),
        fleet["lowered_from"]
            .as_str()
            .map(|s| format!(", lowered from {s}"))
            .unwrap_or_default(),
        fleet["campaign"]
            .as_str()
            .map(|c| format!(" part of campaign {c}"))
            .unwrap_or_default()
    )
}

fn campaign_summary(c: &serde_json::Value) -> String {
    serde_json::from_value::<monitor::fleet::facts::Campaign>(c.clone())
        .map(|c| c.summary())
        .unwrap_or_else(|e| format!("{c}: {e}"))
}

/// The agent's Detection Finding about a process whose command line holds
/// `needle`, if it has raised one.
fn finding_about(agent: &crate::agent::Agent, needle: &str) -> Option<serde_json::Value> {
    agent.records().into_iter().find(|r| {
        r["class_uid"] == 2004
            && r["actor"]["process"]["cmd_line"]
                .as_str()
                .is_some_and(|c| c.contains(needle))
    })
}

#[test]
fn a_fleet_agent_judges_its_findings_and_keeps_raising_them_when_the_cluster_is_gone() {
    // Learns this host: no other test may start programs meanwhile.
    let _host = monitor_tests::host_alone();
    let Some(_k) = monitor_tests::kernel_test(
        "a_fleet_agent_judges_its_findings_and_keeps_raising_them_when_the_cluster_is_gone",
    ) else {
        return;
    };
    let dir = test_dir("fleet-agent");
    let mut cluster = Cluster::start(&dir);
    cluster.wait_for_jetstream(0);
    let config = dir.join("monitor.toml");
    std::fs::write(
        &config,
        format!(
            "[fleet]\nurls = [\"{}\", \"{}\"]\nreplicas = 3\ntimeout = \"1s\"\n",
            cluster.url(0),
            cluster.url(1)
        ),
    )
    .unwrap();
    let state = dir.join("state");
    let running = crate::agent::Agent::learned_with(
        &dir,
        state.to_str().unwrap(),
        "",
        &["--config", config.to_str().unwrap()],
    );

    // A finding, judged by the fleet: this host is the first to see it.
    let read = |path: &str| {
        let ok = Command::new("sh")
            .args(["-c", &format!("cat {path} > /dev/null")])
            .status()
            .unwrap()
            .success();
        assert!(ok, "cat {path}");
    };
    read("/etc/shadow");
    running.wait_for(
        "a finding for the shadow read",
        Duration::from_secs(20),
        |a| finding_about(a, "cat /etc/shadow").is_some(),
    );
    let judged = finding_about(&running, "cat /etc/shadow").unwrap();
    let fleet = &judged["unmapped"]["monitor"]["fleet"];
    eprintln!("with the cluster: {}\n  fleet: {fleet}", judged["message"]);
    assert_eq!(fleet["hosts"], 1, "{fleet:#}");
    assert!(
        fleet["text"]
            .as_str()
            .unwrap()
            .starts_with("first in the fleet"),
        "{fleet:#}"
    );
    assert_eq!(judged["enrichments"][0]["name"], "fleet_prevalence");
    assert!(
        judged["message"]
            .as_str()
            .unwrap()
            .contains("; fleet: first in the fleet")
    );

    // The whole cluster gone: findings still come, at once, saying so.
    for i in 0..3 {
        cluster.kill_node(i);
    }
    let asked = Instant::now();
    read("/etc/gshadow");
    running.wait_for(
        "a finding for the gshadow read",
        Duration::from_secs(20),
        |a| finding_about(a, "cat /etc/gshadow").is_some(),
    );
    let waited = asked.elapsed();
    let unjudged = finding_about(&running, "cat /etc/gshadow").unwrap();
    let fleet = &unjudged["unmapped"]["monitor"]["fleet"];
    eprintln!(
        "without the cluster, after {waited:.1?}: {}\n  fleet: {fleet}",
        unjudged["message"]
    );
    assert!(fleet["unavailable"].is_string(), "{fleet:#}");
    assert!(
        fleet["text"]
            .as_str()
            .unwrap()
            .starts_with("fleet prevalence unknown"),
        "{fleet:#}"
    );
    let (status, _, stderr) = running.stop();
    assert!(status.success(), "{stderr}");
    let records = dir.join("stdout.jsonl");
    eprintln!("{}", crate::agent::validate_ocsf(&records));
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
