//! Configuration: one TOML file, parsed into raw structs that mirror it
//! ([`RawConfig`], unknown keys rejected), then validated into ready-to-use
//! [`Settings`]. Command-line flags override the file (see `cli::run`).
//!
//! `default.toml` next to this file is the commented default that `monitor
//! config default` prints; a test checks that it parses to exactly
//! [`RawConfig::default`], so the documentation cannot drift from the code.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::{
    capture::CaptureSettings,
    fleet::{
        connection::{Endpoint, EndpointSettings},
        facts::{FactNamer, Judgement},
        prevalence::FleetSettings,
    },
    kernel::ProbeSettings,
    model::EngineSettings,
    output::sink_config::{SinkConfig, validate_sink},
    sensitive::SensitivePaths,
    syscall_counts::CountSettings,
    units::{de_duration, de_size},
};

/// The commented default configuration.
pub const DEFAULT_TOML: &str = include_str!("default.toml");
/// Where the agent looks for its configuration.
pub const DEFAULT_PATH: &str = "/etc/monitor/monitor.toml";

/// A configuration error, located in its file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Syntax or type error, or an unknown key.
    #[error("{path}:{line}:{column}: {key}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The key path (`sink[1].url`), or `(file)` when not in a key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A value that parses but cannot be used.
    #[error("{path}: {key}: {message}")]
    Value {
        /// The file (or `command line`).
        path: PathBuf,
        /// The key path.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// `[agent]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSection {
    /// State directory.
    pub state_dir: PathBuf,
    /// Host name for findings.
    pub host_name: String,
    /// Size at which each log in the state directory is rotated.
    #[serde(deserialize_with = "de_size")]
    pub log_max_size: u64,
    /// Rotated files kept per log.
    pub log_keep: usize,
}

impl Default for AgentSection {
    fn default() -> Self {
        let logs = crate::fileio::rotate::Rotation::default();
        Self {
            state_dir: PathBuf::from("/var/lib/monitor"),
            host_name: String::new(),
            log_max_size: logs.max_bytes,
            log_keep: logs.keep,
        }
    }
}

/// `[capture]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureSection {
    /// Count syscalls per process. (`syscall_profiles` in earlier versions.)
    #[serde(alias = "syscall_profiles")]
    pub syscall_counts: bool,
    /// Stream security events.
    pub security_events: bool,
    /// How often the syscall counts are drained. (`profile_window` in
    /// earlier versions.)
    #[serde(deserialize_with = "de_duration", alias = "profile_window")]
    pub drain_interval: Duration,
    /// Ring buffer bytes.
    #[serde(deserialize_with = "de_size")]
    pub ring_buffer: u64,
    /// Sensitive read patterns.
    pub sensitive_read: Vec<String>,
    /// Sensitive write patterns.
    pub sensitive_write: Vec<String>,
}

impl Default for CaptureSection {
    fn default() -> Self {
        Self {
            syscall_counts: true,
            security_events: true,
            drain_interval: Duration::from_secs(5),
            ring_buffer: 8 << 20,
            sensitive_read: crate::sensitive::DEFAULT_READ
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            sensitive_write: crate::sensitive::DEFAULT_WRITE
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }
}

/// What to do with a model file that cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBadModel {
    /// Move it aside and learn again.
    Relearn,
    /// Refuse to start.
    Stop,
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// Learning period.
    #[serde(deserialize_with = "de_duration")]
    pub learn_for: Duration,
    /// Fewest windows.
    pub min_windows: usize,
    /// False-alarm rate per window.
    pub false_alarm_rate: f64,
    /// Follow drift.
    pub follow_drift: bool,
    /// Bad model policy.
    pub on_bad_model: OnBadModel,
    /// Save interval.
    #[serde(deserialize_with = "de_duration")]
    pub save_every: Duration,
    /// Memory for the windows kept while learning.
    #[serde(deserialize_with = "de_size")]
    pub learning_memory: u64,
    /// Programs learned at most.
    pub max_programs: usize,
}

impl Default for ModelSection {
    fn default() -> Self {
        let e = EngineSettings::default();
        Self {
            learn_for: e.learn_for,
            min_windows: e.min_windows,
            false_alarm_rate: e.false_alarm_rate,
            follow_drift: e.follow_drift,
            on_bad_model: OnBadModel::Relearn,
            save_every: Duration::from_secs(300),
            learning_memory: e.store.bytes as u64,
            max_programs: e.store.programs,
        }
    }
}

/// `[output]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputSection {
    /// Export raw activity as OCSF.
    pub raw_events: bool,
    /// Heartbeat interval.
    #[serde(deserialize_with = "de_duration")]
    pub heartbeat: Duration,
}

impl Default for OutputSection {
    fn default() -> Self {
        Self {
            raw_events: false,
            heartbeat: Duration::from_secs(60),
        }
    }
}

/// `[spool]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSection {
    /// Bytes.
    #[serde(deserialize_with = "de_size")]
    pub max_size: u64,
}

impl Default for SpoolSection {
    fn default() -> Self {
        Self {
            max_size: 256 << 20,
        }
    }
}

/// `[api]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// Listen address; empty: off.
    pub listen: String,
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

/// `[fleet]`: fleet prevalence and campaigns through a NATS JetStream
/// cluster. Off while `urls` is empty.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetSection {
    /// Servers (`nats://host:4222`, `tls://host:4222`); empty: off.
    pub urls: Vec<String>,
    /// A `.creds` file (user JWT and nkey seed).
    pub creds_file: Option<PathBuf>,
    /// A file holding an nkey seed.
    pub nkey_file: Option<PathBuf>,
    /// A file holding a token.
    pub token_file: Option<PathBuf>,
    /// Environment variable holding a token.
    pub token_env: Option<String>,
    /// Require TLS (also implied by a `tls://` url).
    pub tls: bool,
    /// Extra CA certificate (PEM).
    pub ca_file: Option<PathBuf>,
    /// The key-value bucket facts are shared in.
    pub bucket: String,
    /// Its replicas, when this agent is the one to create it.
    pub replicas: usize,
    /// A file holding the fleet's secret key for fact ids; without one,
    /// ids are plain hashes anyone can test guesses against.
    pub key_file: Option<PathBuf>,
    /// Also share each fact's program and value (paths, peers, arguments).
    pub share_details: bool,
    /// Prevalence counts hosts that saw a fact this recently.
    #[serde(deserialize_with = "de_duration")]
    pub window: Duration,
    /// A fact first seen on at least this many hosts...
    pub campaign_hosts: usize,
    /// ...within this long is a fleet campaign.
    #[serde(deserialize_with = "de_duration")]
    pub campaign_within: Duration,
    /// Lower a finding's severity one level when its least common fact is
    /// on at least this share of the fleet (0: never).
    pub lower_severity_at: f64,
    /// ...and on at least this many hosts.
    pub lower_severity_min_hosts: usize,
    /// Longest wait for the cluster's answer on one finding.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
}

impl Default for FleetSection {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            creds_file: None,
            nkey_file: None,
            token_file: None,
            token_env: None,
            tls: false,
            ca_file: None,
            bucket: "monitor-fleet".into(),
            replicas: 1,
            key_file: None,
            share_details: false,
            window: Duration::from_secs(86_400),
            campaign_hosts: 5,
            campaign_within: Duration::from_secs(600),
            lower_severity_at: 0.5,
            lower_severity_min_hosts: 3,
            timeout: Duration::from_secs(2),
        }
    }
}

/// The file as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// `[agent]`.
    pub agent: AgentSection,
    /// `[capture]`.
    pub capture: CaptureSection,
    /// `[model]`.
    pub model: ModelSection,
    /// `[output]`.
    pub output: OutputSection,
    /// `[spool]`.
    pub spool: SpoolSection,
    /// `[[sink]]`.
    pub sink: Vec<SinkConfig>,
    /// `[api]`.
    pub api: ApiSection,
    /// `[fleet]`.
    pub fleet: FleetSection,
    /// Where its values came from, to give a value's line in errors.
    #[serde(skip)]
    pub source: Origin,
}

/// Where a configuration's values came from: the text of its file, and the
/// keys a command-line flag set instead. It never makes two configurations
/// different: equal settings are equal wherever they came from.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The file's text.
    pub text: Option<std::sync::Arc<str>>,
    /// Keys (`model.learn_for`) set on the command line.
    pub from_flags: Vec<&'static str>,
}

impl PartialEq for Origin {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            agent: AgentSection::default(),
            capture: CaptureSection::default(),
            model: ModelSection::default(),
            output: OutputSection::default(),
            spool: SpoolSection::default(),
            sink: vec![SinkConfig::Stdout {}],
            api: ApiSection::default(),
            fleet: FleetSection::default(),
            source: Origin::default(),
        }
    }
}

/// The byte range of `key` (`sink[1].max_sise`) in the text, found by
/// walking to the table and then to the key's line.
fn locate(text: &str, key: &str) -> Option<std::ops::Range<usize>> {
    let mut parts = key.split('.');
    let table = parts.next()?;
    let field = parts.next_back();
    let (name, index) = match table.split_once('[') {
        Some((n, i)) => (n, i.trim_end_matches(']').parse::<usize>().ok()?),
        None => (table, 0),
    };
    let headers = [format!("[[{name}]]"), format!("[{name}]")];
    let mut offset = 0;
    let mut seen = 0;
    let mut in_table = false;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with('[') {
            in_table = headers.iter().any(|h| t == h.as_str()) && {
                seen += 1;
                seen == index + 1
            };
            if in_table && field.is_none() {
                return Some(offset..offset + line.len());
            }
        } else if in_table
            && let Some(f) = field
            && t.split('=').next().is_some_and(|k| k.trim() == f)
        {
            let start = offset + (line.len() - line.trim_start().len());
            return Some(start..start + f.len());
        }
        offset += line.len();
    }
    None
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

impl RawConfig {
    /// Parses configuration text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |span: Option<std::ops::Range<usize>>, key: String, message: String| {
            let (line, column) = span.map_or((1, 1), |s| line_col(text, s.start));
            ConfigError::Invalid {
                path: path.to_owned(),
                line,
                column,
                key,
                message,
            }
        };
        let de = toml::Deserializer::parse(text)
            .map_err(|e| invalid(e.span(), "(file)".into(), e.message().to_owned()))?;
        let mut track = serde_path_to_error::Track::new();
        let result = RawConfig::deserialize(serde_path_to_error::Deserializer::new(de, &mut track));
        let mut raw = result.map_err(|e| {
            let mut key = track.path().to_string();
            let message = e.message().to_owned();
            // Inside `[[sink]]` tables (an internally tagged enum) the
            // parser's span and the last key are lost: find them again.
            let field = message
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split('`').next())
                .map(str::to_owned);
            if let Some(f) = &field
                && !key.ends_with(f.as_str())
            {
                key = format!("{key}.{f}");
            }
            let span = e
                .span()
                .filter(|s| s.start > 0)
                .or_else(|| locate(text, &key));
            invalid(
                span,
                if key == "." { "(file)".into() } else { key },
                message,
            )
        })?;
        if raw.sink.is_empty() {
            raw.sink.push(SinkConfig::Stdout {});
        }
        raw.source = Origin {
            text: Some(text.into()),
            from_flags: Vec::new(),
        };
        Ok(raw)
    }

    /// Reads a file; a missing default file means the built-in defaults.
    pub fn load(path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }
}

/// Checks `[fleet]`: the key at fault and what is wrong.
fn check_fleet(f: &FleetSection) -> Result<(), (&'static str, String)> {
    for url in &f.urls {
        url.parse::<async_nats::ServerAddr>().map_err(|e| {
            (
                "fleet.urls",
                format!("{url:?} is not a NATS server address: {e}"),
            )
        })?;
    }
    if f.bucket.is_empty()
        || !f
            .bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err((
            "fleet.bucket",
            format!("{:?}: a bucket name is letters, digits, - and _", f.bucket),
        ));
    }
    if !(1..=5).contains(&f.replicas) {
        return Err((
            "fleet.replicas",
            format!("must be between 1 and 5, got {}", f.replicas),
        ));
    }
    let (hour, month) = (Duration::from_secs(3600), Duration::from_secs(30 * 86_400));
    if !(hour..=month).contains(&f.window) {
        return Err((
            "fleet.window",
            format!(
                "must be between 1h and 30days, got {}",
                humantime::format_duration(f.window)
            ),
        ));
    }
    if !(2..=100_000).contains(&f.campaign_hosts) {
        return Err((
            "fleet.campaign_hosts",
            format!("must be between 2 and 100000, got {}", f.campaign_hosts),
        ));
    }
    if !(Duration::from_secs(10)..=f.window).contains(&f.campaign_within) {
        return Err((
            "fleet.campaign_within",
            format!(
                "must be between 10s and fleet.window ({}), got {}",
                humantime::format_duration(f.window),
                humantime::format_duration(f.campaign_within)
            ),
        ));
    }
    if !(0.0..=1.0).contains(&f.lower_severity_at) {
        return Err((
            "fleet.lower_severity_at",
            format!(
                "a share of the fleet's hosts, between 0 (never) and 1, got {}",
                f.lower_severity_at
            ),
        ));
    }
    if f.lower_severity_min_hosts == 0 {
        return Err((
            "fleet.lower_severity_min_hosts",
            "must be at least 1".into(),
        ));
    }
    if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&f.timeout) {
        return Err((
            "fleet.timeout",
            format!(
                "must be between 100ms and 60s, got {}",
                humantime::format_duration(f.timeout)
            ),
        ));
    }
    Ok(())
}

/// The shortest fleet key accepted: a key anyone can guess hides nothing.
const MIN_FLEET_KEY_LEN: usize = 16;

impl FleetSection {
    /// Where the fleet is and how this agent takes part, from `[fleet]` (already
    /// checked for ranges); `None` when it is off. Reads the credential and key
    /// files now, so a missing one is an error at start that names it.
    pub fn fleet(&self) -> Result<Option<(Endpoint, FleetSettings)>, String> {
        let f = self;
        if f.urls.is_empty() {
            return Ok(None);
        }
        let endpoint = Endpoint::new(&EndpointSettings {
            urls: &f.urls,
            creds_file: f.creds_file.as_ref(),
            nkey_file: f.nkey_file.as_ref(),
            token_file: f.token_file.as_ref(),
            token_env: f.token_env.as_deref(),
            tls: f.tls,
            ca_file: f.ca_file.as_ref(),
        })
        .map_err(|e| format!("fleet: {e}"))?;
        let key = match &f.key_file {
            Some(path) => {
                let key = crate::secret::read_token(Some(path), None)
                    .map_err(|e| format!("fleet.key_file: {e}"))?
                    .ok_or_else(|| format!("fleet.key_file {} is empty", path.display()))?;
                if key.expose().len() < MIN_FLEET_KEY_LEN {
                    return Err(format!(
                        "fleet.key_file {}: the key must be at least {MIN_FLEET_KEY_LEN} characters",
                        path.display()
                    ));
                }
                if let Ok(meta) = std::fs::metadata(path)
                    && std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077 != 0
                {
                    tracing::warn!(
                        "fleet.key_file {} can be read by other users: anyone who reads it can test guesses of the fleet's facts",
                        path.display()
                    );
                }
                Some(key)
            }
            None => {
                tracing::warn!(
                    "fleet: no key_file, so fact ids are plain hashes: whoever can read bucket {:?} can test guesses of which programs did what",
                    f.bucket
                );
                None
            }
        };
        let settings = FleetSettings {
            bucket: f.bucket.clone(),
            replicas: f.replicas,
            share_details: f.share_details,
            timeout: f.timeout,
            judgement: Judgement {
                window: f.window,
                campaign_hosts: f.campaign_hosts,
                campaign_within: f.campaign_within,
                lower_at: (f.lower_severity_at > 0.0).then_some(f.lower_severity_at),
                lower_min_hosts: f.lower_severity_min_hosts,
            },
            namer: FactNamer::new(key.as_ref().map(|k| k.expose().as_bytes())),
        };
        Ok(Some((endpoint, settings)))
    }
}

/// Validated, ready-to-use settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The raw configuration they came from.
    pub raw: RawConfig,
    /// Capture.
    pub capture: CaptureSettings,
    /// Model engine.
    pub engine: EngineSettings,
    /// State directory.
    pub state_dir: PathBuf,
    /// Host name.
    pub host_name: String,
    /// API listen address, if on.
    pub api_listen: Option<std::net::SocketAddr>,
    /// Settings that work but that an operator should look at again.
    pub warnings: Vec<String>,
}

/// A bound as an operator reads it: whole days as days (humantime writes
/// 365 days as "11months 30days 3h 50m 24s").
fn bound(d: Duration) -> String {
    match d.as_secs() {
        86_400 => "1day".into(),
        s if s % 86_400 == 0 && d.subsec_nanos() == 0 => format!("{}days", s / 86_400),
        _ => humantime::format_duration(d).to_string(),
    }
}

/// Bounds of the durations in the file: below the least, a timer would spin
/// (tokio panics on a zero interval); past the most, the value is a typo.
const DURATIONS: [(&str, Duration, Duration); 4] = [
    (
        "model.learn_for",
        Duration::from_secs(1),
        Duration::from_secs(365 * 86_400),
    ),
    (
        "model.save_every",
        Duration::from_secs(1),
        Duration::from_secs(7 * 86_400),
    ),
    (
        "output.heartbeat",
        Duration::from_secs(1),
        Duration::from_secs(86_400),
    ),
    (
        "capture.drain_interval",
        Duration::from_millis(100),
        Duration::from_secs(3600),
    ),
];

impl Settings {
    /// Validates a raw configuration; `path` names its origin in errors.
    pub fn from_raw(raw: RawConfig, path: &Path) -> Result<Self, ConfigError> {
        // The value's line when it is in the file (not from a flag or the
        // defaults).
        let bad = |key: &str, message: String| {
            if raw.source.from_flags.contains(&key) {
                return ConfigError::Value {
                    path: "command line".into(),
                    key: key.to_owned(),
                    message,
                };
            }
            let located = raw
                .source
                .text
                .as_deref()
                .and_then(|text| locate(text, key).map(|span| line_col(text, span.start)));
            match located {
                Some((line, column)) => ConfigError::Invalid {
                    path: path.to_owned(),
                    line,
                    column,
                    key: key.to_owned(),
                    message,
                },
                None => ConfigError::Value {
                    path: path.to_owned(),
                    key: key.to_owned(),
                    message,
                },
            }
        };
        let durations = [
            raw.model.learn_for,
            raw.model.save_every,
            raw.output.heartbeat,
            raw.capture.drain_interval,
        ];
        for ((key, least, most), value) in DURATIONS.into_iter().zip(durations) {
            if !(least..=most).contains(&value) {
                return Err(bad(
                    key,
                    format!(
                        "must be between {} and {}, got {}",
                        bound(least),
                        bound(most),
                        humantime::format_duration(value)
                    ),
                ));
            }
        }
        let m = &raw.model;
        if !(m.false_alarm_rate > 0.0 && m.false_alarm_rate < 1.0) {
            return Err(bad(
                "model.false_alarm_rate",
                format!("must be between 0 and 1, got {}", m.false_alarm_rate),
            ));
        }
        if m.min_windows < crate::model::baseline::MIN_WINDOWS {
            return Err(bad(
                "model.min_windows",
                format!(
                    "must be at least {}, got {}",
                    crate::model::baseline::MIN_WINDOWS,
                    m.min_windows
                ),
            ));
        }
        if !(1 << 20..=4 << 30).contains(&m.learning_memory) {
            return Err(bad(
                "model.learning_memory",
                format!(
                    "must be between 1MiB and 4GiB, got {} bytes",
                    m.learning_memory
                ),
            ));
        }
        if !(16..=1 << 20).contains(&m.max_programs) {
            return Err(bad(
                "model.max_programs",
                format!("must be between 16 and 1048576, got {}", m.max_programs),
            ));
        }
        let a = &raw.agent;
        if !(64 << 10..=1 << 40).contains(&a.log_max_size) {
            return Err(bad(
                "agent.log_max_size",
                format!(
                    "must be between 64KiB and 1TiB, got {} bytes",
                    a.log_max_size
                ),
            ));
        }
        if !(1..=100).contains(&a.log_keep) {
            return Err(bad(
                "agent.log_keep",
                format!("must be between 1 and 100, got {}", a.log_keep),
            ));
        }
        if let Err((key, message)) = check_fleet(&raw.fleet) {
            return Err(bad(key, message));
        }
        let c = &raw.capture;
        let ring = c.ring_buffer;
        if !ring.is_power_of_two() || !(64 * 1024..=1 << 30).contains(&ring) {
            return Err(bad(
                "capture.ring_buffer",
                format!("must be a power of two between 64KiB and 1GiB, got {ring} bytes"),
            ));
        }
        // The agent's own state is always protected: a write there by
        // anything but the agent is tampering (the agent's own writes are
        // never reported).
        let mut write = c.sensitive_write.clone();
        if let Some(dir) = std::path::absolute(&raw.agent.state_dir)
            .ok()
            .and_then(|p| p.to_str().map(str::to_owned))
        {
            write.push(dir);
        }
        let sensitive = SensitivePaths::new(&c.sensitive_read, &write)
            .map_err(|e| bad("capture.sensitive_read/sensitive_write", e.to_string()))?;
        if !(1 << 20..=1 << 40).contains(&raw.spool.max_size) {
            return Err(bad(
                "spool.max_size",
                format!(
                    "must be between 1MiB and 1TiB, got {} bytes",
                    raw.spool.max_size
                ),
            ));
        }
        for (i, sink) in raw.sink.iter().enumerate() {
            validate_sink(sink).map_err(|(key, msg)| bad(&format!("sink[{i}].{key}"), msg))?;
        }
        let api_listen = if raw.api.listen.trim().is_empty() {
            None
        } else {
            Some(
                raw.api
                    .listen
                    .parse::<std::net::SocketAddr>()
                    .map_err(|_| {
                        bad(
                            "api.listen",
                            format!("{:?} is not an address like 127.0.0.1:9464", raw.api.listen),
                        )
                    })?,
            )
        };
        let mut warnings = Vec::new();
        if let Some(addr) = api_listen
            && !addr.ip().is_loopback()
        {
            warnings.push(format!(
                "api.listen = {addr:?} is reachable from other hosts: /metrics and /healthz tell anyone who can connect that this host runs monitor and how busy it is; prefer 127.0.0.1"
            ));
        }
        let host_name = if raw.agent.host_name.is_empty() {
            system_host_name()
        } else {
            raw.agent.host_name.clone()
        };
        let capture = CaptureSettings {
            probes: ProbeSettings {
                syscall_counts: c.syscall_counts,
                security_events: c.security_events,
                ringbuf_bytes: ring as u32,
                verifier_log_dir: raw.agent.state_dir.clone(),
                ..ProbeSettings::default()
            },
            counts: CountSettings {
                drain_every: c.drain_interval,
            },
            sensitive,
            ..CaptureSettings::default()
        };
        let engine = EngineSettings {
            learn_for: m.learn_for,
            min_windows: m.min_windows,
            false_alarm_rate: m.false_alarm_rate,
            follow_drift: m.follow_drift,
            store: crate::model::StoreLimits {
                bytes: m.learning_memory as usize,
                programs: m.max_programs,
                ..crate::model::StoreLimits::default()
            },
            ..EngineSettings::default()
        };
        Ok(Self {
            capture,
            engine,
            state_dir: raw.agent.state_dir.clone(),
            host_name,
            api_listen,
            warnings,
            raw,
        })
    }
}

/// The system host name.
pub fn system_host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let name = if ok {
        crate::event::decode::until_nul(&buf)
    } else {
        b"localhost"
    };
    String::from_utf8_lossy(name).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RawConfig, ConfigError> {
        RawConfig::parse(text, Path::new("/etc/monitor/monitor.toml"))
    }

    #[test]
    fn the_commented_default_is_the_default() {
        assert_eq!(parse(DEFAULT_TOML).unwrap(), RawConfig::default());
        assert_eq!(parse("").unwrap(), RawConfig::default());
        Settings::from_raw(RawConfig::default(), Path::new("x")).unwrap();
    }

    #[test]
    fn unknown_keys_are_errors_with_file_line_and_key() {
        let err = parse("[model]\nlearn_for = \"1m\"\nlearn_four = \"2m\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "/etc/monitor/monitor.toml:3:1: model.learn_four: unknown field `learn_four`"
            ),
            "{err}"
        );
        assert!(err.contains("expected one of"), "{err}");
        let err = parse("[[sink]]\ntype = \"stdout\"\n[[sink]]\ntype = \"file\"\npath = \"/x\"\nmax_sise = \"1MiB\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(":6:") && err.contains("sink[1]") && err.contains("max_sise"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_are_named() {
        let err = parse("[model]\nlearn_for = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(":2:") && err.contains("model.learn_for") && err.contains("\"soon\""),
            "{err}"
        );
        let err = parse("[capture]\nring_buffer = \"3 bananas\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("capture.ring_buffer"), "{err}");
        let raw = parse("[model]\nfalse_alarm_rate = 2.0\n").unwrap();
        let err = Settings::from_raw(raw, Path::new("f.toml"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "f.toml:2:1: model.false_alarm_rate: must be between 0 and 1, got 2"
        );
        let raw = parse("[[sink]]\ntype = \"splunk_hec\"\nurl = \"https://x\"\n").unwrap();
        let err = Settings::from_raw(raw, Path::new("f.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sink[0].token_file") && err.contains("needs a token"),
            "{err}"
        );
        let err = parse("[agent\n").unwrap_err().to_string();
        assert!(err.contains("monitor.toml:1:"), "{err}");
    }

    #[test]
    fn fleet_values_are_checked_and_named() {
        for (text, says) in [
            (
                "[fleet]\ncampaign_hosts = 1\n",
                "f.toml:2:1: fleet.campaign_hosts: must be between 2 and 100000, got 1",
            ),
            (
                "[fleet]\nwindow = \"1h\"\ncampaign_within = \"2h\"\n",
                "f.toml:3:1: fleet.campaign_within: must be between 10s and fleet.window (1h), got 2h",
            ),
            (
                "[fleet]\nurls = [\"nats://a:4222\", \"http://b\"]\n",
                "fleet.urls: \"http://b\" is not a NATS server address",
            ),
            (
                "[fleet]\nbucket = \"facts.v1\"\n",
                "fleet.bucket: \"facts.v1\": a bucket name is letters, digits, - and _",
            ),
            (
                "[fleet]\nlower_severity_at = 1.5\n",
                "fleet.lower_severity_at: a share of the fleet's hosts, between 0 (never) and 1, got 1.5",
            ),
        ] {
            let raw = parse(text).unwrap();
            let err = Settings::from_raw(raw, Path::new("f.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{text:?}: {err}");
        }
        let on =
            parse("[fleet]\nurls = [\"nats://127.0.0.1:4222\"]\nkey_file = \"/nonexistent/key\"\n")
                .unwrap();
        let settings = Settings::from_raw(on, Path::new("f.toml")).unwrap();
        let err = settings.raw.fleet.fleet().unwrap_err();
        assert!(
            err.contains("fleet.key_file") && err.contains("/nonexistent/key"),
            "{err}"
        );
    }

    fn check(text: &str) -> Result<Settings, String> {
        Settings::from_raw(
            parse(text).map_err(|e| e.to_string())?,
            Path::new("monitor.toml"),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn zero_and_absurd_durations_and_sizes_are_refused_at_their_line() {
        // Each of these once reached tokio's interval and panicked.
        let err = check("[agent]\nlog_keep = 3\n\n[output]\nheartbeat = \"0s\"\n").unwrap_err();
        assert_eq!(
            err,
            "monitor.toml:5:1: output.heartbeat: must be between 1s and 1day, got 0s"
        );
        let err = check("[model]\nsave_every = \"0s\"\n").unwrap_err();
        assert!(
            err.starts_with("monitor.toml:2:1: model.save_every: must be between 1s"),
            "{err}"
        );
        let err = check("[model]\n  learn_for = \"900years\"\n").unwrap_err();
        assert!(
            err.starts_with("monitor.toml:2:3: model.learn_for:"),
            "{err}"
        );
        let err = check("[capture]\ndrain_interval = \"1ms\"\n").unwrap_err();
        assert!(
            err.contains("capture.drain_interval: must be between 100ms and 1h"),
            "{err}"
        );
        let err = check("[spool]\nmax_size = \"4000GiB\"\n").unwrap_err();
        assert!(
            err.starts_with("monitor.toml:2:1: spool.max_size: must be between 1MiB and 1TiB"),
            "{err}"
        );
        let err = check("[[sink]]\ntype = \"elasticsearch\"\nurl = \"http://x\"\ntoken_env = \"T\"\nbatch_timeout = \"0s\"\n").unwrap_err();
        assert!(
            err.contains("sink[0].batch_timeout: must be between 10ms and 10m, got 0s"),
            "{err}"
        );
        let err = check("[[sink]]\ntype = \"nats\"\nurls = [\"http://x:4222\"]\n").unwrap_err();
        assert!(
            err.contains("sink[0].urls: \"http://x:4222\" is not a server address"),
            "{err}"
        );
        let err = check(
            "[[sink]]\ntype = \"nats\"\nurls = [\"nats://x:4222\"]\nsubject = \"m.{class}\"\n",
        )
        .unwrap_err();
        assert!(
            err.contains("sink[0].subject: \"m.{class}\" must contain {host}"),
            "{err}"
        );
        check("[[sink]]\ntype = \"nats\"\nurls = [\"nats://x:4222\", \"tls://y:4222\"]\nstream = \"S\"\n").unwrap();
        // A value set on the command line (not in the file) has no line.
        let mut raw = parse("").unwrap();
        raw.model.save_every = Duration::ZERO;
        let err = Settings::from_raw(raw, Path::new("monitor.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("monitor.toml: model.save_every:"), "{err}");
        // One set by a flag is the command line's, even when the file has
        // the key.
        let mut raw = parse("[model]\nlearn_for = \"15m\"\n").unwrap();
        raw.model.learn_for = Duration::ZERO;
        raw.source.from_flags.push("model.learn_for");
        let err = Settings::from_raw(raw, Path::new("monitor.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("command line: model.learn_for:"), "{err}");
        assert!(err.contains("between 1s and 365days, got 0s"), "{err}");
        // The defaults pass.
        check("").unwrap();
    }

    #[test]
    fn an_api_listening_beyond_loopback_is_a_warning() {
        assert!(
            check("[api]\nlisten = \"127.0.0.1:9464\"\n")
                .unwrap()
                .warnings
                .is_empty()
        );
        let s = check("[api]\nlisten = \"0.0.0.0:9464\"\n").unwrap();
        assert_eq!(s.warnings.len(), 1);
        assert!(
            s.warnings[0].contains("reachable from other hosts"),
            "{:?}",
            s.warnings
        );
    }
}
