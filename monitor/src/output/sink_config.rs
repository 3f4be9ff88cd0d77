//! The sink section of the configuration (`[[sink]]`): which outputs the
//! findings go to, and how each is checked before the agent starts.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::units::{de_duration, de_size};

/// syslog transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyslogTransport {
    /// UDP datagrams.
    Udp,
    /// TCP with octet counting (RFC 6587).
    Tcp,
    /// A unix datagram socket (e.g. `/dev/log`).
    Unix,
}

/// Request body compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// gzip.
    Gzip,
    /// None.
    None,
}

fn default_keep() -> usize {
    5
}
fn default_file_size() -> u64 {
    100 << 20
}
fn default_app_name() -> String {
    "monitor".into()
}
fn default_max_message() -> u64 {
    8 << 10
}

fn default_facility() -> String {
    "local0".into()
}
fn default_batch_size() -> usize {
    500
}
fn default_batch_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_compression() -> Compression {
    Compression::Gzip
}
fn default_sourcetype() -> String {
    "ocsf:monitor".into()
}
fn default_es_index() -> String {
    "monitor-findings".into()
}
fn default_nats_batch_size() -> usize {
    2000
}
fn no_compression() -> Compression {
    Compression::None
}
fn default_nats_subject() -> String {
    "monitor.{host}.{class}".into()
}

/// One `[[sink]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    /// Standard output.
    Stdout {},
    /// A JSON Lines file with size rotation.
    File {
        /// The file.
        path: PathBuf,
        /// Rotate beyond this size.
        #[serde(default = "default_file_size", deserialize_with = "de_size")]
        max_size: u64,
        /// Rotated files kept.
        #[serde(default = "default_keep")]
        keep: usize,
    },
    /// syslog, RFC 5424.
    Syslog {
        /// Transport.
        transport: SyslogTransport,
        /// `host:port` for udp and tcp.
        #[serde(default)]
        address: Option<String>,
        /// Socket path for unix.
        #[serde(default)]
        path: Option<PathBuf>,
        /// APP-NAME field.
        #[serde(default = "default_app_name")]
        app_name: String,
        /// Facility name.
        #[serde(default = "default_facility")]
        facility: String,
        /// Longest message, header included; a longer record is shortened
        /// (still JSON, marked truncated). rsyslog's default limit is 8 KiB.
        #[serde(default = "default_max_message", deserialize_with = "de_size")]
        max_message: u64,
    },
    /// Splunk HTTP Event Collector.
    SplunkHec {
        /// Collector URL.
        url: String,
        /// File holding the token.
        #[serde(default)]
        token_file: Option<PathBuf>,
        /// Environment variable holding the token.
        #[serde(default)]
        token_env: Option<String>,
        /// Index.
        #[serde(default)]
        index: Option<String>,
        /// Source type.
        #[serde(default = "default_sourcetype")]
        sourcetype: String,
        /// Events per request.
        #[serde(default = "default_batch_size")]
        batch_size: usize,
        /// Longest wait to fill a batch.
        #[serde(default = "default_batch_timeout", deserialize_with = "de_duration")]
        batch_timeout: Duration,
        /// Body compression.
        #[serde(default = "default_compression")]
        compression: Compression,
        /// Extra CA certificate (PEM).
        #[serde(default)]
        ca_file: Option<PathBuf>,
    },
    /// Elasticsearch `_bulk`.
    Elasticsearch {
        /// Base URL.
        url: String,
        /// Index.
        #[serde(default = "default_es_index")]
        index: String,
        /// File holding the API key.
        #[serde(default)]
        token_file: Option<PathBuf>,
        /// Environment variable holding the API key.
        #[serde(default)]
        token_env: Option<String>,
        /// Events per request.
        #[serde(default = "default_batch_size")]
        batch_size: usize,
        /// Longest wait to fill a batch.
        #[serde(default = "default_batch_timeout", deserialize_with = "de_duration")]
        batch_timeout: Duration,
        /// Body compression.
        #[serde(default = "default_compression")]
        compression: Compression,
        /// Extra CA certificate (PEM).
        #[serde(default)]
        ca_file: Option<PathBuf>,
    },
    /// NATS JetStream: each record published to a stream, acknowledged.
    Nats {
        /// Servers (`nats://host:4222`, `tls://host:4222`); the client
        /// also learns the rest of the cluster from them.
        urls: Vec<String>,
        /// Subject template: `{host}` and `{class}` (`findings`,
        /// `activity`) are filled in.
        #[serde(default = "default_nats_subject")]
        subject: String,
        /// The stream the subjects belong to: published records must land
        /// in it (`Nats-Expected-Stream`), and its duplicate window is
        /// checked at start.
        #[serde(default)]
        stream: Option<String>,
        /// A `.creds` file (user JWT and nkey seed).
        #[serde(default)]
        creds_file: Option<PathBuf>,
        /// A file holding an nkey seed.
        #[serde(default)]
        nkey_file: Option<PathBuf>,
        /// A file holding a token.
        #[serde(default)]
        token_file: Option<PathBuf>,
        /// Environment variable holding a token.
        #[serde(default)]
        token_env: Option<String>,
        /// Require TLS (also implied by a `tls://` url).
        #[serde(default)]
        tls: bool,
        /// Extra CA certificate (PEM).
        #[serde(default)]
        ca_file: Option<PathBuf>,
        /// Records per batch (published together, then every ack awaited;
        /// larger than the HTTP sinks': the wait for a batch's last acks is
        /// paid once per batch, measured in `cargo xtask bench nats`).
        #[serde(default = "default_nats_batch_size")]
        batch_size: usize,
        /// Longest wait to fill a batch.
        #[serde(default = "default_batch_timeout", deserialize_with = "de_duration")]
        batch_timeout: Duration,
        /// Message compression: `gzip` (each message's payload, marked
        /// `Content-Encoding: gzip`; consumers must inflate it) or `none`.
        #[serde(default = "no_compression")]
        compression: Compression,
    },
}

impl SinkConfig {
    /// A short name for logs and metrics (`stdout`, `file:/path`, ...).
    pub fn name(&self) -> String {
        match self {
            SinkConfig::Stdout {} => "stdout".into(),
            SinkConfig::File { path, .. } => format!("file:{}", path.display()),
            SinkConfig::Syslog {
                transport,
                address,
                path,
                ..
            } => format!(
                "syslog-{}:{}",
                format!("{transport:?}").to_lowercase(),
                address.clone().unwrap_or_else(|| path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default())
            ),
            SinkConfig::SplunkHec { url, .. } => format!("splunk_hec:{url}"),
            SinkConfig::Elasticsearch { url, .. } => format!("elasticsearch:{url}"),
            SinkConfig::Nats { urls, .. } => format!("nats:{}", urls.join(",")),
        }
    }
}

/// Checks one sink's settings; the error names the key and what is wrong.
pub fn validate_sink(sink: &SinkConfig) -> Result<(), (&'static str, String)> {
    match sink {
        SinkConfig::Stdout {} => Ok(()),
        SinkConfig::File { path, max_size, .. } => {
            if path.as_os_str().is_empty() {
                return Err(("path", "must not be empty".into()));
            }
            if *max_size < 4096 {
                return Err(("max_size", "must be at least 4KiB".into()));
            }
            Ok(())
        }
        SinkConfig::Syslog {
            transport,
            address,
            path,
            facility,
            max_message,
            ..
        } => {
            if facility_code(facility).is_none() {
                return Err((
                    "facility",
                    format!(
                        "unknown facility {facility:?} (kern, user, daemon, auth, local0..local7, ...)"
                    ),
                ));
            }
            // 65,000: under the largest UDP datagram (65,507 bytes), which
            // a larger message could never be sent in.
            if !(1 << 10..=65_000).contains(max_message) {
                return Err((
                    "max_message",
                    format!("must be between 1KiB and 65000 bytes, got {max_message} bytes"),
                ));
            }
            match transport {
                SyslogTransport::Unix if path.is_none() => {
                    Err(("path", "the unix transport needs a socket path".into()))
                }
                SyslogTransport::Udp | SyslogTransport::Tcp if address.is_none() => Err((
                    "address",
                    "udp and tcp need an address like 127.0.0.1:514".into(),
                )),
                _ => Ok(()),
            }
        }
        SinkConfig::Nats {
            urls,
            subject,
            creds_file,
            nkey_file,
            token_file,
            token_env,
            batch_size,
            batch_timeout,
            ..
        } => {
            if urls.is_empty() {
                return Err((
                    "urls",
                    "give at least one server, like \"nats://127.0.0.1:4222\"".into(),
                ));
            }
            if let Some(bad) = urls.iter().find(|u| {
                !["nats://", "tls://"].iter().any(|s| u.starts_with(s))
                    || u.parse::<async_nats::ServerAddr>().is_err()
            }) {
                return Err((
                    "urls",
                    format!(
                        "{bad:?} is not a server address like nats://host:4222 or tls://host:4222"
                    ),
                ));
            }
            check_subject(subject).map_err(|e| ("subject", e))?;
            let given = [
                creds_file.is_some(),
                nkey_file.is_some(),
                token_file.is_some() || token_env.is_some(),
            ];
            if given.iter().filter(|g| **g).count() > 1
                || (token_file.is_some() && token_env.is_some())
            {
                return Err((
                    "creds_file",
                    "give one of creds_file, nkey_file, token_file or token_env".into(),
                ));
            }
            check_batching(*batch_size, *batch_timeout)
        }
        SinkConfig::SplunkHec {
            url,
            token_file,
            token_env,
            batch_size,
            batch_timeout,
            ..
        }
        | SinkConfig::Elasticsearch {
            url,
            token_file,
            token_env,
            batch_size,
            batch_timeout,
            ..
        } => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err((
                    "url",
                    format!("{url:?} must start with http:// or https://"),
                ));
            }
            if token_file.is_some() && token_env.is_some() {
                return Err((
                    "token_file",
                    "give token_file or token_env, not both".into(),
                ));
            }
            if matches!(sink, SinkConfig::SplunkHec { .. })
                && token_file.is_none()
                && token_env.is_none()
            {
                return Err((
                    "token_file",
                    "Splunk HEC needs a token: token_file or token_env".into(),
                ));
            }
            check_batching(*batch_size, *batch_timeout)
        }
    }
}

/// Checks a subject template: dot-separated tokens, none empty, no
/// wildcard, no whitespace, and `{host}` in it (each host its own subject).
pub fn check_subject(template: &str) -> Result<(), String> {
    let filled = template.replace("{host}", "h").replace("{class}", "c");
    if !template.contains("{host}") {
        return Err(format!(
            "{template:?} must contain {{host}}: each host publishes to its own subjects"
        ));
    }
    if filled
        .split('.')
        .any(|t| t.is_empty() || t.contains(['*', '>']) || t.chars().any(char::is_whitespace))
    {
        return Err(format!(
            "{template:?} is not a NATS subject: dot-separated tokens, none empty, no '*', '>' or spaces"
        ));
    }
    Ok(())
}

/// Checks a sink's batch size and wait.
fn check_batching(
    batch_size: usize,
    batch_timeout: Duration,
) -> Result<(), (&'static str, String)> {
    if batch_size == 0 || batch_size > 10_000 {
        return Err(("batch_size", "must be between 1 and 10000".into()));
    }
    // Zero would poll the spool without pause.
    if !(Duration::from_millis(10)..=Duration::from_secs(600)).contains(&batch_timeout) {
        return Err((
            "batch_timeout",
            format!(
                "must be between 10ms and 10m, got {}",
                humantime::format_duration(batch_timeout)
            ),
        ));
    }
    Ok(())
}

/// Facility names to codes (RFC 5424 table 1).
pub fn facility_code(name: &str) -> Option<u8> {
    Some(match name {
        "kern" => 0,
        "user" => 1,
        "mail" => 2,
        "daemon" => 3,
        "auth" => 4,
        "syslog" => 5,
        "lpr" => 6,
        "news" => 7,
        "uucp" => 8,
        "cron" => 9,
        "authpriv" => 10,
        "ftp" => 11,
        "local0" => 16,
        "local1" => 17,
        "local2" => 18,
        "local3" => 19,
        "local4" => 20,
        "local5" => 21,
        "local6" => 22,
        "local7" => 23,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nats_subject_template_is_checked() {
        assert!(check_subject("monitor.{host}.{class}").is_ok());
        assert!(
            check_subject("monitor.{class}")
                .unwrap_err()
                .contains("{host}")
        );
        assert!(check_subject("monitor..{host}").is_err());
        assert!(check_subject("monitor.>.{host}").is_err());
    }
}
