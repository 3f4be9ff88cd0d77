//! Test helper: a process that spools synthetic findings and delivers them
//! to a Splunk HEC endpoint with the agent's own spool and sink code, so a
//! test can SIGKILL it mid-delivery and start it again.
//!
//! Usage: `deliver SPOOL_DIR URL COUNT` — appends COUNT findings (ids
//! `finding-00000`...), then delivers until the spool is empty.

use std::time::Duration;

use monitor::{
    output::sink_config::{Compression, SinkConfig},
    output::{
        sinks::{self, Delivery, Sink, SinkHealth},
        spool::{Class, Spool, SpoolSettings},
    },
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (dir, url, count): (&str, &str, usize) = (&args[1], &args[2], args[3].parse().unwrap());
    let config = SinkConfig::SplunkHec {
        url: url.to_owned(),
        token_file: None,
        token_env: Some("DELIVER_TOKEN".into()),
        index: None,
        sourcetype: "test".into(),
        batch_size: 10,
        batch_timeout: Duration::from_millis(100),
        compression: Compression::None,
        ca_file: None,
    };
    let name = config.name();
    let spool = Spool::open(
        std::path::Path::new(dir),
        SpoolSettings::default(),
        std::slice::from_ref(&name),
    )
    .unwrap();
    for i in 0..count {
        let finding = serde_json::json!({ "class_uid": 2004, "metadata": { "uid": format!("finding-{i:05}") } });
        spool
            .append(Class::Findings, &serde_json::to_vec(&finding).unwrap())
            .unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let healths = std::sync::Arc::new(std::sync::Mutex::new(vec![SinkHealth::new(&name)]));
        let shutdown = tokio_util_free_token();
        let job = Delivery {
            spool: spool.clone(),
            sink: Sink::from_config(&config, "test-host").unwrap(),
            name: name.clone(),
            index: 0,
            batching: sinks::batching(&config),
            host: "test-host".into(),
            healths,
            dead_letters: std::sync::Arc::new(monitor::output::dead_letters::DeadLetters::new(
                &std::path::Path::new(dir).join("dead-letters.jsonl"),
                monitor::fileio::rotate::Rotation::default(),
            )),
            shutdown: shutdown.clone(),
            drain: Duration::from_secs(60),
        };
        let task = tokio::spawn(sinks::deliver(job));
        // Stop taking new work at once: deliver what is spooled, then exit.
        shutdown.cancel();
        task.await.unwrap();
    });
    println!("done, {} pending", spool.pending(&name));
}

fn tokio_util_free_token() -> monitor::CancellationToken {
    monitor::CancellationToken::new()
}
