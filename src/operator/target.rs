//! Where host work happens: a host over SSH (its agent), or this very machine (local mode, no
//! SSH, the same host-side code called in-process). Phases talk to a [`Target`] and never care which.

use std::path::Path;

use serde::de::DeserializeOwned;

use super::agent::{self, AgentError, AnswerReader};
use crate::protocol::{Compression, FileReceived, ReceiveFile, Request};
use crate::transport::{sha256_hex, Session, TransportError};

pub enum Target {
    Ssh(Session),
    /// This machine; the name is the cluster file's host name.
    Local(String),
}

impl Target {
    pub fn host(&self) -> &str {
        match self {
            Target::Ssh(s) => s.host(),
            Target::Local(name) => name,
        }
    }

    /// One agent operation, answered by the host's agent or, locally, by the same code in-process.
    pub async fn call<T: DeserializeOwned>(
        &self,
        request: &Request,
        on_progress: &mut (dyn FnMut(&str) + Send),
    ) -> Result<T, AgentError> {
        match self {
            Target::Ssh(session) => agent::call(session, request, on_progress).await,
            Target::Local(name) => {
                let input = agent::request_line(request);
                let operation = request.operation();
                let (status, output) = tokio::task::spawn_blocking(move || {
                    let mut output = Vec::new();
                    let status = crate::host::serve(operation, &mut input.as_slice(), &mut output);
                    (status, output)
                })
                .await
                .map_err(|e| AgentError::Protocol {
                    host: name.clone(),
                    detail: format!("the local operation panicked: {e}"),
                    stderr: String::new(),
                })?;
                let mut reader = AnswerReader::default();
                for line in String::from_utf8_lossy(&output).lines() {
                    reader.line(line, on_progress);
                }
                reader.finish(name, status as u32, String::new())
            }
        }
    }

    /// sha256 of a file on the host; None when it does not exist.
    pub async fn file_sha256(&self, path: &str) -> Result<Option<String>, AgentError> {
        match self {
            Target::Ssh(session) => {
                let out = session.exec(&["sha256sum", path], &mut tokio::io::empty()).await?;
                let sum =
                    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string();
                Ok((out.status == 0 && sum.len() == 64).then_some(sum))
            }
            Target::Local(name) => match tokio::fs::File::open(path).await {
                Ok(mut file) => Ok(Some(sha256_hex(&mut file).await.map_err(|e| io_error(name, path, e))?)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io_error(name, path, e)),
            },
        }
    }

    /// Puts the payload at `dest` on the host, verified there against its sha256 before it
    /// replaces anything. Over SSH it travels zstd-compressed to the agent.
    pub async fn install_file(&self, payload: &Payload, dest: &str, mode: u32) -> Result<(), AgentError> {
        match self {
            Target::Ssh(session) => {
                let compressed = payload
                    .compressed()
                    .await
                    .map_err(|e| io_error(self.host(), &payload.path.display().to_string(), e))?;
                let request = Request::ReceiveFile(ReceiveFile {
                    path: dest.to_string(),
                    size: payload.size,
                    sha256: payload.sha256.clone(),
                    mode,
                    compression: Compression::Zstd,
                });
                let received: FileReceived =
                    agent::call_with_payload(session, &request, &mut compressed.as_slice(), &mut |_| {}).await?;
                debug_assert_eq!(received.sha256, payload.sha256);
                Ok(())
            }
            Target::Local(name) => {
                let (source, sha256, dest_path) = (payload.path.clone(), payload.sha256.clone(), dest.to_string());
                let name2 = name.clone();
                tokio::task::spawn_blocking(move || {
                    crate::fsutil::install_verified(&source, &sha256, Path::new(&dest_path), mode)
                })
                .await
                .map_err(|e| AgentError::Protocol { host: name2, detail: e.to_string(), stderr: String::new() })?
                .map_err(|e| io_error(name, dest, e))
            }
        }
    }

    pub async fn close(self) {
        if let Target::Ssh(session) = self {
            session.close().await;
        }
    }
}

fn io_error(host: &str, path: &str, source: std::io::Error) -> AgentError {
    AgentError::Transport(TransportError::Io { host: host.to_string(), context: path.to_string(), source })
}

/// A verified file on the operator's side, to be put on hosts. Compressed once, on first need,
/// and shared by every host's upload.
pub struct Payload {
    pub path: std::path::PathBuf,
    pub sha256: String,
    pub size: u64,
    compressed: tokio::sync::OnceCell<std::sync::Arc<Vec<u8>>>,
}

impl Payload {
    pub fn new(path: std::path::PathBuf, sha256: String, size: u64) -> Payload {
        Payload { path, sha256, size, compressed: tokio::sync::OnceCell::new() }
    }

    async fn compressed(&self) -> std::io::Result<std::sync::Arc<Vec<u8>>> {
        self.compressed
            .get_or_try_init(|| async {
                let path = self.path.clone();
                // Level 1: every host waits for this, and level 3 would buy only a tenth less data.
                let data = tokio::task::spawn_blocking(move || zstd::encode_all(std::fs::File::open(path)?, 1))
                    .await
                    .map_err(std::io::Error::other)??;
                Ok(std::sync::Arc::new(data))
            })
            .await
            .cloned()
    }
}
