//! sha256, the one way k3node hashes anything: bytes, a reader, an async reader, a file, and
//! streams on their way (a running hash, hashing reader and writer adapters, a hashed copy).
//! Hex, lowercase, as sha256sum and k3s's checksum files write it.

use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

const BUFFER: usize = 1 << 16;

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Whether `text` has the form of a sha256: 64 hexadecimal digits (either case).
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A running sha256 and byte count: what every stream hashed on its way keeps.
#[derive(Clone, Default)]
pub struct Running {
    hasher: Sha256,
    size: u64,
}

impl Running {
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The sha256 of what was seen so far; more may follow.
    pub fn hex(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }

    pub fn finish(self) -> (String, u64) {
        (hex::encode(self.hasher.finalize()), self.size)
    }
}

/// Hashes and counts everything written through it.
pub struct HashingWriter<W> {
    inner: W,
    running: Running,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter { inner, running: Running::default() }
    }

    /// The writer back, with the sha256 and size of what went through.
    pub fn finish(self) -> (W, String, u64) {
        let (sha256, size) = self.running.finish();
        (self.inner, sha256, size)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.running.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes and counts everything read through it.
pub struct HashingReader<R> {
    inner: R,
    running: Running,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader { inner, running: Running::default() }
    }

    /// The sha256 and size of what was read.
    pub fn finish(self) -> (String, u64) {
        self.running.finish()
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.running.update(&buf[..n]);
        Ok(n)
    }
}

/// Which side of a copy failed: callers name the source or the destination in their errors.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{0}")]
    Read(io::Error),
    #[error("{0}")]
    Write(io::Error),
}

impl From<CopyError> for io::Error {
    fn from(e: CopyError) -> io::Error {
        match e {
            CopyError::Read(e) | CopyError::Write(e) => e,
        }
    }
}

/// Copies everything `reader` yields into `writer`, handing every piece to `see` on the way
/// (a hash, a check of the bytes); returns the byte count.
pub fn copy_seeing(
    reader: &mut dyn Read,
    writer: &mut dyn Write,
    buffer: usize,
    see: &mut dyn FnMut(&[u8]),
) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; buffer];
    let mut size = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        see(&buf[..n]);
        writer.write_all(&buf[..n]).map_err(CopyError::Write)?;
        size += n as u64;
    }
    Ok(size)
}

/// Copies everything `reader` yields into `writer`, returning its sha256 and byte count: one
/// pass where a copy must also be verified or recorded.
pub fn copy_hashed(reader: &mut dyn Read, writer: &mut dyn Write, buffer: usize) -> Result<(String, u64), CopyError> {
    let mut running = Running::default();
    copy_seeing(reader, writer, buffer, &mut |bytes| running.update(bytes))?;
    Ok(running.finish())
}

/// The running hash of everything `reader` yields (to go on hashing what is appended later).
pub fn running_of(reader: &mut dyn Read, buffer: usize) -> io::Result<Running> {
    let mut running = Running::default();
    copy_seeing(reader, &mut io::sink(), buffer, &mut |bytes| running.update(bytes))?;
    Ok(running)
}

/// sha256 of everything `reader` yields.
pub fn sha256_reader(reader: &mut dyn Read) -> io::Result<String> {
    Ok(sha256_and_size(reader)?.0)
}

/// sha256 and byte count of everything `reader` yields.
pub fn sha256_and_size(reader: &mut dyn Read) -> io::Result<(String, u64)> {
    Ok(running_of(reader, BUFFER)?.finish())
}

/// sha256 and size of a local file.
pub fn sha256_file(path: &Path) -> io::Result<(String, u64)> {
    sha256_and_size(&mut std::fs::File::open(path)?)
}

/// sha256 of everything an async `reader` yields.
pub async fn sha256_async(reader: &mut (dyn AsyncRead + Unpin + Send)) -> io::Result<String> {
    let mut running = Running::default();
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        running.update(&buf[..n]);
    }
    Ok(running.finish().0)
}

/// sha256 and size of a local file, hashed on a blocking thread.
pub async fn sha256_file_async(path: &Path) -> io::Result<(String, u64)> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || sha256_file(&path)).await.map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn every_form_gives_the_same_hash() {
        assert_eq!(sha256_hex(b"abc"), ABC);
        assert_eq!(sha256_and_size(&mut &b"abc"[..]).unwrap(), (ABC.to_string(), 3));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"abc").unwrap();
        assert_eq!(sha256_file(&dir.path().join("f")).unwrap().0, ABC);
    }

    #[test]
    fn the_adapters_and_copies_hash_what_passes_through_them() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let whole = sha256_hex(&data);

        let mut writer = HashingWriter::new(Vec::new());
        writer.write_all(&data).unwrap();
        let (out, sha, size) = writer.finish();
        assert_eq!((out, sha, size), (data.clone(), whole.clone(), data.len() as u64));

        let mut reader = HashingReader::new(&data[..]);
        io::copy(&mut reader, &mut io::sink()).unwrap();
        assert_eq!(reader.finish(), (whole.clone(), data.len() as u64));

        let mut copy = Vec::new();
        assert_eq!(copy_hashed(&mut &data[..], &mut copy, 4096).unwrap(), (whole.clone(), data.len() as u64));
        assert_eq!(copy, data);

        // A running hash goes on where it stopped (a download resumed).
        let mut running = running_of(&mut &data[..1000], 64).unwrap();
        assert_eq!(running.hex(), sha256_hex(&data[..1000]));
        running.update(&data[1000..]);
        assert_eq!(running.finish(), (whole, data.len() as u64));
    }

    #[test]
    fn a_failed_copy_says_which_side_failed() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk gone"))
            }
        }
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        assert!(matches!(copy_hashed(&mut Broken, &mut Vec::new(), 16), Err(CopyError::Read(_))));
        assert!(matches!(copy_hashed(&mut &b"abc"[..], &mut Broken, 16), Err(CopyError::Write(_))));
    }

    #[tokio::test]
    async fn the_async_forms_agree() {
        assert_eq!(sha256_async(&mut &b"abc"[..]).await.unwrap(), ABC);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"abc").unwrap();
        assert_eq!(sha256_file_async(&dir.path().join("f")).await.unwrap(), (ABC.to_string(), 3));
    }
}
