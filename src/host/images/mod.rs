//! Container images on a node, in k3s's own containerd (socket
//! `/run/k3s/containerd/containerd.sock`, namespace `k8s.io`: contract section 7), never the
//! system's.
//!
//! - `image-inventory`: the named images and whether they are pinned, and the room left.
//! - `import-images`: the upload (an OCI image layout tar the operator put together, zstd on the
//!   wire) is decompressed and streamed straight into `k3s ctr images import -`: no temp file
//!   on the host, nothing but what containerd itself writes. Then every image is pinned with
//!   k3s's labels and checked present at its digest.
//! - `pin-images`: the same pin and check, for images a node already holds.
//! - `stage-images` and `staged-digest`: archives for `<data-dir>/agent/images/` (see [`stage`]).
//!
//! Invariants: an upload that breaks (the operator killed, the node cut off, a frame that does
//! not add up) kills the import before containerd sees the end of its input, and the archive's
//! `index.json` comes last, so no image is ever named from half an archive; a re-run imports it
//! again. The free space is checked before anything is streamed.

mod ctr;
mod stage;

pub use ctr::{parse_list, Ctr, NAMESPACE, SOCKET};

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::error::{describe_io, Failure, HostError};
use super::serve::{Context, HostOperation};
use crate::protocol::files::Compression;
use crate::protocol::frame::FrameError;
use crate::protocol::images::{
    ImageInventory, ImagesReport, ImportImages, Inventory, NodeImage, PinImages, StoredImage,
};
use crate::protocol::ErrorKind;

/// Room kept free beyond the images' own bytes: containerd's metadata and ingest files, and the
/// kubelet's eviction threshold, which a node filled to the brim would cross.
pub const SPACE_MARGIN: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    #[error("k3s is not installed on this node (no {}): run `k3node up` first", crate::host::k3s::layout::K3S_BIN)]
    NotInstalled,
    #[error("k3s is not running on this node: {detail}; start it (`systemctl start k3s` on a server, `k3s-agent` on an agent) or run `k3node up`")]
    NotRunning { detail: String },
    #[error("not enough disk space for the images: {} needed under {}, {} free; free some space there (`k3s crictl rmi --prune` removes images no pod uses) and run again", crate::images::human_bytes(*needed), dir.display(), crate::images::human_bytes(*available))]
    NoSpace { needed: u64, available: u64, dir: PathBuf },
    #[error("`k3s ctr {what}` failed: {detail}")]
    Ctr { what: String, detail: String },
    #[error("the upload broke off: {0}; nothing was imported from it (run again to converge)")]
    Stream(FrameError),
    #[error("the upload could not be read: {0}; nothing was imported from it")]
    Upload(String),
    #[error("after the import, {name} {found} on this node, not at {digest}")]
    Missing { name: String, digest: String, found: String },
    #[error("{what} {}: {}", path.display(), describe_io(source))]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error("{0}")]
    BadRequest(String),
}

impl Failure for ImagesError {
    fn kind(&self) -> ErrorKind {
        match self {
            ImagesError::NotInstalled => ErrorKind::NotInstalled,
            ImagesError::NotRunning { .. } => ErrorKind::Unavailable,
            ImagesError::NoSpace { .. } => ErrorKind::NoSpace,
            ImagesError::Ctr { detail, .. } if detail.contains("no space left on device") => ErrorKind::NoSpace,
            ImagesError::Ctr { .. } => ErrorKind::Failed,
            ImagesError::Stream(FrameError::Truncated { .. }) => ErrorKind::Unavailable,
            ImagesError::Stream(_) => ErrorKind::ChecksumMismatch,
            ImagesError::Upload(_) => ErrorKind::Failed,
            ImagesError::Missing { .. } => ErrorKind::Failed,
            ImagesError::Io { source, .. } => ErrorKind::of_io(source),
            ImagesError::BadRequest(_) => ErrorKind::BadRequest,
        }
    }
}

impl ImagesError {
    /// A failed streamed import: a broken upload says so; anything else is the program's failure.
    fn from_stream(e: io::Error) -> ImagesError {
        match FrameError::of(&e) {
            Some(frame) => ImagesError::Stream(frame.clone()),
            None if e.kind() == io::ErrorKind::TimedOut => {
                ImagesError::Ctr { what: "images import".into(), detail: e.to_string() }
            }
            None => ImagesError::Upload(e.to_string()),
        }
    }
}

/// Free space where containerd keeps content: its root's filesystem, found from the root up
/// (before k3s's first start the root does not exist yet).
fn free_space(sys: &dyn crate::host::system::HostSystem) -> Option<(PathBuf, u64)> {
    let data_dir =
        crate::host::k3s::data_dir(sys).unwrap_or_else(|_| PathBuf::from(crate::host::k3s::layout::DEFAULT_DATA_DIR));
    let root = data_dir.join("agent/containerd");
    let mut dir: Option<&Path> = Some(&root);
    while let Some(d) = dir {
        if let Ok(space) = sys.disk_space(d) {
            return Some((d.to_path_buf(), space.available_bytes));
        }
        dir = d.parent();
    }
    None
}

impl HostOperation for ImageInventory {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<Inventory, HostError> {
        let ctr = Ctr::new(ctx.sys)?;
        let images = ctr.list()?;
        let available = free_space(ctx.sys).map(|(_, bytes)| bytes).unwrap_or(u64::MAX);
        Ok(Inventory { images, available_bytes: available })
    }
}

/// Pins every image of `wanted`, then checks each is there at its digest.
fn pin_and_check(ctr: &Ctr<'_>, wanted: &[NodeImage]) -> Result<Vec<StoredImage>, ImagesError> {
    for image in wanted {
        ctr.pin(&image.name)?;
    }
    let held = ctr.list()?;
    let mut out = Vec::new();
    for image in wanted {
        match held.iter().find(|h| h.name == image.name) {
            Some(h) if h.digest == image.digest && h.pinned => out.push(h.clone()),
            Some(h) if h.digest == image.digest => {
                return Err(ImagesError::Missing {
                    name: image.name.clone(),
                    digest: image.digest.clone(),
                    found: "is not pinned".into(),
                })
            }
            Some(h) => {
                return Err(ImagesError::Missing {
                    name: image.name.clone(),
                    digest: image.digest.clone(),
                    found: format!("is at {}", h.digest),
                })
            }
            None => {
                return Err(ImagesError::Missing {
                    name: image.name.clone(),
                    digest: image.digest.clone(),
                    found: "is missing".into(),
                })
            }
        }
    }
    Ok(out)
}

impl HostOperation for ImportImages {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<ImagesReport, HostError> {
        if self.images.is_empty() {
            return Err(ImagesError::BadRequest("an import names no image".into()).into());
        }
        let ctr = Ctr::new(ctx.sys)?;
        if let Some((dir, available)) = free_space(ctx.sys) {
            let needed = self.image_bytes.saturating_add(SPACE_MARGIN);
            if available < needed {
                return Err(ImagesError::NoSpace { needed, available, dir }.into());
            }
        }
        let count = self.images.len();
        ctx.progress(&format!("importing {count} images ({})", crate::images::human_bytes(self.image_bytes)));
        let mut upload = ctx.upload();
        {
            let mut tar: Box<dyn Read + '_> = match self.compression {
                Compression::None => Box::new(&mut upload),
                Compression::Zstd => Box::new(
                    zstd::stream::read::Decoder::new(&mut upload).map_err(|e| ImagesError::Upload(e.to_string()))?,
                ),
            };
            ctr.import(&mut tar)?;
        }
        // The tar's end is not the stream's: its end frame must still come and add up.
        io::copy(&mut upload, &mut io::sink()).map_err(ImagesError::from_stream)?;
        let images = pin_and_check(&ctr, &self.images)?;
        Ok(ImagesReport { images })
    }
}

impl HostOperation for PinImages {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<ImagesReport, HostError> {
        let ctr = Ctr::new(ctx.sys)?;
        Ok(ImagesReport { images: pin_and_check(&ctr, &self.images)? })
    }
}

#[cfg(test)]
mod tests;
