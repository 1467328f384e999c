//! How the operator reaches a host's helper.
//!
//! [`HostLink`] is the seam: it runs one `k3node host <operation>` exchange, bytes in and bytes
//! out. [`SshLink`] does it over the host's SSH session; [`InProcessLink`] calls the same host
//! code in this process, over the real machine (local mode) or a [`FakeSystem`] (tests).
//! [`Link`] is what phases use: typed calls (a request and its answer type paired at compile
//! time), streamed uploads and downloads, and the host lock, the same over every [`HostLink`].
//!
//! [`FakeSystem`]: crate::host::system::fake::FakeSystem

mod answer;
mod in_process;
mod ssh;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

pub use answer::{AnswerDecoder, Event};
pub use in_process::InProcessLink;
pub use ssh::SshLink;

use crate::protocol::frame::FrameEncoder;
use crate::protocol::{encode_request, ErrorKind, HoldLock, LockHolder, LockReleased, Operation};
use crate::transport::TransportError;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The helper ran and said why it failed.
    #[error("{host}: {message}")]
    Host { host: String, kind: ErrorKind, message: String, retryable: bool },
    #[error("{host}: the helper's answer makes no sense ({detail}); stderr: {stderr}")]
    Protocol { host: String, detail: String, stderr: String },
    /// A download arrived whole but is not what its end frame says: the source on the host is
    /// not what it was said to be (changed or damaged since its sha256 was recorded).
    #[error("{host}: the download is not what the host announced: {detail}")]
    DownloadMismatch { host: String, detail: String },
    #[error("{host}: the host is {host_arch} and there is no k3node build for it (this one is for {ours}); build one (`cargo build --release --target <{host_arch} target>`) and name it with K3NODE_HELPER_{} or put it beside k3node as k3node-{host_arch}", host_arch.to_ascii_uppercase())]
    ArchMismatch { host: String, host_arch: String, ours: String },
    #[error("{host}: the helper {} cannot run there: {detail}; it is linked against a newer glibc than the host has: use a static (musl) build of k3node (see README, \"Getting k3node\"), e.g. with K3NODE_HELPER_AMD64=/path/to/static/k3node", path.display())]
    HelperCannotRun { host: String, path: std::path::PathBuf, detail: String },
    #[error("cannot read this k3node binary ({}) to upload it: {source}", path.display())]
    SelfBinary {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Something on this side (a file to upload, a download's destination) failed.
    #[error("{host}: {what}: {source}")]
    Local {
        host: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl LinkError {
    /// The kind as the per-host result and `-o json` show it.
    pub fn kind(&self) -> &'static str {
        match self {
            LinkError::Transport(e) => e.kind(),
            LinkError::Host { kind, .. } => kind.as_str(),
            LinkError::Protocol { .. } => "helper-protocol",
            LinkError::DownloadMismatch { .. } => ErrorKind::ChecksumMismatch.as_str(),
            LinkError::ArchMismatch { .. } => "arch-mismatch",
            LinkError::HelperCannotRun { .. } => "helper-cannot-run",
            LinkError::SelfBinary { .. } => "self-binary",
            LinkError::Local { .. } => "local-io",
        }
    }

    /// Whether the same call may succeed later.
    pub fn retryable(&self) -> bool {
        match self {
            LinkError::Transport(_) => true,
            LinkError::Host { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// The host-side kind, when the helper answered with an error.
    pub fn host_kind(&self) -> Option<ErrorKind> {
        match self {
            LinkError::Host { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// How a helper process ended.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub status: u32,
    pub stderr: String,
}

/// One way to run the host helper.
#[async_trait]
pub trait HostLink: Send + Sync {
    /// The host's name in the cluster file.
    fn host(&self) -> &str;
    /// Whether uploads should travel compressed (a network between; not in-process).
    fn compresses_uploads(&self) -> bool;
    /// Runs `k3node host <operation>` with `input` on its stdin and its stdout into `output`.
    async fn exchange(
        &self,
        operation: &str,
        input: &mut (dyn AsyncRead + Unpin + Send),
        output: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<Exchange, LinkError>;
    /// Ends the link (and removes a temporary helper).
    async fn close(&self);
}

/// A host as phases use it: typed calls over its [`HostLink`], carrying the run's lock token
/// once the run holds the host's lock.
#[derive(Clone)]
pub struct Link {
    inner: Arc<dyn HostLink>,
    lock_token: Arc<Mutex<Option<String>>>,
}

impl Link {
    pub fn new(inner: Arc<dyn HostLink>) -> Link {
        Link { inner, lock_token: Arc::new(Mutex::new(None)) }
    }

    pub fn host(&self) -> &str {
        self.inner.host()
    }

    pub fn compresses_uploads(&self) -> bool {
        self.inner.compresses_uploads()
    }

    /// A call of `request`, sent with [`Call::send`] after choosing its streams.
    pub fn call<'a, O: Operation>(&'a self, request: &'a O) -> Call<'a, O> {
        Call { link: self, request, progress: None, upload: None, upload_digest: None, download: None }
    }

    /// Takes the host's lock for this run; the run's own mutating calls pass it. Fails with a
    /// `conflict` naming the holder when another run has it.
    pub async fn hold_lock(&self, holder: LockHolder) -> Result<HeldLock, LinkError> {
        let (mut writer, mut reader) = tokio::io::duplex(1 << 12);
        writer
            .write_all(&encode_request(&HoldLock { holder: holder.clone() }, None))
            .await
            .map_err(|e| self.local("sending the lock request", e))?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut decoder = AnswerDecoder::new(
                Box::new(move |event| {
                    if let Event::Ready = event {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                    }
                }),
                None,
            );
            let exit = inner.exchange(HoldLock::NAME, &mut reader, &mut decoder).await?;
            decoder.finish::<LockReleased>(inner.host(), exit.status, exit.stderr, false).map(|_| ())
        });
        match futures::future::select(ready_rx, task).await {
            futures::future::Either::Left((Ok(()), task)) => {
                *self.lock_token.lock().unwrap_or_else(|e| e.into_inner()) = Some(holder.token.clone());
                Ok(HeldLock { writer: Some(writer), task: Some(task), link: self.clone() })
            }
            // The task ended before the lock was in place: its result says why.
            futures::future::Either::Left((Err(_), task)) => Err(join(task.await, self.host())),
            futures::future::Either::Right((result, _)) => Err(join(result, self.host())),
        }
    }

    fn local(&self, what: &str, source: std::io::Error) -> LinkError {
        LinkError::Local { host: self.host().to_string(), what: what.to_string(), source }
    }

    pub async fn close(&self) {
        self.inner.close().await
    }
}

fn join(result: Result<Result<(), LinkError>, tokio::task::JoinError>, host: &str) -> LinkError {
    match result {
        Ok(Err(e)) => e,
        Ok(Ok(())) => LinkError::Protocol {
            host: host.into(),
            detail: "the lock was released before it was reported held".into(),
            stderr: String::new(),
        },
        Err(e) => LinkError::Protocol {
            host: host.into(),
            detail: format!("the lock task failed: {e}"),
            stderr: String::new(),
        },
    }
}

/// The host lock of a run. Released by [`HeldLock::release`], or when dropped (the helper sees
/// its stdin end), or when the operator dies (the SSH connection drops, and the kernel frees the
/// lock with the helper process).
pub struct HeldLock {
    writer: Option<tokio::io::DuplexStream>,
    task: Option<tokio::task::JoinHandle<Result<(), LinkError>>>,
    link: Link,
}

impl HeldLock {
    pub async fn release(mut self) -> Result<(), LinkError> {
        self.writer.take();
        *self.link.lock_token.lock().unwrap_or_else(|e| e.into_inner()) = None;
        match self.task.take() {
            Some(task) => match task.await {
                Ok(result) => result,
                Err(e) => Err(LinkError::Protocol {
                    host: self.link.host().into(),
                    detail: format!("the lock task failed: {e}"),
                    stderr: String::new(),
                }),
            },
            None => Ok(()),
        }
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        self.writer.take();
    }
}

/// How much of a download is gathered before it is written to its sink.
const DOWNLOAD_BUFFER: usize = 1 << 20;

type Progress<'a> = Box<dyn FnMut(&str) + Send + 'a>;

/// One call being prepared: progress callback, upload, download.
pub struct Call<'a, O: Operation> {
    link: &'a Link,
    request: &'a O,
    progress: Option<Progress<'a>>,
    upload: Option<&'a mut (dyn AsyncRead + Unpin + Send)>,
    /// Size and sha256 of the upload, when the caller verified them before.
    upload_digest: Option<(u64, String)>,
    download: Option<&'a mut (dyn AsyncWrite + Unpin + Send)>,
}

impl<'a, O: Operation> Call<'a, O> {
    /// Every progress line of the helper goes to `f`.
    pub fn progress(mut self, f: impl FnMut(&str) + Send + 'a) -> Self {
        self.progress = Some(Box::new(f));
        self
    }

    /// The bytes streamed after the request (operations that declare an upload).
    pub fn upload(mut self, source: &'a mut (dyn AsyncRead + Unpin + Send)) -> Self {
        self.upload = Some(source);
        self
    }

    /// As [`Call::upload`], for a source already verified to be `size` bytes with `sha256` (a
    /// cached release, a checked archive): the host checks what arrives against them, and this
    /// side does not hash it again.
    pub fn upload_verified(mut self, source: &'a mut (dyn AsyncRead + Unpin + Send), size: u64, sha256: &str) -> Self {
        self.upload = Some(source);
        self.upload_digest = Some((size, sha256.to_string()));
        self
    }

    /// Where the download goes (operations that declare one); its end frame is checked.
    pub fn download(mut self, sink: &'a mut (dyn AsyncWrite + Unpin + Send)) -> Self {
        self.download = Some(sink);
        self
    }

    pub async fn send(self) -> Result<O::Answer, LinkError> {
        let host = self.link.host().to_string();
        if O::UPLOAD != self.upload.is_some() || O::DOWNLOAD != self.download.is_some() {
            // A programming error on this side, caught before anything reaches the host.
            return Err(LinkError::Protocol {
                host,
                detail: format!("{} was called with the wrong streams", O::NAME),
                stderr: String::new(),
            });
        }
        let token = self.link.lock_token.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let line = encode_request(self.request, token.as_deref());
        let mut progress = self.progress.unwrap_or_else(|| Box::new(|_| {}));
        // SSH delivers a download in packets of 32 KiB; written one by one, each would be a
        // round trip to the blocking pool for a file sink. The exchange flushes it at the end.
        let mut download = self.download.map(|sink| tokio::io::BufWriter::with_capacity(DOWNLOAD_BUFFER, sink));
        let mut decoder = AnswerDecoder::new(
            Box::new(move |event| {
                if let Event::Progress(message) = event {
                    progress(message)
                }
            }),
            download.as_mut().map(|b| b as &mut (dyn AsyncWrite + Unpin + Send)),
        );
        let exit = match self.upload {
            Some(upload) => {
                let encoder = match self.upload_digest {
                    Some((size, sha256)) => FrameEncoder::verified(upload, size, &sha256),
                    None => FrameEncoder::new(upload),
                };
                let mut input = tokio::io::AsyncReadExt::chain(line.as_slice(), encoder);
                self.link.inner.exchange(O::NAME, &mut input, &mut decoder).await
            }
            None => self.link.inner.exchange(O::NAME, &mut line.as_slice(), &mut decoder).await,
        };
        let exit = match exit {
            Ok(exit) => exit,
            // The decoder's own verdict (a broken frame) explains a failed exchange best.
            Err(e) => return Err(decoder.broken_error(&host, String::new()).unwrap_or(e)),
        };
        decoder.finish::<O::Answer>(&host, exit.status, exit.stderr, O::DOWNLOAD)
    }
}
