//! Alerts: a window that crossed the threshold, explained.
//!
//! Everything an analyst needs to decide fast is in the alert itself: what
//! profile and process, its ancestry, the score and the threshold with the
//! false-alarm rate behind it, which features deviated (observed against
//! expected, in counts), the nearest learned behaviour and how far the window
//! is from it, and what was new.

use serde::{Deserialize, Serialize};

use super::{
    baseline::{Baseline, Novelty, Scope, Scored},
    window::Window,
};
use crate::event::{Ancestor, Process, Timestamp};

/// One deviating feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deviation {
    /// The feature's name (`syscall ptrace`, `files written`, ...).
    pub feature: String,
    /// What the window did (a count).
    pub observed: f64,
    /// What the nearest learned behaviour would do in a window this size.
    pub expected: f64,
    /// Share of the distance to the nearest cluster this feature accounts for.
    pub share: f64,
}

/// Where the window sits relative to the baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NearestCluster {
    /// The profile's own model, or the global one.
    pub scope: Scope,
    /// Cluster index in that model.
    pub cluster: usize,
    /// Distance to its centroid.
    pub distance: f64,
    /// That cluster's typical member distance.
    pub typical_distance: f64,
}

/// An explained alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Stable id: the same window always gets the same id.
    pub id: String,
    /// When it was raised (the window's end).
    pub time: Timestamp,
    /// The behaviour profile (executable).
    pub profile: String,
    /// The parent's executable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_profile: Option<String>,
    /// The process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    /// Its ancestry, nearest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestry: Vec<Ancestor>,
    /// Window start.
    pub window_start: Timestamp,
    /// Window end.
    pub window_end: Timestamp,
    /// Syscalls in the window.
    pub syscalls: u64,
    /// Calibrated score in [0, 1].
    pub score: f64,
    /// Alert threshold on the score.
    pub threshold: f64,
    /// False-alarm rate the threshold was calibrated for.
    pub false_alarm_rate: f64,
    /// The features that deviated most.
    pub deviations: Vec<Deviation>,
    /// The nearest learned behaviour.
    pub nearest_cluster: NearestCluster,
    /// What was new.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub novelty: Vec<Novelty>,
    /// One line for people.
    pub summary: String,
    /// The window overlapped lost events (less certain).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
}

/// A stable id for a window's alert.
pub fn alert_id(w: &Window) -> String {
    // FNV-1a: stable across runs and versions, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(w.profile.as_bytes());
    feed(&w.pid.to_le_bytes());
    feed(&w.start.0.to_le_bytes());
    feed(&w.end.0.to_le_bytes());
    format!("{h:016x}")
}

impl Alert {
    /// Builds the alert of a scored window.
    pub fn new(baseline: &Baseline, w: &Window, scored: &Scored, threshold: f64) -> Self {
        let deviations: Vec<Deviation> = baseline
            .deviations(w, scored, 5)
            .into_iter()
            .map(|(i, share, observed, expected)| Deviation {
                feature: baseline.space.feature(i).name(),
                observed,
                expected: (expected * 10.0).round() / 10.0,
                share: (share * 1000.0).round() / 1000.0,
            })
            .collect();
        let summary = summarize(w, scored, &deviations);
        Alert {
            id: alert_id(w),
            time: w.end,
            profile: w.profile.clone(),
            parent_profile: w.parent_profile.clone(),
            process: w.context.process.clone(),
            ancestry: w.context.ancestry.clone(),
            window_start: w.start,
            window_end: w.end,
            syscalls: w.total_syscalls(),
            score: (scored.score * 10_000.0).round() / 10_000.0,
            threshold,
            false_alarm_rate: ((1.0 - threshold) * 10_000.0).round() / 10_000.0,
            deviations,
            nearest_cluster: NearestCluster {
                scope: scored.scope,
                cluster: scored.nearest.cluster,
                distance: (scored.nearest.distance * 1000.0).round() / 1000.0,
                typical_distance: (scored.nearest.spread * 1000.0).round() / 1000.0,
            },
            novelty: scored.novelty.clone(),
            summary,
            incomplete: w.tainted,
        }
    }
}

fn summarize(w: &Window, scored: &Scored, deviations: &[Deviation]) -> String {
    let name = w.profile.rsplit('/').next().unwrap_or(&w.profile);
    let pid = w.context.process.as_ref().map_or(w.pid, |p| p.pid);
    let mut parts = Vec::new();
    for n in scored.novelty.iter().take(3) {
        parts.push(format!("{} ({})", n.kind.describe(), n.value));
    }
    if parts.is_empty()
        && let Some(d) = deviations.first()
    {
        parts.push(format!(
            "{}: {} where about {} is usual",
            d.feature,
            d.observed,
            d.expected
        ));
    }
    format!(
        "{name} (pid {pid}) behaved unlike its baseline, score {:.3}: {}",
        scored.score,
        parts.join("; ")
    )
}
