//! How the helper's modules say what went wrong: each has its own error enum (thiserror) that
//! implements [`Failure`], so that its kind and whether a retry can help travel to the operator
//! ([`crate::protocol::WireError`]). [`HostError`] is the common currency at the serve boundary.

use crate::protocol::{ErrorKind, WireError};

/// An error of a host module: its words (Display), its kind, and whether a retry can help.
pub trait Failure: std::error::Error {
    fn kind(&self) -> ErrorKind;
    fn retryable(&self) -> bool {
        self.kind().retryable_by_default()
    }
}

/// Any module's failure, as the serve boundary writes it (after removing secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError {
    pub kind: ErrorKind,
    pub message: String,
    pub retryable: bool,
}

impl HostError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> HostError {
        HostError { kind, message: message.into(), retryable: kind.retryable_by_default() }
    }

    pub fn bad_request(message: impl Into<String>) -> HostError {
        HostError::new(ErrorKind::BadRequest, message)
    }

    pub fn into_wire(self) -> WireError {
        WireError { kind: self.kind, message: self.message, retryable: self.retryable }
    }
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: Failure> From<E> for HostError {
    fn from(e: E) -> HostError {
        HostError { kind: e.kind(), retryable: e.retryable(), message: e.to_string() }
    }
}

/// An I/O error in a message: the system's words ("Permission denied"), without "(os error 13)".
pub fn describe_io(err: &std::io::Error) -> String {
    let s = err.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}
