//! Text that people read, made safe to show: a process name or path chosen
//! by an attacker must not rewrite what an analyst sees. Control characters
//! (newlines, terminal escape sequences) and invisible ones (bidirectional
//! overrides such as U+202E, which shows `gpj.exe` for `exe.jpg`; zero-width
//! characters; tag characters) are shown as escapes.

/// Characters that change or hide what is displayed without showing
/// themselves: controls, and the default-ignorable and bidirectional
/// formatting characters of Unicode.
pub fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFFB}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

/// Text safe to print on a terminal or a page: every invisible character is
/// shown as an escape (`\n`, `\u{1b}`, `\u{202e}`). Escaping twice changes
/// nothing more.
pub fn printable(text: &str) -> String {
    if !text.chars().any(is_invisible) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else if is_invisible(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// JSON text with every invisible character written as a `\uXXXX` escape.
/// The JSON value is the same (a parser reads back the very characters),
/// but a person reading the raw line (a syslog viewer, `tail` on a file
/// sink) sees the escape, not its effect. `json` must be JSON as serde_json
/// writes it: controls are already escaped, so what is left is inside
/// strings.
pub fn json_with_visible_escapes(json: Vec<u8>) -> Vec<u8> {
    if json.is_ascii() {
        return json;
    }
    let Ok(text) = std::str::from_utf8(&json) else {
        return json;
    };
    if !text.chars().any(is_invisible) {
        return json;
    }
    let mut out = String::with_capacity(text.len() + 32);
    for c in text.chars() {
        if is_invisible(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_right_to_left_override_is_shown_not_obeyed() {
        let name = "invoice\u{202E}fdp.exe";
        assert_eq!(printable(name), "invoice\\u{202e}fdp.exe");
        assert_eq!(printable(&printable(name)), printable(name));
        assert_eq!(printable("a\nb\u{1b}[2J"), "a\\nb\\u{1b}[2J");
        assert_eq!(
            printable("zero\u{200B}width\u{FEFF}"),
            "zero\\u{200b}width\\u{feff}"
        );
        assert_eq!(printable("tag\u{E0041}"), "tag\\u{e0041}");
        // Ordinary text of any script is left alone.
        assert_eq!(
            printable("café Привет 日本 مرحبا"),
            "café Привет 日本 مرحبا"
        );
    }

    #[test]
    fn json_keeps_its_value_and_shows_its_escapes() {
        let value = serde_json::json!({"name": "a\u{202E}b\u{E0041}c", "plain": "é"});
        let raw = serde_json::to_vec(&value).unwrap();
        let shown = json_with_visible_escapes(raw);
        let text = std::str::from_utf8(&shown).unwrap();
        assert!(text.contains(r"a\u202eb\udb40\udc41c"), "{text}");
        assert!(text.contains("é"), "{text}");
        let back: serde_json::Value = serde_json::from_slice(&shown).unwrap();
        assert_eq!(back, value);
    }
}
