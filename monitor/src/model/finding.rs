//! Findings: a window that crossed the threshold, explained.
//!
//! Everything an analyst needs to decide fast is in the finding itself: what
//! program and process, its ancestry, the score and the threshold with the
//! false-alarm rate behind it, which features deviated (observed against
//! expected, in counts), the nearest learned behaviour and how far the window
//! is from it, and what was new.

use serde::{Deserialize, Serialize};

use super::{
    baseline::{Baseline, Novelty, Scope, Scored},
    guidance::{self, Guidance},
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
    /// The program's own model, or the global one.
    pub scope: Scope,
    /// Cluster index in that model.
    pub cluster: usize,
    /// Distance to its centroid.
    pub distance: f64,
    /// That cluster's typical member distance.
    pub typical_distance: f64,
}

/// A window that repeated an open finding's behaviour: the same program,
/// nothing new, within the finding quarantine (`model.finding_quarantine`). It
/// is not raised again (one finding per behaviour, not one per window), but
/// it is kept in the local log, so people and `monitor drill` see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Repeat {
    /// The finding it repeats.
    pub repeat_of: String,
    /// When (the window's end).
    pub time: Timestamp,
    /// Its score.
    pub score: f64,
    /// The process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    /// Its ancestry, nearest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestry: Vec<Ancestor>,
}

impl Repeat {
    /// The repeat of finding `of` by window `w`.
    pub fn new(of: String, w: &Window, score: f64) -> Self {
        Self {
            repeat_of: of,
            time: w.end,
            score: (score * 10_000.0).round() / 10_000.0,
            process: w.context.process.as_deref().cloned(),
            ancestry: w.context.ancestry.to_vec(),
        }
    }
}

/// An explained finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Stable id: the same window always gets the same id.
    pub id: String,
    /// When it was raised (the window's end).
    pub time: Timestamp,
    /// The behaviour program (executable).
    #[serde(alias = "profile")]
    pub program: String,
    /// The parent's executable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "parent_profile")]
    pub parent_program: Option<String>,
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
    /// Finding threshold on the score.
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
    /// Why it matters, what to do, typical ATT&CK techniques, severity.
    #[serde(default)]
    pub guidance: Guidance,
    /// The window overlapped lost events (less certain).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
    /// What the fleet says of it (with a `[fleet]` configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<super::fleet_context::FleetContext>,
}

/// A stable id for a window's finding.
pub fn finding_id(w: &Window) -> String {
    let h = crate::hash::Fnv1a::default()
        .write(w.program.as_bytes())
        .write(&w.pid.to_le_bytes())
        .write(&w.start.0.to_le_bytes())
        .write(&w.end.0.to_le_bytes())
        .finish();
    format!("{h:016x}")
}

impl Finding {
    /// Builds the finding of a scored window.
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
        let mut scored = scored.clone();
        scored
            .novelty
            .sort_by_key(|n| (importance(n.kind), n.value.clone()));
        let scored = &scored;
        let summary = summarize(w, scored, &deviations);
        Finding {
            id: finding_id(w),
            time: w.end,
            program: w.program.clone(),
            parent_program: w.parent_program.clone(),
            process: w.context.process.as_deref().cloned(),
            ancestry: w.context.ancestry.to_vec(),
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
            guidance: guidance::for_novelty(&scored.novelty),
            summary,
            incomplete: w.tainted,
            fleet: None,
        }
    }
}

/// Order of novelty kinds in explanations: what an analyst should read first.
fn importance(kind: super::baseline::NoveltyKind) -> u8 {
    use super::baseline::NoveltyKind::*;
    match kind {
        NewAction => 0,
        NewSensitivePath => 1,
        NewChildProgram => 2,
        NewPeer => 3,
        NewListeningPort => 4,
        NewExecutable => 5,
        NewParentChild => 6,
        NewSyscall => 7,
        ReplacedImage | CopiedImage => 0,
    }
}

/// Novelty facts for people: new syscalls folded into one line.
fn novelty_lines(novelty: &[Novelty]) -> Vec<String> {
    let mut lines = Vec::new();
    let syscalls: Vec<&str> = novelty
        .iter()
        .filter(|n| n.kind == super::baseline::NoveltyKind::NewSyscall)
        .map(|n| n.value.as_str())
        .collect();
    for n in novelty
        .iter()
        .filter(|n| n.kind != super::baseline::NoveltyKind::NewSyscall)
    {
        lines.push(format!("{} ({})", n.kind.describe(), printable(&n.value)));
    }
    match syscalls.len() {
        0 => {}
        1 => lines.push(format!(
            "made a system call it never made before ({})",
            syscalls[0]
        )),
        k => lines.push(format!(
            "made {k} system calls it never made before ({})",
            syscalls.join(", ")
        )),
    }
    lines
}

fn summarize(w: &Window, scored: &Scored, deviations: &[Deviation]) -> String {
    let name = w.program.rsplit('/').next().unwrap_or(&w.program);
    let pid = w.context.process.as_ref().map_or(w.pid, |p| p.pid);
    let mut parts: Vec<String> = novelty_lines(&scored.novelty).into_iter().take(3).collect();
    if parts.is_empty() {
        parts.push(match (deviations.first(), scored.sequence_p) {
            (Some(d), _) => format!(
                "{}: {} where about {} is usual",
                d.feature, d.observed, d.expected
            ),
            // The sequence model alone: the counts look usual, the order
            // of the calls does not. A finding always says why.
            (None, Some(p)) => format!(
                "made its usual system calls in an order its baseline rarely shows (about 1 normal window in {:.0})",
                1.0 / p.max(f64::MIN_POSITIVE)
            ),
            (None, None) => "its behaviour as a whole is far from everything learned".into(),
        });
    }
    format!(
        "{name} (pid {pid}) behaved unlike its baseline, score {:.3}: {}",
        scored.score,
        parts.join("; ")
    )
}

pub use crate::display::printable;

fn command_line(
    exe: Option<&crate::event::ByteString>,
    args: &[crate::event::ByteString],
    comm: &crate::event::ByteString,
) -> String {
    let mut line = if args.is_empty() {
        exe.map_or_else(
            || comm.to_string_lossy().into_owned(),
            |e| e.to_string_lossy().into_owned(),
        )
    } else {
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    };
    if line.chars().count() > 160 {
        line = line.chars().take(157).collect::<String>() + "...";
    }
    printable(&line)
}

impl Finding {
    /// The multi-line explanation for people: what happened, the process
    /// tree, what was observed against the baseline, why it matters and
    /// what to do first.
    pub fn explanation(&self) -> String {
        let mut out = format!(
            "{} [{}]\n",
            printable(&self.summary),
            self.guidance.severity.name()
        );
        out.push_str(&format!(
            "score {:.4}, threshold {:.4} (calibrated for {} false alarms per window); window {} .. {}\n",
            self.score, self.threshold, self.false_alarm_rate, self.window_start, self.window_end
        ));
        if self.incomplete {
            out.push_str(
                "note: the agent lost events during this window; the picture may be incomplete\n",
            );
        }
        out.push_str("\nprocess tree (oldest first):\n");
        let mut depth = 0;
        for a in self.ancestry.iter().rev() {
            out.push_str(&format!(
                "{}{} (pid {}, uid {})\n",
                "  ".repeat(depth + 1),
                command_line(a.exe.as_ref(), &a.args, &a.comm),
                a.pid,
                a.uid
            ));
            depth += 1;
        }
        match &self.process {
            Some(p) => out.push_str(&format!(
                "{}{} (pid {}, uid {}{}) <- this process\n",
                "  ".repeat(depth + 1),
                command_line(p.exe.as_ref(), &p.args, &p.comm),
                p.pid,
                p.uid,
                p.user
                    .as_deref()
                    .map(|u| format!(" {}", printable(u)))
                    .unwrap_or_default()
            )),
            None => out.push_str(&format!("  {} <- program\n", printable(&self.program))),
        }
        if let Some(fleet) = &self.fleet {
            out.push_str(&format!("\nfleet: {}\n", fleet.text));
            if let Some(before) = fleet.lowered_from {
                out.push_str(&format!(
                    "  severity lowered from {} because it is common across the fleet\n",
                    before.name()
                ));
            }
            if let Some(campaign) = &fleet.campaign {
                out.push_str(&format!("  part of fleet campaign {campaign}\n"));
            }
        }
        if !self.novelty.is_empty() {
            out.push_str("\nnever seen in this host's baseline:\n");
            for line in novelty_lines(&self.novelty) {
                out.push_str(&format!("  - {line}\n"));
            }
        }
        if !self.deviations.is_empty() {
            out.push_str("\nobserved in this window vs. the nearest learned behaviour:\n");
            for d in &self.deviations {
                out.push_str(&format!(
                    "  - {}: {} (usual: about {}; {:.0}% of the difference)\n",
                    d.feature,
                    d.observed,
                    d.expected,
                    d.share * 100.0
                ));
            }
        }
        out.push_str(&format!(
            "  nearest cluster: #{} of the {} model, distance {:.3} (its members are typically {:.3} away)\n",
            self.nearest_cluster.cluster,
            match self.nearest_cluster.scope {
                Scope::Program => "program's own",
                Scope::Global => "host-wide",
            },
            self.nearest_cluster.distance,
            self.nearest_cluster.typical_distance
        ));
        if !self.guidance.techniques.is_empty() {
            out.push_str("\ntypical of (MITRE ATT&CK):\n");
            for t in &self.guidance.techniques {
                out.push_str(&format!("  - {} {} ({})\n", t.id, t.name, t.tactic));
            }
        }
        out.push_str("\nwhy it matters:\n");
        for why in &self.guidance.why {
            out.push_str(&format!("  - {why}\n"));
        }
        out.push_str("\nnext steps:\n");
        for step in &self.guidance.next_steps {
            out.push_str(&format!("  - {step}\n"));
        }
        out.push_str(&format!(
            "  - if this is expected: `monitor ack {} --reason \"...\"` and this program stops raising findings on it\n",
            self.id
        ));
        // Every field, not only the names: a finding read back from a file
        // may carry anything in any of them.
        out.split('\n')
            .map(printable)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use ndarray::Array1;

    use super::summarize;
    use crate::model::{
        baseline::{Nearest, Scope, Scored},
        window::Window,
    };

    #[test]
    fn a_finding_scored_by_its_call_order_alone_still_says_why() {
        let w = Window::from_sequence("/usr/bin/cat", vec![0, 1, 0, 1]);
        let scored = Scored {
            score: 0.9998,
            raw: 8.5,
            distance_p: 1.0,
            sequence_p: Some(2e-4),
            scope: Scope::Program,
            nearest: Nearest {
                cluster: 1,
                distance: 0.0,
                spread: 0.05,
                exemplar_distance: 0.0,
                exemplar_spread: 0.05,
            },
            novelty: Vec::new(),
            x: Array1::zeros(0),
            acknowledged: false,
        };
        let summary = summarize(&w, &scored, &[]);
        assert!(
            summary.ends_with(
                "made its usual system calls in an order its baseline rarely shows (about 1 normal window in 5000)"
            ),
            "{summary}"
        );
        let neither = Scored {
            sequence_p: None,
            ..scored
        };
        assert!(!summarize(&w, &neither, &[]).ends_with(": "));
    }
}
