//! Who may do what: named bearer tokens with scopes, checked the same way for REST and gRPC.
//!
//! A token is configured by its SHA-256 (never the token itself in a file), or read at start from
//! a file or an environment variable (a mounted Kubernetes Secret). A presented token is compared
//! with every token already seen, then (if none) hashed and compared with every configured digest,
//! each comparison in constant time (`subtle`) and none ending the loop early, so how much of a
//! token matched does not show in the time taken.
//!
//! The rule for a call that needs `scope`:
//! - a token that matches none is refused (401), whatever the scope;
//! - a token that holds the scope is let through, and its name is the actor of any change;
//! - a scope that no configured token holds is open: `infer` to everyone, every other scope to
//!   loopback clients only while `trust_loopback` (the default) is on, and to no one when it is off;
//! - otherwise: no token is 401, a token without the scope 403.
//!
//! With nothing configured, a call that needs no token costs one branch: `infer` is open and no
//! header is read.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Inference, and the models' metadata and readiness.
    Infer,
    /// Posting ground-truth labels.
    Labels,
    /// Reports, drift, the audit, the cluster's state: everything the console shows.
    Read,
    /// Promote, roll back, set challengers, load, unload.
    Change,
}

impl Scope {
    pub const ALL: [Self; 4] = [Self::Infer, Self::Labels, Self::Read, Self::Change];

    pub fn name(self) -> &'static str {
        match self {
            Self::Infer => "infer",
            Self::Labels => "labels",
            Self::Read => "read",
            Self::Change => "change",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// `[auth]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// `[[auth.tokens]]`: one entry per actor.
    #[serde(default)]
    pub tokens: Vec<TokenSettings>,
    /// A scope no token holds answers loopback clients (true), or no one (false: production).
    #[serde(default = "yes")]
    pub trust_loopback: bool,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self { tokens: Vec::new(), trust_loopback: true }
    }
}

fn yes() -> bool {
    true
}

/// One `[[auth.tokens]]` entry: a name, exactly one of `sha256`, `token_file` and `token_env`, and
/// its scopes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSettings {
    /// The actor's name, as the audit shows it.
    pub name: String,
    /// The token's SHA-256 in hex (`printf %s "$TOKEN" | sha256sum`).
    #[serde(default)]
    pub sha256: Option<String>,
    /// A file holding the token (a mounted Secret); read at start, surrounding whitespace ignored.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// An environment variable holding the token; `GAUNTLET_TOKEN_<NAME>` by convention (variables
    /// so named are never read as configuration keys).
    #[serde(default)]
    pub token_env: Option<String>,
    pub scopes: Vec<Scope>,
}

impl AuthSettings {
    /// The first key that is wrong, with why (for `Config::validate`).
    pub fn invalid(&self) -> Option<(String, String)> {
        let mut names = std::collections::HashSet::new();
        for (i, token) in self.tokens.iter().enumerate() {
            let key = |field: &str| format!("tokens[{i}].{field}");
            if token.name.trim().is_empty() || token.name.len() > 64 {
                return Some((key("name"), "must be a name of 1 to 64 characters".into()));
            }
            if !names.insert(token.name.as_str()) {
                return Some((key("name"), format!("{} names two tokens", token.name)));
            }
            let sources = [token.sha256.is_some(), token.token_file.is_some(), token.token_env.is_some()];
            if sources.iter().filter(|&&s| s).count() != 1 {
                return Some((key("sha256"), "give exactly one of sha256, token_file and token_env".into()));
            }
            if let Some(hex) = &token.sha256
                && !(hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Some((key("sha256"), "must be the token's SHA-256: 64 hex digits".into()));
            }
            if token.scopes.is_empty() {
                return Some((key("scopes"), "must name at least one of infer, labels, read, change".into()));
            }
        }
        None
    }
}

/// Who made a call, as the audit names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    /// A configured token, by its name.
    Token(Arc<str>),
    /// A loopback client in a scope no token holds.
    Loopback,
    /// Anyone: `infer` with no token holding it.
    Anyone,
}

impl Actor {
    pub fn name(&self) -> &str {
        match self {
            Self::Token(name) => name,
            Self::Loopback => "loopback",
            Self::Anyone => "anonymous",
        }
    }
}

/// Why a call is refused. The messages name the scope, never a token or its digest.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// No token where one is needed, or one that matches none (401, UNAUTHENTICATED).
    Unauthenticated(String),
    /// A valid token without the scope, or a loopback-only scope from elsewhere (403, PERMISSION_DENIED).
    Forbidden(String),
}

impl From<Denied> for crate::error::Error {
    fn from(denied: Denied) -> Self {
        use crate::error::ErrorKind;
        match denied {
            Denied::Unauthenticated(message) => Self::new(ErrorKind::Unauthorized, message),
            Denied::Forbidden(message) => Self::new(ErrorKind::Forbidden, message),
        }
    }
}

/// What let a call through.
enum Grant<'a> {
    Token(&'a Entry),
    Loopback,
    Anyone,
}

struct Entry {
    name: Arc<str>,
    digest: [u8; 32],
    scopes: u8,
    /// The token itself, once a call presented it (or read from a file or the environment at
    /// start): compared directly, in constant time for its length, so a call with a known token
    /// costs no hash. Measured (callgrind, request threads): 60,055 instructions per request with
    /// a SHA-256 on every call against 55,141 with no token; benches/README.md has the figure now.
    known: OnceLock<Box<[u8]>>,
}

/// The configured tokens, ready to check calls against.
pub struct Access {
    tokens: Vec<Entry>,
    /// Scopes no token holds.
    open: u8,
    trust_loopback: bool,
}

impl Access {
    /// From `[auth]` and the older `admin_token` (one token named `admin` with `read` and `change`).
    /// Reads `token_file`s and `token_env`s now: a missing one stops the start with its name.
    pub fn new(settings: &AuthSettings, admin_token: Option<&Secret>) -> anyhow::Result<Self> {
        use sha2::{Digest, Sha256};
        let mut tokens = Vec::new();
        for token in &settings.tokens {
            let known = OnceLock::new();
            let digest: [u8; 32] = if let Some(hex) = &token.sha256 {
                let mut digest = [0; 32];
                hex::decode_to_slice(hex, &mut digest)
                    .map_err(|e| anyhow::anyhow!("auth token {}: sha256: {e}", token.name))?;
                digest
            } else {
                let secret = if let Some(path) = &token.token_file {
                    std::fs::read_to_string(path).map_err(|e| {
                        anyhow::anyhow!("auth token {}: cannot read token_file {}: {e}", token.name, path.display())
                    })?
                } else {
                    let var = token.token_env.as_deref().unwrap_or_default();
                    std::env::var(var)
                        .map_err(|_| anyhow::anyhow!("auth token {}: token_env {var} is not set", token.name))?
                };
                let secret = secret.trim();
                anyhow::ensure!(!secret.is_empty(), "auth token {}: the token is empty", token.name);
                let _ = known.set(Box::from(secret.as_bytes()));
                Sha256::digest(secret.as_bytes()).into()
            };
            let scopes = token.scopes.iter().fold(0, |bits, s| bits | s.bit());
            tokens.push(Entry { name: Arc::from(token.name.as_str()), digest, scopes, known });
        }
        if let Some(admin) = admin_token {
            anyhow::ensure!(
                !tokens.iter().any(|t| &*t.name == "admin"),
                "admin_token is the token named admin: remove one of the two"
            );
            let scopes = Scope::Read.bit() | Scope::Change.bit();
            let digest = Sha256::digest(admin.expose().as_bytes()).into();
            let known = OnceLock::from(Box::from(admin.expose().as_bytes()));
            tokens.push(Entry { name: Arc::from("admin"), digest, scopes, known });
        }
        let held = tokens.iter().fold(0, |bits, t| bits | t.scopes);
        Ok(Self { tokens, open: !held, trust_loopback: settings.trust_loopback })
    }

    /// Whether `scope` is open to every client, so a call needs no header read at all.
    fn open_to_all(&self, scope: Scope) -> bool {
        scope == Scope::Infer && self.open & scope.bit() != 0
    }

    /// The inference call's check, for REST and gRPC alike: loopback is no exception, and while
    /// `infer` is open a call without a token costs one branch.
    pub fn allows_inference(&self, authorization: Option<&[u8]>) -> Result<(), Denied> {
        if authorization.is_none() && self.open_to_all(Scope::Infer) {
            return Ok(());
        }
        self.allows(authorization, false, Scope::Infer)
    }

    /// The scopes that answer without a token: to say so at start on a non-loopback address.
    pub fn open_scopes(&self) -> Vec<Scope> {
        Scope::ALL
            .into_iter()
            .filter(|s| self.open & s.bit() != 0 && (*s == Scope::Infer || self.trust_loopback))
            .collect()
    }

    /// Checks a call that needs `scope`: `authorization` is the header's (or gRPC metadata's)
    /// value, `loopback` whether the client is on loopback.
    pub fn check(&self, authorization: Option<&[u8]>, loopback: bool, scope: Scope) -> Result<Actor, Denied> {
        Ok(match self.grant(authorization, loopback, scope)? {
            Grant::Token(entry) => Actor::Token(Arc::clone(&entry.name)),
            Grant::Loopback => Actor::Loopback,
            Grant::Anyone => Actor::Anyone,
        })
    }

    /// `check` for a call that records no actor (inference): no name is shared.
    pub fn allows(&self, authorization: Option<&[u8]>, loopback: bool, scope: Scope) -> Result<(), Denied> {
        self.grant(authorization, loopback, scope).map(drop)
    }

    fn grant(&self, authorization: Option<&[u8]>, loopback: bool, scope: Scope) -> Result<Grant<'_>, Denied> {
        let presented =
            match authorization {
                None => None,
                Some(value) => Some(bearer(value).ok_or_else(|| {
                    Denied::Unauthenticated("the Authorization header must be `Bearer <token>`".into())
                })?),
            };
        let token = match presented {
            None => None,
            Some(presented) => Some(
                self.find(presented)
                    .ok_or_else(|| Denied::Unauthenticated("the bearer token matches no configured token".into()))?,
            ),
        };
        if let Some(token) = token
            && token.scopes & scope.bit() != 0
        {
            return Ok(Grant::Token(token));
        }
        if self.open & scope.bit() != 0 {
            if scope == Scope::Infer {
                return Ok(Grant::Anyone);
            }
            if self.trust_loopback && loopback {
                return Ok(Grant::Loopback);
            }
            return Err(Denied::Forbidden(if self.trust_loopback {
                format!("no token holds the {} scope, so it answers loopback clients only", scope.name())
            } else {
                format!("no token holds the {} scope and auth.trust_loopback is off: it answers no one", scope.name())
            }));
        }
        match token {
            None => Err(Denied::Unauthenticated(format!(
                "this needs a bearer token with the {} scope (Authorization: Bearer <token>)",
                scope.name()
            ))),
            Some(token) => {
                Err(Denied::Forbidden(format!("token {} does not hold the {} scope", token.name, scope.name())))
            }
        }
    }

    /// The entry the presented token is. Every entry is compared, without an early exit: first the
    /// tokens already seen, byte for byte; failing that, every digest with the presented one's (and
    /// the token is remembered for its entry).
    fn find(&self, presented: &[u8]) -> Option<&Entry> {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        let mut found = None;
        for entry in &self.tokens {
            if entry.known.get().is_some_and(|known| bool::from(known.ct_eq(presented))) {
                found = Some(entry);
            }
        }
        if found.is_some() {
            return found;
        }
        let digest = Sha256::digest(presented);
        for entry in &self.tokens {
            if bool::from(entry.digest.ct_eq(digest.as_slice())) {
                found = Some(entry);
            }
        }
        if let Some(entry) = found {
            let _ = entry.known.set(Box::from(presented));
        }
        found
    }
}

/// The token of `Bearer <token>` (the scheme's case ignored, as RFC 7235 has it).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    (scheme.eq_ignore_ascii_case(b"bearer ") && !rest.is_empty()).then_some(rest.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(token: &str) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    fn token(name: &str, secret: &str, scopes: &[Scope]) -> TokenSettings {
        TokenSettings {
            name: name.into(),
            sha256: Some(sha(secret)),
            token_file: None,
            token_env: None,
            scopes: scopes.to_vec(),
        }
    }

    fn bearer_of(secret: &str) -> Vec<u8> {
        format!("Bearer {secret}").into_bytes()
    }

    #[test]
    fn nothing_configured_opens_infer_to_all_and_the_rest_to_loopback() {
        let access = Access::new(&AuthSettings::default(), None).unwrap();
        assert!(access.open_to_all(Scope::Infer));
        assert_eq!(access.check(None, false, Scope::Infer), Ok(Actor::Anyone));
        for scope in [Scope::Labels, Scope::Read, Scope::Change] {
            assert_eq!(access.check(None, true, scope), Ok(Actor::Loopback));
            assert!(matches!(access.check(None, false, scope), Err(Denied::Forbidden(_))));
        }
        // A token that matches nothing is refused even where none is needed.
        assert!(matches!(access.check(Some(&bearer_of("x")), true, Scope::Infer), Err(Denied::Unauthenticated(_))));
    }

    #[test]
    fn scopes_decide_and_the_actor_is_the_tokens_name() {
        let settings = AuthSettings {
            tokens: vec![token("app", "a-secret", &[Scope::Infer]), token("labeller", "l-secret", &[Scope::Labels])],
            trust_loopback: false,
        };
        let access = Access::new(&settings, None).unwrap();
        assert!(!access.open_to_all(Scope::Infer));
        assert_eq!(access.check(Some(&bearer_of("a-secret")), false, Scope::Infer), Ok(Actor::Token("app".into())));
        assert!(matches!(access.check(None, true, Scope::Infer), Err(Denied::Unauthenticated(_))));
        assert!(matches!(access.check(Some(&bearer_of("a-secret")), false, Scope::Labels), Err(Denied::Forbidden(_))));
        assert!(matches!(
            access.check(Some(&bearer_of("wrong")), false, Scope::Labels),
            Err(Denied::Unauthenticated(_))
        ));
        assert_eq!(access.check(Some(b"bearer l-secret"), false, Scope::Labels), Ok(Actor::Token("labeller".into())));
        // Read and change: no token holds them and loopback is not trusted.
        assert!(matches!(access.check(None, true, Scope::Read), Err(Denied::Forbidden(_))));
        assert!(matches!(access.check(Some(b"Basic abc"), true, Scope::Read), Err(Denied::Unauthenticated(_))));
        assert_eq!(access.open_scopes(), Vec::<Scope>::new());
    }

    #[test]
    fn the_admin_token_is_read_and_change() {
        let admin = Secret::from("old-token".to_owned());
        let access = Access::new(&AuthSettings::default(), Some(&admin)).unwrap();
        for scope in [Scope::Read, Scope::Change] {
            assert_eq!(access.check(Some(&bearer_of("old-token")), false, scope), Ok(Actor::Token("admin".into())));
            assert!(matches!(access.check(None, true, scope), Err(Denied::Unauthenticated(_))));
        }
        assert_eq!(access.check(None, true, Scope::Labels), Ok(Actor::Loopback));
        assert_eq!(access.open_scopes(), vec![Scope::Infer, Scope::Labels]);
    }

    #[test]
    fn tokens_come_from_files_and_the_environment_and_bad_entries_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-a-file\n").unwrap();
        let settings = AuthSettings {
            tokens: vec![TokenSettings {
                name: "ci".into(),
                sha256: None,
                token_file: Some(file),
                token_env: None,
                scopes: vec![Scope::Read],
            }],
            trust_loopback: true,
        };
        assert_eq!(settings.invalid(), None);
        let access = Access::new(&settings, None).unwrap();
        assert_eq!(access.check(Some(&bearer_of("from-a-file")), false, Scope::Read), Ok(Actor::Token("ci".into())));
        let mut two = settings.clone();
        two.tokens[0].sha256 = Some(sha("x"));
        assert_eq!(two.invalid().unwrap().0, "tokens[0].sha256");
        let mut short = token("x", "y", &[Scope::Read]);
        short.sha256 = Some("abc".into());
        let bad = AuthSettings { tokens: vec![short], trust_loopback: true };
        assert!(bad.invalid().unwrap().1.contains("64 hex digits"));
        let unset = AuthSettings {
            tokens: vec![TokenSettings {
                name: "env".into(),
                sha256: None,
                token_file: None,
                token_env: Some("GAUNTLET_TEST_TOKEN_THAT_IS_NOT_SET".into()),
                scopes: vec![Scope::Read],
            }],
            trust_loopback: true,
        };
        let error = Access::new(&unset, None).err().unwrap().to_string();
        assert!(error.contains("GAUNTLET_TEST_TOKEN_THAT_IS_NOT_SET"), "{error}");
    }
}
