//! User names for uids, from `/etc/passwd`, reloaded when the file changes.

use std::{collections::HashMap, path::PathBuf, time::SystemTime};

/// uid -> name.
pub struct UserNames {
    names: HashMap<u32, String>,
    source: Option<PathBuf>,
    loaded_mtime: Option<SystemTime>,
}

impl UserNames {
    /// Names from the system's `/etc/passwd`.
    pub fn system() -> Self {
        let mut names = Self {
            names: HashMap::new(),
            source: Some(PathBuf::from("/etc/passwd")),
            loaded_mtime: None,
        };
        names.reload_if_changed();
        names
    }

    /// Names from passwd-format text (tests, and hosts without the file).
    pub fn from_passwd(text: &str) -> Self {
        Self {
            names: parse_passwd(text),
            source: None,
            loaded_mtime: None,
        }
    }

    /// The name of `uid`, if known.
    pub fn name(&mut self, uid: u32) -> Option<String> {
        self.name_ref(uid).map(str::to_owned)
    }

    /// The name of `uid`, if known, borrowed.
    pub fn name_ref(&mut self, uid: u32) -> Option<&str> {
        if !self.names.contains_key(&uid) {
            self.reload_if_changed();
        }
        self.names.get(&uid).map(String::as_str)
    }

    fn reload_if_changed(&mut self) {
        let Some(path) = &self.source else {
            return;
        };
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if mtime.is_some() && mtime == self.loaded_mtime {
            return;
        }
        if let Ok(text) = std::fs::read_to_string(path) {
            self.names = parse_passwd(&text);
            self.loaded_mtime = mtime;
        }
    }
}

fn parse_passwd(text: &str) -> HashMap<u32, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let uid = fields.nth(1)?.parse().ok()?;
            Some((uid, name.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_passwd_and_ignores_junk() {
        let mut u = UserNames::from_passwd(
            "root:x:0:0:root:/root:/bin/bash\n# c\nbad line\nwww-data:x:33:33::/var/www:/usr/sbin/nologin\n",
        );
        assert_eq!(u.name(0).as_deref(), Some("root"));
        assert_eq!(u.name(33).as_deref(), Some("www-data"));
        assert_eq!(u.name(5), None);
    }
}
