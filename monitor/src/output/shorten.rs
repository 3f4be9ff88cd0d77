//! Fitting a JSON record under a size limit (a syslog message), still valid
//! JSON: the longest strings are shortened first, then the longest arrays,
//! and the record says it was (`unmapped.monitor.truncated`), so a SIEM
//! never mistakes a shortened finding for a whole one.

use serde_json::Value;

/// Shortest a string is cut to.
const MIN_STRING: usize = 32;
/// What marks a shortened string.
const CUT: &str = "…[truncated]";

/// `payload` (JSON), shortened to at most `max` bytes if it is longer.
/// Returns the bytes and whether they were shortened.
pub fn fit(payload: &[u8], max: usize) -> (Vec<u8>, bool) {
    if payload.len() <= max {
        return (payload.to_vec(), false);
    }
    let Ok(mut v) = serde_json::from_slice::<Value>(payload) else {
        return (not_json(payload, max), true);
    };
    mark(&mut v);
    loop {
        // Measured as sent: with invisible characters escaped.
        let bytes =
            crate::display::json_with_visible_escapes(serde_json::to_vec(&v).unwrap_or_default());
        if bytes.len() <= max {
            return (bytes, true);
        }
        if !shorten_longest_string(&mut v) && !shorten_longest_array(&mut v) {
            return (skeleton(&v, max), true);
        }
    }
}

/// Marks the record as shortened.
fn mark(v: &mut Value) {
    if let Value::Object(top) = v {
        let unmapped = top
            .entry("unmapped")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Value::Object(u) = unmapped {
            let monitor = u
                .entry("monitor")
                .or_insert_with(|| Value::Object(Default::default()));
            if let Value::Object(m) = monitor {
                m.insert("truncated".into(), Value::Bool(true));
                return;
            }
        }
        top.insert("truncated".into(), Value::Bool(true));
    }
}

fn longest_string(v: &mut Value) -> Option<&mut String> {
    let mut best: Option<&mut String> = None;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) if best.as_ref().is_none_or(|b| s.len() > b.len()) => {
                best = Some(s);
            }
            Value::Array(a) => stack.extend(a.iter_mut()),
            Value::Object(o) => stack.extend(o.values_mut()),
            _ => {}
        }
    }
    best
}

/// Halves the longest string (not below [`MIN_STRING`] characters).
fn shorten_longest_string(v: &mut Value) -> bool {
    let Some(s) = longest_string(v) else {
        return false;
    };
    let chars = s.chars().count();
    if chars <= MIN_STRING + CUT.chars().count() {
        return false;
    }
    let keep = (chars / 2).max(MIN_STRING);
    let cut: String = s.chars().take(keep).collect();
    *s = cut + CUT;
    true
}

/// Halves the longest array (keeping at least one element).
fn shorten_longest_array(v: &mut Value) -> bool {
    let mut best: Option<&mut Vec<Value>> = None;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(a) => {
                if best.as_ref().is_none_or(|b| a.len() > b.len()) {
                    // Only the array itself is compared; its elements are
                    // looked at when it is not the longest.
                    best = Some(a);
                } else {
                    stack.extend(a.iter_mut());
                }
            }
            Value::Object(o) => stack.extend(o.values_mut()),
            _ => {}
        }
    }
    match best {
        Some(a) if a.len() > 1 => {
            a.truncate(a.len() / 2);
            true
        }
        _ => false,
    }
}

/// The fields a SIEM needs to find the whole record elsewhere.
fn skeleton(v: &Value, max: usize) -> Vec<u8> {
    let pick = |path: &[&str]| {
        path.iter()
            .try_fold(v, |v, k| v.get(k))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let small = serde_json::json!({
        "class_uid": pick(&["class_uid"]),
        "time": pick(&["time"]),
        "severity_id": pick(&["severity_id"]),
        "metadata": { "uid": pick(&["metadata", "uid"]) },
        "unmapped": { "monitor": { "truncated": true } },
    });
    let bytes =
        crate::display::json_with_visible_escapes(serde_json::to_vec(&small).unwrap_or_default());
    if bytes.len() <= max {
        bytes
    } else {
        br#"{"truncated":true}"#.to_vec()
    }
}

fn not_json(payload: &[u8], max: usize) -> Vec<u8> {
    let text: String = String::from_utf8_lossy(payload)
        .chars()
        .take(max / 4)
        .collect();
    let mut out = crate::display::json_with_visible_escapes(
        serde_json::to_vec(&serde_json::json!({ "truncated": true, "text": text }))
            .unwrap_or_default(),
    );
    out.truncate(max);
    if serde_json::from_slice::<Value>(&out).is_err() {
        out = br#"{"truncated":true}"#.to_vec();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_200_kb_finding_fits_8_kib_as_json_marked_truncated() {
        let finding = serde_json::json!({
            "class_uid": 2004,
            "time": 1,
            "metadata": { "uid": "abc" },
            "message": "short",
            "actor": { "process": { "cmd_line": "x".repeat(150_000) } },
            "evidences": (0..2000).map(|i| serde_json::json!({ "n": i })).collect::<Vec<_>>(),
            "unmapped": { "monitor": { "summary": "é".repeat(20_000) } },
        });
        let raw = serde_json::to_vec(&finding).unwrap();
        assert!(raw.len() > 200_000);
        let (fitted, cut) = fit(&raw, 8192);
        assert!(cut && fitted.len() <= 8192, "{}", fitted.len());
        let v: Value = serde_json::from_slice(&fitted).unwrap();
        assert_eq!(v["unmapped"]["monitor"]["truncated"], true);
        assert_eq!(v["metadata"]["uid"], "abc");
        assert_eq!(v["message"], "short", "short fields are kept");
        assert!(
            v["actor"]["process"]["cmd_line"]
                .as_str()
                .unwrap()
                .ends_with(CUT)
        );
        // Under the limit: untouched.
        let (same, cut) = fit(br#"{"a":1}"#, 8192);
        assert_eq!((same.as_slice(), cut), (&br#"{"a":1}"#[..], false));
    }

    #[test]
    fn a_shortened_record_keeps_invisible_characters_escaped() {
        let v = serde_json::json!({ "cmd": format!("evil\u{202E}{}", "x".repeat(20_000)) });
        let raw = crate::display::json_with_visible_escapes(serde_json::to_vec(&v).unwrap());
        let (fitted, cut) = fit(&raw, 1024);
        assert!(cut && fitted.len() <= 1024);
        let text = std::str::from_utf8(&fitted).unwrap();
        assert!(
            text.contains("\\u202e") && !text.contains('\u{202E}'),
            "{text}"
        );
    }

    #[test]
    fn what_cannot_be_shortened_keeps_its_identity() {
        let many_keys: serde_json::Map<String, Value> = (0..5000)
            .map(|i| (format!("k{i}"), Value::from(i)))
            .collect();
        let mut v = serde_json::json!({ "class_uid": 2004, "metadata": { "uid": "x1" } });
        v["many"] = Value::Object(many_keys);
        let (fitted, cut) = fit(&serde_json::to_vec(&v).unwrap(), 1024);
        assert!(cut && fitted.len() <= 1024);
        let back: Value = serde_json::from_slice(&fitted).unwrap();
        assert_eq!(back["metadata"]["uid"], "x1");
        let (fitted, _) = fit(&vec![b'{'; 5000], 100);
        assert!(fitted.len() <= 100);
        serde_json::from_slice::<Value>(&fitted).unwrap();
    }
}
