//! `history.jsonl` in the state directory: one small point every few
//! seconds (phase, windows, events, losses, findings, sink deliveries), so
//! the report can draw the learning curve, drops and sink health over time.
//! It rotates once at [`MAX_BYTES`] (`history.jsonl.1` keeps the previous
//! part).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{api::Status, event::Timestamp, fileio::rotate::Rotation, model::Phase};

/// Size at which the history rotates.
pub const MAX_BYTES: u64 = 4 << 20;

/// One point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// When.
    pub time: Timestamp,
    /// Learning or detecting.
    pub phase: Phase,
    /// Windows seen since start.
    pub windows: u64,
    /// Windows in the baseline (learning: stored so far).
    pub baseline_windows: u64,
    /// Programs.
    #[serde(alias = "profiles")]
    pub programs: usize,
    /// Events processed.
    pub events: u64,
    /// Lost events, all reasons.
    pub lost: u64,
    /// Findings raised since start.
    pub findings: u64,
    /// Per sink: (name, delivered, failures, failing now).
    pub sinks: Vec<(String, u64, u64, bool)>,
}

impl Point {
    /// The point of a status.
    pub fn of(s: &Status) -> Self {
        Self {
            time: s.updated,
            phase: s.phase,
            windows: s.progress.windows_seen,
            baseline_windows: s.progress.baseline_windows,
            programs: s.progress.programs,
            events: s.events,
            lost: s.lost.values().sum(),
            findings: s.findings,
            sinks: s
                .sinks
                .iter()
                .map(|h| (h.name.clone(), h.delivered, h.failures, h.failing()))
                .collect(),
        }
    }
}

const ROTATION: Rotation = Rotation {
    max_bytes: MAX_BYTES,
    keep: 1,
};

/// Appends a point, rotating the file when it is full.
pub fn append(path: &Path, point: &Point) -> std::io::Result<()> {
    ROTATION.append_line(path, point).map(|_| ())
}

/// Every point, the rotated part first.
pub fn read(path: &Path) -> Vec<Point> {
    crate::fileio::rotate::read_log::<Point>(path)
        .map(|(points, _)| points)
        .unwrap_or_default()
}
