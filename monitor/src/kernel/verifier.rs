//! The verifier budget: what the kernel's verifier spends on each program.
//!
//! The verifier gives up on a program after 1,000,000 processed
//! instructions, and how close a program comes to that depends on the
//! kernel build as much as on the program: the same object verified on one
//! build of 6.18 and was refused on another. So every program is held to a
//! budget of a tenth of the limit ([`BUDGET`]), measured in every
//! combination of the load-time switches (they change which branches the
//! verifier can prune), on every kernel of the test matrix.

use std::time::{Duration, Instant};

use aya::programs::{BtfTracePoint, Program, ProgramError, TracePoint};
use serde::{Deserialize, Serialize};

use super::{FLOOR_PROGRAM, Hook, ProbeError, ProbeSettings, open_object, programs};

/// Most processed instructions any program may cost: a tenth of the
/// kernel's limit.
pub const BUDGET: u32 = 100_000;

/// One combination of the switches that change load-time constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switches {
    /// `capture.syscall_counts`.
    pub syscall_counts: bool,
    /// `capture.security_events`.
    pub security_events: bool,
}

impl Switches {
    /// All four combinations.
    pub const ALL: [Switches; 4] = [
        Switches::new(true, true),
        Switches::new(true, false),
        Switches::new(false, true),
        Switches::new(false, false),
    ];

    const fn new(syscall_counts: bool, security_events: bool) -> Self {
        Self {
            syscall_counts,
            security_events,
        }
    }

    /// A short label: `counts+security`, `counts`, `security`, `none`.
    pub fn label(&self) -> &'static str {
        match (self.syscall_counts, self.security_events) {
            (true, true) => "counts+security",
            (true, false) => "counts",
            (false, true) => "security",
            (false, false) => "none",
        }
    }
}

/// What the verifier spent on one program.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgramCost {
    /// The program.
    pub program: String,
    /// The switches it was loaded under.
    pub switches: Switches,
    /// Instructions the verifier processed (`verified_insns`, Linux 5.16+;
    /// for a refused program, from its log).
    pub processed_insns: Option<u32>,
    /// Most verifier states alive at once: the kernel reports it in the
    /// log only, which is kept for refused programs.
    pub peak_states: Option<u32>,
    /// Wall time of the load (verification is nearly all of it).
    pub load_ms: f64,
    /// Why the kernel refused it, if it did.
    pub refused: Option<String>,
}

impl ProgramCost {
    /// Loaded, and within [`BUDGET`].
    pub fn within_budget(&self) -> bool {
        self.refused.is_none() && self.processed_insns.is_some_and(|n| n <= BUDGET)
    }
}

/// The parts of a verifier log worth a table cell.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LogSummary {
    /// `processed N insns`.
    pub processed_insns: Option<u32>,
    /// `peak_states N`.
    pub peak_states: Option<u32>,
    /// The verifier's last word before its statistics: why it refused.
    pub reason: Option<String>,
}

impl LogSummary {
    /// Reads a verifier log (any level).
    pub fn parse(log: &str) -> Self {
        let number_after = |line: &str, word: &str| -> Option<u32> {
            let at = line.find(word)? + word.len();
            line[at..]
                .trim_start()
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        };
        let mut summary = LogSummary::default();
        for line in log.lines() {
            if line.starts_with("processed ") {
                summary.processed_insns = number_after(line, "processed ");
                summary.peak_states = number_after(line, "peak_states ");
            }
        }
        summary.reason = log
            .lines()
            .map(str::trim)
            .rfind(|l| {
                !l.is_empty()
                    && !l.starts_with("processed ")
                    && !l.starts_with("verification time")
                    && !l.starts_with("stack depth")
                    && !l.starts_with("-- END PROG LOAD LOG --")
            })
            .map(str::to_owned);
        summary
    }
}

/// Loads every program of the object under `switches`, one at a time, and
/// reports what each cost. Nothing is attached.
pub fn measure(switches: Switches) -> Result<Vec<ProgramCost>, ProbeError> {
    let settings = ProbeSettings {
        syscall_counts: switches.syscall_counts,
        security_events: switches.security_events,
        ..ProbeSettings::default()
    };
    let (mut ebpf, _, _) = open_object(&settings)?;
    let btf = aya::Btf::from_sys_fs().map_err(ProbeError::AyaBtf)?;
    let mut costs = Vec::new();
    for (name, program) in ebpf.programs_mut() {
        let hook = programs()
            .iter()
            .chain([&FLOOR_PROGRAM])
            .find(|spec| spec.name == name)
            .map(|spec| spec.hook)
            .ok_or_else(|| ProbeError::UnlistedProgram(name.to_owned()))?;
        let started = Instant::now();
        let result = load(program, hook, &btf);
        let load_ms = ms(started.elapsed());
        let mut cost = ProgramCost {
            program: name.to_owned(),
            switches,
            processed_insns: None,
            peak_states: None,
            load_ms,
            refused: None,
        };
        match result {
            Ok(()) => {
                cost.processed_insns = program
                    .info()
                    .ok()
                    .and_then(|info| info.verified_instruction_count());
            }
            Err(ProgramError::LoadError {
                io_error,
                verifier_log,
            }) => {
                let summary = LogSummary::parse(&verifier_log.to_string());
                cost.processed_insns = summary.processed_insns;
                cost.peak_states = summary.peak_states;
                cost.refused = Some(summary.reason.unwrap_or_else(|| io_error.to_string()));
            }
            Err(other) => cost.refused = Some(crate::error::error_chain(&other)),
        }
        costs.push(cost);
    }
    costs.sort_by(|a, b| a.program.cmp(&b.program));
    Ok(costs)
}

fn load(program: &mut Program, hook: Hook, btf: &aya::Btf) -> Result<(), ProgramError> {
    match hook {
        Hook::BtfTracepoint(name) => {
            let p: &mut BtfTracePoint = program.try_into()?;
            p.load(name, btf)
        }
        Hook::Tracepoint(..) => {
            let p: &mut TracePoint = program.try_into()?;
            p.load()
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarises_a_refusal() {
        let log = "0: (bf) r6 = r1\n\
                   BPF program is too large. Processed 1000001 insn\n\
                   processed 1000001 insns (limit 1000000) max_states_per_insn 15 total_states 26636 peak_states 135179 mark_read 41\n";
        let s = LogSummary::parse(log);
        assert_eq!(s.processed_insns, Some(1_000_001));
        assert_eq!(s.peak_states, Some(135_179));
        assert_eq!(
            s.reason.as_deref(),
            Some("BPF program is too large. Processed 1000001 insn")
        );
    }

    #[test]
    fn an_empty_log_says_nothing() {
        assert_eq!(LogSummary::parse(""), LogSummary::default());
    }

    #[test]
    fn the_budget_is_a_tenth_of_the_limit() {
        assert_eq!(BUDGET * 10, 1_000_000);
        let cost = |insns, refused: Option<&str>| ProgramCost {
            program: "p".into(),
            switches: Switches::ALL[0],
            processed_insns: insns,
            peak_states: None,
            load_ms: 1.0,
            refused: refused.map(Into::into),
        };
        assert!(cost(Some(BUDGET), None).within_budget());
        assert!(!cost(Some(BUDGET + 1), None).within_budget());
        assert!(!cost(None, None).within_budget());
        assert!(!cost(Some(10), Some("refused")).within_budget());
    }
}
