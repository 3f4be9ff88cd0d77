//! Secrets a sink or a client hands to a server (tokens, nkey seeds): read
//! from a file or the environment, never printed.

use std::path::PathBuf;

/// A secret read from a file or the environment; never printed.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, to hand to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// Reads a token from `file` or environment variable `env`.
pub fn read_token(file: Option<&PathBuf>, env: Option<&str>) -> Result<Option<Secret>, String> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(format!("token file {} is empty", path.display()));
        }
        return Ok(Some(Secret(token.to_owned())));
    }
    if let Some(var) = env {
        let token = std::env::var(var)
            .map_err(|_| format!("environment variable {var} (the token) is not set"))?;
        return Ok(Some(Secret(token.trim().to_owned())));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_never_printed() {
        let s = Secret("hunter2".into());
        assert_eq!(format!("{s:?}"), "Secret(redacted)");
        let err = read_token(None, Some("MONITOR_TEST_NO_SUCH_VAR")).unwrap_err();
        assert!(err.contains("MONITOR_TEST_NO_SUCH_VAR"));
    }
}
