//! The operator's copy of an archive's files while they are checked and sent: each file of the
//! input tar is compressed once (zstd, level 1) into an unnamed temp file as a zstd frame of its
//! own, with its size and sha256 computed on the way. Because concatenated zstd frames are one
//! valid zstd stream, the archive each node receives is put together from these frames without
//! compressing anything again, holding exactly the blobs that node lacks (see [`super::wire`]).
//!
//! Invariants: an entry's sha256 and size are of its uncompressed bytes, computed while it was
//! read the one time it is read; the temp file is gone when the last reference to the spool goes
//! (it never had a name).

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// zstd level for everything k3node compresses for the wire: level 1 keeps up with a network
/// and the hashing beside it; higher levels buy a few percent for several times the CPU.
pub const WIRE_LEVEL: i32 = 1;

/// Where an entry's zstd frame lies in the spool, and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolEntry {
    pub offset: u64,
    /// Length of the compressed frame.
    pub len: u64,
    /// Bytes of the entry itself (uncompressed).
    pub size: u64,
    /// sha256 (hex) of the entry's bytes.
    pub sha256: String,
}

/// The compressed frames of one input, in an unnamed temp file.
#[derive(Debug)]
pub struct Spool {
    file: File,
}

impl Spool {
    /// The compressed frame of `entry`, as it goes on the wire.
    pub fn frame(&self, entry: &SpoolEntry) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; entry.len as usize];
        self.file.read_exact_at(&mut buf, entry.offset)?;
        Ok(buf)
    }

    /// Reads `len` bytes of frames at `offset` into `buf` (a slice of a frame when streaming).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// The entry's own bytes, decompressed (JSON documents: manifests, configs, indexes).
    pub fn contents(&self, entry: &SpoolEntry) -> io::Result<Vec<u8>> {
        let frame = self.frame(entry)?;
        let mut out = Vec::with_capacity(entry.size as usize);
        zstd::stream::read::Decoder::new(&frame[..])?.read_to_end(&mut out)?;
        Ok(out)
    }

    /// A reader of the entry's own bytes, decompressed, streamed (a layer to hash again).
    pub fn reader(self: &Arc<Self>, entry: &SpoolEntry) -> io::Result<impl Read + use<>> {
        let section = SpoolSection { spool: self.clone(), offset: entry.offset, remaining: entry.len };
        zstd::stream::read::Decoder::new(section)
    }
}

struct SpoolSection {
    spool: Arc<Spool>,
    offset: u64,
    remaining: u64,
}

impl Read for SpoolSection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.remaining) as usize;
        if n == 0 {
            return Ok(0);
        }
        let n = self.spool.file.read_at(&mut buf[..n], self.offset)?;
        self.offset += n as u64;
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Writes entries into a new spool.
pub struct SpoolWriter {
    out: BufWriter<File>,
    position: u64,
}

impl SpoolWriter {
    pub fn new() -> io::Result<SpoolWriter> {
        Ok(SpoolWriter { out: BufWriter::with_capacity(1 << 20, tempfile::tempfile()?), position: 0 })
    }

    /// Compresses everything `reader` yields into one frame, hashing it on the way.
    pub fn add(&mut self, reader: &mut dyn Read) -> io::Result<SpoolEntry> {
        let offset = self.position;
        let mut counter = Counting { inner: &mut self.out, count: 0 };
        let mut encoder = zstd::stream::write::Encoder::new(&mut counter, WIRE_LEVEL)?;
        // Sizes are known to the tar header; without them in the frame the host's decoder is as fast.
        encoder.include_checksum(false)?;
        let (sha256, size) = crate::digest::copy_hashed(reader, &mut encoder, 1 << 17)?;
        encoder.finish()?;
        let len = counter.count;
        self.position += len;
        Ok(SpoolEntry { offset, len, size, sha256 })
    }

    pub fn finish(self) -> io::Result<Arc<Spool>> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        Ok(Arc::new(Spool { file }))
    }
}

struct Counting<'a, W: Write> {
    inner: &'a mut W,
    count: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Compresses small bytes (tar headers, padding, JSON documents) into one frame.
pub fn compress(bytes: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(bytes, WIRE_LEVEL).expect("compressing into memory cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_back_whole_and_their_frames_concatenate_into_one_stream() {
        let mut writer = SpoolWriter::new().unwrap();
        let a: Vec<u8> = (0..300_000u32).map(|i| (i % 7) as u8).collect();
        let b = b"second entry".to_vec();
        let ea = writer.add(&mut &a[..]).unwrap();
        let eb = writer.add(&mut &b[..]).unwrap();
        let spool = writer.finish().unwrap();
        assert_eq!(ea.size, a.len() as u64);
        assert_eq!(ea.sha256, crate::digest::sha256_hex(&a));
        assert!(ea.len < ea.size / 10, "compressible data is compressed: {} of {}", ea.len, ea.size);
        assert_eq!(spool.contents(&eb).unwrap(), b);
        let mut joined = spool.frame(&ea).unwrap();
        joined.extend(compress(b"--"));
        joined.extend(spool.frame(&eb).unwrap());
        let mut back = Vec::new();
        zstd::stream::read::Decoder::new(&joined[..]).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, [a.clone(), b"--".to_vec(), b].concat());
        let mut streamed = Vec::new();
        spool.reader(&ea).unwrap().read_to_end(&mut streamed).unwrap();
        assert_eq!(streamed, a);
    }
}
