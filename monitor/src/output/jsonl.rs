//! JSON Lines: one event object per line.

use std::io::{self, Write};

use serde::Serialize;

/// Writes one JSON object per line to a buffered writer.
pub struct JsonLines<W: Write> {
    out: io::BufWriter<W>,
    written: u64,
}

impl<W: Write> JsonLines<W> {
    /// Wraps a writer.
    pub fn new(out: W) -> Self {
        Self {
            out: io::BufWriter::with_capacity(64 * 1024, out),
            written: 0,
        }
    }

    /// Writes one value and a newline.
    pub fn write<T: Serialize>(&mut self, value: &T) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, value).map_err(io::Error::other)?;
        self.out.write_all(b"\n")?;
        self.written += 1;
        Ok(())
    }

    /// Flushes buffered lines.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Lines written.
    pub fn written(&self) -> u64 {
        self.written
    }
}
