//! Is the sensor still what the agent made it? Root can blind an agent
//! without stopping it: write over the maps that steer its programs (which
//! syscalls are captured, which files are sensitive) or detach its hooks.
//! The agent checks on a schedule that every hook it attached is still
//! attached and that the maps it filled still hold what it put there,
//! puts back what it can, and reports every difference as a finding.

use std::collections::BTreeMap;

use aya::Ebpf;

/// What the agent set up, to compare the kernel's view with.
#[derive(Debug, Default)]
pub struct Expected {
    /// Per program id: its name and how many of its links the kernel
    /// listed right after attach (hooks attached without a kernel link,
    /// on kernels without perf links, are not listed and not checked).
    links: BTreeMap<u32, (&'static str, usize)>,
    /// `SYSCALL_OPS`, as filled: (syscall number, op), all others 0.
    syscall_ops: Vec<u32>,
}

/// The kernel's links, counted per program id.
fn links_per_program() -> BTreeMap<u32, usize> {
    let mut counts = BTreeMap::new();
    for info in aya::programs::loaded_links().flatten() {
        *counts.entry(info.program_id()).or_default() += 1;
    }
    counts
}

fn syscall_ops_map(ebpf: &mut Ebpf) -> Option<aya::maps::Array<&mut aya::maps::MapData, u32>> {
    aya::maps::Array::try_from(ebpf.map_mut("SYSCALL_OPS")?).ok()
}

impl Expected {
    /// Takes the picture right after attach. `programs` are the names of
    /// the programs attached.
    pub fn snapshot(ebpf: &mut Ebpf, programs: &[&'static str]) -> Self {
        let listed = links_per_program();
        let mut links = BTreeMap::new();
        for name in programs {
            let Some(id) = ebpf
                .program(name)
                .and_then(|p| p.info().ok())
                .map(|info| info.id())
            else {
                continue;
            };
            if let Some(&n) = listed.get(&id) {
                links.insert(id, (*name, n));
            }
        }
        let syscall_ops = syscall_ops_map(ebpf)
            .map(|ops| {
                (0..ops.len())
                    .map(|i| ops.get(&i, 0).unwrap_or(0))
                    .collect()
            })
            .unwrap_or_default();
        Self { links, syscall_ops }
    }

    /// Programs whose hooks are checked.
    pub fn programs_checked(&self) -> usize {
        self.links.len()
    }

    /// Compares the kernel with the picture; puts back the map entries that
    /// differ. Returns one line per difference.
    pub fn check(&self, ebpf: &mut Ebpf) -> Vec<String> {
        let mut problems = Vec::new();
        let listed = links_per_program();
        for (id, (name, expected)) in &self.links {
            let now = listed.get(id).copied().unwrap_or(0);
            if now < *expected {
                problems.push(format!(
                    "program {name} (id {id}): {} of its {expected} hooks detached",
                    expected - now
                ));
            }
        }
        if let Some(mut ops) = syscall_ops_map(ebpf) {
            let mut changed = Vec::new();
            for (i, want) in self.syscall_ops.iter().enumerate() {
                let i = i as u32;
                let have = ops.get(&i, 0).unwrap_or(0);
                if have != *want {
                    changed.push(format!("{}: {have} instead of {want}", syscall_name(i)));
                    let _ = ops.set(i, *want, 0);
                }
            }
            if !changed.is_empty() {
                problems.push(format!(
                    "map SYSCALL_OPS (which syscalls the security sensor captures) was changed, {} {}, put back: {}",
                    changed.len(),
                    if changed.len() == 1 { "entry" } else { "entries" },
                    summarize(&changed)
                ));
            }
        } else if !self.syscall_ops.is_empty() {
            problems.push("map SYSCALL_OPS is no longer readable".into());
        }
        problems
    }
}

fn syscall_name(nr: u32) -> String {
    crate::syscalls::Abi::X86_64.name(nr).into_owned()
}

/// The first few items, and how many more.
pub fn summarize(items: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut text = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        text.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    text
}
