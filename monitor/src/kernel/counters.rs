//! Reading the kernel's loss and fault counters.

use std::collections::BTreeMap;

use aya::maps::{MapData, PerCpuArray};
use monitor_common::{COUNTER_SLOTS, counter_name};

/// Reads the per-CPU `COUNTERS` map and sums each slot over CPUs.
pub struct KernelCounters {
    map: PerCpuArray<MapData, u64>,
}

impl KernelCounters {
    /// Wraps the map.
    pub fn new(map: PerCpuArray<MapData, u64>) -> Self {
        Self { map }
    }

    /// Non-zero counters by name (`ringbuf_full.exec`, `counts_map_full`...).
    pub fn read(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for index in 0..COUNTER_SLOTS {
            let Some((name, sub)) = counter_name(index) else {
                continue;
            };
            let Ok(values) = self.map.get(&index, 0) else {
                continue;
            };
            let total: u64 = values.iter().sum();
            if total > 0 {
                let key = match sub {
                    Some(sub) => format!("{name}.{sub}"),
                    None => name.to_owned(),
                };
                *out.entry(key).or_default() += total;
            }
        }
        out
    }
}

/// Counters on one line, `name=count` separated by spaces (`none` when
/// there are none), for messages and logs.
pub fn counts_line(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".to_owned();
    }
    counts
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Counters that mean an event was lost (the rest mean degraded fields).
pub fn is_loss(name: &str) -> bool {
    name.starts_with("ringbuf_full")
        || name.starts_with("build_taken")
        || name.starts_with("counts_")
        || name == "uncounted_syscalls"
        || name.starts_with("pending_")
        || name.starts_with("userspace_")
        || name.starts_with("decode_error")
        || name.starts_with("rate_limited")
}

/// Whether a loss counter means the behaviour windows open now may miss
/// something. `uncounted_syscalls` alone are a thread's last calls
/// that reached its counts after the thread had exited (or after its id
/// was reused): that thread's window is already closed, and the windows open
/// now lost nothing. (A thread that never got the counts slot is reported by
/// `counts_map_full` as well, which does taint.) `rate_limited.file` names
/// its processes (`LossDetail::by_process`): only their windows are tainted.
pub fn taints_open_windows(name: &str) -> bool {
    name != "uncounted_syscalls" && !name.starts_with("rate_limited")
}
