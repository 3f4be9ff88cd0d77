//! The learned baseline: clusters of behaviour per program, nearest
//! neighbours, categorical novelty, an optional sequence model, and a
//! calibration that turns all of it into a score whose threshold is a
//! false-alarm rate.
//!
//! Model (see [`Baseline::fit`]): the feature space (vocabulary, idf) is
//! learned from the baseline windows; every program with at least
//! [`MIN_PROGRAM_WINDOWS`] windows gets its own k-means clusters (linfa),
//! each with its *spread* (the median distance of its members to the
//! centroid), plus up to [`EXEMPLARS`] exemplar windows for
//! nearest-neighbour distance; the rest share one global model. Novelty sets
//! (syscalls, programs executed, peers, ports, sensitive paths, actions,
//! parents) are the union over the windows.
//!
//! Evidence for one window (see [`Baseline::score`]):
//! - the *distance statistic*: the mean of (distance to the nearest centroid
//!   / that cluster's spread) and (distance to the nearest exemplar / the
//!   exemplars' typical spacing);
//! - the *sequence statistic*, when the window carries a syscall sequence;
//! - each *novelty fact* (a program this program never ran, a peer it never
//!   contacted...).
//!
//! Calibration, by 5-fold cross-validation over the baseline windows: each
//! fold is scored by a model fitted on the other four. That gives, for
//! windows the model did not learn from, the distribution of the distance
//! and sequence statistics (turned into upper-tail p-values, with a Pareto
//! tail beyond the largest value seen), and how often each kind of novelty
//! occurs: per program for the kinds that belong to a program, with the
//! host-wide rate as a prior (so a server that never spawned anything in
//! a thousand windows makes "spawned a shell" rare, while a shell that runs
//! new programs all day makes it common), and host-wide for the others,
//! with a fixed prior ([`NoveltyKind::prior_rate`]).
//!
//! The score answers: how often does a normal window show evidence at least
//! this strong? With `p*` the smallest p-value or novelty rate of the
//! window, that is at most `p*` for each continuous test (distance, and
//! sequence when present) plus the rate of every novelty kind at least as
//! rare as `p*` (a union bound over the evidence families). The score is one
//! minus that bound, so raising a finding at `score >= 1 - r` happens on at most a
//! fraction `r` of baseline-like windows: the threshold is a false-alarm rate.

use std::collections::{BTreeMap, BTreeSet};

use linfa::{DatasetBase, traits::Fit};
use linfa_clustering::KMeans;
use ndarray::{Array1, Array2, ArrayView1, Axis};
use serde::{Deserialize, Serialize};

use super::{
    features::FeatureSpace,
    sequence::SequenceModel,
    window::{Facts, Window},
};

/// Train windows a program needs for a model of its own.
pub const MIN_PROGRAM_WINDOWS: usize = 12;
/// Exemplar windows kept per model for nearest-neighbour distance.
pub const EXEMPLARS: usize = 24;
/// Largest k per program model.
pub const MAX_CLUSTERS: usize = 6;
/// Largest k of the global model.
pub const MAX_GLOBAL_CLUSTERS: usize = 12;
/// Smallest spread, so a cluster of identical windows does not make every
/// tiny difference infinite.
const MIN_SPREAD: f64 = 0.05;

/// Errors fitting a baseline.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    /// Too little data.
    #[error("cannot learn a baseline from {windows} windows (at least {needed} are needed)")]
    TooFew {
        /// Windows given.
        windows: usize,
        /// Windows needed.
        needed: usize,
    },
    /// linfa failed.
    #[error("k-means clustering failed for program {program}")]
    Cluster {
        /// The program.
        program: String,
        /// linfa's error.
        #[source]
        source: linfa_clustering::KMeansError,
    },
}

/// Smallest baseline accepted.
pub const MIN_WINDOWS: usize = 20;
/// Strength, in windows, of the host-wide novelty priors.
pub const PRIOR_WINDOWS: f64 = 1000.0;
/// Strength, in windows, of the host-wide rate as the prior of a program's.
pub const PROGRAM_PRIOR_WINDOWS: f64 = 10.0;

/// Clusters and exemplars of one model, stored as plain vectors (f32 is
/// precise enough and halves the model file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Clusters {
    /// k centroids.
    pub centroids: Vec<Vec<f32>>,
    /// Median member distance per centroid.
    pub spreads: Vec<f32>,
    /// Members per centroid (grows with drift updates).
    pub members: Vec<u64>,
    /// Exemplar vectors for nearest-neighbour distance.
    pub exemplars: Vec<Vec<f32>>,
    /// Median nearest-neighbour distance among exemplars.
    pub exemplar_spread: f32,
}

/// Where a window landed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Nearest {
    /// Cluster index.
    pub cluster: usize,
    /// Distance to its centroid.
    pub distance: f64,
    /// That cluster's spread.
    pub spread: f64,
    /// Distance to the nearest exemplar.
    pub exemplar_distance: f64,
    /// The exemplars' typical spacing.
    pub exemplar_spread: f64,
}

impl Nearest {
    /// The distance statistic: both distances in units of their spread.
    pub fn statistic(&self) -> f64 {
        0.5 * (self.distance / self.spread + self.exemplar_distance / self.exemplar_spread)
    }
}

/// Euclidean distance between a window vector and a stored (f32) point.
///
/// This is the scoring hot loop (every centroid and exemplar of a program,
/// for every window). Eight independent partial sums let the compiler
/// vectorize it and keep the adds out of one long dependency chain, which
/// took live scoring in `cargo bench --bench model` from 49k to 92k
/// windows/s over a single running sum.
fn dist(a: ArrayView1<'_, f64>, b: &[f32]) -> f64 {
    const LANES: usize = 8;
    let n = a.len().min(b.len());
    let a = match a.as_slice() {
        Some(s) => &s[..n],
        None => return dist_strided(a, b),
    };
    let b = &b[..n];
    let mut acc = [0.0f64; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (a_tail, b_tail) = (a_chunks.remainder(), b_chunks.remainder());
    for (ca, cb) in a_chunks.zip(b_chunks) {
        for l in 0..LANES {
            let d = ca[l] - f64::from(cb[l]);
            acc[l] += d * d;
        }
    }
    let mut sum: f64 = acc.iter().sum();
    for (x, y) in a_tail.iter().zip(b_tail) {
        let d = x - f64::from(*y);
        sum += d * d;
    }
    sum.sqrt()
}

/// [`dist`] for a vector that is not contiguous in memory.
fn dist_strided(a: ArrayView1<'_, f64>, b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - f64::from(*y)).powi(2))
        .sum::<f64>()
        .sqrt()
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

impl Clusters {
    /// k-means on `rows` (each a feature vector), k chosen from the count.
    fn fit(rows: &Array2<f64>, max_k: usize, program: &str) -> Result<Self, FitError> {
        let n = rows.nrows();
        let k = (n / 8).clamp(1, max_k).min(n);
        let model = KMeans::params(k)
            .max_n_iterations(100)
            .tolerance(1e-5)
            .n_runs(3)
            .fit(&DatasetBase::from(rows.clone()))
            .map_err(|source| FitError::Cluster {
                program: program.to_owned(),
                source,
            })?;
        let centroids: Vec<Vec<f32>> = model
            .centroids()
            .axis_iter(Axis(0))
            .map(|c| c.iter().map(|&v| v as f32).collect())
            .collect();
        let mut member_dists: Vec<Vec<f64>> = vec![Vec::new(); k];
        for row in rows.axis_iter(Axis(0)) {
            let (c, d) = nearest_centroid(&centroids, row);
            member_dists[c].push(d);
        }
        let members = member_dists.iter().map(|d| d.len() as u64).collect();
        let spreads = member_dists
            .into_iter()
            .map(|d| median(d).max(MIN_SPREAD) as f32)
            .collect();
        // Exemplars: an even stride through the rows (deterministic).
        let step = n.div_ceil(EXEMPLARS).max(1);
        let exemplars: Vec<Vec<f32>> = rows
            .axis_iter(Axis(0))
            .step_by(step)
            .map(|r| r.iter().map(|&v| v as f32).collect())
            .collect();
        let exemplar_spread = if exemplars.len() < 2 {
            MIN_SPREAD
        } else {
            let nn: Vec<f64> = exemplars
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let ev = Array1::from_iter(e.iter().map(|&v| f64::from(v)));
                    exemplars
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .map(|(_, o)| dist(ev.view(), o))
                        .fold(f64::INFINITY, f64::min)
                })
                .collect();
            median(nn).max(MIN_SPREAD)
        };
        Ok(Self {
            centroids,
            spreads,
            members,
            exemplars,
            exemplar_spread: exemplar_spread as f32,
        })
    }

    /// The nearest cluster and exemplar of `x`.
    pub fn nearest(&self, x: ArrayView1<'_, f64>) -> Nearest {
        let (cluster, distance) = nearest_centroid(&self.centroids, x);
        let exemplar_distance = self
            .exemplars
            .iter()
            .map(|e| dist(x, e))
            .fold(f64::INFINITY, f64::min);
        Nearest {
            cluster,
            distance,
            spread: f64::from(self.spreads[cluster]),
            exemplar_distance: if exemplar_distance.is_finite() {
                exemplar_distance
            } else {
                distance
            },
            exemplar_spread: f64::from(self.exemplar_spread),
        }
    }

    /// Moves the nearest centroid toward `x` (online k-means), for drift.
    pub fn absorb(&mut self, x: ArrayView1<'_, f64>) {
        let (c, _) = nearest_centroid(&self.centroids, x);
        self.members[c] += 1;
        // The rate never falls below 1/1000, so the baseline keeps following.
        let rate = (1.0 / self.members[c] as f64).max(1e-3);
        for (v, &xi) in self.centroids[c].iter_mut().zip(x.iter()) {
            *v += (rate * (xi - f64::from(*v))) as f32;
        }
    }
}

fn nearest_centroid(centroids: &[Vec<f32>], x: ArrayView1<'_, f64>) -> (usize, f64) {
    centroids
        .iter()
        .enumerate()
        .map(|(i, c)| (i, dist(x, c)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, 0.0))
}

/// Checks of a decoded model's meaning: a model whose checksum is right
/// but whose contents do not fit together (a crafted or a buggy file) must
/// be refused at load, naming the field, not panic while scoring.
mod validate {
    /// All finite.
    pub fn finite(values: impl IntoIterator<Item = f64>) -> bool {
        values.into_iter().all(f64::is_finite)
    }

    /// Strictly ascending.
    pub fn ascending<T: PartialOrd>(values: &[T]) -> bool {
        values.windows(2).all(|w| w[0] < w[1])
    }

    /// Each row has `dims` finite values.
    pub fn rows(rows: &[Vec<f32>], dims: usize, at: &str) -> Result<(), String> {
        for (i, row) in rows.iter().enumerate() {
            if row.len() != dims {
                return Err(format!(
                    "{at}[{i}] has {} dimensions; the feature space has {dims}",
                    row.len()
                ));
            }
            if !finite(row.iter().map(|&v| f64::from(v))) {
                return Err(format!(
                    "{at}[{i}] holds a value that is not a finite number"
                ));
            }
        }
        Ok(())
    }

    /// A spread: finite, and at least the least the fit makes.
    pub fn spread(v: f32, at: &str) -> Result<(), String> {
        if v.is_finite() && f64::from(v) >= super::MIN_SPREAD * 0.999 {
            Ok(())
        } else {
            Err(format!(
                "{at} = {v}: must be a finite number of at least {}",
                super::MIN_SPREAD
            ))
        }
    }
}

impl Clusters {
    fn validate(&self, dims: usize, at: &str) -> Result<(), String> {
        let k = self.centroids.len();
        if k == 0 {
            return Err(format!("{at}.centroids is empty"));
        }
        for (name, len) in [
            ("spreads", self.spreads.len()),
            ("members", self.members.len()),
        ] {
            if len != k {
                return Err(format!("{at}.{name} has {len} entries for {k} centroids"));
            }
        }
        validate::rows(&self.centroids, dims, &format!("{at}.centroids"))?;
        validate::rows(&self.exemplars, dims, &format!("{at}.exemplars"))?;
        for (i, &v) in self.spreads.iter().enumerate() {
            validate::spread(v, &format!("{at}.spreads[{i}]"))?;
        }
        validate::spread(self.exemplar_spread, &format!("{at}.exemplar_spread"))
    }
}

impl Tail {
    fn validate(&self, at: &str) -> Result<(), String> {
        if self.sorted.is_empty() {
            // Nothing measured (no sequences): never consulted past its
            // empty sample.
            return Ok(());
        }
        if !validate::finite(self.sorted.iter().copied())
            || !self.sorted.windows(2).all(|w| w[0] <= w[1])
        {
            return Err(format!(
                "{at}.sorted must be finite numbers in ascending order"
            ));
        }
        if !self.tail_start.is_finite() || !(1.0..=30.0).contains(&self.tail_index) {
            return Err(format!(
                "{at}: tail_start {} and tail_index {} must be finite, the index between 1 and 30",
                self.tail_start, self.tail_index
            ));
        }
        if self.tail_count > self.sorted.len() {
            return Err(format!(
                "{at}.tail_count {} is more than its {} values",
                self.tail_count,
                self.sorted.len()
            ));
        }
        Ok(())
    }
}

/// Everything known about one program (or the global model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgramModel {
    /// Baseline windows it was learned from (plus drift updates).
    pub windows: u64,
    /// Its clusters.
    pub clusters: Clusters,
    /// Syscalls it made.
    pub syscalls: BTreeSet<u16>,
    /// Categorical facts seen.
    pub facts: Facts,
    /// Parent executables seen.
    pub parents: BTreeSet<String>,
    /// Windows of this program scored by cross-validation.
    #[serde(default)]
    pub cv_windows: u64,
    /// How many of them showed each kind of novelty.
    #[serde(default)]
    pub novelty_counts: BTreeMap<NoveltyKind, u64>,
}

impl ProgramModel {
    fn new(clusters: Clusters) -> Self {
        Self {
            windows: 0,
            clusters,
            syscalls: BTreeSet::new(),
            facts: Facts::default(),
            parents: BTreeSet::new(),
            cv_windows: 0,
            novelty_counts: BTreeMap::new(),
        }
    }

    /// Adds a window's categorical facts.
    pub fn learn_facts(&mut self, w: &Window) {
        self.windows += 1;
        self.syscalls.extend(w.syscalls.keys().copied());
        self.facts.executed.extend(w.facts.executed.iter().cloned());
        self.facts.peers.extend(w.facts.peers.iter().cloned());
        self.facts
            .listening
            .extend(w.facts.listening.iter().cloned());
        self.facts
            .sensitive_paths
            .extend(w.facts.sensitive_paths.iter().cloned());
        self.facts.actions.extend(w.facts.actions.iter().cloned());
        self.facts
            .exec_pairs
            .extend(w.facts.exec_pairs.iter().cloned());
        self.facts.images.extend(w.facts.images.iter().cloned());
        if let Some(p) = &w.parent_program {
            self.parents.insert(p.clone());
        }
    }

    /// [`ProgramModel::learn_facts`] with each set capped at `cap`; returns
    /// the facts refused.
    pub fn learn_drift_facts(&mut self, w: &Window, cap: usize) -> u64 {
        self.windows += 1;
        self.syscalls.extend(w.syscalls.keys().copied());
        let (mine, new) = (&mut self.facts, &w.facts);
        extend_capped(&mut mine.executed, &new.executed, cap)
            + extend_capped(&mut mine.peers, &new.peers, cap)
            + extend_capped(&mut mine.listening, &new.listening, cap)
            + extend_capped(&mut mine.sensitive_paths, &new.sensitive_paths, cap)
            + extend_capped(&mut mine.actions, &new.actions, cap)
            + extend_capped(&mut mine.exec_pairs, &new.exec_pairs, cap)
            + extend_capped(&mut mine.images, &new.images, cap)
            + extend_capped(&mut self.parents, &w.parent_program, cap)
    }
}

/// Facts a program's model learns by drift, per set (executed, peers, ...).
pub const DRIFT_FACTS_PER_SET: usize = 1024;
/// The same for the host-wide model.
pub const DRIFT_FACTS_PER_SET_GLOBAL: usize = 16_384;

/// Inserts `items` into `set` while it holds fewer than `cap`; returns how
/// many new ones did not fit.
fn extend_capped<'a>(
    set: &mut BTreeSet<String>,
    items: impl IntoIterator<Item = &'a String>,
    cap: usize,
) -> u64 {
    let mut refused = 0;
    for item in items {
        if set.contains(item) {
            continue;
        }
        if set.len() < cap {
            set.insert(item.clone());
        } else {
            refused += 1;
        }
    }
    refused
}

/// A kind of categorical novelty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoveltyKind {
    /// An executable the baseline never saw run.
    NewExecutable,
    /// This program started a program it never started.
    NewChildProgram,
    /// A program was started by a parent that never started it before
    /// (`parent -> program`, across the host).
    NewParentChild,
    /// A syscall this program never made.
    NewSyscall,
    /// A network peer this program never contacted.
    NewPeer,
    /// A port this program never listened on.
    NewListeningPort,
    /// A sensitive path this program never touched.
    NewSensitivePath,
    /// An action (ptrace, memfd, setuid, ...) this program never took.
    NewAction,
    /// A known program ran from a file the baseline never saw it run from
    /// (other contents, another inode: a bind mount over its directory, a
    /// replaced binary).
    ReplacedImage,
    /// A new program whose file has the contents of a known program: a
    /// copy under a new name or in a new place.
    CopiedImage,
}

impl NoveltyKind {
    /// Prior rate per window: how often a normal window of an established
    /// host shows this kind of novelty, before the host's own evidence.
    /// Combined with the cross-validated count as a Beta prior of strength
    /// [`PRIOR_WINDOWS`] (see [`Calibration::novelty_rates`]): a host where
    /// such novelty is common raises the rate and quiets it.
    pub fn prior_rate(self) -> f64 {
        match self {
            NoveltyKind::NewExecutable | NoveltyKind::NewSyscall | NoveltyKind::NewPeer => 1e-3,
            NoveltyKind::NewChildProgram | NoveltyKind::NewParentChild => 3e-4,
            NoveltyKind::NewListeningPort
            | NoveltyKind::NewSensitivePath
            | NoveltyKind::NewAction => 1e-4,
            // Rare by nature, and kept small on purpose: every kind at
            // least as rare as a window's strongest evidence adds its rate
            // to the union bound, so a larger prior here would quiet every
            // other finding. (A package update replaces binaries: their
            // first runs are findings, to acknowledge.)
            NoveltyKind::ReplacedImage => 1e-5,
            NoveltyKind::CopiedImage => 1e-6,
        }
    }

    /// True for kinds judged per program (the rest are host-wide).
    pub fn per_program(self) -> bool {
        !matches!(
            self,
            NoveltyKind::NewExecutable
                | NoveltyKind::NewParentChild
                | NoveltyKind::ReplacedImage
                | NoveltyKind::CopiedImage
        )
    }

    /// Every kind.
    pub const ALL: [NoveltyKind; 10] = [
        NoveltyKind::NewExecutable,
        NoveltyKind::NewChildProgram,
        NoveltyKind::NewParentChild,
        NoveltyKind::NewSyscall,
        NoveltyKind::NewPeer,
        NoveltyKind::NewListeningPort,
        NoveltyKind::NewSensitivePath,
        NoveltyKind::NewAction,
        NoveltyKind::ReplacedImage,
        NoveltyKind::CopiedImage,
    ];

    /// What it means, for people.
    pub fn describe(self) -> &'static str {
        match self {
            NoveltyKind::NewExecutable => "an executable never seen running on this host",
            NoveltyKind::NewChildProgram => "started a program it never started before",
            NoveltyKind::NewParentChild => "was started by a parent that never started it before",
            NoveltyKind::NewSyscall => "made a system call it never made before",
            NoveltyKind::NewPeer => "contacted a network peer it never contacted before",
            NoveltyKind::NewListeningPort => "listened on a port it never used before",
            NoveltyKind::NewSensitivePath => "touched a sensitive file it never touched before",
            NoveltyKind::NewAction => "took an action it never took before",
            NoveltyKind::ReplacedImage => {
                "ran from a file that is not the one the baseline knows for this program"
            }
            NoveltyKind::CopiedImage => "is a copy of a known program under another name or place",
        }
    }
}

/// One novelty fact of a window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Novelty {
    /// Its kind.
    pub kind: NoveltyKind,
    /// What was new (a program path, a peer, a syscall name...).
    pub value: String,
}

/// Upper-tail p-values against a sample, with a Pareto tail beyond it.
///
/// Within the sample the p-value is empirical (`(at least + 1) / (n + 1)`).
/// Beyond its largest value, a Pareto tail with the Hill estimate of its
/// index over the top tenth extrapolates: heavier than an exponential, so a
/// value somewhat past everything seen is not called impossible.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tail {
    /// The sample, sorted ascending.
    pub sorted: Vec<f64>,
    /// Start of the fitted tail (a high quantile of the sample).
    pub tail_start: f64,
    /// Pareto tail index.
    pub tail_index: f64,
    /// Values at or above `tail_start`.
    pub tail_count: usize,
}

/// Offset that keeps statistics positive for the Pareto fit.
const TAIL_SHIFT: f64 = 1.0;

impl Tail {
    /// Fits the tail of a sample.
    pub fn fit(mut sample: Vec<f64>) -> Self {
        sample.retain(|v| v.is_finite());
        sample.sort_by(f64::total_cmp);
        let n = sample.len();
        if n == 0 {
            return Self::default();
        }
        let k = (n / 10).max(5).min(n);
        let tail_start = sample[n - k];
        let u = tail_start.max(0.0) + TAIL_SHIFT;
        let logs: f64 = sample[n - k..]
            .iter()
            .map(|v| ((v.max(0.0) + TAIL_SHIFT) / u).ln())
            .sum();
        let tail_index = if logs > 0.0 {
            (k as f64 / logs).clamp(1.0, 30.0)
        } else {
            30.0
        };
        Self {
            sorted: sample,
            tail_start,
            tail_index,
            tail_count: k,
        }
    }

    /// Probability that a baseline window's value is at least `x`.
    pub fn p_value(&self, x: f64) -> f64 {
        let n = self.sorted.len();
        if n == 0 {
            return 1.0;
        }
        let max = self.sorted[n - 1];
        if x <= max {
            // The empirical survival function, interpolated linearly between
            // neighbouring sample values so that ranking stays continuous.
            let i = self.sorted.partition_point(|&v| v < x);
            if i == 0 {
                return 1.0;
            }
            let (lo, hi) = (self.sorted[i - 1], self.sorted[i]);
            let above_lo = if hi > lo { (hi - x) / (hi - lo) } else { 0.0 };
            let at_least = (n - i) as f64 + above_lo;
            return (at_least + 1.0) / (n as f64 + 1.0);
        }
        let edge = 1.0 / (n as f64 + 1.0);
        let u = self.tail_start.max(0.0) + TAIL_SHIFT;
        let ratio = (x.max(0.0) + TAIL_SHIFT) / u;
        let tail = self.tail_count as f64 / (n as f64 + 1.0) * ratio.powf(-self.tail_index);
        // Continuous past the largest value and never above the edge.
        tail.min(edge)
    }
}

/// The calibration learned by cross-validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Distance statistics of unseen baseline windows.
    pub distance: Tail,
    /// Sequence statistics of unseen baseline windows (datasets only).
    pub sequence: Tail,
    /// Host-wide rate of each novelty kind: its count among cross-validated
    /// windows, with a Beta prior of mean [`NoveltyKind::prior_rate`] and
    /// strength [`PRIOR_WINDOWS`].
    pub novelty_rates: BTreeMap<NoveltyKind, f64>,
    /// Windows scored by cross-validation.
    pub windows: usize,
}

/// The score of one window, with everything needed to explain it.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// Calibrated score in [0, 1].
    pub score: f64,
    /// `-ln` of the bound behind the score: a continuous anomaly statistic
    /// for ranking (it keeps growing where the score saturates near 1).
    pub raw: f64,
    /// Upper-tail p-value of the distance statistic.
    pub distance_p: f64,
    /// Upper-tail p-value of the sequence statistic, when the window has one.
    pub sequence_p: Option<f64>,
    /// Which model scored it: the program's own, or the global one.
    pub scope: Scope,
    /// Nearest cluster and exemplar.
    pub nearest: Nearest,
    /// Novelty facts.
    pub novelty: Vec<Novelty>,
    /// The feature vector.
    pub x: Array1<f64>,
    /// An acknowledgement changed the evidence: the window looks normal
    /// only because an analyst said so, so drift must not learn it (the
    /// acknowledgement could not be withdrawn otherwise).
    pub acknowledged: bool,
}

/// Which model scored a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The program's own model.
    Program,
    /// The global model (the program had too few baseline windows).
    Global,
}

/// The baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Feature space.
    pub space: FeatureSpace,
    /// Models of programs with enough windows.
    #[serde(alias = "profiles")]
    pub programs: BTreeMap<String, ProgramModel>,
    /// The model of everything.
    pub global: ProgramModel,
    /// Calibration.
    pub calibration: Calibration,
    /// Sequence model, for windows that carry syscall sequences.
    pub sequence: Option<SequenceModel>,
    /// Baseline windows learned from.
    pub windows: u64,
    /// Behaviour analysts acknowledged as benign, by finding id. Kept apart
    /// from what was learned so an acknowledgement can be withdrawn exactly.
    #[serde(default)]
    pub acknowledged: BTreeMap<String, Acknowledged>,
}

/// A finding's behaviour acknowledged as benign (`monitor ack`): its novelty
/// facts stop counting as new for its program, and its feature vector counts
/// as learned behaviour of the program.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Acknowledged {
    /// The program.
    #[serde(alias = "profile")]
    pub program: String,
    /// The novelty facts that are now known.
    pub facts: BTreeSet<(NoveltyKind, String)>,
    /// The window's feature vector, when the window was kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub x: Vec<f32>,
}

/// Cross-validation folds.
const FOLDS: u64 = 5;
/// Largest number of windows the global k-means sees (a stride sample).
const GLOBAL_FIT_ROWS: usize = 4000;

/// Deterministic fold of a window.
fn fold_of(w: &Window, i: usize) -> u64 {
    crate::hash::Fnv1a::default()
        .write(w.program.as_bytes())
        .write(&w.pid.to_le_bytes())
        .write(&w.start.0.to_le_bytes())
        .write(&(i as u64).to_le_bytes())
        .finish()
        % FOLDS
}

/// The evidence measured for one window.
struct Evidence {
    distance: f64,
    sequence: Option<f64>,
    novelty: Vec<Novelty>,
}

impl Baseline {
    /// Checks that the parts of a decoded baseline fit together: lengths
    /// agree with the feature space, numbers are finite and in range.
    /// Returns what is wrong, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        let space = &self.space;
        if !validate::ascending(&space.vocabulary) {
            return Err("baseline.space.vocabulary must be sorted without repeats".into());
        }
        if space.idf.len() != space.vocabulary.len() {
            return Err(format!(
                "baseline.space.idf has {} weights for {} syscalls",
                space.idf.len(),
                space.vocabulary.len()
            ));
        }
        if !validate::finite(space.idf.iter().copied().chain([space.unseen_weight])) {
            return Err("baseline.space.idf holds a value that is not a finite number".into());
        }
        let dims = space.len();
        self.global
            .clusters
            .validate(dims, "baseline.global.clusters")?;
        for (name, m) in &self.programs {
            m.clusters
                .validate(dims, &format!("baseline.programs[{name:?}].clusters"))?;
        }
        self.calibration
            .distance
            .validate("baseline.calibration.distance")?;
        self.calibration
            .sequence
            .validate("baseline.calibration.sequence")?;
        for (kind, rate) in &self.calibration.novelty_rates {
            if !(0.0..=1.0).contains(rate) {
                return Err(format!(
                    "baseline.calibration.novelty_rates.{kind:?} = {rate}: must be between 0 and 1"
                ));
            }
        }
        for (id, a) in &self.acknowledged {
            if !a.x.is_empty() {
                validate::rows(
                    std::slice::from_ref(&a.x),
                    dims,
                    &format!("baseline.acknowledged[{id:?}].x"),
                )?;
            }
        }
        if let Some(seq) = &self.sequence {
            seq.validate()
                .map_err(|e| format!("baseline.sequence.{e}"))?;
        }
        Ok(())
    }

    /// Learns a baseline; see the module docs.
    pub fn fit<'a>(windows: impl IntoIterator<Item = &'a Window>) -> Result<Self, FitError> {
        let usable: Vec<&Window> = windows.into_iter().filter(|w| !w.tainted).collect();
        if usable.len() < MIN_WINDOWS {
            return Err(FitError::TooFew {
                windows: usable.len(),
                needed: MIN_WINDOWS,
            });
        }
        let folds: Vec<u64> = usable
            .iter()
            .enumerate()
            .map(|(i, w)| fold_of(w, i))
            .collect();
        let mut evidence = Vec::with_capacity(usable.len());
        let mut program_counts: BTreeMap<&str, (u64, BTreeMap<NoveltyKind, u64>)> = BTreeMap::new();
        for f in 0..FOLDS {
            let train: Vec<&Window> = usable
                .iter()
                .zip(&folds)
                .filter(|(_, k)| **k != f)
                .map(|(w, _)| *w)
                .collect();
            let model = Self::fit_model(&train)?;
            for (w, _) in usable.iter().zip(&folds).filter(|(_, k)| **k == f) {
                let (_, nearest, novelty, _, _) = model.measure(w);
                let sequence = model.sequence.as_ref().and_then(|s| s.statistic(w));
                let entry = program_counts.entry(w.program.as_str()).or_default();
                entry.0 += 1;
                let kinds: BTreeSet<NoveltyKind> = novelty.iter().map(|n| n.kind).collect();
                for k in kinds {
                    *entry.1.entry(k).or_default() += 1;
                }
                evidence.push(Evidence {
                    distance: nearest.statistic(),
                    sequence,
                    novelty,
                });
            }
        }
        let n = evidence.len() as f64;
        let mut kind_counts: BTreeMap<NoveltyKind, usize> = BTreeMap::new();
        for e in &evidence {
            let kinds: BTreeSet<NoveltyKind> = e.novelty.iter().map(|n| n.kind).collect();
            for k in kinds {
                *kind_counts.entry(k).or_default() += 1;
            }
        }
        let mut baseline = Self::fit_model(&usable)?;
        baseline.calibration = Calibration {
            distance: Tail::fit(evidence.iter().map(|e| e.distance).collect()),
            sequence: Tail::fit(evidence.iter().filter_map(|e| e.sequence).collect()),
            novelty_rates: NoveltyKind::ALL
                .iter()
                .map(|&k| {
                    let seen = kind_counts.get(&k).copied().unwrap_or(0) as f64;
                    (
                        k,
                        (seen + k.prior_rate() * PRIOR_WINDOWS) / (n + PRIOR_WINDOWS),
                    )
                })
                .collect(),
            windows: evidence.len(),
        };
        for (program, (windows, counts)) in program_counts {
            if let Some(m) = baseline.programs.get_mut(program) {
                m.cv_windows = windows;
                m.novelty_counts = counts;
            }
        }
        Ok(baseline)
    }

    /// Fits clusters, novelty sets and the sequence model (no calibration).
    fn fit_model(windows: &[&Window]) -> Result<Self, FitError> {
        let space = FeatureSpace::fit(windows.iter().copied());
        let rows_of = |ws: &[&Window]| {
            let mut m = Array2::zeros((ws.len(), space.len()));
            for (i, w) in ws.iter().enumerate() {
                m.row_mut(i).assign(&space.vectorize(w));
            }
            m
        };
        let stride = windows.len().div_ceil(GLOBAL_FIT_ROWS).max(1);
        let sample: Vec<&Window> = windows.iter().step_by(stride).copied().collect();
        let mut global = ProgramModel::new(Clusters::fit(
            &rows_of(&sample),
            MAX_GLOBAL_CLUSTERS,
            "(global)",
        )?);
        windows.iter().for_each(|w| global.learn_facts(w));
        let mut by_program: BTreeMap<&str, Vec<&Window>> = BTreeMap::new();
        for w in windows {
            by_program.entry(w.program.as_str()).or_default().push(w);
        }
        let mut programs = BTreeMap::new();
        for (program, ws) in &by_program {
            if ws.len() >= MIN_PROGRAM_WINDOWS {
                let mut m = ProgramModel::new(Clusters::fit(&rows_of(ws), MAX_CLUSTERS, program)?);
                ws.iter().for_each(|w| m.learn_facts(w));
                programs.insert((*program).to_owned(), m);
            }
        }
        Ok(Baseline {
            sequence: SequenceModel::fit(windows.iter().copied()),
            space,
            programs,
            global,
            calibration: Calibration {
                distance: Tail::default(),
                sequence: Tail::default(),
                novelty_rates: BTreeMap::new(),
                windows: 0,
            },
            windows: windows.len() as u64,
            acknowledged: BTreeMap::new(),
        })
    }

    /// What the window's file is, against what the baseline knows: a known
    /// program from a file it never ran from, or a new program that is a
    /// copy of a known one. (Image facts are host-wide: the model of a
    /// program learned from few windows is the global one.)
    fn image_novelty(&self, w: &Window, known_exe: bool) -> Vec<(NoveltyKind, String)> {
        let prefix = super::window::image_fact(&w.program, "");
        let own: Vec<&str> = w
            .facts
            .images
            .iter()
            .filter_map(|f| f.strip_prefix(prefix.as_str()))
            .collect();
        if own.is_empty() {
            return Vec::new();
        }
        let known = &self.global.facts.images;
        let learned_for_program = known
            .range(prefix.clone()..)
            .next()
            .is_some_and(|f| f.starts_with(prefix.as_str()));
        let describe = |ids: &[&str]| {
            ids.iter()
                .map(|id| {
                    id.replace("sha256:", "sha256 ")
                        .replace("inode:", "device:inode ")
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = Vec::new();
        if learned_for_program
            && !own
                .iter()
                .any(|id| known.contains(&format!("{prefix}{id}")))
        {
            let learned: Vec<&str> = known
                .range(prefix.clone()..)
                .take_while(|f| f.starts_with(prefix.as_str()))
                .filter_map(|f| f.strip_prefix(prefix.as_str()))
                .filter(|id| id.starts_with("sha256:"))
                .take(3)
                .collect();
            out.push((
                NoveltyKind::ReplacedImage,
                format!(
                    "{} ran from {}; the baseline knows it as {}",
                    w.program,
                    describe(&own),
                    if learned.is_empty() {
                        "other files".to_owned()
                    } else {
                        describe(&learned)
                    }
                ),
            ));
        }
        if !known_exe && let Some(sha) = own.iter().find(|id| id.starts_with("sha256:")) {
            let suffix = format!("\0{sha}");
            let originals: Vec<&str> = known
                .iter()
                .filter(|f| f.ends_with(&suffix))
                .filter_map(|f| f.split('\0').next())
                .filter(|p| *p != w.program)
                .take(3)
                .collect();
            if !originals.is_empty() {
                out.push((
                    NoveltyKind::CopiedImage,
                    format!(
                        "{} is a copy of {} (same contents, {})",
                        w.program,
                        originals.join(", "),
                        describe(&[sha])
                    ),
                ));
            }
        }
        out
    }

    /// The model scoring a program.
    pub fn model_for(&self, program: &str) -> (&ProgramModel, Scope) {
        match self.programs.get(program) {
            Some(m) => (m, Scope::Program),
            None => (&self.global, Scope::Global),
        }
    }

    /// Vector, nearest cluster, novelty facts and scope of a window.
    fn measure(&self, w: &Window) -> (Array1<f64>, Nearest, Vec<Novelty>, Scope, bool) {
        let x = self.space.vectorize(w);
        let (model, scope) = self.model_for(&w.program);
        let nearest = model.clusters.nearest(x.view());
        let mut novelty = Vec::new();
        let mut push = |kind, value: String| novelty.push(Novelty { kind, value });
        let known_exe = self.programs.contains_key(&w.program)
            || self.global.facts.executed.contains(&w.program);
        if !known_exe && !w.program.is_empty() && w.sequence.is_empty() {
            push(NoveltyKind::NewExecutable, w.program.clone());
        }
        for exe in &w.facts.executed {
            if *exe != w.program && !model.facts.executed.contains(exe) {
                push(NoveltyKind::NewChildProgram, exe.clone());
            }
        }
        for pair in w.facts.exec_pairs.difference(&self.global.facts.exec_pairs) {
            push(NoveltyKind::NewParentChild, pair.clone());
        }
        for id in w.syscalls.keys() {
            if !model.syscalls.contains(id) {
                push(
                    NoveltyKind::NewSyscall,
                    crate::syscalls::canonical_name(*id).into_owned(),
                );
            }
        }
        for peer in w.facts.peers.difference(&model.facts.peers) {
            push(NoveltyKind::NewPeer, peer.clone());
        }
        for port in w.facts.listening.difference(&model.facts.listening) {
            push(NoveltyKind::NewListeningPort, port.clone());
        }
        for path in w
            .facts
            .sensitive_paths
            .difference(&model.facts.sensitive_paths)
        {
            push(NoveltyKind::NewSensitivePath, path.clone());
        }
        for action in w.facts.actions.difference(&model.facts.actions) {
            push(NoveltyKind::NewAction, action.clone());
        }
        for (kind, value) in self.image_novelty(w, known_exe) {
            push(kind, value);
        }
        let (mut nearest, mut novelty) = (nearest, novelty);
        let acknowledged = self.apply_acknowledged(w, x.view(), &mut nearest, &mut novelty);
        (x, nearest, novelty, scope, acknowledged)
    }

    /// Takes acknowledged behaviour of the window's program into account:
    /// acknowledged facts are not new, and an acknowledged window nearer
    /// than every centroid is the nearest learned behaviour. Returns true if
    /// an acknowledgement changed the evidence.
    fn apply_acknowledged(
        &self,
        w: &Window,
        x: ArrayView1<'_, f64>,
        nearest: &mut Nearest,
        novelty: &mut Vec<Novelty>,
    ) -> bool {
        if self.acknowledged.is_empty() {
            return false;
        }
        let before = novelty.len();
        let acks: Vec<&Acknowledged> = self
            .acknowledged
            .values()
            .filter(|a| a.program == w.program)
            .collect();
        // Parent-child pairs are host-wide facts: any acknowledgement covers them.
        novelty.retain(|n| {
            let fact = (n.kind, n.value.clone());
            let scope_host = n.kind == NoveltyKind::NewParentChild;
            !self
                .acknowledged
                .values()
                .filter(|a| scope_host || a.program == w.program)
                .any(|a| a.facts.contains(&fact))
        });
        let mut changed = novelty.len() != before;
        for a in acks.iter().filter(|a| a.x.len() == x.len()) {
            let d = dist(x, &a.x);
            if d < nearest.distance || d < nearest.exemplar_distance {
                changed = true;
            }
            nearest.distance = nearest.distance.min(d);
            nearest.exemplar_distance = nearest.exemplar_distance.min(d);
        }
        changed
    }

    /// Acknowledges a finding's behaviour as benign (see [`Acknowledged`]).
    pub fn acknowledge(
        &mut self,
        finding_id: &str,
        program: &str,
        facts: BTreeSet<(NoveltyKind, String)>,
        window: Option<&Window>,
    ) {
        let x = window
            .map(|w| self.space.vectorize(w).iter().map(|&v| v as f32).collect())
            .unwrap_or_default();
        self.acknowledged.insert(
            finding_id.to_owned(),
            Acknowledged {
                program: program.to_owned(),
                facts,
                x,
            },
        );
    }

    /// Withdraws an acknowledgement; true if there was one.
    pub fn withdraw(&mut self, finding_id: &str) -> bool {
        self.acknowledged.remove(finding_id).is_some()
    }

    /// How often a normal window of `program` shows novelty of `kind`.
    pub fn novelty_rate(&self, kind: NoveltyKind, program: &str) -> f64 {
        let host = self
            .calibration
            .novelty_rates
            .get(&kind)
            .copied()
            .unwrap_or(kind.prior_rate());
        match self.programs.get(program) {
            Some(m) if kind.per_program() => {
                let seen = m.novelty_counts.get(&kind).copied().unwrap_or(0) as f64;
                (seen + PROGRAM_PRIOR_WINDOWS * host)
                    / (m.cv_windows as f64 + PROGRAM_PRIOR_WINDOWS)
            }
            _ => host,
        }
    }

    /// The union bound of the module docs: how often a normal window of this
    /// program shows evidence at least as strong. Returns it with the
    /// distance and sequence p-values.
    fn bound(
        &self,
        w: &Window,
        distance: f64,
        sequence: Option<f64>,
        novelty: &[Novelty],
    ) -> (f64, f64, Option<f64>) {
        let distance_p = self.calibration.distance.p_value(distance);
        let sequence_p = sequence.map(|s| self.calibration.sequence.p_value(s));
        // A window with a sequence is judged by the sequence model, which
        // weighs its call set itself (the set distance): the count-feature
        // distance and new-syscall facts then only explain, so the same
        // evidence is not counted twice.
        let counted = |kind: NoveltyKind| sequence_p.is_none() || kind != NoveltyKind::NewSyscall;
        let mut strongest = sequence_p.unwrap_or(distance_p);
        for n in novelty.iter().filter(|n| counted(n.kind)) {
            strongest = strongest.min(self.novelty_rate(n.kind, &w.program));
        }
        let mut bound = strongest;
        for kind in NoveltyKind::ALL.into_iter().filter(|k| counted(*k)) {
            let rate = self.novelty_rate(kind, &w.program);
            if rate <= strongest {
                bound += rate;
            }
        }
        (bound.min(1.0), distance_p, sequence_p)
    }

    /// Scores a window; see the module docs.
    pub fn score(&self, w: &Window) -> Scored {
        let (x, nearest, novelty, scope, acknowledged) = self.measure(w);
        let sequence = self.sequence.as_ref().and_then(|s| s.statistic(w));
        let (bound, distance_p, sequence_p) =
            self.bound(w, nearest.statistic(), sequence, &novelty);
        Scored {
            score: 1.0 - bound,
            raw: -bound.max(f64::MIN_POSITIVE).ln(),
            distance_p,
            sequence_p,
            scope,
            nearest,
            novelty,
            x,
            acknowledged,
        }
    }

    /// Learns from a window judged normal (drift): its facts, and a step of
    /// its nearest centroid toward it. Each fact set grows only up to its
    /// cap ([`DRIFT_FACTS_PER_SET`], [`DRIFT_FACTS_PER_SET_GLOBAL`]): a
    /// program that contacts a new peer every minute must not grow the
    /// model without end. Returns the facts refused for that.
    pub fn absorb(&mut self, w: &Window, x: &Array1<f64>) -> u64 {
        self.windows += 1;
        let mut refused = self.global.learn_drift_facts(w, DRIFT_FACTS_PER_SET_GLOBAL);
        if let Some(m) = self.programs.get_mut(&w.program) {
            refused += m.learn_drift_facts(w, DRIFT_FACTS_PER_SET);
            m.clusters.absorb(x.view());
        } else {
            self.global.clusters.absorb(x.view());
        }
        refused
    }

    /// The features of `x` that differ most from its nearest centroid: index,
    /// share of the squared distance.
    pub fn deviations(
        &self,
        w: &Window,
        scored: &Scored,
        top: usize,
    ) -> Vec<(usize, f64, f64, f64)> {
        let (model, _) = self.model_for(&w.program);
        let centroid = &model.clusters.centroids[scored.nearest.cluster];
        let mut contributions: Vec<(usize, f64)> = scored
            .x
            .iter()
            .zip(centroid)
            .enumerate()
            .map(|(i, (x, c))| (i, (x - f64::from(*c)).powi(2)))
            .filter(|(_, d)| *d > 0.0)
            .collect();
        let total: f64 = contributions.iter().map(|(_, d)| d).sum();
        contributions.sort_by(|a, b| b.1.total_cmp(&a.1));
        contributions
            .into_iter()
            .take(top)
            .map(|(i, d)| {
                let (observed, expected) =
                    self.space.observed_expected(i, w, f64::from(centroid[i]));
                (i, d / total.max(f64::MIN_POSITIVE), observed, expected)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{Array1, s};

    use super::{dist, dist_strided};

    #[test]
    fn lane_parallel_distance_matches_the_plain_sum_at_every_length() {
        for n in [0, 1, 7, 8, 9, 16, 31, 414] {
            let a = Array1::from_iter((0..n).map(|i| (i as f64 * 0.37).sin()));
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let (fast, plain) = (dist(a.view(), &b), dist_strided(a.view(), &b));
            assert!((fast - plain).abs() <= 1e-12 * plain.max(1.0), "n={n}");
        }
        // A non-contiguous view takes the strided path and agrees too.
        let wide = Array1::from_iter((0..20).map(f64::from));
        let b = vec![1.0f32; 10];
        let view = wide.slice(s![..;2]);
        let expected: f64 = view.iter().map(|x| (x - 1.0).powi(2)).sum::<f64>().sqrt();
        assert!((dist(view, &b) - expected).abs() < 1e-12);
    }
}
