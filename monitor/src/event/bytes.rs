//! Byte strings in JSON: lossless where possible, always valid JSON.
//!
//! Process names, paths and arguments are bytes, not text: Linux allows any
//! byte but NUL (and `/` in a name). The encoding, documented in
//! `docs/events.md`:
//!
//! - valid UTF-8 is a plain JSON string; control characters (newlines, ESC,
//!   ...) are escaped by JSON itself (`\n`, `\u001b`), so they survive
//!   exactly and cannot forge a log line or a terminal sequence;
//! - anything else is an object `{"text": "<lossy UTF-8>", "base64": "<exact bytes>"}`:
//!   `text` is for people and SIEM search, `base64` restores the bytes.
//!
//! Readers accept both forms, so a JSON Lines stream replays byte-exact.

use std::fmt;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Owned bytes that serialize per the module docs.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ByteString(pub Vec<u8>);

impl ByteString {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Lossy text for display and matching (invalid sequences become U+FFFD).
    pub fn to_string_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The last `/`-separated component (the whole string if there is none).
    pub fn file_name(&self) -> &[u8] {
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }
}

impl From<&[u8]> for ByteString {
    fn from(b: &[u8]) -> Self {
        Self(b.to_vec())
    }
}
impl From<Vec<u8>> for ByteString {
    fn from(b: Vec<u8>) -> Self {
        Self(b)
    }
}
impl From<&str> for ByteString {
    fn from(s: &str) -> Self {
        Self(s.as_bytes().to_vec())
    }
}
impl From<String> for ByteString {
    fn from(s: String) -> Self {
        Self(s.into_bytes())
    }
}

impl fmt::Debug for ByteString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string_lossy())
    }
}

impl fmt::Display for ByteString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string_lossy())
    }
}

impl Serialize for ByteString {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => serializer.serialize_str(text),
            Err(_) => {
                use serde::ser::SerializeMap;
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("text", &String::from_utf8_lossy(&self.0))?;
                map.serialize_entry("base64", &STANDARD.encode(&self.0))?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for ByteString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Raw {
                #[serde(rename = "text")]
                _text: Option<String>,
                base64: String,
            },
        }
        match Repr::deserialize(deserializer)? {
            Repr::Text(text) => Ok(Self(text.into_bytes())),
            Repr::Raw { base64, .. } => STANDARD.decode(base64.as_bytes()).map(Self).map_err(|e| {
                serde::de::Error::custom(format!("invalid base64 in byte string: {e}"))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(bytes: &[u8]) -> String {
        let json = serde_json::to_string(&ByteString::from(bytes)).unwrap();
        let back: ByteString = serde_json::from_str(&json).unwrap();
        assert_eq!(back.as_bytes(), bytes, "round trip of {json}");
        json
    }

    #[test]
    fn utf8_is_a_plain_string() {
        assert_eq!(roundtrip(b"/usr/bin/echo"), r#""/usr/bin/echo""#);
        assert_eq!(roundtrip("caf\u{e9}".as_bytes()), "\"caf\u{e9}\"");
    }

    #[test]
    fn control_characters_are_escaped_exactly() {
        let json = roundtrip(b"a\nb\x1b[31mc\td\0");
        assert_eq!(json, r#""a\nb\u001b[31mc\td\u0000""#);
        assert!(!json.contains('\n'));
    }

    #[test]
    fn invalid_utf8_keeps_exact_bytes() {
        let json = roundtrip(b"bad\xff\xfename");
        assert_eq!(
            json,
            r#"{"text":"bad\ufffd\ufffdname","base64":"YmFk//5uYW1l"}"#
                .replace("\\ufffd", "\u{fffd}")
        );
    }

    #[test]
    fn rejects_bad_base64_with_a_clear_error() {
        let err = serde_json::from_str::<ByteString>(r#"{"base64":"***"}"#).unwrap_err();
        assert!(err.to_string().contains("invalid base64"), "{err}");
    }
}
