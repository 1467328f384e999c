//! HTTP for artifacts: bounded timeouts (connect, response, and stall: no byte for `timeout`),
//! retries with exponential backoff on network errors and 5xx (never on 404), and resumable
//! streaming downloads into a partial file.

use std::error::Error as _;
use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::digest::Running;
use reqwest::header::{CONTENT_RANGE, LOCATION, RANGE};
use reqwest::{redirect, Client, Response, StatusCode};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::time::timeout;

use super::names::{redact_url, version_from_location};
use super::{ArtifactError, ArtifactOptions, DownloadProgress};

/// An attempt that made at least this much progress does not count against the retries: a link
/// that drops every few hundred MB still finishes, and one that makes no progress still gives up.
const PROGRESS_RESETS_RETRIES: u64 = 4 << 20;
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What one attempt came to, short of success.
enum Failure {
    /// Worth another attempt: a network error, a stall, an HTTP 5xx/408/429.
    Transient { status: Option<u16>, cause: String },
    /// Not: a 404, another 4xx, a local I/O error.
    Fatal(ArtifactError),
}

impl From<ArtifactError> for Failure {
    fn from(e: ArtifactError) -> Self {
        Failure::Fatal(e)
    }
}

fn transient(cause: impl Into<String>) -> Failure {
    Failure::Transient { status: None, cause: cause.into() }
}

/// Counts attempts and sleeps between them.
struct Backoff<'a> {
    opts: &'a ArtifactOptions,
    /// Attempts made so far.
    attempts: u32,
    /// Attempts that count against `opts.retries`.
    counted: u32,
}

impl<'a> Backoff<'a> {
    fn new(opts: &'a ArtifactOptions) -> Self {
        Backoff { opts, attempts: 0, counted: 0 }
    }

    /// After a transient failure: waits and returns Ok when another attempt is allowed, else the
    /// error that ends it.
    async fn after(
        &mut self,
        url: &str,
        status: Option<u16>,
        cause: String,
        counts: bool,
    ) -> Result<(), ArtifactError> {
        self.attempts += 1;
        if counts {
            self.counted += 1;
        }
        if counts && self.counted > self.opts.retries {
            return Err(match status {
                Some(status) => ArtifactError::HttpStatus {
                    url: redact_url(url),
                    status,
                    attempts: self.attempts,
                    hint: status_hint(status),
                },
                None => ArtifactError::Network { url: redact_url(url), attempts: self.attempts, cause },
            });
        }
        let exp = self.counted.saturating_sub(1).min(16);
        let delay = self.opts.backoff.saturating_mul(1 << exp).min(MAX_BACKOFF);
        tracing::warn!(
            url = %redact_url(url),
            attempt = self.attempts,
            retry_in_ms = delay.as_millis() as u64,
            "{cause}; retrying"
        );
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

impl Backoff<'_> {
    /// A final answer, with the attempts it took.
    fn final_error(&self, mut e: ArtifactError) -> ArtifactError {
        if let ArtifactError::HttpStatus { attempts, .. } = &mut e {
            *attempts = self.attempts + 1;
        }
        e
    }
}

fn status_hint(status: u16) -> String {
    match status {
        401 | 403 => "the server refused access: check the mirror's credentials and permissions".into(),
        408 | 429 => "the server is overloaded or rate-limiting: try again later, or use a mirror".into(),
        500..=599 => "the server is failing: try again later, or use a mirror or an airgap dir".into(),
        _ => "check the release URL or mirror in the cluster file".into(),
    }
}

fn retryable(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS
}

/// A reqwest error with its causes ("connection refused"), without the URL (which may carry
/// credentials; messages name the redacted URL themselves).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    if e.is_connect() && !out.contains("connect") {
        out.insert_str(0, "cannot connect: ");
    }
    out
}

/// The two HTTP clients of one fetch.
pub(super) struct Http<'a> {
    opts: &'a ArtifactOptions,
    /// Follows redirects (GitHub release downloads redirect to a CDN).
    client: Client,
    /// Does not: a channel's answer is the redirect.
    no_redirect: Client,
}

impl<'a> Http<'a> {
    pub(super) fn new(opts: &'a ArtifactOptions) -> Result<Self, ArtifactError> {
        let build = |policy| {
            Client::builder()
                .user_agent(concat!("k3node/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(opts.timeout)
                .redirect(policy)
                .build()
                .map_err(|e| ArtifactError::Client { cause: describe(e) })
        };
        Ok(Http { opts, client: build(redirect::Policy::limited(10))?, no_redirect: build(redirect::Policy::none())? })
    }

    /// Sends a request, bounded by the timeout.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Response, Failure> {
        match timeout(self.opts.timeout, req.send()).await {
            Err(_) => Err(transient(format!("no response within {}s", self.opts.timeout.as_secs_f32()))),
            Ok(Err(e)) if e.is_builder() => Err(Failure::Fatal(ArtifactError::Client { cause: describe(e) })),
            Ok(Err(e)) => Err(transient(describe(e))),
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// The next chunk of a body, or a stall after `timeout` without one. `at`: the bytes
    /// received so far and the total, for messages.
    async fn chunk(
        &self,
        resp: &mut Response,
        at: (u64, Option<u64>),
    ) -> Result<Option<impl std::ops::Deref<Target = [u8]>>, Failure> {
        let at = match at {
            (got, Some(total)) => format!(" after {got} of {total} bytes"),
            (got, None) => format!(" after {got} bytes"),
        };
        match timeout(self.opts.timeout, resp.chunk()).await {
            Err(_) => {
                Err(transient(format!("the download stalled{at}: no data for {}s", self.opts.timeout.as_secs_f32())))
            }
            Ok(Err(e)) => Err(transient(format!("the connection broke{at}: {}", describe(e)))),
            Ok(Ok(c)) => Ok(c),
        }
    }

    /// The redirect target of `url` (the Location header), not followed. `what` names the thing
    /// for a 404 message.
    pub(super) async fn channel_version(&self, url: &str, channel: &str) -> Result<String, ArtifactError> {
        let mut backoff = Backoff::new(self.opts);
        loop {
            let failure = match self.channel_once(url, channel).await {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(e)) => return Err(backoff.final_error(e)),
                Err(Failure::Transient { status, cause }) => (status, cause),
            };
            backoff.after(url, failure.0, failure.1, true).await?;
        }
    }

    async fn channel_once(&self, url: &str, channel: &str) -> Result<String, Failure> {
        let resp = self.send(self.no_redirect.get(url)).await?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Err(Failure::Fatal(ArtifactError::NotFound {
                url: redact_url(url),
                what: format!("k3s channel {channel:?}"),
                hint: "channels are stable, latest, testing or a minor line such as v1.31; or pin k3s.version".into(),
            }));
        }
        if retryable(status) {
            return Err(Failure::Transient { status: Some(status.as_u16()), cause: format!("HTTP {status}") });
        }
        let location = resp.headers().get(LOCATION).and_then(|l| l.to_str().ok());
        let location = match location {
            Some(l) if status.is_redirection() => l.to_string(),
            _ => {
                let found = if status.is_redirection() {
                    format!("HTTP {status} without a Location header")
                } else {
                    format!("HTTP {status}")
                };
                return Err(Failure::Fatal(ArtifactError::ChannelNoRedirect {
                    channel: channel.into(),
                    url: redact_url(url),
                    found,
                }));
            }
        };
        let shown = redact_url(&location);
        match version_from_location(&location) {
            Some(version) => Ok(version),
            None => Err(Failure::Fatal(ArtifactError::BadVersion {
                version: super::names::last_segment(&location).unwrap_or_else(|| shown.clone()),
                origin: format!("the redirect of channel {channel:?} at {} to {shown}", redact_url(url)),
                hint: "the channel URL does not look like a k3s channel server: check it, or pin k3s.version".into(),
            })),
        }
    }

    /// A small file (a checksum file) in memory, at most `limit` bytes.
    pub(super) async fn get_small(&self, url: &str, what: &str, limit: usize) -> Result<Vec<u8>, ArtifactError> {
        let mut backoff = Backoff::new(self.opts);
        loop {
            let failure = match self.get_small_once(url, what, limit).await {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(e)) => return Err(backoff.final_error(e)),
                Err(Failure::Transient { status, cause }) => (status, cause),
            };
            backoff.after(url, failure.0, failure.1, true).await?;
        }
    }

    async fn get_small_once(&self, url: &str, what: &str, limit: usize) -> Result<Vec<u8>, Failure> {
        let mut resp = self.send(self.client.get(url)).await?;
        check_status(url, resp.status(), what)?;
        let mut body = Vec::new();
        let total = resp.content_length();
        while let Some(chunk) = self.chunk(&mut resp, (body.len() as u64, total)).await? {
            body.extend_from_slice(&chunk);
            if body.len() > limit {
                return Err(Failure::Fatal(ArtifactError::ChecksumFileMalformed {
                    file: redact_url(url),
                    line: 0,
                    reason: format!("larger than {limit} bytes, which no checksum file is"),
                }));
            }
        }
        Ok(body)
    }

    /// Downloads `url` into `partial` (created, or continued when `resume` and it exists), and
    /// returns the file's sha256 and size. The file is fsynced. `resumed` in the result tells
    /// whether any bytes came from a Range request (or from an earlier run). A partial file that
    /// already hashes to `expected` (an earlier run died between download and rename) is taken
    /// as it is, without a request.
    pub(super) async fn download(
        &self,
        url: &str,
        partial: &Path,
        resume: bool,
        expected: &str,
        what: &str,
        progress: &dyn DownloadProgress,
    ) -> Result<Downloaded, ArtifactError> {
        let mut file = PartialFile::open(partial, resume).await?;
        if file.len() > 0 && file.written.hex() == expected {
            tracing::info!(url = %redact_url(url), "an earlier run already downloaded it completely");
            return file.finish().await;
        }
        if file.len() > 0 {
            tracing::info!(
                url = %redact_url(url),
                bytes = file.len(),
                "continuing an interrupted download"
            );
        }
        let mut backoff = Backoff::new(self.opts);
        let mut started = false;
        let result = loop {
            let before = file.len();
            let failure = match self.download_once(url, &mut file, what, progress, &mut started).await {
                Ok(()) => break Ok(()),
                Err(Failure::Fatal(e)) => break Err(backoff.final_error(e)),
                Err(Failure::Transient { status, cause }) => (status, cause),
            };
            let counts = file.len() < before + PROGRESS_RESETS_RETRIES;
            if let Err(e) = backoff.after(url, failure.0, failure.1, counts).await {
                break Err(e);
            }
        };
        if started {
            progress.finished();
        }
        result?;
        file.finish().await
    }

    async fn download_once(
        &self,
        url: &str,
        file: &mut PartialFile,
        what: &str,
        progress: &dyn DownloadProgress,
        started: &mut bool,
    ) -> Result<(), Failure> {
        let (mut resp, total) = loop {
            let offset = file.len();
            let mut req = self.client.get(url);
            if offset > 0 {
                req = req.header(RANGE, format!("bytes={offset}-"));
            }
            let resp = self.send(req).await?;
            let status = resp.status();
            if offset > 0 && status == StatusCode::RANGE_NOT_SATISFIABLE {
                // The partial file is not a prefix of what the server has (or is all of it, and
                // then the checksum decides): start over.
                tracing::info!(url = %redact_url(url), "the server cannot continue the download; restarting it");
                file.reset().await?;
                continue;
            }
            if offset > 0 && status == StatusCode::PARTIAL_CONTENT {
                let range =
                    resp.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).and_then(parse_content_range);
                match range {
                    Some((start, total)) if start == offset => {
                        file.resumed = true;
                        let total = total.or_else(|| resp.content_length().map(|n| n + offset));
                        break (resp, total);
                    }
                    _ => {
                        file.reset().await?;
                        return Err(transient(
                            "the server answered the Range request with another range; restarting from the beginning",
                        ));
                    }
                }
            }
            check_status(url, status, what)?;
            if status != StatusCode::OK {
                return Err(Failure::Fatal(ArtifactError::HttpStatus {
                    url: redact_url(url),
                    status: status.as_u16(),
                    attempts: 1,
                    hint: "expected 200 OK with the file".into(),
                }));
            }
            if offset > 0 {
                tracing::info!(url = %redact_url(url), "the server does not support Range requests; restarting the download");
                file.reset().await?;
            }
            let total = resp.content_length();
            break (resp, total);
        };
        progress.started(what, total);
        *started = true;
        if file.len() > 0 {
            progress.advanced(file.len());
        }
        while let Some(chunk) = self.chunk(&mut resp, (file.len(), total)).await? {
            file.append(&chunk).await?;
            progress.advanced(chunk.len() as u64);
        }
        match total {
            Some(total) if file.len() < total => {
                Err(transient(format!("the connection closed after {} of {total} bytes", file.len())))
            }
            Some(total) if file.len() > total => {
                file.reset().await?;
                Err(transient(format!("the server sent more than the {total} bytes it announced; restarting")))
            }
            _ => Ok(()),
        }
    }
}

/// Maps a status to a failure, or Ok for 2xx.
fn check_status(url: &str, status: StatusCode, what: &str) -> Result<(), Failure> {
    if status.is_success() {
        return Ok(());
    }
    if status == StatusCode::NOT_FOUND {
        return Err(Failure::Fatal(ArtifactError::NotFound {
            url: redact_url(url),
            what: what.to_string(),
            hint: "check that k3s.version is a published k3s release and that it ships this architecture; \
                   for a mirror, that it holds <version>/<file> like the release"
                .into(),
        }));
    }
    if retryable(status) {
        return Err(Failure::Transient { status: Some(status.as_u16()), cause: format!("HTTP {status}") });
    }
    Err(Failure::Fatal(ArtifactError::HttpStatus {
        url: redact_url(url),
        status: status.as_u16(),
        attempts: 1,
        hint: status_hint(status.as_u16()),
    }))
}

/// `bytes <start>-<end>/<total|*>` -> (start, total).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start, total))
}

/// A downloaded file's facts.
pub(super) struct Downloaded {
    pub sha256: String,
    pub size: u64,
    /// Some bytes were kept from before an interruption (this run's or an earlier one's).
    pub resumed: bool,
}

/// The file a download streams into, hashed as it is written.
struct PartialFile {
    path: PathBuf,
    file: tokio::fs::File,
    /// The running sha256 and size of what the file holds.
    written: Running,
    resumed: bool,
}

impl PartialFile {
    async fn open(path: &Path, resume: bool) -> Result<Self, ArtifactError> {
        let io_err = |action| ArtifactError::io(action, path);
        let existing = if resume && tokio::fs::try_exists(path).await.unwrap_or(false) {
            let p = path.to_path_buf();
            tokio::task::spawn_blocking(move || super::checksum::hash_state(&p))
                .await
                .map_err(io::Error::other)
                .and_then(|r| r)
                .map_err(io_err("read the partial download"))?
        } else {
            Running::default()
        };
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)
            .await
            .map_err(io_err("create the download file"))?;
        let len = existing.size();
        file.set_len(len).await.map_err(io_err("write the download file"))?;
        file.seek(SeekFrom::Start(len)).await.map_err(io_err("write the download file"))?;
        Ok(PartialFile { path: path.to_path_buf(), file, written: existing, resumed: len > 0 })
    }

    fn len(&self) -> u64 {
        self.written.size()
    }

    async fn append(&mut self, bytes: &[u8]) -> Result<(), ArtifactError> {
        self.file.write_all(bytes).await.map_err(ArtifactError::io("write the download file", &self.path))?;
        self.written.update(bytes);
        Ok(())
    }

    async fn reset(&mut self) -> Result<(), ArtifactError> {
        let err = ArtifactError::io("write the download file", &self.path);
        let r = async {
            self.file.flush().await?;
            self.file.set_len(0).await?;
            self.file.seek(SeekFrom::Start(0)).await?;
            Ok::<_, io::Error>(())
        }
        .await;
        r.map_err(err)?;
        self.written = Running::default();
        self.resumed = false;
        Ok(())
    }

    async fn finish(mut self) -> Result<Downloaded, ArtifactError> {
        let err = ArtifactError::io("write the download file", &self.path);
        let r = async {
            self.file.flush().await?;
            self.file.sync_all().await
        }
        .await;
        r.map_err(err)?;
        let (sha256, size) = self.written.finish();
        Ok(Downloaded { sha256, size, resumed: self.resumed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(parse_content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(parse_content_range("bytes 100-199/*"), Some((100, None)));
        assert_eq!(parse_content_range("bytes */200"), None);
        assert_eq!(parse_content_range("bytes 5-1/200"), None);
    }
}
