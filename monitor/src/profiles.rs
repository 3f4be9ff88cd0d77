//! Syscall profile windows from the kernel's per-thread counters.
//!
//! The kernel only ever increments (see `monitor_common::profile`). Every
//! window the agent reads each thread's counters, subtracts the snapshot it
//! took last time (wrapping), adds the difference to the thread's process,
//! and emits one `syscall_profile` event per process that made syscalls. A
//! thread's final counters arrive with its exit record, so its last window is
//! never lost; a process's final window is emitted as soon as it exits.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
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

/// Counters of one thread as last read.
struct Snapshot {
    pid: u32,
    /// When they were read (boot ns): the start of what the next read adds.
    taken_ns: u64,
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
                .map(|(&nr, &n)| (abi.name(u32::from(nr)).into_owned(), n))
                .collect(),
            pairs: self.pairs.clone(),
            final_window: self.final_window,
        }
    }
}

/// Drains the `PROFILES` map into windows.
pub struct Profiler {
    map: BpfHashMap<MapData, u32, ThreadProfile>,
    settings: ProfileSettings,
    snapshots: HashMap<u32, Snapshot>,
    open: HashMap<u32, ProfileWindow>,
    last_drain_ns: u64,
    read_errors: u64,
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
    for (i, &value) in now.iter().enumerate() {
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

impl Profiler {
    /// Wraps the map.
    pub fn new(map: BpfHashMap<MapData, u32, ThreadProfile>, settings: ProfileSettings) -> Self {
        Self {
            map,
            settings,
            snapshots: HashMap::new(),
            open: HashMap::new(),
            last_drain_ns: boottime_ns(),
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

    /// Adds `profile` (a thread's counters now) to its process's window.
    fn add(&mut self, tid: u32, pid: u32, profile: &ThreadProfile, now_ns: u64) {
        let last_drain = self.last_drain_ns;
        let snapshot = self.snapshots.entry(tid).or_insert_with(|| Snapshot {
            pid,
            taken_ns: last_drain.min(now_ns),
            counts: Box::new([0; SYSCALL_SLOTS]),
            pairs: Box::new([0; PAIR_BUCKETS]),
        });
        if snapshot.pid != pid {
            // The tid was reused by another process: start from zero.
            snapshot.pid = pid;
            snapshot.counts.fill(0);
            snapshot.pairs.fill(0);
        }
        let since = snapshot.taken_ns;
        snapshot.taken_ns = now_ns;
        let window = open_window(&mut self.open, pid, since, now_ns);
        accumulate(
            &mut window.counts,
            &mut window.total,
            &profile.counts,
            Some(&mut snapshot.counts[..]),
        );
        let mut pairs_total = 0;
        accumulate(
            &mut window.pairs,
            &mut pairs_total,
            &profile.pairs,
            Some(&mut snapshot.pairs[..]),
        );
    }

    /// A thread exited with these final counters.
    pub fn thread_exited(&mut self, tid: u32, pid: u32, profile: &ThreadProfile, ktime_ns: u64) {
        match self.snapshots.get(&tid) {
            Some(s) if s.pid == pid => {
                self.add(tid, pid, profile, ktime_ns);
                self.snapshots.remove(&tid);
            }
            _ => {
                // Never drained (most short-lived processes): everything
                // since it started counts, and no snapshot is needed.
                self.snapshots.remove(&tid);
                let since = self.last_drain_ns.min(ktime_ns);
                let window = open_window(&mut self.open, pid, since, ktime_ns);
                accumulate(&mut window.counts, &mut window.total, &profile.counts, None);
                let mut pairs_total = 0;
                accumulate(&mut window.pairs, &mut pairs_total, &profile.pairs, None);
            }
        }
    }

    /// The process exited: its final window, if it made any syscall since
    /// the last one.
    pub fn process_exited(&mut self, pid: u32, ktime_ns: u64) -> Option<ProfileWindow> {
        let mut window = self.open.remove(&pid)?;
        window.end_ns = window.end_ns.max(ktime_ns);
        window.final_window = true;
        (window.total > 0).then_some(window)
    }

    /// Reads every live thread's counters and closes the open windows.
    /// With `final_drain`, windows are marked final (the agent is stopping).
    pub fn drain(&mut self, final_drain: bool) -> Vec<ProfileWindow> {
        let now = boottime_ns();
        let mut seen = HashSet::new();
        let keys: Vec<u32> = self.map.keys().filter_map(Result::ok).collect();
        for tid in keys {
            // A thread may exit between listing and reading: not an error.
            match self.map.get(&tid, 0) {
                Ok(profile) => {
                    seen.insert(tid);
                    self.add(tid, profile.pid, &profile, now);
                }
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(err) => {
                    self.read_errors += 1;
                    tracing::debug!(tid, error = %err, "cannot read a syscall profile");
                }
            }
        }
        // Threads whose exit record was lost (counted in the kernel) vanish
        // from the map; forget their snapshots.
        self.snapshots.retain(|tid, _| seen.contains(tid));
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
