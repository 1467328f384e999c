//! Reading an input once: its compression found from its first bytes (plain tar, gzip, zstd),
//! every file of the tar compressed into the spool with its size and sha256, links noted.
//! Nothing is interpreted here; [`super::oci`] and [`super::docker`] make sense of the files.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read};
use std::sync::Arc;

use super::spool::{Spool, SpoolEntry, SpoolWriter};
use super::ArchiveError;

/// The files of one input tar, by their path in it (without a leading `./`).
pub struct RawArchive {
    pub files: BTreeMap<String, SpoolEntry>,
    pub spool: Arc<Spool>,
    /// Bytes of the input as read (compressed as given).
    pub bytes_read: u64,
}

impl RawArchive {
    pub fn get(&self, path: &str) -> Option<&SpoolEntry> {
        self.files.get(path.trim_start_matches("./"))
    }
}

/// How an input is compressed, from its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Tar,
    Gzip,
    Zstd,
}

/// The first bytes of an input, told apart: a tar (possibly gzip or zstd compressed), or what else.
pub fn sniff(head: &[u8]) -> Result<Compression, String> {
    if head.starts_with(&[0x1f, 0x8b]) {
        return Ok(Compression::Gzip);
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Ok(Compression::Zstd);
    }
    if head.len() >= 262 && &head[257..262] == b"ustar" {
        return Ok(Compression::Tar);
    }
    let known: [(&[u8], &str, &str); 4] = [
        (b"BZh", "bzip2", "bunzip2"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0], "xz", "xz -d"),
        (&[0x04, 0x22, 0x4d, 0x18], "lz4", "lz4 -d"),
        (&[0x5d, 0x00, 0x00], "lzma", "xz -d"),
    ];
    for (magic, name, tool) in known {
        if head.starts_with(magic) {
            return Err(format!(
                "it is compressed with {name}, which k3node does not read: decompress it first (`{tool}`), or give a tar, .tar.gz or .tar.zst"
            ));
        }
    }
    if head.is_empty() {
        return Err("it is empty".into());
    }
    Err("it is not a tar archive (nor a gzip or zstd compressed one): give the output of `docker save`, `podman save` or `skopeo copy ... oci-archive:FILE`".into())
}

/// Counts what is read.
struct Counted<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// Reads the tar in `input` (named `file` in errors) into a new spool.
pub fn read(file: &str, input: Box<dyn Read + Send>) -> Result<RawArchive, ArchiveError> {
    let fail = |message: String| ArchiveError { file: file.to_string(), image: None, message };
    let mut counted = BufReader::with_capacity(1 << 20, Counted { inner: input, count: 0 });
    let head = counted.fill_buf().map_err(|e| fail(format!("cannot read: {e}")))?.to_vec();
    let compression = sniff(&head).map_err(fail)?;
    let tar_stream: Box<dyn Read + '_> = match compression {
        Compression::Tar => Box::new(&mut counted),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(&mut counted)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(&mut counted).map_err(|e| fail(format!("zstd: {e}")))?)
        }
    };
    let mut tar_stream = BufReader::with_capacity(1 << 20, tar_stream);
    if compression != Compression::Tar {
        let inner_head = tar_stream.fill_buf().map_err(|e| {
            fail(format!("the archive is truncated or corrupt ({e}); check the file, or save the image again"))
        })?;
        if inner_head.len() < 262 || &inner_head[257..262] != b"ustar" {
            return Err(fail("it is compressed, but what it holds is not a tar archive".into()));
        }
    }
    let mut archive = tar::Archive::new(tar_stream);
    let mut spool = SpoolWriter::new().map_err(|e| fail(format!("cannot make a temp file to hold it: {e}")))?;
    let mut files = BTreeMap::new();
    let mut links = Vec::new();
    let broken = |e: io::Error| {
        fail(format!("the archive is truncated or corrupt ({e}); check the file, or save the image again"))
    };
    for entry in archive.entries().map_err(broken)? {
        let mut entry = entry.map_err(broken)?;
        let path = entry.path().map_err(broken)?.to_string_lossy().trim_start_matches("./").to_string();
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let added = spool.add(&mut entry).map_err(|e| match e.kind() {
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData | io::ErrorKind::Other
                        if !matches!(crate::protocol::ErrorKind::of_io(&e), crate::protocol::ErrorKind::NoSpace) =>
                    {
                        broken(e)
                    }
                    _ => fail(format!("cannot keep a copy while reading it: {e}")),
                })?;
                files.insert(path, added);
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                if let Ok(Some(target)) = entry.link_name() {
                    let target = target.to_string_lossy().to_string();
                    let resolved = if entry.header().entry_type() == tar::EntryType::Symlink {
                        resolve(&path, &target)
                    } else {
                        target.trim_start_matches("./").to_string()
                    };
                    links.push((path, resolved));
                }
            }
            _ => {}
        }
    }
    // What follows the tar's end (its zero blocks) is not read by the tar reader: a compressed
    // stream must still end cleanly, or the file was cut.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(broken)?;
    drop(rest);
    for (path, target) in links {
        if let Some(entry) = files.get(&target).cloned() {
            files.insert(path, entry);
        }
    }
    let bytes_read = counted.into_inner().count;
    let spool = spool.finish().map_err(|e| fail(format!("cannot keep a copy while reading it: {e}")))?;
    Ok(RawArchive { files, spool, bytes_read })
}

/// A symlink's target as a path inside the archive (docker save links shared layers `../<id>/layer.tar`).
fn resolve(link: &str, target: &str) -> String {
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop();
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressions_are_told_apart_by_their_first_bytes() {
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(sniff(&tar), Ok(Compression::Tar));
        assert_eq!(sniff(&[0x1f, 0x8b, 8]), Ok(Compression::Gzip));
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Ok(Compression::Zstd));
        assert!(sniff(b"BZh91AY").unwrap_err().contains("bzip2"));
        assert!(sniff(&[0xfd, b'7', b'z', b'X', b'Z', 0]).unwrap_err().contains("`xz -d`"));
        assert!(sniff(b"{\"hello\": 1}").unwrap_err().contains("not a tar archive"));
    }

    #[test]
    fn links_resolve_inside_the_archive() {
        assert_eq!(resolve("abc/layer.tar", "../def/layer.tar"), "def/layer.tar");
        assert_eq!(resolve("layer.tar", "blobs/sha256/x"), "blobs/sha256/x");
    }
}
