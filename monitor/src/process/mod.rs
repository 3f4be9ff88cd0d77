//! The process table: what the agent knows about every live process.
//!
//! Seeded from `/proc` at start-up so processes older than the agent have a
//! parent, an executable, arguments and a user; kept current by fork, exec
//! and exit events; and able to give any process's ancestry. Exited processes
//! linger for a grace period so that late events (a child's first event, a
//! final syscall counts) still resolve, then are removed.
//!
//! Lineage follows images, not only pids (as Tetragon does): when a process
//! execs again without forking (`sh -c 'exec echo hi'`), the image it
//! replaced becomes the parent of the new one, so the chain reads
//! `bash -> sh -c 'exec echo hi' -> echo hi` instead of losing the `sh`.

pub mod exe_identity;
pub mod procfs;
pub mod users;

use std::{
    collections::{HashMap, VecDeque},
    path::{Path, PathBuf},
    time::Duration,
};

use crate::event::{
    Ancestor, ByteString, Detail, Process, Timestamp,
    decode::{KernelEvent, Payload, TaskFacts},
    shared::Shared,
    time::BootClock,
};

use self::users::UserNames;

/// Longest ancestry chain reported (a guard against cycles from pid reuse).
pub const MAX_ANCESTRY: usize = 64;
/// How long an exited process stays resolvable.
pub const EXIT_GRACE: Duration = Duration::from_secs(10);
/// Exited processes kept in their grace period at most: a flood of short
/// processes (thousands a second) shortens the grace instead of growing the
/// table. Events carry their task's own facts, so a late event of a process
/// forgotten early loses only its arguments and ancestry.
pub const MAX_EXITED: usize = 2048;
/// Most replaced images remembered per process.
pub const MAX_PREVIOUS_IMAGES: usize = 8;
/// Argument bytes kept for each ancestor beyond the nearest. The nearest is
/// kept whole (it is the event's parent); further up, a few hundred bytes
/// say what an ancestor was, while a JVM's class path or a supervisor's
/// environment on its command line would be copied into every exec event
/// below it.
pub const ANCESTOR_ARGS_MAX: usize = 512;

/// An image a process ran before it exec'd again without forking.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Image {
    /// Executable path.
    pub exe: Option<ByteString>,
    /// Argument vector.
    pub args: Vec<ByteString>,
    /// comm.
    pub comm: ByteString,
    /// Real uid.
    pub uid: u32,
    /// Effective uid.
    pub euid: u32,
}

/// The facts of an image that an ancestor reports, borrowed from a process
/// or from one of its replaced images.
struct ImageRef<'a> {
    exe: Option<&'a ByteString>,
    args: &'a [ByteString],
    comm: &'a ByteString,
    uid: u32,
}

impl<'a> ImageRef<'a> {
    fn of_image(image: &'a Image) -> Self {
        Self {
            exe: image.exe.as_ref(),
            args: &image.args,
            comm: &image.comm,
            uid: image.uid,
        }
    }

    fn of_process(p: &'a ProcessEntry) -> Self {
        Self {
            exe: p.exe.as_ref(),
            args: &p.args,
            comm: &p.comm,
            uid: p.uid,
        }
    }
}

/// Argument bytes kept for the ancestor at `index` (0: the nearest).
fn args_budget(index: usize) -> usize {
    if index == 0 {
        usize::MAX
    } else {
        ANCESTOR_ARGS_MAX
    }
}

/// `a` is the ancestor that `pid`'s `image` makes with `budget` argument
/// bytes ([`capped_args`]), compared without building it. Every field is
/// named, so a new one cannot be forgotten.
fn describes_ancestor(a: &Ancestor, pid: u32, image: &ImageRef<'_>, budget: usize) -> bool {
    let Ancestor {
        pid: a_pid,
        exe,
        args,
        args_truncated,
        comm,
        uid,
    } = a;
    if !(*a_pid == pid && exe.as_ref() == image.exe && comm == image.comm && *uid == image.uid) {
        return false;
    }
    let mut kept = args.iter().map(ByteString::as_bytes);
    let mut left = budget;
    for arg in image.args.iter().map(ByteString::as_bytes) {
        if arg.len() > left {
            let cut_kept = left == 0 || kept.next() == Some(&arg[..left]);
            return cut_kept && *args_truncated && kept.next().is_none();
        }
        left -= arg.len();
        if kept.next() != Some(arg) {
            return false;
        }
    }
    !*args_truncated && kept.next().is_none()
}

/// The leading arguments that fit in `budget` bytes (the last one cut),
/// and whether any were left out.
fn capped_args(args: &[ByteString], budget: usize) -> (Vec<ByteString>, bool) {
    let mut left = budget;
    let mut kept = Vec::with_capacity(args.len());
    for arg in args {
        let bytes = arg.as_bytes();
        if bytes.len() > left {
            if left > 0 {
                kept.push(ByteString::from(&bytes[..left]));
            }
            return (kept, true);
        }
        left -= bytes.len();
        kept.push(arg.clone());
    }
    (kept, false)
}

/// `context` is what [`ProcessTable::process`] would build for `p` (with
/// no thread id). Every field is named, so a new one cannot be forgotten.
fn describes(
    context: &Process,
    p: &ProcessEntry,
    user_name: Option<&str>,
    started: Option<Timestamp>,
) -> bool {
    let Process {
        pid,
        tid,
        ppid,
        uid,
        gid,
        euid,
        egid,
        user,
        comm,
        exe,
        script,
        args,
        cgroup_id,
        container_id,
        start_time,
    } = context;
    *pid == p.pid
        && tid.is_none()
        && *ppid == p.ppid
        && *uid == p.uid
        && *gid == p.gid
        && *euid == p.euid
        && *egid == p.egid
        && user.as_deref() == user_name
        && *comm == p.comm
        && *exe == p.exe
        && *script == p.script
        && *args == p.args
        && *cgroup_id == p.cgroup_id
        && *container_id == p.container_id
        && *start_time == started
}

/// One process.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessEntry {
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// Effective uid.
    pub euid: u32,
    /// Effective gid.
    pub egid: u32,
    /// comm.
    pub comm: ByteString,
    /// Executable path.
    pub exe: Option<ByteString>,
    /// The script `exe` interprets (see [`Process::script`]).
    pub script: Option<ByteString>,
    /// Argument vector.
    pub args: Vec<ByteString>,
    /// cgroup id.
    pub cgroup_id: u64,
    /// Container id.
    pub container_id: Option<String>,
    /// Boot-time start, ns.
    pub start_ns: u64,
    /// Boot-time exit, ns, once exited.
    pub exited_ns: Option<u64>,
    /// The current image is the process's own (exec'd, or read from /proc),
    /// not a fork-time copy of its parent's.
    pub own_image: bool,
    /// Images this pid ran before, replaced by exec without fork; newest first.
    pub previous: Vec<Image>,
}

impl ProcessEntry {
    fn image(&self) -> Image {
        Image {
            exe: self.exe.clone(),
            args: self.args.clone(),
            comm: self.comm.clone(),
            uid: self.uid,
            euid: self.euid,
        }
    }
}

/// Counts from seeding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeedStats {
    /// Processes added.
    pub processes: usize,
    /// Kernel threads skipped.
    pub kernel_threads: usize,
}

/// See the module docs.
pub struct ProcessTable {
    procs: HashMap<u32, ProcessEntry>,
    /// (exit time, pid, start time) in exit order, for expiry.
    exited: VecDeque<(u64, u32, u64)>,
    users: UserNames,
    proc_root: PathBuf,
    cgroup_root: PathBuf,
    /// cgroup id -> container id (None: looked up, not a container).
    containers: HashMap<u64, Option<String>>,
    clock: BootClock,
    /// The last context given out per pid (without a thread id), handed
    /// out again while it still describes the entry: events of one process
    /// then share one value and one serialization (`event::shared`).
    contexts: HashMap<u32, Shared<Process>>,
    /// The last ancestry given out, by its first pid, likewise.
    chains: HashMap<u32, Shared<Vec<Ancestor>>>,
    /// Exited processes forgotten before their grace ended ([`MAX_EXITED`]).
    expired_early: u64,
}

impl ProcessTable {
    /// An empty table reading `/proc` and `/sys/fs/cgroup`.
    pub fn new() -> Self {
        Self::with_roots(
            Path::new("/proc"),
            Path::new("/sys/fs/cgroup"),
            UserNames::system(),
        )
    }

    /// An empty table with other roots (tests).
    pub fn with_roots(proc_root: &Path, cgroup_root: &Path, users: UserNames) -> Self {
        Self {
            procs: HashMap::new(),
            exited: VecDeque::new(),
            users,
            proc_root: proc_root.to_owned(),
            cgroup_root: cgroup_root.to_owned(),
            containers: HashMap::new(),
            clock: BootClock::new(),
            contexts: HashMap::new(),
            chains: HashMap::new(),
            expired_early: 0,
        }
    }

    /// Exited processes forgotten before their grace period ended, because
    /// more than [`MAX_EXITED`] were waiting.
    pub fn expired_early(&self) -> u64 {
        self.expired_early
    }

    /// Number of processes known (live or in their exit grace period).
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// True if no process is known.
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// The entry of a process.
    pub fn get(&self, pid: u32) -> Option<&ProcessEntry> {
        self.procs.get(&pid)
    }

    /// Adds every process under the procfs root. Call after the probes are
    /// attached, so nothing falls between the scan and the first event;
    /// events then win over what the scan read.
    pub fn seed(&mut self) -> std::io::Result<SeedStats> {
        let mut stats = SeedStats::default();
        for pid in procfs::list_pids(&self.proc_root)? {
            match self.seed_one(pid) {
                Some(true) => stats.processes += 1,
                Some(false) => stats.kernel_threads += 1,
                None => {}
            }
        }
        Ok(stats)
    }

    /// Adds one process from /proc; Some(false) for a kernel thread.
    fn seed_one(&mut self, pid: u32) -> Option<bool> {
        if self.procs.contains_key(&pid) {
            return Some(true);
        }
        let facts = procfs::read_process(&self.proc_root, pid)?;
        let cgroup_id = facts
            .cgroup
            .as_ref()
            .and_then(|c| procfs::cgroup_id(&self.cgroup_root, c.as_bytes()))
            .unwrap_or(0);
        let container_id = facts
            .cgroup
            .as_ref()
            .and_then(|c| procfs::container_id(c.as_bytes()));
        if cgroup_id != 0 {
            self.containers.insert(cgroup_id, container_id.clone());
        }
        let kernel_thread = facts.kernel_thread;
        self.procs.insert(
            pid,
            ProcessEntry {
                pid,
                ppid: facts.ppid,
                uid: facts.uid,
                gid: facts.gid,
                euid: facts.euid,
                egid: facts.egid,
                comm: facts.comm,
                exe: facts.exe,
                script: None,
                args: facts.args,
                cgroup_id,
                container_id,
                start_ns: facts.start_ns,
                exited_ns: None,
                own_image: true,
                previous: Vec::new(),
            },
        );
        Some(!kernel_thread)
    }

    /// Updates the table from a kernel event (call for every event, in order).
    pub fn apply(&mut self, event: &KernelEvent) {
        let Some(task) = &event.task else {
            return;
        };
        match &event.payload {
            Payload::Event(Detail::Fork(_)) => {
                // The child runs its parent's image until it execs.
                let (exe, script, args) = self
                    .procs
                    .get(&task.ppid)
                    .map(|p| (p.exe.clone(), p.script.clone(), p.args.clone()))
                    .unwrap_or_default();
                let mut entry = self.entry_from_task(task);
                entry.exe = exe;
                entry.script = script;
                entry.args = args;
                self.procs.insert(task.pid, entry);
            }
            Payload::Event(Detail::Exec(exec)) => {
                let mut entry = self.entry_from_task(task);
                if let Some(old) = self.procs.get(&task.pid)
                    && old.own_image
                    && old.start_ns == task.start_ns
                {
                    // exec without fork: the replaced image becomes the parent.
                    entry.previous = std::iter::once(old.image())
                        .chain(old.previous.iter().cloned())
                        .take(MAX_PREVIOUS_IMAGES)
                        .collect();
                }
                entry.exe = Some(exec.path.clone());
                entry.script = exec.script_path.clone();
                entry.args = exec.args.clone();
                entry.own_image = true;
                self.procs.insert(task.pid, entry);
            }
            Payload::Event(Detail::Exit(_)) => {
                self.refresh(task);
                if let Some(p) = self.procs.get_mut(&task.pid)
                    && p.exited_ns.is_none()
                {
                    p.exited_ns = Some(event.ktime_ns);
                    self.exited
                        .push_back((event.ktime_ns, task.pid, p.start_ns));
                }
            }
            _ => self.refresh(task),
        }
    }

    /// Brings an entry's mutable facts (parent after reparenting, creds,
    /// comm) up to date from a record; creates it from /proc if unknown.
    fn refresh(&mut self, task: &TaskFacts) {
        if !self.procs.contains_key(&task.pid) && self.seed_one(task.pid).is_none() {
            let entry = self.entry_from_task(task);
            self.procs.insert(task.pid, entry);
            return;
        }
        let container = self.container_for(task.cgroup_id, task.pid);
        if let Some(p) = self.procs.get_mut(&task.pid) {
            p.ppid = task.ppid;
            p.uid = task.uid;
            p.gid = task.gid;
            p.euid = task.euid;
            p.egid = task.egid;
            p.comm = task.comm.clone();
            if task.cgroup_id != 0 {
                p.cgroup_id = task.cgroup_id;
                p.container_id = container;
            }
        }
    }

    fn entry_from_task(&mut self, task: &TaskFacts) -> ProcessEntry {
        ProcessEntry {
            pid: task.pid,
            ppid: task.ppid,
            uid: task.uid,
            gid: task.gid,
            euid: task.euid,
            egid: task.egid,
            comm: task.comm.clone(),
            exe: None,
            script: None,
            args: Vec::new(),
            cgroup_id: task.cgroup_id,
            container_id: self.container_for(task.cgroup_id, task.pid),
            start_ns: task.start_ns,
            exited_ns: None,
            own_image: false,
            previous: Vec::new(),
        }
    }

    /// Container id of a cgroup id, looked up once per cgroup through a
    /// process that is in it.
    fn container_for(&mut self, cgroup_id: u64, pid: u32) -> Option<String> {
        if cgroup_id == 0 {
            return None;
        }
        if let Some(known) = self.containers.get(&cgroup_id) {
            return known.clone();
        }
        let path = self.proc_root.join(pid.to_string()).join("cgroup");
        let found = std::fs::read(path)
            .ok()
            .and_then(|c| procfs::parse_cgroup_v2(&c))
            .and_then(|c| procfs::container_id(c.as_bytes()));
        self.containers.insert(cgroup_id, found.clone());
        found
    }

    /// Removes processes whose exit grace period has passed.
    pub fn expire(&mut self, now_boot_ns: u64) {
        let grace = EXIT_GRACE.as_nanos() as u64;
        while let Some(&(at, pid, start)) = self.exited.front() {
            let early = self.exited.len() > MAX_EXITED;
            if now_boot_ns.saturating_sub(at) < grace && !early {
                break;
            }
            self.exited.pop_front();
            self.expired_early += u64::from(early);
            // Only if the pid was not reused by a new process since.
            if self
                .procs
                .get(&pid)
                .is_some_and(|p| p.start_ns == start && p.exited_ns.is_some())
            {
                self.procs.remove(&pid);
                self.contexts.remove(&pid);
                self.chains.remove(&pid);
            }
        }
    }

    /// The event-model view of a process, with `tid` when a thread acted.
    /// The same shared value as last time while the entry is unchanged.
    pub fn process(&mut self, pid: u32, tid: Option<u32>) -> Option<Shared<Process>> {
        let p = self.procs.get(&pid)?;
        let tid = tid.filter(|&t| t != pid);
        let user = self.users.name_ref(p.uid);
        let start_time = (p.start_ns != 0).then(|| self.clock.to_wall(p.start_ns));
        if tid.is_none()
            && let Some(last) = self.contexts.get(&pid)
            && describes(last, p, user, start_time)
        {
            return Some(last.clone());
        }
        // Only the fields the context needs are cloned: the entry also holds
        // the images this pid ran before, which an event does not carry.
        let process = Shared::new(Process {
            pid: p.pid,
            tid,
            ppid: p.ppid,
            uid: p.uid,
            gid: p.gid,
            euid: p.euid,
            egid: p.egid,
            user: user.map(str::to_owned),
            comm: p.comm.clone(),
            exe: p.exe.clone(),
            script: p.script.clone(),
            args: p.args.clone(),
            cgroup_id: p.cgroup_id,
            container_id: p.container_id.clone(),
            start_time,
        });
        if tid.is_none() {
            self.contexts.insert(pid, process.clone());
        }
        Some(process)
    }

    /// The parent of a process's current image: the image it replaced when
    /// it exec'd without forking, else its parent process.
    pub fn parent(&mut self, pid: u32) -> Option<Shared<Process>> {
        let p = self.procs.get(&pid)?;
        let (ppid, replaced) = (p.ppid, p.previous.first().cloned());
        match replaced {
            Some(image) => {
                let mut process = self.process(pid, None)?;
                let user = self.users.name(image.uid);
                // A copy of its own: the process's shared context stays.
                let process_mut = &mut *process;
                process_mut.exe = image.exe;
                process_mut.args = image.args;
                process_mut.comm = image.comm;
                process_mut.uid = image.uid;
                process_mut.euid = image.euid;
                process_mut.user = user;
                Some(process)
            }
            None => self.process(ppid, None),
        }
    }

    /// Ancestors of `pid`'s current image, nearest first: its replaced
    /// images, then its parent process's image and replaced images, and so
    /// on, stopping after pid 1, at an unknown process, or at [`MAX_ANCESTRY`].
    /// Ancestors after the first keep [`ANCESTOR_ARGS_MAX`] argument bytes.
    /// The same shared value as last time for a chain that is unchanged.
    pub fn ancestry(&mut self, pid: u32) -> Shared<Vec<Ancestor>> {
        // The last chain given out that starts where this one would, if
        // it still describes the table: compared in place, not rebuilt.
        let first = self.ancestor_images(pid).next().map(|(first, _)| first);
        if let Some(last) = first.and_then(|first| self.chains.get(&first))
            && self.ancestry_is(pid, last)
        {
            return last.clone();
        }
        let chain: Vec<Ancestor> = self
            .ancestor_images(pid)
            .enumerate()
            .map(|(at, (pid, image))| {
                let (args, args_truncated) = capped_args(image.args, args_budget(at));
                Ancestor {
                    pid,
                    exe: image.exe.cloned(),
                    args,
                    args_truncated,
                    comm: image.comm.clone(),
                    uid: image.uid,
                }
            })
            .collect();
        let Some(first) = chain.first().map(|a| a.pid) else {
            return crate::event::no_ancestry();
        };
        let chain = Shared::new(chain);
        self.chains.insert(first, chain.clone());
        chain
    }

    /// `chain` is what [`Self::ancestry`] would build for `pid`.
    fn ancestry_is(&self, pid: u32, chain: &[Ancestor]) -> bool {
        let mut images = self.ancestor_images(pid);
        chain.iter().enumerate().all(|(at, a)| {
            images
                .next()
                .is_some_and(|(pid, image)| describes_ancestor(a, pid, &image, args_budget(at)))
        }) && images.next().is_none()
    }

    /// Each ancestor image of `pid`'s current image, nearest first, at most
    /// [`MAX_ANCESTRY`] (which also ends a cycle from pid reuse): the
    /// process's replaced images, then its parent process's image and
    /// replaced images, and so on, stopping after pid 1, at an unknown
    /// process, or at a process that is its own parent.
    fn ancestor_images(&self, pid: u32) -> impl Iterator<Item = (u32, ImageRef<'_>)> {
        fn replaced(p: &ProcessEntry) -> impl Iterator<Item = (u32, ImageRef<'_>)> {
            p.previous
                .iter()
                .map(move |image| (p.pid, ImageRef::of_image(image)))
        }
        let start = self.procs.get(&pid);
        let parent_of = |p: &ProcessEntry| (p.ppid != 0).then(|| self.procs.get(&p.ppid)).flatten();
        let parents = std::iter::successors(start.and_then(parent_of), move |p| {
            (p.pid != 1 && p.ppid != p.pid)
                .then(|| parent_of(p))
                .flatten()
        });
        start
            .into_iter()
            .flat_map(replaced)
            .chain(parents.flat_map(move |p| {
                std::iter::once((p.pid, ImageRef::of_process(p))).chain(replaced(p))
            }))
            .take(MAX_ANCESTRY)
    }

    /// Timeline time of a boot-time instant (see [`BootClock`]).
    pub fn wall_time(&self, boot_ns: u64) -> Timestamp {
        self.clock.to_wall(boot_ns)
    }

    /// The clock that stamps events.
    pub fn clock(&self) -> &BootClock {
        &self.clock
    }
}

impl Default for ProcessTable {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ExecDetail, ExitDetail, ForkDetail};

    fn table() -> ProcessTable {
        // An empty proc root: nothing resolves from /proc, only events count.
        let dir = std::env::temp_dir().join(format!("monitor-empty-proc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        ProcessTable::with_roots(
            &dir,
            &dir,
            UserNames::from_passwd("root:x:0:0::/root:/bin/sh\n"),
        )
    }

    fn task(pid: u32, ppid: u32, comm: &str) -> TaskFacts {
        TaskFacts {
            tid: pid,
            pid,
            ppid,
            comm: comm.into(),
            start_ns: u64::from(pid) * 1000,
            ..Default::default()
        }
    }

    fn ev(ktime_ns: u64, task: TaskFacts, detail: Detail) -> KernelEvent {
        KernelEvent {
            ktime_ns,
            task: Some(task),
            payload: Payload::Event(detail),
        }
    }

    fn fork() -> Detail {
        Detail::Fork(ForkDetail::default())
    }

    fn exec(path: &str, args: &[&str]) -> Detail {
        Detail::Exec(ExecDetail {
            path: path.into(),
            args: args.iter().map(|a| (*a).into()).collect(),
            ..Default::default()
        })
    }

    #[test]
    fn ancestors_beyond_the_parent_keep_a_bounded_part_of_their_arguments() {
        let mut t = table();
        let env = "E".repeat(3 * ANCESTOR_ARGS_MAX);
        let long = ["supervisor", "--env", env.as_str()];
        t.apply(&ev(1, task(1, 0, "sup"), exec("/sbin/sup", &long)));
        t.apply(&ev(2, task(10, 1, "sup"), fork()));
        t.apply(&ev(3, task(10, 1, "sh"), exec("/bin/sh", &long)));
        t.apply(&ev(4, task(11, 10, "sh"), fork()));
        t.apply(&ev(5, task(11, 10, "true"), exec("/bin/true", &["true"])));
        let chain = t.ancestry(11);
        let lens = |a: &Ancestor| a.args.iter().map(|x| x.as_bytes().len()).sum::<usize>();
        // The parent is whole; the grandparent keeps the budget, its first
        // arguments intact, and says it was cut.
        assert_eq!(
            (chain[0].pid, lens(&chain[0]), chain[0].args_truncated),
            (10, 3 * ANCESTOR_ARGS_MAX + 15, false)
        );
        assert_eq!(
            (chain[1].pid, lens(&chain[1]), chain[1].args_truncated),
            (1, ANCESTOR_ARGS_MAX, true)
        );
        assert_eq!(chain[1].args[..2], chain[0].args[..2]);
        let json = serde_json::to_value(&chain[1]).unwrap();
        assert_eq!(json["args_truncated"], true);
        assert!(
            serde_json::to_value(&chain[0])
                .unwrap()
                .get("args_truncated")
                .is_none()
        );
    }

    #[test]
    fn children_of_one_parent_share_its_context_until_it_changes() {
        let mut t = table();
        t.apply(&ev(1, task(1, 0, "init"), exec("/sbin/init", &["init"])));
        t.apply(&ev(
            2,
            task(10, 1, "sh"),
            exec("/bin/sh", &["sh", "-c", "x"]),
        ));
        // What `Capture` gives an exec event: process, parent, ancestry.
        let spawn = |t: &mut ProcessTable, pid: u32| {
            t.apply(&ev(3, task(pid, 10, "sh"), fork()));
            t.apply(&ev(4, task(pid, 10, "true"), exec("/bin/true", &["true"])));
            (
                t.process(pid, Some(pid)).unwrap(),
                t.parent(pid).unwrap(),
                t.ancestry(pid),
            )
        };
        let (a, b) = (spawn(&mut t, 11), spawn(&mut t, 12));
        assert!(Shared::same(&a.1, &b.1), "one parent context");
        assert!(Shared::same(&a.2, &b.2), "one ancestry");
        assert!(!Shared::same(&a.0, &b.0));
        // The child's later events share its context; a thread's does not.
        assert!(Shared::same(&t.process(12, None).unwrap(), &b.0));
        assert_eq!(t.process(12, Some(13)).unwrap().tid, Some(13));
        assert!(Shared::same(&t.process(12, None).unwrap(), &b.0));

        // The parent changes (a new image, then a new uid): the next child
        // gets a new context and ancestry, and the earlier ones are kept.
        t.apply(&ev(5, task(10, 1, "bash"), exec("/bin/bash", &["bash"])));
        let c = spawn(&mut t, 14);
        assert!(!Shared::same(&b.1, &c.1) && !Shared::same(&b.2, &c.2));
        assert_eq!(c.1.exe.as_ref().unwrap().as_bytes(), b"/bin/bash");
        assert_eq!(c.2[0].comm.as_bytes(), b"bash");
        assert_eq!(b.1.exe.as_ref().unwrap().as_bytes(), b"/bin/sh");
        let mut setuid = task(10, 1, "bash");
        setuid.uid = 1000;
        t.apply(&ev(6, setuid, fork()));
        let d = t.process(10, None).unwrap();
        assert_eq!(t.get(10).unwrap().uid, d.uid);
        assert!(Shared::same(&d, &t.parent(14).unwrap()));
    }

    #[test]
    fn a_given_out_ancestry_is_reused_only_while_it_describes_the_table() {
        let mut t = table();
        let env = "E".repeat(2 * ANCESTOR_ARGS_MAX);
        let cut = ["sup", "--env", env.as_str(), "tail"];
        let exact = "F".repeat(ANCESTOR_ARGS_MAX - 3);
        let fits = ["sup", exact.as_str()];
        t.apply(&ev(1, task(1, 0, "init"), exec("/sbin/init", &["init"])));
        t.apply(&ev(2, task(5, 1, "sup"), exec("/sbin/sup", &cut)));
        // Exec without fork: 6's replaced images are ancestors too.
        t.apply(&ev(3, task(6, 5, "sup"), fork()));
        t.apply(&ev(4, task(6, 5, "a"), exec("/bin/a", &fits)));
        t.apply(&ev(5, task(6, 5, "b"), exec("/bin/b", &cut)));
        t.apply(&ev(6, task(7, 6, "b"), fork()));
        t.apply(&ev(7, task(7, 6, "c"), exec("/bin/c", &["c"])));
        let fresh = |t: &mut ProcessTable, pid: u32| {
            t.chains.clear();
            t.ancestry(pid)
        };
        for pid in [1, 5, 6, 7] {
            let built = fresh(&mut t, pid);
            assert!(t.ancestry_is(pid, &built), "pid {pid}: {built:?}");
            assert!(Shared::same(&built, &t.ancestry(pid)) || built.is_empty());
            // Any one field off, and it is not reused.
            for at in 0..built.len() {
                let mut off = (*built).clone();
                off[at].args_truncated = !off[at].args_truncated;
                assert!(!t.ancestry_is(pid, &off), "pid {pid} #{at} truncated");
                let mut off = (*built).clone();
                off[at].args.pop();
                assert!(!t.ancestry_is(pid, &off), "pid {pid} #{at} args");
                let mut off = (*built).clone();
                off[at].uid += 1;
                assert!(!t.ancestry_is(pid, &off), "pid {pid} #{at} uid");
            }
            let mut longer = (*built).clone();
            longer.push(Ancestor::default());
            assert!(!t.ancestry_is(pid, &longer));
            if !built.is_empty() {
                assert!(!t.ancestry_is(pid, &built[..built.len() - 1]));
            }
        }
        let chain = t.ancestry(7);
        let pids: Vec<u32> = chain.iter().map(|a| a.pid).collect();
        assert_eq!(pids, [6, 6, 5, 1], "b, the a it replaced, sup, init");
        // A change anywhere up the chain (5 execs again) is seen.
        t.apply(&ev(8, task(5, 1, "sup2"), exec("/sbin/sup2", &["sup2"])));
        let after = t.ancestry(7);
        assert!(!Shared::same(&chain, &after));
        assert_eq!(after, fresh(&mut t, 7));
        assert_eq!(after[2].comm.as_bytes(), b"sup2");
    }

    #[test]
    fn fork_exec_exit_lifecycle_and_ancestry() {
        let mut t = table();
        t.apply(&ev(1, task(1, 0, "init"), exec("/sbin/init", &["init"])));
        t.apply(&ev(2, task(10, 1, "init"), fork()));
        // The forked child runs the parent's image.
        assert_eq!(
            t.get(10).unwrap().exe.as_ref().unwrap().as_bytes(),
            b"/sbin/init"
        );
        t.apply(&ev(
            3,
            task(10, 1, "sh"),
            exec("/usr/bin/dash", &["sh", "-c", "x"]),
        ));
        t.apply(&ev(4, task(11, 10, "sh"), fork()));
        t.apply(&ev(
            5,
            task(11, 10, "echo"),
            exec("/usr/bin/echo", &["echo", "hi"]),
        ));

        let chain = t.ancestry(11);
        let pids: Vec<u32> = chain.iter().map(|a| a.pid).collect();
        assert_eq!(pids, vec![10, 1]);
        assert_eq!(chain[0].exe.as_ref().unwrap().as_bytes(), b"/usr/bin/dash");
        // The fork-time copy of init's image in pid 10 is not an ancestor.
        assert_eq!(t.parent(11).unwrap().pid, 10);

        let p = t.process(11, Some(11)).unwrap();
        assert_eq!(p.tid, None, "tid equal to pid is omitted");
        assert_eq!(
            p.user.as_deref(),
            Some("root"),
            "uid 0 is root in the test passwd"
        );

        t.apply(&ev(
            6,
            task(11, 10, "echo"),
            Detail::Exit(ExitDetail::default()),
        ));
        t.expire(6 + EXIT_GRACE.as_nanos() as u64 - 1);
        assert!(t.get(11).is_some(), "kept during the grace period");
        t.expire(6 + EXIT_GRACE.as_nanos() as u64);
        assert!(t.get(11).is_none(), "removed after it");
        assert!(t.get(10).is_some());
    }

    #[test]
    fn exec_without_fork_makes_the_replaced_image_the_parent() {
        let mut t = table();
        t.apply(&ev(1, task(1, 0, "init"), exec("/sbin/init", &["init"])));
        t.apply(&ev(2, task(20, 1, "init"), fork()));
        t.apply(&ev(
            3,
            task(20, 1, "sh"),
            exec("/usr/bin/dash", &["sh", "-c", "exec /bin/echo x"]),
        ));
        t.apply(&ev(
            4,
            task(20, 1, "echo"),
            exec("/usr/bin/echo", &["/bin/echo", "x"]),
        ));
        let parent = t.parent(20).unwrap();
        assert_eq!(parent.pid, 20);
        assert_eq!(parent.exe.as_ref().unwrap().as_bytes(), b"/usr/bin/dash");
        assert_eq!(parent.args[2].as_bytes(), b"exec /bin/echo x");
        let chain: Vec<(u32, Vec<u8>)> = t
            .ancestry(20)
            .iter()
            .map(|a| (a.pid, a.exe.clone().unwrap().0))
            .collect();
        assert_eq!(
            chain,
            vec![(20, b"/usr/bin/dash".to_vec()), (1, b"/sbin/init".to_vec())]
        );
    }

    #[test]
    fn a_reused_pid_is_not_removed_by_the_old_exit() {
        let mut t = table();
        t.apply(&ev(1, task(20, 1, "a"), fork()));
        t.apply(&ev(
            2,
            task(20, 1, "a"),
            Detail::Exit(ExitDetail::default()),
        ));
        let mut reused = task(20, 1, "b");
        reused.start_ns = 99_999;
        t.apply(&ev(3, reused, fork()));
        t.expire(u64::MAX);
        assert_eq!(t.get(20).unwrap().comm.as_bytes(), b"b");
    }

    #[test]
    fn ancestry_stops_on_cycles_and_unknown_parents() {
        let mut t = table();
        t.apply(&ev(1, task(30, 31, "x"), fork()));
        t.apply(&ev(1, task(31, 30, "y"), fork()));
        assert!(t.ancestry(30).len() <= MAX_ANCESTRY);
        t.apply(&ev(1, task(40, 999, "z"), fork()));
        assert!(t.ancestry(40).is_empty());
    }

    #[test]
    fn seeds_from_the_real_proc() {
        let mut t = ProcessTable::new();
        let stats = t.seed().unwrap();
        assert!(stats.processes > 0);
        let me = t.get(std::process::id()).expect("this test process");
        assert!(me.exe.is_some());
        // Our ancestry reaches pid 1 unless we run in a pid namespace whose
        // init is not visible; at least our parent is there.
        assert!(!t.ancestry(std::process::id()).is_empty());
    }
}
