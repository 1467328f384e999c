//! Container images on a node: what k3s's containerd holds, importing a streamed archive into
//! it, pinning, and staging archives into k3s's images directory for import at start.

use serde::{Deserialize, Serialize};

use super::files::Compression;
use super::Operation;

/// The labels k3s puts on the images it imports from its images directory (contract section 7):
/// the kubelet's image garbage collection never removes an image that carries them.
pub const PIN_LABELS: [&str; 2] = ["io.cattle.k3s.pinned", "io.cri-containerd.pinned"];
pub const PIN_VALUE: &str = "pinned";

/// An image as a node holds it (or should hold it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeImage {
    /// Full name (`docker.io/library/app:1`).
    pub name: String,
    /// Digest of the manifest or index the name points to.
    pub digest: String,
}

/// `image-inventory`: the images of k3s's containerd (namespace `k8s.io`), and the room left
/// where it keeps their content.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImageInventory {}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Inventory {
    pub images: Vec<StoredImage>,
    /// Bytes free on the filesystem of containerd's root.
    pub available_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredImage {
    pub name: String,
    pub digest: String,
    /// Both pin labels set to `pinned`.
    pub pinned: bool,
}

impl Operation for ImageInventory {
    const NAME: &'static str = "image-inventory";
    const UPLOAD: bool = false;
    const DOWNLOAD: bool = false;
    type Answer = Inventory;
    fn mutates(&self) -> bool {
        false
    }
}

/// `import-images`: the upload is an OCI image layout tar (compressed as said) holding `images`;
/// it is streamed into k3s's containerd, the images are pinned and then checked present at their
/// digests. Nothing else is written on the host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImportImages {
    pub images: Vec<NodeImage>,
    /// Bytes of the blobs the archive carries (uncompressed): the room containerd needs.
    pub image_bytes: u64,
    pub compression: Compression,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImagesReport {
    /// Each image asked for, as the node now holds it.
    pub images: Vec<StoredImage>,
}

impl Operation for ImportImages {
    const NAME: &'static str = "import-images";
    const UPLOAD: bool = true;
    const DOWNLOAD: bool = false;
    type Answer = ImagesReport;
    fn mutates(&self) -> bool {
        true
    }
}

/// `pin-images`: images the node already holds get the pin labels; all are checked present at
/// their digests.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PinImages {
    pub images: Vec<NodeImage>,
}

impl Operation for PinImages {
    const NAME: &'static str = "pin-images";
    const UPLOAD: bool = false;
    const DOWNLOAD: bool = false;
    type Answer = ImagesReport;
    fn mutates(&self) -> bool {
        true
    }
}

/// `stage-images`: the upload (an archive, stored as it arrives) becomes
/// `<data-dir>/agent/images/<file_name>`: written under a temp name outside that directory
/// (which k3s watches), checked against `size` and `sha256`, fsynced, renamed into it. k3s
/// imports it at its next start (newer releases: at once).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StageImages {
    /// A plain file name with a suffix k3s imports (`.tar`, `.tar.zst`, ...).
    pub file_name: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Staged {
    pub path: String,
}

impl Operation for StageImages {
    const NAME: &'static str = "stage-images";
    const UPLOAD: bool = true;
    const DOWNLOAD: bool = false;
    type Answer = Staged;
    fn mutates(&self) -> bool {
        true
    }
}

/// `staged-digest`: the sha256 of a staged archive, or None when it is not there (so that an
/// unchanged archive is not sent again).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StagedDigest {
    pub file_name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StagedDigestAnswer {
    pub path: String,
    pub sha256: Option<String>,
}

impl Operation for StagedDigest {
    const NAME: &'static str = "staged-digest";
    const UPLOAD: bool = false;
    const DOWNLOAD: bool = false;
    type Answer = StagedDigestAnswer;
    fn mutates(&self) -> bool {
        false
    }
}

/// `prune-staged`: `up`'s preload set on this node becomes `keep` (file names in the images
/// directory). Archives staged by an earlier preload and no longer in the set are removed from
/// the images directory, so that k3s stops importing them at each start (the images they brought
/// stay in containerd). Archives staged any other way (`k3node images stage`, by hand) are
/// never touched: the node keeps the record of what its preloads staged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PruneStaged {
    pub keep: Vec<String>,
    /// Required: says what would be removed, changing nothing.
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pruned {
    /// File names removed (or, in a dry run, that would be).
    pub removed: Vec<String>,
}

impl Operation for PruneStaged {
    const NAME: &'static str = "prune-staged";
    const UPLOAD: bool = false;
    const DOWNLOAD: bool = false;
    type Answer = Pruned;
    fn mutates(&self) -> bool {
        !self.dry_run
    }
}
