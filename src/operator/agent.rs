//! Puts this very binary on a host as its agent, and talks to it.

use std::path::PathBuf;

use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::protocol::{debian_arch, AgentErrorKind, AgentLine, Hello, Request, AGENT_PATH, PROTOCOL_VERSION};
use crate::transport::{sha256_hex, Session, TransportError};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{host}: the agent refused the request ({kind:?}): {message}")]
    Refused { host: String, kind: AgentErrorKind, message: String },
    #[error("{host}: the agent's answer makes no sense ({detail}); stderr: {stderr}")]
    Protocol { host: String, detail: String, stderr: String },
    #[error("{host}: the host is {host_arch} but this k3node binary is built for {ours}; run k3node from a machine of the same architecture")]
    ArchMismatch { host: String, host_arch: String, ours: String },
    #[error("cannot read this k3node binary ({}) to upload it: {source}", path.display())]
    SelfBinary {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl AgentError {
    pub fn kind(&self) -> &'static str {
        match self {
            AgentError::Transport(e) => e.kind(),
            AgentError::Refused { .. } => "agent-refused",
            AgentError::Protocol { .. } => "agent-protocol",
            AgentError::ArchMismatch { .. } => "arch-mismatch",
            AgentError::SelfBinary { .. } => "self-binary",
        }
    }
}

/// The running k3node executable, hashed once per run.
#[derive(Debug, Clone)]
pub struct SelfBinary {
    pub path: PathBuf,
    pub sha256: String,
    pub arch: String,
}

impl SelfBinary {
    pub async fn current() -> Result<SelfBinary, AgentError> {
        let path = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
        let err = |source| AgentError::SelfBinary { path: path.clone(), source };
        let mut file = tokio::fs::File::open(&path).await.map_err(err)?;
        let sha256 = sha256_hex(&mut file).await.map_err(err)?;
        Ok(SelfBinary {
            path: path.clone(),
            sha256,
            arch: debian_arch(std::env::consts::ARCH).unwrap_or(std::env::consts::ARCH).to_string(),
        })
    }
}

/// What [`ensure_agent`] had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentInstall {
    UpToDate,
    Installed,
    Replaced,
}

/// Makes sure the host runs exactly this build as its agent: a hello answers with the agent's
/// protocol and hash; anything else (absent, older, another build) is replaced by an upload that
/// the host verifies before it renames the file into place.
pub async fn ensure_agent(session: &Session, me: &SelfBinary) -> Result<AgentInstall, AgentError> {
    let outcome = match call::<Hello>(session, &Request::Hello, &mut |_| {}).await {
        Ok(hello) if hello.protocol == PROTOCOL_VERSION && hello.binary_sha256 == me.sha256 => {
            return Ok(AgentInstall::UpToDate)
        }
        Ok(hello) => {
            tracing::info!(host = session.host(), version = %hello.version, "replacing outdated agent");
            check_arch(session, &hello.arch, me)?;
            AgentInstall::Replaced
        }
        Err(AgentError::Transport(e)) => return Err(AgentError::Transport(e)),
        Err(_) => {
            let out = session.exec_checked(&["uname", "-m"]).await?;
            let machine = String::from_utf8_lossy(&out.stdout).trim().to_string();
            check_arch(session, debian_arch(&machine).unwrap_or(&machine), me)?;
            AgentInstall::Installed
        }
    };
    let mut file = tokio::fs::File::open(&me.path)
        .await
        .map_err(|source| AgentError::SelfBinary { path: me.path.clone(), source })?;
    session.upload(&mut file, &me.sha256, AGENT_PATH, 0o755).await?;
    let hello: Hello = call(session, &Request::Hello, &mut |_| {}).await?;
    if hello.binary_sha256 != me.sha256 {
        return Err(AgentError::Protocol {
            host: session.host().into(),
            detail: format!("after the upload the agent still reports sha256 {}", hello.binary_sha256),
            stderr: String::new(),
        });
    }
    Ok(outcome)
}

fn check_arch(session: &Session, host_arch: &str, me: &SelfBinary) -> Result<(), AgentError> {
    if host_arch != me.arch {
        return Err(AgentError::ArchMismatch {
            host: session.host().into(),
            host_arch: host_arch.into(),
            ours: me.arch.clone(),
        });
    }
    Ok(())
}

/// Runs one agent operation: the request goes on stdin, progress lines go to `on_progress`, and
/// the single result line is decoded as `T`.
pub async fn call<T: DeserializeOwned>(
    session: &Session,
    request: &Request,
    on_progress: &mut (dyn FnMut(&str) + Send),
) -> Result<T, AgentError> {
    call_with_payload(session, request, &mut tokio::io::empty(), on_progress).await
}

/// Like [`call`], with `payload` streamed on stdin after the request line (uploads).
pub async fn call_with_payload<T: DeserializeOwned>(
    session: &Session,
    request: &Request,
    payload: &mut (dyn AsyncRead + Unpin + Send),
    on_progress: &mut (dyn FnMut(&str) + Send),
) -> Result<T, AgentError> {
    let line = request_line(request);
    let mut input = line.as_slice().chain(payload);
    let mut reader = AnswerReader::default();
    let out = session
        .exec_streaming(&[AGENT_PATH, "host", request.operation()], &mut input, &mut |line| {
            reader.line(line, on_progress)
        })
        .await?;
    reader.finish(session.host(), out.status, out.stderr_text())
}

/// The request as the agent reads it: one JSON line.
pub(crate) fn request_line(request: &Request) -> Vec<u8> {
    let mut input = serde_json::to_vec(request).expect("requests always serialize");
    input.push(b'\n');
    input
}

/// Collects an agent's stdout lines: progress is passed on, the one answer is kept.
#[derive(Default)]
pub(crate) struct AnswerReader {
    answer: Option<AgentLine>,
    garbage: Option<String>,
}

impl AnswerReader {
    pub(crate) fn line(&mut self, line: &str, on_progress: &mut (dyn FnMut(&str) + Send)) {
        match serde_json::from_str::<AgentLine>(line) {
            Ok(AgentLine::Progress { message }) => on_progress(&message),
            Ok(other) => self.answer = Some(other),
            Err(_) => self.garbage = Some(line.chars().take(200).collect()),
        }
    }

    pub(crate) fn finish<T: DeserializeOwned>(self, host: &str, status: u32, stderr: String) -> Result<T, AgentError> {
        let host = host.to_string();
        match self.answer {
            Some(AgentLine::Result { value }) => serde_json::from_value(value).map_err(|e| AgentError::Protocol {
                host,
                detail: format!("result does not decode: {e}"),
                stderr,
            }),
            Some(AgentLine::Error { kind, message }) => Err(AgentError::Refused { host, kind, message }),
            _ => Err(AgentError::Protocol {
                host,
                detail: match self.garbage {
                    Some(line) => format!("exit status {status}, unexpected output {line:?}"),
                    None => format!("exit status {status} and no result line"),
                },
                stderr,
            }),
        }
    }
}
