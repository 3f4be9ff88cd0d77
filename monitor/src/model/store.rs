//! The windows kept while learning, in bounded memory.
//!
//! Each program keeps a reservoir (every window of it has the same chance
//! to be kept, so a chatty process cannot crowd out the rest). The whole
//! store also has a memory budget and a cap on programs, because the
//! people the agent watches choose how many programs run: 20,000 hard
//! links of one binary are 20,000 programs. Past the budget, a random
//! window of the program holding the most is dropped, so every program
//! keeps a fair share; past the program cap, windows of programs not yet
//! kept are refused. Both are counted.

use std::collections::BTreeMap;

use super::Window;

/// How the store is bounded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoreLimits {
    /// Windows kept per program (reservoir sampling beyond).
    pub per_program: usize,
    /// Programs kept.
    pub programs: usize,
    /// Estimated heap bytes of the windows kept.
    pub bytes: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            per_program: 300,
            programs: 4096,
            bytes: 12 << 20,
        }
    }
}

/// What the bounds cost: windows the store had to give up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreDrops {
    /// Windows dropped to stay within the memory budget.
    pub evicted: u64,
    /// Windows refused because their program was new past the program cap.
    pub refused: u64,
}

#[derive(Debug, Default)]
struct Reservoir {
    windows: Vec<Window>,
    /// Windows of this program offered (for the reservoir).
    seen: u64,
}

/// Deterministic xorshift for the sampling (reproducible replays, no rand
/// dependency on the event path).
#[derive(Debug, Clone)]
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The learning store.
#[derive(Debug)]
pub struct LearningStore {
    limits: StoreLimits,
    /// By program, in order: the fit sees the windows in the same order
    /// every run (replays and evaluations are reproducible).
    programs: BTreeMap<String, Reservoir>,
    windows: u64,
    bytes: usize,
    drops: StoreDrops,
    rng: Xorshift,
}

impl LearningStore {
    /// An empty store.
    pub fn new(limits: StoreLimits) -> Self {
        Self {
            limits,
            programs: BTreeMap::new(),
            windows: 0,
            bytes: 0,
            drops: StoreDrops::default(),
            rng: Xorshift(0x9e37_79b9_7f4a_7c15),
        }
    }

    /// An empty store with the same limits, carrying the counts of what
    /// was dropped (they are totals since start).
    pub fn emptied(&self) -> Self {
        Self {
            drops: self.drops,
            ..Self::new(self.limits)
        }
    }

    /// Windows kept.
    pub fn windows(&self) -> u64 {
        self.windows
    }

    /// Programs kept.
    pub fn programs(&self) -> usize {
        self.programs.len()
    }

    /// Estimated heap bytes kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// What the bounds dropped so far.
    pub fn drops(&self) -> StoreDrops {
        self.drops
    }

    /// Every window kept.
    pub fn iter(&self) -> impl Iterator<Item = &Window> {
        self.programs.values().flat_map(|r| r.windows.iter())
    }

    /// Offers a window.
    pub fn offer(&mut self, w: Window) {
        let size = heap_bytes(&w);
        let known = self.programs.contains_key(&w.program);
        if !known && self.programs.len() >= self.limits.programs {
            self.drops.refused += 1;
            return;
        }
        let full = known && self.programs[&w.program].windows.len() >= self.limits.per_program;
        if !full && !self.make_room(size) {
            self.drops.refused += 1;
            return;
        }
        let reservoir = self.programs.entry(w.program.clone()).or_default();
        reservoir.seen += 1;
        if !full {
            reservoir.windows.push(w);
            self.windows += 1;
            self.bytes += size;
            return;
        }
        let slot = (self.rng.next() % reservoir.seen) as usize;
        if let Some(kept) = reservoir.windows.get_mut(slot) {
            self.bytes = self.bytes - heap_bytes(kept) + size;
            *kept = w;
        }
    }

    /// Frees `size` bytes of budget by drawing down the program holding the
    /// most windows, never below [`FAIR_SHARE`]; false when that is not
    /// enough (the new window is then refused, not an old one dropped, so a
    /// flood of new programs cannot wipe out what was learned of the others).
    fn make_room(&mut self, size: usize) -> bool {
        while self.bytes + size > self.limits.bytes {
            let Some(reservoir) = self
                .programs
                .values_mut()
                .max_by_key(|r| r.windows.len())
                .filter(|r| r.windows.len() > FAIR_SHARE)
            else {
                return false;
            };
            let slot = (self.rng.next() % reservoir.windows.len() as u64) as usize;
            let gone = reservoir.windows.swap_remove(slot);
            self.bytes -= heap_bytes(&gone);
            self.windows -= 1;
            self.drops.evicted += 1;
        }
        true
    }
}

/// Windows a program keeps however full the store is: enough for a model of
/// its own (`baseline::MIN_PROGRAM_WINDOWS`), with room for its modes.
pub const FAIR_SHARE: usize = 2 * super::baseline::MIN_PROGRAM_WINDOWS;

/// A window's heap footprint, estimated: its strings, and about 48 bytes
/// per map entry (B-tree nodes are about a third empty on average), times
/// 1.5 for the allocator. The factor is measured: with 20,000 one-window
/// programs, a store estimated at 20.3 MiB without it grew the agent's
/// anonymous memory by 28.5 MiB more than a store of 1 MiB did.
pub fn heap_bytes(w: &Window) -> usize {
    const ENTRY: usize = 48;
    const STRING: usize = 24 + ENTRY;
    let strings = |set: &std::collections::BTreeSet<String>| {
        set.iter().map(|s| s.len() + STRING).sum::<usize>()
    };
    let facts = &w.facts;
    let sum = std::mem::size_of::<Window>()
        + w.program.len()
        + w.parent_program.as_ref().map_or(0, String::len)
        + (w.syscalls.len() + w.pairs.len()) * ENTRY
        + w.sequence.len() * 2
        + strings(&facts.executed)
        + strings(&facts.peers)
        + strings(&facts.listening)
        + strings(&facts.sensitive_paths)
        + strings(&facts.actions)
        + strings(&facts.exec_pairs)
        + strings(&facts.images);
    sum * 3 / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(program: &str, i: u64) -> Window {
        let mut w = Window::from_sequence(program, vec![0, 1, 2, 3, (i % 50) as u16]);
        w.sequence.clear();
        w.pid = i as u32;
        w
    }

    #[test]
    fn a_flood_of_programs_stays_within_the_budget_and_the_old_programs_keep_a_share() {
        let limits = StoreLimits {
            per_program: 300,
            programs: 100_000,
            bytes: 2 << 20,
        };
        let mut store = LearningStore::new(limits);
        for i in 0..1000 {
            store.offer(window("/usr/sbin/server", i));
        }
        let per_window = heap_bytes(&window("/usr/sbin/server", 0));
        assert_eq!(store.windows(), 300, "the reservoir holds 300");
        // 20,000 programs with long names, one window each.
        let long = "x".repeat(300);
        for i in 0..20_000 {
            store.offer(window(&format!("/tmp/{long}/prog-{i}"), i));
        }
        assert!(store.bytes() <= limits.bytes, "{}", store.bytes());
        assert!(store.drops().evicted > 0);
        assert!(store.drops().refused > 0, "once only fair shares are left");
        let server = store
            .iter()
            .filter(|w| w.program == "/usr/sbin/server")
            .count();
        assert_eq!(
            server, FAIR_SHARE,
            "the largest program is drawn down to its fair share, never wiped out"
        );
        assert!(store.windows() as usize * per_window <= limits.bytes);
    }

    #[test]
    fn programs_past_the_cap_are_refused_and_counted() {
        let mut store = LearningStore::new(StoreLimits {
            programs: 10,
            ..StoreLimits::default()
        });
        for i in 0..25 {
            store.offer(window(&format!("/bin/p{i}"), i));
        }
        store.offer(window("/bin/p0", 99));
        assert_eq!(store.programs(), 10);
        assert_eq!(store.bytes(), store.iter().map(heap_bytes).sum::<usize>());
        assert_eq!(store.windows(), 11, "a kept program still learns");
        assert_eq!(store.drops().refused, 15);
    }
}
