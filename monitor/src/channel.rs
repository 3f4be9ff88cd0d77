//! The bounded channels that join the agent's stages, with counters.
//!
//! Every channel is bounded, and every send says what happens when it is
//! full (the way Vector's topology does it, see `docs/architecture.md`):
//! [`Sender::send`] waits, so the pressure moves upstream (in the end to
//! the kernel ring buffer, whose overflow the kernel counts as loss), and
//! [`Sender::offer`] drops the item and counts it. Both are counted, and the
//! counts are in `monitor status` and `/metrics` (`monitor_channel_*`).

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// A channel's counters as the status reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelStats {
    /// Items it holds at most.
    pub capacity: usize,
    /// Items in it now.
    pub depth: u64,
    /// Items sent through it.
    pub sent: u64,
    /// Sends that found it full and waited (backpressure upstream).
    pub waited: u64,
    /// Items dropped because it was full (only for items offered, never
    /// for findings).
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    waited: AtomicU64,
    dropped: AtomicU64,
}

/// Reads a channel's counters from outside the stages (for the status).
#[derive(Debug, Clone)]
pub struct ChannelGauge {
    capacity: usize,
    counters: Arc<Counters>,
}

impl ChannelGauge {
    /// The counters now.
    pub fn stats(&self) -> ChannelStats {
        let sent = self.counters.sent.load(Ordering::Relaxed);
        let received = self.counters.received.load(Ordering::Relaxed);
        ChannelStats {
            capacity: self.capacity,
            depth: sent.saturating_sub(received),
            sent,
            waited: self.counters.waited.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
        }
    }
}

/// The receiving stage is gone (it ended or failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the receiving stage has stopped")]
pub struct Closed;

/// The sending end.
#[derive(Debug)]
pub struct Sender<T> {
    tx: mpsc::Sender<T>,
    counters: Arc<Counters>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            counters: self.counters.clone(),
        }
    }
}

impl<T> Sender<T> {
    /// Sends, waiting while the channel is full.
    pub async fn send(&self, item: T) -> Result<(), Closed> {
        let item = match self.tx.try_send(item) {
            Ok(()) => {
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(Closed),
            Err(mpsc::error::TrySendError::Full(item)) => item,
        };
        self.counters.waited.fetch_add(1, Ordering::Relaxed);
        self.tx.send(item).await.map_err(|_| Closed)?;
        self.counters.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Sends if there is room now; otherwise drops the item and counts it.
    /// Returns false when dropped.
    pub fn offer(&self, item: T) -> Result<bool, Closed> {
        match self.tx.try_send(item) {
            Ok(()) => {
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                Ok(false)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Closed),
        }
    }
}

/// The receiving end.
#[derive(Debug)]
pub struct Receiver<T> {
    rx: mpsc::Receiver<T>,
    counters: Arc<Counters>,
}

impl<T> Receiver<T> {
    /// The next item, or `None` once every sender is gone and it is empty.
    pub async fn recv(&mut self) -> Option<T> {
        let item = self.rx.recv().await?;
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        Some(item)
    }
}

/// A bounded channel of `capacity` items, with its gauge.
pub fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>, ChannelGauge) {
    let (tx, rx) = mpsc::channel(capacity);
    let counters = Arc::new(Counters::default());
    (
        Sender {
            tx,
            counters: counters.clone(),
        },
        Receiver {
            rx,
            counters: counters.clone(),
        },
        ChannelGauge { capacity, counters },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn offers_to_a_full_channel_are_dropped_and_counted() {
        let (tx, mut rx, gauge) = bounded::<u32>(2);
        assert_eq!(tx.offer(1), Ok(true));
        assert_eq!(tx.offer(2), Ok(true));
        assert_eq!(tx.offer(3), Ok(false), "full: dropped");
        let s = gauge.stats();
        assert_eq!((s.sent, s.dropped, s.depth, s.capacity), (2, 1, 2, 2));
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(gauge.stats().depth, 1);
    }

    #[tokio::test]
    async fn a_send_to_a_full_channel_waits_for_room_and_counts_the_wait() {
        let (tx, mut rx, gauge) = bounded::<u32>(1);
        tx.send(1).await.unwrap();
        let sender = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(2).await }
        });
        tokio::task::yield_now().await;
        assert!(!sender.is_finished(), "waits while full");
        assert_eq!(rx.recv().await, Some(1));
        sender.await.unwrap().unwrap();
        assert_eq!(rx.recv().await, Some(2));
        let s = gauge.stats();
        assert_eq!((s.sent, s.waited, s.dropped, s.depth), (2, 1, 0, 0));
    }

    #[tokio::test]
    async fn the_receiver_ends_when_every_sender_is_gone_and_senders_see_it_gone() {
        let (tx, mut rx, _) = bounded::<u32>(4);
        tx.send(7).await.unwrap();
        drop(tx);
        assert_eq!(rx.recv().await, Some(7));
        assert_eq!(rx.recv().await, None);
        let (tx, rx, _) = bounded::<u32>(4);
        drop(rx);
        assert_eq!(tx.send(1).await, Err(Closed));
        assert_eq!(tx.offer(1), Err(Closed));
    }
}
