//! The protocol between the operator side and the host agent (`k3node host <operation>`).
//!
//! The operator runs the agent over an SSH exec channel. It writes one JSON request line on the
//! agent's stdin (parameters never travel on the command line, so secrets stay out of process
//! listings), and the agent answers on stdout with
//! JSON lines: any number of progress events, then exactly one result or error line.

pub mod k3s;
pub mod preflight;
mod secret;

pub use secret::Secret;

use serde::{Deserialize, Serialize};

/// Bumped whenever a request or answer changes shape; a mismatch makes the operator replace the agent.
pub const PROTOCOL_VERSION: u32 = 3;

/// Where the operator installs the agent on every host.
pub const AGENT_PATH: &str = "/usr/local/bin/k3node";

/// One line written by the agent on stdout.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentLine {
    Progress { message: String },
    Result { value: serde_json::Value },
    Error { kind: AgentErrorKind, message: String },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AgentErrorKind {
    /// The request line could not be read or understood.
    BadRequest,
    /// Bytes received do not have the size or sha256 the operator announced.
    ChecksumMismatch,
    /// Anything the host refused or failed to do (I/O, permissions, a command that failed).
    Failed,
}

/// The operations the agent performs, one per `k3node host <operation>` call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Hello,
    Preflight(preflight::PreflightRequest),
    InstallK3s(k3s::InstallRequest),
    ReadToken,
    Kubeconfig,
    Nodes,
    Reset(k3s::ResetRequest),
    /// Followed on stdin by the file's bytes (zstd-compressed when the request says so).
    ReceiveFile(ReceiveFile),
}

impl Request {
    /// The operation name used on the agent's command line.
    pub fn operation(&self) -> &'static str {
        match self {
            Request::Hello => "hello",
            Request::Preflight(_) => "preflight",
            Request::InstallK3s(_) => "install-k3s",
            Request::ReadToken => "read-token",
            Request::Kubeconfig => "kubeconfig",
            Request::Nodes => "nodes",
            Request::Reset(_) => "reset",
            Request::ReceiveFile(_) => "receive-file",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    pub version: String,
    pub protocol: u32,
    /// sha256 of the agent's own executable, so that the operator can tell two builds of one version apart.
    pub binary_sha256: String,
    /// Debian-style architecture name (amd64, arm64, armhf, s390x).
    pub arch: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Zstd,
}

/// A file streamed to the host: written to a temp file beside `path`, checked against `size` and
/// `sha256` (of the uncompressed bytes), then renamed into place with `mode`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReceiveFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub mode: u32,
    pub compression: Compression,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileReceived {
    pub path: String,
    /// sha256 of what was written, as the host computed it.
    pub sha256: String,
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
