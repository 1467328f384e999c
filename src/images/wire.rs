//! What a node receives: an OCI image layout tar, zstd-compressed, holding the images it lacks.
//! It is put together from the spool's frames (each blob compressed once, whatever the number of
//! nodes) and small frames k3node writes for the tar headers, `oci-layout` and `index.json`.
//!
//! Invariants: `index.json` is the last entry, so a stream cut anywhere before its end names no
//! image (containerd creates images only from an `index.json`); every blob appears once; the
//! same selection of images always gives the same bytes (the staged file's digest is stable).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::sync::Arc;

use serde::Serialize;

use super::oci::{IMAGE_NAME, REF_NAME};
use super::spool::{compress, Spool};
use super::{Archive, BlobData, Image};

enum Segment {
    /// A compressed frame k3node made.
    Inline(Vec<u8>),
    /// A compressed frame of the spool.
    Spool { spool: Arc<Spool>, offset: u64, len: u64 },
}

impl Segment {
    fn len(&self) -> u64 {
        match self {
            Segment::Inline(bytes) => bytes.len() as u64,
            Segment::Spool { len, .. } => *len,
        }
    }
}

/// A composed stream: its segments, and what it holds.
pub struct Wire {
    segments: Vec<Segment>,
    /// Bytes on the wire (compressed).
    pub len: u64,
    /// Bytes of the images' blobs it carries (uncompressed).
    pub image_bytes: u64,
}

#[derive(Serialize)]
struct IndexDoc<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    manifests: Vec<IndexEntry<'a>>,
}

#[derive(Serialize)]
struct IndexEntry<'a> {
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    digest: &'a str,
    size: u64,
    annotations: BTreeMap<&'a str, String>,
}

/// Tar entry header bytes (ustar, mode 0444, time 0: the same bytes every time).
fn header(path: &str, size: u64) -> [u8; 512] {
    let mut header = tar::Header::new_ustar();
    header.set_path(path).expect("k3node's own paths fit a ustar header");
    header.set_size(size);
    header.set_mode(0o444);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    *header.as_bytes()
}

fn padding(size: u64) -> usize {
    ((512 - size % 512) % 512) as usize
}

struct Builder {
    segments: Vec<Segment>,
    pending: Vec<u8>,
}

impl Builder {
    fn raw(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    fn flush(&mut self) {
        if !self.pending.is_empty() {
            self.segments.push(Segment::Inline(compress(&self.pending)));
            self.pending.clear();
        }
    }

    fn file(&mut self, path: &str, bytes: &[u8]) {
        self.raw(&header(path, bytes.len() as u64));
        self.raw(bytes);
        self.raw(&vec![0u8; padding(bytes.len() as u64)]);
    }
}

/// The stream holding `images` (each with the archive it comes from), blobs shared between them
/// sent once.
pub fn compose(images: &[(&Archive, &Image)]) -> Wire {
    let mut builder = Builder { segments: Vec::new(), pending: Vec::new() };
    builder.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let mut sent = BTreeSet::new();
    let mut image_bytes = 0;
    for (archive, image) in images {
        for digest in &image.blobs {
            if !sent.insert(digest.clone()) {
                continue;
            }
            let blob = &archive.blobs[digest];
            image_bytes += blob.size;
            let path = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
            match &blob.data {
                BlobData::Memory(bytes) => builder.file(&path, bytes),
                BlobData::Spool(entry) => {
                    builder.raw(&header(&path, entry.size));
                    builder.flush();
                    builder.segments.push(Segment::Spool {
                        spool: archive.spool.clone(),
                        offset: entry.offset,
                        len: entry.len,
                    });
                    builder.raw(&vec![0u8; padding(entry.size)]);
                }
            }
        }
    }
    let index = IndexDoc {
        schema_version: 2,
        media_type: super::oci::INDEX,
        manifests: images
            .iter()
            .map(|(_, image)| {
                let mut annotations = BTreeMap::new();
                annotations.insert(IMAGE_NAME, image.name.clone());
                if let Some(tag) = tag_of(&image.name) {
                    annotations.insert(REF_NAME, tag.to_string());
                }
                IndexEntry {
                    media_type: &image.media_type,
                    digest: &image.digest,
                    size: archive_blob_size(images, &image.digest),
                    annotations,
                }
            })
            .collect(),
    };
    let index = serde_json::to_vec(&index).expect("an index always serializes");
    builder.file("index.json", &index);
    // The end of the archive: two zero blocks.
    builder.raw(&[0u8; 1024]);
    builder.flush();
    let len = builder.segments.iter().map(Segment::len).sum();
    Wire { segments: builder.segments, len, image_bytes }
}

fn archive_blob_size(images: &[(&Archive, &Image)], digest: &str) -> u64 {
    images.iter().find_map(|(a, _)| a.blobs.get(digest).map(|b| b.size)).unwrap_or(0)
}

/// The tag of a normalised name (`docker.io/library/app:1` -> `1`).
fn tag_of(name: &str) -> Option<&str> {
    let name = name.split('@').next()?;
    let last = name.rsplit('/').next()?;
    last.split_once(':').map(|(_, tag)| tag)
}

impl Wire {
    /// A reader of the stream's bytes (compressed), from the start.
    pub fn reader(self: &Arc<Self>) -> WireReader {
        WireReader { wire: self.clone(), segment: 0, offset: 0 }
    }

    /// sha256 of the stream as it goes on the wire (a staged file's digest).
    pub fn sha256(self: &Arc<Self>) -> io::Result<String> {
        crate::digest::sha256_reader(&mut self.reader())
    }

    /// The stream as an async reader: a blocking task reads the spool (a file) and feeds a pipe,
    /// so that no runtime thread ever waits for the disk.
    pub fn async_reader(self: &Arc<Self>) -> impl tokio::io::AsyncRead + Unpin + Send + 'static {
        let (writer, reader) = tokio::io::duplex(1 << 20);
        let mut source = self.reader();
        tokio::task::spawn_blocking(move || {
            let mut sink = tokio_util::io::SyncIoBridge::new(writer);
            // A closed pipe means the upload stopped (the node failed): nothing more to feed.
            let _ = io::copy(&mut source, &mut sink);
            let _ = std::io::Write::flush(&mut sink);
        });
        reader
    }
}

pub struct WireReader {
    wire: Arc<Wire>,
    segment: usize,
    offset: u64,
}

impl Read for WireReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(segment) = self.wire.segments.get(self.segment) else { return Ok(0) };
            let remaining = segment.len() - self.offset;
            if remaining == 0 {
                self.segment += 1;
                self.offset = 0;
                continue;
            }
            let n = (buf.len() as u64).min(remaining) as usize;
            match segment {
                Segment::Inline(bytes) => {
                    let start = self.offset as usize;
                    buf[..n].copy_from_slice(&bytes[start..start + n]);
                }
                Segment::Spool { spool, offset, .. } => spool.read_at(&mut buf[..n], offset + self.offset)?,
            }
            self.offset += n as u64;
            return Ok(n);
        }
    }
}
