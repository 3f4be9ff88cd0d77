//! Syscall profile windows from the kernel's per-thread counters.
//!
//! The kernel only ever increments (see `monitor_common::profile`). Every
//! window the agent reads each thread's counters, subtracts the snapshot it
//! took last time (wrapping), adds the difference to the thread's process,
//! and emits one `syscall_profile` event per process that made syscalls. A
//! thread's final counters arrive with its exit record, so its last window is
//! never lost; a process's final window is emitted as soon as it exits.
//!
//! The map is read directly, but the process table follows the ring, which
//! is behind it: a window closed now may hold the calls of a process whose
//! exec record is still on its way. So a window is held until the stream
//! reaches the end of the drain that closed it, and is enriched then, before
//! any later record changes the table: its process is the image that made
//! the calls.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    time::Duration,
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use monitor_common::{PAIR_BUCKETS, SYSCALL_SLOTS, ThreadProfile};

use crate::{
    event::{ProfileDetail, time::boottime_ns},
    process::ProcessTable,
    syscalls::Abi,
};

/// Profile window settings.
#[derive(Debug, Clone)]
pub struct ProfileSettings {
    /// Window length.
    pub window: Duration,
}

impl Default for ProfileSettings {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(5),
        }
    }
}

/// One thread: its id and when its profile was created. Thread ids are
/// reused, so the id alone can name an exited thread and its successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ThreadKey {
    tid: u32,
    born_ns: u64,
}

impl ThreadKey {
    fn of(tid: u32, profile: &ThreadProfile) -> Self {
        Self {
            tid,
            born_ns: profile.born_ns,
        }
    }
}

/// What a drain found for a thread id.
#[derive(Debug, Clone, Copy)]
enum Found {
    /// This thread's profile.
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

/// A process's counts accumulated since its last window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProfileWindow {
    /// Process id.
    pub pid: u32,
    /// Window start, boot-time ns.
    pub start_ns: u64,
    /// Window end, boot-time ns.
    pub end_ns: u64,
    /// Syscalls in the window.
    pub total: u64,
    /// Count per syscall number.
    pub counts: BTreeMap<u16, u64>,
    /// Count per pair bucket.
    pub pairs: BTreeMap<u16, u64>,
    /// The process exited: this is its last window.
    pub final_window: bool,
}

impl ProfileWindow {
    /// The event detail, with canonical syscall names and wall-clock times.
    pub fn detail(&self, table: &ProcessTable) -> ProfileDetail {
        let abi = Abi::X86_64;
        ProfileDetail {
            window_start: table.wall_time(self.start_ns),
            window_end: table.wall_time(self.end_ns),
            total: self.total,
            counts: self
                .counts
                .iter()
                .map(|(&nr, &n)| (abi.name(u32::from(nr)), n))
                .collect(),
            pairs: self.pairs.clone(),
            final_window: self.final_window,
        }
    }
}

/// The open window of `pid`, stretched to cover `since..now`.
fn open_window(
    open: &mut HashMap<u32, ProfileWindow>,
    pid: u32,
    since: u64,
    now: u64,
) -> &mut ProfileWindow {
    let window = open.entry(pid).or_insert_with(|| ProfileWindow {
        pid,
        start_ns: since,
        ..Default::default()
    });
    window.start_ns = window.start_ns.min(since);
    window.end_ns = window.end_ns.max(now);
    window
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

/// Adds the growth of `profile` since `before` (all of it when `None`) to
/// the open window of `pid`, stretched over `since..now`, and moves `before`
/// up to `profile` as read at `now`.
fn add_growth(
    open: &mut HashMap<u32, ProfileWindow>,
    pid: u32,
    since: u64,
    now: u64,
    profile: &ThreadProfile,
    before: Option<&mut Snapshot>,
) {
    let window = open_window(open, pid, since, now);
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
        &mut window.counts,
        &mut window.total,
        &profile.counts,
        counts_before,
    );
    let mut pairs_total = 0;
    accumulate(
        &mut window.pairs,
        &mut pairs_total,
        &profile.pairs,
        pairs_before,
    );
}

/// The profile arithmetic, apart from the map: per-thread snapshots of
/// the kernel's counters, and per-process windows of their growth.
///
/// A thread's map entry and its exit record race with the drain. The kernel
/// deletes the entry, then submits the exit record, which reaches
/// [`ProfileBook::thread_exited`] some time later, through the ring and
/// the channel. A drain in between no longer finds the thread, yet its
/// snapshot is still needed: without it the exit record's counters would
/// all be counted again. So a thread missing from a drain keeps its
/// snapshot, marked departed, until its exit record arrives, or until a
/// record stamped well after that drain shows that the ring has moved past
/// the exit (its record was then lost, and the kernel counted it).
#[derive(Default)]
struct ProfileBook {
    snapshots: HashMap<ThreadKey, Snapshot>,
    open: HashMap<u32, ProfileWindow>,
    /// Closed windows waiting for the stream to catch up with the drain
    /// that closed them, with the time that drain finished reading.
    held: VecDeque<(u64, ProfileWindow)>,
    last_drain_ns: u64,
    /// The latest ring record's time (boot ns).
    latest_record_ns: u64,
}

/// How far past a departure a record must be stamped before the departed
/// thread's exit record is taken as lost. Records reach the ring in the
/// order they were reserved and are stamped right after; the margin covers
/// a program preempted between the two on a preemptible kernel.
const DEPARTURE_MARGIN_NS: u64 = 250_000_000;

impl ProfileBook {
    fn new(now_ns: u64) -> Self {
        Self {
            last_drain_ns: now_ns,
            ..Self::default()
        }
    }

    /// Adds `profile` (a thread's counters now) to its process's window.
    fn add(&mut self, tid: u32, pid: u32, profile: &ThreadProfile, now_ns: u64) {
        let last_drain = self.last_drain_ns;
        let snapshot = self
            .snapshots
            .entry(ThreadKey::of(tid, profile))
            .or_insert_with(|| Snapshot {
                taken_ns: last_drain.min(now_ns),
                departed_ns: None,
                counts: Box::new([0; SYSCALL_SLOTS]),
                pairs: Box::new([0; PAIR_BUCKETS]),
            });
        snapshot.departed_ns = None;
        let since = snapshot.taken_ns;
        add_growth(&mut self.open, pid, since, now_ns, profile, Some(snapshot));
    }

    /// A ring record stamped `ktime_ns` was read.
    fn saw_record(&mut self, ktime_ns: u64) {
        self.latest_record_ns = self.latest_record_ns.max(ktime_ns);
    }

    /// A thread exited with these final counters.
    fn thread_exited(&mut self, tid: u32, pid: u32, profile: &ThreadProfile, ktime_ns: u64) {
        // A thread never drained (most short-lived processes) has no
        // snapshot: everything since it started counts.
        let mut snapshot = self.snapshots.remove(&ThreadKey::of(tid, profile));
        let since = snapshot
            .as_ref()
            .map_or(self.last_drain_ns.min(ktime_ns), |s| s.taken_ns);
        add_growth(
            &mut self.open,
            pid,
            since,
            ktime_ns,
            profile,
            snapshot.as_mut(),
        );
    }

    /// The process exited: its held windows, which the stream has caught
    /// up with (its exit is the last of its records), then its final one,
    /// if it made any syscall since the last window.
    fn process_exited(&mut self, pid: u32, ktime_ns: u64) -> Vec<ProfileWindow> {
        let mut out = Vec::new();
        if self.held.iter().any(|(_, w)| w.pid == pid) {
            let (mine, others): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.held)
                .into_iter()
                .partition(|(_, w)| w.pid == pid);
            self.held = others;
            out.extend(mine.into_iter().map(|(_, w)| w));
        }
        if let Some(mut window) = self.open.remove(&pid) {
            window.end_ns = window.end_ns.max(ktime_ns);
            window.final_window = true;
            if window.total > 0 {
                out.push(window);
            }
        }
        out
    }

    /// Holds the windows closed by a drain that finished reading at
    /// `read_end`.
    fn hold(&mut self, read_end: u64, windows: Vec<ProfileWindow>) {
        self.held.extend(windows.into_iter().map(|w| (read_end, w)));
    }

    /// Whether windows wait for the stream to catch up.
    fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// The held windows the stream has reached: every record stamped
    /// before their drain ended has been read, either because a later one
    /// has (the caller asks before applying that one), or because the
    /// source says so (`source_caught_up`).
    fn released(&mut self, source_caught_up: Option<u64>) -> Vec<ProfileWindow> {
        let reached = self.latest_record_ns.max(source_caught_up.unwrap_or(0));
        let mut out = Vec::new();
        while self
            .held
            .front()
            .is_some_and(|&(read_end, _)| read_end < reached)
        {
            out.extend(self.held.pop_front().map(|(_, window)| window));
        }
        out
    }

    /// Ends a drain that started at `now` and found the thread ids in
    /// `found` by `read_end`: marks the other threads departed (including a
    /// thread whose id now names a newer thread), forgets those whose exit
    /// record the ring has moved past, and closes the open windows.
    fn close(
        &mut self,
        now: u64,
        read_end: u64,
        found: &HashMap<u32, Found>,
        final_drain: bool,
    ) -> Vec<ProfileWindow> {
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
        let mut out: Vec<ProfileWindow> = self
            .open
            .drain()
            .map(|(_, mut w)| {
                w.end_ns = now;
                w.final_window = final_drain;
                w
            })
            .filter(|w| w.total > 0)
            .collect();
        out.sort_by_key(|w| w.pid);
        out
    }
}

/// Drains the `PROFILES` map into windows.
pub struct Profiler {
    map: BpfHashMap<MapData, u32, ThreadProfile>,
    settings: ProfileSettings,
    book: ProfileBook,
    read_errors: u64,
}

impl Profiler {
    /// Wraps the map.
    pub fn new(map: BpfHashMap<MapData, u32, ThreadProfile>, settings: ProfileSettings) -> Self {
        Self {
            map,
            settings,
            book: ProfileBook::new(boottime_ns()),
            read_errors: 0,
        }
    }

    /// The window length.
    pub fn window(&self) -> Duration {
        self.settings.window
    }

    /// Loss counters of the userspace side.
    pub fn loss(&self) -> Vec<(String, u64)> {
        vec![("profile_read_error".into(), self.read_errors)]
    }

    /// A ring record stamped `ktime_ns` was read: how the profiler knows
    /// the ring has moved past a departed thread's exit.
    pub fn saw_record(&mut self, ktime_ns: u64) {
        self.book.saw_record(ktime_ns);
    }

    /// A thread exited with these final counters.
    pub fn thread_exited(&mut self, tid: u32, pid: u32, profile: &ThreadProfile, ktime_ns: u64) {
        self.book.thread_exited(tid, pid, profile, ktime_ns);
    }

    /// The process exited: its held windows, then its final one, if it
    /// made any syscall since the last window.
    pub fn process_exited(&mut self, pid: u32, ktime_ns: u64) -> Vec<ProfileWindow> {
        self.book.process_exited(pid, ktime_ns)
    }

    /// Whether closed windows wait for the stream to catch up.
    pub fn holding(&self) -> bool {
        self.book.holding()
    }

    /// The held windows the stream has caught up with. `source_caught_up`
    /// is a time (boot ns) before which the source has read every record,
    /// and every record it read has been accepted, when that is known.
    pub fn released(&mut self, source_caught_up: Option<u64>) -> Vec<ProfileWindow> {
        self.book.released(source_caught_up)
    }

    /// Reads every live thread's counters and closes the open windows,
    /// which are held until [`Profiler::released`]. With `final_drain`, the
    /// windows are marked final (the agent is stopping).
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
                Ok(profile) => {
                    found.insert(tid, Found::Thread(profile.born_ns));
                    self.book.add(tid, profile.pid, &profile, now);
                }
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(err) => {
                    found.insert(tid, Found::Unreadable);
                    self.read_errors += 1;
                    tracing::debug!(tid, error = %err, "cannot read a syscall profile");
                }
            }
        }
        let read_end = boottime_ns();
        let windows = self.book.close(now, read_end, &found, final_drain);
        self.book.hold(read_end, windows);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GETPPID: usize = 110;

    /// A thread of process `pid`, born at 1 ns, that has made `n` getppid
    /// calls.
    fn profile(pid: u32, n: u32) -> ThreadProfile {
        born(1, pid, n)
    }

    /// The same, born at `born_ns`.
    fn born(born_ns: u64, pid: u32, n: u32) -> ThreadProfile {
        let mut p = ThreadProfile {
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

    fn getppid_calls(windows: &[ProfileWindow]) -> u64 {
        windows
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
    fn drain(
        book: &mut ProfileBook,
        now: u64,
        live: &[(u32, ThreadProfile)],
    ) -> Vec<ProfileWindow> {
        let mut found = HashMap::new();
        for (tid, p) in live {
            found.insert(*tid, Found::Thread(p.born_ns));
            book.add(*tid, p.pid, p, now);
        }
        book.close(now, now + 1, &found, false)
    }

    /// A drain at 1,000 ns that finishes reading at 1,001 and holds its
    /// windows, as `Profiler::drain` does.
    fn held_drain(book: &mut ProfileBook, live: &[(u32, ThreadProfile)]) {
        let windows = drain(book, 1_000, live);
        book.hold(1_001, windows);
    }

    #[test]
    fn a_drain_between_a_threads_exit_and_its_record_counts_nothing_twice() {
        let mut book = ProfileBook::new(0);
        let first = drain(&mut book, 1_000, &[(7, profile(7, 100))]);
        assert_eq!(getppid_calls(&first), 100);
        // The thread exits (its entry is gone) and a drain runs before the
        // agent reads the exit record.
        let between = drain(&mut book, 2_000, &[]);
        assert!(between.is_empty());
        book.thread_exited(7, 7, &profile(7, 150), 1_500);
        let last = book.process_exited(7, 1_500);
        assert!(last.len() == 1 && last[0].final_window);
        assert_eq!(
            getppid_calls(&last),
            50,
            "only the calls after the first drain"
        );
        assert!(book.snapshots.is_empty());
    }

    #[test]
    fn a_departed_thread_is_forgotten_once_the_ring_moves_past_its_exit() {
        let mut book = ProfileBook::new(0);
        drain(&mut book, 1_000, &[(7, profile(7, 100))]);
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
        let mut book = ProfileBook::new(0);
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
        let mut book = ProfileBook::new(0);
        held_drain(&mut book, &[(7, profile(7, 100)), (8, profile(8, 5))]);
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
        let mut book = ProfileBook::new(0);
        held_drain(&mut book, &[(7, profile(7, 100))]);
        assert!(
            book.released(Some(1_001)).is_empty(),
            "the source is not past it"
        );
        assert_eq!(book.released(Some(1_002)).len(), 1);
    }

    #[test]
    fn an_exit_releases_its_processs_held_windows_before_its_final_one() {
        let mut book = ProfileBook::new(0);
        held_drain(&mut book, &[(7, profile(7, 100)), (8, profile(8, 5))]);
        book.thread_exited(7, 7, &profile(7, 130), 1_100);
        let out = book.process_exited(7, 1_100);
        let shape: Vec<_> = out.iter().map(|w| (w.pid, w.final_window)).collect();
        assert_eq!(shape, [(7, false), (7, true)]);
        assert_eq!(getppid_calls(&out), 130);
        assert!(book.holding(), "the other process's window still waits");
    }

    #[test]
    fn a_thread_never_drained_counts_everything_at_exit() {
        let mut book = ProfileBook::new(0);
        book.thread_exited(9, 9, &profile(9, 42), 500);
        let last = book.process_exited(9, 500);
        assert_eq!((getppid_calls(&last), last[0].start_ns), (42, 0));
    }
}
