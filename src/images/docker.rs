//! docker-archives (`docker save`, `podman save`, `skopeo copy ... docker-archive:`):
//! `manifest.json` lists each image's config file, names (RepoTags) and layer files. The layers'
//! bytes are checked against the config's `rootfs.diff_ids` (a gzip-compressed layer against the
//! diff_id of what it decompresses to), the config against its file name when that is a digest.
//!
//! Such an archive has no manifest; k3node writes one (OCI, uncompressed or gzip layers as held),
//! always the same bytes for the same archive, so the image's digest is stable across runs.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::oci::{Descriptor, MANIFEST};
use super::read::RawArchive;
use super::reference;
use super::spool::SpoolEntry;
use super::{ArchiveError, Blob, BlobData, Image};

pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
struct Config {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
    #[serde(default)]
    rootfs: RootFs,
}

#[derive(Debug, Deserialize, Default)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// The manifest k3node writes for a docker-archive image (field order is the wire order).
#[derive(Serialize)]
struct Manifest<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

pub fn parse(file: &str, raw: &RawArchive) -> Result<(Vec<Image>, BTreeMap<String, Blob>), ArchiveError> {
    let fail = |image: Option<&str>, message: String| ArchiveError {
        file: file.to_string(),
        image: image.map(str::to_string),
        message,
    };
    let manifest_entry = raw.get("manifest.json").expect("checked by the caller");
    if manifest_entry.size > 8 << 20 {
        return Err(fail(None, "manifest.json is too large for a docker archive's manifest".into()));
    }
    let text =
        raw.spool.contents(manifest_entry).map_err(|e| fail(None, format!("cannot read manifest.json back: {e}")))?;
    let entries: Vec<Entry> = serde_json::from_slice(&text)
        .map_err(|e| fail(None, format!("manifest.json is not a docker archive's manifest: {e}")))?;
    let mut images = Vec::new();
    let mut blobs = BTreeMap::new();
    for (i, entry) in entries.iter().enumerate() {
        let tags = entry.repo_tags.clone().unwrap_or_default();
        let label = tags.first().cloned().unwrap_or_else(|| format!("{} of manifest.json", i + 1));
        let names = tags
            .iter()
            .map(|t| reference::normalize(t).map_err(|e| fail(Some(&label), format!("manifest.json: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        if names.is_empty() {
            return Err(fail(
                Some(&label),
                "it has no name (RepoTags is empty): save it by name (`docker save app:1`, not by id)".into(),
            ));
        }
        let image = names[0].as_str();
        let config_entry = raw.get(&entry.config).ok_or_else(|| {
            fail(
                Some(image),
                format!(
                    "manifest.json names the config {}, which the archive does not hold: the archive is incomplete",
                    entry.config
                ),
            )
        })?;
        if let Some(named) = digest_in_name(&entry.config) {
            if named != config_entry.sha256 {
                return Err(fail(
                    Some(image),
                    format!(
                        "config {} holds bytes whose sha256 is {}: the archive is corrupt; save the image again",
                        entry.config, config_entry.sha256
                    ),
                ));
            }
        }
        let config_text = raw
            .spool
            .contents(config_entry)
            .map_err(|e| fail(Some(image), format!("cannot read the config back: {e}")))?;
        let config: Config = serde_json::from_slice(&config_text)
            .map_err(|e| fail(Some(image), format!("config {} is not an image config: {e}", entry.config)))?;
        if config.rootfs.diff_ids.len() != entry.layers.len() {
            return Err(fail(
                Some(image),
                format!(
                    "manifest.json lists {} layers but the config's rootfs has {} diff_ids: the archive is corrupt",
                    entry.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            ));
        }
        let config_digest = format!("sha256:{}", config_entry.sha256);
        blobs.insert(
            config_digest.clone(),
            Blob { size: config_entry.size, data: BlobData::Spool(config_entry.clone()) },
        );
        let mut layers = Vec::new();
        for (n, (path, diff_id)) in entry.layers.iter().zip(&config.rootfs.diff_ids).enumerate() {
            let layer = raw.get(path).ok_or_else(|| {
                fail(Some(image), format!("manifest.json lists layer {} ({path}), which the archive does not hold: the archive is incomplete", n + 1))
            })?;
            let media_type = layer_type(raw, layer, diff_id).map_err(|why| {
                fail(
                    Some(image),
                    format!("layer {} ({path}): {why}: the archive is corrupt; save the image again", n + 1),
                )
            })?;
            let digest = format!("sha256:{}", layer.sha256);
            blobs.insert(digest.clone(), Blob { size: layer.size, data: BlobData::Spool(layer.clone()) });
            layers.push(Descriptor {
                media_type: media_type.into(),
                digest,
                size: layer.size,
                platform: None,
                annotations: BTreeMap::new(),
            });
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: MANIFEST,
            config: Descriptor {
                media_type: CONFIG.into(),
                digest: config_digest.clone(),
                size: config_entry.size,
                platform: None,
                annotations: BTreeMap::new(),
            },
            layers,
        };
        let bytes = serde_json::to_vec(&manifest).expect("a manifest always serializes");
        let digest = format!("sha256:{}", crate::digest::sha256_hex(&bytes));
        let mut order = vec![digest.clone(), config_digest];
        order.extend(manifest.layers.iter().map(|l| l.digest.clone()));
        order.dedup();
        let size = bytes.len() as u64 + config_entry.size + manifest.layers.iter().map(|l| l.size).sum::<u64>();
        blobs.insert(digest.clone(), Blob { size: bytes.len() as u64, data: BlobData::Memory(Arc::new(bytes)) });
        let platform =
            super::oci::Platform { os: config.os, architecture: config.architecture, variant: config.variant }.words();
        for name in names {
            images.push(Image {
                name,
                digest: digest.clone(),
                media_type: MANIFEST.into(),
                platforms: vec![if platform == "/" { "unknown".into() } else { platform.clone() }],
                missing_platforms: Vec::new(),
                size,
                blobs: order.clone(),
            });
        }
    }
    Ok((images, blobs))
}

/// A layer file's media type, once its bytes are known to be the diff_id's (or to decompress to them).
fn layer_type(raw: &RawArchive, layer: &SpoolEntry, diff_id: &str) -> Result<&'static str, String> {
    let want = diff_id.strip_prefix("sha256:").ok_or_else(|| format!("diff_id {diff_id:?} is not a sha256 digest"))?;
    if layer.sha256 == want {
        return Ok(LAYER);
    }
    // A compressed layer: what it decompresses to must be the diff_id.
    let mut head = [0u8; 2];
    let mut reader = raw.spool.reader(layer).map_err(|e| e.to_string())?;
    if reader.read_exact(&mut head).is_ok() && head == [0x1f, 0x8b] {
        let chained = std::io::Cursor::new(head).chain(reader);
        let mut gunzip = flate2::read::MultiGzDecoder::new(chained);
        let (sha, _) = crate::digest::sha256_and_size(&mut gunzip).map_err(|e| format!("cannot decompress it: {e}"))?;
        if sha == want {
            return Ok(LAYER_GZIP);
        }
        return Err(format!("it decompresses to bytes whose sha256 is {sha}, not the config's diff_id {diff_id}"));
    }
    Err(format!("its bytes have sha256 {}, not the config's diff_id {diff_id}", layer.sha256))
}

/// The digest a config's file name carries (`<hex>.json`, `blobs/sha256/<hex>`), if any.
fn digest_in_name(path: &str) -> Option<&str> {
    let name = path.rsplit('/').next()?;
    let hex = name.strip_suffix(".json").unwrap_or(name);
    crate::digest::is_sha256_hex(hex).then_some(hex)
}
