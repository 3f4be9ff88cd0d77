//! Loading and attaching the eBPF programs, and access to their maps.
//!
//! A *sensor* is a named set of programs that serve one concern (process
//! lifecycle, syscall profiles, network...). Settings choose which sensors
//! run; each program's hook is listed once, in [`PROGRAMS`].

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
    /// Per-thread syscall counts.
    SyscallProfile,
}

impl Sensor {
    /// Stable name.
    pub fn name(self) -> &'static str {
        match self {
            Sensor::Process => "process",
            Sensor::SyscallProfile => "syscall_profile",
        }
    }
}

/// One program of the object.
#[derive(Debug, Clone, Copy)]
pub struct ProgramSpec {
    /// Function name in the eBPF object.
    pub name: &'static str,
    /// Attachment point.
    pub hook: Hook,
    /// The sensor it belongs to.
    pub sensor: Sensor,
}

/// Every program the agent knows, with its hook.
pub const PROGRAMS: &[ProgramSpec] = &[
    ProgramSpec {
        name: "sched_process_exec",
        hook: Hook::BtfTracepoint("sched_process_exec"),
        sensor: Sensor::Process,
    },
    ProgramSpec {
        name: "sched_process_fork",
        hook: Hook::BtfTracepoint("sched_process_fork"),
        sensor: Sensor::Process,
    },
    ProgramSpec {
        name: "sched_process_exit",
        hook: Hook::BtfTracepoint("sched_process_exit"),
        sensor: Sensor::Process,
    },
    ProgramSpec {
        name: "sys_enter",
        hook: Hook::BtfTracepoint("sys_enter"),
        sensor: Sensor::SyscallProfile,
    },
];

/// What to load.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    /// Count syscalls per thread.
    pub syscall_profiles: bool,
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub ringbuf_bytes: u32,
    /// Most threads with a syscall profile at once.
    pub profile_max_threads: u32,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        Self {
            syscall_profiles: true,
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
        source: ProgramError,
    },
    /// A map is missing from the object.
    #[error("the eBPF object has no usable map `{0}`")]
    Map(&'static str, #[source] aya::maps::MapError),
}

/// The loaded, attached programs.
pub struct Probes {
    ebpf: Ebpf,
    attached: Vec<ProgramSpec>,
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

        let mut attached = Vec::new();
        for spec in PROGRAMS {
            if !sensor_enabled(spec.sensor, settings) {
                continue;
            }
            attach(&mut ebpf, spec, &aya_btf)?;
            tracing::debug!(program = spec.name, hook = %spec.hook, "attached");
            attached.push(*spec);
        }
        Ok(Self {
            ebpf,
            attached,
            settings: settings.clone(),
            offsets,
        })
    }

    /// Programs attached, in order.
    pub fn attached(&self) -> &[ProgramSpec] {
        &self.attached
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
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(ProbeError::Map("EVENTS", aya::maps::MapError::InvalidName {
                name: "EVENTS".into(),
            }))?;
        RingBuf::try_from(map).map_err(|e| ProbeError::Map("EVENTS", e))
    }

    /// Takes the counters map (once).
    pub fn take_counters(&mut self) -> Result<KernelCounters, ProbeError> {
        let map = self
            .ebpf
            .take_map("COUNTERS")
            .ok_or(ProbeError::Map("COUNTERS", aya::maps::MapError::InvalidName {
                name: "COUNTERS".into(),
            }))?;
        PerCpuArray::try_from(map)
            .map(KernelCounters::new)
            .map_err(|e| ProbeError::Map("COUNTERS", e))
    }

    /// Takes the per-thread profile map (once).
    pub fn take_profiles(&mut self) -> Result<BpfHashMap<MapData, u32, ThreadProfile>, ProbeError> {
        let map = self
            .ebpf
            .take_map("PROFILES")
            .ok_or(ProbeError::Map("PROFILES", aya::maps::MapError::InvalidName {
                name: "PROFILES".into(),
            }))?;
        BpfHashMap::try_from(map).map_err(|e| ProbeError::Map("PROFILES", e))
    }
}

fn sensor_enabled(sensor: Sensor, settings: &ProbeSettings) -> bool {
    match sensor {
        Sensor::Process => true,
        Sensor::SyscallProfile => settings.syscall_profiles,
    }
}

fn attach(ebpf: &mut Ebpf, spec: &ProgramSpec, btf: &aya::Btf) -> Result<(), ProbeError> {
    let program = ebpf
        .program_mut(spec.name)
        .ok_or(ProbeError::MissingProgram(spec.name))?;
    let err = |action| {
        move |source| ProbeError::Program {
            action,
            program: spec.name,
            hook: spec.hook,
            source,
        }
    };
    match spec.hook {
        Hook::BtfTracepoint(name) => {
            let p: &mut BtfTracePoint = program.try_into().map_err(err("load"))?;
            p.load(name, btf).map_err(err("load"))?;
            p.attach().map_err(err("attach"))?;
        }
        Hook::Tracepoint(category, name) => {
            let p: &mut TracePoint = program.try_into().map_err(err("load"))?;
            p.load().map_err(err("load"))?;
            p.attach(category, name).map_err(err("attach"))?;
        }
    }
    Ok(())
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
