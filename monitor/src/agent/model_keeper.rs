//! The saved model: loaded at start, and saved off the event path.
//!
//! The detect stage publishes a snapshot of the baseline (when learning
//! ends, every `model.save_every`, and at stop) on a watch channel; this
//! task compresses and writes it on a blocking thread. A snapshot not yet
//! written when a newer one arrives is superseded, never queued: only the
//! latest model matters. When the detect stage ends, the last snapshot is
//! written before the task ends.

use std::sync::Arc;

use tokio::sync::watch;

use crate::{
    config::{OnBadModel, Settings},
    event::Timestamp,
    model::{baseline::Baseline, persist},
    state::paths::StatePaths,
};

/// A baseline to save, and when it was learned.
#[derive(Debug, Clone)]
pub struct ModelSnapshot {
    /// The baseline.
    pub baseline: Baseline,
    /// When learning ended.
    pub created: Timestamp,
}

/// Why the saved model stops the agent.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// It cannot be used, and `model.on_bad_model = "stop"`.
    #[error("the saved model cannot be used (model.on_bad_model = \"stop\")")]
    Unusable(#[source] persist::ModelError),
    /// It cannot be used, and cannot be moved aside to learn again.
    #[error("cannot move the bad model aside to {}", .path.display())]
    MoveAside {
        /// Where it was to go.
        path: std::path::PathBuf,
        /// Why not.
        #[source]
        source: std::io::Error,
    },
}

/// Loads the saved model, or decides what to do when it is bad.
pub fn load(
    paths: &StatePaths,
    settings: &Settings,
) -> Result<Option<persist::ModelFile>, LoadError> {
    match persist::load(&paths.model()) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.is_missing() => Ok(None),
        Err(e) => match settings.raw.model.on_bad_model {
            OnBadModel::Stop => Err(LoadError::Unusable(e)),
            OnBadModel::Relearn => {
                let aside = paths
                    .dir
                    .join(format!("model.bin.bad-{}", Timestamp::now().as_millis()));
                tracing::error!(error = %crate::error::error_chain(&e), moved_to = %aside.display(), "the saved model cannot be used; learning again");
                std::fs::rename(paths.model(), &aside).map_err(|source| LoadError::MoveAside {
                    path: aside,
                    source,
                })?;
                Ok(None)
            }
        },
    }
}

/// Writes every snapshot published on `snapshots` until its sender is gone.
pub async fn keep(
    mut snapshots: watch::Receiver<Option<Arc<ModelSnapshot>>>,
    paths: StatePaths,
    host: String,
) {
    while snapshots.changed().await.is_ok() {
        let Some(snapshot) = snapshots.borrow_and_update().clone() else {
            continue;
        };
        let path = paths.model();
        let host = host.clone();
        let saved = tokio::task::spawn_blocking(move || {
            let file = persist::ModelFile {
                created: snapshot.created,
                saved: Timestamp::now(),
                host,
                agent_version: env!("CARGO_PKG_VERSION").to_owned(),
                baseline: snapshot.baseline.clone(),
            };
            persist::save(&path, &file)
        })
        .await;
        match saved {
            Ok(Ok(bytes)) => {
                tracing::info!(bytes, path = %paths.model().display(), "model saved")
            }
            Ok(Err(e)) => {
                tracing::error!(error = %crate::error::error_chain(&e), path = %paths.model().display(), "cannot save the model")
            }
            Err(e) => tracing::error!(error = %e, "the model save panicked"),
        }
    }
}
