//! Framed byte streams, the same in both directions: operator -> host after the request line
//! (uploads), host -> operator among the answer lines (downloads).
//!
//! A stream is any number of `{"type":"data","len":N}` header lines, each followed by exactly N raw
//! bytes, then one `{"type":"end","size":S,"sha256":H}` line with the stream's total size and
//! sha256. The receiver counts and hashes what it gets and accepts the stream only at a matching
//! end frame: a stream cut short (no end frame, or a chunk shorter than announced) is an error,
//! never a short file. Memory stays bounded by [`MAX_CHUNK`] on both sides.

use std::io::{self, BufRead, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, ReadBuf};

use crate::digest::Running;

/// The largest chunk a sender writes and a receiver accepts.
pub const MAX_CHUNK: u64 = 4 << 20;
/// Chunk size senders use: big enough to amortise the header, small enough to keep memory low.
pub const CHUNK: usize = 1 << 20;
/// A header line is a few dozen bytes; anything longer is not a header.
const MAX_HEADER: u64 = 4096;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FrameHeader {
    Data { len: u64 },
    End { size: u64, sha256: String },
}

impl FrameHeader {
    pub fn line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("headers always serialize");
        line.push(b'\n');
        line
    }
}

/// Why a framed stream was refused. Carried inside `io::Error`s so that readers stacked on top
/// (a decompressor) pass it through; [`FrameError::of`] finds it again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("the stream was cut off after {received} bytes, before its end frame")]
    Truncated { received: u64 },
    #[error("the stream's end frame announces {size} bytes with sha256 {sha256}, but {received} bytes with sha256 {actual} arrived")]
    Mismatch { size: u64, sha256: String, received: u64, actual: String },
    #[error("the stream is not framed as the protocol says: {0}")]
    Malformed(String),
}

impl FrameError {
    pub fn into_io(self) -> io::Error {
        let kind = match self {
            FrameError::Truncated { .. } => io::ErrorKind::UnexpectedEof,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, self)
    }

    /// The frame error inside an I/O error, if that is what it is.
    pub fn of(error: &io::Error) -> Option<&FrameError> {
        error.get_ref().and_then(|e| e.downcast_ref::<FrameError>())
    }
}

/// Counts and hashes a stream's bytes, and checks them against an end frame.
#[derive(Default, Clone)]
pub struct Tally {
    running: Running,
}

impl Tally {
    pub fn update(&mut self, bytes: &[u8]) {
        self.running.update(bytes);
    }

    pub fn size(&self) -> u64 {
        self.running.size()
    }

    pub fn end_frame(&self) -> FrameHeader {
        FrameHeader::End { size: self.size(), sha256: self.running.hex() }
    }

    /// The end frame's claims against what arrived.
    pub fn check(&self, size: u64, sha256: &str) -> Result<(), FrameError> {
        let actual = self.running.hex();
        if size != self.size() || !sha256.eq_ignore_ascii_case(&actual) {
            return Err(FrameError::Mismatch { size, sha256: sha256.to_string(), received: self.size(), actual });
        }
        Ok(())
    }
}

/// Parses one header line (without its newline).
pub fn parse_header(line: &[u8]) -> Result<FrameHeader, FrameError> {
    let header: FrameHeader = serde_json::from_slice(line)
        .map_err(|e| FrameError::Malformed(format!("expected a data or end frame, found {:?} ({e})", preview(line))))?;
    if let FrameHeader::Data { len } = header {
        if len == 0 || len > MAX_CHUNK {
            return Err(FrameError::Malformed(format!("a data frame of {len} bytes (1 to {MAX_CHUNK} allowed)")));
        }
    }
    Ok(header)
}

fn preview(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(80)]).into_owned()
}

/// Reads the bytes of a framed stream from `inner` (host side: the helper's stdin). Returns end
/// of file only after a matching end frame, and only when nothing follows it.
pub struct FrameReader<R> {
    inner: R,
    remaining: u64,
    tally: Tally,
    finished: bool,
}

impl<R: BufRead> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader { inner, remaining: 0, tally: Tally::default(), finished: false }
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.tally.size()
    }

    /// Size and sha256 of the whole stream, once its end frame was read and checked.
    pub fn verified(&self) -> Option<(u64, String)> {
        match self.finished {
            true => match self.tally.end_frame() {
                FrameHeader::End { size, sha256 } => Some((size, sha256)),
                FrameHeader::Data { .. } => None,
            },
            false => None,
        }
    }

    fn next_header(&mut self) -> io::Result<()> {
        let mut line = Vec::new();
        (&mut self.inner).take(MAX_HEADER).read_until(b'\n', &mut line)?;
        if line.last() != Some(&b'\n') {
            if line.is_empty() {
                return Err(FrameError::Truncated { received: self.tally.size() }.into_io());
            }
            return Err(FrameError::Malformed(format!("an unterminated header {:?}", preview(&line))).into_io());
        }
        line.pop();
        match parse_header(&line).map_err(FrameError::into_io)? {
            FrameHeader::Data { len } => self.remaining = len,
            FrameHeader::End { size, sha256 } => {
                self.tally.check(size, &sha256).map_err(FrameError::into_io)?;
                if !self.inner.fill_buf()?.is_empty() {
                    return Err(FrameError::Malformed("data follows the end frame".into()).into_io());
                }
                self.finished = true;
            }
        }
        Ok(())
    }
}

impl<R: BufRead> Read for FrameReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.remaining == 0 {
            if self.finished {
                return Ok(0);
            }
            self.next_header()?;
        }
        let want = buf.len().min(self.remaining as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(FrameError::Truncated { received: self.tally.size() }.into_io());
        }
        self.tally.update(&buf[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Writes a framed stream into `inner` (host side: the helper's stdout, between answer lines).
/// [`FrameWriter::finish`] writes the end frame; a writer dropped without it leaves a stream the
/// receiver refuses.
pub struct FrameWriter<W: Write> {
    inner: W,
    buffer: Vec<u8>,
    tally: Tally,
    /// The sha256 of a source verified before (a snapshot beside its sha256 file): its bytes are
    /// counted, not hashed again; the receiver hashes what arrives and checks it against this.
    known_sha256: Option<String>,
    counted: u64,
}

impl<W: Write> FrameWriter<W> {
    pub fn new(inner: W) -> Self {
        FrameWriter {
            inner,
            buffer: Vec::with_capacity(CHUNK),
            tally: Tally::default(),
            known_sha256: None,
            counted: 0,
        }
    }

    /// Frames a source known to have `sha256`, without hashing it here (the download twin of
    /// [`FrameEncoder::verified`]): a source that is not what it is said to be is refused by the
    /// receiver, whose check of the end frame fails.
    pub fn verified(inner: W, sha256: &str) -> Self {
        FrameWriter { known_sha256: Some(sha256.to_string()), ..FrameWriter::new(inner) }
    }

    fn end_frame(&self) -> FrameHeader {
        match &self.known_sha256 {
            Some(sha256) => FrameHeader::End { size: self.counted, sha256: sha256.clone() },
            None => self.tally.end_frame(),
        }
    }

    fn emit(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.inner.write_all(&FrameHeader::Data { len: self.buffer.len() as u64 }.line())?;
        self.inner.write_all(&self.buffer)?;
        self.buffer.clear();
        Ok(())
    }

    /// Flushes what is buffered and writes the end frame; returns the stream's size and sha256.
    pub fn finish(mut self) -> io::Result<(u64, String)> {
        self.emit()?;
        let end = self.end_frame();
        self.inner.write_all(&end.line())?;
        self.inner.flush()?;
        match end {
            FrameHeader::End { size, sha256 } => Ok((size, sha256)),
            FrameHeader::Data { .. } => unreachable!("end_frame makes an end frame"),
        }
    }
}

impl<W: Write> Write for FrameWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buffer.len();
        let n = buf.len().min(room);
        self.buffer.extend_from_slice(&buf[..n]);
        match self.known_sha256 {
            Some(_) => self.counted += n as u64,
            None => self.tally.update(&buf[..n]),
        }
        if self.buffer.len() == CHUNK {
            self.emit()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.emit()?;
        self.inner.flush()
    }
}

/// Frames an async byte source (operator side: an upload), ending with the end frame.
pub struct FrameEncoder<R> {
    inner: R,
    /// Header + data waiting to be handed out.
    pending: Vec<u8>,
    offset: usize,
    chunk: Vec<u8>,
    tally: Tally,
    /// The end frame of a source whose size and sha256 were verified before: its bytes are not
    /// hashed again (the receiver hashes what arrives and checks it against this).
    known: Option<FrameHeader>,
    done: bool,
}

impl<R: AsyncRead + Unpin> FrameEncoder<R> {
    pub fn new(inner: R) -> Self {
        FrameEncoder {
            inner,
            pending: Vec::new(),
            offset: 0,
            chunk: vec![0; CHUNK],
            tally: Tally::default(),
            known: None,
            done: false,
        }
    }

    /// Frames a source already known to be `size` bytes with `sha256`. Hashing costs a bulk upload
    /// a sixth of its throughput on two shared cores, and the far end does it anyway: a source that is not what it is
    /// said to be (changed since it was verified) is refused there.
    pub fn verified(inner: R, size: u64, sha256: &str) -> Self {
        FrameEncoder { known: Some(FrameHeader::End { size, sha256: sha256.to_string() }), ..FrameEncoder::new(inner) }
    }

    /// The size and sha256 of what was framed (final once the encoder returned end of file; empty
    /// for a [verified](FrameEncoder::verified) source, which is not hashed here).
    pub fn tally(&self) -> &Tally {
        &self.tally
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for FrameEncoder<R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.offset < this.pending.len() {
                let n = out.remaining().min(this.pending.len() - this.offset);
                out.put_slice(&this.pending[this.offset..this.offset + n]);
                this.offset += n;
                return Poll::Ready(Ok(()));
            }
            if this.done {
                return Poll::Ready(Ok(()));
            }
            this.pending.clear();
            this.offset = 0;
            let mut buf = ReadBuf::new(&mut this.chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let filled = buf.filled();
                    if filled.is_empty() {
                        let end = this.known.clone().unwrap_or_else(|| this.tally.end_frame());
                        this.pending.extend_from_slice(&end.line());
                        this.done = true;
                    } else {
                        if this.known.is_none() {
                            this.tally.update(filled);
                        }
                        this.pending.extend_from_slice(&FrameHeader::Data { len: filled.len() as u64 }.line());
                        this.pending.extend_from_slice(filled);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn framed(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = FrameWriter::new(&mut out);
        w.write_all(data).unwrap();
        w.finish().unwrap();
        out
    }

    fn read_all(stream: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        FrameReader::new(stream).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn a_stream_written_in_frames_reads_back_whole() {
        let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i * 7 % 251) as u8).collect();
        assert_eq!(read_all(&framed(&data)).unwrap(), data);
        assert_eq!(read_all(&framed(b"")).unwrap(), b"");
    }

    #[test]
    fn a_stream_cut_anywhere_is_an_error_never_a_short_read() {
        let data = vec![5u8; 3000];
        let stream = framed(&data);
        for cut in [0, 1, 10, 30, 500, stream.len() - 40, stream.len() - 1] {
            let err = read_all(&stream[..cut]).unwrap_err();
            assert!(FrameError::of(&err).is_some(), "cut at {cut}: {err}");
        }
    }

    #[test]
    fn a_changed_byte_or_trailing_data_is_refused() {
        let mut stream = framed(b"hello world");
        let at = stream.iter().position(|b| *b == b'w').unwrap();
        stream[at] = b'W';
        let err = read_all(&stream).unwrap_err();
        assert!(matches!(FrameError::of(&err), Some(FrameError::Mismatch { .. })), "{err}");

        let mut trailing = framed(b"abc");
        trailing.extend_from_slice(b"{\"op\":\"reset\"}\n");
        let err = read_all(&trailing).unwrap_err();
        assert!(err.to_string().contains("data follows the end frame"), "{err}");
    }

    #[test]
    fn oversized_or_garbage_headers_are_refused() {
        let big = format!("{{\"type\":\"data\",\"len\":{}}}\n", MAX_CHUNK + 1);
        assert!(read_all(big.as_bytes()).unwrap_err().to_string().contains("data frame of"));
        assert!(read_all(b"hello\n").unwrap_err().to_string().contains("expected a data or end frame"));
    }

    #[tokio::test]
    async fn a_verified_source_that_changed_since_is_refused_by_the_receiver() {
        let data: Vec<u8> = (0..CHUNK + 7).map(|i| (i % 11) as u8).collect();
        let sha = crate::digest::sha256_hex(&data);
        let mut stream = Vec::new();
        FrameEncoder::verified(&data[..], data.len() as u64, &sha).read_to_end(&mut stream).await.unwrap();
        assert_eq!(read_all(&stream).unwrap(), data, "as verified: accepted");

        let mut changed = data.clone();
        changed[5] ^= 1;
        let mut stream = Vec::new();
        FrameEncoder::verified(&changed[..], data.len() as u64, &sha).read_to_end(&mut stream).await.unwrap();
        let err = read_all(&stream).unwrap_err();
        assert!(matches!(FrameError::of(&err), Some(FrameError::Mismatch { .. })), "{err}");

        let mut stream = Vec::new();
        FrameEncoder::verified(&data[..10], data.len() as u64, &sha).read_to_end(&mut stream).await.unwrap();
        let err = read_all(&stream).unwrap_err();
        assert!(matches!(FrameError::of(&err), Some(FrameError::Mismatch { received: 10, .. })), "{err}");
    }

    #[test]
    fn a_download_sent_as_verified_is_refused_when_its_source_is_not_what_was_said() {
        let data: Vec<u8> = (0..CHUNK + 9).map(|i| (i % 7) as u8).collect();
        let sha = crate::digest::sha256_hex(&data);
        let send = |bytes: &[u8]| {
            let mut out = Vec::new();
            let mut w = FrameWriter::verified(&mut out, &sha);
            w.write_all(bytes).unwrap();
            assert_eq!(w.finish().unwrap(), (bytes.len() as u64, sha.clone()), "the end frame claims the known sha256");
            out
        };
        assert_eq!(read_all(&send(&data)).unwrap(), data);

        let mut changed = data.clone();
        changed[CHUNK] ^= 1;
        let err = read_all(&send(&changed)).unwrap_err();
        assert!(matches!(FrameError::of(&err), Some(FrameError::Mismatch { .. })), "{err}");
    }

    #[tokio::test]
    async fn the_async_encoder_frames_what_the_sync_reader_accepts() {
        let data: Vec<u8> = (0..2 * CHUNK + 5).map(|i| (i % 13) as u8).collect();
        let mut encoder = FrameEncoder::new(&data[..]);
        let mut stream = Vec::new();
        encoder.read_to_end(&mut stream).await.unwrap();
        assert_eq!(encoder.tally().size(), data.len() as u64);
        assert_eq!(read_all(&stream).unwrap(), data);
    }
}
