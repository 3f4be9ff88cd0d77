//! Syscall counts drained from the kernel's per-thread counters.
//!
//! The kernel only ever increments (see `monitor_common::counting`). Every
//! drain interval the agent reads each thread's counters, subtracts the snapshot it
//! took last time (wrapping), adds the difference to the thread's process,
//! and emits one `syscall_counts` event per process that made syscalls. A
//! thread's final counters arrive with its exit record, so its last counts are
//! never lost; a process's final counts are emitted as soon as it exits.
//!
//! The map is read directly, but the process table follows the ring, which
//! is behind it: counts closed now may hold the calls of a process whose
//! exec record is still on its way. So they are held until the stream
//! reaches the end of the drain that closed it, and is enriched then, before
//! any later record changes the table: its process is the image that made
//! the calls.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    time::Duration,
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use monitor_common::{PAIR_BUCKETS, SYSCALL_SLOTS, ThreadCounts};

use crate::{
    event::{CountsDetail, time::boottime_ns},
    process::ProcessTable,
    syscalls::Abi,
};

/// Counts settings.
#[derive(Debug, Clone)]
pub struct CountSettings {
    /// How often the counts are drained.
    pub drain_every: Duration,
}

impl Default for CountSettings {
    fn default() -> Self {
        Self {
            drain_every: Duration::from_secs(5),
        }
    }
}

/// One thread: its id and when its counts was created. Thread ids are
/// reused, so the id alone can name an exited thread and its successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ThreadKey {
    tid: u32,
    born_ns: u64,
}

impl ThreadKey {
    fn of(tid: u32, counts: &ThreadCounts) -> Self {
        Self {
            tid,
            born_ns: counts.born_ns,
        }
    }
}

/// What a drain found for a thread id.
#[derive(Debug, Clone, Copy)]
enum Found {
    /// This thread's counts.
    Thread(u64),
    /// An entry that could not be read: whichever thread it is, it lives.
    Unreadable,
}

/// Counters of one thread as last read.
struct Snapshot {
    /// When they were read (boot ns): the start of what the next read adds.
    taken_ns: u64,
    /// When a drain first missed the thread (boot ns): it has exited, and
    /// its exit record is on its way.
    departed_ns: Option<u64>,
    counts: Box<[u32; SYSCALL_SLOTS]>,
    pairs: Box<[u32; PAIR_BUCKETS]>,
}

/// A process's counts accumulated since the previous drain.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DrainedCounts {
    /// Process id.
    pub pid: u32,
    /// Counted since, boot-time ns.
    pub start_ns: u64,
    /// Counted until, boot-time ns.
    pub end_ns: u64,
    /// Syscalls counted.
    pub total: u64,
    /// Count per syscall number.
    pub counts: BTreeMap<u16, u64>,
    /// Count per pair bucket.
    pub pairs: BTreeMap<u16, u64>,
    /// The process exited: these are its last counts.
    pub final_counts: bool,
}

impl DrainedCounts {
    /// The event detail, with canonical syscall names and wall-clock times.
    pub fn detail(&self, table: &ProcessTable) -> CountsDetail {
        let abi = Abi::X86_64;
        CountsDetail {
            since: table.wall_time(self.start_ns),
            until: table.wall_time(self.end_ns),
            total: self.total,
            counts: self
                .counts
                .iter()
                .map(|(&nr, &n)| (abi.name(u32::from(nr)), n))
                .collect(),
            pairs: self.pairs.clone(),
            final_counts: self.final_counts,
        }
    }
}

/// The open counts of `pid`, stretched to cover `since..now`.
fn open_counts(
    open: &mut HashMap<u32, DrainedCounts>,
    pid: u32,
    since: u64,
    now: u64,
) -> &mut DrainedCounts {
    let drained = open.entry(pid).or_insert_with(|| DrainedCounts {
        pid,
        start_ns: since,
        ..Default::default()
    });
    drained.start_ns = drained.start_ns.min(since);
    drained.end_ns = drained.end_ns.max(now);
    drained
}

/// Adds the counters' growth since `before` (zero when `None`) to `into`,
/// and moves `before` up to them.
fn accumulate(
    into: &mut BTreeMap<u16, u64>,
    total: &mut u64,
    now: &[u32],
    mut before: Option<&mut [u32]>,
) {
    // Most of the 768 counters of a thread are zero or unchanged: skip them
    // a chunk at a time (a comparison the compiler vectorizes) rather than
    // testing each one.
    const CHUNK: usize = 16;
    for (c, chunk) in now.chunks(CHUNK).enumerate() {
        let base = c * CHUNK;
        let unchanged = match before.as_deref() {
            Some(b) => *chunk == b[base..base + chunk.len()],
            None => chunk.iter().fold(0, |any, &v| any | v) == 0,
        };
        if unchanged {
            continue;
        }
        for (k, &value) in chunk.iter().enumerate() {
            let i = base + k;
            let prior = before.as_ref().map_or(0, |b| b[i]);
            let delta = value.wrapping_sub(prior);
            if delta != 0 {
                *into.entry(i as u16).or_default() += u64::from(delta);
                *total += u64::from(delta);
                if let Some(b) = before.as_mut() {
                    b[i] = value;
                }
            }
        }
    }
}

/// Adds the growth of `counts` since `before` (all of it when `None`) to
/// the open counts of `pid`, stretched over `since..now`, and moves `before`
/// up to `counts` as read at `now`.
fn add_growth(
    open: &mut HashMap<u32, DrainedCounts>,
    pid: u32,
    since: u64,
    now: u64,
    counts: &ThreadCounts,
    before: Option<&mut Snapshot>,
) {
    let drained = open_counts(open, pid, since, now);
    let (counts_before, pairs_before) = match before {
        Some(snapshot) => {
            snapshot.taken_ns = now;
            (
                Some(&mut snapshot.counts[..]),
                Some(&mut snapshot.pairs[..]),
            )
        }
        None => (None, None),
    };
    accumulate(
        &mut drained.counts,
        &mut drained.total,
        &counts.counts,
        counts_before,
    );
    let mut pairs_total = 0;
    accumulate(
        &mut drained.pairs,
        &mut pairs_total,
        &counts.pairs,
        pairs_before,
    );
}

/// The counts arithmetic, apart from the map: per-thread snapshots of
/// the kernel's counters, and per-process counts of their growth.
///
/// A thread's map entry and its exit record race with the drain. The kernel
/// deletes the entry, then submits the exit record, which reaches
/// [`CountsBook::thread_exited`] some time later, through the ring and
/// the channel. A drain in between no longer finds the thread, yet its
/// snapshot is still needed: without it the exit record's counters would
/// all be counted again. So a thread missing from a drain keeps its
/// snapshot, marked departed, until its exit record arrives, or until a
/// record stamped well after that drain shows that the ring has moved past
/// the exit (its record was then lost, and the kernel counted it).
#[derive(Default)]
struct CountsBook {
    snapshots: HashMap<ThreadKey, Snapshot>,
    open: HashMap<u32, DrainedCounts>,
    /// Closed counts waiting for the stream to catch up with the drain
    /// that closed them, with the time that drain finished reading.
    held: VecDeque<(u64, DrainedCounts)>,
    last_drain_ns: u64,
    /// The latest ring record's time (boot ns).
    latest_record_ns: u64,
}

/// How far past a departure a record must be stamped before the departed
/// thread's exit record is taken as lost. Records reach the ring in the
/// order they were reserved and are stamped right after; the margin covers
/// a program preempted between the two on a preemptible kernel.
const DEPARTURE_MARGIN_NS: u64 = 250_000_000;

impl CountsBook {
    fn new(now_ns: u64) -> Self {
        Self {
            last_drain_ns: now_ns,
            ..Self::default()
        }
    }

    /// Adds `counts` (a thread's counters now) to its process's open counts.
    fn add(&mut self, tid: u32, pid: u32, counts: &ThreadCounts, now_ns: u64) {
        let last_drain = self.last_drain_ns;
        let snapshot = self
            .snapshots
            .entry(ThreadKey::of(tid, counts))
            .or_insert_with(|| Snapshot {
                taken_ns: last_drain.min(now_ns),
                departed_ns: None,
                counts: Box::new([0; SYSCALL_SLOTS]),
                pairs: Box::new([0; PAIR_BUCKETS]),
            });
        snapshot.departed_ns = None;
        let since = snapshot.taken_ns;
        add_growth(&mut self.open, pid, since, now_ns, counts, Some(snapshot));
    }

    /// A ring record stamped `ktime_ns` was read.
    fn saw_record(&mut self, ktime_ns: u64) {
        self.latest_record_ns = self.latest_record_ns.max(ktime_ns);
    }

    /// A thread exited with these final counters.
    fn thread_exited(&mut self, tid: u32, pid: u32, counts: &ThreadCounts, ktime_ns: u64) {
        // A thread never drained (most short-lived processes) has no
        // snapshot: everything since it started counts.
        let mut snapshot = self.snapshots.remove(&ThreadKey::of(tid, counts));
        let since = snapshot
            .as_ref()
            .map_or(self.last_drain_ns.min(ktime_ns), |s| s.taken_ns);
        add_growth(
            &mut self.open,
            pid,
            since,
            ktime_ns,
            counts,
            snapshot.as_mut(),
        );
    }

    /// The process exited: its held counts, which the stream has caught
    /// up with (its exit is the last of its records), then its final one,
    /// if it made any syscall since the last drain.
    fn process_exited(&mut self, pid: u32, ktime_ns: u64) -> Vec<DrainedCounts> {
        let mut out = Vec::new();
        if self.held.iter().any(|(_, w)| w.pid == pid) {
            let (mine, others): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.held)
                .into_iter()
                .partition(|(_, w)| w.pid == pid);
            self.held = others;
            out.extend(mine.into_iter().map(|(_, w)| w));
        }
        if let Some(mut drained) = self.open.remove(&pid) {
            drained.end_ns = drained.end_ns.max(ktime_ns);
            drained.final_counts = true;
            if drained.total > 0 {
                out.push(drained);
            }
        }
        out
    }

    /// Holds the counts closed by a drain that finished reading at
    /// `read_end`.
    fn hold(&mut self, read_end: u64, drained: Vec<DrainedCounts>) {
        self.held.extend(drained.into_iter().map(|w| (read_end, w)));
    }

    /// Whether counts wait for the stream to catch up.
    fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// The held counts the stream has reached: every record stamped
    /// before their drain ended has been read, either because a later one
    /// has (the caller asks before applying that one), or because the
    /// source says so (`source_caught_up`).
    fn released(&mut self, source_caught_up: Option<u64>) -> Vec<DrainedCounts> {
        let reached = self.latest_record_ns.max(source_caught_up.unwrap_or(0));
        let mut out = Vec::new();
        while self
            .held
            .front()
            .is_some_and(|&(read_end, _)| read_end < reached)
        {
            out.extend(self.held.pop_front().map(|(_, drained)| drained));
        }
        out
    }

    /// Ends a drain that started at `now` and found the thread ids in
    /// `found` by `read_end`: marks the other threads departed (including a
    /// thread whose id now names a newer thread), forgets those whose exit
    /// record the ring has moved past, and closes the open counts.
    fn close(
        &mut self,
        now: u64,
        read_end: u64,
        found: &HashMap<u32, Found>,
        final_drain: bool,
    ) -> Vec<DrainedCounts> {
        let latest = self.latest_record_ns;
        self.snapshots.retain(|key, snapshot| {
            match found.get(&key.tid) {
                Some(Found::Unreadable) => return true,
                Some(Found::Thread(born)) if *born == key.born_ns => return true,
                _ => {}
            }
            let departed = *snapshot.departed_ns.get_or_insert(read_end);
            latest <= departed.saturating_add(DEPARTURE_MARGIN_NS)
        });
        self.last_drain_ns = now;
        let mut out: Vec<DrainedCounts> = self
            .open
            .drain()
            .map(|(_, mut w)| {
                w.end_ns = now;
                w.final_counts = final_drain;
                w
            })
            .filter(|w| w.total > 0)
            .collect();
        out.sort_by_key(|w| w.pid);
        out
    }
}

/// Drains the `SYSCALL_COUNTS` map into per-process counts.
pub struct CountDrainer {
    map: BpfHashMap<MapData, u32, ThreadCounts>,
    settings: CountSettings,
    book: CountsBook,
    read_errors: u64,
}

impl CountDrainer {
    /// Wraps the map.
    pub fn new(map: BpfHashMap<MapData, u32, ThreadCounts>, settings: CountSettings) -> Self {
        Self {
            map,
            settings,
            book: CountsBook::new(boottime_ns()),
            read_errors: 0,
        }
    }

    /// The drain interval.
    pub fn drain_every(&self) -> Duration {
        self.settings.drain_every
    }

    /// Loss counters of the userspace side.
    pub fn loss(&self) -> Vec<(String, u64)> {
        vec![("counts_read_error".into(), self.read_errors)]
    }

    /// A ring record stamped `ktime_ns` was read: how the drainer knows
    /// the ring has moved past a departed thread's exit.
    pub fn saw_record(&mut self, ktime_ns: u64) {
        self.book.saw_record(ktime_ns);
    }

    /// A thread exited with these final counters.
    pub fn thread_exited(&mut self, tid: u32, pid: u32, counts: &ThreadCounts, ktime_ns: u64) {
        self.book.thread_exited(tid, pid, counts, ktime_ns);
    }

    /// The process exited: its held counts, then its final one, if it
    /// made any syscall since the last drain.
    pub fn process_exited(&mut self, pid: u32, ktime_ns: u64) -> Vec<DrainedCounts> {
        self.book.process_exited(pid, ktime_ns)
    }

    /// Whether closed counts wait for the stream to catch up.
    pub fn holding(&self) -> bool {
        self.book.holding()
    }

    /// The held counts the stream has caught up with. `source_caught_up`
    /// is a time (boot ns) before which the source has read every record,
    /// and every record it read has been accepted, when that is known.
    pub fn released(&mut self, source_caught_up: Option<u64>) -> Vec<DrainedCounts> {
        self.book.released(source_caught_up)
    }

    /// Reads every live thread's counters and closes the open counts,
    /// which are held until [`CountDrainer::released`]. With `final_drain`, the
    /// counts are marked final (the agent is stopping).
    pub fn drain(&mut self, final_drain: bool) {
        let now = boottime_ns();
        let mut found = HashMap::new();
        let listed: Vec<u32> = self.map.keys().filter_map(Result::ok).collect();
        // A walk of a churning hash map can skip keys: the threads it did
        // not list but that were read before are looked up one by one.
        let unlisted: Vec<u32> = {
            let listed: HashSet<u32> = listed.iter().copied().collect();
            self.book
                .snapshots
                .keys()
                .map(|key| key.tid)
                .filter(|tid| !listed.contains(tid))
                .collect()
        };
        for tid in listed.into_iter().chain(unlisted) {
            if found.contains_key(&tid) {
                continue;
            }
            // A thread may exit between listing and reading: not an error.
            match self.map.get(&tid, 0) {
                Ok(counts) => {
                    found.insert(tid, Found::Thread(counts.born_ns));
                    self.book.add(tid, counts.pid, &counts, now);
                }
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(err) => {
                    found.insert(tid, Found::Unreadable);
                    self.read_errors += 1;
                    tracing::debug!(tid, error = %err, "cannot read a syscall counts");
                }
            }
        }
        let read_end = boottime_ns();
        let drained = self.book.close(now, read_end, &found, final_drain);
        self.book.hold(read_end, drained);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GETPPID: usize = 110;

    /// A thread of process `pid`, born at 1 ns, that has made `n` getppid
    /// calls.
    fn counts(pid: u32, n: u32) -> ThreadCounts {
        born(1, pid, n)
    }

    /// The same, born at `born_ns`.
    fn born(born_ns: u64, pid: u32, n: u32) -> ThreadCounts {
        let mut p = ThreadCounts {
            pid,
            last: GETPPID as u32,
            total: u64::from(n),
            born_ns,
            counts: [0; SYSCALL_SLOTS],
            pairs: [0; PAIR_BUCKETS],
        };
        p.counts[GETPPID] = n;
        p
    }

    fn getppid_calls(drained: &[DrainedCounts]) -> u64 {
        drained
            .iter()
            .map(|w| w.counts.get(&(GETPPID as u16)).copied().unwrap_or(0))
            .sum()
    }

    #[test]
    fn accumulate_counts_every_changed_counter_and_skips_the_rest() {
        // Sparse counters (as a thread's are), some wrapped past u32::MAX,
        // over lengths that do and do not fill the last chunk.
        let mut seed = 0x9e37_79b9_u64;
        let mut next = || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) as u32
        };
        for len in [1, 16, 17, 256, 512, 515] {
            for _ in 0..50 {
                let now: Vec<u32> = (0..len)
                    .map(|_| if next() % 9 == 0 { next() } else { 0 })
                    .collect();
                let prior: Vec<u32> = now
                    .iter()
                    .map(|&v| {
                        if next() % 3 == 0 {
                            v.wrapping_sub(next() % 5)
                        } else {
                            v
                        }
                    })
                    .collect();
                for with_prior in [false, true] {
                    let mut before = prior.clone();
                    let (mut into, mut total) = (BTreeMap::new(), 0);
                    accumulate(
                        &mut into,
                        &mut total,
                        &now,
                        with_prior.then_some(&mut before[..]),
                    );
                    let mut expected = BTreeMap::new();
                    for (i, &v) in now.iter().enumerate() {
                        let delta = v.wrapping_sub(if with_prior { prior[i] } else { 0 });
                        if delta != 0 {
                            expected.insert(i as u16, u64::from(delta));
                        }
                    }
                    assert_eq!(into, expected, "len {len}, prior {with_prior}");
                    assert_eq!(total, expected.values().sum::<u64>());
                    if with_prior {
                        assert_eq!(before, now, "the snapshot moves up to now");
                    }
                }
            }
        }
    }

    /// One drain: the threads in `live` are in the map.
    fn drain(book: &mut CountsBook, now: u64, live: &[(u32, ThreadCounts)]) -> Vec<DrainedCounts> {
        let mut found = HashMap::new();
        for (tid, p) in live {
            found.insert(*tid, Found::Thread(p.born_ns));
            book.add(*tid, p.pid, p, now);
        }
        book.close(now, now + 1, &found, false)
    }

    /// A drain at 1,000 ns that finishes reading at 1,001 and holds its
    /// counts, as `CountDrainer::drain` does.
    fn held_drain(book: &mut CountsBook, live: &[(u32, ThreadCounts)]) {
        let drained = drain(book, 1_000, live);
        book.hold(1_001, drained);
    }

    #[test]
    fn a_drain_between_a_threads_exit_and_its_record_counts_nothing_twice() {
        let mut book = CountsBook::new(0);
        let first = drain(&mut book, 1_000, &[(7, counts(7, 100))]);
        assert_eq!(getppid_calls(&first), 100);
        // The thread exits (its entry is gone) and a drain runs before the
        // agent reads the exit record.
        let between = drain(&mut book, 2_000, &[]);
        assert!(between.is_empty());
        book.thread_exited(7, 7, &counts(7, 150), 1_500);
        let last = book.process_exited(7, 1_500);
        assert!(last.len() == 1 && last[0].final_counts);
        assert_eq!(
            getppid_calls(&last),
            50,
            "only the calls after the first drain"
        );
        assert!(book.snapshots.is_empty());
    }

    #[test]
    fn a_departed_thread_is_forgotten_once_the_ring_moves_past_its_exit() {
        let mut book = CountsBook::new(0);
        drain(&mut book, 1_000, &[(7, counts(7, 100))]);
        drain(&mut book, 2_000, &[]);
        // Records up to the margin may still precede the exit record.
        book.saw_record(2_001 + DEPARTURE_MARGIN_NS);
        drain(&mut book, 3_000, &[]);
        assert!(
            book.snapshots.keys().any(|k| k.tid == 7),
            "kept within the margin"
        );
        // A record stamped past it: the exit record was lost (the kernel
        // counted it), so the snapshot is no longer needed.
        book.saw_record(2_002 + DEPARTURE_MARGIN_NS);
        drain(&mut book, 4_000, &[]);
        assert!(book.snapshots.is_empty());
    }

    #[test]
    fn a_reused_thread_id_is_a_new_thread_and_the_old_ones_record_still_counts_once() {
        let mut book = CountsBook::new(0);
        let old = |n| born(1, 7, n);
        let new = |n| born(50, 7, n);
        let mut counted = getppid_calls(&drain(&mut book, 1_000, &[(7, old(100))]));
        // The old thread exits; before its record is read, its id names a
        // new thread of the same process (a pid wrap, a thread pool).
        counted += getppid_calls(&drain(&mut book, 2_000, &[(7, new(30))]));
        book.thread_exited(7, 7, &old(150), 1_500);
        book.thread_exited(7, 7, &new(40), 2_500);
        counted += getppid_calls(&book.process_exited(7, 2_500));
        assert_eq!(
            counted,
            100 + 30 + 50 + 10,
            "each thread from its own snapshot"
        );
        assert!(book.snapshots.is_empty());
    }

    #[test]
    fn windows_wait_until_a_later_record_is_read() {
        let mut book = CountsBook::new(0);
        held_drain(&mut book, &[(7, counts(7, 100)), (8, counts(8, 5))]);
        book.saw_record(1_001);
        assert!(
            book.released(None).is_empty(),
            "a record of the drain's time"
        );
        // A record stamped after the drain: the exec records that name
        // these processes have been read.
        book.saw_record(1_002);
        let out = book.released(None);
        assert_eq!(out.iter().map(|w| w.pid).collect::<Vec<_>>(), [7, 8]);
        assert!(!book.holding());
    }

    #[test]
    fn windows_wait_until_the_source_has_read_past_their_drain() {
        let mut book = CountsBook::new(0);
        held_drain(&mut book, &[(7, counts(7, 100))]);
        assert!(
            book.released(Some(1_001)).is_empty(),
            "the source is not past it"
        );
        assert_eq!(book.released(Some(1_002)).len(), 1);
    }

    #[test]
    fn an_exit_releases_its_processs_held_windows_before_its_final_one() {
        let mut book = CountsBook::new(0);
        held_drain(&mut book, &[(7, counts(7, 100)), (8, counts(8, 5))]);
        book.thread_exited(7, 7, &counts(7, 130), 1_100);
        let out = book.process_exited(7, 1_100);
        let shape: Vec<_> = out.iter().map(|w| (w.pid, w.final_counts)).collect();
        assert_eq!(shape, [(7, false), (7, true)]);
        assert_eq!(getppid_calls(&out), 130);
        assert!(
            book.holding(),
            "the other process's open counts still waits"
        );
    }

    #[test]
    fn a_thread_never_drained_counts_everything_at_exit() {
        let mut book = CountsBook::new(0);
        book.thread_exited(9, 9, &counts(9, 42), 500);
        let last = book.process_exited(9, 500);
        assert_eq!((getppid_calls(&last), last[0].start_ns), (42, 0));
    }
}
