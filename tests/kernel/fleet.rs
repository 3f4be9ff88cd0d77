//! The fleet through a real NATS JetStream cluster (the Debian package
//! `nats-server`, three servers on loopback): one golden baseline published
//! to the cluster's object store and pulled, checked, by another host; a
//! model from another agent version, a damaged one or a missing one refused.

use std::{collections::HashMap, path::Path, process::Command};

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
