//! sha256, the one way k3node hashes anything: bytes, a reader, an async reader, a file.
//! Hex, lowercase, as sha256sum and k3s's checksum files write it.

use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

const BUFFER: usize = 1 << 16;

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// sha256 of everything `reader` yields.
pub fn sha256_reader(reader: &mut dyn Read) -> io::Result<String> {
    Ok(sha256_and_size(reader)?.0)
}

/// sha256 and byte count of everything `reader` yields.
pub fn sha256_and_size(reader: &mut dyn Read) -> io::Result<(String, u64)> {
    copy_hashed(reader, &mut io::sink(), BUFFER)
}

/// Copies everything `reader` yields into `writer`, returning its sha256 and byte count: one
/// pass where a copy must also be verified or recorded.
pub fn copy_hashed(reader: &mut dyn Read, writer: &mut dyn Write, buffer: usize) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; buffer];
    let mut size = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        writer.write_all(&buf[..n])?;
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// sha256 and size of a local file.
pub fn sha256_file(path: &Path) -> io::Result<(String, u64)> {
    sha256_and_size(&mut std::fs::File::open(path)?)
}

/// sha256 of everything an async `reader` yields.
pub async fn sha256_async(reader: &mut (dyn AsyncRead + Unpin + Send)) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
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

    #[tokio::test]
    async fn the_async_forms_agree() {
        assert_eq!(sha256_async(&mut &b"abc"[..]).await.unwrap(), ABC);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"abc").unwrap();
        assert_eq!(sha256_file_async(&dir.path().join("f")).await.unwrap(), (ABC.to_string(), 3));
    }
}
