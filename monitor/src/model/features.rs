//! Feature vectors of windows, with a name for every dimension so that
//! explanations can speak in them.
//!
//! Three groups, weighted so that each can matter:
//! - **syscall frequency counts**: for each syscall seen in the baseline,
//!   `sqrt(share) * idf`, where `share` is its fraction of the window's
//!   syscalls and `idf = ln((N+1)/(df+1)) + 1` over the N baseline windows
//!   (rare calls weigh more); one extra dimension holds calls the baseline
//!   never saw;
//! - **sequence**: `sqrt(share)` of each consecutive-pair bucket, times
//!   [`PAIR_WEIGHT`];
//! - **activity**: `ln(1 + count)` of each [`Activity`] counter, times
//!   [`ACTIVITY_WEIGHT`].
//!
//! The square root of shares is the Hellinger embedding: Euclidean distance
//! between such vectors is a proper distance between distributions, stable
//! for windows of very different lengths.

use ndarray::Array1;
use serde::{Deserialize, Serialize};

use super::window::{Activity, Window};
use crate::syscalls::canonical_name;

/// Weight of the pair-bucket dimensions.
pub const PAIR_WEIGHT: f64 = 0.5;
/// Weight of the activity dimensions.
pub const ACTIVITY_WEIGHT: f64 = 1.0;
/// Number of pair buckets (see `monitor_common::PAIR_BUCKETS`).
pub const PAIRS: usize = monitor_common::PAIR_BUCKETS;

/// What one dimension measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// Share of one syscall.
    Syscall(u16),
    /// Share of syscalls the baseline never saw.
    UnseenSyscalls,
    /// Share of one consecutive-pair bucket.
    Pair(u16),
    /// One activity counter (index into [`Activity::NAMES`]).
    Activity(usize),
}

impl Feature {
    /// A name people can read.
    pub fn name(self) -> String {
        match self {
            Feature::Syscall(id) => format!("syscall {}", canonical_name(id)),
            Feature::UnseenSyscalls => "syscalls never seen in the baseline".into(),
            Feature::Pair(b) => format!("syscall sequence pattern #{b}"),
            Feature::Activity(i) => Activity::NAMES[i].replace('_', " "),
        }
    }
}

/// The dimensions, learned from baseline windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSpace {
    /// Syscalls with a dimension, sorted.
    pub vocabulary: Vec<u16>,
    /// Their idf weights.
    pub idf: Vec<f64>,
    /// Weight of the unseen-syscalls dimension (the largest idf).
    pub unseen_weight: f64,
}

impl FeatureSpace {
    /// Learns the vocabulary and weights from baseline windows.
    pub fn fit<'a>(windows: impl IntoIterator<Item = &'a Window>) -> Self {
        let mut df: std::collections::BTreeMap<u16, u64> = Default::default();
        let mut n = 0u64;
        for w in windows {
            n += 1;
            for &id in w.syscalls.keys() {
                *df.entry(id).or_default() += 1;
            }
        }
        let idf_of = |d: u64| ((n as f64 + 1.0) / (d as f64 + 1.0)).ln() + 1.0;
        let vocabulary: Vec<u16> = df.keys().copied().collect();
        let idf: Vec<f64> = df.values().map(|&d| idf_of(d)).collect();
        Self {
            vocabulary,
            idf,
            unseen_weight: idf_of(0),
        }
    }

    /// Number of dimensions.
    pub fn len(&self) -> usize {
        self.vocabulary.len() + 1 + PAIRS + Activity::NAMES.len()
    }

    /// True when there are no syscall dimensions (an empty baseline).
    pub fn is_empty(&self) -> bool {
        self.vocabulary.is_empty()
    }

    /// What dimension `i` measures.
    pub fn feature(&self, i: usize) -> Feature {
        let v = self.vocabulary.len();
        if i < v {
            Feature::Syscall(self.vocabulary[i])
        } else if i == v {
            Feature::UnseenSyscalls
        } else if i < v + 1 + PAIRS {
            Feature::Pair((i - v - 1) as u16)
        } else {
            Feature::Activity(i - v - 1 - PAIRS)
        }
    }

    /// The feature vector of a window.
    pub fn vectorize(&self, w: &Window) -> Array1<f64> {
        let mut x = Array1::zeros(self.len());
        let total = w.total_syscalls() as f64;
        if total > 0.0 {
            let mut unseen = 0u64;
            for (&id, &count) in &w.syscalls {
                match self.vocabulary.binary_search(&id) {
                    Ok(i) => x[i] = (count as f64 / total).sqrt() * self.idf[i],
                    Err(_) => unseen += count,
                }
            }
            x[self.vocabulary.len()] = (unseen as f64 / total).sqrt() * self.unseen_weight;
        }
        let pair_total: u64 = w.pairs.values().sum();
        if pair_total > 0 {
            let base = self.vocabulary.len() + 1;
            for (&b, &count) in &w.pairs {
                if usize::from(b) < PAIRS {
                    x[base + usize::from(b)] =
                        (count as f64 / pair_total as f64).sqrt() * PAIR_WEIGHT;
                }
            }
        }
        let base = self.vocabulary.len() + 1 + PAIRS;
        for (i, v) in w.activity.values().into_iter().enumerate() {
            x[base + i] = f64::from(v).ln_1p() * ACTIVITY_WEIGHT;
        }
        x
    }

    /// The raw quantity behind dimension `i` for window `w` (a count), and
    /// the count a centroid value `c` corresponds to at this window's size.
    pub fn observed_expected(&self, i: usize, w: &Window, c: f64) -> (f64, f64) {
        let total = w.total_syscalls() as f64;
        match self.feature(i) {
            Feature::Syscall(id) => {
                let observed = w.syscalls.get(&id).copied().unwrap_or(0) as f64;
                let share = (c.max(0.0) / self.idf[i]).powi(2);
                (observed, share * total)
            }
            Feature::UnseenSyscalls => {
                let seen: u64 = w
                    .syscalls
                    .iter()
                    .filter(|(id, _)| self.vocabulary.binary_search(id).is_ok())
                    .map(|(_, c)| c)
                    .sum();
                let share = (c.max(0.0) / self.unseen_weight).powi(2);
                (total - seen as f64, share * total)
            }
            Feature::Pair(b) => {
                let pair_total: u64 = w.pairs.values().sum();
                let observed = w.pairs.get(&b).copied().unwrap_or(0) as f64;
                let share = (c.max(0.0) / PAIR_WEIGHT).powi(2);
                (observed, share * pair_total as f64)
            }
            Feature::Activity(a) => {
                let observed = f64::from(w.activity.values()[a]);
                (observed, (c.max(0.0) / ACTIVITY_WEIGHT).exp_m1())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscalls::canonical_id;

    fn window(calls: &[(&str, u64)]) -> Window {
        let mut w = Window::default();
        for (name, n) in calls {
            w.syscalls.insert(canonical_id(name), *n);
        }
        w
    }

    #[test]
    fn rare_syscalls_weigh_more() {
        let common = window(&[("read", 10), ("write", 10)]);
        let rare = window(&[("read", 10), ("ptrace", 1)]);
        let space = FeatureSpace::fit([&common, &common, &common, &rare]);
        let read = space
            .vocabulary
            .binary_search(&canonical_id("read"))
            .unwrap();
        let ptrace = space
            .vocabulary
            .binary_search(&canonical_id("ptrace"))
            .unwrap();
        assert!(space.idf[ptrace] > space.idf[read]);
    }

    #[test]
    fn names_and_round_trip_of_counts() {
        let w = window(&[("read", 30), ("openat", 10)]);
        let space = FeatureSpace::fit([&w]);
        let x = space.vectorize(&w);
        assert_eq!(x.len(), space.len());
        let i = space
            .vocabulary
            .binary_search(&canonical_id("openat"))
            .unwrap();
        assert_eq!(space.feature(i).name(), "syscall openat");
        let (observed, expected) = space.observed_expected(i, &w, x[i]);
        assert_eq!(observed, 10.0);
        assert!(
            (expected - 10.0).abs() < 1e-9,
            "a window's own value maps back to its count"
        );
        let unseen = window(&[("read", 5), ("mount", 5)]);
        let y = space.vectorize(&unseen);
        assert!(y[space.vocabulary.len()] > 0.0, "mount was never seen");
    }
}
