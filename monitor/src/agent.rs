//! `monitor run`: the agent's main job.
//!
//! ```text
//! Capture ──events──> Detector (windows, model) ──findings──┐
//!    │                                                      v
//!    └──raw events (optional) ──> OCSF ──> Spool (disk) ──> one delivery task per sink
//! ```
//!
//! State lives under the state directory (0700): the model (`model.bin`),
//! the spool (`spool/`), the local finding log (`findings.jsonl`, read by
//! `monitor alerts`), acknowledgements (`acks.jsonl`) and `status.json`
//! (read by `monitor status`). All files are 0600.
//!
//! Stopping (SIGTERM, SIGINT): sources stop, the model is saved, a Stop
//! record is spooled, sinks get one second to deliver what is spooled (the
//! rest waits in the spool for the next start). It takes under two seconds.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio_util::sync::CancellationToken;

use crate::{
    api::{SensorReport, SharedStatus, Status},
    capture::Capture,
    config::{OnBadModel, Settings},
    detect::{Detection, Detector},
    event::Timestamp,
    fileio::jsonl::{append_line, read_lines},
    model::{Engine, Phase, alert::Alert, persist},
    output::{
        ocsf::{self, Host, Lifecycle},
        sinks::{self, Delivery, Healths, Sink, SinkHealth},
        spool::{Class, Spool, SpoolSettings},
    },
    state::{
        findings::LoggedFinding,
        paths::{StateLock, StatePaths, prepare_state_dir},
    },
};

/// Applies `acks.jsonl` to the engine whenever the file changes.
#[derive(Default)]
struct AckWatch {
    seen: Option<(u64, std::time::SystemTime)>,
}

impl AckWatch {
    /// Re-reads the acknowledgements if the file changed (or `force`).
    fn refresh(&mut self, paths: &StatePaths, detector: &mut Detector, force: bool) {
        let meta = std::fs::metadata(paths.acks())
            .ok()
            .map(|m| (m.len(), m.modified().unwrap_or(std::time::UNIX_EPOCH)));
        if !force && meta == self.seen {
            return;
        }
        self.seen = meta;
        if detector.engine().baseline().is_none() {
            return; // applied when learning ends
        }
        let result = (|| -> std::io::Result<_> {
            let (records, bad_acks) = read_lines(&paths.acks())?;
            let (logged, bad_findings) = read_lines(&paths.findings())?;
            let active = crate::state::findings::in_force(&records);
            let (acked, bad_windows) =
                crate::state::findings::acked_findings(&logged, &active, &paths.alert_windows())?;
            for b in bad_acks.iter().chain(&bad_findings).chain(&bad_windows) {
                tracing::warn!("{b}");
            }
            Ok(acked)
        })();
        match result {
            Ok(acked) => {
                let (added, withdrawn) = detector.engine_mut().reconcile_acknowledged(&acked);
                if added + withdrawn > 0 {
                    eprintln!(
                        "monitor: acknowledgements: {added} applied, {withdrawn} withdrawn; {} in force",
                        acked.len()
                    );
                }
            }
            Err(e) => {
                tracing::error!(error = %e, path = %paths.acks().display(), "cannot read acknowledgements")
            }
        }
    }
}

/// Loads the saved model, or decides what to do when it is bad.
fn load_model(
    paths: &StatePaths,
    settings: &Settings,
) -> anyhow::Result<Option<persist::ModelFile>> {
    match persist::load(&paths.model()) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.is_missing() => Ok(None),
        Err(e) => match settings.raw.model.on_bad_model {
            OnBadModel::Stop => {
                Err(e).context("the saved model cannot be used (model.on_bad_model = \"stop\")")
            }
            OnBadModel::Relearn => {
                let aside = paths
                    .dir
                    .join(format!("model.bin.bad-{}", Timestamp::now().as_millis()));
                tracing::error!(error = %crate::error::error_chain(&e), moved_to = %aside.display(), "the saved model cannot be used; learning again");
                std::fs::rename(paths.model(), &aside).with_context(|| {
                    format!("cannot move the bad model aside to {}", aside.display())
                })?;
                Ok(None)
            }
        },
    }
}

fn save_model(
    paths: &StatePaths,
    engine: &Engine,
    host: &str,
    created: Timestamp,
) -> anyhow::Result<u64> {
    let Some(baseline) = engine.baseline() else {
        return Ok(0);
    };
    let file = persist::ModelFile {
        created,
        saved: Timestamp::now(),
        host: host.to_owned(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        baseline: baseline.clone(),
    };
    Ok(persist::save(&paths.model(), &file)?)
}

/// Resident memory of this process, bytes.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn progress_line(p: &crate::model::Progress, learn_for: Duration) -> String {
    let fmt = |secs: f64| humantime::format_duration(Duration::from_secs(secs as u64)).to_string();
    let mut line = format!(
        "learning: {} windows from {} profiles, {} of {}",
        p.baseline_windows,
        p.profiles,
        fmt(p.learned_secs),
        fmt(learn_for.as_secs_f64())
    );
    if p.remaining_secs > 0.0 {
        line.push_str(&format!(" ({} left)", fmt(p.remaining_secs)));
    }
    if p.windows_needed > 0 {
        line.push_str(&format!(", {} more windows needed", p.windows_needed));
    }
    line
}

/// Runs the agent until a signal.
pub async fn run(
    settings: Settings,
    mut signals: crate::shutdown::ShutdownSignals,
) -> anyhow::Result<()> {
    let paths = StatePaths::new(&settings.state_dir);
    prepare_state_dir(&paths.dir)?;
    let _lock = StateLock::take(&paths.dir)?;
    let host = Host::current(&settings.host_name);
    let own_pid = std::process::id();
    let started = Timestamp::now();

    // Model: resume or learn.
    let (engine, model_created) = match load_model(&paths, &settings)? {
        Some(file) => {
            tracing::info!(
                windows = file.baseline.windows,
                profiles = file.baseline.profiles.len(),
                learned = %file.created,
                "resuming from the saved model; detecting"
            );
            (
                Engine::resume(settings.engine.clone(), file.baseline),
                file.created,
            )
        }
        None => {
            tracing::info!(learn_for = %humantime::format_duration(settings.engine.learn_for), "no saved model; learning this host's baseline");
            (Engine::new(settings.engine.clone()), started)
        }
    };
    let mut model_created = model_created;
    let window_len = settings.capture.profiles.window * 2;
    let mut detector = Detector::new(engine, window_len);

    // Output: spool and sinks.
    let names: Vec<String> = settings
        .raw
        .sink
        .iter()
        .map(crate::output::sink_config::SinkConfig::name)
        .collect();
    let spool = Spool::open(
        &paths.spool(),
        SpoolSettings {
            max_bytes: settings.raw.spool.max_size,
            ..SpoolSettings::default()
        },
        &names,
    )
    .context("cannot open the spool")?;
    let healths: Healths = Arc::new(Mutex::new(
        names.iter().map(|n| SinkHealth::new(n)).collect(),
    ));
    let sink_shutdown = CancellationToken::new();
    let mut deliveries = Vec::new();
    for (i, config) in settings.raw.sink.iter().enumerate() {
        let sink = Sink::from_config(config, &host.name)
            .map_err(|e| anyhow::anyhow!("sink {}: {e}", names[i]))?;
        deliveries.push(tokio::spawn(sinks::deliver(Delivery {
            spool: spool.clone(),
            sink,
            name: names[i].clone(),
            index: i,
            batching: sinks::batching(config),
            host: host.name.clone(),
            healths: healths.clone(),
            shutdown: sink_shutdown.clone(),
            drain: Duration::from_secs(1),
        })));
    }

    // Operations API.
    let status: SharedStatus = Arc::new(Mutex::new(None));
    let api_shutdown = CancellationToken::new();
    if let Some(addr) = settings.api_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (api.listen)"))?;
        tracing::info!(%addr, "metrics on /metrics, health on /healthz, status on /status");
        tokio::spawn(crate::api::serve(
            listener,
            status.clone(),
            api_shutdown.clone(),
        ));
    }

    // Capture last: everything downstream is ready for its events.
    let mut capture = Capture::start(&settings.capture).context("cannot start capture")?;
    let sensor_states: BTreeMap<String, SensorReport> = capture
        .probes()
        .sensors()
        .iter()
        .map(|(s, state)| (s.name().to_owned(), SensorReport::of(state)))
        .collect();
    let unavailable: Vec<String> = sensor_states
        .iter()
        .filter(|(_, r)| r.is_unavailable())
        .map(|(k, r)| format!("{k}: {r}"))
        .collect();
    let _ = spool.append(
        Class::Activity,
        &serde_json::to_vec(&ocsf::lifecycle(
            Lifecycle::Start,
            &host,
            &format!("monitor started ({:?})", detector.engine().phase()),
            serde_json::json!({ "sensors": sensor_states, "phase": detector.engine().phase() }),
        ))?,
    );
    // Once per start, to the sinks: the SOC sees that this host is partly
    // blind, and why, in the same stream as its findings.
    for (sensor, report) in sensor_states.iter().filter(|(_, r)| r.is_unavailable()) {
        spool_append(
            &spool,
            Class::Findings,
            &ocsf::lifecycle(
                Lifecycle::Health,
                &host,
                &format!(
                    "monitor sensor {sensor} unavailable: {}",
                    report.reason.as_deref().unwrap_or("")
                ),
                serde_json::json!({ "sensor": sensor, "state": report.state, "reason": report.reason }),
            ),
        );
    }
    for problem in &unavailable {
        tracing::warn!("sensor not running: {problem}");
    }
    eprintln!(
        "monitor: running on {} ({}), {} processes tracked; {}",
        host.name,
        if detector.engine().phase() == Phase::Learning {
            "learning"
        } else {
            "detecting"
        },
        capture.seed_stats().processes,
        if settings.raw.sink.len() == 1 {
            format!("findings to {}", names[0])
        } else {
            format!("findings to {} sinks", names.len())
        }
    );

    let mut acks = AckWatch::default();
    acks.refresh(&paths, &mut detector, true);
    let mut ticks = Ticks::new(&settings);
    let mut findings = 0u64;
    let mut last_finding = None;
    let mut last_events = (0u64, Instant::now());
    let mut events = 0u64;
    let mut last_health: Option<String> = None;
    let mut stop_reason = None;
    loop {
        tokio::select! {
            event = capture.next() => {
                let Some(event) = event else { break };
                events += 1;
                if settings.raw.output.raw_events && let Some(record) = ocsf::activity(&event, &host) {
                    spool_append(&spool, Class::Activity, &record);
                }
                for d in detector.push_unless_own(&event, own_pid) {
                    match d {
                        Detection::Alert(alert) => {
                            findings += 1;
                            last_finding = Some(alert.summary.clone());
                            emit_finding(&spool, &paths, &host, &alert, &detector);
                        }
                        Detection::Learned { windows, profiles } => {
                            eprintln!("monitor: baseline learned from {windows} windows ({profiles} profiles with their own model); detecting");
                            model_created = Timestamp::now();
                            acks.refresh(&paths, &mut detector, true);
                            match save_model(&paths, detector.engine(), &host.name, model_created) {
                                Ok(bytes) => tracing::info!(bytes, path = %paths.model().display(), "model saved"),
                                Err(e) => tracing::error!(error = %format!("{e:#}"), "cannot save the model"),
                            }
                        }
                        Detection::LearningExtended(why) => tracing::warn!("still learning: {why}"),
                        Detection::Repeat(repeat) => {
                            if let Err(e) = append_line(&paths.repeats(), &repeat) {
                                tracing::warn!(error = %e, path = %paths.repeats().display(), "cannot log a repeated finding");
                            }
                        }
                    }
                }
            }
            _ = ticks.progress.tick() => {
                if let Some(s) = status.lock().expect("status lock").as_ref()
                    && let Err(e) = crate::state::history::append(&paths.history(), &crate::state::history::Point::of(s))
                {
                    tracing::warn!(error = %e, "cannot write the history");
                }
                let p = detector.progress();
                if p.phase == Phase::Learning {
                    eprintln!("monitor: {}", progress_line(&p, settings.engine.learn_for));
                }
            }
            _ = ticks.heartbeat.tick() => {
                let p = detector.progress();
                let record = ocsf::lifecycle(Lifecycle::Heartbeat, &host, "monitor is alive", serde_json::json!({
                    "phase": p.phase, "windows": p.windows_seen, "findings": findings, "events": events,
                    "lost": capture.loss_totals(), "sensors": sensor_states,
                }));
                spool_append(&spool, Class::Activity, &record);
            }
            _ = ticks.save.tick() => {
                if detector.engine().phase() == Phase::Detecting
                    && let Err(e) = save_model(&paths, detector.engine(), &host.name, model_created)
                {
                    tracing::error!(error = %format!("{e:#}"), "cannot save the model");
                }
                spool.sync();
            }
            _ = ticks.status.tick() => {
                acks.refresh(&paths, &mut detector, false);
                let now = Instant::now();
                let rate = (events - last_events.0) as f64 / now.duration_since(last_events.1).as_secs_f64().max(1e-3);
                last_events = (events, now);
                let s = Status {
                    pid: std::process::id(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    host: host.name.clone(),
                    started,
                    updated: Timestamp::now(),
                    phase: detector.engine().phase(),
                    progress: detector.progress(),
                    events,
                    events_per_sec: rate,
                    kernel_records: capture.records_in(),
                    lost: capture.loss_totals(),
                    faults: capture.fault_totals(),
                    sensors: sensor_states.clone(),
                    sinks: healths.lock().expect("health lock").clone(),
                    spool: spool.stats(),
                    findings,
                    last_finding: last_finding.clone(),
                    processes: capture.table().len(),
                    rss_bytes: rss_bytes(),
                };
                // Health changes become records in the stream (loss is
                // already there as loss events).
                let problem = crate::api::health(&s).err();
                if problem != last_health {
                    if let Some(why) = &problem {
                        tracing::error!("agent unhealthy: {why}");
                        spool_append(&spool, Class::Activity, &ocsf::lifecycle(Lifecycle::Health, &host, &format!("monitor degraded: {why}"), serde_json::json!({ "problem": why })));
                    } else {
                        spool_append(&spool, Class::Activity, &ocsf::lifecycle(Lifecycle::Health, &host, "monitor healthy again", serde_json::json!({})));
                    }
                    last_health = problem;
                }
                let _ = crate::fileio::atomic::write_atomically(&paths.status(), &serde_json::to_vec_pretty(&s).unwrap_or_default());
                *status.lock().expect("status lock") = Some(s);
            }
            sig = signals.recv() => {
                stop_reason = Some(sig);
                break;
            }
        }
    }

    // Stop: sources first, then the rest, all within two seconds.
    let reason = stop_reason.unwrap_or("end of events");
    tracing::info!(signal = reason, "stopping");
    let stopping = Instant::now();
    capture.stop_sources();
    let drain_until = tokio::time::Instant::now() + Duration::from_millis(300);
    while let Ok(Some(event)) = tokio::time::timeout_at(drain_until, capture.next()).await {
        for d in detector.push_unless_own(&event, own_pid) {
            if let Detection::Alert(alert) = d {
                emit_finding(&spool, &paths, &host, &alert, &detector);
            }
        }
    }
    tracing::debug!(
        elapsed_ms = stopping.elapsed().as_millis() as u64,
        "sources drained"
    );
    if let Err(e) = save_model(&paths, detector.engine(), &host.name, model_created) {
        tracing::error!(error = %format!("{e:#}"), "cannot save the model at shutdown");
    }
    tracing::debug!(
        elapsed_ms = stopping.elapsed().as_millis() as u64,
        "model saved"
    );
    spool_append(
        &spool,
        Class::Activity,
        &ocsf::lifecycle(
            Lifecycle::Stop,
            &host,
            &format!("monitor stopping ({reason})"),
            serde_json::json!({ "findings": findings, "events": events, "lost": capture.loss_totals() }),
        ),
    );
    sink_shutdown.cancel();
    api_shutdown.cancel();
    for d in deliveries {
        let _ = tokio::time::timeout(Duration::from_millis(1500), d).await;
    }
    spool.sync();
    tracing::debug!(
        elapsed_ms = stopping.elapsed().as_millis() as u64,
        "sinks drained"
    );
    let lost = capture.loss_totals();
    eprintln!(
        "monitor: stopped; {events} events, {findings} findings; lost events: {}",
        if lost.is_empty() {
            "none".to_owned()
        } else {
            lost.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        }
    );
    if let Phase::Learning = detector.engine().phase() {
        eprintln!("monitor: learning was not finished; it starts over on the next run");
    }
    drop(capture);
    tracing::debug!(
        elapsed_ms = stopping.elapsed().as_millis() as u64,
        "probes detached"
    );
    if spool.stats().degraded.is_some() {
        bail!(
            "the spool could not be written: {}",
            spool.stats().degraded.unwrap_or_default()
        );
    }
    Ok(())
}

fn spool_append(spool: &Spool, class: Class, record: &serde_json::Value) {
    let bytes = serde_json::to_vec(record).expect("a JSON value serializes");
    if let Err(e) = spool.append(class, &bytes) {
        tracing::error!(error = %crate::error::error_chain(&e), "spool write failed; keeping records in memory");
    }
}

fn emit_finding(
    spool: &Spool,
    paths: &StatePaths,
    host: &Host,
    alert: &Alert,
    detector: &Detector,
) {
    spool_append(spool, Class::Findings, &ocsf::finding(alert, host));
    let logged = LoggedFinding {
        alert: alert.clone(),
        host: host.name.clone(),
    };
    if let Err(e) = append_line(&paths.findings(), &logged) {
        tracing::error!(error = %e, path = %paths.findings().display(), "cannot write the local finding log");
    }
    // Keep the window, so `monitor ack` can teach the model this behaviour.
    if let Some(w) = detector.recent_window(&alert.id) {
        let _ = append_line(&paths.alert_windows(), w);
    }
}

struct Ticks {
    progress: tokio::time::Interval,
    heartbeat: tokio::time::Interval,
    save: tokio::time::Interval,
    status: tokio::time::Interval,
}

impl Ticks {
    fn new(settings: &Settings) -> Self {
        let every = |d: Duration| {
            let mut i = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        };
        Self {
            progress: every(Duration::from_secs(10)),
            heartbeat: every(settings.raw.output.heartbeat),
            save: every(settings.raw.model.save_every),
            status: every(Duration::from_secs(1)),
        }
    }
}
