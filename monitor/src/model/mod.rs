//! The on-device behaviour model: learn this host's baseline, score every new
//! window against it, explain what deviates.
//!
//! - [`window`]: behaviour windows, built from events;
//! - [`features`]: named feature vectors (ndarray);
//! - [`baseline`]: per-program k-means clusters (linfa), nearest neighbours,
//!   categorical novelty, calibration;
//! - [`sequence`]: an n-gram model for windows with full syscall sequences;
//! - [`finding`]: explained findings;
//! - [`persist`]: the versioned model file;
//! - [`Engine`] (here): the lifecycle — learning with progress, then
//!   detecting, following drift, never learning from tainted windows or from
//!   a program with an open finding.

pub mod baseline;
pub mod categories;
pub mod eval;
pub mod features;
pub mod finding;
pub mod fleet_context;
pub mod guidance;
pub mod persist;
pub mod sequence;
pub mod store;
pub mod window;

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use serde::{Deserialize, Serialize};

pub use self::{
    baseline::{Baseline, FitError, Scored},
    finding::Finding,
    store::StoreLimits,
    window::{Window, WindowBuilder},
};
use crate::event::Timestamp;
use store::LearningStore;

/// Engine settings.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSettings {
    /// How long to learn before detecting (time of the windows seen).
    pub learn_for: Duration,
    /// Fewest baseline windows before detecting (learning goes on until both
    /// this and `learn_for` are reached).
    pub min_windows: usize,
    /// False-alarm rate the finding threshold is set for, per window. A busy
    /// host closes thousands of windows an hour, so the default is 0.05%.
    pub false_alarm_rate: f64,
    /// Keep learning from windows judged normal while detecting.
    pub follow_drift: bool,
    /// How the windows kept while learning are bounded.
    pub store: StoreLimits,
    /// After a finding, the program's windows are not learned from for this long.
    pub finding_quarantine: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            learn_for: Duration::from_secs(15 * 60),
            min_windows: 200,
            false_alarm_rate: 0.0005,
            follow_drift: true,
            store: StoreLimits::default(),
            finding_quarantine: Duration::from_secs(3600),
        }
    }
}

/// Learning or detecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Collecting the baseline.
    Learning,
    /// Scoring against it.
    Detecting,
}

/// Learning progress, for the progress line and `monitor status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The phase.
    pub phase: Phase,
    /// Windows seen so far (all phases).
    pub windows_seen: u64,
    /// Windows in the baseline store (learning) or learned (detecting).
    pub baseline_windows: u64,
    /// Programs seen while learning (or modelled, when detecting).
    #[serde(alias = "profiles")]
    pub programs: usize,
    /// Time learned so far.
    pub learned_secs: f64,
    /// Estimated time left learning (0 when detecting).
    pub remaining_secs: f64,
    /// Windows still needed to reach the minimum.
    pub windows_needed: u64,
    /// Findings raised. (`alerts` in earlier versions.)
    #[serde(alias = "alerts")]
    pub findings: u64,
    /// Windows not learned from because they overlapped lost events.
    pub tainted: u64,
    /// Finding-worthy windows folded into an open finding of their program.
    pub suppressed: u64,
    /// What the memory bounds gave up.
    #[serde(default)]
    pub bounds: Bounds,
}

/// What the engine's memory bounds gave up (each bound is a defence: the
/// people the agent watches choose how many programs, facts and findings
/// there are). Totals since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bounds {
    /// Estimated bytes of the windows kept for learning.
    pub learning_bytes: u64,
    /// Windows dropped from the learning store to stay within its budget.
    pub learning_evicted: u64,
    /// Windows refused by the learning store (program cap, or only fair
    /// shares left).
    pub learning_refused: u64,
    /// Open findings forgotten before their quarantine ended.
    pub open_findings_evicted: u64,
    /// Facts not learned by drift because their set was full.
    pub drift_facts_refused: u64,
}

/// What observing a window produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Stored for the baseline.
    Learning,
    /// Learning just finished: the baseline is ready.
    Learned {
        /// Windows it was learned from.
        windows: u64,
        /// Programs with their own model.
        programs: usize,
    },
    /// Scored below the threshold.
    Normal(f64),
    /// Scored at or above the threshold.
    Finding(Box<Finding>),
    /// Scored at or above the threshold, but the program already has an
    /// open finding covering every novelty fact of this window: folded into it.
    Repeat(Box<finding::Repeat>),
    /// Learning has what it needs; the fit is due. Only from an engine whose
    /// fit runs elsewhere ([`Engine::fit_elsewhere`]): the caller takes the
    /// [`Training`], fits it off the event path and hands the result to
    /// [`Engine::install_fit`].
    FitDue,
}

/// The windows learned so far, taken out of the engine to be fitted off the
/// event path (the fit is seconds of CPU on a busy host).
#[derive(Debug)]
pub struct Training {
    store: LearningStore,
}

impl Training {
    /// Fits the baseline.
    pub fn fit(&self) -> Result<Baseline, FitError> {
        Baseline::fit(self.store.iter())
    }

    /// Windows in it.
    pub fn windows(&self) -> u64 {
        self.store.windows()
    }
}

/// A finding acknowledged as benign, as the engine needs it (kept in the
/// acknowledgement itself, so it outlives the rotation of the finding log).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AckedFinding {
    /// The finding's program.
    pub program: String,
    /// Its novelty facts.
    pub facts: std::collections::BTreeSet<(baseline::NoveltyKind, String)>,
    /// Its window, when kept.
    pub window: Option<Window>,
}

/// What an open finding quarantines: one program run by one user. A window
/// of the same program by another user is judged on its own, so a decoy
/// finding raised as one user cannot hide what another user does with the
/// program.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct QuarantineKey {
    program: String,
    /// The real uid of the window's process (`u32::MAX` when unknown).
    uid: u32,
}

impl QuarantineKey {
    fn of(w: &Window) -> Self {
        Self {
            program: w.program.clone(),
            uid: w.context.process.as_ref().map_or(u32::MAX, |p| p.uid),
        }
    }
}

/// Open findings kept at most (the oldest, past their quarantine, go first).
const MAX_OPEN_FINDINGS: usize = 4096;

/// The lifecycle around a [`Baseline`].
pub struct Engine {
    settings: EngineSettings,
    baseline: Option<Baseline>,
    store: LearningStore,
    first_time: Option<Timestamp>,
    last_time: Timestamp,
    windows_seen: u64,
    findings: u64,
    tainted: u64,
    /// The latest finding per program: when (its quarantine runs from
    /// there) and its id (what a repeat refers to).
    latest_finding: HashMap<QuarantineKey, (Timestamp, String)>,
    /// Novelty facts already reported per program and user (while
    /// quarantined).
    reported: HashMap<QuarantineKey, std::collections::BTreeSet<(baseline::NoveltyKind, String)>>,
    suppressed: u64,
    open_findings_evicted: u64,
    drift_facts_refused: u64,
    /// See [`Engine::fit_elsewhere`].
    fit_elsewhere: bool,
    /// While a fit runs elsewhere: its size (windows, programs), and the
    /// windows closed meanwhile, scored once the baseline is installed.
    fitting: Option<(u64, usize)>,
    held: Vec<Window>,
    /// After a failed fit: the stored windows needed before the next try.
    retry_at: u64,
}

impl Engine {
    /// A learning engine.
    pub fn new(settings: EngineSettings) -> Self {
        Self {
            baseline: None,
            store: LearningStore::new(settings.store),
            settings,
            first_time: None,
            last_time: Timestamp::default(),
            windows_seen: 0,
            findings: 0,
            tainted: 0,
            latest_finding: HashMap::new(),
            reported: HashMap::new(),
            suppressed: 0,
            open_findings_evicted: 0,
            drift_facts_refused: 0,
            fit_elsewhere: false,
            fitting: None,
            held: Vec::new(),
            retry_at: 0,
        }
    }

    /// This engine does not fit inline when learning is done: it returns
    /// [`Outcome::FitDue`] and the caller fits the [`Training`] elsewhere.
    pub fn fit_elsewhere(mut self) -> Self {
        self.fit_elsewhere = true;
        self
    }

    /// Takes the windows learned so far for a fit elsewhere. Until
    /// [`Engine::install_fit`], closed windows are held, not scored.
    pub fn take_training(&mut self) -> Training {
        let emptied = self.store.emptied();
        let training = Training {
            store: std::mem::replace(&mut self.store, emptied),
        };
        self.fitting = Some((training.windows(), training.store.programs()));
        training
    }

    /// Installs the result of a fit elsewhere and observes the windows held
    /// meanwhile. A failed fit gives the training back (nothing learned is
    /// lost) and learning goes on; the next fit is due after more windows.
    pub fn install_fit(
        &mut self,
        fitted: Result<Baseline, FitError>,
        training: Training,
    ) -> Vec<Result<Outcome, FitError>> {
        self.fitting = None;
        let mut outcomes = Vec::new();
        match fitted {
            Ok(baseline) => {
                outcomes.push(Ok(Outcome::Learned {
                    windows: baseline.windows,
                    programs: baseline.programs.len(),
                }));
                self.baseline = Some(baseline);
            }
            Err(err) => {
                self.store = training.store;
                let stored = self.stored();
                self.retry_at = stored + (stored / 10).max(8);
                outcomes.push(Err(err));
            }
        }
        for w in std::mem::take(&mut self.held) {
            outcomes.push(self.judge(w));
        }
        outcomes
    }

    /// A detecting engine resumed from a saved baseline.
    pub fn resume(settings: EngineSettings, baseline: Baseline) -> Self {
        let mut engine = Self::new(settings);
        engine.baseline = Some(baseline);
        engine
    }

    /// The phase.
    pub fn phase(&self) -> Phase {
        if self.baseline.is_some() {
            Phase::Detecting
        } else {
            Phase::Learning
        }
    }

    /// The baseline, once learned.
    pub fn baseline(&self) -> Option<&Baseline> {
        self.baseline.as_ref()
    }

    /// The finding threshold on the score.
    pub fn threshold(&self) -> f64 {
        1.0 - self.settings.false_alarm_rate
    }

    /// The settings.
    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    fn stored(&self) -> u64 {
        self.store.windows()
    }

    /// Progress now.
    pub fn progress(&self) -> Progress {
        let learned = self
            .first_time
            .map_or(Duration::ZERO, |first| self.last_time.since(first));
        let (baseline_windows, programs) = match (&self.baseline, self.fitting) {
            (Some(b), _) => (b.windows, b.programs.len()),
            (None, Some(fitting)) => fitting,
            (None, None) => (self.stored(), self.store.programs()),
        };
        let learning = self.baseline.is_none();
        Progress {
            phase: self.phase(),
            windows_seen: self.windows_seen,
            baseline_windows,
            programs,
            learned_secs: learned.as_secs_f64(),
            remaining_secs: if learning {
                self.settings
                    .learn_for
                    .saturating_sub(learned)
                    .as_secs_f64()
            } else {
                0.0
            },
            windows_needed: if learning && self.fitting.is_none() {
                (self.settings.min_windows as u64)
                    .max(self.retry_at)
                    .saturating_sub(self.stored())
            } else {
                0
            },
            findings: self.findings,
            tainted: self.tainted,
            suppressed: self.suppressed,
            bounds: Bounds {
                learning_bytes: self.store.bytes() as u64,
                learning_evicted: self.store.drops().evicted,
                learning_refused: self.store.drops().refused,
                open_findings_evicted: self.open_findings_evicted,
                drift_facts_refused: self.drift_facts_refused,
            },
        }
    }

    /// Observes one closed window.
    pub fn observe(&mut self, w: Window) -> Result<Outcome, FitError> {
        self.windows_seen += 1;
        self.first_time.get_or_insert(w.start);
        self.last_time = self.last_time.max(w.end);
        if w.tainted {
            self.tainted += 1;
        }
        self.judge(w)
    }

    /// Learns from or scores a window already counted by `observe`.
    fn judge(&mut self, mut w: Window) -> Result<Outcome, FitError> {
        let Some(baseline) = &mut self.baseline else {
            if self.fitting.is_some() {
                self.held.push(w);
                return Ok(Outcome::Learning);
            }
            if !w.tainted {
                // The context (process, ancestry) is for findings; the baseline
                // does not need it, and it is most of a window's memory.
                w.context = Default::default();
                self.store.offer(w);
            }
            if self.learning_done() {
                if self.fit_elsewhere {
                    return Ok(Outcome::FitDue);
                }
                return self.finish_learning();
            }
            return Ok(Outcome::Learning);
        };
        let scored = baseline.score(&w);
        let threshold = 1.0 - self.settings.false_alarm_rate;
        // The open finding of this program and user, if its quarantine
        // still runs.
        let key = QuarantineKey::of(&w);
        let open = self
            .latest_finding
            .get(&key)
            .filter(|(at, _)| w.end.since(*at) < self.settings.finding_quarantine)
            .map(|(_, id)| id.clone());
        let quarantined = open.is_some();
        if scored.score >= threshold {
            let facts: std::collections::BTreeSet<_> = scored
                .novelty
                .iter()
                .map(|n| (n.kind, n.value.clone()))
                .collect();
            let known = self.reported.entry(key.clone()).or_default();
            if let Some(of) = open
                && facts.is_subset(known)
            {
                // Nothing new about this program since its open finding.
                self.suppressed += 1;
                return Ok(Outcome::Repeat(Box::new(finding::Repeat::new(
                    of,
                    &w,
                    scored.score,
                ))));
            }
            if !quarantined {
                known.clear();
            }
            known.extend(facts);
            self.findings += 1;
            let finding = Finding::new(baseline, &w, &scored, threshold);
            self.latest_finding.insert(key, (w.end, finding.id.clone()));
            self.forget_closed_findings(w.end);
            return Ok(Outcome::Finding(Box::new(finding)));
        }
        if self.settings.follow_drift && !w.tainted && !quarantined && !scored.acknowledged {
            self.drift_facts_refused += baseline.absorb(&w, &scored.x);
        }
        Ok(Outcome::Normal(scored.score))
    }

    /// Brings the acknowledged findings in line with `acks` (finding id to
    /// its behaviour): new ones are acknowledged and lift their program's
    /// quarantine, withdrawn ones are removed. Returns (added, withdrawn);
    /// nothing happens while learning (the acks apply once it ends).
    pub fn reconcile_acknowledged(
        &mut self,
        acks: &BTreeMap<String, AckedFinding>,
    ) -> (usize, usize) {
        let Some(baseline) = &mut self.baseline else {
            return (0, 0);
        };
        let stale: Vec<String> = baseline
            .acknowledged
            .keys()
            .filter(|id| !acks.contains_key(*id))
            .cloned()
            .collect();
        for id in &stale {
            baseline.withdraw(id);
        }
        let mut added = 0;
        for (id, ack) in acks {
            if baseline.acknowledged.contains_key(id) {
                continue;
            }
            baseline.acknowledge(id, &ack.program, ack.facts.clone(), ack.window.as_ref());
            self.latest_finding.retain(|k, _| k.program != ack.program);
            self.reported.retain(|k, _| k.program != ack.program);
            added += 1;
        }
        (added, stale.len())
    }

    /// Keeps the open findings bounded: past `MAX_OPEN_FINDINGS`, those
    /// whose quarantine has ended are forgotten, then (a flood of findings
    /// within the hour) the oldest, down to nine tenths of the cap.
    fn forget_closed_findings(&mut self, now: Timestamp) {
        if self.latest_finding.len() <= MAX_OPEN_FINDINGS {
            return;
        }
        let quarantine = self.settings.finding_quarantine;
        self.latest_finding
            .retain(|_, (at, _)| now.since(*at) < quarantine);
        if self.latest_finding.len() > MAX_OPEN_FINDINGS {
            let mut times: Vec<Timestamp> =
                self.latest_finding.values().map(|(at, _)| *at).collect();
            let excess = times.len() - MAX_OPEN_FINDINGS * 9 / 10;
            let (_, cut, _) = times.select_nth_unstable(excess - 1);
            let cut = *cut;
            let before = self.latest_finding.len();
            self.latest_finding.retain(|_, (at, _)| *at > cut);
            self.open_findings_evicted += (before - self.latest_finding.len()) as u64;
        }
        let open = &self.latest_finding;
        self.reported.retain(|k, _| open.contains_key(k));
    }

    fn learning_done(&self) -> bool {
        let learned = self
            .first_time
            .map_or(Duration::ZERO, |f| self.last_time.since(f));
        let stored = self.stored();
        learned >= self.settings.learn_for
            && stored >= self.settings.min_windows as u64
            && stored >= self.retry_at
    }

    /// Ends learning now and fits the baseline (also used by `replay
    /// --learn-for` and tests).
    pub fn finish_learning(&mut self) -> Result<Outcome, FitError> {
        // The store is kept until the fit succeeds: a failed fit (too few
        // usable windows) must not lose what was learned so far.
        let baseline = Baseline::fit(self.store.iter())?;
        self.store = self.store.emptied();
        let outcome = Outcome::Learned {
            windows: baseline.windows,
            programs: baseline.programs.len(),
        };
        self.baseline = Some(baseline);
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::window::Window;

    const SERVER: &str = "/usr/sbin/server";

    fn window(i: u64, sequence: Vec<u16>) -> Window {
        let mut w = Window::from_sequence(SERVER, sequence);
        w.sequence.clear();
        w.pid = 100 + i as u32;
        w.start = Timestamp(i * 1_000_000_000);
        w.end = Timestamp(i * 1_000_000_000 + 500_000_000);
        w
    }

    /// read/write/poll in slightly varying proportions.
    fn normal(i: u64) -> Window {
        let mut seq = vec![0u16; 20 + (i % 7) as usize];
        seq.extend(std::iter::repeat_n(1u16, 10 + (i % 5) as usize));
        seq.extend(std::iter::repeat_n(7u16, 5));
        window(i, seq)
    }

    fn shadow_reader(i: u64) -> Window {
        let mut w = normal(i);
        w.facts.sensitive_paths.insert("/etc/shadow".into());
        w.activity.sensitive = 1;
        w
    }

    fn settings() -> EngineSettings {
        EngineSettings {
            learn_for: Duration::from_secs(30),
            min_windows: 40,
            ..EngineSettings::default()
        }
    }

    /// An engine that learned 60 normal windows.
    fn learned_engine() -> Engine {
        let mut engine = Engine::new(settings());
        for i in 0..60 {
            engine.observe(normal(i)).unwrap();
        }
        engine
    }

    #[test]
    fn a_repeat_within_the_quarantine_names_the_open_finding() {
        let mut engine = learned_engine();
        assert!(engine.baseline().is_some(), "learned");
        let Outcome::Finding(finding) = engine.observe(shadow_reader(61)).unwrap() else {
            panic!("a first read of /etc/shadow findings")
        };
        match engine.observe(shadow_reader(62)).unwrap() {
            Outcome::Repeat(r) => {
                assert_eq!(r.repeat_of, finding.id);
                assert_eq!(r.time, Timestamp(62_500_000_000));
            }
            other => panic!("expected a repeat, got {other:?}"),
        }
        assert_eq!(engine.progress().suppressed, 1);
    }

    #[test]
    fn a_decoy_finding_as_one_user_does_not_quarantine_the_program_for_another() {
        let mut engine = learned_engine();
        let as_user = |i: u64, uid: u32| {
            let mut w = shadow_reader(i);
            w.context.process = Some(
                crate::event::Process {
                    pid: 100 + i as u32,
                    uid,
                    ..Default::default()
                }
                .into(),
            );
            w
        };
        let Outcome::Finding(decoy) = engine.observe(as_user(61, 65534)).unwrap() else {
            panic!("the decoy raises a finding")
        };
        assert!(
            matches!(engine.observe(as_user(62, 65534)).unwrap(), Outcome::Repeat(r) if r.repeat_of == decoy.id),
            "the same user again: a repeat"
        );
        let Outcome::Finding(real) = engine.observe(as_user(63, 0)).unwrap() else {
            panic!("another user doing the same is a finding of its own")
        };
        assert_ne!(real.id, decoy.id);
    }

    #[test]
    fn a_flood_of_findings_within_the_quarantine_keeps_the_open_findings_bounded_and_counted() {
        let mut engine = learned_engine();
        let mut raised = 0;
        for i in 0..(MAX_OPEN_FINDINGS as u64 + 600) {
            let mut w = shadow_reader(61 + i);
            w.program = format!("/tmp/flood/p{i}");
            // A millisecond apart: all within the hour's quarantine.
            w.start = Timestamp(61_000_000_000 + i * 1_000_000);
            w.end = w.start;
            if matches!(engine.observe(w).unwrap(), Outcome::Finding(_)) {
                raised += 1;
            }
        }
        assert!(raised > MAX_OPEN_FINDINGS, "{raised}");
        assert!(engine.latest_finding.len() <= MAX_OPEN_FINDINGS);
        assert!(engine.reported.len() <= MAX_OPEN_FINDINGS);
        let evicted = engine.progress().bounds.open_findings_evicted;
        assert!(evicted > 0 && evicted as usize <= raised, "{evicted}");
        // The newest are kept: the last one still quarantines its program.
        let mut again = shadow_reader(70);
        again.program = format!("/tmp/flood/p{}", MAX_OPEN_FINDINGS + 599);
        assert!(matches!(engine.observe(again).unwrap(), Outcome::Repeat(_)));
    }

    #[test]
    fn drift_learns_new_facts_only_up_to_the_cap_of_each_set_and_counts_the_rest() {
        let mut engine = learned_engine();
        let baseline = engine.baseline.as_mut().unwrap();
        let x = baseline.space.vectorize(&normal(0));
        let mut refused = 0;
        for i in 0..(baseline::DRIFT_FACTS_PER_SET + 50) {
            let mut w = normal(i as u64);
            w.facts
                .peers
                .insert(format!("10.0.{}.{}:443", i / 256, i % 256));
            refused += baseline.absorb(&w, &x);
        }
        let peers = &baseline.programs[SERVER].facts.peers;
        assert_eq!(peers.len(), baseline::DRIFT_FACTS_PER_SET);
        assert_eq!(
            refused, 50,
            "the program's set is full; the global one is not"
        );
        assert!(baseline.global.facts.peers.len() > baseline::DRIFT_FACTS_PER_SET);
    }

    #[test]
    fn a_fit_elsewhere_holds_the_windows_closed_meanwhile_and_scores_them_after() {
        let mut engine = Engine::new(settings()).fit_elsewhere();
        let mut due = None;
        for i in 0..60 {
            if engine.observe(normal(i)).unwrap() == Outcome::FitDue {
                due.get_or_insert(i);
            }
        }
        assert_eq!(
            due,
            Some(39),
            "due at 40 windows (min_windows), past learn_for"
        );
        assert!(engine.baseline().is_none(), "not fitted inline");
        let training = engine.take_training();
        assert_eq!(training.windows(), 60);
        assert_eq!(
            engine.observe(shadow_reader(61)).unwrap(),
            Outcome::Learning
        );
        assert_eq!(engine.progress().baseline_windows, 60, "the fit's size");
        let fitted = training.fit();
        let outcomes = engine.install_fit(fitted, training);
        assert!(matches!(
            outcomes[0],
            Ok(Outcome::Learned { windows: 60, .. })
        ));
        assert!(
            matches!(outcomes[1], Ok(Outcome::Finding(_))),
            "the held window is scored: {:?}",
            outcomes[1]
        );
        assert_eq!(
            engine.progress().windows_seen,
            61,
            "each window counted once"
        );
    }

    #[test]
    fn a_failed_fit_elsewhere_loses_nothing_learned_and_is_tried_again_later() {
        let mut engine = Engine::new(settings()).fit_elsewhere();
        for i in 0..45 {
            engine.observe(normal(i)).unwrap();
        }
        let training = engine.take_training();
        engine.observe(normal(45)).unwrap();
        let failed = Err(baseline::FitError::TooFew {
            windows: 0,
            needed: 1,
        });
        let outcomes = engine.install_fit(failed, training);
        assert!(outcomes[0].is_err());
        assert_eq!(
            engine.progress().baseline_windows,
            46,
            "the training is back, and the held window"
        );
        // Not due again at once: 8 more windows (10% of the 45 given
        // back, at least 8) than the training had; the held one counts.
        let mut next_due = None;
        for i in 46..80 {
            if engine.observe(normal(i)).unwrap() == Outcome::FitDue {
                next_due.get_or_insert(i);
            }
        }
        assert_eq!(next_due, Some(52));
    }
}
