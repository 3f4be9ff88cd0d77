//! Connecting to a NATS cluster: servers, TLS and credentials, shared by the
//! `nats` sink and the `monitor model publish|pull` commands.

use std::{path::PathBuf, time::Duration};

use crate::secret::{Secret, read_token};

/// How a client proves who it is to the servers.
#[derive(Debug, Clone)]
enum Credentials {
    None,
    /// A `.creds` file: a user JWT and its nkey seed.
    CredsFile(PathBuf),
    /// An nkey seed, read from a file.
    Nkey(Secret),
    /// A token, read from a file or the environment.
    Token(Secret),
}

/// Where a cluster is, and how to connect to it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    urls: Vec<String>,
    credentials: Credentials,
    tls: bool,
    ca_file: Option<PathBuf>,
}

/// What [`Endpoint::new`] reads.
#[derive(Debug, Clone, Default)]
pub struct EndpointSettings<'a> {
    /// Servers (`nats://host:4222`, `tls://host:4222`).
    pub urls: &'a [String],
    /// A `.creds` file.
    pub creds_file: Option<&'a PathBuf>,
    /// A file holding an nkey seed.
    pub nkey_file: Option<&'a PathBuf>,
    /// A file holding a token.
    pub token_file: Option<&'a PathBuf>,
    /// An environment variable holding a token.
    pub token_env: Option<&'a str>,
    /// Require TLS (also implied by a `tls://` url).
    pub tls: bool,
    /// Extra CA certificate (PEM).
    pub ca_file: Option<&'a PathBuf>,
}

impl Endpoint {
    /// Reads the credentials now, so a missing file is an error at start
    /// that names it, not a failing connection later.
    pub fn new(s: &EndpointSettings<'_>) -> Result<Self, String> {
        if s.urls.is_empty() {
            return Err("no NATS server given".into());
        }
        for url in s.urls {
            url.parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("{url:?} is not a NATS server address: {e}"))?;
        }
        let credentials = if let Some(path) = s.creds_file {
            std::fs::metadata(path)
                .map_err(|e| format!("cannot read creds_file {}: {e}", path.display()))?;
            Credentials::CredsFile(path.clone())
        } else if let Some(path) = s.nkey_file {
            match read_token(Some(path), None)? {
                Some(seed) => Credentials::Nkey(seed),
                None => Credentials::None,
            }
        } else {
            match read_token(s.token_file, s.token_env)? {
                Some(token) => Credentials::Token(token),
                None => Credentials::None,
            }
        };
        if let Some(path) = s.ca_file {
            std::fs::metadata(path)
                .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
        }
        Ok(Self {
            urls: s.urls.to_vec(),
            credentials,
            tls: s.tls || s.urls.iter().any(|u| u.starts_with("tls://")),
            ca_file: s.ca_file.cloned(),
        })
    }

    /// The servers, for messages.
    pub fn describe(&self) -> String {
        self.urls.join(",")
    }

    /// Connects as `name`. The client reconnects on its own, forever, to
    /// any server of the list or of the cluster they announce.
    pub async fn connect(&self, name: &str) -> Result<async_nats::Client, String> {
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            .require_tls(self.tls);
        if let Some(ca) = &self.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        options = match &self.credentials {
            Credentials::None => options,
            Credentials::CredsFile(path) => options
                .credentials_file(path)
                .await
                .map_err(|e| format!("creds_file {}: {e}", path.display()))?,
            Credentials::Nkey(seed) => options.nkey(seed.expose().to_owned()),
            Credentials::Token(token) => options.token(token.expose().to_owned()),
        };
        let addrs = self
            .urls
            .iter()
            .map(|u| u.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("bad server address: {e}"))?;
        options
            .connect(addrs)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.describe()))
    }
}
