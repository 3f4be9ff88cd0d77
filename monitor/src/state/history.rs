//! `history.jsonl` in the state directory: one small point every few
//! seconds (phase, windows, events, losses, findings, sink deliveries), so
//! the report can draw the learning curve, drops and sink health over time.
//! It rotates once at [`MAX_BYTES`] (`history.1.jsonl` keeps the previous
//! part).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{api::Status, event::Timestamp, model::Phase};

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

/// Appends a point, rotating the file when it is full.
pub fn append(path: &Path, point: &Point) -> std::io::Result<()> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() >= MAX_BYTES) {
        std::fs::rename(path, path.with_extension("1.jsonl"))?;
    }
    crate::fileio::jsonl::append_line(path, point)
}

/// Every point, the rotated part first.
pub fn read(path: &Path) -> Vec<Point> {
    let mut points = Vec::new();
    for p in [path.with_extension("1.jsonl"), path.to_owned()] {
        if let Ok((mut items, _)) = crate::fileio::jsonl::read_lines::<Point>(&p) {
            points.append(&mut items);
        }
    }
    points
}
