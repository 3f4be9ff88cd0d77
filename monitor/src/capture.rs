//! Live capture: probes, ring-buffer source, process table and enrichment,
//! yielding finished [`Event`]s in order.
//!
//! ```text
//! kernel ring buffer -> source task (decode) -> bounded channel
//!     -> Capture::next (process table, enrichment, loss and counts ticks)
//! ```
//!
//! Stopping is two-phase: [`Capture::stop_sources`] stops reading new
//! records (the source drains what the ring already holds), then `next`
//! returns the remaining events and finally `None`.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    event::{
        Detail, Event, LossDetail,
        decode::{KernelEvent, Payload},
        time::boottime_ns,
    },
    kernel::{
        ProbeError, ProbeSettings, Probes,
        counters::{KernelCounters, is_loss},
        source::{self, SourceStats},
    },
    process::{ProcessTable, SeedStats},
    sensitive::SensitivePaths,
    syscall_counts::{CountDrainer, CountSettings},
};

/// The kernel's map of sensitive inodes, the patterns it is filled from,
/// and the kernel's cache of verdicts derived from it.
struct SensitiveMap {
    map: aya::maps::HashMap<aya::maps::MapData, monitor_common::InodeKey, u8>,
    loaded: std::collections::HashSet<monitor_common::InodeKey>,
    verdicts: aya::maps::HashMap<aya::maps::MapData, [u64; 2], [u64; 2]>,
}

impl SensitiveMap {
    /// Makes the map hold exactly the inodes the read patterns name now.
    fn refresh(&mut self, paths: &SensitivePaths) {
        let wanted = paths.read_inodes();
        if wanted == self.loaded {
            return;
        }
        for key in self.loaded.difference(&wanted) {
            let _ = self.map.remove(key);
        }
        for key in wanted.difference(&self.loaded) {
            if let Err(err) = self.map.insert(key, 1, 0) {
                tracing::warn!(error = %err, "cannot add a sensitive location to the kernel map");
            }
        }
        self.loaded = wanted;
        self.forget_verdicts();
    }

    /// Puts the map back to what the agent loaded, if someone changed it;
    /// says what was changed.
    fn verify(&mut self) -> Option<String> {
        let now: std::collections::HashSet<monitor_common::InodeKey> =
            self.map.keys().filter_map(Result::ok).collect();
        let removed: Vec<_> = self.loaded.difference(&now).copied().collect();
        let added: Vec<_> = now.difference(&self.loaded).copied().collect();
        if removed.is_empty() && added.is_empty() {
            return None;
        }
        for key in &removed {
            let _ = self.map.insert(key, 1, 0);
        }
        for key in &added {
            let _ = self.map.remove(key);
        }
        self.forget_verdicts();
        Some(format!(
            "map SENSITIVE (the files whose reads the kernel flags) was changed, {} of its {} entries removed and {} added, put back",
            removed.len(),
            self.loaded.len(),
            added.len()
        ))
    }

    fn forget_verdicts(&mut self) {
        // Cached directory verdicts were derived from the old set. (One being
        // inserted by a racing open lives out its one-second life.)
        let stale: Vec<[u64; 2]> = self.verdicts.keys().filter_map(Result::ok).collect();
        for key in &stale {
            let _ = self.verdicts.remove(key);
        }
    }
}

/// Capture settings.
#[derive(Debug, Clone)]
pub struct CaptureSettings {
    /// What the kernel side does.
    pub probes: ProbeSettings,
    /// Syscall counts.
    pub counts: CountSettings,
    /// Capacity of the source -> enrichment channel (events).
    pub channel_capacity: usize,
    /// How often loss counters are checked and a `loss` event emitted if they grew.
    pub loss_interval: Duration,
    /// Sensitive locations.
    pub sensitive: SensitivePaths,
    /// How often the sensitive locations are re-resolved (new home
    /// directories, replaced files).
    pub sensitive_refresh: Duration,
}

impl Default for CaptureSettings {
    fn default() -> Self {
        Self {
            probes: ProbeSettings::default(),
            counts: CountSettings::default(),
            channel_capacity: 8192,
            loss_interval: Duration::from_secs(1),
            sensitive: SensitivePaths::default(),
            sensitive_refresh: Duration::from_secs(30),
        }
    }
}

/// Errors starting a capture.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The probes could not be loaded.
    #[error(transparent)]
    Probes(#[from] ProbeError),
    /// /proc could not be read.
    #[error("cannot read /proc to seed the process table")]
    Seed(#[source] std::io::Error),
    /// The ring buffer could not be polled.
    #[error("cannot poll the ring buffer")]
    Poll(#[source] std::io::Error),
}

/// How often held counts are checked when no record arrives.
const COUNTS_RELEASE_CHECK: std::time::Duration = std::time::Duration::from_millis(50);

/// A running capture; see the module docs.
pub struct Capture {
    probes: Probes,
    counters: KernelCounters,
    table: ProcessTable,
    /// The wall clock's distance from the timeline, as last reported (ns).
    wall_drift_reported: i128,
    drainer: Option<CountDrainer>,
    rx: mpsc::Receiver<KernelEvent>,
    source: Option<JoinHandle<std::io::Result<()>>>,
    shutdown: CancellationToken,
    stats: Arc<SourceStats>,
    loss_reported: BTreeMap<String, u64>,
    pending: VecDeque<Event>,
    loss_tick: tokio::time::Interval,
    drain_tick: tokio::time::Interval,
    release_tick: tokio::time::Interval,
    seed: SeedStats,
    events_out: u64,
    sensitive: SensitivePaths,
    sensitive_map: Option<SensitiveMap>,
    sensitive_tick: tokio::time::Interval,
    filtered: u64,
    integrity_violations: u64,
    identifier: crate::process::exe_identity::Identifier,
    /// The kernel's per-process budgets of file records, and what of their
    /// refusals was reported already.
    file_budget: Option<aya::maps::HashMap<aya::maps::MapData, u32, monitor_common::FileBudget>>,
    budget_seen: std::collections::HashMap<u32, u64>,
}

/// Lets the agent yield the CPU while its source keeps up (see `sched`).
fn spawn_scheduling_guard(stats: std::sync::Weak<SourceStats>, shutdown: CancellationToken) {
    crate::sched::spawn_guard(move || {
        let stats = stats.upgrade().filter(|_| !shutdown.is_cancelled())?;
        let caught_up = stats.caught_up_ns.load(Ordering::Acquire);
        Some(Duration::from_nanos(
            boottime_ns().saturating_sub(caught_up),
        ))
    });
}

impl Capture {
    /// Loads and attaches the probes, seeds the process table and starts the
    /// source. Must run inside a tokio runtime.
    pub fn start(settings: &CaptureSettings) -> Result<Self, CaptureError> {
        let mut probes = Probes::load(&settings.probes)?;
        let rings = probes.take_rings()?;
        let counters = probes.take_counters()?;
        let drainer = if settings.probes.syscall_counts {
            Some(CountDrainer::new(
                probes.take_counts()?,
                settings.counts.clone(),
            ))
        } else {
            None
        };
        let file_budget = if settings.probes.security_events {
            Some(probes.take_file_budget()?)
        } else {
            None
        };
        let sensitive_map = if settings.probes.security_events {
            let mut map = SensitiveMap {
                map: probes.take_sensitive()?,
                loaded: Default::default(),
                verdicts: probes.take_dir_verdicts()?,
            };
            map.refresh(&settings.sensitive);
            Some(map)
        } else {
            None
        };
        let mut sensitive_tick = tokio::time::interval(settings.sensitive_refresh);
        sensitive_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Seed after attaching, so no process falls between scan and events.
        let mut table = ProcessTable::new();
        let seed = table.seed().map_err(CaptureError::Seed)?;

        let (tx, rx) = mpsc::channel(settings.channel_capacity);
        let stats = Arc::new(SourceStats::default());
        let shutdown = CancellationToken::new();
        let source = tokio::spawn(source::run(rings, tx, stats.clone(), shutdown.clone()));
        spawn_scheduling_guard(Arc::downgrade(&stats), shutdown.clone());
        let mut loss_tick = tokio::time::interval(settings.loss_interval);
        loss_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drain_tick = tokio::time::interval(settings.counts.drain_every);
        drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut release_tick = tokio::time::interval(COUNTS_RELEASE_CHECK);
        release_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Self {
            probes,
            counters,
            table,
            wall_drift_reported: 0,
            drainer,
            rx,
            source: Some(source),
            shutdown,
            stats,
            loss_reported: BTreeMap::new(),
            pending: VecDeque::new(),
            loss_tick,
            drain_tick,
            release_tick,
            seed,
            events_out: 0,
            sensitive: settings.sensitive.clone(),
            sensitive_map,
            sensitive_tick,
            filtered: 0,
            integrity_violations: 0,
            identifier: Default::default(),
            file_budget,
            budget_seen: Default::default(),
        })
    }

    /// The probes (attached programs, settings).
    pub fn probes(&self) -> &Probes {
        &self.probes
    }

    /// What seeding from /proc found.
    pub fn seed_stats(&self) -> SeedStats {
        self.seed
    }

    /// The process table.
    pub fn table(&self) -> &ProcessTable {
        &self.table
    }

    /// Events returned so far.
    pub fn events_out(&self) -> u64 {
        self.events_out
    }

    /// Records received from the kernel so far.
    pub fn records_in(&self) -> u64 {
        self.stats.records.load(Ordering::Relaxed)
    }

    /// Stops reading new records; `next` then drains and ends.
    pub fn stop_sources(&self) {
        self.shutdown.cancel();
    }

    /// The next event, or `None` once stopped and drained.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.ready_event() {
                return Some(event);
            }
            tokio::select! {
                record = self.rx.recv() => match record {
                    Some(record) => self.accept(record),
                    None => {
                        if !self.finish().await {
                            return None;
                        }
                    }
                },
                _ = self.loss_tick.tick() => {
                    self.table.expire(boottime_ns());
                    self.check_loss();
                    self.check_wall_clock();
                }
                _ = self.drain_tick.tick() => self.drain_counts(false),
                // Held counts wait for the stream; on a quiet host
                // no record arrives to wake us for them.
                _ = self.release_tick.tick(), if self.holding_counts() => {}
                _ = self.sensitive_tick.tick() => {
                    if let Some(map) = &mut self.sensitive_map {
                        map.refresh(&self.sensitive);
                    }
                }
            }
        }
    }

    /// An event finished and ready to hand on, if there is one.
    fn ready_event(&mut self) -> Option<Event> {
        self.release_counts(true);
        let event = self.pending.pop_front()?;
        self.events_out += 1;
        Some(event)
    }

    /// The next events: waits for one, then takes what is ready without
    /// waiting (events already enriched, records already in the channel),
    /// up to `max`. Handing a batch to the next stage costs one wake-up
    /// instead of one per event. `None` once stopped and drained.
    pub async fn next_batch(&mut self, max: usize) -> Option<Vec<Event>> {
        let first = self.next().await?;
        let mut batch = vec![first];
        while batch.len() < max {
            if let Some(event) = self.ready_event() {
                batch.push(event);
                continue;
            }
            match self.rx.try_recv() {
                Ok(record) => self.accept(record),
                Err(_) => break,
            }
        }
        Some(batch)
    }

    /// Called when the source has ended: flushes the last counts and
    /// loss report. Returns true if that queued events.
    async fn finish(&mut self) -> bool {
        if let Some(source) = self.source.take() {
            match source.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::error!(error = %err, "ring-buffer source failed"),
                Err(err) => tracing::error!(error = %err, "ring-buffer source panicked"),
            }
            self.drain_counts(true);
            self.release_counts(true);
            self.check_loss();
            return !self.pending.is_empty();
        }
        false
    }

    fn accept(&mut self, record: KernelEvent) {
        if let Some(drainer) = &mut self.drainer {
            drainer.saw_record(record.ktime_ns);
        }
        // Before the record changes the table: counts closed before it
        // was stamped are enriched with the table as it was then. (Not on
        // the source's word: the record in hand has left the channel, so
        // an empty channel does not mean it was applied.)
        self.release_counts(false);
        self.table.apply(&record);
        match record.payload {
            Payload::Event(mut detail) => {
                if !self.keep(&mut detail) {
                    self.filtered += 1;
                    return;
                }
                if let (Detail::Exec(exec), Some(task)) = (&mut detail, &record.task) {
                    exec.identity = Some(self.identifier.identify(task.pid, exec));
                }
                if let (Detail::Exit(_), Some(task), Some(drainer)) =
                    (&detail, &record.task, &mut self.drainer)
                {
                    for drained in drainer.process_exited(task.pid, record.ktime_ns) {
                        self.push_counts(drained);
                    }
                }
                let event = self.enrich(record.ktime_ns, record.task.as_ref(), detail);
                self.pending.push_back(event);
            }
            Payload::ThreadExit { tid, pid, counts } => {
                if let Some(drainer) = &mut self.drainer {
                    drainer.thread_exited(tid, pid, &counts, record.ktime_ns);
                }
            }
        }
    }

    /// Events deliberately not reported (non-sensitive unlinks, renames and
    /// refused opens): filtering, not loss.
    pub fn filtered(&self) -> u64 {
        self.filtered
    }

    /// Applies the sensitive-location policy to file events: flags them,
    /// and says whether to keep them.
    fn keep(&self, detail: &mut Detail) -> bool {
        match detail {
            Detail::FileOpen(f) if f.result < 0 => {
                // Refused opens: kept when they aimed at a sensitive location.
                let path = f.path.as_bytes();
                f.sensitive = self.sensitive.read_matches(path)
                    || (f.write && self.sensitive.write_matches(path));
                f.sensitive
            }
            Detail::FileOpen(f) => {
                if f.write && !f.sensitive {
                    f.sensitive = self.sensitive.write_matches(f.path.as_bytes());
                }
                true
            }
            Detail::FileSymlink(f) => {
                // The link made is what lands in a sensitive place.
                f.sensitive = self.sensitive.write_matches(f.path.as_bytes());
                f.sensitive
            }
            Detail::FileUnlink(f) | Detail::FileRename(f) | Detail::FileLink(f) => {
                f.sensitive = self.sensitive.write_matches(f.path.as_bytes())
                    || f.new_path
                        .as_ref()
                        .is_some_and(|p| self.sensitive.write_matches(p.as_bytes()));
                f.sensitive
            }
            _ => true,
        }
    }

    /// Adds process, parent and (on exec) ancestry to a detail.
    fn enrich(
        &mut self,
        ktime_ns: u64,
        task: Option<&crate::event::decode::TaskFacts>,
        detail: Detail,
    ) -> Event {
        let mut event = Event::new(self.table.wall_time(ktime_ns), detail);
        if let Some(task) = task {
            event.process = self.table.process(task.pid, Some(task.tid));
            event.parent = self.table.parent(task.pid);
            if matches!(event.detail, Detail::Exec(_)) {
                event.ancestry = self.table.ancestry(task.pid);
            }
        }
        event
    }

    fn drain_counts(&mut self, final_drain: bool) {
        if let Some(drainer) = &mut self.drainer {
            drainer.drain(final_drain);
        }
    }

    fn holding_counts(&self) -> bool {
        self.drainer.as_ref().is_some_and(CountDrainer::holding)
    }

    /// Emits the held counts that the stream has caught up with
    /// (see `counts`), so their processes are known as they were. With
    /// `ask_source`, the source's progress counts too: only when no record
    /// is between the channel and the table.
    fn release_counts(&mut self, ask_source: bool) {
        let Some(drainer) = &mut self.drainer else {
            return;
        };
        if !drainer.holding() {
            return;
        }
        // The source publishes its progress after sending what it read; an
        // empty channel then means all of that has been accepted.
        let source_caught_up = if !ask_source {
            None
        } else if self.source.is_none() {
            Some(u64::MAX) // ended and drained: nothing more will come
        } else {
            let caught_up = self.stats.caught_up_ns.load(Ordering::Acquire);
            self.rx.is_empty().then_some(caught_up)
        };
        for drained in drainer.released(source_caught_up) {
            self.push_counts(drained);
        }
    }

    fn push_counts(&mut self, drained: crate::syscall_counts::DrainedCounts) {
        let time = self.table.wall_time(drained.end_ns);
        let mut event = Event::new(time, Detail::SyscallCounts(drained.detail(&self.table)));
        event.process = self.table.process(drained.pid, None);
        event.parent = self.table.parent(drained.pid);
        self.pending.push_back(event);
    }

    /// All loss counters since start (kernel and userspace).
    pub fn loss_totals(&self) -> BTreeMap<String, u64> {
        let mut totals: BTreeMap<String, u64> = self
            .counters
            .read()
            .into_iter()
            .filter(|(k, _)| is_loss(k))
            .collect();
        let decode_errors = self.stats.decode_errors.load(Ordering::Relaxed);
        if decode_errors > 0 {
            totals.insert("decode_error".into(), decode_errors);
        }
        if let Some(drainer) = &self.drainer {
            for (k, v) in drainer.loss() {
                if v > 0 {
                    totals.insert(k, v);
                }
            }
        }
        totals
    }

    /// Fault counters (degraded fields, not lost events).
    pub fn fault_totals(&self) -> BTreeMap<String, u64> {
        let mut faults: BTreeMap<String, u64> = self
            .counters
            .read()
            .into_iter()
            .filter(|(k, _)| !is_loss(k))
            .collect();
        if self.identifier.not_hashed > 0 {
            faults.insert("executable_not_hashed".into(), self.identifier.not_hashed);
        }
        if self.integrity_violations > 0 {
            faults.insert("sensor_tampered".into(), self.integrity_violations);
        }
        let early = self.table.expired_early();
        if early > 0 {
            faults.insert("exited_process_forgotten_early".into(), early);
        }
        faults
    }

    /// Checks that the sensor is still what the agent set up (hooks
    /// attached, maps as filled), putting back what it can. Returns one
    /// line per difference (see `kernel::integrity`); each is counted.
    pub fn check_integrity(&mut self) -> Vec<String> {
        let mut problems = self.probes.check_integrity();
        if let Some(map) = &mut self.sensitive_map
            && let Some(problem) = map.verify()
        {
            problems.push(problem);
        }
        self.integrity_violations += problems.len() as u64;
        problems
    }

    /// Queues a `loss` event if any loss counter grew since the last one.
    fn check_loss(&mut self) {
        let totals = self.loss_totals();
        let counts: BTreeMap<String, u64> = totals
            .iter()
            .filter_map(|(k, &v)| {
                let before = self.loss_reported.get(k).copied().unwrap_or(0);
                (v > before).then(|| (k.clone(), v - before))
            })
            .collect();
        if counts.is_empty() {
            return;
        }
        let by_process = if counts.contains_key("rate_limited.file") {
            self.rate_limited_by_process()
        } else {
            BTreeMap::new()
        };
        let top_process = by_process
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(pid, n)| self.describe_process(*pid, *n));
        tracing::warn!(?counts, top = ?top_process, "events lost");
        self.loss_reported = totals.clone();
        // On the records' timeline, not the wall clock: after a step of
        // the wall clock, a loss stamped "now" expired every open window.
        let time = self.table.wall_time(boottime_ns());
        self.pending.push_back(Event::new(
            time,
            Detail::Loss(LossDetail {
                counts,
                totals,
                by_process,
                top_process,
            }),
        ));
    }

    /// Measures the wall clock against the timeline events are stamped on:
    /// what is sent out follows it, and a step over a second is logged.
    fn check_wall_clock(&mut self) {
        let drift = self
            .table
            .clock()
            .wall_drift_ns(boottime_ns(), crate::event::Timestamp::now().0);
        crate::event::time::set_wall_correction(drift);
        if (drift - self.wall_drift_reported).abs() > 1_000_000_000 {
            self.wall_drift_reported = drift;
            tracing::warn!(
                seconds = drift as f64 / 1e9,
                "the wall clock moved away from the time the agent started with; windows and learning stay on the agent's timeline (wall time at start plus elapsed boot time), and the times sent to sinks follow the wall clock"
            );
        }
    }

    /// File records refused per process since the last report, from the
    /// kernel's `FILE_BUDGET` map.
    fn rate_limited_by_process(&mut self) -> BTreeMap<u32, u64> {
        let Some(budgets) = &self.file_budget else {
            return BTreeMap::new();
        };
        let mut out = BTreeMap::new();
        let mut now = std::collections::HashMap::new();
        for (pid, budget) in budgets.iter().filter_map(Result::ok) {
            if budget.suppressed == 0 {
                continue;
            }
            let before = self.budget_seen.get(&pid).copied().unwrap_or(0);
            if budget.suppressed > before {
                out.insert(pid, budget.suppressed - before);
            }
            now.insert(pid, budget.suppressed);
        }
        // Entries the kernel evicted are forgotten here too.
        self.budget_seen = now;
        out
    }

    /// `pid 42 (/usr/bin/x, uid 65534): 1234 file events`, from the table.
    fn describe_process(&self, pid: u32, lost: u64) -> String {
        let who = self.table.get(pid).map(|p| {
            let exe = p.exe.as_ref().map_or_else(
                || p.comm.to_string_lossy().into_owned(),
                |e| e.to_string_lossy().into_owned(),
            );
            format!(" ({exe}, uid {})", p.uid)
        });
        format!("pid {pid}{}: {lost} file events", who.unwrap_or_default())
    }
}
