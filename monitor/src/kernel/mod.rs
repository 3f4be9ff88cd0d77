//! Loading and attaching the eBPF programs, and access to their maps.
//!
//! A *sensor* is a named set of programs that serve one concern (process
//! lifecycle, syscall profiles, network...). Settings choose which sensors
//! run; each program's hooks are listed once, in [`programs`].

pub mod btf;
pub mod counters;
pub mod mounts;
pub mod source;

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, ProgramError, TracePoint},
};
use monitor_common::{ABI_VERSION, KernelOffsets, ProbeConfig, ThreadProfile};

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
    SyscallProfile,
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
            Sensor::SyscallProfile => "syscall_profile",
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
    /// Attached only when syscall profiles are on, even though its sensor
    /// also runs for the security events (which share `sys_enter`).
    pub profiles_only: bool,
}

const fn btf(name: &'static str, sensor: Sensor) -> ProgramSpec {
    ProgramSpec {
        name,
        hook: Hook::BtfTracepoint(name),
        sensor,
        profiles_only: false,
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
            // counted calls along (see `monitor-ebpf/src/profile.rs`).
            ProgramSpec {
                profiles_only: true,
                ..btf("sched_switch", Sensor::SyscallProfile)
            },
            btf("sys_enter", Sensor::SyscallProfile),
        ];
        let mut names: Vec<&str> = monitor_common::stash::BY_NAME
            .iter()
            .filter(|(_, op)| {
                !matches!(
                    *op,
                    monitor_common::stash::MMAP | monitor_common::stash::MPROTECT
                )
            })
            .map(|(name, _)| *name)
            .collect();
        names.dedup();
        for name in names {
            // Leaked once: hooks are named by `&'static str` everywhere.
            let tracepoint: &'static str = Box::leak(format!("sys_exit_{name}").into_boxed_str());
            specs.push(ProgramSpec {
                name: "sys_exit_watched",
                hook: Hook::Tracepoint("syscalls", tracepoint),
                sensor: Sensor::Security,
                profiles_only: false,
            });
        }
        specs
    })
}

/// Why a sensor is not running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SensorState {
    /// All its programs are attached.
    Attached,
    /// Turned off in the settings.
    Disabled,
    /// The kernel lacks its hooks (e.g. no module support): nothing of this
    /// kind can happen, or it cannot be seen. The text says which.
    Unavailable(String),
    /// A program failed to load or attach; the text is the error chain.
    Failed(String),
}

/// What to load.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    /// Count syscalls per thread.
    pub syscall_profiles: bool,
    /// Stream security-relevant events (network, files, credentials...).
    pub security_events: bool,
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub ringbuf_bytes: u32,
    /// Most threads with a syscall profile at once.
    pub profile_max_threads: u32,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        Self {
            syscall_profiles: true,
            security_events: true,
            ringbuf_bytes: 16 << 20,
            profile_max_threads: 16384,
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
}

impl Probes {
    /// Loads the object with offsets from this kernel's BTF, and attaches the
    /// programs of the enabled sensors.
    pub fn load(settings: &ProbeSettings) -> Result<Self, ProbeError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(ProbeError::NotPrivileged);
        }
        mounts::ensure_mounted()?;
        raise_memlock_limit();
        let offsets = btf::Btf::from_sys_fs()
            .and_then(|b| b.kernel_offsets())
            .map_err(ProbeError::Btf)?;
        let config = ProbeConfig {
            abi_version: ABI_VERSION,
            agent_pid: std::process::id(),
            profiles_enabled: u32::from(settings.syscall_profiles),
            security_enabled: u32::from(settings.security_events),
            _pad0: 0,
            exit_has_group_dead: u32::from(exit_tracepoint_has_group_dead()),
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("OFFSETS", &offsets, true)
            .override_global("CONFIG", &config, true)
            .map_max_entries("EVENTS", settings.ringbuf_bytes)
            .map_max_entries("PROFILES", settings.profile_max_threads)
            .load(EBPF_OBJECT)
            .map_err(ProbeError::Object)?;
        let aya_btf = aya::Btf::from_sys_fs().map_err(ProbeError::AyaBtf)?;

        let mut sensors = std::collections::BTreeMap::new();
        let mut planned = Vec::new();
        for spec in programs() {
            let state = sensors.entry(spec.sensor).or_insert(SensorState::Attached);
            if !sensor_enabled(spec.sensor, settings) {
                *state = SensorState::Disabled;
            } else if spec.profiles_only && !settings.syscall_profiles {
                // Only the counting needs it.
            } else if let Hook::Tracepoint(category, name) = spec.hook
                && !tracepoint_exists(category, name)
            {
                // A syscall this kernel lacks (or compiled out, like the
                // module calls without CONFIG_MODULES) cannot happen here.
                tracing::debug!(
                    tracepoint = name,
                    "no such tracepoint on this kernel; skipped"
                );
            } else {
                planned.push(*spec);
            }
        }
        planned.retain(|spec| sensors.get(&spec.sensor) == Some(&SensorState::Attached));

        fill_syscall_ops(&mut ebpf)?;
        let results = attach_all(&mut ebpf, &planned, &aya_btf);
        let mut links = Vec::new();
        let mut attached = Vec::new();
        let mut fatal = None;
        for (spec, result) in planned.iter().zip(results) {
            match result {
                Ok(link) => {
                    tracing::debug!(program = spec.name, hook = %spec.hook, "attached");
                    attached.push(*spec);
                    links.push((*spec, link));
                }
                // The lifecycle sensor and the syscall entry hook are the
                // floor everything stands on.
                Err(err) if matches!(spec.sensor, Sensor::Process | Sensor::SyscallProfile) => {
                    fatal.get_or_insert(err);
                }
                Err(err) => {
                    let chain = error_chain(&err);
                    tracing::error!(sensor = spec.sensor.name(), error = %chain, "sensor failed; continuing without it");
                    sensors.insert(spec.sensor, SensorState::Failed(chain));
                }
            }
        }
        if let Some(err) = fatal {
            detach_in_parallel(links.into_iter().map(|(_, l)| l).collect());
            return Err(err);
        }
        // A sensor is all or nothing: detach what a failed sensor did attach
        // (an entry hook without its exit would only fill the stash).
        let links: Vec<Link> = links
            .into_iter()
            .filter(|(spec, _)| sensors.get(&spec.sensor) == Some(&SensorState::Attached))
            .map(|(_, link)| link)
            .collect();
        attached.retain(|spec| sensors.get(&spec.sensor) == Some(&SensorState::Attached));
        if !settings.syscall_profiles {
            // Attached for the security stash, but not counting.
            sensors.insert(Sensor::SyscallProfile, SensorState::Disabled);
        }
        for (sensor, state) in &sensors {
            if let SensorState::Unavailable(why) = state {
                tracing::warn!(sensor = sensor.name(), "sensor unavailable: {why}");
            }
        }
        Ok(Self {
            ebpf,
            links,
            attached,
            sensors,
            settings: settings.clone(),
            offsets,
        })
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

    /// Takes the ring buffer (once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self.ebpf.take_map("EVENTS").ok_or(ProbeError::Map(
            "EVENTS",
            aya::maps::MapError::InvalidName {
                name: "EVENTS".into(),
            },
        ))?;
        RingBuf::try_from(map).map_err(|e| ProbeError::Map("EVENTS", e))
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

    /// Takes the per-thread profile map (once).
    pub fn take_profiles(&mut self) -> Result<BpfHashMap<MapData, u32, ThreadProfile>, ProbeError> {
        let map = self.ebpf.take_map("PROFILES").ok_or(ProbeError::Map(
            "PROFILES",
            aya::maps::MapError::InvalidName {
                name: "PROFILES".into(),
            },
        ))?;
        BpfHashMap::try_from(map).map_err(|e| ProbeError::Map("PROFILES", e))
    }
}

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
        let spec = ProgramSpec {
            name: "sys_enter_empty",
            hook: Hook::BtfTracepoint("sys_enter"),
            sensor: Sensor::SyscallProfile,
            profiles_only: false,
        };
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
        Sensor::SyscallProfile => settings.syscall_profiles || settings.security_events,
        Sensor::Security => settings.security_events,
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

/// An error and its sources on one line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
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
                    for (i, spec) in hooks {
                        let result = attach(program, &spec, btf, !loaded);
                        loaded |= result.is_ok();
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
