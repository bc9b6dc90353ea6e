//! The errors a request can end in. Each has one `ErrorKind`, which gives its metric label here and
//! its HTTP status in `http::error` (the one place that maps kinds to statuses).

use std::fmt;

/// What went wrong, from the caller's side of the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is malformed or does not fit the model's signature.
    InvalidInput,
    /// No such model, or no such version being served.
    NotFound,
    /// The body is larger than `max_request_bytes`.
    PayloadTooLarge,
    /// The path exists, but not for this method.
    MethodNotAllowed,
    /// The request conflicts with what is already there (a second label for one request).
    Conflict,
    /// What the request refers to existed but is gone (a label whose record was evicted).
    Gone,
    /// Understood but refused: a model version that failed a load step.
    Unprocessable,
    /// No or a wrong admin token.
    Unauthorized,
    /// The admin API without a configured token answers loopback clients only.
    Forbidden,
    /// A content encoding or type the gateway does not read.
    UnsupportedMediaType,
    /// Concurrency or queue limits are reached: try again shortly.
    Overloaded,
    /// The request did not finish within `request_timeout_ms`.
    Timeout,
    /// The gateway is not (or no longer) ready: starting or draining.
    Unavailable,
    /// The model failed or panicked on input the gateway accepted.
    ModelFailed,
    /// A bug: details are logged, never sent.
    Internal,
}

impl ErrorKind {
    /// The `outcome` / `kind` label in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::InvalidInput => "invalid_input",
            Self::NotFound => "not_found",
            Self::PayloadTooLarge => "payload_too_large",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::Gone => "gone",
            Self::Unprocessable => "unprocessable",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Overloaded => "overloaded",
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::ModelFailed => "model_failed",
            Self::Internal => "internal",
        }
    }

    /// Whether the client may see the message: internal details never leave the process.
    pub fn message_is_public(self) -> bool {
        !matches!(self, Self::Internal | Self::ModelFailed)
    }
}

/// An error a request ends in: its kind and a message that says what is wrong in the caller's terms.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}
