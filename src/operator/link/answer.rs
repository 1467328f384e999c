//! Reads a helper's stdout as it streams in: answer lines, and download frames written straight
//! into the caller's sink (hashed on the way, checked against the end frame). Memory stays
//! bounded by one line ([`MAX_LINE`]) whatever the size of the download.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use serde::de::DeserializeOwned;
use tokio::io::AsyncWrite;

use super::LinkError;
use crate::protocol::frame::{Tally, MAX_CHUNK};
use crate::protocol::{AnswerLine, WireError};

/// The longest answer line accepted (a preflight report or an install report with diffs is tens
/// of KiB; a kubeconfig a few).
pub const MAX_LINE: usize = 16 << 20;

/// What the helper said besides its result, as it says it.
pub enum Event<'a> {
    Progress(&'a str),
    /// A long-lived operation is in place.
    Ready,
}

enum State {
    Line,
    Data { remaining: u64 },
}

/// An `AsyncWrite` for the helper's stdout.
pub struct AnswerDecoder<'a> {
    state: State,
    line: Vec<u8>,
    events: Box<dyn FnMut(Event<'_>) + Send + 'a>,
    download: Option<&'a mut (dyn AsyncWrite + Unpin + Send)>,
    tally: Tally,
    download_complete: bool,
    answer: Option<Result<serde_json::Value, WireError>>,
    /// The first line that was not an answer line (for the diagnosis).
    garbage: Option<String>,
    /// A frame that broke the protocol: the exchange is over.
    broken: Option<String>,
    /// The download's end frame did not match what arrived (`broken` says how).
    mismatch: bool,
}

impl<'a> AnswerDecoder<'a> {
    pub fn new(
        events: Box<dyn FnMut(Event<'_>) + Send + 'a>,
        download: Option<&'a mut (dyn AsyncWrite + Unpin + Send)>,
    ) -> Self {
        AnswerDecoder {
            state: State::Line,
            line: Vec::new(),
            events,
            download,
            tally: Tally::default(),
            download_complete: false,
            answer: None,
            garbage: None,
            broken: None,
            mismatch: false,
        }
    }

    fn protocol(&mut self, detail: String) -> io::Error {
        let error = io::Error::new(io::ErrorKind::InvalidData, detail.clone());
        self.broken = Some(detail);
        error
    }

    fn handle_line(&mut self) -> io::Result<()> {
        let line = std::mem::take(&mut self.line);
        let text = String::from_utf8_lossy(&line);
        match serde_json::from_str::<AnswerLine>(&text) {
            Ok(AnswerLine::Progress { message }) => (self.events)(Event::Progress(&message)),
            Ok(AnswerLine::Ready) => (self.events)(Event::Ready),
            Ok(AnswerLine::Data { len }) => {
                if self.download.is_none() {
                    return Err(self.protocol("a download frame from an operation that sends none".into()));
                }
                if len == 0 || len > MAX_CHUNK || self.download_complete {
                    return Err(self.protocol(format!("a data frame of {len} bytes out of place")));
                }
                self.state = State::Data { remaining: len };
            }
            Ok(AnswerLine::End { size, sha256 }) => {
                if self.download.is_none() {
                    return Err(self.protocol("an end frame from an operation that sends none".into()));
                }
                self.tally.check(size, &sha256).map_err(|e| {
                    self.mismatch = true;
                    self.protocol(e.to_string())
                })?;
                self.download_complete = true;
            }
            Ok(AnswerLine::Result { value }) => self.answer = Some(Ok(value)),
            Ok(AnswerLine::Error(e)) => self.answer = Some(Err(e)),
            Err(_) => {
                if self.garbage.is_none() {
                    self.garbage = Some(text.chars().take(200).collect());
                }
            }
        }
        Ok(())
    }

    /// The error of a stream that broke the protocol, if it did.
    pub fn broken_error(&self, host: &str, stderr: String) -> Option<LinkError> {
        let detail = self.broken.clone()?;
        Some(match self.mismatch {
            true => LinkError::DownloadMismatch { host: host.to_string(), detail },
            false => LinkError::Protocol { host: host.to_string(), detail, stderr },
        })
    }

    /// The operation's answer, once its exchange is over (`status`: the helper's exit status).
    pub fn finish<T: DeserializeOwned>(
        self,
        host: &str,
        status: u32,
        stderr: String,
        expects_download: bool,
    ) -> Result<T, LinkError> {
        if let Some(error) = self.broken_error(host, stderr.clone()) {
            return Err(error);
        }
        let host = host.to_string();
        match self.answer {
            Some(Ok(_)) if expects_download && !self.download_complete => Err(LinkError::Protocol {
                host,
                detail: format!("the download stopped after {} bytes, without its end frame", self.tally.size()),
                stderr,
            }),
            Some(Ok(value)) => serde_json::from_value(value).map_err(|e| LinkError::Protocol {
                host,
                detail: format!("the result does not decode: {e}"),
                stderr,
            }),
            Some(Err(e)) => Err(LinkError::Host { host, kind: e.kind, message: e.message, retryable: e.retryable }),
            None => Err(LinkError::Protocol {
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

impl AsyncWrite for AnswerDecoder<'_> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(detail) = &this.broken {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, detail.clone())));
        }
        match this.state {
            State::Line => match buf.iter().position(|b| *b == b'\n') {
                Some(pos) => {
                    this.line.extend_from_slice(&buf[..pos]);
                    this.handle_line()?;
                    Poll::Ready(Ok(pos + 1))
                }
                None => {
                    this.line.extend_from_slice(buf);
                    if this.line.len() > MAX_LINE {
                        return Poll::Ready(Err(this.protocol(format!("an answer line longer than {MAX_LINE} bytes"))));
                    }
                    Poll::Ready(Ok(buf.len()))
                }
            },
            State::Data { remaining } => {
                let n = buf.len().min(remaining as usize);
                let sink = this.download.as_mut().expect("data state only with a sink");
                match Pin::new(&mut **sink).poll_write(cx, &buf[..n]) {
                    Poll::Ready(Ok(written)) => {
                        this.tally.update(&buf[..written]);
                        let left = remaining - written as u64;
                        this.state = if left == 0 { State::Line } else { State::Data { remaining: left } };
                        Poll::Ready(Ok(written))
                    }
                    other => other,
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().download.as_mut() {
            Some(sink) => Pin::new(&mut **sink).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}
