//! The NATS JetStream sink: every record is published to a stream and the
//! batch counts as delivered only once the stream has acknowledged each one.
//!
//! Exactly once: a record carries its id in `Nats-Msg-Id` (the finding's
//! `metadata.uid`, or a SHA-256 of the record when it has none), so a batch
//! sent again after a lost acknowledgement, a cut connection or a node
//! failover is dropped by the stream's duplicate window instead of stored
//! twice. The window must be longer than the longest outage the spool may
//! ride out (see `docs/operations.md`); at start the sink reads the
//! stream's window and warns when it is under ten minutes.
//!
//! The connection ([`crate::fleet::connection`]) is made on the first send,
//! and `async-nats` reconnects on its own, forever, to any server of `urls`
//! or of the cluster they announce; while it is down, sends fail, the spool
//! keeps the records and the delivery loop retries with backoff.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    context::{PublishAckFuture, PublishErrorKind},
    message::PublishMessage,
};

use super::spool::{Class, Record};
use crate::fleet::connection::Endpoint;

/// Why a batch failed, worth sending again.
#[derive(Debug, thiserror::Error)]
#[error("nats {servers}: {why}")]
pub struct NatsError {
    servers: String,
    why: String,
}

/// A record of a batch the servers refused for good: its index, and why.
pub type Refusal = (usize, String);

/// A JetStream sink.
pub struct Nats {
    endpoint: Endpoint,
    subject: String,
    stream: Option<String>,
    host: String,
    gzip: Option<Gzip>,
    batch_size: usize,
    context: Option<jetstream::Context>,
}

/// A batch published whose acknowledgements are still on their way.
pub struct Published {
    acks: Vec<PublishAckFuture>,
    refused: Vec<Refusal>,
    servers: String,
}

impl Published {
    /// Waits until the stream has acknowledged every record; returns the
    /// records refused for good.
    pub async fn confirmed(self) -> Result<Vec<Refusal>, NatsError> {
        for ack in self.acks {
            ack.await.map_err(|e| NatsError {
                servers: self.servers.clone(),
                why: e.to_string(),
            })?;
        }
        Ok(self.refused)
    }
}

/// The longest wait for one publish acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// A duplicate window shorter than this cannot cover a sink outage of
/// ordinary length: a batch sent again later could be stored twice.
const SHORTEST_SAFE_WINDOW: Duration = Duration::from_secs(600);

impl Nats {
    /// A sink publishing to `endpoint` on subjects made from `subject`
    /// (see [`subject_for`]), into `stream` if given, in batches of at most
    /// `batch_size` records.
    pub fn new(
        endpoint: Endpoint,
        subject: &str,
        stream: Option<&str>,
        host: &str,
        gzip: bool,
        batch_size: usize,
    ) -> Self {
        Self {
            endpoint,
            subject: subject.to_owned(),
            stream: stream.map(str::to_owned),
            host: host.to_owned(),
            gzip: gzip.then(Gzip::new),
            batch_size,
            context: None,
        }
    }

    /// The subject of a record: the configured template with `{host}`
    /// and `{class}` filled in.
    fn subject_of(&self, class: Class) -> String {
        subject_for(&self.subject, &self.host, class)
    }

    async fn connect(&self) -> Result<jetstream::Context, NatsError> {
        let client = self
            .endpoint
            .connect(&format!("monitor@{}", self.host))
            .await
            .map_err(|e| self.failed(&e))?;
        // A publish past the client's limit of acknowledgements pending
        // waits for one to come (with its default of 5,000 a batch of more
        // records never finished). Room for four batches: the one awaited,
        // the one published meanwhile, and both again when they failed and
        // are sent anew while the client still waits, up to ACK_TIMEOUT,
        // for the late acknowledgements of the first attempt.
        let context = jetstream::ContextBuilder::new()
            .timeout(ACK_TIMEOUT)
            .ack_timeout(ACK_TIMEOUT)
            .max_ack_inflight(4 * self.batch_size.max(1))
            .build(client);
        if let Some(name) = &self.stream {
            self.check_window(&context, name).await;
        }
        Ok(context)
    }

    /// Warns when the stream's duplicate window is too short to make a
    /// batch sent again harmless.
    async fn check_window(&self, context: &jetstream::Context, name: &str) {
        match context.get_stream(name).await {
            Ok(mut stream) => match stream.info().await {
                Ok(info) if info.config.duplicate_window < SHORTEST_SAFE_WINDOW => {
                    tracing::warn!(stream = %name, window = ?info.config.duplicate_window, "nats: the stream's duplicate window is under 10 minutes: a batch sent again after a longer outage may be stored twice");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(stream = %name, error = %e, "nats: cannot read the stream's settings")
                }
            },
            Err(e) => tracing::warn!(stream = %name, error = %e, "nats: cannot find the stream"),
        }
    }

    /// Publishes a batch without waiting for its acknowledgements, so the
    /// next batch can be read and published while the stream stores this
    /// one; [`Published::confirmed`] waits for them. A record the servers refuse
    /// for good (over their `max_payload`) is returned as refused; any
    /// other failure fails the batch, which is sent again whole (the stream
    /// drops what it already has).
    pub async fn publish(&mut self, batch: &[Record]) -> Result<Published, NatsError> {
        if self.context.is_none() {
            self.context = Some(self.connect().await?);
        }
        let context = self.context.as_ref().expect("connected above");
        let mut refused = Vec::new();
        let mut acks = Vec::with_capacity(batch.len());
        for (index, r) in batch.iter().enumerate() {
            let mut message = PublishMessage::build().message_id(message_id(&r.payload));
            message = if let Some(gzip) = &mut self.gzip {
                let packed = gzip.pack(&r.payload);
                message
                    .payload(packed.map_err(|e| self.failed(&e))?.into())
                    .header("Content-Encoding", "gzip")
            } else {
                message.payload(r.payload.clone().into())
            };
            if let Some(stream) = &self.stream {
                message = message.expected_stream(stream);
            }
            match context
                .send_publish(self.subject_of(r.class), message)
                .await
            {
                Ok(ack) => acks.push(ack),
                Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    refused.push((index, format!("nats: {e}")));
                }
                Err(e) => return Err(self.failed(&e)),
            }
        }
        Ok(Published {
            acks,
            refused,
            servers: self.endpoint.describe(),
        })
    }

    fn failed(&self, e: &dyn std::fmt::Display) -> NatsError {
        NatsError {
            servers: self.endpoint.describe(),
            why: e.to_string(),
        }
    }
}

/// `template` with `{host}` and `{class}` filled in; a host name's dots,
/// spaces and wildcards become `_`, so it stays one subject token.
pub fn subject_for(template: &str, host: &str, class: Class) -> String {
    let host: String = host
        .chars()
        .map(|c| {
            if c == '.' || c == '*' || c == '>' || c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    let class = match class {
        Class::Findings => "findings",
        Class::Activity => "activity",
    };
    template.replace("{host}", &host).replace("{class}", class)
}

/// A gzip compressor (fast level: the servers' bytes are what it saves)
/// kept from record to record: setting a deflate state up costs about half
/// as much as compressing a finding with it.
struct Gzip {
    deflate: flate2::Compress,
}

impl Gzip {
    fn new() -> Self {
        Self {
            deflate: flate2::Compress::new(flate2::Compression::fast(), false),
        }
    }

    /// `payload` as one gzip member (RFC 1952): header, raw deflate,
    /// CRC-32 and length.
    fn pack(&mut self, payload: &[u8]) -> std::io::Result<Vec<u8>> {
        const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
        self.deflate.reset();
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        out.extend_from_slice(&HEADER);
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity());
            }
            let consumed = usize::try_from(self.deflate.total_in()).unwrap_or(usize::MAX);
            let rest = payload.get(consumed..).unwrap_or_default();
            match self
                .deflate
                .compress_vec(rest, &mut out, flate2::FlushCompress::Finish)?
            {
                flate2::Status::StreamEnd => break,
                flate2::Status::Ok | flate2::Status::BufError => {}
            }
        }
        out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        // ISIZE is the length modulo 2^32 (RFC 1952).
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        Ok(out)
    }
}

/// The id the stream deduplicates a record by: its finding id, or the
/// SHA-256 of its bytes.
fn message_id(payload: &[u8]) -> String {
    if let Some(id) = super::ocsf::record_uid(payload) {
        return id;
    }
    format!("sha256:{}", crate::hash::sha256_hex(payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzipped_messages_inflate_to_their_records_with_one_compressor() {
        use std::io::Read as _;
        let finding = br#"{"metadata":{"uid":"abc"},"message":"x"}"#.repeat(50);
        // Incompressible bytes, larger than one output reservation.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let noise: Vec<u8> = (0..100_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let mut gzip = Gzip::new();
        for record in [&finding[..], &noise[..], b"", &finding[..]] {
            let packed = gzip.pack(record).unwrap();
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&packed[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, record, "{} bytes", record.len());
        }
        let packed = gzip.pack(&finding).unwrap();
        assert!(packed.len() < finding.len() / 5, "{} bytes", packed.len());
    }

    #[test]
    fn subjects_are_per_host_and_class_and_a_host_stays_one_token() {
        assert_eq!(
            subject_for(
                "monitor.{host}.{class}",
                "web-1.prod.example",
                Class::Findings
            ),
            "monitor.web-1_prod_example.findings"
        );
        assert_eq!(
            subject_for("x.{class}.{host}", "a b>*", Class::Activity),
            "x.activity.a_b__"
        );
    }

    #[test]
    fn a_record_is_deduplicated_by_its_finding_id_or_its_hash() {
        assert_eq!(message_id(br#"{"metadata":{"uid":"f-1"}}"#), "f-1");
        let a = message_id(br#"{"class_uid":1007}"#);
        assert!(a.starts_with("sha256:") && a.len() == 7 + 64);
        assert_eq!(a, message_id(br#"{"class_uid":1007}"#));
        assert_ne!(a, message_id(br#"{"class_uid":1008}"#));
    }
}
