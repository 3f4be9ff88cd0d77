//! The detection stage: events in, windows built, the model engine fed,
//! findings out. One stage owns all of it (windows and the model are state),
//! and the same stage serves `monitor run` (live events) and `monitor
//! replay` (recorded ones).

use std::time::Duration;

use crate::{
    event::Event,
    model::{
        Engine, EngineSettings, Outcome, Progress, Training, Window, WindowBuilder,
        baseline::{Baseline, FitError},
        finding::Finding,
    },
};

/// What the stage produced for one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Detection {
    /// An explained finding.
    Finding(Box<Finding>),
    /// Learning finished; detection starts with the next window.
    Learned {
        /// Windows the baseline was learned from.
        windows: u64,
        /// Programs with their own model.
        programs: usize,
    },
    /// Learning could not finish (too few usable windows); it goes on.
    LearningExtended(String),
    /// A window repeated an open finding's behaviour (not raised again).
    Repeat(Box<crate::model::finding::Repeat>),
    /// Learning is done and the fit is due elsewhere (only from an engine
    /// made with [`Engine::fit_elsewhere`]): see [`Detector::take_training`].
    FitDue,
}

/// Events to windows to the engine.
pub struct Detector {
    windows: WindowBuilder,
    engine: Engine,
    /// The last windows scored, kept for acknowledgements (`monitor ack`).
    recent: std::collections::VecDeque<Window>,
}

/// Windows kept for acknowledgement.
const RECENT: usize = 256;

impl Detector {
    /// A detector around an engine; windows that no drain of syscall counts closes close
    /// after `window_len`.
    pub fn new(engine: Engine, window_len: Duration) -> Self {
        Self {
            windows: WindowBuilder::new(window_len),
            engine,
            recent: std::collections::VecDeque::new(),
        }
    }

    /// A learning detector with these settings.
    pub fn learning(settings: EngineSettings, window_len: Duration) -> Self {
        Self::new(Engine::new(settings), window_len)
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The engine, mutably (for acknowledgements and saving).
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// Progress of the engine.
    pub fn progress(&self) -> Progress {
        self.engine.progress()
    }

    /// Feeds an event.
    pub fn push(&mut self, event: &Event) -> Vec<Detection> {
        let closed = self.windows.push(event);
        self.observe_all(closed)
    }

    /// Feeds an event unless it is the agent's own (process `own_pid`).
    /// The agent does not judge itself: its syscalls follow its work (a
    /// drill, a report, a flush of the spool), not a baseline, and attacks
    /// on it are reported by the processes that make them (signals, ptrace,
    /// writes into its state).
    pub fn push_unless_own(&mut self, event: &Event, own_pid: u32) -> Vec<Detection> {
        if event.process.as_ref().is_some_and(|p| p.pid == own_pid) {
            return Vec::new();
        }
        self.push(event)
    }

    /// Closes every open window (end of stream, shutdown).
    pub fn finish(&mut self) -> Vec<Detection> {
        let closed = self.windows.finish();
        self.observe_all(closed)
    }

    /// Ends learning now, if still learning.
    pub fn finish_learning(&mut self) -> Vec<Detection> {
        if self.engine.baseline().is_some() {
            return Vec::new();
        }
        match self.engine.finish_learning() {
            Ok(Outcome::Learned { windows, programs }) => {
                vec![Detection::Learned { windows, programs }]
            }
            Ok(_) => Vec::new(),
            Err(err) => vec![Detection::LearningExtended(err.to_string())],
        }
    }

    /// Takes the training for a fit elsewhere (after [`Detection::FitDue`]).
    pub fn take_training(&mut self) -> Training {
        self.engine.take_training()
    }

    /// Installs a fit made elsewhere; returns what it and the windows held
    /// meanwhile produced.
    pub fn install_fit(
        &mut self,
        fitted: Result<Baseline, FitError>,
        training: Training,
    ) -> Vec<Detection> {
        let outcomes = self.engine.install_fit(fitted, training);
        outcomes.into_iter().filter_map(Self::detection).collect()
    }

    /// A recently scored window by its finding id.
    pub fn recent_window(&self, finding_id: &str) -> Option<&Window> {
        self.recent
            .iter()
            .find(|w| crate::model::finding::finding_id(w) == finding_id)
    }

    fn observe_all(&mut self, closed: Vec<Window>) -> Vec<Detection> {
        let mut out = Vec::new();
        for w in closed {
            let keep = self.engine.baseline().is_some().then(|| w.clone());
            out.extend(Self::detection(self.engine.observe(w)));
            if let Some(w) = keep {
                if self.recent.len() == RECENT {
                    self.recent.pop_front();
                }
                self.recent.push_back(w);
            }
        }
        out
    }

    fn detection(outcome: Result<Outcome, FitError>) -> Option<Detection> {
        match outcome {
            Ok(Outcome::Finding(finding)) => Some(Detection::Finding(finding)),
            Ok(Outcome::Learned { windows, programs }) => {
                Some(Detection::Learned { windows, programs })
            }
            Ok(Outcome::Repeat(repeat)) => Some(Detection::Repeat(repeat)),
            Ok(Outcome::FitDue) => Some(Detection::FitDue),
            Ok(Outcome::Learning | Outcome::Normal(_)) => None,
            Err(err) => Some(Detection::LearningExtended(err.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        event::{CountsDetail, Detail, Process, Timestamp},
        model::EngineSettings,
    };

    fn final_counts(pid: u32, at: u64) -> Event {
        let mut e = Event::new(
            Timestamp(at),
            Detail::SyscallCounts(CountsDetail {
                since: Timestamp(at - 1_000),
                until: Timestamp(at),
                total: 3,
                counts: BTreeMap::from([("read".into(), 3)]),
                pairs: BTreeMap::new(),
                final_counts: true,
            }),
        );
        e.process = Some(
            Process {
                pid,
                ..Process::default()
            }
            .into(),
        );
        e
    }

    #[test]
    fn the_agent_does_not_judge_its_own_windows() {
        let mut d = Detector::learning(EngineSettings::default(), Duration::from_secs(5));
        d.push_unless_own(&final_counts(42, 10_000), 42);
        assert_eq!(d.progress().windows_seen, 0, "the agent's own window");
        d.push_unless_own(&final_counts(43, 20_000), 42);
        assert_eq!(d.progress().windows_seen, 1, "another process's window");
    }
}
