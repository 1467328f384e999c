//! Container image archives on the operator's side: what `k3node images import|stage` and
//! `spec.images` read before any host is touched.
//!
//! An input (a file, or stdin once) is an OCI image layout tarball (`skopeo copy ...
//! oci-archive:`, `docker save` of Docker 25 and later) or a docker-archive (`docker save`,
//! `podman save`, `skopeo copy ... docker-archive:`), plain or compressed with gzip or zstd.
//! It is read exactly once ([`read`]): every file is compressed into a spool ([`spool`]) while
//! its sha256 is computed, and then the images are made out ([`oci`], [`docker`]): names
//! (normalised as the kubelet reads them, [`reference`]), manifest or index digests, the
//! platforms held, sizes.
//!
//! Invariants:
//! - Every blob an image needs is present and its bytes match its digest (a docker-archive's
//!   layers match the config's diff_ids) before anything is sent: a bad input is refused as a
//!   whole, naming the file and the image, and no host is touched.
//! - An index may list platforms the archive does not hold (a one-platform `docker save` of a
//!   multi-platform image): they are reported as missing, never an error, and never sent; a
//!   manifest the archive does hold must be complete.
//! - A docker-archive has no manifest of its own: k3node writes an OCI manifest for it
//!   (deterministically, so the same archive always gives the same digest), and that manifest's
//!   digest is the image's digest on every node.
//! - What a node receives ([`wire`]) is an OCI layout put together from the spool's frames, with
//!   only the blobs of the images it lacks and `index.json` last: a stream cut anywhere before its
//!   end never names an image.
//!
//! The JSON documents are read through small serde structs of the fields k3node needs (the OCI
//! image spec's descriptor, index, manifest and config) rather than a full OCI model crate: the
//! helper binary is uploaded to every host and stays small.

pub mod docker;
pub mod oci;
pub mod read;
pub mod reference;
pub mod spool;
pub mod wire;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use spool::{Spool, SpoolEntry};

/// An archive that cannot be used, with the file (and the image) it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ArchiveError {
    /// The input as the user named it (`-` is `<stdin>`).
    pub file: String,
    pub image: Option<String>,
    pub message: String,
}

impl std::fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.image {
            Some(image) => write!(f, "{}: image {image}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// One image of an archive, as it will be named and found on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Image {
    /// The full name (`docker.io/library/app:1`).
    pub name: String,
    /// Digest of the manifest or index the name points to (`sha256:...`).
    pub digest: String,
    pub media_type: String,
    /// Platforms the archive holds (`linux/amd64`).
    pub platforms: Vec<String>,
    /// Platforms its index lists that the archive does not hold.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_platforms: Vec<String>,
    /// Bytes of every blob it is made of (index, manifests, configs, layers) held in the archive.
    pub size: u64,
    /// The digests of those blobs (the image's own first).
    #[serde(skip)]
    pub blobs: Vec<String>,
}

/// Where a blob's bytes are.
#[derive(Debug, Clone)]
pub enum BlobData {
    /// A file of the input, in its spool.
    Spool(SpoolEntry),
    /// Written by k3node (a docker-archive image's manifest).
    Memory(Arc<Vec<u8>>),
}

#[derive(Debug, Clone)]
pub struct Blob {
    pub size: u64,
    pub data: BlobData,
}

/// A checked input: its images and the blobs they are made of.
#[derive(Debug)]
pub struct Archive {
    pub file: String,
    /// `oci-layout` or `docker-archive`.
    pub format: &'static str,
    pub images: Vec<Image>,
    pub blobs: BTreeMap<String, Blob>,
    pub spool: Arc<Spool>,
    /// Bytes read from the input (compressed as given).
    pub bytes_read: u64,
}

/// An input named on the command line or in the cluster file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    File(PathBuf),
    Stdin,
}

impl Input {
    pub fn parse(arg: &str) -> Input {
        if arg == "-" {
            Input::Stdin
        } else {
            Input::File(PathBuf::from(arg))
        }
    }

    /// How errors and tables name it.
    pub fn display(&self) -> String {
        match self {
            Input::File(path) => path.display().to_string(),
            Input::Stdin => "<stdin>".to_string(),
        }
    }

    /// A name for the archive when it is staged on hosts (`app.tar.gz` -> `app`).
    pub fn stem(&self) -> Option<String> {
        let Input::File(path) = self else { return None };
        let name = path.file_name()?.to_string_lossy().to_string();
        let mut stem = name.as_str();
        for suffix in [".tar.gz", ".tar.zst", ".tgz", ".tzst", ".tar", ".gz", ".zst"] {
            if let Some(s) = stem.strip_suffix(suffix) {
                stem = s;
                break;
            }
        }
        let clean: String =
            stem.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
        (!clean.is_empty() && !clean.starts_with('.')).then_some(clean)
    }
}

/// Reads and checks one input (stdin is read once, here).
pub fn read_input(input: &Input) -> Result<Archive, ArchiveError> {
    let file = input.display();
    let reader: Box<dyn Read + Send> = match input {
        Input::Stdin => Box::new(std::io::stdin()),
        Input::File(path) => {
            Box::new(open(path).map_err(|message| ArchiveError { file: file.clone(), image: None, message })?)
        }
    };
    read_archive(&file, reader)
}

fn open(path: &Path) -> Result<std::fs::File, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read it: {}", crate::host::describe_io(&e)))?;
    if meta.is_dir() {
        return Err("it is a directory; give the archive file (an OCI layout directory can be packed with `tar -C DIR -cf FILE .`)".into());
    }
    std::fs::File::open(path).map_err(|e| format!("cannot read it: {}", crate::host::describe_io(&e)))
}

/// Reads and checks an archive from `reader`, named `file` in errors.
pub fn read_archive(file: &str, reader: Box<dyn Read + Send>) -> Result<Archive, ArchiveError> {
    let raw = read::read(file, reader)?;
    let fail = |message: &str| ArchiveError { file: file.to_string(), image: None, message: message.to_string() };
    let (format, images, blobs) = if raw.get("oci-layout").is_some() && raw.get("index.json").is_some() {
        let (images, blobs) = oci::parse(file, &raw)?;
        ("oci-layout", images, blobs)
    } else if raw.get("manifest.json").is_some() {
        let (images, blobs) = docker::parse(file, &raw)?;
        ("docker-archive", images, blobs)
    } else if raw.get("index.json").is_some() || raw.get("oci-layout").is_some() {
        return Err(fail("an OCI image layout needs both oci-layout and index.json at its top; the archive is truncated or not an image layout"));
    } else {
        return Err(fail(
            "the tar holds neither an OCI image layout (oci-layout, index.json) nor a docker archive (manifest.json)",
        ));
    };
    if images.is_empty() {
        return Err(fail("the archive holds no image"));
    }
    Ok(Archive { file: file.to_string(), format, images, blobs, spool: raw.spool.clone(), bytes_read: raw.bytes_read })
}

/// Images of several inputs: a name given twice must mean the same image.
pub fn check_names(archives: &[&Archive]) -> Result<(), ArchiveError> {
    let mut seen: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
    for archive in archives {
        for image in &archive.images {
            if let Some((file, digest)) = seen.get(image.name.as_str()) {
                if *digest != image.digest {
                    return Err(ArchiveError {
                        file: archive.file.clone(),
                        image: Some(image.name.clone()),
                        message: format!(
                            "{file} has another image under this name ({digest}, here {}): import them separately, or rename one",
                            image.digest
                        ),
                    });
                }
            }
            seen.insert(&image.name, (&archive.file, &image.digest));
        }
    }
    Ok(())
}

/// `sha256:<hex>` checked; the hex part.
pub(crate) fn sha256_hex_of(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then_some(hex)
}

/// Bytes in words for messages and tables (`1.5 MiB`).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests;
