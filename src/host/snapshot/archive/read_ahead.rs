//! Decompression on a thread of its own, a few chunks ahead of the reader. Reading an archive is
//! zstd's decompression (one core, zstd decompresses a frame on one thread) and then the tar's
//! entries hashed and written out: on two cores the two overlap instead of taking turns.
//!
//! Invariants: the reader sees exactly the source's bytes in order, an error where the source
//! gave it, and then the end; at most [`AHEAD`] chunks are held besides the one being read;
//! [`ReadAhead::into_inner`] stops the thread wherever it is and gives the source back (dropped
//! instead, the thread ends on its own at its next send).

use std::io::{self, Read};
use std::sync::mpsc::sync_channel;
use std::thread::JoinHandle;

use crate::chunks::ChunkReader;

const CHUNK: usize = 1 << 20;
const AHEAD: usize = 4;

pub struct ReadAhead<R> {
    reader: ChunkReader,
    thread: JoinHandle<R>,
}

impl<R: Read + Send + 'static> ReadAhead<R> {
    pub fn new(mut source: R) -> io::Result<ReadAhead<R>> {
        let (filled, chunks) = sync_channel(AHEAD);
        let (spare, spares) = sync_channel::<Vec<u8>>(AHEAD + 2);
        let thread = std::thread::Builder::new().name("read-ahead".into()).spawn(move || {
            loop {
                let mut chunk = spares.try_recv().unwrap_or_default();
                chunk.resize(CHUNK, 0);
                let sent = match source.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        chunk.truncate(n);
                        filled.send(Ok(chunk))
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        let _ = filled.send(Err(e));
                        break;
                    }
                };
                if sent.is_err() {
                    break; // the reader is gone
                }
            }
            source
        })?;
        Ok(ReadAhead { reader: ChunkReader::new(chunks, Some(spare)), thread })
    }

    /// The source, once its thread has stopped (at the end, or as soon as it sees that nobody reads).
    pub fn into_inner(self) -> R {
        // Without its receiver the thread's next send fails, and it ends.
        drop(self.reader);
        self.thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl<R> Read for ReadAhead<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.reader.read(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gives `data` in reads of `step` bytes, then `error` if any.
    struct Source {
        data: Vec<u8>,
        at: usize,
        step: usize,
        error: Option<io::ErrorKind>,
    }

    impl Read for Source {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.at == self.data.len() {
                return match self.error.take() {
                    Some(kind) => Err(io::Error::new(kind, "the disk went away")),
                    None => Ok(0),
                };
            }
            let n = out.len().min(self.step).min(self.data.len() - self.at);
            out[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
    }

    #[test]
    fn the_reader_sees_the_sources_bytes_in_order_whatever_the_read_sizes() {
        let data = pattern(5 * CHUNK + 12_345);
        for step in [1 << 20, 4096, 333] {
            let mut ahead = ReadAhead::new(Source { data: data.clone(), at: 0, step, error: None }).unwrap();
            let mut got = Vec::new();
            let mut buf = vec![0u8; 511];
            loop {
                let n = ahead.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            assert!(got == data, "step {step}: {} bytes read of {}", got.len(), data.len());
            assert_eq!(ahead.read(&mut buf).unwrap(), 0, "the end stays the end");
            let source = ahead.into_inner();
            assert_eq!(source.at, data.len());
        }
    }

    #[test]
    fn an_error_of_the_source_reaches_the_reader_after_the_bytes_before_it() {
        let data = pattern(CHUNK + 10);
        let source = Source { data: data.clone(), at: 0, step: 1 << 16, error: Some(io::ErrorKind::InvalidData) };
        let mut ahead = ReadAhead::new(source).unwrap();
        let mut got = Vec::new();
        let err = ahead.read_to_end(&mut got).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(got == data);
    }

    #[test]
    fn a_reader_that_stops_early_gets_its_source_back_with_at_most_a_few_chunks_read_ahead() {
        let data = pattern(64 * CHUNK);
        let mut ahead = ReadAhead::new(Source { data, at: 0, step: CHUNK, error: None }).unwrap();
        let mut first = vec![0u8; 100];
        ahead.read_exact(&mut first).unwrap();
        let source = ahead.into_inner();
        assert!(source.at <= (AHEAD + 2) * CHUNK, "read {} bytes ahead", source.at);
    }
}
