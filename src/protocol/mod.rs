//! The protocol between the operator side and the host helper (`k3node host <operation>`).
//!
//! The operator runs the helper over an SSH exec channel (or, in local mode and in tests, calls
//! the same code in-process). Its standard input carries exactly one JSON request line, an
//! [`Envelope`] around the operation's arguments, followed by the operation's upload stream when
//! (and only when) the operation declares one ([`Operation::UPLOAD`]). Parameters never travel on
//! the command line, so secrets stay out of process listings.
//!
//! Its standard output carries [`AnswerLine`]s: any number of progress lines, the frames of a
//! download when the operation declares one, then exactly one result or error line.
//!
//! Invariants:
//! - A request means exactly one thing: a JSON object (never serde's sequence form), no unknown
//!   fields anywhere, no defaulted safety fields, nothing after it but a declared upload.
//!   [`decode_request`] checks all of that by re-encoding what it decoded.
//! - A call and its answer are paired at compile time: [`Operation::Answer`].
//! - Streams are framed ([`frame`]) so that a truncated stream is an error, never a short file.
//! - Errors carry an [`ErrorKind`] and whether a retry can help, from the host module that failed
//!   up to the operator's per-host result and exit status.

pub mod files;
pub mod frame;
pub mod health;
pub mod images;
pub mod k3s;
pub mod manifests;
pub mod node;
pub mod preflight;
pub mod secret;
pub mod snapshot;
mod unique_keys;

pub use secret::{Scrubber, Secret};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Bumped whenever a request or answer changes shape; a mismatch makes the operator replace the helper.
pub const PROTOCOL_VERSION: u32 = 8;

/// Where a real run installs the helper on every host (and where the node daemon will run from).
pub const HELPER_PATH: &str = "/usr/local/bin/k3node";

/// What the helper of this build can do beyond the operations every version has; the operator
/// checks `hello`'s list before it relies on one.
pub const CAPABILITIES: &[&str] = &[
    "framed-upload",
    "framed-download",
    "host-lock",
    "file-digest",
    "snapshots",
    "snapshot-schedule",
    "node-daemon",
    "images",
];

/// One operation of the host helper: its arguments are `Self`, its answer `Self::Answer`.
pub trait Operation: Serialize + DeserializeOwned + Send + Sync {
    /// The name on the helper's command line (`k3node host <NAME>`), also repeated in the envelope.
    const NAME: &'static str;
    /// Whether a framed stream follows the request on stdin (operator -> host).
    const UPLOAD: bool;
    /// Whether the answer carries a framed stream before the result (host -> operator).
    const DOWNLOAD: bool;
    type Answer: Serialize + DeserializeOwned + Send;

    /// True when this request changes the host: it then runs under the host lock.
    fn mutates(&self) -> bool;

    /// Secret values of the request, removed from every line the helper writes back.
    fn secrets(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The request line: the operation's name, the run's lock token when the run holds the host
/// lock, and the operation's arguments.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Envelope<T> {
    pub op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<String>,
    pub args: T,
}

/// The request line for `request` (with its newline).
pub fn encode_request<O: Operation>(request: &O, lock: Option<&str>) -> Vec<u8> {
    let envelope = Envelope { op: O::NAME.to_string(), lock: lock.map(str::to_string), args: request };
    let mut line = serde_json::to_vec(&envelope).expect("requests always serialize");
    line.push(b'\n');
    line
}

/// Decodes a request line for operation `O`, refusing anything that could mean more than one
/// thing: not an object, unknown or missing fields, another operation's name, or any form that
/// does not re-encode to the same JSON (serde's sequence form of a struct, for one).
pub fn decode_request<O: Operation>(line: &str) -> Result<Envelope<O>, String> {
    // A JSON value keeps the last of a key written twice, so the re-encoding below cannot see it.
    serde_json::from_str::<unique_keys::UniqueKeys>(line.trim_end())
        .map_err(|e| format!("the request line is not JSON with each key once: {e}"))?;
    let raw: serde_json::Value =
        serde_json::from_str(line.trim_end()).map_err(|e| format!("the request line is not JSON: {e}"))?;
    if !raw.is_object() {
        return Err("the request line must be a JSON object".into());
    }
    let envelope: Envelope<O> = serde_json::from_value(raw.clone())
        .map_err(|e| format!("the request line is not a valid {} request: {e}", O::NAME))?;
    if envelope.op != O::NAME {
        return Err(format!("the command line says {} but the request is {:?}", O::NAME, envelope.op));
    }
    let again = serde_json::to_value(&envelope).map_err(|e| format!("the request cannot be re-encoded: {e}"))?;
    if again != raw {
        return Err(format!(
            "the {} request is ambiguous: it does not re-encode to the same JSON (sequence forms, nulls \
             for absent values and duplicate keys are refused)",
            O::NAME
        ));
    }
    Ok(envelope)
}

/// One line written by the helper on stdout.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AnswerLine {
    Progress {
        message: String,
    },
    /// A long-lived operation (the host lock) is in place and waits for its stdin to end.
    Ready,
    /// `len` raw bytes of the download follow this line.
    Data {
        len: u64,
    },
    /// The download is complete: its total size and sha256, checked by the receiver.
    End {
        size: u64,
        sha256: String,
    },
    Result {
        value: serde_json::Value,
    },
    Error(WireError),
}

/// An error as it travels: what kind of failure, in words, and whether trying again can help.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WireError {
    pub kind: ErrorKind,
    pub message: String,
    /// True when the same request may succeed later (a busy lock, a timeout, a server not up yet).
    pub retryable: bool,
}

/// Why an operation failed, as the operator reports it per host (kebab-case in JSON output).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The request could not be read or understood (a bug or a version skew, never the host's fault).
    BadRequest,
    /// Bytes received do not have the size or sha256 announced.
    ChecksumMismatch,
    /// What the operation needs is not on the host (k3s not installed, not a server, no such file).
    NotInstalled,
    /// Another run holds the host lock, or the host is in a state that conflicts (other role).
    Conflict,
    /// A deadline passed.
    Timeout,
    /// A service or API the operation needs does not answer (yet).
    Unavailable,
    /// k3s did not start; the message carries the likely cause and the journal.
    StartFailed,
    /// The disk is full.
    NoSpace,
    /// Anything else the host refused or failed to do.
    Failed,
}

impl ErrorKind {
    /// Whether repeating the request later can help, when the failing module does not know better.
    pub fn retryable_by_default(self) -> bool {
        matches!(self, ErrorKind::Conflict | ErrorKind::Timeout | ErrorKind::Unavailable)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad-request",
            ErrorKind::ChecksumMismatch => "checksum-mismatch",
            ErrorKind::NotInstalled => "not-installed",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::StartFailed => "start-failed",
            ErrorKind::NoSpace => "no-space",
            ErrorKind::Failed => "failed",
        }
    }

    /// The kind of an I/O error: a full disk is its own kind, everything else a plain failure.
    pub fn of_io(error: &std::io::Error) -> ErrorKind {
        match error.raw_os_error() {
            Some(nix::libc::ENOSPC) | Some(nix::libc::EDQUOT) => ErrorKind::NoSpace,
            // Layers that rewrap the error (tar, zstd) keep its kind but lose the errno.
            _ if matches!(error.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded) => {
                ErrorKind::NoSpace
            }
            _ if error.kind() == std::io::ErrorKind::TimedOut => ErrorKind::Timeout,
            _ => ErrorKind::Failed,
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `hello`: who answers, so that the operator can tell whether the helper is this very build.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Hello {}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HelloAnswer {
    pub version: String,
    pub protocol: u32,
    /// sha256 of the helper's own executable, so that the operator can tell two builds of one version apart.
    pub binary_sha256: String,
    /// Debian-style architecture name (amd64, arm64, armhf, s390x).
    pub arch: String,
    /// What this build can do ([`CAPABILITIES`]).
    pub capabilities: Vec<String>,
}

impl Operation for Hello {
    const NAME: &'static str = "hello";
    const UPLOAD: bool = false;
    const DOWNLOAD: bool = false;
    type Answer = HelloAnswer;
    fn mutates(&self) -> bool {
        false
    }
}

/// `lock`: holds the host lock until the operator closes the helper's stdin (or goes away).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HoldLock {
    pub holder: LockHolder,
}

/// Who holds a host's lock: shown to anyone who finds it taken.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LockHolder {
    /// A random token of the run; the run's own operations carry it in their envelope.
    pub token: String,
    /// What the run does (`up`, `reset`, `snapshot`...).
    pub operation: String,
    /// Where the run comes from (`user@machine`, or `timer` for a scheduled job).
    pub from: String,
    /// When the lock was taken, RFC 3339 UTC.
    pub started_at: String,
    /// The process holding the lock on the host (filled in by the host).
    #[serde(default)]
    pub pid: u32,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` from {}, started at {} (pid {} on the host)",
            self.operation, self.from, self.started_at, self.pid
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockReleased {}

impl Operation for HoldLock {
    const NAME: &'static str = "lock";
    const UPLOAD: bool = false;
    const DOWNLOAD: bool = false;
    type Answer = LockReleased;
    // It takes the lock itself; it must not wait for the lock it is about to take.
    fn mutates(&self) -> bool {
        false
    }
}

/// Debian's name for a kernel machine type (`uname -m`), as k3s names its release artifacts.
pub fn debian_arch(machine: &str) -> Option<&'static str> {
    match machine {
        "x86_64" | "amd64" => Some("amd64"),
        "aarch64" | "arm64" => Some("arm64"),
        "armv7l" | "armv8l" | "armhf" => Some("armhf"),
        "s390x" => Some("s390x"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::k3s::ResetRequest;

    #[test]
    fn a_request_round_trips_through_its_line() {
        let line = encode_request(&ResetRequest { dry_run: true, keep_helper: false }, Some("tok"));
        let text = String::from_utf8(line).unwrap();
        assert_eq!(text, "{\"op\":\"reset\",\"lock\":\"tok\",\"args\":{\"dry_run\":true,\"keep_helper\":false}}\n");
        let envelope = decode_request::<ResetRequest>(&text).unwrap();
        assert_eq!(envelope.lock.as_deref(), Some("tok"));
        assert!(envelope.args.dry_run);
    }

    #[test]
    fn ambiguous_requests_are_refused() {
        let cases = [
            // serde's sequence form of the envelope and of the arguments
            (r#"["reset",null,{"dry_run":false,"keep_helper":false}]"#, "JSON object"),
            (r#"{"op":"reset","args":[false,false]}"#, "ambiguous"),
            // a misspelt safety field next to the real one
            (r#"{"op":"reset","args":{"dryrun":true,"dry_run":false,"keep_helper":false}}"#, "unknown field"),
            // a safety field left out is never defaulted
            (r#"{"op":"reset","args":{"keep_helper":false}}"#, "missing field `dry_run`"),
            (r#"{"op":"reset","extra":1,"args":{"dry_run":true,"keep_helper":false}}"#, "unknown field"),
            (r#"{"op":"hello","args":{"dry_run":true,"keep_helper":false}}"#, "command line says reset"),
            (r#"{"op":"reset","lock":null,"args":{"dry_run":true,"keep_helper":false}}"#, "ambiguous"),
            // a safety field written twice: a JSON value would keep the last one
            (r#"{"op":"reset","args":{"dry_run":true,"keep_helper":false,"dry_run":false}}"#, "key once"),
            (r#"{"op":"reset","op":"reset","args":{"dry_run":true,"keep_helper":false}}"#, "duplicate key \"op\""),
        ];
        for (line, expected) in cases {
            let err = decode_request::<ResetRequest>(line).unwrap_err();
            assert!(err.contains(expected), "{line}: {err}");
        }
    }

    #[test]
    fn error_kinds_read_as_kebab_case_words() {
        assert_eq!(serde_json::to_string(&ErrorKind::StartFailed).unwrap(), "\"start-failed\"");
        assert_eq!(ErrorKind::NoSpace.to_string(), "no-space");
        let enospc = std::io::Error::from_raw_os_error(nix::libc::ENOSPC);
        assert_eq!(ErrorKind::of_io(&enospc), ErrorKind::NoSpace);
        assert!(ErrorKind::Conflict.retryable_by_default() && !ErrorKind::BadRequest.retryable_by_default());
    }

    #[test]
    fn answer_lines_are_tagged_objects() {
        let line = AnswerLine::Error(WireError { kind: ErrorKind::Conflict, message: "held".into(), retryable: true });
        assert_eq!(
            serde_json::to_string(&line).unwrap(),
            r#"{"type":"error","kind":"conflict","message":"held","retryable":true}"#
        );
        assert_eq!(serde_json::to_string(&AnswerLine::Data { len: 3 }).unwrap(), r#"{"type":"data","len":3}"#);
    }
}
