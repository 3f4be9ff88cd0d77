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

use crate::{capture::Capture, event::Event};

use super::emit_stage::Emission;
use crate::channel::Sender;

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

/// The stage's state.
pub struct CaptureStage {
    /// The running capture.
    pub capture: Capture,
    /// Events to the detect stage.
    pub events: Sender<Event>,
    /// Raw events to the emit stage, when `output.raw_events` is on.
    pub raw_events: Option<Sender<Emission>>,
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
            snapshot,
            stop,
        } = self;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                event = capture.next() => {
                    let Some(event) = event else { break };
                    if pass_on(event, &events, raw_events.as_ref()).await.is_err() {
                        break;
                    }
                }
                _ = tick.tick() => {
                    snapshot.send_replace(CaptureSnapshot::of(&capture));
                }
            }
        }
        capture.stop_sources();
        let drain_until = tokio::time::Instant::now() + DRAIN;
        while let Ok(Some(event)) = tokio::time::timeout_at(drain_until, capture.next()).await {
            if pass_on(event, &events, raw_events.as_ref()).await.is_err() {
                break;
            }
        }
        snapshot.send_replace(CaptureSnapshot::of(&capture));
        capture
    }
}

async fn pass_on(
    event: Event,
    events: &Sender<Event>,
    raw_events: Option<&Sender<Emission>>,
) -> Result<(), crate::channel::Closed> {
    if let Some(raw) = raw_events {
        // Dropped when full: counted in the channel's `dropped`.
        raw.offer(Emission::Activity(Box::new(event.clone())))?;
    }
    events.send(event).await
}
