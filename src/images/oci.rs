//! OCI image layouts (image-spec `image-layout.md`): `index.json` names the images; each points
//! to a manifest or an index in `blobs/sha256/`. Every blob an image needs is checked against its
//! digest and size here; an index's platforms the archive does not hold are noted, not refused.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::read::RawArchive;
use super::reference;
use super::{sha256_hex_of, ArchiveError, Blob, BlobData, Image};

pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The annotation containerd names an image by (full name).
pub const IMAGE_NAME: &str = "io.containerd.image.name";
/// The OCI annotation for a reference (a tag, or a full name as skopeo and docker write it).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Nothing k3node reads as JSON is larger (manifests, configs and indexes are kilobytes).
const MAX_DOCUMENT: u64 = 8 << 20;

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    pub fn words(&self) -> String {
        match &self.variant {
            Some(v) if !v.is_empty() => format!("{}/{}/{v}", self.os, self.architecture),
            _ => format!("{}/{}", self.os, self.architecture),
        }
    }
}

#[derive(Debug, Deserialize)]
struct IndexDoc {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct ManifestDoc {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// The platform fields of an image config.
#[derive(Debug, Deserialize, Default)]
pub struct ConfigPlatform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// Reads `index.json` and every image it names.
pub fn parse(file: &str, raw: &RawArchive) -> Result<(Vec<Image>, BTreeMap<String, Blob>), ArchiveError> {
    let mut walker = Walker { file, raw, blobs: BTreeMap::new() };
    let index_entry = raw.get("index.json").expect("checked by the caller");
    let index: IndexDoc = walker.document(index_entry, "index.json", None)?;
    let mut images = Vec::new();
    for (i, descriptor) in index.manifests.iter().enumerate() {
        let given = descriptor
            .annotations
            .get(IMAGE_NAME)
            .or_else(|| descriptor.annotations.get(REF_NAME))
            .ok_or_else(|| walker.fail(None, format!(
                "index.json's image {} ({}) has no name ({IMAGE_NAME} or {REF_NAME} annotation): save it with a name, e.g. `skopeo copy ... oci-archive:FILE:registry.example/app:1`",
                i + 1,
                descriptor.digest
            )))?;
        let name = reference::normalize(given).map_err(|e| walker.fail(None, format!("index.json: {e}")))?;
        let mut walk = Walk::default();
        let media_type = walker.descriptor(descriptor, &name, &mut walk, None)?;
        images.push(Image {
            name,
            digest: descriptor.digest.clone(),
            media_type,
            platforms: walk.platforms,
            missing_platforms: walk.missing,
            size: walk.blobs.iter().map(|d| walker.blobs[d].size).sum(),
            blobs: walk.order,
        });
    }
    Ok((images, walker.blobs))
}

#[derive(Default)]
struct Walk {
    blobs: BTreeSet<String>,
    order: Vec<String>,
    platforms: Vec<String>,
    missing: Vec<String>,
}

impl Walk {
    fn add(&mut self, digest: &str) {
        if self.blobs.insert(digest.to_string()) {
            self.order.push(digest.to_string());
        }
    }
}

struct Walker<'a> {
    file: &'a str,
    raw: &'a RawArchive,
    blobs: BTreeMap<String, Blob>,
}

impl Walker<'_> {
    fn fail(&self, image: Option<&str>, message: String) -> ArchiveError {
        ArchiveError { file: self.file.to_string(), image: image.map(str::to_string), message }
    }

    fn document<T: for<'de> Deserialize<'de>>(
        &self,
        entry: &super::spool::SpoolEntry,
        what: &str,
        image: Option<&str>,
    ) -> Result<T, ArchiveError> {
        if entry.size > MAX_DOCUMENT {
            return Err(self.fail(image, format!("{what} is {} bytes, too large for a JSON document", entry.size)));
        }
        let bytes =
            self.raw.spool.contents(entry).map_err(|e| self.fail(image, format!("cannot read {what} back: {e}")))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| self.fail(image, format!("{what} is not valid JSON of its kind: {e}")))
    }

    /// The blob `d` names, checked against its digest and size; None when the archive lacks it.
    fn blob(&mut self, d: &Descriptor, image: &str) -> Result<Option<super::spool::SpoolEntry>, ArchiveError> {
        let Some(hex) = sha256_hex_of(&d.digest) else {
            return Err(self.fail(
                Some(image),
                format!("digest {:?} is not a sha256 digest (the only algorithm k3node and k3s use)", d.digest),
            ));
        };
        let Some(entry) = self.raw.get(&format!("blobs/sha256/{hex}")) else { return Ok(None) };
        if entry.sha256 != hex {
            return Err(self.fail(
                Some(image),
                format!(
                    "blob {} holds bytes whose sha256 is {}: the archive is corrupt; save the image again",
                    d.digest, entry.sha256
                ),
            ));
        }
        if entry.size != d.size {
            return Err(self.fail(
                Some(image),
                format!(
                    "blob {} is {} bytes, but the descriptor pointing to it says {}: the archive is corrupt",
                    d.digest, entry.size, d.size
                ),
            ));
        }
        self.blobs.insert(d.digest.clone(), Blob { size: entry.size, data: BlobData::Spool(entry.clone()) });
        Ok(Some(entry.clone()))
    }

    /// Walks what `d` points to; returns its media type (read from the document when the
    /// descriptor has none).
    fn descriptor(
        &mut self,
        d: &Descriptor,
        image: &str,
        walk: &mut Walk,
        parent: Option<&str>,
    ) -> Result<String, ArchiveError> {
        let Some(entry) = self.blob(d, image)? else {
            let what = match parent {
                Some(parent) => format!("{parent} points to {}, which the archive does not hold", d.digest),
                None => format!("index.json points to {}, which the archive does not hold", d.digest),
            };
            return Err(self.fail(Some(image), format!("{what}: the archive is incomplete")));
        };
        walk.add(&d.digest);
        let value: serde_json::Value = self.document(&entry, &d.digest, Some(image))?;
        let is_index = match d.media_type.as_str() {
            INDEX | DOCKER_LIST => true,
            MANIFEST | DOCKER_MANIFEST => false,
            "" => value.get("manifests").is_some(),
            other => {
                return Err(self.fail(
                    Some(image),
                    format!("{} has media type {other}, which is neither an image index nor a manifest", d.digest),
                ))
            }
        };
        if is_index {
            let index: IndexDoc = serde_json::from_value(value)
                .map_err(|e| self.fail(Some(image), format!("index {} is not a valid image index: {e}", d.digest)))?;
            let mut held = 0;
            for child in &index.manifests {
                let platform = child.platform.as_ref().map(Platform::words).unwrap_or_else(|| "unknown".into());
                match self.raw.get(&format!("blobs/sha256/{}", child.digest.strip_prefix("sha256:").unwrap_or(""))) {
                    // Not held: a one-platform save of a multi-platform image.
                    None => walk.missing.push(platform),
                    Some(_) => {
                        held += 1;
                        let before = walk.platforms.len();
                        self.descriptor(child, image, walk, Some(&format!("index {}", d.digest)))?;
                        // The index's word for the platform wins over the config's.
                        if let Some(p) = &child.platform {
                            walk.platforms.truncate(before);
                            walk.platforms.push(p.words());
                        }
                    }
                }
            }
            if held == 0 {
                return Err(self.fail(
                    Some(image),
                    format!("its index lists {} platforms and the archive holds none of them", index.manifests.len()),
                ));
            }
        } else {
            let manifest: ManifestDoc = serde_json::from_value(value).map_err(|e| {
                self.fail(Some(image), format!("manifest {} is not a valid image manifest: {e}", d.digest))
            })?;
            let config = self.blob(&manifest.config, image)?.ok_or_else(|| {
                self.fail(Some(image), format!("manifest {} points to its config {}, which the archive does not hold: the archive is incomplete", d.digest, manifest.config.digest))
            })?;
            walk.add(&manifest.config.digest);
            for (i, layer) in manifest.layers.iter().enumerate() {
                self.blob(layer, image)?.ok_or_else(|| {
                    self.fail(Some(image), format!("manifest {} points to layer {} ({}), which the archive does not hold: the archive is incomplete", d.digest, i + 1, layer.digest))
                })?;
                walk.add(&layer.digest);
            }
            let platform: ConfigPlatform =
                self.document(&config, &manifest.config.digest, Some(image)).unwrap_or_default();
            let words =
                Platform { os: platform.os, architecture: platform.architecture, variant: platform.variant }.words();
            walk.platforms.push(if words == "/" { "unknown".into() } else { words });
        }
        Ok(match (d.media_type.is_empty(), is_index) {
            (false, _) => d.media_type.clone(),
            (true, true) => INDEX.to_string(),
            (true, false) => MANIFEST.to_string(),
        })
    }
}
