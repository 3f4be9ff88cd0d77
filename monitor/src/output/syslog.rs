//! syslog (RFC 5424) over UDP, TCP (octet counting, RFC 6587) or a unix
//! datagram socket.

use std::path::PathBuf;

use tokio::{
    io::AsyncWriteExt,
    net::{TcpStream, UdpSocket, UnixDatagram},
};

use crate::output::sink_config::SyslogTransport;

/// Formats one RFC 5424 message carrying a JSON record, at most `max`
/// bytes: a longer record is shortened, still valid JSON and marked
/// truncated ([`super::shorten`]), so that a collector's message limit does
/// not make it fail on every retry.
///
/// `severity` is the syslog severity (0 emergency .. 7 debug); `msgid` says
/// what the record is (`finding`, `activity`, `lifecycle`); the record's id,
/// when it has one, goes in structured data so a collector can index it.
#[allow(
    clippy::too_many_arguments,
    reason = "the fields of one RFC 5424 header, named at the call"
)]
pub fn format(
    max: usize,
    facility: u8,
    severity: u8,
    host: &str,
    app: &str,
    msgid: &str,
    id: Option<&str>,
    json: &[u8],
) -> Vec<u8> {
    let pri = u16::from(facility) * 8 + u16::from(severity);
    let now = humantime::format_rfc3339_micros(std::time::SystemTime::now());
    let sd = match id {
        // 32473 is the private enterprise number reserved for examples.
        Some(id) => format!("[monitor@32473 id=\"{}\"]", escape_sd(id)),
        None => "-".to_owned(),
    };
    let header = format!(
        "<{pri}>1 {now} {} {} {} {} {sd} ",
        field(host),
        field(app),
        std::process::id(),
        field(msgid)
    );
    let mut out = header.into_bytes();
    out.extend_from_slice("\u{feff}".as_bytes()); // BOM: the message is UTF-8
    let (json, _) = super::shorten::fit(json, max.saturating_sub(out.len()));
    out.extend_from_slice(&json);
    out
}

/// A header field: printable ASCII without spaces, or `-`.
fn field(s: &str) -> String {
    let f: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(48)
        .collect();
    if f.is_empty() { "-".into() } else { f }
}

fn escape_sd(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace(']', "\\]")
}

/// A connected syslog destination.
pub struct Syslog {
    transport: SyslogTransport,
    address: Option<String>,
    path: Option<PathBuf>,
    tcp: Option<TcpStream>,
    udp: Option<UdpSocket>,
    unix: Option<UnixDatagram>,
    /// Facility code.
    pub facility: u8,
    /// APP-NAME.
    pub app_name: String,
    /// Longest message sent, header included.
    pub max_message: usize,
}

impl Syslog {
    /// A destination (connected lazily).
    pub fn new(
        transport: SyslogTransport,
        address: Option<String>,
        path: Option<PathBuf>,
        facility: u8,
        app_name: String,
        max_message: usize,
    ) -> Self {
        Self {
            transport,
            address,
            path,
            tcp: None,
            udp: None,
            unix: None,
            facility,
            app_name,
            max_message,
        }
    }

    /// Sends messages; an error drops the connection so the next try reconnects.
    pub async fn send(&mut self, messages: &[Vec<u8>]) -> std::io::Result<()> {
        let result = self.send_inner(messages).await;
        if result.is_err() {
            self.tcp = None;
            self.udp = None;
            self.unix = None;
        }
        result
    }

    async fn send_inner(&mut self, messages: &[Vec<u8>]) -> std::io::Result<()> {
        match self.transport {
            SyslogTransport::Udp => {
                if self.udp.is_none() {
                    let addr = self.address.clone().unwrap_or_default();
                    let sock = UdpSocket::bind(if addr.starts_with('[') {
                        "[::]:0"
                    } else {
                        "0.0.0.0:0"
                    })
                    .await?;
                    sock.connect(&addr).await?;
                    self.udp = Some(sock);
                }
                let sock = self.udp.as_ref().expect("connected");
                for m in messages {
                    sock.send(m).await?;
                }
            }
            SyslogTransport::Tcp => {
                if self.tcp.is_none() {
                    self.tcp =
                        Some(TcpStream::connect(self.address.clone().unwrap_or_default()).await?);
                }
                let stream = self.tcp.as_mut().expect("connected");
                let mut buf = Vec::new();
                for m in messages {
                    buf.extend_from_slice(format!("{} ", m.len()).as_bytes());
                    buf.extend_from_slice(m);
                }
                stream.write_all(&buf).await?;
                stream.flush().await?;
            }
            SyslogTransport::Unix => {
                if self.unix.is_none() {
                    let sock = UnixDatagram::unbound()?;
                    sock.connect(self.path.clone().unwrap_or_default())?;
                    self.unix = Some(sock);
                }
                let sock = self.unix.as_ref().expect("connected");
                for m in messages {
                    sock.send(m).await?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::sink_config::facility_code;

    #[test]
    fn rfc5424_shape() {
        let m = format(
            8192,
            16,
            4,
            "web 01",
            "monitor",
            "finding",
            Some("ab\"c]"),
            b"{\"a\":1}",
        );
        let text = String::from_utf8(m).unwrap();
        assert!(text.starts_with("<132>1 "), "{text}");
        assert!(text.contains(" web01 monitor "), "{text}");
        assert!(
            text.contains(" finding [monitor@32473 id=\"ab\\\"c\\]\"] \u{feff}{\"a\":1}"),
            "{text}"
        );
        assert_eq!(facility_code("local7"), Some(23));
        assert_eq!(facility_code("bogus"), None);
    }

    #[test]
    fn a_message_stays_under_its_limit_header_included() {
        let big =
            serde_json::to_vec(&serde_json::json!({ "message": "x".repeat(200_000) })).unwrap();
        let m = format(8192, 16, 4, "host", "monitor", "finding", Some("id1"), &big);
        assert!(m.len() <= 8192, "{}", m.len());
        let json = &m[m
            .windows(3)
            .position(|w| w == "\u{feff}".as_bytes())
            .unwrap()
            + 3..];
        let v: serde_json::Value = serde_json::from_slice(json).unwrap();
        assert_eq!(v["unmapped"]["monitor"]["truncated"], true);
    }
}
