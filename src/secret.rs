//! A configured secret (the admin token, the webhook's bearer token): kept out of logs and `Debug`,
//! and compared in constant time.

use serde::Deserialize;

/// A value kept out of logs and `Debug` output.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this secret, in time that says nothing of either: both are hashed
    /// first (so their lengths do not show), then compared without an early exit (`subtle`).
    pub fn matches(&self, presented: &str) -> bool {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        let (a, b) = (Sha256::digest(presented.as_bytes()), Sha256::digest(self.0.as_bytes()));
        a.as_slice().ct_eq(b.as_slice()).into()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;

    #[test]
    fn secrets_compare_by_content_and_never_print() {
        let secret = Secret("s3cret".to_owned());
        assert!(secret.matches("s3cret"));
        assert!(!secret.matches("s3cres"));
        assert!(!secret.matches(""));
        assert_eq!(format!("{secret:?}"), "Secret(***)");
    }
}
