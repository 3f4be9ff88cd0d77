//! A local HTTP(S) receiver standing in for Splunk HEC and Elasticsearch:
//! records every request (body decompressed), answers like the real API,
//! and can be told to fail, to be slow, to refuse what a real destination
//! refuses (item errors, 413, 400), to redirect, or to answer with a huge
//! body.

use std::{
    collections::BTreeSet,
    convert::Infallible,
    io::Read as _,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{
    Request, Response,
    body::{Bytes, Frame},
    service::service_fn,
};

type Body = BoxBody<Bytes, Infallible>;

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
    /// `_bulk` answers item by item as Elasticsearch does: a document
    /// holding `MAPPING-CONFLICT` is refused (400
    /// `mapper_parsing_exception`), one holding `THROTTLE-ONCE` is
    /// throttled (429) the first time, an `_id` already stored is a 409,
    /// the rest are stored (201).
    pub es_items: bool,
    /// Bodies larger than this (decompressed) get 413.
    pub max_body: Option<usize>,
    /// A body holding this text gets 400.
    pub refuse_containing: Option<String>,
    /// Answer 302 with this `Location`.
    pub redirect_to: Option<String>,
    /// Answer 200 with a body of this many bytes.
    pub reply_bytes: Option<u64>,
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
    /// Documents `_bulk` stored (with `es_items`).
    pub stored: Arc<Mutex<Vec<serde_json::Value>>>,
    /// Every request answered: its status and body size (decompressed).
    pub answered: Arc<Mutex<Vec<(u16, usize)>>>,
    /// Bytes of huge replies the server could hand to the connection (the
    /// client reading them, and socket buffers).
    pub reply_sent: Arc<AtomicU64>,
    shutdown: tokio::sync::watch::Sender<bool>,
    _runtime: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    /// Starts a receiver on `addr` (port 0: any), with TLS if `tls`, on its own thread.
    pub fn start(addr: SocketAddr, tls: bool, dir: &std::path::Path) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let behaviour = Arc::new(Mutex::new(Behaviour::default()));
        let state = State::default();
        let (stored, reply_sent, answered) = (
            state.stored.clone(),
            state.reply_sent.clone(),
            state.answered.clone(),
        );
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
            rt.block_on(serve(std_listener, acceptor, r, b, state, rx));
        });
        Self {
            addr,
            received,
            behaviour,
            ca_pem,
            stored,
            reply_sent,
            answered,
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

/// What the receiver remembers between requests.
#[derive(Debug, Clone, Default)]
struct State {
    stored: Arc<Mutex<Vec<serde_json::Value>>>,
    ids: Arc<Mutex<BTreeSet<String>>>,
    throttled: Arc<Mutex<BTreeSet<String>>>,
    reply_sent: Arc<AtomicU64>,
    answered: Arc<Mutex<Vec<(u16, usize)>>>,
}

async fn serve(
    listener: std::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    received: Arc<Mutex<Vec<Received>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    state: State,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let (received, behaviour, tls, state) = (
            received.clone(),
            behaviour.clone(),
            tls.clone(),
            state.clone(),
        );
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (received, behaviour, state) =
                    (received.clone(), behaviour.clone(), state.clone());
                async move { Ok::<_, Infallible>(handle(req, received, behaviour, state).await) }
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

fn reply(status: u16, body: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())).boxed())
        .unwrap()
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    received: Arc<Mutex<Vec<Received>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    state: State,
) -> Response<Body> {
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
        return reply(code, "failing on purpose");
    }
    if let Some(to) = &b.redirect_to {
        return Response::builder()
            .status(302)
            .header("Location", to.as_str())
            .body(Full::new(Bytes::new()).boxed())
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
    let answer = |status: u16| state.answered.lock().unwrap().push((status, body.len()));
    if b.max_body.is_some_and(|max| body.len() > max) {
        answer(413);
        return reply(413, r#"{"text":"Content too large","code":27}"#);
    }
    if let Some(marker) = &b.refuse_containing
        && String::from_utf8_lossy(&body).contains(marker.as_str())
    {
        answer(400);
        return reply(400, r#"{"text":"Invalid data format","code":6}"#);
    }
    answer(200);
    let text = if path.ends_with("/_bulk") && b.es_items {
        bulk(&body, &state)
    } else if path.ends_with("/_bulk") {
        r#"{"errors":false,"items":[]}"#.to_owned()
    } else {
        r#"{"text":"Success","code":0}"#.to_owned()
    };
    received.lock().unwrap().push(Received {
        path,
        authorization,
        encoding,
        body,
    });
    if let Some(n) = b.reply_bytes {
        return Response::builder()
            .status(200)
            .body(
                Huge {
                    left: n,
                    sent: state.reply_sent.clone(),
                }
                .boxed(),
            )
            .unwrap();
    }
    reply(200, &text)
}

/// A `_bulk` reply, item by item (see [`Behaviour::es_items`]).
fn bulk(body: &[u8], state: &State) -> String {
    let text = String::from_utf8_lossy(body);
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let mut items = Vec::new();
    let mut errors = false;
    while let (Some(action), Some(doc)) = (lines.next(), lines.next()) {
        let action: serde_json::Value = serde_json::from_str(action).unwrap();
        let id = action["create"]["_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let (status, error) = if doc.contains("MAPPING-CONFLICT") {
            (
                400,
                serde_json::json!({"type": "mapper_parsing_exception", "reason": "failed to parse field [message] of type [long]"}),
            )
        } else if doc.contains("THROTTLE-ONCE")
            && state.throttled.lock().unwrap().insert(id.clone())
        {
            (
                429,
                serde_json::json!({"type": "es_rejected_execution_exception", "reason": "rejected execution"}),
            )
        } else if !state.ids.lock().unwrap().insert(id.clone()) {
            (
                409,
                serde_json::json!({"type": "version_conflict_engine_exception", "reason": "document already exists"}),
            )
        } else {
            state
                .stored
                .lock()
                .unwrap()
                .push(serde_json::from_str(doc).unwrap());
            (201, serde_json::Value::Null)
        };
        errors |= status >= 300;
        let mut result = serde_json::json!({ "_id": id, "status": status });
        if !error.is_null() {
            result["error"] = error;
        }
        items.push(serde_json::json!({ "create": result }));
    }
    serde_json::json!({ "errors": errors, "items": items }).to_string()
}

/// A reply body of `left` bytes, made as the connection takes it.
struct Huge {
    left: u64,
    sent: Arc<AtomicU64>,
}

static CHUNK: [u8; 64 * 1024] = [b' '; 64 * 1024];

impl hyper::body::Body for Huge {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK.len() as u64);
        self.left -= n;
        self.sent.fetch_add(n, Ordering::Relaxed);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            &CHUNK[..n as usize],
        )))))
    }
}
