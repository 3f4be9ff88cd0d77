//! Behaviour windows: what one process did over one stretch of time.
//!
//! The model never sees a kernel record, only these. Live and in replay they
//! are built from [`Event`]s by [`WindowBuilder`]; for datasets of syscall
//! traces (ADFA-LD) each trace is one window with its full sequence.
//!
//! A window belongs to one process and carries its *program*: the executable
//! it ran when the window closed (the parent's executable is kept as
//! context). It closes when the process's syscall counts are drained from
//! the kernel (every drain interval), when the process exits, or, when no
//! counts arrive (counting off, old recordings), when it has been open for
//! the window length.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::{
    event::shared::Shared,
    event::{Ancestor, Detail, Event, Process, Timestamp, program_name},
    kernel::counters,
    syscalls::canonical_id,
};

/// Counts of security-relevant activity in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    /// Processes forked.
    pub spawned: u32,
    /// Programs executed (exec events of this process).
    pub execs: u32,
    /// Files opened for writing.
    pub files_written: u32,
    /// Sensitive locations touched (read, written, removed, renamed).
    pub sensitive: u32,
    /// Outbound connections.
    pub connects: u32,
    /// Inbound connections accepted.
    pub accepts: u32,
    /// Sockets bound or listening.
    pub listens: u32,
    /// Credential changes.
    pub cred_changes: u32,
    /// ptrace, signals to others, BPF loads, module loads.
    pub tampering: u32,
    /// memfd_create and executable anonymous memory.
    pub fileless: u32,
    /// Files removed or renamed.
    pub file_changes: u32,
}

impl Activity {
    /// Names of the counters, in [`Activity::values`] order.
    pub const NAMES: [&'static str; 11] = [
        "processes_spawned",
        "programs_executed",
        "files_written",
        "sensitive_paths_touched",
        "outbound_connections",
        "inbound_connections",
        "sockets_listening",
        "credential_changes",
        "tampering_actions",
        "fileless_actions",
        "files_removed_or_renamed",
    ];

    /// The counters, in [`Activity::NAMES`] order.
    pub fn values(&self) -> [u32; 11] {
        [
            self.spawned,
            self.execs,
            self.files_written,
            self.sensitive,
            self.connects,
            self.accepts,
            self.listens,
            self.cred_changes,
            self.tampering,
            self.fileless,
            self.file_changes,
        ]
    }
}

/// Categorical facts of a window, for novelty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    /// Executables this process started (exec of a child, or its own exec).
    pub executed: BTreeSet<String>,
    /// Network peers contacted (`addr:port`, `unix:path`).
    pub peers: BTreeSet<String>,
    /// Local ports listened on.
    pub listening: BTreeSet<String>,
    /// Sensitive paths touched.
    pub sensitive_paths: BTreeSet<String>,
    /// Other notable actions (`ptrace`, `memfd`, `mem_exec`, `setuid`, ...).
    pub actions: BTreeSet<String>,
    /// `parent -> program` for each exec of this window (the image that
    /// started the program, and the program).
    #[serde(default)]
    pub exec_pairs: BTreeSet<String>,
    /// What the program's file is: `program\0sha256:HEX` and
    /// `program\0inode:DEV:INO` for each exec of this window's process
    /// (see [`image_fact`]).
    #[serde(default)]
    pub images: BTreeSet<String>,
}

/// The image fact of `program` with identity `id` (`sha256:...` or
/// `inode:DEV:INO`).
pub fn image_fact(program: &str, id: &str) -> String {
    format!("{program}\0{id}")
}

/// What the window is about, for explanations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowContext {
    /// The process as last seen.
    pub process: Option<Shared<Process>>,
    /// Its ancestry (from its exec, when seen).
    #[serde(default = "crate::event::no_ancestry")]
    pub ancestry: Shared<Vec<Ancestor>>,
}

/// One behaviour window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// The behaviour program: the executable path.
    #[serde(alias = "profile")]
    pub program: String,
    /// The parent's executable, as context.
    #[serde(alias = "parent_profile")]
    pub parent_program: Option<String>,
    /// Process id.
    pub pid: u32,
    /// Window start.
    pub start: Timestamp,
    /// Window end.
    pub end: Timestamp,
    /// Syscall counts by canonical id.
    pub syscalls: BTreeMap<u16, u64>,
    /// Consecutive-pair bucket counts (live) .
    pub pairs: BTreeMap<u16, u64>,
    /// The full syscall sequence, by canonical id (datasets only).
    pub sequence: Vec<u16>,
    /// Activity counters.
    pub activity: Activity,
    /// Categorical facts.
    pub facts: Facts,
    /// The window overlapped lost events: never learned from.
    pub tainted: bool,
    /// The process ended with this window.
    pub final_window: bool,
    /// Process context.
    pub context: WindowContext,
}

impl Window {
    /// Total syscalls in the window.
    pub fn total_syscalls(&self) -> u64 {
        self.syscalls.values().sum()
    }

    /// A window from a syscall trace (datasets), with counts and pairs
    /// derived from the sequence.
    pub fn from_sequence(program: &str, sequence: Vec<u16>) -> Self {
        let mut w = Window {
            program: program.to_owned(),
            ..Default::default()
        };
        for &id in &sequence {
            *w.syscalls.entry(id).or_default() += 1;
        }
        for pair in sequence.windows(2) {
            let bucket = monitor_common::pair_bucket(u32::from(pair[0]), u32::from(pair[1]));
            *w.pairs.entry(bucket as u16).or_default() += 1;
        }
        w.sequence = sequence;
        w.final_window = true;
        w
    }
}

/// True if `pid` is this agent: a signal or ptrace aimed at the sensor is
/// tampering whatever its baseline says.
fn is_this_agent(pid: i32) -> bool {
    u32::try_from(pid).is_ok_and(|p| p == std::process::id())
}

/// Builds windows from a stream of events.
pub struct WindowBuilder {
    open: HashMap<u32, Window>,
    /// Close a window after this long when no program closes it.
    max_len: std::time::Duration,
    last_time: Timestamp,
}

impl WindowBuilder {
    /// A builder closing idle-program windows after `max_len`.
    pub fn new(max_len: std::time::Duration) -> Self {
        Self {
            open: HashMap::new(),
            max_len,
            last_time: Timestamp::default(),
        }
    }

    /// Windows currently open.
    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    fn window(&mut self, pid: u32, time: Timestamp) -> &mut Window {
        self.open.entry(pid).or_insert_with(|| Window {
            pid,
            start: time,
            end: time,
            ..Default::default()
        })
    }

    /// Feeds one event; returns the windows it closed.
    pub fn push(&mut self, event: &Event) -> Vec<Window> {
        self.last_time = self.last_time.max(event.time);
        let mut closed = Vec::new();
        if let Detail::Loss(loss) = &event.detail {
            if loss
                .counts
                .keys()
                .any(|counter| counters::taints_open_windows(counter))
            {
                // Every open window overlapped the loss: none may teach the model.
                for w in self.open.values_mut() {
                    w.tainted = true;
                }
            }
            // Records refused to a process over its budget: only its
            // window misses something, and the rest still teach.
            for pid in loss.by_process.keys() {
                if let Some(w) = self.open.get_mut(pid) {
                    w.tainted = true;
                }
            }
            return closed;
        }
        let Some(process) = &event.process else {
            return closed;
        };
        let pid = process.pid;
        if let Detail::Fork(_) = event.detail {
            // The parent spawned; the child's window starts now.
            if let Some(parent) = &event.parent {
                self.window(parent.pid, event.time).activity.spawned += 1;
            }
        }
        let time = event.time;
        let mut parent_started = None;
        let w = self.window(pid, time);
        w.end = w.end.max(time);
        if let Some(exe) = &process.exe {
            w.program = program_name(exe, process.script.as_ref());
        }
        w.context.process = Some(process.clone());
        if let Some(parent) = &event.parent {
            w.parent_program = parent
                .exe
                .as_ref()
                .map(|e| program_name(e, parent.script.as_ref()));
        }
        match &event.detail {
            Detail::Exec(exec) => {
                let program = program_name(&exec.path, exec.script_path.as_ref());
                w.activity.execs += 1;
                w.facts.executed.insert(program.clone());
                w.context.ancestry = event.ancestry.clone();
                if exec.fileless {
                    w.activity.fileless += 1;
                    w.facts.actions.insert("fileless_exec".into());
                }
                if exec.inode != 0 && !exec.fileless {
                    w.facts.images.insert(image_fact(
                        &program,
                        &format!("inode:{}:{}", exec.dev, exec.inode),
                    ));
                }
                if exec.recently_written {
                    w.facts.actions.insert("exec_recently_written".into());
                }
                if let Some(id) = &exec.identity {
                    if let Some(sha) = &id.sha256 {
                        w.facts
                            .images
                            .insert(image_fact(&program, &format!("sha256:{sha}")));
                    }
                    for (flag, action) in [
                        (id.world_writable_dir, "exec_world_writable_dir"),
                        (id.memory_backed, "exec_memory_backed"),
                        (id.mount_ns.is_some(), "exec_other_mount_ns"),
                    ] {
                        if flag {
                            w.facts.actions.insert(action.into());
                        }
                    }
                }
                let parent = event.parent.as_ref();
                let parent_exe = parent
                    .and_then(|p| Some(program_name(p.exe.as_ref()?, p.script.as_ref())))
                    .unwrap_or_else(|| "?".to_owned());
                w.facts
                    .exec_pairs
                    .insert(format!("{parent_exe} -> {program}"));
                // The parent started a program too: its window learns it.
                if let Some(parent) = parent.filter(|p| p.pid != pid) {
                    parent_started = Some((parent.pid, program));
                }
            }
            Detail::Connect(n) => {
                w.activity.connects += 1;
                w.facts.peers.insert(peer(n));
            }
            Detail::Accept(n) => {
                w.activity.accepts += 1;
                w.facts
                    .peers
                    .insert(format!("from:{}", n.address.as_deref().unwrap_or("?")));
            }
            Detail::Bind(n) | Detail::Listen(n) => {
                w.activity.listens += 1;
                w.facts.listening.insert(peer(n));
            }
            Detail::FileOpen(f) => {
                if f.write {
                    w.activity.files_written += 1;
                }
                if f.sensitive {
                    w.activity.sensitive += 1;
                    w.facts
                        .sensitive_paths
                        .insert(f.path.to_string_lossy().into_owned());
                }
            }
            Detail::FileUnlink(f) | Detail::FileRename(f) => {
                w.activity.file_changes += 1;
                if f.sensitive {
                    w.activity.sensitive += 1;
                    w.facts
                        .sensitive_paths
                        .insert(f.path.to_string_lossy().into_owned());
                }
            }
            Detail::FileLink(f) | Detail::FileSymlink(f) => {
                // A link into a sensitive place: the place it lands is the
                // fact (a hard link's new name, a symlink itself).
                w.activity.file_changes += 1;
                if f.sensitive {
                    w.activity.sensitive += 1;
                    let landed = match &event.detail {
                        Detail::FileLink(_) => f.new_path.as_ref().unwrap_or(&f.path),
                        _ => &f.path,
                    };
                    w.facts
                        .sensitive_paths
                        .insert(landed.to_string_lossy().into_owned());
                    w.facts.actions.insert(event.detail.kind().to_owned());
                }
            }
            Detail::Syscall(s) => {
                w.activity.tampering += 1;
                w.facts.actions.insert(s.action());
                if s.target_pid().is_some_and(|p| is_this_agent(p as i32)) {
                    w.facts
                        .actions
                        .insert(format!("{}_of_the_agent", s.syscall));
                }
            }
            Detail::CredChange(c) => {
                w.activity.cred_changes += 1;
                w.facts.actions.insert(c.syscall.clone());
            }
            Detail::Ptrace(p) => {
                w.activity.tampering += 1;
                w.facts.actions.insert(format!("ptrace:{}", p.request));
                if is_this_agent(p.target_pid) {
                    w.facts.actions.insert("ptrace_of_the_agent".into());
                }
            }
            Detail::Kill(k) => {
                w.activity.tampering += 1;
                w.facts.actions.insert(format!("signal:{}", k.signal_name));
                if is_this_agent(k.target_pid) {
                    w.facts.actions.insert("signal_to_the_agent".into());
                }
            }
            Detail::BpfLoad(b) => {
                w.activity.tampering += 1;
                match &b.command {
                    Some(command) => w
                        .facts
                        .actions
                        .insert(format!("bpf_on_the_agent:{command}")),
                    None => w.facts.actions.insert("bpf_load".into()),
                };
            }
            Detail::ModuleLoad(_) => {
                w.activity.tampering += 1;
                w.facts.actions.insert("module_load".into());
            }
            Detail::MemfdCreate(_) => {
                w.activity.fileless += 1;
                w.facts.actions.insert("memfd_create".into());
            }
            Detail::MemExec(m) => match &m.file {
                // A file written minutes ago mapped as code: named, since a
                // legitimate one (a JIT cache) keeps its name and is learned.
                Some(file) => {
                    w.facts.actions.insert(format!(
                        "map_exec_recently_written:{}",
                        file.path.to_string_lossy()
                    ));
                }
                None => {
                    w.activity.fileless += 1;
                    w.facts.actions.insert(format!("exec_memory:{}", m.syscall));
                }
            },
            Detail::SyscallCounts(p) => {
                for (name, &count) in &p.counts {
                    *w.syscalls.entry(canonical_id(name)).or_default() += count;
                }
                for (&bucket, &count) in &p.pairs {
                    *w.pairs.entry(bucket).or_default() += count;
                }
                w.start = w.start.min(p.since);
                w.end = w.end.max(p.until);
                w.final_window = p.final_counts;
                if let Some(done) = self.open.remove(&pid) {
                    closed.push(done);
                }
            }
            Detail::Exit(_) => {
                // Without programs the exit closes the window; with them the
                // final program (emitted just before the exit) already did.
                if let Some(mut done) = self.open.remove(&pid) {
                    done.final_window = true;
                    closed.push(done);
                }
            }
            Detail::Fork(_) | Detail::Loss(_) => {}
        }
        if let Some((parent_pid, program)) = parent_started {
            self.window(parent_pid, time).facts.executed.insert(program);
        }
        closed.extend(self.expire(self.last_time));
        closed
    }

    /// Closes windows open longer than the window length (streams without
    /// syscall counts; with counts, the drain interval is shorter and
    /// closes them first).
    fn expire(&mut self, now: Timestamp) -> Vec<Window> {
        let max = self.max_len;
        let stale: Vec<u32> = self
            .open
            .iter()
            .filter(|(_, w)| now.since(w.start) > max)
            .map(|(&pid, _)| pid)
            .collect();
        stale
            .into_iter()
            .filter_map(|pid| self.open.remove(&pid))
            .filter(has_content)
            .collect()
    }

    /// Closes everything (end of stream).
    pub fn finish(&mut self) -> Vec<Window> {
        let mut all: Vec<Window> = self
            .open
            .drain()
            .map(|(_, w)| w)
            .filter(has_content)
            .collect();
        all.sort_by_key(|w| (w.start, w.pid));
        all
    }
}

fn has_content(w: &Window) -> bool {
    !w.syscalls.is_empty() || w.activity != Activity::default()
}

fn peer(n: &crate::event::NetDetail) -> String {
    match (&n.address, n.port, &n.unix_path) {
        (Some(a), Some(p), _) => format!("{a}:{p}"),
        (_, _, Some(u)) => format!("unix:{u}"),
        _ => format!("{}:?", n.family),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ForkDetail, LossDetail};

    fn loss(counter: &str) -> Event {
        Event::new(
            Timestamp(2),
            Detail::Loss(LossDetail {
                counts: [(counter.to_owned(), 3)].into(),
                totals: [(counter.to_owned(), 3)].into(),
                ..Default::default()
            }),
        )
    }

    #[test]
    fn only_losses_that_can_touch_open_windows_taint_them() {
        let mut builder = WindowBuilder::new(std::time::Duration::from_secs(60));
        // A new process: its window opens.
        let mut fork = Event::new(Timestamp(1), Detail::Fork(ForkDetail::default()));
        fork.process = Some(
            Process {
                pid: 7,
                ..Default::default()
            }
            .into(),
        );
        builder.push(&fork);
        assert_eq!(builder.open.len(), 1);

        builder.push(&loss("uncounted_syscalls"));
        assert!(!builder.open[&7].tainted, "an exited thread's late repeats");

        builder.push(&loss("ringbuf_full.exec"));
        assert!(builder.open[&7].tainted, "a lost exec may be this window's");
    }

    #[test]
    fn records_refused_to_a_flooding_process_taint_its_window_only() {
        let mut builder = WindowBuilder::new(std::time::Duration::from_secs(60));
        for pid in [7, 8] {
            let mut fork = Event::new(Timestamp(1), Detail::Fork(ForkDetail::default()));
            fork.process = Some(
                Process {
                    pid,
                    ..Default::default()
                }
                .into(),
            );
            builder.push(&fork);
        }
        let mut limited = loss("rate_limited.file");
        if let Detail::Loss(l) = &mut limited.detail {
            l.by_process = [(8, 5000)].into();
        }
        builder.push(&limited);
        assert!(builder.open[&8].tainted, "the flooding process");
        assert!(!builder.open[&7].tainted, "another process still teaches");
    }
}
