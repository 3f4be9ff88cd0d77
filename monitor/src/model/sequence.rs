//! The sequence model, for windows that carry full syscall sequences
//! (datasets of traces, such as ADFA-LD).
//!
//! A Witten-Bell smoothed n-gram language model: the statistic of a window
//! is the mean negative log-probability of its syscalls given the previous
//! `n - 1`, so a trace whose order of calls is unlike the baseline scores
//! high even when its call *counts* look ordinary.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::window::Window;

/// Order of the language model.
pub const ORDER: usize = 6;

/// Hash of a context (the previous tokens, most recent last).
fn context_key(tokens: &[u16]) -> u64 {
    // FNV-1a over the tokens, with the length mixed in.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ tokens.len() as u64;
    for &t in tokens {
        for b in t.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn pair_key(context: u64, next: u16) -> u64 {
    (context ^ u64::from(next).wrapping_mul(0x9e37_79b9_7f4a_7c15)).rotate_left(17)
}

/// Counts of one context: how often it occurred and how many distinct
/// tokens followed it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct ContextCount {
    total: u32,
    distinct: u32,
}

/// A Witten-Bell n-gram model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NgramModel {
    order: usize,
    vocabulary: usize,
    contexts: HashMap<u64, ContextCount>,
    grams: HashMap<u64, u32>,
}

impl NgramModel {
    /// Counts every n-gram of order 1..=`order` in the sequences.
    pub fn fit<'a>(sequences: impl IntoIterator<Item = &'a [u16]>, order: usize) -> Self {
        let mut contexts: HashMap<u64, ContextCount> = HashMap::new();
        let mut grams: HashMap<u64, u32> = HashMap::new();
        let mut vocab = std::collections::HashSet::new();
        for seq in sequences {
            for i in 0..seq.len() {
                vocab.insert(seq[i]);
                for len in 0..order {
                    if len > i {
                        break;
                    }
                    let ctx = context_key(&seq[i - len..i]);
                    let key = pair_key(ctx, seq[i]);
                    let count = grams.entry(key).or_default();
                    *count += 1;
                    let c = contexts.entry(ctx).or_default();
                    c.total += 1;
                    if *count == 1 {
                        c.distinct += 1;
                    }
                }
            }
        }
        Self {
            order,
            vocabulary: vocab.len().max(1),
            contexts,
            grams,
        }
    }

    /// Probability of `next` after `history` (most recent last).
    pub fn probability(&self, history: &[u16], next: u16) -> f64 {
        // Start from a uniform distribution over a vocabulary one larger
        // than seen (room for unseen calls), then interpolate up the orders.
        let mut p = 1.0 / (self.vocabulary as f64 + 1.0);
        let longest = history.len().min(self.order - 1);
        for len in 0..=longest {
            let ctx_tokens = &history[history.len() - len..];
            let ctx = context_key(ctx_tokens);
            let Some(c) = self.contexts.get(&ctx) else {
                break; // a longer context containing this one is unseen too
            };
            let count = self.grams.get(&pair_key(ctx, next)).copied().unwrap_or(0);
            let (t, d) = (f64::from(c.total), f64::from(c.distinct));
            p = (f64::from(count) + d * p) / (t + d);
        }
        p
    }

    /// Mean negative log-probability per token of a sequence.
    pub fn mean_surprise(&self, seq: &[u16]) -> f64 {
        if seq.is_empty() {
            return 0.0;
        }
        let total: f64 = (0..seq.len())
            .map(|i| {
                let start = i.saturating_sub(self.order - 1);
                -self.probability(&seq[start..i], seq[i]).ln()
            })
            .sum();
        total / seq.len() as f64
    }
}

/// The sequence part of a baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequenceModel {
    ngrams: NgramModel,
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
        Some(Self {
            ngrams: NgramModel::fit(seqs, ORDER),
        })
    }

    /// The statistic of a window (higher is more unusual), if it has a sequence.
    pub fn statistic(&self, w: &Window) -> Option<f64> {
        (!w.sequence.is_empty()).then(|| self.ngrams.mean_surprise(&w.sequence))
    }

}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_are_a_distribution() {
        let seqs: Vec<Vec<u16>> = vec![vec![1, 2, 3, 1, 2, 3, 1, 2, 4], vec![5, 1, 2, 3]];
        let m = NgramModel::fit(seqs.iter().map(Vec::as_slice), 3);
        // The five seen tokens plus one unseen one hold all the mass.
        for history in [&[][..], &[1], &[1, 2], &[9, 9]] {
            let total: f64 = [1, 2, 3, 4, 5, 9].iter().map(|&t| m.probability(history, t)).sum();
            assert!((total - 1.0).abs() < 1e-9, "{history:?}: {total}");
        }
        assert!(m.probability(&[1, 2], 3) > m.probability(&[1, 2], 4));
    }

    #[test]
    fn an_unusual_order_is_more_surprising() {
        let normal: Vec<u16> = (0..200).map(|i| (i % 5) as u16).collect();
        let m = NgramModel::fit([normal.as_slice()], ORDER);
        let same: Vec<u16> = (0..50).map(|i| (i % 5) as u16).collect();
        let shuffled: Vec<u16> = (0..50).map(|i| ((i * 3) % 5) as u16).collect();
        assert!(m.mean_surprise(&shuffled) > m.mean_surprise(&same) * 2.0);
    }
}
