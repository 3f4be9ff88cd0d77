//! The agent's own BPF programs, maps and links, told to the kernel
//! programs (`AGENT_OBJECTS`) so that another process reaching one of them
//! through `bpf(2)` is reported. Taking a handle on one of them by id and
//! changing it (`bpftool map update id N ...`, `bpftool link detach id N`)
//! is how root blinds the sensor from userspace without stopping the agent;
//! the agent pins nothing, and the other ways in (a handle taken from the
//! agent's fd table with `pidfd_getfd`, ptrace of the agent, a module) are
//! reported by their own sensors.

use std::collections::BTreeSet;

use aya::{Ebpf, maps::HashMap};
use monitor_common::agent_object;

/// (kind, id) of every BPF object this process holds a descriptor of, from
/// `/proc/self/fdinfo` (a link's entry also names its program).
pub fn held() -> std::io::Result<BTreeSet<(u32, u32)>> {
    let mut objects = BTreeSet::new();
    for entry in std::fs::read_dir("/proc/self/fdinfo")? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue; // closed meanwhile
        };
        objects.extend(parse_fdinfo(&text));
    }
    Ok(objects)
}

/// The BPF objects one fdinfo text names.
fn parse_fdinfo(text: &str) -> impl Iterator<Item = (u32, u32)> + '_ {
    text.lines().filter_map(|line| {
        let (key, value) = line.split_once(':')?;
        let kind = match key {
            "prog_id" => agent_object::PROG,
            "map_id" => agent_object::MAP,
            "link_id" => agent_object::LINK,
            _ => return None,
        };
        Some((kind, value.trim().parse().ok()?))
    })
}

/// Fills the kernel's `AGENT_OBJECTS` with what this process holds; returns
/// how many objects it named.
pub fn register(ebpf: &mut Ebpf) -> Result<usize, String> {
    let objects = held().map_err(|e| format!("cannot list /proc/self/fdinfo: {e}"))?;
    let map = ebpf
        .map_mut("AGENT_OBJECTS")
        .ok_or_else(|| "the eBPF object has no AGENT_OBJECTS map".to_owned())?;
    let mut map: HashMap<_, u64, u8> =
        HashMap::try_from(map).map_err(|e| format!("AGENT_OBJECTS: {e}"))?;
    for &(kind, id) in &objects {
        map.insert(agent_object::key(kind, id), 1, 0)
            .map_err(|e| format!("AGENT_OBJECTS: cannot add {kind}:{id}: {e}"))?;
    }
    Ok(objects.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_of_maps_programs_and_links_is_read_and_nothing_else() {
        let link = "pos:\t0\nflags:\t02000000\nmnt_id:\t15\nino:\t1057\nlink_type:\ttracing\nlink_id:\t7\nprog_tag:\tabc\nprog_id:\t42\n";
        let map =
            "pos:\t0\nflags:\t02000002\nmap_type:\t27\nkey_size:\t0\nmap_id:\t19\nfrozen:\t0\n";
        let file = "pos:\t0\nflags:\t0100000\nmnt_id:\t25\nino:\t99\n";
        let got: Vec<_> = [link, map, file]
            .iter()
            .flat_map(|t| parse_fdinfo(t))
            .collect();
        assert_eq!(
            got,
            vec![
                (agent_object::LINK, 7),
                (agent_object::PROG, 42),
                (agent_object::MAP, 19)
            ]
        );
    }
}
