//! A local HTTP(S) receiver standing in for Splunk HEC and Elasticsearch:
//! records every request (body decompressed), answers like the real API,
//! and can be told to fail or to be slow.

use std::{
    io::Read as _,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Bytes, service::service_fn};

/// One request received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Path.
    pub path: String,
    /// `Authorization` header.
    pub authorization: Option<String>,
    /// `Content-Encoding` header.
    pub encoding: Option<String>,
    /// The body, decompressed.
    pub body: Vec<u8>,
}

/// Behaviour knobs.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Answer every request with this status instead of success.
    pub fail_with: Option<u16>,
    /// Wait this long before answering.
    pub delay: Duration,
}

/// A running receiver.
pub struct Receiver {
    /// Its address.
    pub addr: SocketAddr,
    /// What it received (successful requests only).
    pub received: Arc<Mutex<Vec<Received>>>,
    /// Its behaviour, changeable while running.
    pub behaviour: Arc<Mutex<Behaviour>>,
    /// PEM of its certificate, when TLS.
    pub ca_pem: Option<PathBuf>,
    shutdown: tokio::sync::watch::Sender<bool>,
    _runtime: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    /// Starts a receiver on `addr` (port 0: any), with TLS if `tls`, on its own thread.
    pub fn start(addr: SocketAddr, tls: bool, dir: &std::path::Path) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let behaviour = Arc::new(Mutex::new(Behaviour::default()));
        let (tx, rx) = tokio::sync::watch::channel(false);
        let std_listener = std::net::TcpListener::bind(addr).expect("bind receiver");
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let (acceptor, ca_pem) = if tls {
            let cert =
                rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                    .unwrap();
            let pem = dir.join("receiver-ca.pem");
            std::fs::write(&pem, cert.cert.pem()).unwrap();
            let key =
                rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
            (
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
                Some(pem),
            )
        } else {
            (None, None)
        };
        let (r, b) = (received.clone(), behaviour.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(serve(std_listener, acceptor, r, b, rx));
        });
        Self {
            addr,
            received,
            behaviour,
            ca_pem,
            shutdown: tx,
            _runtime: Some(thread),
        }
    }

    /// All JSON documents received (HEC events unwrapped; ES action lines skipped).
    pub fn documents(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for r in self.received.lock().unwrap().iter() {
            let text = String::from_utf8_lossy(&r.body);
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let v: serde_json::Value =
                    serde_json::from_str(line).expect("receiver got JSON lines");
                if v.get("create").is_some() {
                    continue; // ES action line
                }
                match v.get("event") {
                    Some(event) => out.push(event.clone()),
                    None => out.push(v),
                }
            }
        }
        out
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

async fn serve(
    listener: std::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    received: Arc<Mutex<Vec<Received>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let (received, behaviour, tls) = (received.clone(), behaviour.clone(), tls.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (received, behaviour) = (received.clone(), behaviour.clone());
                async move { Ok::<_, std::convert::Infallible>(handle(req, received, behaviour).await) }
            });
            match tls {
                Some(acceptor) => {
                    if let Ok(s) = acceptor.accept(stream).await {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(s), service)
                            .await;
                    }
                }
                None => {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                }
            }
        });
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    received: Arc<Mutex<Vec<Received>>>,
    behaviour: Arc<Mutex<Behaviour>>,
) -> Response<Full<Bytes>> {
    let b = behaviour.lock().unwrap().clone();
    let path = req.uri().path().to_owned();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (authorization, encoding) = (header("authorization"), header("content-encoding"));
    let raw = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes().to_vec())
        .unwrap_or_default();
    tokio::time::sleep(b.delay).await;
    if let Some(code) = b.fail_with {
        return Response::builder()
            .status(code)
            .body(Full::new(Bytes::from("failing on purpose")))
            .unwrap();
    }
    let body = if encoding.as_deref() == Some("gzip") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .expect("valid gzip");
        out
    } else {
        raw
    };
    let reply = if path.ends_with("/_bulk") {
        r#"{"errors":false,"items":[]}"#
    } else {
        r#"{"text":"Success","code":0}"#
    };
    received.lock().unwrap().push(Received {
        path,
        authorization,
        encoding,
        body,
    });
    Response::builder()
        .status(200)
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(reply)))
        .unwrap()
}
