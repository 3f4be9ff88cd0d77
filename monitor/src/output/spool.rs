//! The spool: every record is written to disk before any sink sees it and
//! removed only once every sink acknowledged it (at-least-once delivery; a
//! record's id lets a SIEM drop duplicates after a crash).
//!
//! Layout under the spool directory (0700, files 0600):
//!
//! ```text
//! findings/00000000000000000001.seg   appended records of one class
//! activity/00000000000000000001.seg   (raw events, heartbeats, health)
//! cursors/<sink>.json                 how far each sink has acknowledged
//! ```
//!
//! A segment is a sequence of records, each with a magic, a length and a
//! CRC-32 ([`super::spool_format`]). Damage (a torn write, a zero-filled
//! tail after a crash, a flipped bit) is detected, skipped and counted: at
//! the end of a segment it is cut off at the next start; in the middle,
//! readers step over it to the next good record.
//!
//! Bounded: past `max_bytes`, whole segments are evicted oldest first, raw
//! activity before findings, and every record evicted before all sinks had
//! it is counted as dropped (findings are the last thing dropped). When the
//! disk refuses writes (full, read-only, permissions), records are held in
//! memory (bounded, same priority) and the failure is reported until the disk
//! works again.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::spool_format::{self, Item, Layout};

/// The two classes of records, in delivery priority order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Findings: delivered first, dropped last.
    Findings,
    /// Raw activity, heartbeats, health: dropped first.
    Activity,
}

impl Class {
    const ALL: [Class; 2] = [Class::Findings, Class::Activity];

    fn dir(self) -> &'static str {
        match self {
            Class::Findings => "findings",
            Class::Activity => "activity",
        }
    }
}

/// Spool errors.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file operation failed.
    #[error("spool: cannot {action} {path}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Spool settings.
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    /// Largest total size on disk.
    pub max_bytes: u64,
    /// Start a new segment past this size.
    pub segment_bytes: u64,
    /// Records held in memory while the disk fails.
    pub memory_records: usize,
}

impl Default for SpoolSettings {
    fn default() -> Self {
        Self {
            max_bytes: 256 << 20,
            segment_bytes: 4 << 20,
            memory_records: 20_000,
        }
    }
}

/// A position in a class: segment number and byte offset in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    /// Segment number.
    pub segment: u64,
    /// Byte offset.
    pub offset: u64,
}

/// A record read for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its class.
    pub class: Class,
    /// Where it starts (disk), or its memory sequence number.
    pub at: Position,
    /// Where the next record starts.
    pub next: Position,
    /// In memory (the disk was failing when it was appended).
    pub in_memory: bool,
    /// The JSON payload.
    pub payload: Vec<u8>,
}

/// Counters for status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolStats {
    /// Bytes on disk.
    pub bytes: u64,
    /// Records appended since start.
    pub appended: u64,
    /// Findings dropped because the spool was full.
    pub dropped_findings: u64,
    /// Activity records dropped because the spool was full.
    pub dropped_activity: u64,
    /// Records held in memory because the disk failed.
    pub in_memory: u64,
    /// The disk error, while the spool is degraded.
    pub degraded: Option<String>,
    /// Damaged stretches found in segments (torn writes, zeros, flipped
    /// bits) and skipped; each may have held records, which are lost.
    #[serde(default)]
    pub damaged: u64,
}

#[derive(Debug, Default)]
struct ClassState {
    /// Segment numbers present, oldest first, with their sizes.
    segments: BTreeMap<u64, u64>,
    /// Segments written by an earlier version, without the record magic.
    legacy: BTreeSet<u64>,
    /// The segment being appended to.
    writer: Option<(u64, File)>,
    /// The number the next segment gets. Never reused: a sink's cursor
    /// may still name a collected segment, and a new segment under that
    /// number would be read from the cursor's offset, mid-record (or
    /// skipped whole).
    next_segment: u64,
}

struct MemoryRecord {
    class: Class,
    seq: u64,
    payload: Vec<u8>,
}

struct Inner {
    classes: BTreeMap<Class, ClassState>,
    cursors: BTreeMap<String, BTreeMap<Class, Position>>,
    memory: VecDeque<MemoryRecord>,
    memory_next: u64,
    memory_cursors: BTreeMap<String, u64>,
    /// Damaged stretches already counted: (class, segment, offset).
    damage_seen: BTreeSet<(Class, u64, u64)>,
    stats: SpoolStats,
}

/// The spool; shared between the writer and one reader per sink.
pub struct Spool {
    dir: PathBuf,
    settings: SpoolSettings,
    inner: Mutex<Inner>,
    notify: tokio::sync::Notify,
}

fn seg_name(n: u64) -> String {
    format!("{n:020}.seg")
}

fn create_dir(path: &Path) -> Result<(), SpoolError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io("create directory", path))
}

/// What opening found in a segment.
struct Checked {
    layout: Layout,
    /// Bytes to keep: up to the end of the last good record.
    keep: u64,
    /// Damaged stretches before that (offsets), which readers step over.
    damaged: Vec<u64>,
    /// A damaged stretch at the end, cut off.
    torn_tail: bool,
}

fn check_segment(path: &Path) -> Result<Checked, SpoolError> {
    let mut f = File::open(path).map_err(io("open", path))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(io("read", path))?;
    let layout = Layout::of(&bytes);
    let items = spool_format::scan(&bytes, layout, 0);
    let keep = items
        .iter()
        .rev()
        .find(|i| matches!(i, Item::Record { .. }))
        .map_or(0, Item::end);
    let damaged = items
        .iter()
        .filter_map(|i| match i {
            Item::Damaged { at, .. } if *at < keep => Some(*at as u64),
            _ => None,
        })
        .collect();
    Ok(Checked {
        layout,
        keep: keep as u64,
        damaged,
        torn_tail: keep < bytes.len(),
    })
}

impl Spool {
    /// Opens (or creates) a spool for these sinks, recovering torn tails.
    pub fn open(
        dir: &Path,
        settings: SpoolSettings,
        sinks: &[String],
    ) -> Result<Arc<Self>, SpoolError> {
        create_dir(dir)?;
        create_dir(&dir.join("cursors"))?;
        let mut classes = BTreeMap::new();
        let mut total = 0;
        let mut damaged = 0;
        let mut damage_seen = BTreeSet::new();
        for class in Class::ALL {
            let cdir = dir.join(class.dir());
            create_dir(&cdir)?;
            let mut state = ClassState::default();
            for entry in std::fs::read_dir(&cdir).map_err(io("list", &cdir))? {
                let entry = entry.map_err(io("list", &cdir))?;
                let name = entry.file_name();
                let Some(n) = name
                    .to_str()
                    .and_then(|n| n.strip_suffix(".seg"))
                    .and_then(|n| n.parse::<u64>().ok())
                else {
                    continue;
                };
                let path = entry.path();
                let checked = check_segment(&path)?;
                let len = entry.metadata().map_err(io("stat", &path))?.len();
                if checked.torn_tail {
                    tracing::warn!(segment = %path.display(), kept = checked.keep, cut = len - checked.keep, "spool: cut a damaged tail (torn write or zeros) off a segment");
                    OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|f| f.set_len(checked.keep))
                        .map_err(io("truncate", &path))?;
                    damaged += 1;
                }
                for at in checked.damaged {
                    tracing::warn!(segment = %path.display(), offset = at, "spool: a damaged record inside a segment is skipped");
                    damage_seen.insert((class, n, at));
                }
                if checked.layout == Layout::Legacy {
                    state.legacy.insert(n);
                }
                total += checked.keep;
                state.segments.insert(n, checked.keep);
            }
            classes.insert(class, state);
        }
        let mut cursors = BTreeMap::new();
        for sink in sinks {
            let path = cursor_path(dir, sink);
            let cursor: BTreeMap<Class, Position> = match std::fs::read(&path) {
                Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                    tracing::warn!(cursor = %path.display(), error = %e, "spool: unreadable cursor; the sink gets everything again");
                    BTreeMap::new()
                }),
                Err(_) => BTreeMap::new(),
            };
            cursors.insert(sink.clone(), cursor);
        }
        for (class, state) in &mut classes {
            let named_by_cursor = cursors
                .values()
                .filter_map(|c| c.get(class).map(|p| p.segment))
                .max()
                .unwrap_or(0);
            let present = state.segments.last_key_value().map_or(0, |(n, _)| *n);
            state.next_segment = present.max(named_by_cursor) + 1;
        }
        let spool = Arc::new(Self {
            dir: dir.to_owned(),
            settings,
            inner: Mutex::new(Inner {
                classes,
                cursors,
                memory: VecDeque::new(),
                memory_next: 1,
                memory_cursors: sinks.iter().map(|s| (s.clone(), 0)).collect(),
                stats: SpoolStats {
                    bytes: total,
                    damaged: damaged + damage_seen.len() as u64,
                    ..Default::default()
                },
                damage_seen,
            }),
            notify: tokio::sync::Notify::new(),
        });
        Ok(spool)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Current counters.
    pub fn stats(&self) -> SpoolStats {
        self.inner.lock().expect("spool lock").stats.clone()
    }

    /// Records not yet acknowledged by `sink` (on disk and in memory).
    pub fn pending(&self, sink: &str) -> u64 {
        let inner = self.inner.lock().expect("spool lock");
        let mut pending = 0;
        if let Some(cursor) = inner.cursors.get(sink) {
            for (class, state) in &inner.classes {
                let from = cursor.get(class).copied().unwrap_or_default();
                for (&n, &size) in &state.segments {
                    if n > from.segment || (n == from.segment && size > from.offset) {
                        pending += 1; // at least one record; exact counts need a scan
                    }
                }
            }
        }
        let mem_from = inner.memory_cursors.get(sink).copied().unwrap_or(0);
        pending + inner.memory.iter().filter(|m| m.seq > mem_from).count() as u64
    }

    /// Appends a record. On a disk failure the record is kept in memory and
    /// the error is returned (the record is not lost while memory lasts).
    pub fn append(&self, class: Class, payload: &[u8]) -> Result<(), SpoolError> {
        let result = {
            let mut inner = self.inner.lock().expect("spool lock");
            inner.stats.appended += 1;
            if payload.len() > spool_format::MAX_PAYLOAD {
                // A reader would take it for damage: refused here, counted.
                tracing::error!(class = ?class, bytes = payload.len(), "spool: a record over 16 MiB is dropped");
                match class {
                    Class::Findings => inner.stats.dropped_findings += 1,
                    Class::Activity => inner.stats.dropped_activity += 1,
                }
                return Ok(());
            }
            let result = self.append_disk(&mut inner, class, payload);
            match &result {
                Ok(()) => {
                    if inner.stats.degraded.is_some() {
                        tracing::info!("spool: the disk accepts writes again");
                        inner.stats.degraded = None;
                    }
                }
                Err(err) => {
                    inner.stats.degraded = Some(crate::error::error_chain(err));
                    self.append_memory(&mut inner, class, payload);
                }
            }
            result
        };
        self.notify.notify_waiters();
        result
    }

    fn append_disk(
        &self,
        inner: &mut Inner,
        class: Class,
        payload: &[u8],
    ) -> Result<(), SpoolError> {
        let cdir = self.dir.join(class.dir());
        let state = inner
            .classes
            .get_mut(&class)
            .expect("every class has a state");
        let record_len = (spool_format::HEADER + payload.len()) as u64;
        let need_new = match (&state.writer, state.segments.last_key_value()) {
            (Some((n, _)), _) => {
                state.segments.get(n).copied().unwrap_or(0) + record_len
                    > self.settings.segment_bytes
            }
            (None, _) => true,
        };
        if need_new {
            let next = state.next_segment;
            state.next_segment = next + 1;
            let path = cdir.join(seg_name(next));
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)
                .map_err(io("create segment", &path))?;
            state.segments.insert(next, 0);
            state.writer = Some((next, file));
        }
        let (n, file) = state.writer.as_mut().expect("writer set above");
        let mut buf = Vec::with_capacity(spool_format::HEADER + payload.len());
        spool_format::encode(payload, &mut buf);
        let path = cdir.join(seg_name(*n));
        if let Err(e) = file.write_all(&buf) {
            // A partial write would be a torn record: cut back to the last
            // good one so readers never see it.
            let size = state.segments.get(n).copied().unwrap_or(0);
            let _ = file.set_len(size);
            state.writer = None;
            return Err(SpoolError::Io {
                action: "append to",
                path,
                source: e,
            });
        }
        *state.segments.get_mut(n).expect("segment exists") += record_len;
        inner.stats.bytes += record_len;
        self.enforce_limit(inner);
        Ok(())
    }

    fn append_memory(&self, inner: &mut Inner, class: Class, payload: &[u8]) {
        if inner.memory.len() >= self.settings.memory_records {
            // Make room: the oldest activity record, else the oldest finding.
            let victim = inner
                .memory
                .iter()
                .position(|m| m.class == Class::Activity)
                .unwrap_or(0);
            if let Some(m) = inner.memory.remove(victim) {
                match m.class {
                    Class::Findings => inner.stats.dropped_findings += 1,
                    Class::Activity => inner.stats.dropped_activity += 1,
                }
            }
        }
        let seq = inner.memory_next;
        inner.memory_next += 1;
        inner.memory.push_back(MemoryRecord {
            class,
            seq,
            payload: payload.to_vec(),
        });
        inner.stats.in_memory = inner.memory.len() as u64;
    }

    /// Evicts whole segments, activity first, until under the limit.
    fn enforce_limit(&self, inner: &mut Inner) {
        while inner.stats.bytes > self.settings.max_bytes {
            let victim = Class::ALL.into_iter().rev().find_map(|class| {
                let state = &inner.classes[&class];
                let active = state.writer.as_ref().map(|(n, _)| *n);
                state
                    .segments
                    .keys()
                    .find(|&&n| Some(n) != active)
                    .map(|&n| (class, n))
            });
            let Some((class, n)) = victim else {
                break; // only active segments left: nothing evictable
            };
            let undelivered = self.undelivered_in(inner, class, n);
            match class {
                Class::Findings => inner.stats.dropped_findings += undelivered,
                Class::Activity => inner.stats.dropped_activity += undelivered,
            }
            if undelivered > 0 {
                tracing::error!(class = ?class, records = undelivered, "spool full: dropped undelivered records");
            }
            self.remove_segment(inner, class, n);
        }
    }

    /// Records of segment `n` that some sink has not acknowledged.
    fn undelivered_in(&self, inner: &Inner, class: Class, n: u64) -> u64 {
        let slowest = inner
            .cursors
            .values()
            .map(|c| c.get(&class).copied().unwrap_or_default())
            .min()
            .unwrap_or_default();
        if slowest.segment > n {
            return 0;
        }
        let path = self.dir.join(class.dir()).join(seg_name(n));
        let Ok(bytes) = std::fs::read(&path) else {
            return 0;
        };
        let start = if slowest.segment == n {
            slowest.offset as usize
        } else {
            0
        };
        let layout = inner.classes[&class].layout(n);
        spool_format::scan(&bytes, layout, start)
            .iter()
            .filter(|i| matches!(i, Item::Record { .. }))
            .count() as u64
    }

    fn remove_segment(&self, inner: &mut Inner, class: Class, n: u64) {
        let state = inner.classes.get_mut(&class).expect("class state");
        if let Some(size) = state.segments.remove(&n) {
            inner.stats.bytes = inner.stats.bytes.saturating_sub(size);
        }
        let path = self.dir.join(class.dir()).join(seg_name(n));
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(segment = %path.display(), error = %e, "spool: cannot remove a segment");
        }
    }

    /// Up to `max` records for `sink`, findings first; waits up to `wait`
    /// for the first one.
    pub async fn next_batch(
        &self,
        sink: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Record>, SpoolError> {
        self.next_batch_after(sink, &[], max, wait).await
    }

    /// Like [`Spool::next_batch`], but past the records of `in_flight`, a
    /// batch read and sent but not yet acknowledged: what a sink that
    /// keeps one batch in flight reads next.
    pub async fn next_batch_after(
        &self,
        sink: &str,
        in_flight: &[Record],
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Record>, SpoolError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.notify.notified();
            let batch = self.read_batch(sink, in_flight, max)?;
            if !batch.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(batch);
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    fn read_batch(
        &self,
        sink: &str,
        in_flight: &[Record],
        max: usize,
    ) -> Result<Vec<Record>, SpoolError> {
        let mut inner = self.inner.lock().expect("spool lock");
        let mut out = Vec::new();
        let mut damage = Vec::new();
        let mut cursor = inner.cursors.get(sink).cloned().unwrap_or_default();
        for r in in_flight.iter().filter(|r| !r.in_memory) {
            let c = cursor.entry(r.class).or_default();
            *c = (*c).max(r.next);
        }
        for class in Class::ALL {
            let state = &inner.classes[&class];
            let mut pos = cursor.get(&class).copied().unwrap_or_default();
            for (&n, &size) in state.segments.range(pos.segment..) {
                if out.len() >= max {
                    break;
                }
                if n > pos.segment {
                    pos = Position {
                        segment: n,
                        offset: 0,
                    };
                }
                if pos.offset >= size {
                    continue;
                }
                let path = self.dir.join(class.dir()).join(seg_name(n));
                let mut reader = SegmentReader::open(&path, state.layout(n), pos.offset, size)?;
                // Only records inside the known size: the writer may be mid-append.
                while out.len() < max {
                    let offset = reader.offset;
                    match reader.next()? {
                        Next::End => break,
                        Next::Record(payload) => out.push(Record {
                            class,
                            at: Position { segment: n, offset },
                            next: Position {
                                segment: n,
                                offset: reader.offset,
                            },
                            in_memory: false,
                            payload,
                        }),
                        Next::Skipped => damage.push((class, n, offset)),
                    }
                }
            }
        }
        for key in damage {
            if inner.damage_seen.insert(key) {
                tracing::warn!(class = ?key.0, segment = key.1, offset = key.2, "spool: a damaged record inside a segment is skipped");
                inner.stats.damaged += 1;
            }
        }
        let mem_from = in_flight
            .iter()
            .filter(|r| r.in_memory)
            .map(|r| r.at.offset)
            .chain(inner.memory_cursors.get(sink).copied())
            .max()
            .unwrap_or(0);
        for m in inner.memory.iter().filter(|m| m.seq > mem_from) {
            if out.len() >= max {
                break;
            }
            out.push(Record {
                class: m.class,
                at: Position {
                    segment: 0,
                    offset: m.seq,
                },
                next: Position {
                    segment: 0,
                    offset: m.seq,
                },
                in_memory: true,
                payload: m.payload.clone(),
            });
        }
        Ok(out)
    }

    /// Acknowledges a delivered batch for `sink`: its cursor moves past it
    /// (persisted), and segments every sink has passed are removed.
    pub fn ack(&self, sink: &str, batch: &[Record]) -> Result<(), SpoolError> {
        let mut inner = self.inner.lock().expect("spool lock");
        let cursor = inner.cursors.entry(sink.to_owned()).or_default();
        for r in batch.iter().filter(|r| !r.in_memory) {
            let c = cursor.entry(r.class).or_default();
            if r.next > *c {
                *c = r.next;
            }
        }
        let snapshot = cursor.clone();
        if let Some(last) = batch
            .iter()
            .filter(|r| r.in_memory)
            .map(|r| r.at.offset)
            .max()
        {
            let m = inner.memory_cursors.entry(sink.to_owned()).or_default();
            *m = (*m).max(last);
        }
        let path = cursor_path(&self.dir, sink);
        let bytes = serde_json::to_vec(&snapshot).expect("cursor serializes");
        crate::fileio::atomic::write_atomically(&path, &bytes).map_err(|(action, source)| {
            SpoolError::Io {
                action,
                path: path.clone(),
                source,
            }
        })?;
        self.collect(&mut inner);
        Ok(())
    }

    /// Removes segments and memory records every sink has acknowledged.
    fn collect(&self, inner: &mut Inner) {
        for class in Class::ALL {
            let slowest = inner
                .cursors
                .values()
                .map(|c| c.get(&class).copied().unwrap_or_default())
                .min()
                .unwrap_or_default();
            let state = &inner.classes[&class];
            let active = state.writer.as_ref().map(|(n, _)| *n);
            let done: Vec<u64> = state
                .segments
                .iter()
                .filter(|&(&n, &size)| {
                    Some(n) != active
                        && (n < slowest.segment || (n == slowest.segment && slowest.offset >= size))
                })
                .map(|(&n, _)| n)
                .collect();
            for n in done {
                self.remove_segment(inner, class, n);
            }
        }
        let slowest_mem = inner.memory_cursors.values().copied().min().unwrap_or(0);
        while inner.memory.front().is_some_and(|m| m.seq <= slowest_mem) {
            inner.memory.pop_front();
        }
        inner.stats.in_memory = inner.memory.len() as u64;
    }

    /// Writes what the disk holds to stable storage (called periodically,
    /// and at shutdown).
    pub fn sync(&self) {
        let inner = self.inner.lock().expect("spool lock");
        for state in inner.classes.values() {
            if let Some((_, f)) = &state.writer {
                let _ = f.sync_data();
            }
        }
    }
}

impl ClassState {
    fn layout(&self, segment: u64) -> Layout {
        if self.legacy.contains(&segment) {
            Layout::Legacy
        } else {
            Layout::Current
        }
    }
}

/// What the next read of a segment gave.
enum Next {
    Record(Vec<u8>),
    /// A damaged stretch was stepped over.
    Skipped,
    End,
}

/// Reads a segment's records in order, from an offset up to a known size,
/// stepping over damage.
struct SegmentReader<'a> {
    path: &'a Path,
    reader: std::io::BufReader<File>,
    layout: Layout,
    offset: u64,
    size: u64,
}

impl<'a> SegmentReader<'a> {
    fn open(path: &'a Path, layout: Layout, offset: u64, size: u64) -> Result<Self, SpoolError> {
        let f = File::open(path).map_err(io("open segment", path))?;
        let mut reader = std::io::BufReader::with_capacity(64 * 1024, f);
        reader
            .seek(SeekFrom::Start(offset))
            .map_err(io("seek in", path))?;
        Ok(Self {
            path,
            reader,
            layout,
            offset,
            size,
        })
    }

    fn next(&mut self) -> Result<Next, SpoolError> {
        if self.offset >= self.size {
            return Ok(Next::End);
        }
        let left = (self.size - self.offset) as usize;
        let header_len = spool_format::header_len(self.layout);
        if left >= header_len {
            let mut record = vec![0u8; header_len];
            self.reader
                .read_exact(&mut record)
                .map_err(io("read", self.path))?;
            if let Some(len) = spool_format::claimed_len(&record, self.layout)
                && len <= left - header_len
            {
                record.resize(header_len + len, 0);
                self.reader
                    .read_exact(&mut record[header_len..])
                    .map_err(io("read", self.path))?;
                if let Some(payload) = spool_format::checked(&record, self.layout, 0) {
                    self.offset += record.len() as u64;
                    record.drain(..payload.start);
                    return Ok(Next::Record(record));
                }
            }
        }
        // Damage: find the next good record in the rest of the segment.
        self.reader
            .seek(SeekFrom::Start(self.offset))
            .map_err(io("seek in", self.path))?;
        let mut rest = vec![0u8; left];
        self.reader
            .read_exact(&mut rest)
            .map_err(io("read", self.path))?;
        let skip = match spool_format::scan(&rest, self.layout, 0).first() {
            Some(Item::Damaged { len, .. }) => *len,
            // Good now (a writer finished it since): read it next time.
            _ => 0,
        };
        self.offset += skip as u64;
        self.reader
            .seek(SeekFrom::Start(self.offset))
            .map_err(io("seek in", self.path))?;
        Ok(if skip == 0 { Next::End } else { Next::Skipped })
    }
}

fn cursor_path(dir: &Path, sink: &str) -> PathBuf {
    // Sink names hold URLs and paths; the file name must not.
    let safe: String = sink
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let h = crate::hash::Fnv1a::default()
        .write(sink.as_bytes())
        .finish();
    dir.join("cursors")
        .join(format!("{}-{h:016x}.json", &safe[..safe.len().min(40)]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("monitor-spool-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn delivers_findings_first_and_resumes_after_reopen() {
        let dir = tempdir("resume");
        let sinks = vec!["a".to_owned(), "b".to_owned()];
        let spool = Spool::open(&dir, SpoolSettings::default(), &sinks).unwrap();
        spool.append(Class::Activity, b"act1").unwrap();
        spool.append(Class::Findings, b"f1").unwrap();
        spool.append(Class::Findings, b"f2").unwrap();
        let batch = rt()
            .block_on(spool.next_batch("a", 2, Duration::ZERO))
            .unwrap();
        let payloads: Vec<&[u8]> = batch.iter().map(|r| r.payload.as_slice()).collect();
        assert_eq!(payloads, vec![&b"f1"[..], b"f2"]);
        spool.ack("a", &batch).unwrap();
        drop(spool);
        // Reopen: sink a resumes after f2; sink b gets everything.
        let spool = Spool::open(&dir, SpoolSettings::default(), &sinks).unwrap();
        let a = rt()
            .block_on(spool.next_batch("a", 10, Duration::ZERO))
            .unwrap();
        assert_eq!(
            a.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(),
            vec![b"act1".to_vec()]
        );
        let b = rt()
            .block_on(spool.next_batch("b", 10, Duration::ZERO))
            .unwrap();
        assert_eq!(b.len(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_record_appended_after_every_segment_was_collected_and_reopened_is_delivered() {
        let dir = tempdir("renumber");
        let sinks = vec!["s".to_owned()];
        // Opens the spool, appends, and delivers everything to the sink.
        let session = |class: Class, payload: &[u8]| {
            let spool = Spool::open(&dir, SpoolSettings::default(), &sinks).unwrap();
            spool.append(class, payload).unwrap();
            let batch = rt()
                .block_on(spool.next_batch("s", 10, Duration::ZERO))
                .expect("the spool reads");
            spool.ack("s", &batch).unwrap();
            batch.into_iter().map(|r| r.payload).collect::<Vec<_>>()
        };
        session(Class::Findings, b"a record long enough to move the cursor");
        // The delivered segment is collected once no writer holds it.
        session(Class::Activity, b"x");
        // A new findings segment must not reuse the collected one's number:
        // the cursor still names it, at an offset past this short record.
        assert_eq!(session(Class::Findings, b"f"), vec![b"f".to_vec()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Everything sink "s" gets from the spool in `dir`, reopened, and the
    /// spool's damage count.
    fn reopen_and_read(dir: &Path) -> (Vec<Vec<u8>>, u64) {
        let spool = Spool::open(dir, SpoolSettings::default(), &["s".to_owned()]).unwrap();
        let batch = rt()
            .block_on(spool.next_batch("s", 100, Duration::ZERO))
            .unwrap();
        let payloads = batch.into_iter().map(|r| r.payload).collect();
        (payloads, spool.stats().damaged)
    }

    fn spool_of(dir: &Path, payloads: &[&[u8]]) -> PathBuf {
        let spool = Spool::open(dir, SpoolSettings::default(), &["s".to_owned()]).unwrap();
        for p in payloads {
            spool.append(Class::Findings, p).unwrap();
        }
        dir.join("findings").join(seg_name(1))
    }

    fn append_bytes(seg: &Path, bytes: &[u8]) {
        let mut f = OpenOptions::new().append(true).open(seg).unwrap();
        f.write_all(bytes).unwrap();
    }

    #[test]
    fn a_torn_tail_is_cut_on_open_and_counted() {
        let dir = tempdir("torn");
        let seg = spool_of(&dir, &[b"whole"]);
        append_bytes(&seg, &[b'M', b'S', b'R', 1, 200, 0, 0, 0, 1, 2]); // promises 200 bytes
        let (got, damaged) = reopen_and_read(&dir);
        assert_eq!(got, [b"whole".to_vec()]);
        assert_eq!(damaged, 1);
        assert_eq!(
            std::fs::metadata(&seg).unwrap().len(),
            (spool_format::HEADER + 5) as u64
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn zero_filled_tails_are_not_empty_records() {
        let dir = tempdir("zeros");
        let seg = spool_of(&dir, &[b"kept"]);
        // Eight zero bytes once read as a valid empty record (length 0,
        // CRC 0), and were delivered.
        append_bytes(&seg, &[0; 8]);
        let (got, damaged) = reopen_and_read(&dir);
        assert_eq!(got, [b"kept".to_vec()]);
        assert_eq!(damaged, 1);
        // A whole page of zeros after a crash, then more records.
        let spool = Spool::open(&dir, SpoolSettings::default(), &["s".to_owned()]).unwrap();
        spool.append(Class::Findings, b"after").unwrap();
        drop(spool);
        let seg2 = dir.join("findings").join(seg_name(2));
        append_bytes(&seg2, &[0; 4096]);
        let (got, damaged) = reopen_and_read(&dir);
        assert_eq!(got, [b"kept".to_vec(), b"after".to_vec()]);
        assert_eq!(damaged, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_flipped_bit_costs_one_record_and_the_rest_are_delivered() {
        let dir = tempdir("bitflip");
        let seg = spool_of(&dir, &[b"first", b"second", b"third"]);
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[2 * spool_format::HEADER + 5 + 3] ^= 0x04; // inside "second"
        std::fs::write(&seg, &bytes).unwrap();
        let (got, damaged) = reopen_and_read(&dir);
        assert_eq!(got, [b"first".to_vec(), b"third".to_vec()]);
        assert_eq!(damaged, 1);
        // The damage stays in the file (a cursor may point past it) and is
        // counted once, however often it is read.
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), bytes.len() as u64);
        let spool = Spool::open(&dir, SpoolSettings::default(), &["s".to_owned()]).unwrap();
        for _ in 0..3 {
            rt().block_on(spool.next_batch("s", 100, Duration::ZERO))
                .unwrap();
        }
        assert_eq!(spool.stats().damaged, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damage_that_appears_while_running_is_stepped_over_and_counted() {
        let dir = tempdir("live-damage");
        let spool = Spool::open(&dir, SpoolSettings::default(), &["s".to_owned()]).unwrap();
        for p in [&b"one"[..], b"two", b"three"] {
            spool.append(Class::Findings, p).unwrap();
        }
        let seg = dir.join("findings").join(seg_name(1));
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[spool_format::HEADER + 3] = 0; // the second record's magic
        std::fs::write(&seg, &bytes).unwrap();
        let batch = rt()
            .block_on(spool.next_batch("s", 100, Duration::ZERO))
            .unwrap();
        let got: Vec<Vec<u8>> = batch.iter().map(|r| r.payload.clone()).collect();
        assert_eq!(got, [b"one".to_vec(), b"three".to_vec()]);
        assert_eq!(spool.stats().damaged, 1);
        spool.ack("s", &batch).unwrap();
        assert_eq!(
            rt().block_on(spool.next_batch("s", 100, Duration::ZERO))
                .unwrap()
                .len(),
            0
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn segments_written_before_the_magic_are_still_delivered() {
        let dir = tempdir("legacy");
        let cdir = dir.join("findings");
        std::fs::create_dir_all(&cdir).unwrap();
        let mut bytes = Vec::new();
        for p in [&b"old one"[..], b"old two"] {
            bytes.extend_from_slice(&(p.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&crc32fast::hash(p).to_le_bytes());
            bytes.extend_from_slice(p);
        }
        bytes.extend_from_slice(&[0; 8]);
        std::fs::write(cdir.join(seg_name(1)), &bytes).unwrap();
        let spool = Spool::open(&dir, SpoolSettings::default(), &["s".to_owned()]).unwrap();
        assert_eq!(spool.stats().damaged, 1, "the zeros after the old records");
        spool.append(Class::Findings, b"new").unwrap();
        drop(spool);
        let (got, damaged) = reopen_and_read(&dir);
        assert_eq!(
            got,
            [b"old one".to_vec(), b"old two".to_vec(), b"new".to_vec()]
        );
        assert_eq!(damaged, 0, "the zeros were cut off at the first open");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn when_full_activity_goes_first_and_drops_are_counted() {
        let dir = tempdir("full");
        let settings = SpoolSettings {
            max_bytes: 3000,
            segment_bytes: 1000,
            memory_records: 10,
        };
        let spool = Spool::open(&dir, settings, &["s".to_owned()]).unwrap();
        let payload = vec![b'x'; 200];
        for _ in 0..10 {
            spool.append(Class::Activity, &payload).unwrap();
        }
        for _ in 0..5 {
            spool.append(Class::Findings, &payload).unwrap();
        }
        let stats = spool.stats();
        assert!(stats.bytes <= 3000, "{stats:?}");
        assert!(stats.dropped_activity > 0);
        assert_eq!(stats.dropped_findings, 0, "findings are dropped last");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_spool_degrades_to_memory_and_says_why() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempdir("ro");
        let spool = Spool::open(&dir, SpoolSettings::default(), &["s".to_owned()]).unwrap();
        // Make the findings directory unwritable (root bypasses modes, so
        // also replace it with a file to make creation fail for anyone).
        let fdir = dir.join("findings");
        std::fs::remove_dir_all(&fdir).unwrap();
        std::fs::write(&fdir, b"not a directory").unwrap();
        std::fs::set_permissions(&fdir, std::fs::Permissions::from_mode(0o400)).unwrap();
        let err = spool
            .append(Class::Findings, b"kept")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("spool: cannot create segment"), "{err}");
        let stats = spool.stats();
        assert!(
            stats.degraded.is_some() && stats.in_memory == 1,
            "{stats:?}"
        );
        let batch = rt()
            .block_on(spool.next_batch("s", 10, Duration::ZERO))
            .unwrap();
        assert_eq!(batch[0].payload, b"kept", "the record is still delivered");
        spool.ack("s", &batch).unwrap();
        assert_eq!(spool.stats().in_memory, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_batch_read_past_one_in_flight_takes_what_follows_and_a_failure_reads_both_again() {
        let dir = tempdir("in-flight");
        let spool = Spool::open(&dir, SpoolSettings::default(), &["s".to_owned()]).unwrap();
        for p in [&b"f1"[..], b"f2", b"f3"] {
            spool.append(Class::Findings, p).unwrap();
        }
        spool.append(Class::Activity, b"a1").unwrap();
        let read = |after: &[Record], max| {
            rt().block_on(spool.next_batch_after("s", after, max, Duration::ZERO))
                .unwrap()
        };
        let payloads =
            |b: &[Record]| -> Vec<Vec<u8>> { b.iter().map(|r| r.payload.clone()).collect() };
        let first = read(&[], 2);
        assert_eq!(payloads(&first), [b"f1".to_vec(), b"f2".to_vec()]);
        // A finding appended while the first batch is in flight still goes
        // before the activity.
        spool.append(Class::Findings, b"f4").unwrap();
        let second = read(&first, 10);
        assert_eq!(
            payloads(&second),
            [b"f3".to_vec(), b"f4".to_vec(), b"a1".to_vec()]
        );
        assert!(read(&second, 10).is_empty(), "nothing follows the second");
        // The first is not confirmed: both are read again, in order.
        assert_eq!(payloads(&read(&[], 10)).len(), 5);
        spool.ack("s", &first).unwrap();
        assert_eq!(payloads(&read(&[], 10)), payloads(&second));
        spool.ack("s", &second).unwrap();
        assert!(read(&[], 10).is_empty());

        std::fs::remove_dir_all(&dir).unwrap();

        // Records kept in memory (the disk failed) are read past the same way.
        let dir = tempdir("in-flight-memory");
        let spool = Spool::open(&dir, SpoolSettings::default(), &["s".to_owned()]).unwrap();
        let fdir = dir.join("findings");
        std::fs::remove_dir_all(&fdir).unwrap();
        std::fs::write(&fdir, b"not a directory").unwrap();
        for p in [&b"m1"[..], b"m2", b"m3"] {
            assert!(spool.append(Class::Findings, p).is_err());
        }
        let read = |after: &[Record], max| {
            rt().block_on(spool.next_batch_after("s", after, max, Duration::ZERO))
                .unwrap()
        };
        let first = read(&[], 2);
        assert!(first.iter().all(|r| r.in_memory));
        assert_eq!(payloads(&read(&first, 10)), [b"m3".to_vec()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
