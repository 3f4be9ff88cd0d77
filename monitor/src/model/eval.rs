//! Evaluation on ADFA-LD (UNSW Canberra, Creech & Hu 2013), the standard
//! host-based intrusion-detection syscall dataset, with a fixed protocol:
//!
//! - the baseline is learned from the 833 `Training_Data_Master` traces only;
//! - the validation traces, sorted by relative path, are split by index:
//!   even indices are the *calibration* half, odd ones the *test* half;
//! - the 1% and 5% thresholds are chosen on the calibration half only: the
//!   threshold is the smallest score that at most that fraction of
//!   calibration traces exceed (a finding is `score > threshold`);
//! - everything is reported on the test half plus all 746 attack traces.
//!
//! Traces hold i386 syscall numbers; they are mapped to canonical names (see
//! `crate::syscalls`) and become one window each, with their full sequence.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use super::{baseline::Baseline, window::Window};
use crate::syscalls::Abi;

/// The program every trace is given (the dataset has no executables).
pub const PROGRAM: &str = "adfa-ld";

/// Errors reading the dataset.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A directory is missing.
    #[error("{path} is not an ADFA-LD directory: {what} is missing")]
    Layout {
        /// The directory given.
        path: PathBuf,
        /// What is missing.
        what: &'static str,
    },
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A token is not a syscall number.
    #[error("{path}: token {token:?} (number {index} in the file) is not a syscall number")]
    Token {
        /// The file.
        path: PathBuf,
        /// The token.
        token: String,
        /// Its position (1-based).
        index: usize,
    },
    /// The baseline could not be learned.
    #[error("cannot learn the baseline from the training traces")]
    Fit(#[source] super::FitError),
}

/// One trace.
#[derive(Debug, Clone)]
pub struct Trace {
    /// Path relative to the dataset root.
    pub path: String,
    /// Attack class (`Adduser`, `Hydra_FTP`...), `None` for normal traces.
    pub class: Option<String>,
    /// Canonical syscall ids.
    pub sequence: Vec<u16>,
}

/// The dataset, split per the protocol.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Training traces.
    pub train: Vec<Trace>,
    /// Calibration half of the validation traces.
    pub calibration: Vec<Trace>,
    /// Test half of the validation traces.
    pub test: Vec<Trace>,
    /// Attack traces.
    pub attacks: Vec<Trace>,
}

fn read_trace(root: &Path, path: &Path, class: Option<String>) -> Result<Trace, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut sequence = Vec::new();
    for (i, token) in text.split_ascii_whitespace().enumerate() {
        let nr: u32 = token.parse().map_err(|_| EvalError::Token {
            path: path.to_owned(),
            token: token.chars().take(40).collect(),
            index: i + 1,
        })?;
        sequence.push(Abi::I386.canonical_id(nr));
    }
    let rel = path
        .strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned();
    Ok(Trace {
        path: rel,
        class,
        sequence,
    })
}

/// Trace files in a directory, sorted by path.
fn files(dir: &Path) -> Result<Vec<PathBuf>, EvalError> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| EvalError::Read {
            path: dir.to_owned(),
            source,
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    Ok(out)
}

impl Dataset {
    /// Loads and splits the dataset at `root` (the `ADFA-LD` directory).
    pub fn load(root: &Path) -> Result<Self, EvalError> {
        let need = |name: &'static str| {
            let p = root.join(name);
            if p.is_dir() {
                Ok(p)
            } else {
                Err(EvalError::Layout {
                    path: root.to_owned(),
                    what: name,
                })
            }
        };
        let (train_dir, val_dir, attack_dir) = (
            need("Training_Data_Master")?,
            need("Validation_Data_Master")?,
            need("Attack_Data_Master")?,
        );
        let train = files(&train_dir)?
            .iter()
            .map(|p| read_trace(root, p, None))
            .collect::<Result<Vec<_>, _>>()?;
        let validation = files(&val_dir)?
            .iter()
            .map(|p| read_trace(root, p, None))
            .collect::<Result<Vec<_>, _>>()?;
        let (mut calibration, mut test) = (Vec::new(), Vec::new());
        for (i, t) in validation.into_iter().enumerate() {
            if i % 2 == 0 {
                calibration.push(t)
            } else {
                test.push(t)
            }
        }
        let mut attacks = Vec::new();
        let mut folders: Vec<PathBuf> = std::fs::read_dir(&attack_dir)
            .map_err(|source| EvalError::Read {
                path: attack_dir.clone(),
                source,
            })?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        folders.sort();
        for folder in folders {
            let name = folder
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let class = name
                .rsplit_once('_')
                .map_or(name.clone(), |(c, _)| c.to_owned());
            for p in files(&folder)? {
                attacks.push(read_trace(root, &p, Some(class.clone()))?);
            }
        }
        Ok(Self {
            train,
            calibration,
            test,
            attacks,
        })
    }

    /// Learns the baseline from the training traces.
    pub fn fit(&self) -> Result<Baseline, EvalError> {
        let windows: Vec<Window> = self.train.iter().map(window).collect();
        Baseline::fit(&windows).map_err(EvalError::Fit)
    }
}

/// The window of a trace.
pub fn window(t: &Trace) -> Window {
    let mut w = Window::from_sequence(PROGRAM, t.sequence.clone());
    w.pid = t.path.len() as u32;
    w
}

/// The evaluation score of a trace: the baseline's continuous anomaly
/// statistic (higher is more anomalous).
pub fn score(baseline: &Baseline, t: &Trace) -> f64 {
    baseline.score(&window(t)).raw
}

/// ROC AUC of scores of normal (label 0) and anomalous (label 1) items,
/// by the Mann-Whitney statistic (ties count one half).
pub fn roc_auc(normal: &[f64], anomalous: &[f64]) -> f64 {
    let mut all: Vec<(f64, bool)> = normal
        .iter()
        .map(|&s| (s, false))
        .chain(anomalous.iter().map(|&s| (s, true)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Average ranks over ties.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += all[i..=j].iter().filter(|(_, a)| *a).count() as f64 * avg;
        i = j + 1;
    }
    let (n0, n1) = (normal.len() as f64, anomalous.len() as f64);
    (rank_sum - n1 * (n1 + 1.0) / 2.0) / (n0 * n1)
}

/// The threshold at which at most `rate` of `scores` are strictly above it.
pub fn threshold_for(scores: &[f64], rate: f64) -> f64 {
    let mut s = scores.to_vec();
    s.sort_by(f64::total_cmp);
    let allowed = (rate * s.len() as f64).floor() as usize;
    let idx = s.len().saturating_sub(allowed + 1);
    // Scores equal to the threshold are not findings; step past ties so the
    // count above stays within the allowance.
    s.get(idx).copied().unwrap_or(f64::INFINITY)
}

/// Fraction of `scores` strictly above `t`.
pub fn rate_above(scores: &[f64], t: f64) -> f64 {
    if scores.is_empty() {
        return 0.0;
    }
    scores.iter().filter(|&&s| s > t).count() as f64 / scores.len() as f64
}

/// Best detection rate on the ROC with false-positive rate at most `fpr`.
pub fn tpr_at_fpr(normal: &[f64], anomalous: &[f64], fpr: f64) -> f64 {
    let t = threshold_for(normal, fpr);
    rate_above(anomalous, t)
}

/// Everything the report shows.
#[derive(Debug, Clone)]
pub struct Report {
    /// ROC AUC on test normal + attacks.
    pub auc: f64,
    /// Detection at 1%, 5%, 10% FPR on the test ROC.
    pub tpr_at: [(f64, f64); 3],
    /// Calibrated thresholds: (target rate, threshold, measured FPR on test, detection).
    pub calibrated: Vec<(f64, f64, f64, f64)>,
    /// Detection per attack class at the calibrated 5% threshold.
    pub per_class: BTreeMap<String, (usize, usize)>,
    /// Scores of test traces: (path, label, score).
    pub scores: Vec<(String, u8, f64)>,
    /// Counts: train, calibration, test, attacks.
    pub counts: [usize; 4],
    /// Seconds spent learning.
    pub fit_secs: f64,
    /// Seconds spent scoring calibration + test + attacks.
    pub score_secs: f64,
}

/// Runs the protocol.
pub fn evaluate(data: &Dataset) -> Result<Report, EvalError> {
    let started = std::time::Instant::now();
    let baseline = data.fit()?;
    let fit_secs = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    let cal: Vec<f64> = data
        .calibration
        .iter()
        .map(|t| score(&baseline, t))
        .collect();
    let test: Vec<f64> = data.test.iter().map(|t| score(&baseline, t)).collect();
    let attack: Vec<f64> = data.attacks.iter().map(|t| score(&baseline, t)).collect();
    let score_secs = started.elapsed().as_secs_f64();
    let auc = roc_auc(&test, &attack);
    let tpr_at = [0.01, 0.05, 0.10].map(|f| (f, tpr_at_fpr(&test, &attack, f)));
    let calibrated: Vec<(f64, f64, f64, f64)> = [0.01, 0.05]
        .iter()
        .map(|&rate| {
            let t = threshold_for(&cal, rate);
            (rate, t, rate_above(&test, t), rate_above(&attack, t))
        })
        .collect();
    let t5 = calibrated[1].1;
    let mut per_class: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (trace, &s) in data.attacks.iter().zip(&attack) {
        let e = per_class
            .entry(trace.class.clone().unwrap_or_default())
            .or_default();
        e.1 += 1;
        if s > t5 {
            e.0 += 1;
        }
    }
    let scores = data
        .test
        .iter()
        .zip(&test)
        .map(|(t, &s)| (t.path.clone(), 0u8, s))
        .chain(
            data.attacks
                .iter()
                .zip(&attack)
                .map(|(t, &s)| (t.path.clone(), 1u8, s)),
        )
        .collect();
    Ok(Report {
        auc,
        tpr_at,
        calibrated,
        per_class,
        scores,
        counts: [
            data.train.len(),
            data.calibration.len(),
            data.test.len(),
            data.attacks.len(),
        ],
        fit_secs,
        score_secs,
    })
}

impl Report {
    /// The metrics table.
    pub fn render(&self) -> String {
        let pct = |v: f64| format!("{:.1}%", v * 100.0);
        let mut out = format!(
            "ADFA-LD: trained on {} traces; thresholds from {} calibration traces; tested on {} normal + {} attack traces\n\n",
            self.counts[0], self.counts[1], self.counts[2], self.counts[3]
        );
        out.push_str(&format!("ROC AUC                     {:.4}\n", self.auc));
        for (f, tpr) in self.tpr_at {
            out.push_str(&format!(
                "detection at {:>4} FPR      {}\n",
                pct(f),
                pct(tpr)
            ));
        }
        out.push('\n');
        for (rate, t, fpr, tpr) in &self.calibrated {
            out.push_str(&format!(
                "calibrated for {:>4}: threshold {t:.6}, measured FPR {}, detection {}\n",
                pct(*rate),
                pct(*fpr),
                pct(*tpr)
            ));
        }
        out.push_str("\ndetection per attack class at the calibrated 5% threshold:\n");
        for (class, (hit, n)) in &self.per_class {
            out.push_str(&format!(
                "  {class:<20} {hit:>4}/{n:<4} {}\n",
                pct(*hit as f64 / *n as f64)
            ));
        }
        out.push_str(&format!(
            "\nlearning took {:.2} s; scoring {} traces took {:.2} s\n",
            self.fit_secs,
            self.counts[1] + self.counts[2] + self.counts[3],
            self.score_secs
        ));
        out
    }

    /// The per-trace CSV (`path,label,score`).
    pub fn csv(&self) -> String {
        let mut out = String::from("path,label,score\n");
        for (path, label, score) in &self.scores {
            let quoted = if path.contains([',', '"', '\n']) {
                format!("\"{}\"", path.replace('"', "\"\""))
            } else {
                path.clone()
            };
            out.push_str(&format!("{quoted},{label},{score}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_matches_hand_computation() {
        assert_eq!(roc_auc(&[1.0, 2.0], &[3.0, 4.0]), 1.0);
        assert_eq!(roc_auc(&[3.0, 4.0], &[1.0, 2.0]), 0.0);
        assert_eq!(roc_auc(&[1.0, 2.0], &[1.0, 2.0]), 0.5);
        assert!((roc_auc(&[1.0, 3.0], &[2.0, 4.0]) - 0.75).abs() < 1e-12);
    }

    #[test]
    fn calibrated_threshold_respects_the_rate() {
        let scores: Vec<f64> = (0..1000).map(f64::from).collect();
        let t = threshold_for(&scores, 0.01);
        assert!(rate_above(&scores, t) <= 0.01);
        assert!(rate_above(&scores, t) >= 0.009);
    }

    #[test]
    fn bad_traces_are_named() {
        let dir = std::env::temp_dir().join(format!("monitor-adfa-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("UTD-0001.txt");
        std::fs::write(&file, "6 6 63 x42 5").unwrap();
        let err = read_trace(&dir, &file, None).unwrap_err().to_string();
        assert!(
            err.contains("UTD-0001.txt") && err.contains("\"x42\"") && err.contains("number 4"),
            "{err}"
        );
        let err = Dataset::load(&dir).unwrap_err().to_string();
        assert!(err.contains("Training_Data_Master is missing"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
