//! Writing events out.

pub mod jsonl;
