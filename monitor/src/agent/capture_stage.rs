//! The capture stage: owns the [`Capture`] (probes, ring-buffer source,
//! process table, enrichment, syscall counts) and sends finished events on.
//!
//! Events to the detect stage are sent with `send`: when detection falls
//! behind, capture waits, the ring buffer fills and the kernel counts what
//! it cannot write (loss events, never silent). Raw events for the sinks
//! (`output.raw_events`) are offered: dropped and counted when the emit
//! stage is behind, so they never hold up detection.

use std::{collections::BTreeMap, time::Duration};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    capture::Capture,
    event::{Detail, Event},
    output::{
        ocsf::{self, Host, Lifecycle},
        spool::Class,
    },
};

use super::emit_stage::Emission;
use crate::channel::Sender;

/// How often the sensor's hooks and maps are checked (`kernel::integrity`).
const INTEGRITY_EVERY: Duration = Duration::from_secs(10);

/// Events handed on at once, at most.
pub const BATCH: usize = 256;

/// How long the stage keeps draining what the kernel already wrote, once
/// told to stop.
const DRAIN: Duration = Duration::from_millis(300);

/// Capture counters, for the status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CaptureSnapshot {
    /// Events passed on.
    pub events: u64,
    /// Records received from the kernel.
    pub kernel_records: u64,
    /// Lost events by reason.
    pub lost: BTreeMap<String, u64>,
    /// Degraded fields by reason.
    pub faults: BTreeMap<String, u64>,
    /// Processes in the table.
    pub processes: usize,
}

impl CaptureSnapshot {
    fn of(capture: &Capture) -> Self {
        Self {
            events: capture.events_out(),
            kernel_records: capture.records_in(),
            lost: capture.loss_totals(),
            faults: capture.fault_totals(),
            processes: capture.table().len(),
        }
    }
}

/// A signal the kernel saw sent to the agent, with its sender as the
/// process table knew it: who stopped the agent, even when the sender has
/// exited before the agent could look at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalToAgent {
    /// The sender.
    pub sender_pid: u32,
    /// Its executable.
    pub sender_exe: Option<String>,
    /// Its command line.
    pub sender_cmdline: Option<String>,
    /// The signal's name.
    pub signal: String,
}

/// The last signals sent to the agent (a few, newest last).
pub type SignalsToAgent =
    std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<SignalToAgent>>>;

/// The stage's state.
pub struct CaptureStage {
    /// The running capture.
    pub capture: Capture,
    /// Events to the detect stage, in batches (up to [`BATCH`]).
    pub events: Sender<Vec<Event>>,
    /// Raw events to the emit stage, when `output.raw_events` is on.
    pub raw_events: Option<Sender<Emission>>,
    /// Loss reports to the emit stage (always).
    pub health: Sender<Emission>,
    /// This host, for the loss reports.
    pub host: Host,
    /// Signals the kernel saw sent to the agent.
    pub signals_to_agent: SignalsToAgent,
    /// Counters, for the status (every second and at the end).
    pub snapshot: watch::Sender<CaptureSnapshot>,
    /// Cancelled to stop.
    pub stop: CancellationToken,
}

impl CaptureStage {
    /// Runs until stopped (or the source ends), then drains what the
    /// kernel already wrote for up to 300 ms. Returns the capture, whose
    /// probes stay attached until it is dropped.
    pub async fn run(self) -> Capture {
        let Self {
            mut capture,
            events,
            raw_events,
            health,
            host,
            signals_to_agent,
            snapshot,
            stop,
        } = self;
        let out = Downstream {
            events,
            raw_events,
            health,
            host,
            signals_to_agent,
        };
        let mut tick = super::every(Duration::from_secs(1));
        let mut integrity_tick = super::every(INTEGRITY_EVERY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                batch = capture.next_batch(BATCH) => {
                    let Some(batch) = batch else { break };
                    if out.pass_on(batch).await.is_err() {
                        break;
                    }
                }
                _ = tick.tick() => {
                    snapshot.send_replace(CaptureSnapshot::of(&capture));
                }
                _ = integrity_tick.tick() => {
                    let problems = capture.check_integrity();
                    if !problems.is_empty() && out.report_tampering(&problems).await.is_err() {
                        break;
                    }
                }
            }
        }
        capture.stop_sources();
        let drain_until = tokio::time::Instant::now() + DRAIN;
        while let Ok(Some(batch)) =
            tokio::time::timeout_at(drain_until, capture.next_batch(BATCH)).await
        {
            if out.pass_on(batch).await.is_err() {
                break;
            }
        }
        snapshot.send_replace(CaptureSnapshot::of(&capture));
        capture
    }
}

/// Where the stage's events go.
struct Downstream {
    events: Sender<Vec<Event>>,
    raw_events: Option<Sender<Emission>>,
    health: Sender<Emission>,
    host: Host,
    signals_to_agent: SignalsToAgent,
}

impl Downstream {
    async fn pass_on(&self, batch: Vec<Event>) -> Result<(), crate::channel::Closed> {
        for event in &batch {
            self.look_at(event).await?;
        }
        self.events.send(batch).await
    }

    /// The sensor was changed behind the agent's back: a finding, now.
    async fn report_tampering(&self, problems: &[String]) -> Result<(), crate::channel::Closed> {
        for p in problems {
            tracing::error!("sensor tampered with: {p}");
            eprintln!("monitor: SENSOR TAMPERED WITH: {p}");
        }
        self.health
            .send(Emission::Record {
                class: Class::Findings,
                record: ocsf::tamper_finding(&self.host, problems),
            })
            .await
    }

    /// What the stage does with an event besides handing it on.
    async fn look_at(&self, event: &Event) -> Result<(), crate::channel::Closed> {
        if let Detail::Kill(kill) = &event.detail
            && kill.target_pid == std::process::id() as i32
            && let Some(sender) = &event.process
        {
            let mut seen = self.signals_to_agent.lock().expect("signals lock");
            if seen.len() == 8 {
                seen.pop_front();
            }
            seen.push_back(SignalToAgent {
                sender_pid: sender.pid,
                sender_exe: sender
                    .exe
                    .as_ref()
                    .map(|e| e.to_string_lossy().into_owned()),
                sender_cmdline: Some(
                    sender
                        .args
                        .iter()
                        .map(|a| a.to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join(" "),
                )
                .filter(|c| !c.is_empty()),
                signal: kill.signal_name.clone(),
            });
        }
        if let Detail::Loss(loss) = &event.detail {
            // The SOC hears of a blind spot in the stream it watches, within
            // the loss interval (1 s), not only in the metrics.
            self.health
                .send(Emission::Record {
                    class: Class::Findings,
                    record: ocsf::lifecycle(
                        Lifecycle::Health,
                        &self.host,
                        &format!(
                            "monitor sensor degraded: events lost ({}){}",
                            crate::kernel::counters::counts_line(&loss.counts),
                            loss.top_process
                                .as_ref()
                                .map(|p| format!("; most by {p}"))
                                .unwrap_or_default()
                        ),
                        serde_json::json!({
                            "lost": loss.counts, "lost_since_start": loss.totals,
                            "by_process": loss.by_process, "top_process": loss.top_process,
                        }),
                    ),
                })
                .await?;
        }
        if let Some(raw) = &self.raw_events {
            // Dropped when full: counted in the channel's `dropped`.
            raw.offer(Emission::Activity(Box::new(event.clone())))?;
        }
        Ok(())
    }
}
