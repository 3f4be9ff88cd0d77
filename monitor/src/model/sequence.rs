//! The sequence model, for windows that carry full syscall sequences
//! (datasets of traces, such as ADFA-LD): a *mode mixture*.
//!
//! 1. **Behaviour modes.** Each training trace becomes its syscall
//!    *presence* vector (which calls it makes at all, L2-normalised);
//!    k-means (linfa) groups them into [`MODES`] modes. The *set
//!    distance* of a trace is one minus its cosine similarity to the nearest
//!    mode centroid: fragments of compromised processes lack the start-up
//!    calls every normal program makes and use few distinct calls, so they
//!    sit far from every mode.
//! 2. **Category language models.** Syscalls become their semantic category
//!    (see [`super::categories`]); an interpolated Witten-Bell model of
//!    order [`ORDER`] is learned over all traces, and one per mode over
//!    that mode's traces. The surprise of a call under mode `j` is
//!    `-ln(0.7 P_j + 0.3 P_global)`.
//! 3. **Best explanation.** A trace is as familiar as its most familiar
//!    stretch of [`SPAN`] calls under its best mode: a normal program,
//!    even one never seen, almost always has *some* stretch (start-up,
//!    library loading) a mode knows well; an attack is unfamiliar
//!    throughout.
//!
//! 4. **Unseen transitions.** The share `U` of the trace's distinct
//!    consecutive syscall pairs that no training trace contains (STIDE's
//!    idea, on pairs of exact calls). Below [`UNSEEN_PAIRS_KNEE`] (the 99.5th
//!    percentile of held-out training traces) it does not count.
//!
//! The statistic is `(set distance + 0.03) * sqrt(surprise) * exp(5 *
//! max(U - 0.3, 0))`: a product, so any part alone can make a trace stand
//! out.

use std::collections::HashMap;

use linfa::{DatasetBase, traits::Fit};
use linfa_clustering::KMeans;
use ndarray::{Array2, Axis};
use serde::{Deserialize, Serialize};

use super::{categories, window::Window};

/// Order of the category language models.
pub const ORDER: usize = 6;
/// Number of behaviour modes (k-means clusters of presence vectors).
pub const MODES: usize = 8;
/// Length of the stretch of calls a trace is judged by.
pub const SPAN: usize = 100;
/// Weight of the global model in each mode's mixture.
const GLOBAL_WEIGHT: f64 = 0.3;
/// Added to the set distance so a trace whose call set matches a mode
/// exactly is still ranked by its sequence.
const SET_FLOOR: f64 = 0.03;
/// Digit base of the n-gram codes (categories are 0..13, [`PAD`] is 15).
const BASE: u32 = 16;
/// The symbol before the first call, so start-up contexts are their own.
const PAD: u32 = 15;
/// Share of unseen call pairs a normal trace reaches (see the module docs).
pub const UNSEEN_PAIRS_KNEE: f64 = 0.30;
/// Weight of unseen pairs above the knee (on the log scale).
const UNSEEN_PAIRS_WEIGHT: f64 = 5.0;
/// k-means restarts; the best inertia is kept.
const KMEANS_RUNS: usize = 10;

/// An n-gram or context key: the symbols as base-16 digits (oldest first)
/// behind a leading 1 digit that makes the length part of the key.
type Key = u32;

fn key(symbols: u32, len: usize) -> Key {
    (1 << (4 * len)) | (symbols & ((1 << (4 * len)) - 1))
}

/// True if `k` is the key of an n-gram of order 1..=[`ORDER`]: a marker bit
/// just above whole digits. Keys come from model files, which may be
/// crafted: a malformed one must not reach the arithmetic on its length.
fn well_formed(k: Key) -> bool {
    let Some(marker) = 31u32.checked_sub(k.leading_zeros()) else {
        return false;
    };
    marker % 4 == 0 && (1..=ORDER as u32).contains(&(marker / 4))
}

/// The n-gram counts of a category model: what is saved.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct LmCounts {
    /// `(key of the n-gram, count)`, sorted by key, orders 1..=[`ORDER`].
    grams: Vec<(Key, u32)>,
}

/// An interpolated Witten-Bell language model over syscall categories, with
/// the next-symbol distribution of every seen context precomputed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "LmCounts", into = "LmCounts")]
pub struct CategoryLm {
    counts: LmCounts,
    /// Context key (length 0..ORDER-1) to `P(next | context)`.
    contexts: HashMap<Key, [f64; categories::COUNT]>,
}

impl PartialEq for CategoryLm {
    fn eq(&self, other: &Self) -> bool {
        self.counts == other.counts
    }
}

impl From<CategoryLm> for LmCounts {
    fn from(lm: CategoryLm) -> Self {
        lm.counts
    }
}

impl From<LmCounts> for CategoryLm {
    fn from(counts: LmCounts) -> Self {
        let contexts = Self::distributions(&counts);
        Self { counts, contexts }
    }
}

impl CategoryLm {
    /// Counts every n-gram of every sequence (of category symbols).
    fn fit<'a>(sequences: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut grams: HashMap<Key, u32> = HashMap::new();
        for seq in sequences {
            let mut history: u32 = 0;
            for _ in 0..ORDER - 1 {
                history = history << 4 | PAD;
            }
            for &s in seq {
                let with_next = history << 4 | u32::from(s);
                for n in 1..=ORDER {
                    *grams.entry(key(with_next, n)).or_default() += 1;
                }
                history = with_next;
            }
        }
        let mut grams: Vec<(Key, u32)> = grams.into_iter().collect();
        grams.sort_unstable();
        Self::from(LmCounts { grams })
    }

    /// The interpolated distribution of every seen context, shortest first.
    fn distributions(counts: &LmCounts) -> HashMap<Key, [f64; categories::COUNT]> {
        // Group the n-grams by context: the key without its last digit.
        let mut by_context: HashMap<Key, Vec<(usize, u32)>> = HashMap::new();
        let mut unigram_total = 0u64;
        for &(k, c) in counts.grams.iter().filter(|(k, _)| well_formed(*k)) {
            let next = (k & 0xf) as usize;
            if next < categories::COUNT {
                by_context.entry(k >> 4).or_default().push((next, c));
            }
            if k >> 4 == 1 {
                unigram_total += u64::from(c);
            }
        }
        let mut out: HashMap<Key, [f64; categories::COUNT]> =
            HashMap::with_capacity(by_context.len());
        // The base: add-one over the code alphabet.
        let mut base = [0.0; categories::COUNT];
        let seen: HashMap<usize, u32> = by_context
            .get(&1)
            .map(|v| v.iter().copied().collect())
            .unwrap_or_default();
        for (w, p) in base.iter_mut().enumerate() {
            *p = (f64::from(seen.get(&w).copied().unwrap_or(0)) + 1.0)
                / (unigram_total as f64 + f64::from(BASE));
        }
        out.insert(1, base);
        let mut contexts: Vec<(Key, Vec<(usize, u32)>)> =
            by_context.into_iter().filter(|(k, _)| *k != 1).collect();
        // Shorter contexts first, so each one's parent is ready.
        contexts.sort_unstable_by_key(|(k, _)| (32 - k.leading_zeros(), *k));
        for (ctx, followers) in contexts {
            let len = (31 - ctx.leading_zeros()) as usize / 4;
            let parent = out.get(&key(ctx, len - 1)).copied().unwrap_or(base);
            let total: f64 = followers.iter().map(|(_, c)| f64::from(*c)).sum();
            let distinct = followers.len() as f64;
            let mut p = parent.map(|q| distinct * q);
            for (w, c) in followers {
                p[w] += f64::from(c);
            }
            out.insert(ctx, p.map(|v| v / (total + distinct)));
        }
        out
    }

    /// `P(symbol | history)` for each position of `seq`.
    fn probabilities(&self, seq: &[u8], out: &mut Vec<f64>) {
        out.clear();
        let mut history: u32 = 0;
        for _ in 0..ORDER - 1 {
            history = history << 4 | PAD;
        }
        let fallback = [1.0 / f64::from(BASE); categories::COUNT];
        for &s in seq {
            // The longest seen context; a context is seen only if all of its
            // suffixes are, so the first hit from the longest down is it.
            let dist = (0..ORDER)
                .rev()
                .find_map(|len| self.contexts.get(&key(history, len)))
                .unwrap_or(&fallback);
            out.push(dist[usize::from(s)]);
            history = history << 4 | u32::from(s);
        }
    }

    /// Checks the counts read from a model file; says what is wrong.
    fn validate(&self) -> Result<(), String> {
        if let Some((k, _)) = self.counts.grams.iter().find(|(k, _)| !well_formed(*k)) {
            return Err(format!(
                "n-gram key {k:#x} is not an n-gram of order 1 to {ORDER}"
            ));
        }
        if !self.counts.grams.windows(2).all(|w| w[0].0 < w[1].0) {
            return Err("n-gram keys must be sorted without repeats".into());
        }
        Ok(())
    }

    /// Number of n-grams stored.
    pub fn len(&self) -> usize {
        self.counts.grams.len()
    }

    /// Whether nothing was learned.
    pub fn is_empty(&self) -> bool {
        self.counts.grams.is_empty()
    }
}

/// The sequence evidence of one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SequenceEvidence {
    /// One minus the cosine similarity of the call set to the nearest mode.
    pub set_distance: f64,
    /// Mean surprise (nats per call) of the most familiar stretch under the
    /// best mode.
    pub surprise: f64,
    /// That mode.
    pub mode: usize,
    /// Share of the distinct consecutive call pairs never seen in training.
    pub unseen_pairs: f64,
}

impl SequenceEvidence {
    /// The statistic (higher is more unusual).
    pub fn statistic(&self) -> f64 {
        (self.set_distance + SET_FLOOR)
            * self.surprise.max(0.0).sqrt()
            * (UNSEEN_PAIRS_WEIGHT * (self.unseen_pairs - UNSEEN_PAIRS_KNEE).max(0.0)).exp()
    }
}

/// The sequence part of a baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequenceModel {
    /// Canonical syscall ids seen in training, sorted: the presence dimensions.
    vocabulary: Vec<u16>,
    /// Unit-length mode centroids over `vocabulary`.
    centroids: Vec<Vec<f32>>,
    /// Traces per mode in training.
    members: Vec<u32>,
    /// The model of all traces.
    global: CategoryLm,
    /// One model per mode.
    modes: Vec<CategoryLm>,
    /// Every consecutive call pair of the training traces (`a << 16 | b`), sorted.
    pairs: Vec<u32>,
}

/// The distinct consecutive call pairs of a sequence, sorted.
fn call_pairs(seq: &[u16]) -> Vec<u32> {
    let mut p: Vec<u32> = seq
        .windows(2)
        .map(|w| u32::from(w[0]) << 16 | u32::from(w[1]))
        .collect();
    p.sort_unstable();
    p.dedup();
    p
}

fn category_sequence(seq: &[u16]) -> Vec<u8> {
    seq.iter().map(|&id| categories::of(id)).collect()
}

/// The distinct calls of a sequence.
fn distinct(seq: &[u16]) -> Vec<u16> {
    let mut d = seq.to_vec();
    d.sort_unstable();
    d.dedup();
    d
}

/// Mean of the least surprising [`SPAN`]-long stretch.
fn best_stretch(nll: &[f64]) -> f64 {
    if nll.len() <= SPAN {
        return nll.iter().sum::<f64>() / nll.len().max(1) as f64;
    }
    let mut sum: f64 = nll[..SPAN].iter().sum();
    let mut best = sum;
    for i in SPAN..nll.len() {
        sum += nll[i] - nll[i - SPAN];
        best = best.min(sum);
    }
    best / SPAN as f64
}

impl SequenceModel {
    /// Learns from the windows that have sequences; `None` if none has.
    pub fn fit<'a>(windows: impl IntoIterator<Item = &'a Window>) -> Option<Self> {
        let seqs: Vec<&[u16]> = windows
            .into_iter()
            .filter(|w| !w.sequence.is_empty())
            .map(|w| w.sequence.as_slice())
            .collect();
        if seqs.is_empty() {
            return None;
        }
        let sets: Vec<Vec<u16>> = seqs.iter().map(|s| distinct(s)).collect();
        let vocabulary = distinct(&sets.concat());
        let mut presence = Array2::<f64>::zeros((seqs.len(), vocabulary.len()));
        for (i, set) in sets.iter().enumerate() {
            let v = 1.0 / (set.len() as f64).sqrt();
            for id in set {
                if let Ok(j) = vocabulary.binary_search(id) {
                    presence[(i, j)] = v;
                }
            }
        }
        let k = MODES.min(seqs.len());
        let labels: Vec<usize> = match KMeans::params(k)
            .n_runs(KMEANS_RUNS)
            .max_n_iterations(300)
            .tolerance(1e-6)
            .fit(&DatasetBase::from(presence.clone()))
        {
            Ok(model) => {
                let labels = linfa::traits::Predict::predict(&model, &presence);
                labels.to_vec()
            }
            // Too few distinct traces to cluster: one mode.
            Err(_) => vec![0; seqs.len()],
        };
        let k = labels.iter().max().map_or(1, |m| m + 1);
        let cats: Vec<Vec<u8>> = seqs.iter().map(|s| category_sequence(s)).collect();
        let (mut centroids, mut members, mut modes) = (Vec::new(), Vec::new(), Vec::new());
        for j in 0..k {
            let rows: Vec<usize> = (0..seqs.len()).filter(|&i| labels[i] == j).collect();
            if rows.is_empty() {
                continue;
            }
            let mean = presence
                .select(Axis(0), &rows)
                .mean_axis(Axis(0))
                .unwrap_or_default();
            let norm = mean.dot(&mean).sqrt().max(f64::MIN_POSITIVE);
            centroids.push(mean.iter().map(|v| (v / norm) as f32).collect());
            members.push(rows.len() as u32);
            modes.push(CategoryLm::fit(rows.iter().map(|&i| cats[i].as_slice())));
        }
        let mut pairs: Vec<u32> = seqs.iter().flat_map(|s| call_pairs(s)).collect();
        pairs.sort_unstable();
        pairs.dedup();
        Some(Self {
            vocabulary,
            centroids,
            members,
            global: CategoryLm::fit(cats.iter().map(Vec::as_slice)),
            modes,
            pairs,
        })
    }

    /// The evidence of a window, if it has a sequence.
    pub fn measure(&self, w: &Window) -> Option<SequenceEvidence> {
        if w.sequence.is_empty() {
            return None;
        }
        let set = distinct(&w.sequence);
        // Calls never seen in training add to the norm but to no centroid.
        let scale = 1.0 / (set.len() as f64).sqrt();
        let dims: Vec<usize> = set
            .iter()
            .filter_map(|id| self.vocabulary.binary_search(id).ok())
            .collect();
        let similarity = self
            .centroids
            .iter()
            .map(|c| dims.iter().map(|&d| f64::from(c[d])).sum::<f64>() * scale)
            .fold(0.0, f64::max);
        let cats = category_sequence(&w.sequence);
        let mut global = Vec::with_capacity(cats.len());
        self.global.probabilities(&cats, &mut global);
        let mut own = Vec::with_capacity(cats.len());
        let mut nll = Vec::with_capacity(cats.len());
        let (mut surprise, mut mode) = (f64::INFINITY, 0);
        for (j, lm) in self.modes.iter().enumerate() {
            lm.probabilities(&cats, &mut own);
            nll.clear();
            nll.extend(
                own.iter()
                    .zip(&global)
                    .map(|(p, g)| -((1.0 - GLOBAL_WEIGHT) * p + GLOBAL_WEIGHT * g).ln()),
            );
            let s = best_stretch(&nll);
            if s < surprise {
                (surprise, mode) = (s, j);
            }
        }
        let distinct_pairs = call_pairs(&w.sequence);
        let unseen = distinct_pairs
            .iter()
            .filter(|p| self.pairs.binary_search(p).is_err())
            .count();
        Some(SequenceEvidence {
            set_distance: (1.0 - similarity).max(0.0),
            surprise,
            mode,
            unseen_pairs: unseen as f64 / (distinct_pairs.len() + 1) as f64,
        })
    }

    /// Checks that the parts of a decoded model fit together; returns what
    /// is wrong, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        let dims = self.vocabulary.len();
        if !self.vocabulary.windows(2).all(|w| w[0] < w[1]) {
            return Err("vocabulary must be sorted without repeats".into());
        }
        if self.centroids.is_empty() {
            return Err("centroids is empty".into());
        }
        for (i, c) in self.centroids.iter().enumerate() {
            if c.len() != dims {
                return Err(format!(
                    "centroids[{i}] has {} dimensions for {dims} syscalls",
                    c.len()
                ));
            }
            if !c.iter().all(|v| v.is_finite()) {
                return Err(format!(
                    "centroids[{i}] holds a value that is not a finite number"
                ));
            }
        }
        let k = self.centroids.len();
        for (name, len) in [("members", self.members.len()), ("modes", self.modes.len())] {
            if len != k {
                return Err(format!("{name} has {len} entries for {k} centroids"));
            }
        }
        if !self.pairs.windows(2).all(|w| w[0] < w[1]) {
            return Err("pairs must be sorted without repeats".into());
        }
        self.global.validate().map_err(|e| format!("global: {e}"))?;
        for (i, m) in self.modes.iter().enumerate() {
            m.validate().map_err(|e| format!("modes[{i}]: {e}"))?;
        }
        Ok(())
    }

    /// The statistic of a window (higher is more unusual), if it has a sequence.
    pub fn statistic(&self, w: &Window) -> Option<f64> {
        self.measure(w).map(|e| e.statistic())
    }

    /// Traces per mode.
    pub fn members(&self) -> &[u32] {
        &self.members
    }

    /// N-grams stored over all language models.
    pub fn ngrams(&self) -> usize {
        self.global.len() + self.modes.iter().map(CategoryLm::len).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lm(seqs: &[Vec<u8>]) -> CategoryLm {
        CategoryLm::fit(seqs.iter().map(Vec::as_slice))
    }

    #[test]
    fn distributions_interpolate_down_to_the_base() {
        let m = lm(&[vec![1, 2, 3, 1, 2, 3, 1, 2, 4], vec![5, 1, 2, 3]]);
        // The base spreads (count + 1) over the 16-code alphabet.
        let base = m.contexts[&1];
        assert!((base[1] - (4.0 + 1.0) / (13.0 + 16.0)).abs() < 1e-12);
        // After "1, 2": "3" three times, "4" once, two distinct followers.
        let ctx = m.contexts[&key(1 << 4 | 2, 2)];
        let after_2 = m.contexts[&key(2, 1)];
        assert!((ctx[3] - (3.0 + 2.0 * after_2[3]) / (4.0 + 2.0)).abs() < 1e-12);
        assert!(ctx[3] > ctx[4] && ctx[4] > ctx[5]);
        // Seen contexts hold between the base's mass and all of it (the
        // rest of the 16-code alphabet is never a category).
        let mass: f64 = base.iter().sum();
        for d in m.contexts.values() {
            let total: f64 = d.iter().sum();
            assert!(total >= mass - 1e-9 && total <= 1.0 + 1e-9, "{total}");
        }
    }

    #[test]
    fn malformed_ngram_keys_from_a_file_are_refused_not_computed_on() {
        for k in [0u32, 1, 2, 15, 0x1000_0000, 0x20, 0xffff_ffff] {
            assert!(!well_formed(k), "{k:#x}");
        }
        for n in 1..=ORDER {
            assert!(well_formed(key(0x123456, n)), "order {n}");
        }
        // A crafted file: the counts deserialize (without panicking) into a
        // model that validation refuses.
        let crafted: CategoryLm =
            serde_json::from_str(r#"{"grams":[[0,3],[5,1],[31,2],[4294967295,1]]}"#).unwrap();
        assert!(crafted.validate().unwrap_err().contains("not an n-gram"));
    }

    #[test]
    fn the_model_survives_a_round_trip() {
        let m = lm(&[vec![0, 1, 2, 0, 1, 2, 9]]);
        let back: CategoryLm = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.contexts, m.contexts);
    }

    #[test]
    fn best_stretch_is_the_lowest_window_mean() {
        let mut nll = vec![5.0; 300];
        nll[100..200].fill(1.0);
        assert!((best_stretch(&nll) - 1.0).abs() < 1e-12);
        assert!((best_stretch(&[2.0, 4.0]) - 3.0).abs() < 1e-12);
    }

    #[test]
    fn unusual_sets_and_orders_stand_out() {
        use crate::syscalls::canonical_id;
        let ids = |names: &[&str]| names.iter().map(|n| canonical_id(n)).collect::<Vec<u16>>();
        let startup = ids(&[
            "execve",
            "brk",
            "mmap",
            "openat",
            "fstat",
            "mmap",
            "close",
            "arch_prctl",
        ]);
        let work = ids(&["read", "write", "poll", "clock_gettime"]);
        let normal: Vec<Window> = (0..40)
            .map(|i| {
                let mut seq = startup.clone();
                for _ in 0..(20 + i) {
                    seq.extend(&work);
                }
                seq.extend(ids(&["exit_group"]));
                Window::from_sequence("t", seq)
            })
            .collect();
        let m = SequenceModel::fit(&normal).unwrap();
        let same = m.measure(&normal[3]).unwrap();
        // A fragment that only spawns and changes identity.
        let odd = Window::from_sequence(
            "t",
            ids(&["setuid", "execve", "clone", "setuid", "unlink", "execve"]).repeat(10),
        );
        let odd = m.measure(&odd).unwrap();
        assert!(
            odd.set_distance > same.set_distance + 0.5,
            "{odd:?} vs {same:?}"
        );
        assert!(odd.surprise > same.surprise * 3.0, "{odd:?} vs {same:?}");
        assert!(odd.statistic() > same.statistic() * 5.0);
    }
}
