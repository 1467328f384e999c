//! A value that must never reach output, logs or errors: join tokens, kubeconfig keys, env files.

use serde::{Deserialize, Serialize};

/// Serializes as the plain string (it travels inside the SSH channel, to the agent's stdin), but
/// formats as `<redacted>` with `{}` and `{:?}` so that no log line or error can carry it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself; every call site is a place where the secret is used, never shown.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_redacted_but_serializes_the_value() {
        let s = Secret::new("K10abc::server:pw");
        assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"K10abc::server:pw\"");
    }
}
