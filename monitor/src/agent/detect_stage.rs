//! The detect stage: owns the [`Detector`] (behaviour windows and the
//! model engine) and the acknowledgements. Events in; findings, repeats and
//! model snapshots out.
//!
//! The two slow things the model does are kept off the event path: the
//! learning fit runs on a blocking thread (windows that close meanwhile are
//! held by the engine and scored once the baseline is in), and saving is the
//! model keeper's (`model_keeper`), fed snapshots on a watch channel.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, watch};

use crate::{
    channel::{Closed, Receiver, Sender},
    detect::{Detection, Detector},
    event::{Event, Timestamp},
    model::{
        Phase, Progress, Training,
        baseline::{Baseline, FitError},
    },
    state::paths::StatePaths,
};

use super::{acks::AckWatch, emit_stage::Emission, every, model_keeper::ModelSnapshot};

/// The stage's state.
pub struct DetectStage {
    /// Windows and the engine.
    pub detector: Detector,
    /// The agent's own pid (its events are not judged).
    pub own_pid: u32,
    /// The state directory (acknowledgements).
    pub paths: StatePaths,
    /// When the current baseline was learned (carried into saved models).
    pub model_created: Timestamp,
    /// How often a model snapshot goes to the keeper.
    pub save_every: Duration,
    /// Where findings and repeats go.
    pub emit: Sender<Emission>,
    /// Model snapshots for the keeper.
    pub models: watch::Sender<Option<Arc<ModelSnapshot>>>,
    /// The engine's progress, for the status.
    pub progress: watch::Sender<Progress>,
}

/// A fit's result: the baseline (or why not) and the training back, or the
/// blocking thread's panic.
type FitResult = Result<(Result<Baseline, FitError>, Training), tokio::task::JoinError>;

/// The fit in flight, if any.
struct Fits {
    running: bool,
    done_tx: mpsc::Sender<FitResult>,
}

impl DetectStage {
    /// Runs until the event channel ends (capture stopped), then publishes
    /// the last model snapshot. Returns the phase it ended in.
    pub async fn run(mut self, mut events: Receiver<Vec<Event>>) -> Phase {
        let mut acks = AckWatch::default();
        acks.refresh(&self.paths, &mut self.detector, true);
        let mut ack_tick = every(Duration::from_secs(1));
        let mut save_tick = every(self.save_every);
        let (done_tx, mut fit_done) = mpsc::channel(1);
        let mut fits = Fits {
            running: false,
            done_tx,
        };
        loop {
            tokio::select! {
                batch = events.recv() => {
                    let Some(batch) = batch else { break };
                    let mut closed = false;
                    for event in &batch {
                        let detections = self.detector.push_unless_own(event, self.own_pid);
                        if self.handle(detections, &mut fits, &mut acks).await.is_err() {
                            closed = true;
                            break;
                        }
                    }
                    if closed {
                        break;
                    }
                }
                Some(done) = fit_done.recv() => {
                    fits.running = false;
                    let detections = match done {
                        Ok((fitted, training)) => self.detector.install_fit(fitted, training),
                        Err(e) => {
                            // The training went with the panicked thread;
                            // learning starts over rather than stop the agent.
                            tracing::error!(error = %e, "the learning fit panicked; learning starts over");
                            *self.detector.engine_mut() = crate::model::Engine::new(self.detector.engine().settings().clone()).fit_elsewhere();
                            Vec::new()
                        }
                    };
                    if self.handle(detections, &mut fits, &mut acks).await.is_err() {
                        break;
                    }
                }
                _ = ack_tick.tick() => {
                    acks.refresh(&self.paths, &mut self.detector, false);
                    self.progress.send_replace(self.detector.progress());
                }
                _ = save_tick.tick() => self.publish_model(),
            }
        }
        // A fit in flight at stop is finished (bounded CPU work), so what
        // was learned is saved.
        if fits.running
            && let Some(Ok((fitted, training))) = fit_done.recv().await
        {
            fits.running = true; // no new fit at stop
            let detections = self.detector.install_fit(fitted, training);
            let _ = self.handle(detections, &mut fits, &mut acks).await;
        }
        self.publish_model();
        self.progress.send_replace(self.detector.progress());
        self.detector.engine().phase()
    }

    /// Acts on what the detector produced.
    async fn handle(
        &mut self,
        detections: Vec<Detection>,
        fits: &mut Fits,
        acks: &mut AckWatch,
    ) -> Result<(), Closed> {
        for d in detections {
            match d {
                Detection::Finding(finding) => {
                    let window = self
                        .detector
                        .recent_window(&finding.id)
                        .cloned()
                        .map(Box::new);
                    self.emit
                        .send(Emission::Finding { finding, window })
                        .await?;
                }
                Detection::Repeat(repeat) => self.emit.send(Emission::Repeat(repeat)).await?,
                Detection::FitDue if !fits.running => {
                    let training = self.detector.take_training();
                    tracing::info!(
                        windows = training.windows(),
                        "learning done; fitting the baseline off the event path"
                    );
                    let started = Instant::now();
                    let fit = tokio::task::spawn_blocking(move || {
                        let fitted = training.fit();
                        tracing::debug!(
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "fit finished"
                        );
                        (fitted, training)
                    });
                    let done = fits.done_tx.clone();
                    tokio::spawn(async move {
                        let _ = done.send(fit.await).await;
                    });
                    fits.running = true;
                }
                Detection::FitDue => {}
                Detection::Learned { windows, programs } => {
                    eprintln!(
                        "monitor: baseline learned from {windows} windows ({programs} programs with their own model); detecting"
                    );
                    self.model_created = Timestamp::now();
                    acks.refresh(&self.paths, &mut self.detector, true);
                    self.publish_model();
                }
                Detection::LearningExtended(why) => tracing::warn!("still learning: {why}"),
            }
        }
        Ok(())
    }

    /// Hands the keeper a snapshot of the baseline, if there is one.
    fn publish_model(&self) {
        if let Some(baseline) = self.detector.engine().baseline() {
            self.models.send_replace(Some(Arc::new(ModelSnapshot {
                baseline: baseline.clone(),
                created: self.model_created,
            })));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        channel,
        event::{CountsDetail, Detail, FileDetail, Process},
        model::{Engine, EngineSettings},
    };

    const SERVER: &str = "/usr/sbin/server";
    const SECOND: u64 = 1_000_000_000;

    fn of(pid: u32, at: u64, detail: Detail) -> Event {
        let mut e = Event::new(Timestamp(at), detail);
        e.process = Some(
            Process {
                pid,
                exe: Some(SERVER.into()),
                ..Process::default()
            }
            .into(),
        );
        e
    }

    /// A process's last syscall counts: closes its window.
    fn counts(pid: u32, at: u64, reads: u64) -> Event {
        of(
            pid,
            at,
            Detail::SyscallCounts(CountsDetail {
                since: Timestamp(at - SECOND / 2),
                until: Timestamp(at),
                total: reads + 10,
                counts: BTreeMap::from([("read".into(), reads), ("write".into(), 10)]),
                pairs: BTreeMap::new(),
                final_counts: true,
            }),
        )
    }

    fn shadow_read(pid: u32, at: u64) -> Event {
        of(
            pid,
            at,
            Detail::FileOpen(FileDetail {
                path: "/etc/shadow".into(),
                sensitive: true,
                result: 3,
                ..FileDetail::default()
            }),
        )
    }

    struct Driven {
        events: channel::Sender<Vec<Event>>,
        emitted: channel::Receiver<Emission>,
        models: watch::Receiver<Option<Arc<ModelSnapshot>>>,
        stage: tokio::task::JoinHandle<Phase>,
        _dir: RemovedOnDrop,
    }

    struct RemovedOnDrop(std::path::PathBuf);

    impl Drop for RemovedOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The stage on its own: events in by channel, no kernel.
    fn drive() -> Driven {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "monitor-detect-stage-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let engine = Engine::new(EngineSettings {
            learn_for: Duration::from_secs(30),
            min_windows: 40,
            ..EngineSettings::default()
        })
        .fit_elsewhere();
        let (events, events_rx, _) = channel::bounded(64);
        let (emit, emitted, _) = channel::bounded(64);
        let (models_tx, models) = watch::channel(None);
        let (progress, _) = watch::channel(engine.progress());
        let stage = tokio::spawn(
            DetectStage {
                detector: Detector::new(engine, Duration::from_secs(10)),
                own_pid: 1,
                paths: StatePaths::new(&dir),
                model_created: Timestamp(0),
                save_every: Duration::from_secs(3600),
                emit,
                models: models_tx,
                progress,
            }
            .run(events_rx),
        );
        Driven {
            events,
            emitted,
            models,
            stage,
            _dir: RemovedOnDrop(dir),
        }
    }

    impl Driven {
        /// 60 processes with alike counts, one window each: enough to learn.
        async fn teach(&self) {
            for i in 0..60u64 {
                self.events
                    .send(vec![counts(100 + i as u32, (i + 1) * SECOND, 20 + i % 7)])
                    .await
                    .unwrap();
            }
        }

        /// Process `pid` reads /etc/shadow at `at`, and its window closes.
        async fn shadow_read_by(&self, pid: u32, at: u64) {
            self.events
                .send(vec![shadow_read(pid, at), counts(pid, at + SECOND, 22)])
                .await
                .unwrap();
        }

        /// The next emission, within `within`.
        async fn next_emission(&mut self, within: Duration) -> Emission {
            tokio::time::timeout(within, self.emitted.recv())
                .await
                .expect("an emission")
                .expect("the stage is running")
        }
    }

    #[tokio::test]
    async fn learns_off_the_event_path_then_raises_a_finding_and_hands_over_the_model() {
        let mut d = drive();
        d.teach().await;
        // The fit runs on a blocking thread; the model comes to the keeper.
        tokio::time::timeout(Duration::from_secs(30), d.models.changed())
            .await
            .expect("a model snapshot after learning")
            .unwrap();
        assert!(d.models.borrow().is_some());
        d.shadow_read_by(500, 70 * SECOND).await;
        let emission = d.next_emission(Duration::from_secs(10)).await;
        let Emission::Finding { finding, window } = emission else {
            panic!("expected a finding, got {emission:?}")
        };
        assert!(
            finding.summary.contains("/etc/shadow"),
            "{}",
            finding.summary
        );
        assert_eq!(window.expect("its window").pid, 500);
        let Driven { events, stage, .. } = d;
        drop(events);
        assert_eq!(stage.await.unwrap(), Phase::Detecting);
    }

    #[tokio::test]
    async fn a_window_closed_right_after_learning_is_scored_whether_or_not_the_fit_is_done() {
        let mut d = drive();
        d.teach().await;
        // Sent at once after the window that made the fit due: the fit is
        // most likely still running when this window closes.
        d.shadow_read_by(500, 62 * SECOND).await;
        let emission = d.next_emission(Duration::from_secs(30)).await;
        assert!(
            matches!(emission, Emission::Finding { .. }),
            "the held window is scored: {emission:?}"
        );
        let Driven { events, stage, .. } = d;
        drop(events);
        stage.await.unwrap();
    }
}
