//! The status stage: once a second it gathers what the other stages
//! publish into a [`Status`] (for `/status`, `/metrics`, `/healthz` and
//! `status.json`, read by `monitor status`), turns health changes into
//! records in the stream, and sends the heartbeat. Every 10 s it adds a
//! point to the history (`monitor report`) and, while learning, prints the
//! progress.
//!
//! It only reads the other stages (watch channels, counters); what it
//! sends goes through the emit stage like everything else.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    api::{SensorReport, SharedStatus, Status},
    channel::{ChannelGauge, Sender},
    event::Timestamp,
    model::{Phase, Progress},
    output::{
        ocsf::{self, Host, Lifecycle},
        sinks::Healths,
        spool::{Class, Spool},
    },
    state::{history, paths::StatePaths},
};

use super::{
    capture_stage::CaptureSnapshot,
    emit_stage::{Emission, EmitStats},
    every,
};

/// What the status is gathered from.
pub struct StatusStage {
    /// This host.
    pub host: Host,
    /// When the agent started.
    pub started: Timestamp,
    /// The state directory (status.json, history).
    pub paths: StatePaths,
    /// Sensor states, fixed at start.
    pub sensors: BTreeMap<String, SensorReport>,
    /// From the capture stage.
    pub capture: watch::Receiver<CaptureSnapshot>,
    /// From the detect stage.
    pub progress: watch::Receiver<Progress>,
    /// From the emit stage.
    pub emitted: Arc<Mutex<EmitStats>>,
    /// The sinks' health.
    pub sinks: Healths,
    /// The spool.
    pub spool: Arc<Spool>,
    /// The channels between the stages, by name.
    pub channels: BTreeMap<&'static str, ChannelGauge>,
    /// Where the status is served.
    pub shared: SharedStatus,
    /// Heartbeats and health records.
    pub emit: Sender<Emission>,
    /// How often the heartbeat goes out.
    pub heartbeat: Duration,
    /// How long learning lasts (for the progress line).
    pub learn_for: Duration,
    /// Cancelled to stop.
    pub stop: CancellationToken,
}

impl StatusStage {
    /// Runs until stopped.
    pub async fn run(self) {
        let mut status_tick = every(Duration::from_secs(1));
        let mut progress_tick = every(Duration::from_secs(10));
        let mut heartbeat_tick = every(self.heartbeat);
        let mut last_events = (0u64, Instant::now());
        let mut last_health: Option<String> = None;
        let mut losses = LossWindow::default();
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = status_tick.tick() => {
                    let mut s = self.gather(&mut last_events);
                    s.lost_last_minute = losses.update(&s.lost);
                    self.report_health_change(&s, &mut last_health).await;
                    let _ = crate::fileio::atomic::write_atomically(
                        &self.paths.status(),
                        &serde_json::to_vec_pretty(&s).unwrap_or_default(),
                    );
                    *self.shared.lock().expect("status lock") = Some(s);
                }
                _ = progress_tick.tick() => {
                    let point = self.shared.lock().expect("status lock").as_ref().map(history::Point::of);
                    if let Some(point) = point
                        && let Err(e) = history::append(&self.paths.history(), &point)
                    {
                        tracing::warn!(error = %e, "cannot write the history");
                    }
                    let p = self.progress.borrow().clone();
                    if p.phase == Phase::Learning {
                        eprintln!("monitor: {}", progress_line(&p, self.learn_for));
                    }
                    release_free_memory();
                }
                _ = heartbeat_tick.tick() => {
                    let p = self.progress.borrow().clone();
                    let c = self.capture.borrow().clone();
                    let findings = self.emitted.lock().expect("emit stats lock").findings;
                    let record = ocsf::lifecycle(Lifecycle::Heartbeat, &self.host, "monitor is alive", serde_json::json!({
                        "phase": p.phase, "windows": p.windows_seen, "findings": findings, "events": c.events,
                        "lost": c.lost, "sensors": self.sensors,
                    }));
                    let _ = self.emit.send(Emission::Record { class: Class::Activity, record }).await;
                }
            }
        }
    }

    fn gather(&self, last_events: &mut (u64, Instant)) -> Status {
        let c = self.capture.borrow().clone();
        let progress = self.progress.borrow().clone();
        let emitted = self.emitted.lock().expect("emit stats lock").clone();
        let now = Instant::now();
        let rate = (c.events.saturating_sub(last_events.0)) as f64
            / now.duration_since(last_events.1).as_secs_f64().max(1e-3);
        *last_events = (c.events, now);
        Status {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            host: self.host.name.clone(),
            started: self.started,
            updated: Timestamp::now(),
            phase: progress.phase,
            progress,
            events: c.events,
            events_per_sec: rate,
            kernel_records: c.kernel_records,
            lost: c.lost,
            lost_last_minute: BTreeMap::new(),
            faults: c.faults,
            sensors: self.sensors.clone(),
            sinks: self.sinks.lock().expect("health lock").clone(),
            spool: self.spool.stats(),
            channels: self
                .channels
                .iter()
                .map(|(name, gauge)| ((*name).to_owned(), gauge.stats()))
                .collect(),
            findings: emitted.findings,
            last_finding: emitted.last_finding,
            processes: c.processes,
            rss_bytes: rss_bytes(),
            log_rotations: emitted.log_rotations,
        }
    }

    /// Health changes become records in the stream (loss is already there
    /// as loss events).
    async fn report_health_change(&self, s: &Status, last: &mut Option<String>) {
        let problem = crate::api::health(s).err();
        if problem == *last {
            return;
        }
        let record = if let Some(why) = &problem {
            tracing::error!("agent unhealthy: {why}");
            ocsf::lifecycle(
                Lifecycle::Health,
                &self.host,
                &format!("monitor degraded: {why}"),
                serde_json::json!({ "problem": why }),
            )
        } else {
            ocsf::lifecycle(
                Lifecycle::Health,
                &self.host,
                "monitor healthy again",
                serde_json::json!({}),
            )
        };
        let _ = self
            .emit
            .send(Emission::Record {
                class: Class::Activity,
                record,
            })
            .await;
        *last = problem;
    }
}

/// Loss totals over the last minute, for the health: a sensor that lost
/// events recently is degraded, and `/healthz` says so until a minute
/// passes without loss.
#[derive(Default)]
struct LossWindow {
    samples: std::collections::VecDeque<(Instant, BTreeMap<String, u64>)>,
}

impl LossWindow {
    const SPAN: Duration = Duration::from_secs(60);

    /// Adds the totals now; returns what grew within the last minute (only
    /// the losses that leave behaviour windows incomplete).
    fn update(&mut self, totals: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
        let now = Instant::now();
        self.samples.push_back((now, totals.clone()));
        while self
            .samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > Self::SPAN)
        {
            self.samples.pop_front();
        }
        let oldest = &self.samples.front().expect("just pushed").1;
        totals
            .iter()
            .filter(|(k, _)| crate::kernel::counters::taints_open_windows(k))
            .filter_map(|(k, v)| {
                let grew = v.saturating_sub(oldest.get(k).copied().unwrap_or(0));
                (grew > 0).then(|| (k.clone(), grew))
            })
            .collect()
    }
}

/// Gives memory the allocator holds free back to the system. After a burst
/// (a flood of short processes, a fit) glibc keeps the freed pages; without
/// this the agent's resident size stays at its peak for good.
fn release_free_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe { libc::malloc_trim(0) };
}

/// Resident memory of this process, bytes.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn progress_line(p: &Progress, learn_for: Duration) -> String {
    let fmt = |secs: f64| humantime::format_duration(Duration::from_secs(secs as u64)).to_string();
    let mut line = format!(
        "learning: {} windows from {} programs, {} of {}",
        p.baseline_windows,
        p.programs,
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
