//! A real rsyslogd (the Debian package), started by a test with inputs on
//! UDP, TCP and a unix socket, writing what it receives to a file.

use std::{
    net::UdpSocket,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

/// A running rsyslogd.
pub struct Rsyslog {
    child: Child,
    /// UDP port.
    pub udp_port: u16,
    /// TCP port.
    pub tcp_port: u16,
    /// Unix socket path.
    pub socket: PathBuf,
    /// Where received messages land, one per line:
    /// `APP-NAME|MSGID|STRUCTURED-DATA|MSG`.
    pub output: PathBuf,
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Rsyslog {
    /// Starts rsyslogd in `dir`; `None` (and a loud message) if the binary is
    /// missing and the run does not require it.
    pub fn start(dir: &Path) -> Self {
        let udp_port = free_port();
        let tcp_port = crate::free_tcp_port();
        let socket = dir.join("log.sock");
        let output = dir.join("received.log");
        let conf = dir.join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{dir}")
module(load="imudp")
input(type="imudp" address="127.0.0.1" port="{udp_port}")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{tcp_port}")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{socket}" UseSpecialParser="off" ParseHostname="on")
template(name="fields" type="string" string="%app-name%|%msgid%|%structured-data%|%msg%\n")
*.* action(type="omfile" file="{output}" template="fields")
"#,
                dir = dir.display(),
                socket = socket.display(),
                output = output.display()
            ),
        )
        .unwrap();
        // Debian installs it in /usr/sbin, which a user's PATH may lack.
        let binary = if Path::new("/usr/sbin/rsyslogd").exists() {
            "/usr/sbin/rsyslogd"
        } else {
            "rsyslogd"
        };
        let mut child = Command::new(binary)
            .args(["-n", "-f"])
            .arg(&conf)
            .arg("-i")
            .arg(dir.join("rsyslog.pid"))
            .spawn()
            .expect("start rsyslogd (install the Debian package rsyslog; `cargo xtask test` does)");
        // Ready when the unix socket exists and the TCP port accepts.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if socket.exists() && std::net::TcpStream::connect(("127.0.0.1", tcp_port)).is_ok() {
                return Self {
                    child,
                    udp_port,
                    tcp_port,
                    socket,
                    output,
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "rsyslogd did not come up within 10 s (config {})",
            conf.display()
        );
    }

    /// The received lines, waiting until at least `n` arrived (or 10 s).
    pub fn lines(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&self.output).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            if lines.len() >= n || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
