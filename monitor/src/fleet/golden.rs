//! One golden baseline for a fleet of identical hosts: a model file
//! published to the cluster's object store (`monitor model publish`) and
//! pulled by each host (`monitor model pull`), so they start detecting from
//! one learned baseline instead of each learning its own.
//!
//! The object carries, as metadata, the agent version and model format that
//! wrote it and the SHA-256 of its bytes. A pull is refused when the agent
//! version or the format differ from the puller's, when the bytes do not
//! hash to what was published, or when the file fails the model file's own
//! checks (magic, CRC-32, contents).

use std::{collections::HashMap, path::Path};

use async_nats::jetstream::{self, object_store};
use tokio::io::AsyncReadExt as _;

use crate::{
    hash::sha256_hex,
    model::persist::{self, FORMAT_VERSION, ModelFile},
};

/// The object store bucket models go to unless told otherwise.
pub const DEFAULT_BUCKET: &str = "monitor-models";
/// The object name unless told otherwise.
pub const DEFAULT_NAME: &str = "golden";
/// Largest model pulled: the model file's own bound on its body.
const MAX_MODEL_BYTES: usize = 64 << 20;

/// This agent's version, which a pulled model must have been written by.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why a publish or a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum GoldenError {
    /// The cluster did not answer as expected.
    #[error("{0}")]
    Cluster(String),
    /// No such model in the bucket.
    #[error("no model {name:?} in bucket {bucket:?}")]
    Missing {
        /// Bucket.
        bucket: String,
        /// Object name.
        name: String,
    },
    /// The model was published for another agent or format, or is damaged.
    #[error("model {name:?} in bucket {bucket:?} is refused: {reason}")]
    Refused {
        /// Bucket.
        bucket: String,
        /// Object name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// What was published or pulled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Golden {
    /// Bytes of the model file.
    pub size: usize,
    /// SHA-256 of them, hex.
    pub sha256: String,
    /// Agent version that wrote it.
    pub agent_version: String,
    /// Host it was learned on.
    pub learned_on: String,
    /// Windows it was learned from.
    pub windows: u64,
}

/// Publishes the model file `bytes` (already checked: `model` is what they
/// decode to) as `name` in `bucket`, creating the bucket (replicated
/// `replicas` ways) if there is none.
pub async fn publish(
    client: async_nats::Client,
    bucket: &str,
    name: &str,
    replicas: usize,
    bytes: &[u8],
    model: &ModelFile,
) -> Result<Golden, GoldenError> {
    let js = jetstream::new(client);
    let store = match js.get_object_store(bucket).await {
        Ok(store) => store,
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: bucket.to_owned(),
                description: Some("monitor: learned baselines".into()),
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| GoldenError::Cluster(format!("cannot create bucket {bucket:?}: {e}")))?,
    };
    let golden = Golden {
        size: bytes.len(),
        sha256: sha256_hex(bytes),
        agent_version: model.agent_version.clone(),
        learned_on: model.host.clone(),
        windows: model.baseline.windows,
    };
    let metadata = HashMap::from([
        ("agent_version".to_owned(), golden.agent_version.clone()),
        ("model_format".to_owned(), FORMAT_VERSION.to_string()),
        ("sha256".to_owned(), golden.sha256.clone()),
        ("learned_on".to_owned(), golden.learned_on.clone()),
        ("windows".to_owned(), golden.windows.to_string()),
    ]);
    let meta = object_store::ObjectMetadata {
        name: name.to_owned(),
        description: Some(format!(
            "monitor {} baseline of {} windows learned on {}",
            golden.agent_version, golden.windows, golden.learned_on
        )),
        metadata,
        ..Default::default()
    };
    let mut reader = bytes;
    store
        .put(meta, &mut reader)
        .await
        .map_err(|e| GoldenError::Cluster(format!("cannot put {name:?} in {bucket:?}: {e}")))?;
    Ok(golden)
}

/// Pulls model `name` from `bucket` and checks it; returns the file's bytes
/// and what they decode to.
pub async fn pull(
    client: async_nats::Client,
    bucket: &str,
    name: &str,
) -> Result<(Vec<u8>, ModelFile, Golden), GoldenError> {
    let refused = |reason: String| GoldenError::Refused {
        bucket: bucket.to_owned(),
        name: name.to_owned(),
        reason,
    };
    let js = jetstream::new(client);
    let store = js
        .get_object_store(bucket)
        .await
        .map_err(|e| GoldenError::Cluster(format!("no bucket {bucket:?}: {e}")))?;
    let mut object = match store.get(name).await {
        Ok(object) => object,
        Err(e) if e.kind() == object_store::GetErrorKind::NotFound => {
            return Err(GoldenError::Missing {
                bucket: bucket.to_owned(),
                name: name.to_owned(),
            });
        }
        Err(e) => return Err(GoldenError::Cluster(format!("cannot get {name:?}: {e}"))),
    };
    let info = object.info().clone();
    let field = |key: &str| info.metadata.get(key).cloned().unwrap_or_default();
    let (version, format, sha256) = (
        field("agent_version"),
        field("model_format"),
        field("sha256"),
    );
    if version != AGENT_VERSION {
        return Err(refused(format!(
            "it was published by monitor {version:?}; this agent is {AGENT_VERSION}"
        )));
    }
    if format != FORMAT_VERSION.to_string() {
        return Err(refused(format!(
            "it is model format {format:?}; this agent reads format {FORMAT_VERSION}"
        )));
    }
    if info.size > MAX_MODEL_BYTES {
        return Err(refused(format!(
            "it is {} bytes, more than a model file may be ({MAX_MODEL_BYTES})",
            info.size
        )));
    }
    let mut bytes = Vec::with_capacity(info.size);
    object
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| refused(format!("reading it failed: {e}")))?;
    let got = sha256_hex(&bytes);
    if got != sha256 {
        return Err(refused(format!(
            "its bytes hash to {got}, not the {sha256} it was published with"
        )));
    }
    let label = Path::new(bucket).join(name);
    let model = persist::decode(&bytes, &label).map_err(|e| refused(e.to_string()))?;
    if model.agent_version != AGENT_VERSION {
        return Err(refused(format!(
            "the file inside was written by monitor {}; this agent is {AGENT_VERSION}",
            model.agent_version
        )));
    }
    let golden = Golden {
        size: bytes.len(),
        sha256: got,
        agent_version: model.agent_version.clone(),
        learned_on: model.host.clone(),
        windows: model.baseline.windows,
    };
    Ok((bytes, model, golden))
}
