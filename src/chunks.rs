//! Bytes handed from one thread to another in chunks over a bounded channel: the receiving end,
//! read as one stream. The sending thread reads ahead of the reader by as many chunks as the
//! channel holds (decompression of an archive, the pages of a database image).
//!
//! Invariants: the reader sees the chunks' bytes in the order they were sent; an error sent in
//! place of a chunk is returned where it came, and after it the end; the sender gone (its work
//! done, or given up) is the end. Chunks read go back through `spare`, when there is one, to be
//! filled again.

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, SyncSender};

pub struct ChunkReader {
    chunks: Option<Receiver<io::Result<Vec<u8>>>>,
    spare: Option<SyncSender<Vec<u8>>>,
    current: Vec<u8>,
    at: usize,
}

impl ChunkReader {
    pub fn new(chunks: Receiver<io::Result<Vec<u8>>>, spare: Option<SyncSender<Vec<u8>>>) -> ChunkReader {
        ChunkReader { chunks: Some(chunks), spare, current: Vec::new(), at: 0 }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.current.len() {
            let Some(chunks) = &self.chunks else { return Ok(0) };
            match chunks.recv() {
                Ok(Ok(chunk)) => {
                    let read = std::mem::replace(&mut self.current, chunk);
                    if let Some(spare) = &self.spare {
                        let _ = spare.try_send(read);
                    }
                    self.at = 0;
                }
                Ok(Err(e)) => {
                    self.chunks = None;
                    return Err(e);
                }
                Err(_) => {
                    self.chunks = None; // the sender's end
                    return Ok(0);
                }
            }
        }
        let n = out.len().min(self.current.len() - self.at);
        out[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
