//! Loading and attaching the eBPF programs, and access to their maps.
//!
//! A *sensor* is a named set of programs that serve one concern (process
//! lifecycle, syscall counts, network...). Settings choose which sensors
//! run; each program's hooks are listed once, in [`programs`].

pub mod btf;
pub mod counters;
pub mod features;
pub mod integrity;
pub mod mounts;
pub mod own_objects;
pub mod source;
pub mod verifier;

use aya::{
    Ebpf, EbpfLoader, VerifierLogLevel,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, ProgramError, TracePoint},
};
use monitor_common::{ABI_VERSION, KernelOffsets, ProbeConfig, ThreadCounts};

use self::counters::KernelCounters;

/// The compiled eBPF object (built by `build.rs` from `monitor-ebpf`).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor"));

/// Where a program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// A BTF-enabled raw tracepoint (`tp_btf/NAME`).
    BtfTracepoint(&'static str),
    /// A classic tracepoint `CATEGORY/NAME`.
    Tracepoint(&'static str, &'static str),
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hook::BtfTracepoint(name) => write!(f, "tp_btf/{name}"),
            Hook::Tracepoint(cat, name) => write!(f, "tracepoint/{cat}/{name}"),
        }
    }
}

/// A sensor: a concern the agent can watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sensor {
    /// exec, fork, exit.
    Process,
    /// Per-thread syscall counts (the `sys_enter` hook, which also stashes
    /// the security syscalls' arguments).
    SyscallCounts,
    /// Security-relevant syscalls, reported at exit: network, files,
    /// credentials, ptrace, module and BPF loads, memfd, executable memory,
    /// signals.
    Security,
}

impl Sensor {
    /// Stable name.
    pub fn name(self) -> &'static str {
        match self {
            Sensor::Process => "process",
            Sensor::SyscallCounts => "syscall_counts",
            Sensor::Security => "security",
        }
    }
}

/// One attachment: a program of the object at one hook, for one sensor. A
/// program may have several (the security entry program serves every
/// watched syscall).
#[derive(Debug, Clone, Copy)]
pub struct ProgramSpec {
    /// Function name in the eBPF object.
    pub name: &'static str,
    /// Attachment point.
    pub hook: Hook,
    /// The sensor it belongs to.
    pub sensor: Sensor,
    /// Attached only when syscall counts are on, even though its sensor
    /// also runs for the security events (which share `sys_enter`).
    pub counts_only: bool,
}

const fn btf(name: &'static str, sensor: Sensor) -> ProgramSpec {
    ProgramSpec {
        name,
        hook: Hook::BtfTracepoint(name),
        sensor,
        counts_only: false,
    }
}

/// Every attachment the agent knows. One raw hook serves the syscall-level
/// sensors on the way in: `sys_enter` counts syscalls and stashes the
/// arguments of watched ones. On the way out, one program is attached to
/// the exit tracepoint of each watched syscall (see
/// `monitor-ebpf/src/exits.rs` for why not to the raw `sys_exit`).
pub fn programs() -> &'static [ProgramSpec] {
    static PROGRAMS: std::sync::OnceLock<Vec<ProgramSpec>> = std::sync::OnceLock::new();
    PROGRAMS.get_or_init(|| {
        let mut specs = vec![
            btf("sched_process_exec", Sensor::Process),
            btf("sched_process_fork", Sensor::Process),
            btf("sched_process_exit", Sensor::Process),
            // Before `sys_enter`: a thread leaving a CPU takes its batch of
            // counted calls along (see `monitor-ebpf/src/counting.rs`).
            ProgramSpec {
                counts_only: true,
                ..btf("sched_switch", Sensor::SyscallCounts)
            },
            btf("sys_enter", Sensor::SyscallCounts),
        ];
        let mut names: Vec<(&str, &'static str)> = monitor_common::stash::BY_NAME
            .iter()
            .filter_map(|(name, op)| Some((*name, monitor_common::stash::exit_program(*op)?)))
            .collect();
        names.dedup();
        // Operations submitted through an io_uring ring bypass the syscall
        // hooks; the program is attached at whichever tracepoint exists.
        for tracepoint in IO_URING_SUBMIT_TRACEPOINTS {
            specs.push(ProgramSpec {
                name: "io_uring_submit",
                hook: Hook::Tracepoint("io_uring", tracepoint),
                sensor: Sensor::Security,
                counts_only: false,
            });
        }
        for (name, program) in names {
            // The tracepoint is named after the kernel's SYSCALL_DEFINE,
            // which for umount2 is `umount`.
            let name = if name == "umount2" { "umount" } else { name };
            // Leaked once: hooks are named by `&'static str` everywhere.
            let tracepoint: &'static str = Box::leak(format!("sys_exit_{name}").into_boxed_str());
            specs.push(ProgramSpec {
                name: program,
                hook: Hook::Tracepoint("syscalls", tracepoint),
                sensor: Sensor::Security,
                counts_only: false,
            });
        }
        specs
    })
}

/// Whether a sensor runs, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SensorState {
    /// All its programs are attached.
    Attached,
    /// Turned off in the settings.
    Disabled,
    /// It cannot run on this kernel: the host is partly blind.
    Unavailable(Unavailable),
}

/// A sensor's state without its reason: what the status, the metrics and
/// the heartbeat carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensorCondition {
    /// All its programs are attached.
    Attached,
    /// Turned off in the settings.
    Disabled,
    /// It cannot run on this kernel.
    Unavailable,
}

impl SensorCondition {
    /// `attached`, `disabled` or `unavailable`.
    pub fn name(self) -> &'static str {
        match self {
            SensorCondition::Attached => "attached",
            SensorCondition::Disabled => "disabled",
            SensorCondition::Unavailable => "unavailable",
        }
    }
}

impl SensorState {
    /// The state without its reason.
    pub fn condition(&self) -> SensorCondition {
        match self {
            SensorState::Attached => SensorCondition::Attached,
            SensorState::Disabled => SensorCondition::Disabled,
            SensorState::Unavailable(_) => SensorCondition::Unavailable,
        }
    }

    /// Why it is unavailable, in one line.
    pub fn reason(&self) -> Option<String> {
        match self {
            SensorState::Unavailable(why) => Some(why.to_string()),
            _ => None,
        }
    }
}

/// Why a sensor cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// The kernel lacks helpers its programs call.
    #[error("kernel {kernel} lacks {}", list(missing))]
    MissingFeatures {
        /// `uname -r`.
        kernel: String,
        /// What is missing.
        missing: Vec<features::Feature>,
    },
    /// The verifier refused one of its programs.
    #[error("{0}")]
    Refused(Refusal),
    /// A sensor it depends on is unavailable.
    #[error("needs the {} sensor, which is unavailable", .0.name())]
    Needs(Sensor),
}

fn list(missing: &[features::Feature]) -> String {
    missing
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A program the kernel would not load, summed up in one line; the full
/// verifier log is in a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "kernel {kernel} refused program `{program}`{}: {reason}{}",
    hook.map(|h| format!(" at {h}")).unwrap_or_default(),
    log.as_ref().map(|p| format!(" (verifier log: {})", p.display())).unwrap_or_default()
)]
pub struct Refusal {
    /// `uname -r`.
    pub kernel: String,
    /// The program.
    pub program: &'static str,
    /// Where it was to attach (none when the load itself failed).
    pub hook: Option<Hook>,
    /// The verifier's last word, or the load or attach error.
    pub reason: String,
    /// Where the full verifier log was written.
    pub log: Option<std::path::PathBuf>,
}

/// What to load.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    /// Count syscalls per thread.
    pub syscall_counts: bool,
    /// Stream security-relevant events (network, files, credentials...).
    pub security_events: bool,
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    /// The lifecycle lane gets a quarter of this on top
    /// ([`ProbeSettings::lifecycle_ring_bytes`]).
    pub ringbuf_bytes: u32,
    /// Most threads with a syscall counts at once.
    pub counts_max_threads: u32,
    /// Where the full verifier log of a refused program is written.
    pub verifier_log_dir: std::path::PathBuf,
}

impl ProbeSettings {
    /// Size of the lifecycle lane (exec, fork, exit): a quarter of the main
    /// ring, at least 16 KiB. 2 MiB by default: about 5,000 processes (an
    /// exec record packed to its contents is 150 to 300 bytes, up to 17.6
    /// KiB for a script with 8 KiB of arguments and long paths; a fork or
    /// exit is 88 bytes) before the agent must have read them, and only
    /// process churn fills it.
    pub fn lifecycle_ring_bytes(&self) -> u32 {
        (self.ringbuf_bytes / 4).max(16 << 10)
    }
}

impl Default for ProbeSettings {
    fn default() -> Self {
        Self {
            syscall_counts: true,
            security_events: true,
            ringbuf_bytes: 8 << 20,
            counts_max_threads: 16384,
            verifier_log_dir: "/run/monitor".into(),
        }
    }
}

/// Errors loading or attaching the probes.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Not root (or missing CAP_BPF + CAP_PERFMON).
    #[error("loading eBPF programs needs root (CAP_BPF and CAP_PERFMON); run as root")]
    NotPrivileged,
    /// A pseudo-filesystem is missing.
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
    /// Kernel BTF missing or a field unresolved.
    #[error("cannot resolve kernel structure offsets")]
    Btf(#[source] btf::BtfError),
    /// aya could not read the kernel BTF.
    #[error("cannot read kernel BTF for attaching BTF tracepoints (needs CONFIG_DEBUG_INFO_BTF)")]
    AyaBtf(#[source] aya::BtfError),
    /// The object could not be loaded (maps, relocation).
    #[error("cannot load the eBPF object")]
    Object(#[source] aya::EbpfError),
    /// The object lacks a program (built from another source version).
    #[error("the eBPF object has no program `{0}`; rebuild with `cargo xtask build`")]
    MissingProgram(&'static str),
    /// The object has a program no hook lists (built from another source
    /// version).
    #[error(
        "the eBPF object has a program `{0}` that no hook lists; rebuild with `cargo xtask build`"
    )]
    UnlistedProgram(String),
    /// The verifier rejected a program, or attaching failed.
    #[error("cannot {action} program `{program}` at {hook}")]
    Program {
        /// `load` or `attach`.
        action: &'static str,
        /// Program name.
        program: &'static str,
        /// Hook.
        hook: Hook,
        /// Why (for a load, it carries the verifier log).
        #[source]
        source: Box<ProgramError>,
    },
    /// A load refused on purpose by the tests (`MONITOR_FAULT_REFUSE`), to
    /// drive the degraded paths on a kernel that refuses nothing.
    #[error(
        "program `{program}` refused on purpose (MONITOR_FAULT_REFUSE, a test fault injection)"
    )]
    FaultInjected {
        /// Program name.
        program: &'static str,
    },
    /// A program whose load failed at an earlier hook: it is not verified
    /// again for each of its hooks.
    #[error("program `{program}` was refused at its first hook; not attached at {hook}")]
    RefusedEarlier {
        /// Program name.
        program: &'static str,
        /// Hook.
        hook: Hook,
    },
    /// Process lifecycle capture is impossible on this kernel: its helpers
    /// are missing. One line, meant for the operator.
    #[error(
        "kernel {kernel} cannot run process capture: it lacks {}; monitor needs Linux {} or newer",
        list(missing),
        features::MINIMUM_KERNEL
    )]
    KernelTooOld {
        /// `uname -r`.
        kernel: String,
        /// What is missing.
        missing: Vec<features::Feature>,
    },
    /// Process lifecycle capture is impossible: the kernel refused one of
    /// its programs. One line; the verifier log is in the file it names.
    #[error("process capture cannot start: {0}")]
    ProcessRefused(Box<Refusal>),
    /// A map is missing from the object.
    #[error("the eBPF object has no usable map `{0}`")]
    Map(&'static str, #[source] aya::maps::MapError),
}

/// The loaded, attached programs.
pub struct Probes {
    ebpf: Ebpf,
    links: Vec<Link>,
    attached: Vec<ProgramSpec>,
    sensors: std::collections::BTreeMap<Sensor, SensorState>,
    settings: ProbeSettings,
    offsets: KernelOffsets,
    /// What was set up, for [`Probes::check_integrity`].
    expected: integrity::Expected,
}

impl Probes {
    /// Loads the object with offsets from this kernel's BTF, and attaches the
    /// programs of the enabled sensors.
    ///
    /// Fails only when process lifecycle capture is impossible; any other
    /// sensor that cannot run is reported [`SensorState::Unavailable`].
    pub fn load(settings: &ProbeSettings) -> Result<Self, ProbeError> {
        let started = std::time::Instant::now();
        let (mut ebpf, offsets, btf) = open_object(settings)?;
        let kernel = features::kernel_release();
        let aya_btf = aya::Btf::from_sys_fs().map_err(ProbeError::AyaBtf)?;

        let mut sensors = std::collections::BTreeMap::new();
        for sensor in [Sensor::Process, Sensor::SyscallCounts, Sensor::Security] {
            let state = if !sensor_enabled(sensor, settings) {
                SensorState::Disabled
            } else {
                // (Process capture's own features were checked in `open_object`.)
                let missing = features::missing(&btf, sensor);
                if missing.is_empty() {
                    SensorState::Attached
                } else {
                    SensorState::Unavailable(Unavailable::MissingFeatures {
                        kernel: kernel.clone(),
                        missing,
                    })
                }
            };
            sensors.insert(sensor, state);
        }
        settle_dependencies(&mut sensors);

        let mut planned = Vec::new();
        for spec in programs() {
            if sensors.get(&spec.sensor) != Some(&SensorState::Attached)
                || (spec.counts_only && !settings.syscall_counts)
            {
                continue;
            }
            if let Hook::Tracepoint(category, name) = spec.hook
                && !tracepoint_exists(category, name)
            {
                // A syscall this kernel lacks (or compiled out, like the
                // module calls without CONFIG_MODULES) cannot happen here.
                tracing::debug!(
                    tracepoint = name,
                    "no such tracepoint on this kernel; skipped"
                );
                continue;
            }
            planned.push(*spec);
        }

        fill_syscall_ops(&mut ebpf)?;
        let results = attach_all(&mut ebpf, &planned, &aya_btf);
        let mut links = Vec::new();
        for (spec, result) in planned.iter().zip(results) {
            match result {
                Ok(link) => {
                    tracing::debug!(program = spec.name, hook = %spec.hook, "attached");
                    links.push((*spec, link));
                }
                Err(ProbeError::RefusedEarlier { .. }) => {} // reported with its first hook
                Err(err) => {
                    let refusal = refusal(&kernel, spec, &err, &settings.verifier_log_dir);
                    if spec.sensor == Sensor::Process {
                        detach_in_parallel(links.into_iter().map(|(_, l)| l).collect());
                        return Err(ProbeError::ProcessRefused(Box::new(refusal)));
                    }
                    if sensors.get(&spec.sensor) == Some(&SensorState::Attached) {
                        sensors.insert(
                            spec.sensor,
                            SensorState::Unavailable(Unavailable::Refused(refusal)),
                        );
                    }
                }
            }
        }
        settle_dependencies(&mut sensors);
        // A sensor is all or nothing: detach what an unavailable sensor did
        // attach (an entry hook without its exit would only fill the stash).
        let (links, dropped): (Vec<_>, Vec<_>) = links
            .into_iter()
            .partition(|(spec, _)| sensors.get(&spec.sensor) == Some(&SensorState::Attached));
        detach_in_parallel(dropped.into_iter().map(|(_, l)| l).collect());
        let attached: Vec<ProgramSpec> = links.iter().map(|(spec, _)| *spec).collect();
        let links: Vec<Link> = links.into_iter().map(|(_, link)| link).collect();
        if !settings.syscall_counts
            && sensors.get(&Sensor::SyscallCounts) == Some(&SensorState::Attached)
        {
            // Attached for the security stash, but not counting.
            sensors.insert(Sensor::SyscallCounts, SensorState::Disabled);
        }
        for (sensor, state) in &sensors {
            if let SensorState::Unavailable(why) = state {
                tracing::warn!(sensor = sensor.name(), "sensor unavailable: {why}");
            }
        }
        match own_objects::register(&mut ebpf) {
            Ok(n) => tracing::debug!(objects = n, "own BPF objects registered"),
            // The sensor still works; only bpf() calls on its objects by
            // others go unreported.
            Err(why) => tracing::warn!(
                "bpf() calls on the agent's own maps and links will not be reported: {why}"
            ),
        }
        let names: Vec<&'static str> = attached.iter().map(|spec| spec.name).collect();
        let expected = integrity::Expected::snapshot(&mut ebpf, &names);
        tracing::info!(
            programs = attached.len(),
            hooks_checked = expected.programs_checked(),
            took_ms = started.elapsed().as_millis() as u64,
            "eBPF programs loaded and attached"
        );
        Ok(Self {
            ebpf,
            links,
            attached,
            sensors,
            settings: settings.clone(),
            offsets,
            expected,
        })
    }

    /// Checks that every hook is still attached and the maps the agent
    /// filled still hold what it put there (putting back what differs).
    /// Returns one line per difference; see [`integrity`].
    pub fn check_integrity(&mut self) -> Vec<String> {
        if let Some(program) = fault_detach() {
            // The tests detach a hook for real, as an attacker would.
            let keep: Vec<bool> = self.attached.iter().map(|s| s.name != program).collect();
            let mut flags = keep.iter();
            let (kept, gone): (Vec<Link>, Vec<Link>) = std::mem::take(&mut self.links)
                .into_iter()
                .partition(|_| *flags.next().unwrap_or(&true));
            self.links = kept;
            detach_in_parallel(gone);
        }
        self.expected.check(&mut self.ebpf)
    }

    /// Programs attached, in order.
    pub fn attached(&self) -> &[ProgramSpec] {
        &self.attached
    }

    /// Detaches every hook, in parallel: each detach waits for an RCU grace
    /// period, and concurrent waits share one, so 60 hooks detach in about
    /// the time of one instead of several seconds.
    pub fn detach_all(&mut self) {
        detach_in_parallel(std::mem::take(&mut self.links));
        self.attached.clear();
    }

    /// The state of every sensor.
    pub fn sensors(&self) -> &std::collections::BTreeMap<Sensor, SensorState> {
        &self.sensors
    }

    /// Takes the sensitive-locations map (once).
    pub fn take_sensitive(
        &mut self,
    ) -> Result<BpfHashMap<MapData, monitor_common::InodeKey, u8>, ProbeError> {
        let map = self.ebpf.take_map("SENSITIVE").ok_or(ProbeError::Map(
            "SENSITIVE",
            aya::maps::MapError::InvalidName {
                name: "SENSITIVE".into(),
            },
        ))?;
        BpfHashMap::try_from(map).map_err(|e| ProbeError::Map("SENSITIVE", e))
    }

    /// Takes the per-process budgets of file records (once): the agent
    /// reads which process was over its budget, and by how much.
    pub fn take_file_budget(
        &mut self,
    ) -> Result<BpfHashMap<MapData, u32, monitor_common::FileBudget>, ProbeError> {
        let map = self.ebpf.take_map("FILE_BUDGET").ok_or(ProbeError::Map(
            "FILE_BUDGET",
            aya::maps::MapError::InvalidName {
                name: "FILE_BUDGET".into(),
            },
        ))?;
        BpfHashMap::try_from(map).map_err(|e| ProbeError::Map("FILE_BUDGET", e))
    }

    /// Takes the kernel's cache of directory verdicts (once): the agent
    /// empties it whenever the sensitive locations change. Keys and values
    /// are opaque here (`DirKey`, `DirVerdict` in monitor-ebpf).
    pub fn take_dir_verdicts(
        &mut self,
    ) -> Result<BpfHashMap<MapData, [u64; 2], [u64; 2]>, ProbeError> {
        let map = self.ebpf.take_map("DIR_VERDICTS").ok_or(ProbeError::Map(
            "DIR_VERDICTS",
            aya::maps::MapError::InvalidName {
                name: "DIR_VERDICTS".into(),
            },
        ))?;
        BpfHashMap::try_from(map).map_err(|e| ProbeError::Map("DIR_VERDICTS", e))
    }

    /// The settings loaded with.
    pub fn settings(&self) -> &ProbeSettings {
        &self.settings
    }

    /// The offsets resolved from BTF.
    pub fn offsets(&self) -> &KernelOffsets {
        &self.offsets
    }

    /// Takes the ring buffers (once): the lifecycle lane and the rest.
    pub fn take_rings(&mut self) -> Result<source::Rings, ProbeError> {
        let mut ring = |name: &'static str| {
            let map = self.ebpf.take_map(name).ok_or(ProbeError::Map(
                name,
                aya::maps::MapError::InvalidName { name: name.into() },
            ))?;
            RingBuf::try_from(map).map_err(|e| ProbeError::Map(name, e))
        };
        Ok(source::Rings {
            lifecycle: ring("LIFECYCLE")?,
            events: ring("EVENTS")?,
        })
    }

    /// Takes the counters map (once).
    pub fn take_counters(&mut self) -> Result<KernelCounters, ProbeError> {
        let map = self.ebpf.take_map("COUNTERS").ok_or(ProbeError::Map(
            "COUNTERS",
            aya::maps::MapError::InvalidName {
                name: "COUNTERS".into(),
            },
        ))?;
        PerCpuArray::try_from(map)
            .map(KernelCounters::new)
            .map_err(|e| ProbeError::Map("COUNTERS", e))
    }

    /// Takes the per-thread counts map (once).
    pub fn take_counts(&mut self) -> Result<BpfHashMap<MapData, u32, ThreadCounts>, ProbeError> {
        let map = self.ebpf.take_map("SYSCALL_COUNTS").ok_or(ProbeError::Map(
            "SYSCALL_COUNTS",
            aya::maps::MapError::InvalidName {
                name: "SYSCALL_COUNTS".into(),
            },
        ))?;
        BpfHashMap::try_from(map).map_err(|e| ProbeError::Map("SYSCALL_COUNTS", e))
    }
}

/// The empty program on `sys_enter` that measures the floor cost of hooking
/// every syscall (`monitor bench-floor`); never attached by the agent.
pub const FLOOR_PROGRAM: ProgramSpec = ProgramSpec {
    name: "sys_enter_empty",
    hook: Hook::BtfTracepoint("sys_enter"),
    sensor: Sensor::SyscallCounts,
    counts_only: false,
};

/// The benchmark floor: only an empty program on `sys_enter` (see
/// `monitor bench-floor`). Detaches when dropped.
pub struct FloorProbe {
    _link: Link,
    _ebpf: Ebpf,
}

impl FloorProbe {
    /// Loads the object and attaches only the empty `sys_enter` program.
    pub fn attach() -> Result<Self, ProbeError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(ProbeError::NotPrivileged);
        }
        mounts::ensure_mounted()?;
        let mut ebpf = EbpfLoader::new()
            .load(EBPF_OBJECT)
            .map_err(ProbeError::Object)?;
        let btf = aya::Btf::from_sys_fs().map_err(ProbeError::AyaBtf)?;
        let spec = FLOOR_PROGRAM;
        let program = ebpf
            .program_mut(spec.name)
            .ok_or(ProbeError::MissingProgram(spec.name))?;
        let link = attach(program, &spec, &btf, true)?;
        Ok(Self {
            _link: link,
            _ebpf: ebpf,
        })
    }
}

/// Drops links on one thread each (see [`Probes::detach_all`]).
fn detach_in_parallel(links: Vec<Link>) {
    std::thread::scope(|scope| {
        for link in links {
            scope.spawn(move || drop(link));
        }
    });
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.detach_all();
    }
}

fn sensor_enabled(sensor: Sensor, settings: &ProbeSettings) -> bool {
    match sensor {
        Sensor::Process => true,
        // The sys_enter program also stashes the security syscalls' arguments.
        Sensor::SyscallCounts => settings.syscall_counts || settings.security_events,
        Sensor::Security => settings.security_events,
    }
}

/// The security sensor stashes its arguments in the `sys_enter` program of
/// the syscall-counts sensor: without that program it sees nothing.
fn settle_dependencies(sensors: &mut std::collections::BTreeMap<Sensor, SensorState>) {
    let entry_down = matches!(
        sensors.get(&Sensor::SyscallCounts),
        Some(SensorState::Unavailable(_))
    );
    if entry_down && sensors.get(&Sensor::Security) == Some(&SensorState::Attached) {
        sensors.insert(
            Sensor::Security,
            SensorState::Unavailable(Unavailable::Needs(Sensor::SyscallCounts)),
        );
    }
}

/// Checks privileges and mounts, resolves the kernel's offsets, and opens
/// the object with them and `settings` filled in (programs not loaded yet).
pub(crate) fn open_object(
    settings: &ProbeSettings,
) -> Result<(Ebpf, KernelOffsets, btf::Btf), ProbeError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(ProbeError::NotPrivileged);
    }
    mounts::ensure_mounted()?;
    raise_memlock_limit();
    let btf = btf::Btf::from_sys_fs().map_err(ProbeError::Btf)?;
    // Before anything is loaded: on a kernel too old for process capture,
    // even creating the maps may fail, with a message no one can act on.
    let missing = features::missing(&btf, Sensor::Process);
    if !missing.is_empty() {
        return Err(ProbeError::KernelTooOld {
            kernel: features::kernel_release(),
            missing,
        });
    }
    let offsets = btf.kernel_offsets().map_err(ProbeError::Btf)?;
    let config = ProbeConfig {
        abi_version: ABI_VERSION,
        agent_pid: std::process::id(),
        counts_enabled: u32::from(settings.syscall_counts),
        security_enabled: u32::from(settings.security_events),
        _pad0: 0,
        exit_has_group_dead: u32::from(exit_tracepoint_has_group_dead()),
        io_uring_opcode_at: io_uring_opcode_offset().unwrap_or(0),
        _pad1: 0,
    };
    let ebpf = EbpfLoader::new()
        .override_global("OFFSETS", &offsets, true)
        .override_global("CONFIG", &config, true)
        .map_max_entries("EVENTS", settings.ringbuf_bytes)
        .map_max_entries("LIFECYCLE", settings.lifecycle_ring_bytes())
        .map_max_entries("SYSCALL_COUNTS", settings.counts_max_threads)
        // Errors and statistics only. The default adds the per-branch
        // trace, which for a refused program runs to gigabytes: aya then
        // verifies it again with a log ten times larger, up to ten times.
        .verifier_log_level(VerifierLogLevel::STATS)
        .load(EBPF_OBJECT)
        .map_err(ProbeError::Object)?;
    Ok((ebpf, offsets, btf))
}

/// Sums up a failed load or attach in one line, writing the verifier log
/// (if any) to a file in `log_dir`.
fn refusal(
    kernel: &str,
    spec: &ProgramSpec,
    err: &ProbeError,
    log_dir: &std::path::Path,
) -> Refusal {
    let (reason, log) = match err {
        ProbeError::Program { source, .. } => match source.as_ref() {
            ProgramError::LoadError {
                io_error,
                verifier_log,
            } => {
                let text = verifier_log.to_string();
                let summary = verifier::LogSummary::parse(&text);
                let path = write_verifier_log(log_dir, spec.name, kernel, &text);
                (summary.reason.unwrap_or_else(|| io_error.to_string()), path)
            }
            other => (crate::error::error_chain(other), None),
        },
        other => (crate::error::error_chain(other), None),
    };
    Refusal {
        kernel: kernel.to_owned(),
        program: spec.name,
        hook: Some(spec.hook),
        reason,
        log,
    }
}

/// Writes a verifier log to `<dir>/verifier-<program>.log` (0600, in a
/// 0700 directory); returns its path, or `None` (logged) if it could not.
fn write_verifier_log(
    dir: &std::path::Path,
    program: &str,
    kernel: &str,
    log: &str,
) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let path = dir.join(format!("verifier-{program}.log"));
    let write = || -> std::io::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        use std::io::Write as _;
        writeln!(file, "# program {program}, kernel {kernel}")?;
        file.write_all(log.as_bytes())
    };
    match write() {
        Ok(()) => Some(path),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot write the verifier log");
            None
        }
    }
}

/// Fills `SYSCALL_OPS` (syscall number -> stash op) from this build's
/// syscall table, so the entry program needs no per-architecture numbers.
fn fill_syscall_ops(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    let map = ebpf.map_mut("SYSCALL_OPS").ok_or(ProbeError::Map(
        "SYSCALL_OPS",
        aya::maps::MapError::InvalidName {
            name: "SYSCALL_OPS".into(),
        },
    ))?;
    let mut ops: aya::maps::Array<_, u32> =
        aya::maps::Array::try_from(map).map_err(|e| ProbeError::Map("SYSCALL_OPS", e))?;
    for (name, op) in monitor_common::stash::BY_NAME {
        if let Some(nr) = crate::syscalls::Abi::x86_64_number(name) {
            ops.set(nr, op, 0)
                .map_err(|e| ProbeError::Map("SYSCALL_OPS", e))?;
        }
    }
    Ok(())
}

fn tracepoint_exists(category: &str, name: &str) -> bool {
    std::path::Path::new("/sys/kernel/tracing/events")
        .join(category)
        .join(name)
        .is_dir()
}

/// Loads each program once and attaches it at each of its hooks, with the
/// programs split over two threads (the verifier is the slow part of
/// start-up, and it runs in the calling thread). Results are in `specs` order.
fn attach_all(
    ebpf: &mut Ebpf,
    specs: &[ProgramSpec],
    btf: &aya::Btf,
) -> Vec<Result<Link, ProbeError>> {
    type Job<'a> = (
        &'static str,
        Option<&'a mut aya::programs::Program>,
        Vec<(usize, ProgramSpec)>,
    );
    let mut by_name: std::collections::HashMap<&str, &mut aya::programs::Program> =
        ebpf.programs_mut().collect();
    let mut jobs: Vec<Job<'_>> = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        match jobs.iter_mut().find(|(name, _, _)| *name == spec.name) {
            Some((_, _, hooks)) => hooks.push((i, *spec)),
            None => jobs.push((spec.name, by_name.remove(spec.name), vec![(i, *spec)])),
        }
    }
    // Alternate programs between the threads, so the big ones spread.
    type Numbered<'a> = Vec<(usize, Job<'a>)>;
    let (odd, even): (Numbered<'_>, Numbered<'_>) =
        jobs.into_iter().enumerate().partition(|(i, _)| i % 2 == 1);
    let run = |jobs: Vec<(usize, Job<'_>)>| {
        let mut out = Vec::new();
        for (_, (name, program, hooks)) in jobs {
            match program {
                Some(program) => {
                    let mut loaded = false;
                    let mut refused = false;
                    for (i, spec) in hooks {
                        if refused {
                            out.push((
                                i,
                                Err(ProbeError::RefusedEarlier {
                                    program: spec.name,
                                    hook: spec.hook,
                                }),
                            ));
                            continue;
                        }
                        let result = if !loaded && fault_injected(spec.name) {
                            Err(ProbeError::FaultInjected { program: spec.name })
                        } else {
                            attach(program, &spec, btf, !loaded)
                        };
                        loaded |= result.is_ok();
                        // A load that fails, fails every hook: one verifier run.
                        refused = matches!(
                            &result,
                            Err(ProbeError::Program { action: "load", .. }
                                | ProbeError::FaultInjected { .. })
                        );
                        out.push((i, result));
                    }
                }
                None => out.extend(
                    hooks
                        .into_iter()
                        .map(|(i, _)| (i, Err(ProbeError::MissingProgram(name)))),
                ),
            }
        }
        out
    };
    let mut results: Vec<(usize, Result<Link, ProbeError>)> = std::thread::scope(|scope| {
        let other = scope.spawn(|| run(odd));
        let mut mine = run(even);
        mine.extend(other.join().expect("attach thread does not panic"));
        mine
    });
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// True if the tests asked for `program` to be refused: the variable
/// `MONITOR_FAULT_DETACH` names a program whose hooks the first integrity
/// check detaches, for real (a test fault injection, like
/// `MONITOR_FAULT_REFUSE`): the check must then see them gone.
fn fault_detach() -> Option<String> {
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let program = std::env::var("MONITOR_FAULT_DETACH").ok()?;
    (!DONE.swap(true, std::sync::atomic::Ordering::Relaxed)).then_some(program)
}

/// `MONITOR_FAULT_REFUSE` names programs, comma-separated. Lets the tests
/// drive the paths of a refused program (sensor unavailable, one-line
/// refusal) on a kernel that refuses nothing.
fn fault_injected(program: &str) -> bool {
    std::env::var("MONITOR_FAULT_REFUSE")
        .is_ok_and(|names| names.split(',').any(|n| n.trim() == program))
}

/// One attachment, owned apart from its program: dropping it detaches that
/// hook only, and links can be dropped from several threads at once.
pub enum Link {
    /// A BTF tracepoint link.
    Btf(aya::programs::tp_btf::BtfTracePointLink),
    /// A tracepoint link.
    Tracepoint(aya::programs::trace_point::TracePointLink),
}

fn attach(
    program: &mut aya::programs::Program,
    spec: &ProgramSpec,
    btf: &aya::Btf,
    load: bool,
) -> Result<Link, ProbeError> {
    let err = |action| {
        move |source| ProbeError::Program {
            action,
            program: spec.name,
            hook: spec.hook,
            source: Box::new(source),
        }
    };
    match spec.hook {
        Hook::BtfTracepoint(name) => {
            let p: &mut BtfTracePoint = program.try_into().map_err(err("load"))?;
            if load {
                p.load(name, btf).map_err(err("load"))?;
            }
            let id = p.attach().map_err(err("attach"))?;
            Ok(Link::Btf(p.take_link(id).map_err(err("attach"))?))
        }
        Hook::Tracepoint(category, name) => {
            let p: &mut TracePoint = program.try_into().map_err(err("load"))?;
            if load && p.fd().is_err() {
                p.load().map_err(err("load"))?;
            }
            let id = p.attach(category, name).map_err(err("attach"))?;
            Ok(Link::Tracepoint(p.take_link(id).map_err(err("attach"))?))
        }
    }
}

/// Kernels since 6.16 pass `group_dead` to `sched_process_exit`; the
/// tracepoint's format file says whether this one does.
/// The io_uring submit tracepoints, newest name first (`io_uring_submit_sqe`
/// became `io_uring_submit_req` in 5.18).
const IO_URING_SUBMIT_TRACEPOINTS: [&str; 2] = ["io_uring_submit_req", "io_uring_submit_sqe"];

/// Offset of `opcode` in the record of whichever io_uring submit tracepoint
/// this kernel has (its layout changed between versions).
fn io_uring_opcode_offset() -> Option<u32> {
    IO_URING_SUBMIT_TRACEPOINTS.iter().find_map(|name| {
        let format =
            std::fs::read_to_string(format!("/sys/kernel/tracing/events/io_uring/{name}/format"))
                .ok()?;
        field_offset(&format, "opcode")
    })
}

/// The offset of `field` in a tracefs event format
/// (`field:u8 opcode;\toffset:32;\tsize:1;...`).
fn field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let declared = line.trim().strip_prefix("field:")?.split(';').next()?;
        if declared.rsplit([' ', '*']).next()? != field {
            return None;
        }
        let offset = line.split("offset:").nth(1)?.split(';').next()?;
        offset.trim().parse().ok()
    })
}

fn exit_tracepoint_has_group_dead() -> bool {
    std::fs::read_to_string("/sys/kernel/tracing/events/sched/sched_process_exit/format")
        .is_ok_and(|f| f.contains("group_dead"))
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones use
/// the memory cgroup and ignore it. Raise it where allowed, quietly.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads one rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "could not raise RLIMIT_MEMLOCK (fine on kernels >= 5.11)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::field_offset;

    #[test]
    fn a_field_offset_is_read_from_a_tracefs_format() {
        // io_uring_submit_req on 6.18, and io_uring_submit_sqe on 5.17.
        let req = "name: io_uring_submit_req\nID: 2140\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\n\tfield:void * ctx;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:void * req;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:unsigned long long user_data;\toffset:24;\tsize:8;\tsigned:0;\n\tfield:u8 opcode;\toffset:32;\tsize:1;\tsigned:0;\n\tfield:__data_loc char[] op_str;\toffset:52;\tsize:4;\tsigned:0;\n";
        let sqe = "format:\n\tfield:void * ctx;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:void * req;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:u8 opcode;\toffset:24;\tsize:1;\tsigned:0;\n\tfield:u64 user_data;\toffset:32;\tsize:8;\tsigned:0;\n";
        assert_eq!(field_offset(req, "opcode"), Some(32));
        assert_eq!(field_offset(sqe, "opcode"), Some(24));
        assert_eq!(field_offset(req, "req"), Some(16));
        assert_eq!(field_offset(req, "code"), None, "a name is matched whole");
        assert_eq!(field_offset("", "opcode"), None);
    }
}
