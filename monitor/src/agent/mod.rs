//! `monitor run`: the agent's main job, as stages joined by bounded,
//! counted channels. This module is the wiring; each stage owns its state.
//!
//! ```text
//!                 events (8192, wait)            emissions (4096: findings wait,
//!  capture stage ──────────────────> detect stage ───────raw events dropped+counted)──┐
//!   (probes, ring buffer,             (windows, engine,                               v
//!    process table, enrichment)        acknowledgements)                         emit stage ──> spool ──> delivery task per sink
//!        │  raw events (offer) ───────────│──────────────────────────────────────>  ^ (finding log,
//!        │                                ├─ model snapshots (watch, latest wins) ─> model keeper (saves off the path)
//!        │                                └─ fit (blocking thread) ─> back to the detect stage
//!        └─ counters (watch) ──> status stage (1 s: status.json, /status, /metrics, health, heartbeat) ─> emit
//! ```
//!
//! Overflow policies: the capture stage waits when detection is behind, so
//! the pressure reaches the kernel ring buffer, whose overflow the kernel
//! counts as loss (reported, never silent). Findings wait for the emit
//! stage, which only appends to the spool on disk. Raw events are offered:
//! dropped when the emit stage is behind, and counted
//! (`monitor_channel_dropped_total`).
//!
//! State lives under the state directory (0700): the model (`model.bin`),
//! the spool (`spool/`), the local finding log (`findings.jsonl`, read by
//! `monitor findings`), acknowledgements (`acks.jsonl`) and `status.json`
//! (read by `monitor status`). All files are 0600.
//!
//! Stopping (SIGTERM, SIGINT) runs down the stages in order: capture stops
//! and drains what the kernel already wrote (300 ms), detection finishes
//! what it was given and hands over its last model snapshot, the emit stage
//! writes everything it was sent, the model is saved, a Stop record is
//! spooled, and sinks get one second to deliver what is spooled (the rest
//! waits in the spool for the next start). It takes under two seconds.

mod acks;
mod capture_stage;
mod detect_stage;
mod downtime;
mod emit_stage;
mod fleet_stage;
mod model_keeper;
mod status_stage;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use self::status_stage::rss_bytes;
use self::{
    capture_stage::{CaptureSnapshot, CaptureStage},
    detect_stage::DetectStage,
    emit_stage::{EmitStage, EmitStats, spool_append},
    status_stage::StatusStage,
};
use crate::{
    api::{SensorReport, SharedStatus},
    capture::Capture,
    channel,
    config::Settings,
    detect::Detector,
    event::Timestamp,
    model::{Engine, Phase},
    output::{
        ocsf::{self, Host, Lifecycle},
        sinks::{self, Delivery, Healths, Sink, SinkHealth},
        spool::{Class, Spool, SpoolSettings},
    },
    state::paths::{StateLock, StatePaths, prepare_state_dir},
};

/// Why the agent could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The state directory cannot be prepared or locked.
    #[error(transparent)]
    State(#[from] crate::state::paths::StateError),
    /// The saved model cannot be used, and the configuration says stop.
    #[error(transparent)]
    Model(#[from] model_keeper::LoadError),
    /// The spool cannot be opened.
    #[error("cannot open the spool")]
    Spool(#[source] crate::output::spool::SpoolError),
    /// A sink's configuration cannot be used.
    #[error("sink {name}: {reason}")]
    Sink {
        /// The sink.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The operations API cannot listen.
    #[error("cannot serve the API on {addr}")]
    Listen {
        /// The address (`api.listen`) or the socket's path.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `[fleet]` cannot be used (a credential or key file).
    #[error("{0}")]
    Fleet(String),
    /// Capture cannot start (probes, /proc, the ring buffer).
    #[error("cannot start capture")]
    Capture(#[source] crate::capture::CaptureError),
    /// A stage ended by a panic (a bug; its message is in the log).
    #[error("the {0} stage panicked")]
    StagePanicked(&'static str),
    /// Records could not be written to the spool (they were kept in
    /// memory, and are lost with this process).
    #[error("the spool could not be written: {0}")]
    SpoolDegraded(String),
}

/// Capacity of the capture → detect channel, in batches of up to
/// `capture_stage::BATCH` events (a batch is what the capture had ready).
const EVENTS_CAPACITY: usize = 1024;
/// Capacity of the channel into the emit stage.
const EMISSIONS_CAPACITY: usize = 4096;

/// Runs the agent until a signal.
pub async fn run(
    settings: Settings,
    mut signals: crate::shutdown::ShutdownSignals,
) -> Result<(), AgentError> {
    for w in &settings.warnings {
        tracing::warn!("configuration: {w}");
    }
    let paths = StatePaths::new(&settings.state_dir);
    prepare_state_dir(&paths.dir)?;
    let _lock = StateLock::take(&paths.dir)?;
    raise_open_file_limit();
    let host = Host::current(&settings.host_name);
    let started = Timestamp::now();

    let (engine, model_created) = start_engine(&paths, &settings, started)?;
    let phase = engine.phase();
    let output = Output::start(&settings, &host)?;
    let fleet = settings.raw.fleet.fleet().map_err(AgentError::Fleet)?;
    let status: SharedStatus = Arc::new(Mutex::new(None));
    let api_shutdown = CancellationToken::new();
    serve_api(&settings, &paths, &status, &api_shutdown).await?;
    // Capture last: everything downstream is ready for its events.
    let capture = Capture::start(&settings.capture).map_err(AgentError::Capture)?;
    let sensors = announce(&capture, &output, &host, phase);
    if let Some(down) = downtime::since_last_run(&paths) {
        tracing::warn!("{}", down.describe());
        spool_append(
            &output.spool,
            Class::Findings,
            &ocsf::lifecycle(
                Lifecycle::Health,
                &host,
                &down.describe(),
                serde_json::json!({ "down_from": down.from, "down_until": down.until }),
            ),
        );
    }

    // The stages and their channels.
    let (events_tx, events_rx, events_gauge) = channel::bounded(EVENTS_CAPACITY);
    let (emit_tx, emit_rx, emit_gauge) = channel::bounded(EMISSIONS_CAPACITY);
    let (capture_tx, capture_rx) = watch::channel(CaptureSnapshot::default());
    let (progress_tx, progress_rx) = watch::channel(engine.progress());
    let (models_tx, models_rx) = watch::channel(None);
    let emitted = Arc::new(Mutex::new(EmitStats::default()));
    let stop_capture = CancellationToken::new();
    let signals_to_agent = capture_stage::SignalsToAgent::default();
    let stop_status = CancellationToken::new();

    let emit = tokio::spawn(
        EmitStage {
            spool: output.spool.clone(),
            paths: paths.clone(),
            host: host.clone(),
            stats: emitted.clone(),
            logs: crate::fileio::rotate::Rotation {
                max_bytes: settings.raw.agent.log_max_size,
                keep: settings.raw.agent.log_keep,
            },
        }
        .run(emit_rx),
    );
    // With a fleet, findings pass through the fleet stage on their way.
    let mut channels = BTreeMap::from([("events", events_gauge), ("emissions", emit_gauge)]);
    let (findings_tx, fleet_stage) = match fleet {
        Some((endpoint, fleet_settings)) => {
            let (tx, rx, gauge) = channel::bounded(EMISSIONS_CAPACITY);
            channels.insert("fleet", gauge);
            let stage = tokio::spawn(
                fleet_stage::FleetStage {
                    fleet: crate::fleet::prevalence::Fleet::new(
                        endpoint,
                        fleet_settings,
                        &host.name,
                    ),
                    emit: emit_tx.clone(),
                    host: host.clone(),
                }
                .run(rx),
            );
            (tx, Some(stage))
        }
        None => (emit_tx.clone(), None),
    };
    let keeper = tokio::spawn(model_keeper::keep(
        models_rx,
        paths.clone(),
        host.name.clone(),
    ));
    let detect = tokio::spawn(
        DetectStage {
            detector: Detector::new(
                engine.fit_elsewhere(),
                settings.capture.counts.drain_every * 2,
            ),
            own_pid: std::process::id(),
            paths: paths.clone(),
            model_created,
            save_every: settings.raw.model.save_every,
            emit: findings_tx,
            models: models_tx,
            progress: progress_tx,
        }
        .run(events_rx),
    );
    let status_stage = tokio::spawn(
        StatusStage {
            host: host.clone(),
            started,
            paths: paths.clone(),
            sensors,
            capture: capture_rx.clone(),
            progress: progress_rx,
            emitted: emitted.clone(),
            sinks: output.healths.clone(),
            spool: output.spool.clone(),
            channels,
            shared: status,
            emit: emit_tx.clone(),
            heartbeat: settings.raw.output.heartbeat,
            learn_for: settings.engine.learn_for,
            stop: stop_status.clone(),
        }
        .run(),
    );
    let mut capture_stage = tokio::spawn(
        CaptureStage {
            capture,
            events: events_tx,
            raw_events: settings.raw.output.raw_events.then(|| emit_tx.clone()),
            health: emit_tx.clone(),
            host: host.clone(),
            signals_to_agent: signals_to_agent.clone(),
            snapshot: capture_tx,
            stop: stop_capture.clone(),
        }
        .run(),
    );
    // Only the stages hold senders now: each ends when its input ends.
    drop(emit_tx);

    // Run until a signal, or until capture ends by itself.
    let (signal, ended) = tokio::select! {
        sig = signals.recv() => (Some(sig), None),
        ended = &mut capture_stage => (None, Some(ended)),
    };
    let reason = signal
        .as_ref()
        .map_or_else(|| "end of events".to_owned(), |s| s.describe());
    tracing::info!(signal = %reason, "stopping");
    let stopping = Instant::now();
    let elapsed = || stopping.elapsed().as_millis() as u64;
    stop_capture.cancel();
    let capture = match ended {
        Some(ended) => ended,
        None => capture_stage.await,
    }
    .map_err(|_| AgentError::StagePanicked("capture"))?;
    tracing::debug!(elapsed_ms = elapsed(), "capture drained");
    if let Some(signal) = signal.as_ref().filter(|s| !s.is_expected()) {
        report_stop_signal(signal, &signals_to_agent, &output.spool, &host);
    }
    let phase = detect
        .await
        .map_err(|_| AgentError::StagePanicked("detect"))?;
    if let Some(stage) = fleet_stage {
        stage
            .await
            .map_err(|_| AgentError::StagePanicked("fleet"))?;
    }
    stop_status.cancel();
    let _ = status_stage.await;
    emit.await.map_err(|_| AgentError::StagePanicked("emit"))?;
    let _ = keeper.await;
    tracing::debug!(
        elapsed_ms = elapsed(),
        "detection finished, findings written, model saved"
    );

    let totals = capture_rx.borrow().clone();
    let findings = emitted.lock().expect("emit stats lock").findings;
    spool_append(
        &output.spool,
        Class::Activity,
        &ocsf::lifecycle(
            Lifecycle::Stop,
            &host,
            &format!("monitor stopping ({reason})"),
            serde_json::json!({ "findings": findings, "events": totals.events, "lost": totals.lost }),
        ),
    );
    let spool = output.stop().await;
    api_shutdown.cancel();
    downtime::stopped_cleanly(&paths, &reason);
    tracing::debug!(elapsed_ms = elapsed(), "sinks drained");
    eprintln!(
        "monitor: stopped; {} events, {findings} findings; lost events: {}",
        totals.events,
        crate::kernel::counters::counts_line(&totals.lost)
    );
    if phase == Phase::Learning {
        eprintln!("monitor: learning was not finished; it starts over on the next run");
    }
    drop(capture);
    tracing::debug!(elapsed_ms = elapsed(), "probes detached");
    if let Some(why) = spool.stats().degraded {
        return Err(AgentError::SpoolDegraded(why));
    }
    Ok(())
}

/// Whoever stops the agent blinds it: the SOC hears of it, with the sender
/// as the kernel saw it (its exec and command line, from the process table;
/// `/proc` as a fallback), before the agent exits.
fn report_stop_signal(
    signal: &crate::shutdown::StopSignal,
    seen: &capture_stage::SignalsToAgent,
    spool: &Spool,
    host: &Host,
) {
    let kernel_saw = seen
        .lock()
        .expect("signals lock")
        .iter()
        .rev()
        .find(|s| s.sender_pid as i32 == signal.sender_pid)
        .cloned();
    let exe = kernel_saw
        .as_ref()
        .and_then(|s| s.sender_exe.clone())
        .or_else(|| signal.sender_exe.clone());
    let line = format!(
        "monitor stopped by {}",
        crate::shutdown::StopSignal {
            sender_exe: exe.clone(),
            ..signal.clone()
        }
        .describe()
    );
    tracing::warn!("{line}");
    spool_append(
        spool,
        Class::Findings,
        &ocsf::lifecycle(
            Lifecycle::Health,
            host,
            &line,
            serde_json::json!({
                "stopped_by": {
                    "signal": signal.name, "pid": signal.sender_pid, "uid": signal.sender_uid,
                    "exe": exe, "cmd_line": kernel_saw.and_then(|s| s.sender_cmdline),
                }
            }),
        ),
    );
}

/// The API: metrics and health on TCP (`api.listen`, if set), everything
/// on the root-only unix socket in the state directory.
async fn serve_api(
    settings: &Settings,
    paths: &StatePaths,
    status: &SharedStatus,
    shutdown: &CancellationToken,
) -> Result<(), AgentError> {
    use crate::api::{ApiLimits, Exposure};
    if let Some(addr) = settings.api_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AgentError::Listen {
                addr: addr.to_string(),
                source,
            })?;
        tracing::info!(%addr, "metrics on /metrics, health on /healthz");
        tokio::spawn(crate::api::serve(
            listener,
            Exposure::Public,
            ApiLimits::default(),
            status.clone(),
            shutdown.clone(),
        ));
    }
    // The state lock is held: a socket left here is a dead agent's.
    let socket = paths.api_socket();
    let _ = std::fs::remove_file(&socket);
    let listener =
        tokio::net::UnixListener::bind(&socket).map_err(|source| AgentError::Listen {
            addr: socket.display().to_string(),
            source,
        })?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| AgentError::Listen {
                addr: socket.display().to_string(),
                source,
            },
        )?;
    }
    tokio::spawn(crate::api::serve(
        listener,
        Exposure::Private,
        ApiLimits::default(),
        status.clone(),
        shutdown.clone(),
    ));
    Ok(())
}

/// Raises the soft limit on open files to the hard limit: the agent's
/// descriptors (maps, links, the spool, sinks, the API) must not run out
/// because a local user holds connections open.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let before = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        if before < limit.rlim_max && libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
            tracing::debug!(
                from = before,
                to = limit.rlim_max,
                "raised the open-file limit"
            );
        }
    }
}

/// The engine: resumed from the saved model, or learning. Returns it and
/// when its baseline was learned.
fn start_engine(
    paths: &StatePaths,
    settings: &Settings,
    started: Timestamp,
) -> Result<(Engine, Timestamp), AgentError> {
    Ok(match model_keeper::load(paths, settings)? {
        Some(file) => {
            tracing::info!(
                windows = file.baseline.windows,
                programs = file.baseline.programs.len(),
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
    })
}

/// The spool and one delivery task per sink.
struct Output {
    spool: Arc<Spool>,
    names: Vec<String>,
    healths: Healths,
    shutdown: CancellationToken,
    deliveries: Vec<tokio::task::JoinHandle<()>>,
}

impl Output {
    fn start(settings: &Settings, host: &Host) -> Result<Self, AgentError> {
        let paths = StatePaths::new(&settings.state_dir);
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
        .map_err(AgentError::Spool)?;
        let healths: Healths = Arc::new(Mutex::new(
            names.iter().map(|n| SinkHealth::new(n)).collect(),
        ));
        let shutdown = CancellationToken::new();
        let dead_letters = Arc::new(crate::output::dead_letters::DeadLetters::new(
            &paths.dead_letters(),
            crate::fileio::rotate::Rotation {
                max_bytes: settings.raw.agent.log_max_size,
                keep: settings.raw.agent.log_keep,
            },
        ));
        let mut deliveries = Vec::new();
        for (i, config) in settings.raw.sink.iter().enumerate() {
            let sink =
                Sink::from_config(config, &host.name).map_err(|reason| AgentError::Sink {
                    name: names[i].clone(),
                    reason,
                })?;
            deliveries.push(tokio::spawn(sinks::deliver(Delivery {
                spool: spool.clone(),
                sink,
                name: names[i].clone(),
                index: i,
                batching: sinks::batching(config),
                host: host.name.clone(),
                healths: healths.clone(),
                dead_letters: dead_letters.clone(),
                shutdown: shutdown.clone(),
                drain: Duration::from_secs(1),
            })));
        }
        Ok(Self {
            spool,
            names,
            healths,
            shutdown,
            deliveries,
        })
    }

    /// Gives the sinks a second to deliver what is spooled; the rest waits
    /// in the spool for the next start.
    async fn stop(self) -> Arc<Spool> {
        self.shutdown.cancel();
        for d in self.deliveries {
            let _ = tokio::time::timeout(Duration::from_millis(1500), d).await;
        }
        self.spool.sync();
        self.spool
    }
}

/// The Start record, a Health record per unavailable sensor (to the sinks,
/// once per start: the SOC sees that this host is partly blind, and why, in
/// the same stream as its findings), and the banner. Returns the sensor
/// states.
fn announce(
    capture: &Capture,
    output: &Output,
    host: &Host,
    phase: Phase,
) -> BTreeMap<String, SensorReport> {
    let sensors: BTreeMap<String, SensorReport> = capture
        .probes()
        .sensors()
        .iter()
        .map(|(s, state)| (s.name().to_owned(), SensorReport::of(state)))
        .collect();
    spool_append(
        &output.spool,
        Class::Activity,
        &ocsf::lifecycle(
            Lifecycle::Start,
            host,
            &format!("monitor started ({phase:?})"),
            serde_json::json!({ "sensors": sensors, "phase": phase }),
        ),
    );
    for (sensor, report) in sensors.iter().filter(|(_, r)| r.is_unavailable()) {
        tracing::warn!("sensor not running: {sensor}: {report}");
        spool_append(
            &output.spool,
            Class::Findings,
            &ocsf::lifecycle(
                Lifecycle::Health,
                host,
                &format!(
                    "monitor sensor {sensor} unavailable: {}",
                    report.reason.as_deref().unwrap_or("")
                ),
                serde_json::json!({ "sensor": sensor, "state": report.state, "reason": report.reason }),
            ),
        );
    }
    eprintln!(
        "monitor: running on {} ({}), {} processes tracked; {}",
        host.name,
        if phase == Phase::Learning {
            "learning"
        } else {
            "detecting"
        },
        capture.seed_stats().processes,
        if output.names.len() == 1 {
            format!("findings to {}", output.names[0])
        } else {
            format!("findings to {} sinks", output.names.len())
        }
    );
    sensors
}

/// An interval whose first tick is one period from now, and which does not
/// burst after a stall.
fn every(period: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}
