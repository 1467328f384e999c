//! A verified file on the operator's side, to be put on hosts (the k3s binary today; images and
//! snapshots next). Over SSH it travels zstd-compressed: it is compressed once per run, into a
//! temp file, and every host's upload streams from that file, so memory stays flat whatever its
//! size and however many hosts receive it.

use std::io;
use std::path::PathBuf;

use tokio::sync::OnceCell;

use super::link::{Link, LinkError};
use crate::protocol::files::{Compression, FileReceived, ReceiveFile};

pub struct Payload {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    compressed: OnceCell<Compressed>,
}

/// The zstd copy of a payload, with its own size and sha256 (hashed once here, so that no upload
/// of it hashes it again).
struct Compressed {
    path: tempfile::TempPath,
    size: u64,
    sha256: String,
}

impl Payload {
    pub fn new(path: PathBuf, sha256: String, size: u64) -> Payload {
        Payload { path, sha256, size, compressed: OnceCell::new() }
    }

    async fn compressed(&self) -> io::Result<&Compressed> {
        self.compressed
            .get_or_try_init(|| async {
                let source = self.path.clone();
                tokio::task::spawn_blocking(move || -> io::Result<Compressed> {
                    // In the temp dir: the source's own dir may be a read-only airgap bundle.
                    let mut out = tempfile::Builder::new().prefix("k3node-upload.").suffix(".zst").tempfile()?;
                    // Level 1: every host waits for this, and level 3 would buy only a tenth less data.
                    zstd::stream::copy_encode(std::fs::File::open(&source)?, out.as_file_mut(), 1)?;
                    let path = out.into_temp_path();
                    let (sha256, size) = crate::digest::sha256_file(&path)?;
                    Ok(Compressed { path, size, sha256 })
                })
                .await
                .map_err(io::Error::other)?
            })
            .await
    }

    /// Puts the payload at `dest` on the host, verified there against its size and sha256
    /// before it replaces anything.
    pub async fn install(&self, link: &Link, dest: &str, mode: u32) -> Result<FileReceived, LinkError> {
        let local = |what: &str, source| LinkError::Local { host: link.host().into(), what: what.into(), source };
        let (source, stream_size, stream_sha256, compression) = if link.compresses_uploads() {
            let c = self.compressed().await.map_err(|e| local("compressing the upload", e))?;
            (c.path.to_path_buf(), c.size, c.sha256.as_str(), Compression::Zstd)
        } else {
            (self.path.clone(), self.size, self.sha256.as_str(), Compression::None)
        };
        let mut file = tokio::fs::File::open(&source).await.map_err(|e| local("opening the upload", e))?;
        let request =
            ReceiveFile { path: dest.to_string(), size: self.size, sha256: self.sha256.clone(), mode, compression };
        link.call(&request).upload_verified(&mut file, stream_size, stream_sha256).send().await
    }
}
