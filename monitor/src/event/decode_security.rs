//! Decoding of the security-relevant records (network, files, credentials...).

use monitor_common::RecordHeader;

use super::decode::{DecodeError, KernelEvent};

/// Decodes a record whose kind is not a process-lifecycle kind.
pub fn decode(_bytes: &[u8], _header: RecordHeader, kind: u8) -> Result<KernelEvent, DecodeError> {
    Err(DecodeError::UnknownKind(kind))
}
