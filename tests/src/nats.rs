//! A real NATS JetStream cluster (the Debian package `nats-server`): three
//! servers on loopback, routed to one another, each with its own store, that
//! a test can kill and start again; and a TCP relay in front of one of them
//! whose connections a test can cut.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// One server of the cluster.
struct Node {
    conf: PathBuf,
    client_port: u16,
    child: Option<Child>,
}

/// A running three-node cluster.
pub struct Cluster {
    nodes: Vec<Node>,
    /// Environment given to every server (e.g. Go's `GOGC`).
    env: Vec<(String, String)>,
}

fn binary() -> &'static str {
    // Debian installs it in /usr/sbin, which a user's PATH may lack.
    if Path::new("/usr/sbin/nats-server").exists() {
        "/usr/sbin/nats-server"
    } else {
        "nats-server"
    }
}

impl Cluster {
    /// Starts three servers in `dir` (stores, configuration and logs) and
    /// waits until each accepts clients.
    pub fn start(dir: &Path) -> Self {
        Self::start_with_env(dir, &[])
    }

    /// Like [`Cluster::start`], with `env` set for every server.
    pub fn start_with_env(dir: &Path, env: &[(&str, &str)]) -> Self {
        let client: Vec<u16> = (0..3).map(|_| crate::free_tcp_port()).collect();
        let route: Vec<u16> = (0..3).map(|_| crate::free_tcp_port()).collect();
        let nodes = (0..3)
            .map(|i| {
                let store = dir.join(format!("n{i}"));
                std::fs::create_dir_all(&store).unwrap();
                let routes: Vec<String> = (0..3)
                    .filter(|&j| j != i)
                    .map(|j| format!("nats-route://127.0.0.1:{}", route[j]))
                    .collect();
                let conf = dir.join(format!("n{i}.conf"));
                std::fs::write(
                    &conf,
                    format!(
                        r#"server_name: n{i}
host: 127.0.0.1
port: {port}
log_file: "{log}"
jetstream {{ store_dir: "{store}", max_memory_store: 64MB, max_file_store: 1GB }}
cluster {{
  name: monitor-test
  host: 127.0.0.1
  port: {route}
  routes: [{routes}]
}}
"#,
                        port = client[i],
                        log = dir.join(format!("n{i}.log")).display(),
                        store = store.display(),
                        route = route[i],
                        routes = routes.join(", ")
                    ),
                )
                .unwrap();
                Node {
                    conf,
                    client_port: client[i],
                    child: None,
                }
            })
            .collect();
        let mut cluster = Self {
            nodes,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        for i in 0..3 {
            cluster.start_node(i);
        }
        cluster
    }

    /// The client URL of server `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// The client port of server `i`.
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].client_port
    }

    /// Starts server `i` (again, with its store as it was left) and waits
    /// until it accepts clients.
    pub fn start_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let child = Command::new(binary())
            .arg("-c")
            .arg(&node.conf)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .spawn()
            .expect("start nats-server (install the Debian package nats-server; `cargo xtask test` does)");
        node.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", node.client_port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server n{i} does not accept clients on port {} within 15 s",
                node.client_port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until JetStream answers through server `i` (a new cluster
    /// elects its meta leader first); panics after 60 s.
    pub fn wait_for_jetstream(&self, i: usize) {
        let url = self.url(i);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                // A replicated stream made and removed: what every test
                // needs of the cluster (the account query's reply of this
                // server version does not parse in the client).
                let attempt = async {
                    let js = async_nats::jetstream::new(async_nats::connect(&url).await?);
                    js.create_stream(async_nats::jetstream::stream::Config {
                        name: "READY".into(),
                        subjects: vec!["ready.>".into()],
                        num_replicas: 3,
                        ..Default::default()
                    })
                    .await?;
                    js.delete_stream("READY").await?;
                    Ok::<_, async_nats::Error>(())
                };
                match attempt.await {
                    Ok(()) => return,
                    Err(e) => {
                        assert!(
                            Instant::now() < deadline,
                            "JetStream does not answer on {url} within 60 s: {e}"
                        );
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            }
        });
    }

    /// Stops every server with SIGSTOP, as a paused VM or a stalled disk
    /// would: connections stay open, nothing is answered.
    pub fn freeze(&self) {
        self.signal_all("-STOP");
    }

    /// Lets frozen servers run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal_all("-CONT");
    }

    fn signal_all(&self, signal: &str) {
        for node in &self.nodes {
            if let Some(child) = &node.child {
                let status = Command::new("kill")
                    .arg(signal)
                    .arg(child.id().to_string())
                    .status()
                    .expect("run kill");
                assert!(status.success(), "kill {signal} {}: {status}", child.id());
            }
        }
    }

    /// Kills server `i` with SIGKILL, as a crash would.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }
}

/// Creates stream `name` on `subjects`, replicated three ways, with an
/// hour's duplicate window; retries for a minute while a new cluster
/// elects its leaders.
pub async fn create_stream(url: &str, name: &str, subjects: &str) {
    use async_nats::jetstream;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = async {
            let js = jetstream::new(async_nats::connect(url).await?);
            js.create_stream(jetstream::stream::Config {
                name: name.into(),
                subjects: vec![subjects.into()],
                num_replicas: 3,
                duplicate_window: Duration::from_secs(3600),
                ..Default::default()
            })
            .await?;
            Ok::<_, async_nats::Error>(())
        };
        match attempt.await {
            Ok(()) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("nats: stream {name} not created yet ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("nats: cannot create stream {name} within 60 s: {e}"),
        }
    }
}

/// A TCP relay from a loopback port to `127.0.0.1:target`, whose open
/// connections [`Relay::cut`] closes at once (a network cut, as the client
/// sees it: its socket is reset mid-stream).
pub struct Relay {
    /// The port clients connect to.
    pub port: u16,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    /// Starts relaying to `target`.
    pub fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let kept = open.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let mut list = kept.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                drop(list);
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Self { port, open }
    }

    /// Closes every connection relayed so far; returns how many there were.
    pub fn cut(&self) -> usize {
        let mut list = self.open.lock().unwrap();
        for s in list.iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let n = list.len() / 2;
        list.clear();
        n
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}

/// A `nats` sink on `urls`, publishing `{prefix}.{host}.{class}` into
/// `stream`, with no credentials.
pub fn sink_config(
    urls: Vec<String>,
    prefix: &str,
    stream: &str,
    batch_size: usize,
    batch_timeout: Duration,
    compression: monitor::output::sink_config::Compression,
) -> monitor::output::sink_config::SinkConfig {
    monitor::output::sink_config::SinkConfig::Nats {
        urls,
        subject: format!("{prefix}.{{host}}.{{class}}"),
        stream: Some(stream.into()),
        creds_file: None,
        nkey_file: None,
        token_file: None,
        token_env: None,
        tls: false,
        ca_file: None,
        batch_size,
        batch_timeout,
        compression,
    }
}
