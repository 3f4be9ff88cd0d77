//! The kernel's eBPF features each sensor needs, checked before anything is
//! loaded.
//!
//! The kernel's BTF lists every BPF helper it has as an enumerator of
//! `enum bpf_func_id`, so a missing helper is found by name, on any kernel,
//! without loading a program and reading a verifier refusal (which on 5.10
//! is `number of funcs in func_info doesn't match number of subprogs`, a
//! line no operator can act on).

use super::{Sensor, btf::Btf};

/// One kernel feature the programs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    /// What the operator reads (the helper's name).
    pub name: &'static str,
    /// Its enumerator in `enum bpf_func_id`.
    enumerator: &'static str,
    /// The first mainline kernel that has it.
    pub since: &'static str,
    /// The sensors whose programs call it.
    pub sensors: &'static [Sensor],
}

impl std::fmt::Display for Feature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (Linux {})", self.name, self.since)
    }
}

const ALL: &[Sensor] = &[Sensor::Process, Sensor::SyscallCounts, Sensor::Security];
const ENTRY: &[Sensor] = &[Sensor::SyscallCounts, Sensor::Security];

/// Every helper whose absence refuses a program, oldest first. BTF
/// tracepoints (5.5) and BTF itself are checked apart: without them nothing
/// loads (see `ProbeError::Btf`).
pub const FEATURES: &[Feature] = &[
    Feature {
        name: "BPF ring buffer",
        enumerator: "BPF_FUNC_ringbuf_reserve",
        since: "5.8",
        sensors: ALL,
    },
    Feature {
        name: "bpf_get_current_task_btf",
        enumerator: "BPF_FUNC_get_current_task_btf",
        since: "5.11",
        sensors: ALL,
    },
    Feature {
        name: "bpf_task_pt_regs",
        enumerator: "BPF_FUNC_task_pt_regs",
        since: "5.15",
        sensors: ALL,
    },
    Feature {
        name: "bpf_loop",
        enumerator: "BPF_FUNC_loop",
        since: "5.17",
        sensors: ALL,
    },
    Feature {
        name: "bpf_find_vma",
        enumerator: "BPF_FUNC_find_vma",
        since: "5.17",
        sensors: ENTRY,
    },
];

/// The oldest kernel that has every feature.
pub const MINIMUM_KERNEL: &str = "5.17";

/// The features `sensor` needs that this kernel lacks.
pub fn missing(btf: &Btf, sensor: Sensor) -> Vec<Feature> {
    FEATURES
        .iter()
        .filter(|f| f.sensors.contains(&sensor))
        .filter(|f| !btf.has_enumerator("bpf_func_id", f.enumerator))
        .copied()
        .collect()
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_has_what_every_sensor_needs() {
        let path = std::path::Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            eprintln!("SKIPPED: {} is absent (kernel without BTF)", path.display());
            return;
        }
        let btf = Btf::from_file(path).unwrap();
        // A helper every BTF kernel has, so the lookup itself is proven to work.
        assert!(btf.has_enumerator("bpf_func_id", "BPF_FUNC_map_lookup_elem"));
        assert!(!btf.has_enumerator("bpf_func_id", "BPF_FUNC_no_such_helper"));
        assert!(!btf.has_enumerator("no_such_enum", "BPF_FUNC_map_lookup_elem"));
        for sensor in [Sensor::Process, Sensor::SyscallCounts, Sensor::Security] {
            assert_eq!(missing(&btf, sensor), vec![], "{sensor:?}");
        }
    }

    #[test]
    fn features_are_listed_oldest_first_and_the_minimum_is_the_newest() {
        let version = |s: &str| -> (u32, u32) {
            let (a, b) = s.split_once('.').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        };
        let since: Vec<_> = FEATURES.iter().map(|f| version(f.since)).collect();
        assert!(since.is_sorted(), "{since:?}");
        assert_eq!(since.last().copied(), Some(version(MINIMUM_KERNEL)));
    }
}
