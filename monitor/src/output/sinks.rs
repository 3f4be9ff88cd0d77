//! Sinks: where records go, and the delivery loop that feeds each of them
//! from the spool.
//!
//! A sink acknowledges a batch by returning `Ok`; only then does the spool
//! forget it for that sink. Failures are retried with exponential backoff
//! and jitter (0.5 s doubling to 30 s, times 0.5..1.5), forever: records wait
//! in the spool, which is bounded. A record the destination refuses for good
//! (HTTP 413 or 422, or a 400 about the data, for that record alone, once
//! the batch was split in halves down to it; an Elasticsearch item error
//! about the document) would block the queue forever if retried and lose a
//! finding if dropped: it goes to the dead letters
//! ([`super::dead_letters`]), counted as `rejected`. What is about the
//! destination rather than the record (Splunk HEC's unknown index or
//! missing channel; Elasticsearch items refused 401, 403 or 404; 429 and
//! 5xx) is retried: dead-lettering every record for it would empty the
//! spool into a file.
//!
//! HTTP: redirects are not followed (a sink's URL is its final address;
//! a redirect could send findings and tokens elsewhere), replies are read up
//! to 1 MiB, connect and request time out.

use std::{
    io::Write as _,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{
    dead_letters::DeadLetters,
    nats::{Nats, Published},
    spool::{Class, Record, Spool},
    syslog::Syslog,
};
use crate::{
    fleet::connection::{Endpoint, EndpointSettings},
    output::sink_config::{Compression, SinkConfig},
    secret::{Secret, read_token},
};

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying (network, 429, 5xx, auth, I/O).
    #[error("{0}")]
    Retry(String),
}

/// A record of a batch the destination refused for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Its index in the batch.
    pub index: usize,
    /// What the destination said.
    pub reason: String,
}

/// Largest reply body read from an HTTP destination.
const MAX_REPLY: usize = 1 << 20;

/// The HTTP API a sink speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HttpFlavour {
    SplunkHec,
    Elasticsearch,
}

/// An HTTP sink (Splunk HEC or Elasticsearch `_bulk`).
pub struct Http {
    flavour: HttpFlavour,
    client: reqwest::Client,
    url: String,
    token: Option<Secret>,
    compression: Compression,
    index: Option<String>,
    sourcetype: String,
    host: String,
}

/// A configured sink.
pub enum Sink {
    /// Standard output.
    Stdout,
    /// A rotating JSON Lines file.
    File {
        /// The file.
        path: PathBuf,
        /// Rotation size.
        max_size: u64,
        /// Rotated files kept.
        keep: usize,
        /// Open file and its size.
        open: Option<(std::fs::File, u64)>,
    },
    /// syslog.
    Syslog(Syslog),
    /// HTTP.
    Http(Box<Http>),
    /// NATS JetStream.
    Nats(Box<Nats>),
}

impl Sink {
    /// Builds a sink from its configuration (reads tokens and CA files now,
    /// so a misconfiguration stops the start with a clear error).
    pub fn from_config(config: &SinkConfig, host: &str) -> Result<Self, String> {
        Ok(match config {
            SinkConfig::Stdout {} => Sink::Stdout,
            SinkConfig::File {
                path,
                max_size,
                keep,
            } => Sink::File {
                path: path.clone(),
                max_size: *max_size,
                keep: *keep,
                open: None,
            },
            SinkConfig::Syslog {
                transport,
                address,
                path,
                app_name,
                facility,
                max_message,
            } => Sink::Syslog(Syslog::new(
                *transport,
                address.clone(),
                path.clone(),
                super::sink_config::facility_code(facility).unwrap_or(16),
                app_name.clone(),
                *max_message as usize,
            )),
            SinkConfig::SplunkHec {
                url,
                token_file,
                token_env,
                index,
                sourcetype,
                compression,
                ca_file,
                ..
            } => Sink::Http(Box::new(Http {
                flavour: HttpFlavour::SplunkHec,
                client: http_client(ca_file.as_ref())?,
                url: url.clone(),
                token: read_token(token_file.as_ref(), token_env.as_deref())?,
                compression: *compression,
                index: index.clone(),
                sourcetype: sourcetype.clone(),
                host: host.to_owned(),
            })),
            SinkConfig::Elasticsearch {
                url,
                index,
                token_file,
                token_env,
                compression,
                ca_file,
                ..
            } => Sink::Http(Box::new(Http {
                flavour: HttpFlavour::Elasticsearch,
                client: http_client(ca_file.as_ref())?,
                // Only what the sink reads: a full reply is about 200 bytes
                // a record, past the reply cap for large batches.
                url: format!(
                    "{}/_bulk?filter_path=errors,items.*.status,items.*.error.type,items.*.error.reason",
                    url.trim_end_matches('/')
                ),
                token: read_token(token_file.as_ref(), token_env.as_deref())?,
                compression: *compression,
                index: Some(index.clone()),
                sourcetype: String::new(),
                host: host.to_owned(),
            })),
            SinkConfig::Nats {
                urls,
                subject,
                stream,
                creds_file,
                nkey_file,
                token_file,
                token_env,
                tls,
                ca_file,
                compression,
                batch_size,
                ..
            } => {
                let endpoint = Endpoint::new(&EndpointSettings {
                    urls,
                    creds_file: creds_file.as_ref(),
                    nkey_file: nkey_file.as_ref(),
                    token_file: token_file.as_ref(),
                    token_env: token_env.as_deref(),
                    tls: *tls,
                    ca_file: ca_file.as_ref(),
                })?;
                Sink::Nats(Box::new(Nats::new(
                    endpoint,
                    subject,
                    stream.as_deref(),
                    host,
                    *compression == Compression::Gzip,
                    *batch_size,
                )))
            }
        })
    }

    /// Hands a batch to the destination. Most sinks are done when this
    /// returns; a NATS sink has published the batch and its
    /// acknowledgements are still on their way, so the delivery loop reads
    /// and publishes the next batch before [`Sending::confirmed`] waits for them.
    pub async fn start(&mut self, batch: &[Record], host: &str) -> Result<Sending, SinkError> {
        let done = match self {
            Sink::Stdout => {
                let mut out = Vec::new();
                for r in batch {
                    out.extend_from_slice(&r.payload);
                    out.push(b'\n');
                }
                let mut stdout = std::io::stdout().lock();
                stdout
                    .write_all(&out)
                    .and_then(|()| stdout.flush())
                    .map_err(|e| SinkError::Retry(format!("stdout: {e}")))?;
                Ok(Vec::new())
            }
            Sink::File {
                path,
                max_size,
                keep,
                open,
            } => write_file(path, *max_size, *keep, open, batch)
                .map(|()| Vec::new())
                .map_err(|e| SinkError::Retry(format!("{}: {e}", path.display()))),
            Sink::Syslog(s) => {
                let messages: Vec<Vec<u8>> = batch
                    .iter()
                    .map(|r| {
                        let (severity, msgid) = classify(r);
                        let id = super::ocsf::record_uid(&r.payload);
                        super::syslog::format(
                            s.max_message,
                            s.facility,
                            severity,
                            host,
                            &s.app_name,
                            msgid,
                            id.as_deref(),
                            &r.payload,
                        )
                    })
                    .collect();
                s.send(&messages)
                    .await
                    .map(|()| Vec::new())
                    .map_err(|e| SinkError::Retry(format!("syslog: {e}")))
            }
            Sink::Http(h) => h.send(batch).await,
            Sink::Nats(n) => {
                return n
                    .publish(batch)
                    .await
                    .map(Sending::Awaiting)
                    .map_err(|e| SinkError::Retry(e.to_string()));
            }
        };
        done.map(Sending::Done)
    }
}

/// A batch a sink has taken.
pub enum Sending {
    /// The destination has it, but for these records, refused for good.
    Done(Vec<Refused>),
    /// Published to NATS; the acknowledgements are on their way.
    Awaiting(Published),
}

impl Sending {
    /// Waits until the destination has the batch; `Ok` holds the records
    /// it refused for good.
    pub async fn confirmed(self) -> Result<Vec<Refused>, SinkError> {
        match self {
            Sending::Done(refused) => Ok(refused),
            Sending::Awaiting(published) => published
                .confirmed()
                .await
                .map(|refused| {
                    refused
                        .into_iter()
                        .map(|(index, reason)| Refused { index, reason })
                        .collect()
                })
                .map_err(|e| SinkError::Retry(e.to_string())),
        }
    }
}

/// syslog severity and MSGID of a record.
fn classify(r: &Record) -> (u8, &'static str) {
    match r.class {
        Class::Findings => (4, "finding"),
        Class::Activity => {
            let text = String::from_utf8_lossy(&r.payload[..r.payload.len().min(64)]).into_owned();
            if text.contains("\"class_uid\":6002") {
                (5, "lifecycle")
            } else {
                (6, "activity")
            }
        }
    }
}

fn http_client(ca_file: Option<&PathBuf>) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("monitor/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| format!("CA file {} is not a PEM certificate: {e}", path.display()))?;
        builder = builder.add_root_certificate(cert);
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

fn write_file(
    path: &PathBuf,
    max_size: u64,
    keep: usize,
    open: &mut Option<(std::fs::File, u64)>,
    batch: &[Record],
) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if open.is_none() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        let size = f.metadata()?.len();
        *open = Some((f, size));
    }
    let mut buf = Vec::new();
    for r in batch {
        buf.extend_from_slice(&r.payload);
        buf.push(b'\n');
    }
    let (f, size) = open.as_mut().expect("opened above");
    f.write_all(&buf)?;
    *size += buf.len() as u64;
    if *size >= max_size {
        // Rotate: path.(keep-1) is dropped, every other one moves up.
        *open = None;
        for i in (1..keep.max(1)).rev() {
            let from = rotated(path, i);
            if from.exists() {
                std::fs::rename(&from, rotated(path, i + 1))?;
            }
        }
        if keep > 0 {
            std::fs::rename(path, rotated(path, 1))?;
        } else {
            std::fs::remove_file(path)?;
        }
    }
    Ok(())
}

fn rotated(path: &std::path::Path, n: usize) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{n}"));
    PathBuf::from(p)
}

impl Http {
    fn body(&self, batch: &[&Record]) -> Vec<u8> {
        let mut body = Vec::new();
        for r in batch {
            match self.flavour {
                HttpFlavour::SplunkHec => {
                    #[derive(Serialize)]
                    struct Hec<'a> {
                        time: f64,
                        host: &'a str,
                        source: &'a str,
                        sourcetype: &'a str,
                        #[serde(skip_serializing_if = "Option::is_none")]
                        index: Option<&'a str>,
                        event: &'a serde_json::value::RawValue,
                    }
                    let Ok(raw) =
                        serde_json::from_slice::<&serde_json::value::RawValue>(&r.payload)
                    else {
                        continue;
                    };
                    let time = serde_json::from_slice::<serde_json::Value>(&r.payload)
                        .ok()
                        .and_then(|v| v["time"].as_f64())
                        .map_or(0.0, |ms| ms / 1000.0);
                    let _ = serde_json::to_writer(
                        &mut body,
                        &Hec {
                            time,
                            host: &self.host,
                            source: "monitor",
                            sourcetype: &self.sourcetype,
                            index: self.index.as_deref(),
                            event: raw,
                        },
                    );
                    body.push(b'\n');
                }
                HttpFlavour::Elasticsearch => {
                    // `create` with the finding id as _id: a retried batch
                    // cannot duplicate a finding (409 conflicts are success).
                    let index = self.index.as_deref().unwrap_or("monitor");
                    let action = match super::ocsf::record_uid(&r.payload) {
                        Some(id) => serde_json::json!({ "create": { "_index": index, "_id": id } }),
                        None => serde_json::json!({ "create": { "_index": index } }),
                    };
                    let _ = serde_json::to_writer(&mut body, &action);
                    body.push(b'\n');
                    body.extend_from_slice(&r.payload);
                    body.push(b'\n');
                }
            }
        }
        body
    }

    /// Sends a batch: a 413, or a refusal of the request's data (HTTP 422,
    /// a 400 that is about the data), splits it in halves down to the
    /// single records refused, which are returned; Elasticsearch's item
    /// errors refuse those items, and its throttled or failed items (429,
    /// 5xx) are sent again alone, a few times, before the whole batch is
    /// retried later.
    async fn send(&self, batch: &[Record]) -> Result<Vec<Refused>, SinkError> {
        let mut refused = Vec::new();
        let mut parts: Vec<Vec<usize>> = vec![(0..batch.len()).collect()];
        let mut again_tries = 0u32;
        while let Some(part) = parts.pop() {
            let records: Vec<&Record> = part.iter().map(|&i| &batch[i]).collect();
            match self.post(&records).await? {
                Answer::Took {
                    refused: items,
                    again,
                } => {
                    refused.extend(items.into_iter().map(|r| Refused {
                        index: part[r.index],
                        reason: r.reason,
                    }));
                    if !again.is_empty() {
                        again_tries += 1;
                        if again_tries > ITEM_RETRIES {
                            return Err(SinkError::Retry(format!(
                                "{}: {} items still throttled or failing (429/5xx) after {ITEM_RETRIES} tries",
                                self.url,
                                again.len()
                            )));
                        }
                        tokio::time::sleep(backoff(again_tries)).await;
                        parts.push(again.into_iter().map(|i| part[i]).collect());
                    }
                }
                // Halves until the records refused are alone: one bad
                // record must not take the findings sent with it along.
                Answer::TooLarge(why) | Answer::Refused(why) if part.len() > 1 => {
                    let (first, second) = part.split_at(part.len() / 2);
                    tracing::debug!(url = %self.url, records = part.len(), "{why}; sending the batch in halves");
                    parts.push(second.to_vec());
                    parts.push(first.to_vec());
                }
                Answer::TooLarge(why) | Answer::Refused(why) => {
                    refused.extend(part.into_iter().map(|index| Refused {
                        index,
                        reason: why.clone(),
                    }));
                }
            }
        }
        refused.sort_by_key(|r| r.index);
        Ok(refused)
    }

    /// One request.
    async fn post(&self, batch: &[&Record]) -> Result<Answer, SinkError> {
        let mut body = self.body(batch);
        let mut req = self.client.post(&self.url);
        req = match self.flavour {
            HttpFlavour::SplunkHec => req.header("Content-Type", "application/json"),
            HttpFlavour::Elasticsearch => req.header("Content-Type", "application/x-ndjson"),
        };
        if self.compression == Compression::Gzip {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&body)
                .map_err(|e| SinkError::Retry(e.to_string()))?;
            body = gz.finish().map_err(|e| SinkError::Retry(e.to_string()))?;
            req = req.header("Content-Encoding", "gzip");
        }
        if let Some(token) = &self.token {
            req = match self.flavour {
                HttpFlavour::SplunkHec => {
                    req.header("Authorization", format!("Splunk {}", token.expose()))
                }
                HttpFlavour::Elasticsearch => {
                    req.header("Authorization", format!("ApiKey {}", token.expose()))
                }
            };
        }
        let mut response = req
            .body(body)
            .send()
            .await
            .map_err(|e| SinkError::Retry(format!("{}: {}", self.url, without_url(&e))))?;
        let status = response.status();
        // At most MAX_REPLY bytes of the reply: a destination (or whoever
        // answers in its place) cannot make the agent buffer more.
        let mut reply = Vec::new();
        while reply.len() < MAX_REPLY {
            match response.chunk().await {
                Ok(Some(chunk)) => reply.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        reply.truncate(MAX_REPLY);
        let text = String::from_utf8_lossy(&reply);
        let snippet: String = text.chars().take(300).collect();
        let said = || format!("HTTP {status}: {snippet}");
        match status.as_u16() {
            200..=299 if self.flavour == HttpFlavour::Elasticsearch => {
                let items = bulk_items(&text, batch.len())
                    .map_err(|why| SinkError::Retry(format!("{}: _bulk {why}", self.url)))?;
                Ok(Answer::Took {
                    refused: items.refused,
                    again: items.again,
                })
            }
            200..=299 => Ok(Answer::Took {
                refused: Vec::new(),
                again: Vec::new(),
            }),
            413 => Ok(Answer::TooLarge(said())),
            422 => Ok(Answer::Refused(said())),
            // Splunk HEC says why in a code: only a bad event is the
            // data's fault; an unknown index or a missing channel is the
            // destination's configuration, and every record would be
            // refused for it.
            400 if self.flavour == HttpFlavour::SplunkHec && !hec_data_error(&text) => {
                Err(SinkError::Retry(format!(
                    "{}: {} (a destination setting, not the data)",
                    self.url,
                    said()
                )))
            }
            400 => Ok(Answer::Refused(said())),
            300..=399 => Err(SinkError::Retry(format!(
                "{}: HTTP {status}: redirects are not followed; set the sink's url to the final address{}",
                self.url,
                response_location(&response)
            ))),
            _ => Err(SinkError::Retry(format!("{}: {}", self.url, said()))),
        }
    }
}

/// What a destination did with one request.
enum Answer {
    /// Took it, but for the records it refused and those to send again
    /// (indexes in the request).
    Took {
        refused: Vec<Refused>,
        again: Vec<usize>,
    },
    /// 413: too large.
    TooLarge(String),
    /// 400, 422: refused as it is.
    Refused(String),
}

fn response_location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .map(|l| format!(" (it redirects to {l:?})"))
        .unwrap_or_default()
}

/// reqwest errors print the URL; ours already does.
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Splunk HEC's codes for a request whose events are at fault (6 invalid
/// data format, 12 event field required, 13 event field blank), as opposed
/// to its configuration (7 incorrect index, 10 data channel missing, ...).
fn hec_data_error(reply: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(reply)
        .ok()
        .and_then(|v| v["code"].as_u64())
        .is_some_and(|code| matches!(code, 6 | 12 | 13))
}

/// Times throttled Elasticsearch items are sent again within one delivery
/// before the batch is retried whole.
const ITEM_RETRIES: u32 = 5;

/// What an Elasticsearch `_bulk` reply says of each record.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BulkItems {
    /// Refused for good (a mapping conflict, a bad document).
    pub refused: Vec<Refused>,
    /// Throttled or failed on the server (429, 5xx), or refused for a
    /// reason of the destination's (401, 403, 404: a key without the
    /// privilege, a missing index): to send again.
    pub again: Vec<usize>,
}

/// Reads an Elasticsearch `_bulk` reply to `sent` records. `Err` when it
/// cannot be read, and the batch must be sent again.
pub fn bulk_items(text: &str, sent: usize) -> Result<BulkItems, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("reply is not JSON: {e}"))?;
    if v["errors"] != serde_json::Value::Bool(true) {
        return Ok(BulkItems::default());
    }
    let items = v["items"]
        .as_array()
        .ok_or("reply reports errors without items")?;
    if items.len() != sent {
        return Err(format!(
            "reply has {} items for {sent} records",
            items.len()
        ));
    }
    let mut out = BulkItems::default();
    for (index, item) in items.iter().enumerate() {
        let result = item.as_object().and_then(|o| o.values().next());
        let status = result.and_then(|r| r["status"].as_u64()).unwrap_or(500);
        match status {
            200..=299 | 409 => {} // 409: a retried record is already there
            401 | 403 | 404 | 429 | 500.. => out.again.push(index),
            _ => {
                let error = result.map(|r| &r["error"]);
                let reason = format!(
                    "HTTP {status}: {}: {}",
                    error.and_then(|e| e["type"].as_str()).unwrap_or("error"),
                    error
                        .and_then(|e| e["reason"].as_str())
                        .unwrap_or_default()
                        .chars()
                        .take(300)
                        .collect::<String>()
                );
                out.refused.push(Refused { index, reason });
            }
        }
    }
    Ok(out)
}

/// A sink's health, for status and metrics.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct SinkHealth {
    /// Sink name.
    pub name: String,
    /// Records delivered.
    pub delivered: u64,
    /// Records the destination refused for good, kept in the dead letters.
    pub rejected: u64,
    /// Failed attempts.
    pub failures: u64,
    /// The last error, while failing.
    pub last_error: Option<String>,
    /// Seconds it has been failing, while failing.
    pub failing_for_secs: Option<f64>,
    #[serde(skip)]
    failing_since: Option<Instant>,
}

impl SinkHealth {
    /// A healthy sink's record.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Default::default()
        }
    }

    /// True while the sink fails.
    pub fn failing(&self) -> bool {
        self.failing_since.is_some()
    }
}

/// Shared health of every sink.
pub type Healths = Arc<Mutex<Vec<SinkHealth>>>;

/// Batch size and wait of a sink.
pub fn batching(config: &SinkConfig) -> (usize, Duration) {
    match config {
        SinkConfig::SplunkHec {
            batch_size,
            batch_timeout,
            ..
        }
        | SinkConfig::Elasticsearch {
            batch_size,
            batch_timeout,
            ..
        }
        | SinkConfig::Nats {
            batch_size,
            batch_timeout,
            ..
        } => (*batch_size, *batch_timeout),
        _ => (1000, Duration::from_millis(200)),
    }
}

/// One sink's delivery job.
pub struct Delivery {
    /// The spool to read.
    pub spool: Arc<Spool>,
    /// The sink.
    pub sink: Sink,
    /// Its name (spool cursor and health key).
    pub name: String,
    /// Its index in `healths`.
    pub index: usize,
    /// Batch size and the longest wait to fill a batch.
    pub batching: (usize, Duration),
    /// Host name (syslog header, HEC host).
    pub host: String,
    /// Shared health.
    pub healths: Healths,
    /// Where refused records go.
    pub dead_letters: Arc<DeadLetters>,
    /// Stops new work.
    pub shutdown: CancellationToken,
    /// After `shutdown`, how long to keep delivering what is spooled.
    pub drain: Duration,
}

/// Delivers from the spool to one sink until `shutdown`, then until the
/// spool is empty for it or `drain` passes.
///
/// A sink whose batches are confirmed later (NATS: the stream's
/// acknowledgements) keeps one batch in flight: the next batch is read and
/// published before the last one is awaited, so neither the agent nor the
/// servers sit idle between batches. The spool moves past a batch only
/// once it is confirmed; when a confirmation fails, both batches are sent
/// again from the spool, and the stream drops what it already has.
pub async fn deliver(job: Delivery) {
    let Delivery {
        spool,
        mut sink,
        name,
        index,
        batching: (batch_size, wait),
        host,
        healths,
        dead_letters,
        shutdown,
        drain,
    } = job;
    let mut attempt: u32 = 0;
    let mut drain_until = None;
    let mut in_flight: Option<(Vec<Record>, Sending)> = None;
    loop {
        if shutdown.is_cancelled() && drain_until.is_none() {
            drain_until = Some(tokio::time::Instant::now() + drain);
        }
        if drain_until.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return;
        }
        // With a batch in flight, take what is there now: its confirmation
        // must not wait for new records.
        let wait = if drain_until.is_some() || in_flight.is_some() {
            Duration::ZERO
        } else {
            wait
        };
        let after = in_flight.as_ref().map_or(&[][..], |(b, _)| b.as_slice());
        let batch = tokio::select! {
            b = spool.next_batch_after(&name, after, batch_size, wait) => b,
            () = shutdown.cancelled(), if drain_until.is_none() => continue,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(sink = %name, error = %e, "cannot read the spool");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let read_nothing = batch.is_empty();
        let started = if read_nothing {
            None
        } else {
            Some(sink.start(&batch, &host).await)
        };
        let ledger = Ledger {
            spool: &spool,
            dead_letters: &dead_letters,
            healths: &healths,
            index,
            name: &name,
        };
        let outcome = match in_flight.take() {
            Some((sent, sending)) => sending
                .confirmed()
                .await
                .and_then(|refused| ledger.settle(&sent, refused)),
            None => Ok(()),
        }
        .and_then(|()| match started {
            None => Ok(()),
            Some(Ok(Sending::Done(refused))) => ledger.settle(&batch, refused),
            Some(Ok(sending)) => {
                in_flight = Some((batch, sending));
                Ok(())
            }
            Some(Err(e)) => Err(e),
        });
        match outcome {
            Ok(()) => {
                attempt = 0;
                if read_nothing && drain_until.is_some() {
                    return; // delivered everything
                }
            }
            Err(SinkError::Retry(why)) => {
                // What was started after the failed batch is sent again
                // with it; its acknowledgements are no longer awaited.
                in_flight = None;
                ledger.note_failure(why);
                let backoff = backoff(attempt);
                attempt = attempt.saturating_add(1);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled(), if drain_until.is_none() => {}
                }
                if drain_until.is_some() {
                    return; // do not retry a failing sink during shutdown
                }
            }
        }
    }
}

/// Where a delivery records what each batch came to.
struct Ledger<'a> {
    spool: &'a Spool,
    dead_letters: &'a DeadLetters,
    healths: &'a Healths,
    index: usize,
    name: &'a str,
}

impl Ledger<'_> {
    /// A confirmed batch: the refused records go to the dead letters, the
    /// spool moves past the batch and the sink's health counts it. An error
    /// means the batch is to be sent again.
    fn settle(&self, batch: &[Record], refused: Vec<Refused>) -> Result<(), SinkError> {
        let name = self.name;
        keep_refused(self.dead_letters, name, batch, &refused)?;
        if let Err(e) = self.spool.ack(name, batch) {
            tracing::error!(sink = %name, error = %e, "cannot record delivery; records may be sent again");
        }
        let mut h = self.healths.lock().expect("health lock");
        let hs = &mut h[self.index];
        if hs.failing() {
            tracing::info!(sink = %name, "sink delivering again");
        }
        hs.delivered += (batch.len() - refused.len()) as u64;
        hs.rejected += refused.len() as u64;
        hs.last_error = None;
        hs.failing_since = None;
        hs.failing_for_secs = None;
        Ok(())
    }

    /// Counts a failed batch in the sink's health; warns when the sink
    /// starts failing.
    fn note_failure(&self, why: String) {
        let mut h = self.healths.lock().expect("health lock");
        let hs = &mut h[self.index];
        hs.failures += 1;
        if !hs.failing() {
            tracing::warn!(sink = %self.name, error = %why, "sink failing; retrying with backoff");
            hs.failing_since = Some(Instant::now());
        }
        hs.failing_for_secs = hs.failing_since.map(|s| s.elapsed().as_secs_f64());
        hs.last_error = Some(why);
    }
}

/// Writes the refused records of a batch to the dead letters. A failure
/// (a full disk) makes the batch retried: a finding is never dropped.
fn keep_refused(
    dead_letters: &DeadLetters,
    sink: &str,
    batch: &[Record],
    refused: &[Refused],
) -> Result<(), SinkError> {
    if let Some(first) = refused.first() {
        tracing::error!(sink = %sink, records = refused.len(), reason = %first.reason, path = %dead_letters.path().display(), "the destination refused records for good; kept in the dead letters");
    }
    for r in refused {
        dead_letters
            .keep(sink, &r.reason, &batch[r.index].payload)
            .map_err(|e| {
                SinkError::Retry(format!(
                    "cannot keep a refused record in {}: {e}",
                    dead_letters.path().display()
                ))
            })?;
    }
    Ok(())
}

/// Exponential backoff with jitter: 0.5 s doubling to 30 s, times 0.5..1.5.
pub fn backoff(attempt: u32) -> Duration {
    let base = (0.5 * 2f64.powi(attempt.min(10) as i32)).min(30.0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = 0.5 + f64::from(nanos % 1000) / 1000.0;
    Duration::from_secs_f64(base * jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0) <= Duration::from_secs_f64(0.75));
        assert!(backoff(20) <= Duration::from_secs(45));
        assert!(backoff(20) >= Duration::from_secs(15));
    }

    #[test]
    fn bulk_items_refused_for_good_are_named_and_throttled_ones_sent_again() {
        assert_eq!(
            bulk_items(r#"{"errors":false,"items":[]}"#, 3),
            Ok(BulkItems::default())
        );
        assert_eq!(
            bulk_items(r#"{"errors":true,"items":[{"create":{"status":409}}]}"#, 1),
            Ok(BulkItems::default()),
            "409: already there from an earlier try"
        );
        let items = bulk_items(
            r#"{"errors":true,"items":[{"create":{"status":201}},{"create":{"status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [x]"}}},{"create":{"status":429}},{"create":{"status":503}},{"create":{"status":403}}]}"#,
            5,
        )
        .unwrap();
        assert_eq!(
            items,
            BulkItems {
                refused: vec![Refused {
                    index: 1,
                    reason: "HTTP 400: mapper_parsing_exception: failed to parse field [x]".into()
                }],
                again: vec![2, 3, 4],
            }
        );
        for unreadable in [
            r#"{"errors":true,"items":[{"create":{"status":201}}]}"#,
            r#"{"errors":true}"#,
            "not json",
        ] {
            assert!(bulk_items(unreadable, 2).is_err(), "{unreadable}");
        }
    }

    #[test]
    fn only_hec_codes_about_the_events_refuse_them() {
        assert!(hec_data_error(r#"{"text":"Invalid data format","code":6}"#));
        assert!(hec_data_error(
            r#"{"text":"Event field is required","code":12}"#
        ));
        assert!(!hec_data_error(r#"{"text":"Incorrect index","code":7}"#));
        assert!(!hec_data_error(
            r#"{"text":"Data channel is missing","code":10}"#
        ));
        assert!(!hec_data_error("<html>bad gateway</html>"));
    }

    #[test]
    fn file_sink_rotates_by_size() {
        let dir = std::env::temp_dir().join(format!("monitor-rot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("out.jsonl");
        let mut open = None;
        let rec = Record {
            class: Class::Findings,
            at: Default::default(),
            next: Default::default(),
            in_memory: false,
            payload: vec![b'x'; 100],
        };
        for _ in 0..30 {
            write_file(&path, 1000, 2, &mut open, std::slice::from_ref(&rec)).unwrap();
        }
        assert!(rotated(&path, 1).exists() && rotated(&path, 2).exists());
        assert!(!rotated(&path, 3).exists(), "only `keep` rotated files");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
