//! The ring-buffer source: wakes on new records, decodes them and forwards
//! owned events. It does nothing slow: enrichment and output happen
//! downstream, behind a bounded channel.
//!
//! Two rings feed it: the lifecycle lane (exec, fork, exit), which no flood
//! of other records can fill, and the rest. Each pass reads the lane, then
//! the rest, then the lane again, and orders the batch by time: a record of
//! a new process is visible in the main ring only after its exec or fork
//! was submitted to the lane, so the second read finds that exec, and the
//! sort puts it first.
//!
//! Full policy: when the channel is full the source waits, which leaves the
//! records in the ring buffer; if that fills too, the kernel programs count
//! each record they cannot reserve (`ringbuf_full.*`). Loss therefore happens
//! in exactly one place and is always counted.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tokio_util::sync::CancellationToken;

use crate::event::{
    decode::{KernelEvent, decode},
    time::boottime_ns,
};

/// Counters kept by the source.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Records received.
    pub records: AtomicU64,
    /// Records that failed to decode (reported as loss `decode_error`).
    pub decode_errors: AtomicU64,
    /// A time (boot ns) before which every record has been read and sent
    /// on: the source found the ring empty after it. Stored after the sends
    /// (release), so a consumer that loads it and then finds the channel
    /// empty has accepted every record stamped before it.
    pub caught_up_ns: AtomicU64,
}

/// How often the ring is read when nothing forces a wakeup: the latency
/// added to an event at most.
pub const POLL_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// The kernel's two rings.
pub struct Rings {
    /// Exec, fork and exit records.
    pub lifecycle: RingBuf<MapData>,
    /// Every other record.
    pub events: RingBuf<MapData>,
}

/// Reads records until `shutdown`, then drains what is already in the rings
/// and returns.
pub async fn run(
    rings: Rings,
    tx: mpsc::Sender<KernelEvent>,
    stats: Arc<SourceStats>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // SAFETY: each ring buffer owns its map fd, which stays open and
    // unchanged for as long as the RingBuf (moved into the AsyncFd) lives.
    let register = |ring| unsafe {
        AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)
            .map_err(std::io::Error::from)
    };
    let mut lifecycle = register(rings.lifecycle)?;
    let mut events = register(rings.events)?;
    let mut batch = Vec::with_capacity(256);
    // The programs wake us only when a ring is filling (see the eBPF
    // `wakeup_flags`); the rest is collected here, in batches.
    let mut poll = tokio::time::interval(POLL_EVERY);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let started = boottime_ns();
        // Readiness is edge-triggered: it is cleared only once both rings
        // were found empty, or the remaining records would wait for a new
        // one.
        let emptied = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            _ = poll.tick() => drain_both(lifecycle.get_mut(), events.get_mut(), &mut batch, &stats),
            guard = lifecycle.readable_mut() => {
                let mut guard = guard?;
                let emptied = drain_both(guard.get_inner_mut(), events.get_mut(), &mut batch, &stats);
                if emptied {
                    guard.clear_ready();
                }
                emptied
            }
            guard = events.readable_mut() => {
                let mut guard = guard?;
                let emptied = drain_both(lifecycle.get_mut(), guard.get_inner_mut(), &mut batch, &stats);
                if emptied {
                    guard.clear_ready();
                }
                emptied
            }
        };
        for event in batch.drain(..) {
            if tx.send(event).await.is_err() {
                return Ok(()); // the consumer is gone
            }
        }
        if emptied {
            stats.caught_up_ns.fetch_max(started, Ordering::Release);
        }
    }
    // Final drain: records already in the rings are delivered, not dropped.
    loop {
        let empty = drain_both(lifecycle.get_mut(), events.get_mut(), &mut batch, &stats);
        for event in batch.drain(..) {
            if tx.send(event).await.is_err() {
                return Ok(());
            }
        }
        if empty {
            return Ok(());
        }
    }
}

/// Reads the lifecycle lane, the main ring and the lane again into `batch`,
/// ordered by time (see the module docs); true if both rings were emptied.
fn drain_both(
    lifecycle: &mut RingBuf<MapData>,
    events: &mut RingBuf<MapData>,
    batch: &mut Vec<KernelEvent>,
    stats: &SourceStats,
) -> bool {
    let mut emptied = drain(lifecycle, batch, stats);
    emptied &= drain(events, batch, stats);
    emptied &= drain(lifecycle, batch, stats);
    // Stable: records of one ring and one time keep their order.
    batch.sort_by_key(|e| e.ktime_ns);
    emptied
}

/// Moves up to one batch of records into `batch`; true if the ring is empty.
fn drain(ring: &mut RingBuf<MapData>, batch: &mut Vec<KernelEvent>, stats: &SourceStats) -> bool {
    // Bound one pass so a flood cannot starve the send side indefinitely.
    for _ in 0..4096 {
        let Some(item) = ring.next() else {
            return true;
        };
        stats.records.fetch_add(1, Ordering::Relaxed);
        sample::keep(&item);
        match decode(&item) {
            Ok(event) => batch.push(event),
            Err(err) => {
                let n = stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                if n < 10 {
                    tracing::warn!(error = %err, "dropped an undecodable ring-buffer record");
                }
            }
        }
    }
    false
}

/// Raw records kept for diagnosis and as the fuzzer's seeds: with
/// `MONITOR_SAMPLE_RECORDS=DIR` in the environment (root's, when it starts
/// the agent or `monitor record`), the first few records of each kind and
/// header flags (an exec and a script's exec, a write and a sensitive read;
/// for `mem_exec`, its op too) are written to `DIR/kind-<K>-f<FLAGS>-<N>.bin`
/// exactly as the kernel wrote them.
/// Records hold paths and arguments: DIR is made 0700 and must be the
/// agent's user's own, and each file is created new (0600, never through a
/// symlink), so a DIR in a shared place gives nothing to another user.
mod sample {
    use std::{
        io::Write as _,
        os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
        path::PathBuf,
        sync::OnceLock,
    };

    /// Records kept per kind and header flags.
    const PER_KIND: usize = 2;

    struct Sampler {
        dir: PathBuf,
        kept: std::sync::Mutex<std::collections::HashMap<(u8, u16), usize>>,
    }

    fn sampler() -> Option<&'static Sampler> {
        static SAMPLER: OnceLock<Option<Sampler>> = OnceLock::new();
        SAMPLER
            .get_or_init(|| {
                let dir = PathBuf::from(std::env::var_os("MONITOR_SAMPLE_RECORDS")?);
                let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
                let meta = std::fs::symlink_metadata(&dir).ok()?;
                // SAFETY: geteuid has no preconditions.
                let me = unsafe { libc::geteuid() };
                if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o077 != 0 {
                    tracing::error!(dir = %dir.display(), "MONITOR_SAMPLE_RECORDS: not a private directory of this user (0700); no records sampled");
                    return None;
                }
                Some(Sampler {
                    dir,
                    kept: std::sync::Mutex::new(std::collections::HashMap::new()),
                })
            })
            .as_ref()
    }

    pub fn keep(record: &[u8]) {
        let Some(s) = sampler() else { return };
        let (Some(&kind), Some(flags)) = (record.first(), record.get(2..4)) else {
            return;
        };
        let mut flags = u16::from_le_bytes([flags[0], flags[1]]);
        // An executable mapping of a file differs from one of anonymous
        // memory by its op, not its flags: keep both.
        if kind == monitor_common::kind::MEM_EXEC {
            let op = record.get(monitor_common::packing::MEM_EXEC_OP_AT);
            flags |= u16::from(op.copied().unwrap_or(0)) << 8;
        }
        let n = {
            let mut kept = s
                .kept
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = kept.entry((kind, flags)).or_default();
            if *n >= PER_KIND {
                return;
            }
            *n += 1;
            *n - 1
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(s.dir.join(format!("kind-{kind}-f{flags}-{n}.bin")))
        {
            let _ = f.write_all(record);
        }
    }
}
