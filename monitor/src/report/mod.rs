//! `monitor report`: one self-contained HTML file about an agent (no
//! scripts, no network at view time): the learning curve, the programs and
//! their clusters in a 2-D projection, the score distribution with the
//! threshold, a findings timeline, drops, and sink health.
//!
//! Everything comes from the state directory: the model file, the status
//! file, `findings.jsonl`, `acks.jsonl` and `history.jsonl`.

pub mod svg;

use std::{collections::BTreeMap, path::Path};

use ndarray::{Array1, Array2, Axis};

use self::svg::{PALETTE, Plot, esc};
use crate::{
    api::Status,
    fileio::{jsonl::read_lines, rotate::read_log},
    model::{baseline::Baseline, guidance::Severity, persist},
    state::findings::{AckRecord, LoggedFinding, in_force},
    state::history,
    state::paths::StatePaths,
};

/// What the report is made of.
pub struct Inputs {
    /// The model, if one is saved.
    pub model: Option<persist::ModelFile>,
    /// Why there is no model, if there is none.
    pub model_problem: Option<String>,
    /// The last status.
    pub status: Option<Status>,
    /// Findings.
    pub findings: Vec<LoggedFinding>,
    /// Acknowledgements in force.
    pub acks: BTreeMap<String, AckRecord>,
    /// History points.
    pub history: Vec<history::Point>,
}

/// Why the report's inputs could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The state directory does not exist.
    #[error("no agent state at {}", .0.display())]
    NoState(std::path::PathBuf),
    /// A log of the state directory could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl Inputs {
    /// Reads everything from a state directory.
    pub fn read(state_dir: &Path) -> Result<Self, ReportError> {
        let paths = StatePaths::new(state_dir);
        if !state_dir.is_dir() {
            return Err(ReportError::NoState(state_dir.to_owned()));
        }
        let read = |path: std::path::PathBuf| move |source| ReportError::Read { path, source };
        let (model, model_problem) = match persist::load(&paths.model()) {
            Ok(m) => (Some(m), None),
            Err(e) => (None, Some(crate::error::error_chain(&e))),
        };
        let status = std::fs::read_to_string(paths.status())
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let (findings, _) =
            read_log::<LoggedFinding>(&paths.findings()).map_err(read(paths.findings()))?;
        let (acks, _) = read_lines::<AckRecord>(&paths.acks()).map_err(read(paths.acks()))?;
        Ok(Self {
            model,
            model_problem,
            status,
            findings,
            acks: in_force(&acks),
            history: history::read(&paths.history()),
        })
    }
}

/// Tick labels for a time axis starting at `t0` and spanning `span` seconds.
fn time_since(t0: f64, span: f64) -> impl Fn(f64) -> String {
    move |x| {
        let s = x - t0;
        if span < 300.0 {
            format!("{s:.0}s")
        } else if span < 3.0 * 3600.0 {
            format!("{:.0}m", s / 60.0)
        } else {
            format!("{:.1}h", s / 3600.0)
        }
    }
}

fn learning_curve(h: &[history::Point]) -> String {
    if h.len() < 2 {
        return "<p class=\"empty\">Not enough history yet (the agent writes a point every 10 s).</p>".into();
    }
    let t0 = h[0].time.as_secs_f64();
    let t1 = h[h.len() - 1].time.as_secs_f64();
    let ymax = h
        .iter()
        .map(|p| p.windows.max(p.baseline_windows) as f64)
        .fold(1.0, f64::max);
    let mut plot = Plot::new((t0, t1), (0.0, ymax * 1.05));
    plot.line(
        &h.iter()
            .map(|p| (p.time.as_secs_f64(), p.windows as f64))
            .collect::<Vec<_>>(),
        PALETTE[0],
        "windows seen",
    );
    plot.line(
        &h.iter()
            .map(|p| (p.time.as_secs_f64(), p.baseline_windows as f64))
            .collect::<Vec<_>>(),
        PALETTE[1],
        "baseline windows",
    );
    if let Some(p) = h.iter().find(|p| p.phase == crate::model::Phase::Detecting) {
        plot.vline(p.time.as_secs_f64(), PALETTE[3], "detecting");
    }
    plot.finish(
        "time since the first point",
        "windows",
        time_since(t0, t1 - t0),
        |y| format!("{y:.0}"),
    ) + "<p class=\"legend\"><span style=\"color:#0072B2\">&#9632;</span> windows seen &nbsp; <span style=\"color:#E69F00\">&#9632;</span> windows in the baseline</p>"
}

/// The two leading principal axes of the rows of `x` (power iteration).
fn principal_axes(x: &Array2<f64>) -> (Array1<f64>, Array1<f64>) {
    let d = x.ncols();
    let axis = |x: &Array2<f64>, skip: Option<&Array1<f64>>| {
        let mut v = Array1::from_iter((0..d).map(|i| 1.0 + (i % 7) as f64 * 0.1));
        for _ in 0..200 {
            let mut next = x.t().dot(&x.dot(&v));
            if let Some(s) = skip {
                let proj = next.dot(s);
                next = next - s * proj;
            }
            let norm = next.dot(&next).sqrt();
            if norm < 1e-12 {
                break;
            }
            v = next / norm;
        }
        v
    };
    let first = axis(x, None);
    let second = axis(x, Some(&first));
    (first, second)
}

fn clusters(b: &Baseline) -> String {
    let mut rows: Vec<(String, usize, u64, &Vec<f32>)> = Vec::new();
    let mut programs: Vec<(&String, &crate::model::baseline::ProgramModel)> =
        b.programs.iter().collect();
    programs.sort_by_key(|(_, m)| std::cmp::Reverse(m.windows));
    for (i, (name, m)) in programs.iter().enumerate() {
        for (c, centroid) in m.clusters.centroids.iter().enumerate() {
            rows.push((
                (*name).clone(),
                i,
                m.clusters.members.get(c).copied().unwrap_or(0),
                centroid,
            ));
        }
    }
    for (c, centroid) in b.global.clusters.centroids.iter().enumerate() {
        rows.push((
            "(host-wide model)".into(),
            usize::MAX,
            b.global.clusters.members.get(c).copied().unwrap_or(0),
            centroid,
        ));
    }
    if rows.len() < 2 {
        return "<p class=\"empty\">Too few clusters to project.</p>".into();
    }
    let d = rows[0].3.len();
    let mut x = Array2::<f64>::zeros((rows.len(), d));
    for (i, r) in rows.iter().enumerate() {
        for (j, v) in r.3.iter().enumerate().take(d) {
            x[(i, j)] = f64::from(*v);
        }
    }
    let mean = x.mean_axis(Axis(0)).unwrap_or_else(|| Array1::zeros(d));
    x -= &mean;
    let (a, bx) = principal_axes(&x);
    let pts: Vec<(f64, f64)> = (0..rows.len())
        .map(|i| (x.row(i).dot(&a), x.row(i).dot(&bx)))
        .collect();
    let (xmin, xmax) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.0), hi.max(p.0))
        });
    let (ymin, ymax) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
    let pad = |lo: f64, hi: f64| ((hi - lo) * 0.08).max(0.05);
    let mut plot = Plot::new(
        (xmin - pad(xmin, xmax), xmax + pad(xmin, xmax)),
        (ymin - pad(ymin, ymax), ymax + pad(ymin, ymax)),
    );
    let max_members = rows.iter().map(|r| r.2).max().unwrap_or(1).max(1) as f64;
    for (r, p) in rows.iter().zip(&pts) {
        let colour = if r.1 == usize::MAX {
            "#999999"
        } else {
            PALETTE[r.1 % (PALETTE.len() - 1)]
        };
        let radius = 4.0 + 10.0 * (r.2 as f64 / max_members).sqrt();
        plot.dot(
            p.0,
            p.1,
            radius,
            colour,
            &format!("{} — {} windows", r.0, r.2),
        );
    }
    let mut legend = String::from("<p class=\"legend\">");
    for (i, (name, m)) in programs.iter().enumerate().take(14) {
        legend.push_str(&format!(
            "<span style=\"color:{}\">&#9679;</span> {} ({} clusters) &nbsp; ",
            PALETTE[i % (PALETTE.len() - 1)],
            esc(name.rsplit('/').next().unwrap_or(name)),
            m.clusters.centroids.len()
        ));
    }
    legend.push_str("<span style=\"color:#999\">&#9679;</span> host-wide model</p>");
    plot.finish(
        "first principal axis",
        "second principal axis",
        |v| format!("{v:.2}"),
        |v| format!("{v:.2}"),
    ) + &legend
}

/// −log10 of a tail probability: 3 means "one window in a thousand".
fn surprise(p: f64) -> f64 {
    -(p.clamp(1e-9, 1.0)).log10()
}

fn score_distribution(b: &Baseline, threshold: f64, findings: &[LoggedFinding]) -> String {
    let tail = &b.calibration.distance;
    if tail.sorted.is_empty() {
        return "<p class=\"empty\">No calibration sample in the model.</p>".into();
    }
    let values: Vec<f64> = tail
        .sorted
        .iter()
        .map(|&x| surprise(tail.p_value(x)))
        .collect();
    let limit = surprise(1.0 - threshold);
    let top = values
        .iter()
        .copied()
        .chain(findings.iter().map(|f| surprise(1.0 - f.finding.score)))
        .fold(limit, f64::max)
        + 0.5;
    const BINS: usize = 40;
    let width = top / BINS as f64;
    let mut counts = [0usize; BINS];
    for v in &values {
        counts[((v / width) as usize).min(BINS - 1)] += 1;
    }
    let ymax = counts.iter().copied().max().unwrap_or(1) as f64;
    let mut plot = Plot::new((0.0, top), (0.0, ymax * 1.1));
    for (i, &c) in counts.iter().enumerate() {
        let lo = i as f64 * width;
        plot.bar(
            lo,
            lo + width,
            c as f64,
            PALETTE[0],
            &format!("{c} baseline windows"),
        );
    }
    plot.vline(
        limit,
        PALETTE[3],
        &format!(
            "threshold (false-alarm rate {:.2}%)",
            (1.0 - threshold) * 100.0
        ),
    );
    for f in findings {
        plot.dot(
            surprise(1.0 - f.finding.score),
            ymax * 0.05,
            5.0,
            PALETTE[3],
            &f.finding.summary,
        );
    }
    plot.finish(
        "surprise: -log10(how often a normal window scores this high)",
        "baseline windows",
        |x| format!("{x:.1}"),
        |y| format!("{y:.0}"),
    ) + "<p class=\"legend\">Bars: cross-validated baseline windows (scored by models that did not learn them). Red dots: findings.</p>"
}

fn timeline(findings: &[LoggedFinding], acks: &BTreeMap<String, AckRecord>) -> String {
    if findings.is_empty() {
        return "<p class=\"empty\">No findings.</p>".into();
    }
    let t0 = findings
        .iter()
        .map(|f| f.finding.time.as_secs_f64())
        .fold(f64::INFINITY, f64::min);
    let t1 = findings
        .iter()
        .map(|f| f.finding.time.as_secs_f64())
        .fold(0.0, f64::max)
        .max(t0 + 60.0);
    let mut plot = Plot::new((t0, t1), (0.5, 4.5));
    for f in findings {
        let lane = match f.finding.guidance.severity {
            Severity::Low => 1.0,
            Severity::Medium => 2.0,
            Severity::High => 3.0,
            Severity::Critical => 4.0,
        };
        let colour = if acks.contains_key(&f.finding.id) {
            "#999999"
        } else {
            PALETTE[lane as usize % PALETTE.len()]
        };
        plot.dot(
            f.finding.time.as_secs_f64(),
            lane,
            6.0,
            colour,
            &format!("{} {}", f.finding.id, f.finding.summary),
        );
    }
    plot.finish(
        "time since the first finding",
        "severity",
        time_since(t0, t1 - t0),
        |y| match y.round() as i64 {
            1 => "low".into(),
            2 => "medium".into(),
            3 => "high".into(),
            4 => "critical".into(),
            _ => String::new(),
        },
    ) + "<p class=\"legend\">Grey: acknowledged as benign.</p>"
}

fn drops(h: &[history::Point]) -> String {
    if h.len() < 2 {
        return "<p class=\"empty\">Not enough history yet.</p>".into();
    }
    let t0 = h[0].time.as_secs_f64();
    let t1 = h[h.len() - 1].time.as_secs_f64();
    let ymax = h.iter().map(|p| p.lost as f64).fold(1.0, f64::max);
    let mut plot = Plot::new((t0, t1), (0.0, ymax * 1.1));
    plot.line(
        &h.iter()
            .map(|p| (p.time.as_secs_f64(), p.lost as f64))
            .collect::<Vec<_>>(),
        PALETTE[3],
        "lost events (total)",
    );
    plot.finish(
        "time since the first point",
        "lost events (total)",
        time_since(t0, t1 - t0),
        |y| format!("{y:.0}"),
    )
}

fn sinks(status: Option<&Status>) -> String {
    let Some(s) = status else {
        return "<p class=\"empty\">No status file.</p>".into();
    };
    let mut out = String::from(
        "<table><tr><th>sink</th><th>delivered</th><th>rejected</th><th>failures</th><th>state</th></tr>",
    );
    for h in &s.sinks {
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
            esc(&h.name),
            h.delivered,
            h.rejected,
            h.failures,
            if h.failing() { "bad" } else { "good" },
            if h.failing() {
                esc(h.last_error.as_deref().unwrap_or("failing"))
            } else {
                "delivering".into()
            }
        ));
    }
    out.push_str("</table>");
    let lost: Vec<String> = s
        .lost
        .iter()
        .map(|(k, v)| format!("{}: {v}", esc(k)))
        .collect();
    out.push_str(&format!(
        "<p>Lost events since start: {}. Spool: {} bytes on disk, {} records held in memory, {} findings and {} activity records dropped, {} damaged records skipped{}.</p>",
        if lost.is_empty() { "none".into() } else { lost.join(", ") },
        s.spool.bytes,
        s.spool.in_memory,
        s.spool.dropped_findings,
        s.spool.dropped_activity,
        s.spool.damaged,
        s.spool.degraded.as_deref().map(|d| format!("; degraded: {}", esc(d))).unwrap_or_default()
    ));
    out
}

/// Renders the report.
pub fn render(inputs: &Inputs) -> String {
    let host = inputs
        .status
        .as_ref()
        .map(|s| s.host.clone())
        .or_else(|| inputs.model.as_ref().map(|m| m.host.clone()))
        .unwrap_or_default();
    let mut body = String::new();
    body.push_str(&format!(
        "<h1>monitor report: {}</h1>\n<p class=\"meta\">generated {}</p>\n",
        esc(&host),
        crate::event::Timestamp::now()
    ));
    if let Some(s) = &inputs.status {
        body.push_str(&format!(
            "<p>Agent {} (pid {}), {:?}; {} events, {} findings since {}.</p>\n",
            esc(&s.version),
            s.pid,
            s.phase,
            s.events,
            s.findings,
            s.started
        ));
    }
    body.push_str("<h2>Learning curve</h2>\n");
    body.push_str(&learning_curve(&inputs.history));
    body.push_str("<h2>Programs and their clusters</h2>\n");
    match &inputs.model {
        Some(m) => {
            let b = &m.baseline;
            body.push_str(&format!(
                "<p>Baseline of {} windows learned {}; {} programs with their own model, the rest share a host-wide one. Each dot is a cluster centroid, sized by its windows, projected on the two leading principal axes of the {} features.</p>\n",
                b.windows,
                m.created,
                b.programs.len(),
                b.space.len()
            ));
            body.push_str(&clusters(b));
            let threshold = inputs
                .findings
                .last()
                .map_or(0.9995, |f| f.finding.threshold);
            body.push_str("<h2>Score distribution</h2>\n");
            body.push_str(&score_distribution(b, threshold, &inputs.findings));
        }
        None => body.push_str(&format!(
            "<p class=\"empty\">No model yet ({}).</p>",
            esc(inputs.model_problem.as_deref().unwrap_or("still learning"))
        )),
    }
    body.push_str("<h2>Findings timeline</h2>\n");
    body.push_str(&timeline(&inputs.findings, &inputs.acks));
    if !inputs.findings.is_empty() {
        body.push_str("<table><tr><th>time</th><th>id</th><th>severity</th><th>summary</th></tr>");
        for f in inputs.findings.iter().rev().take(50) {
            body.push_str(&format!(
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}{}</td></tr>",
                f.finding.time,
                esc(&f.finding.id),
                f.finding.guidance.severity.name(),
                esc(&f.finding.summary),
                if inputs.acks.contains_key(&f.finding.id) {
                    " <em>(acknowledged)</em>"
                } else {
                    ""
                }
            ));
        }
        body.push_str("</table>\n");
    }
    body.push_str("<h2>Drops</h2>\n");
    body.push_str(&drops(&inputs.history));
    body.push_str("<h2>Sink health</h2>\n");
    body.push_str(&sinks(inputs.status.as_ref()));
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>monitor report: {}</title>\n<style>\n\
         body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 800px; color: #222; }}\n\
         h1 {{ font-size: 1.5em; }} h2 {{ font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }}\n\
         .meta, .legend {{ color: #555; font-size: 0.9em; }} .empty {{ color: #888; font-style: italic; }}\n\
         table {{ border-collapse: collapse; font-size: 0.85em; width: 100%; }} td, th {{ border-bottom: 1px solid #eee; padding: 3px 6px; text-align: left; }}\n\
         .bad {{ color: #D55E00; }} .good {{ color: #009E73; }} svg.chart {{ max-width: 100%; height: auto; }}\n\
         </style></head><body>\n{body}</body></html>\n",
        esc(&host)
    )
}
