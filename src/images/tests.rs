//! Archives built here with the tar crate, as skopeo, umoci and docker write them, and broken in
//! each of the ways the issue names.

use std::io::{Read, Write};
use std::sync::Arc;

use super::*;

/// A file of an archive being built.
pub(crate) struct TarFile {
    pub path: String,
    pub bytes: Vec<u8>,
}

pub(crate) fn tar(files: &[TarFile]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for f in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(f.bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, &f.path, &f.bytes[..]).unwrap();
    }
    builder.into_inner().unwrap()
}

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", crate::digest::sha256_hex(bytes))
}

fn blob(bytes: &[u8]) -> TarFile {
    TarFile { path: format!("blobs/sha256/{}", crate::digest::sha256_hex(bytes)), bytes: bytes.to_vec() }
}

fn layer(content: &str) -> Vec<u8> {
    tar(&[TarFile { path: "hello.txt".into(), bytes: content.as_bytes().to_vec() }])
}

fn config(arch: &str, diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap()
}

fn manifest(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci::MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": config.len()},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(l), "size": l.len()
        })).collect::<Vec<_>>(),
    }))
    .unwrap()
}

/// An OCI layout of one image named `name`: (files, manifest bytes).
pub(crate) fn oci_layout(name: &str, content: &str) -> (Vec<TarFile>, Vec<u8>) {
    let l = layer(content);
    let c = config("amd64", &[sha(&l)]);
    let m = manifest(&c, &[&l]);
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": oci::MANIFEST, "digest": sha(&m), "size": m.len(),
        "annotations": {oci::REF_NAME: name}
    }]});
    let files = vec![
        TarFile { path: "oci-layout".into(), bytes: br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec() },
        blob(&l),
        blob(&c),
        blob(&m),
        TarFile { path: "index.json".into(), bytes: serde_json::to_vec(&index).unwrap() },
    ];
    (files, m)
}

fn read_bytes(bytes: Vec<u8>) -> Result<Archive, ArchiveError> {
    read_archive("test.tar", Box::new(std::io::Cursor::new(bytes)))
}

#[test]
fn an_oci_layout_gives_its_image_with_name_digest_platform_and_size() {
    let (files, m) = oci_layout("registry.example/app:1", "hello");
    let archive = read_bytes(tar(&files)).unwrap();
    assert_eq!(archive.format, "oci-layout");
    let [image] = &archive.images[..] else { panic!("{:?}", archive.images) };
    assert_eq!(image.name, "registry.example/app:1");
    assert_eq!(image.digest, sha(&m));
    assert_eq!(image.platforms, vec!["linux/amd64"]);
    let expected: u64 = files[1..4].iter().map(|f| f.bytes.len() as u64).sum();
    assert_eq!(image.size, expected);
}

#[test]
fn gzip_and_zstd_compressed_archives_read_as_the_plain_one() {
    let (files, m) = oci_layout("app:1", "compressed");
    let plain = tar(&files);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&plain[..], 3).unwrap();
    for bytes in [gz, zst] {
        let archive = read_bytes(bytes).unwrap();
        assert_eq!(archive.images[0].name, "docker.io/library/app:1");
        assert_eq!(archive.images[0].digest, sha(&m));
    }
}

#[test]
fn a_docker_archive_gets_a_stable_manifest_and_its_layers_are_checked_against_the_diff_ids() {
    let l = layer("docker");
    let c = config("arm64", &[sha(&l)]);
    let c_name = format!("{}.json", crate::digest::sha256_hex(&c));
    let manifest =
        serde_json::json!([{"Config": c_name, "RepoTags": ["app:2", "other/app:2"], "Layers": ["abc/layer.tar"]}]);
    let files = vec![
        TarFile { path: c_name.clone(), bytes: c.clone() },
        TarFile { path: "abc/layer.tar".into(), bytes: l.clone() },
        TarFile { path: "manifest.json".into(), bytes: serde_json::to_vec(&manifest).unwrap() },
    ];
    let first = read_bytes(tar(&files)).unwrap();
    let again = read_bytes(tar(&files)).unwrap();
    assert_eq!(first.format, "docker-archive");
    let names: Vec<&str> = first.images.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["docker.io/library/app:2", "docker.io/other/app:2"]);
    assert_eq!(first.images[0].digest, again.images[0].digest, "the written manifest is the same every time");
    assert_eq!(first.images[0].platforms, vec!["linux/arm64"]);

    let mut corrupt = l.clone();
    let at = corrupt.len() - 1100;
    corrupt[at] ^= 0xff;
    let files = vec![
        TarFile { path: c_name, bytes: c },
        TarFile { path: "abc/layer.tar".into(), bytes: corrupt },
        TarFile { path: "manifest.json".into(), bytes: serde_json::to_vec(&manifest).unwrap() },
    ];
    let err = read_bytes(tar(&files)).unwrap_err();
    assert_eq!(err.image.as_deref(), Some("docker.io/library/app:2"));
    assert!(err.to_string().starts_with("test.tar: image docker.io/library/app:2: layer 1 (abc/layer.tar)"), "{err}");
    assert!(err.message.contains("diff_id"), "{err}");
}

#[test]
fn an_index_listing_two_platforms_with_one_held_imports_the_one_and_names_the_other() {
    let (mut files, m) = oci_layout("ignored", "multi");
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": oci::INDEX,
        "manifests": [
            {"mediaType": oci::MANIFEST, "digest": sha(&m), "size": m.len(), "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": oci::MANIFEST, "digest": format!("sha256:{}", "ab".repeat(32)), "size": 400, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}
        ]
    }))
    .unwrap();
    files.pop();
    files.push(blob(&index));
    files.push(TarFile {
        path: "index.json".into(),
        bytes: serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": oci::INDEX, "digest": sha(&index), "size": index.len(),
            "annotations": {oci::IMAGE_NAME: "registry.example/multi:1"}
        }]}))
        .unwrap(),
    });
    let archive = read_bytes(tar(&files)).unwrap();
    let image = &archive.images[0];
    assert_eq!((image.digest.as_str(), image.media_type.as_str()), (sha(&index).as_str(), oci::INDEX));
    assert_eq!(image.platforms, vec!["linux/amd64"]);
    assert_eq!(image.missing_platforms, vec!["linux/arm64/v8"]);
}

#[test]
fn each_bad_input_is_refused_naming_the_file_and_the_image() {
    let (files, _) = oci_layout("registry.example/bad:1", "bad");
    // a manifest pointing to a missing blob (the layer)
    let missing: Vec<TarFile> = files
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, f)| TarFile { path: f.path.clone(), bytes: f.bytes.clone() })
        .collect();
    let err = read_bytes(tar(&missing)).unwrap_err();
    assert_eq!(err.image.as_deref(), Some("registry.example/bad:1"));
    assert!(err.message.contains("points to layer 1") && err.message.contains("does not hold"), "{err}");
    // a layer whose bytes do not match its digest
    let mut corrupt: Vec<TarFile> =
        files.iter().map(|f| TarFile { path: f.path.clone(), bytes: f.bytes.clone() }).collect();
    let last = corrupt[1].bytes.len() - 600;
    corrupt[1].bytes[last] ^= 1;
    let err = read_bytes(tar(&corrupt)).unwrap_err();
    assert!(err.message.contains("holds bytes whose sha256 is") && err.message.contains("corrupt"), "{err}");
    // truncated, plain and compressed
    let whole = tar(&files);
    let err = read_bytes(whole[..whole.len() / 2].to_vec()).unwrap_err();
    assert!(
        err.message.contains("truncated") || err.message.contains("does not hold") || err.message.contains("neither"),
        "{err}"
    );
    let zst = zstd::encode_all(&whole[..], 1).unwrap();
    let err = read_bytes(zst[..zst.len() - 10].to_vec()).unwrap_err();
    assert!(err.message.contains("truncated or corrupt"), "{err}");
    // not a tar, an unknown compression
    assert!(read_bytes(b"just some text\n".to_vec()).unwrap_err().message.contains("not a tar archive"));
    let err = read_bytes(b"BZh91AY&SY\x00\x00".to_vec()).unwrap_err();
    assert_eq!(err.file, "test.tar");
    assert!(err.message.contains("bzip2"), "{err}");
    // no name
    let (mut unnamed, _) = oci_layout("x", "anon");
    let index: serde_json::Value = serde_json::from_slice(&unnamed[4].bytes).unwrap();
    let mut index = index;
    index["manifests"][0]["annotations"] = serde_json::json!({});
    unnamed[4].bytes = serde_json::to_vec(&index).unwrap();
    assert!(read_bytes(tar(&unnamed)).unwrap_err().message.contains("has no name"));
}

#[test]
fn the_composed_stream_is_an_oci_layout_with_the_selected_images_and_index_json_last() {
    let (a, _) = oci_layout("registry.example/a:1", "aaa");
    let (b, _) = oci_layout("registry.example/b:1", "bbb");
    let mut files = a;
    // Two images in one layout: b's blobs beside a's, both in index.json.
    let b_index: serde_json::Value = serde_json::from_slice(&b[4].bytes).unwrap();
    let mut index: serde_json::Value = serde_json::from_slice(&files[4].bytes).unwrap();
    index["manifests"].as_array_mut().unwrap().push(b_index["manifests"][0].clone());
    files[4].bytes = serde_json::to_vec(&index).unwrap();
    let index_file = files.pop().unwrap();
    files.extend(b.into_iter().skip(1).take(3));
    files.push(index_file);
    let archive = read_bytes(tar(&files)).unwrap();
    assert_eq!(archive.images.len(), 2);

    let only_b = [(&archive, &archive.images[1])];
    let wire = Arc::new(wire::compose(&only_b));
    let mut compressed = Vec::new();
    wire.reader().read_to_end(&mut compressed).unwrap();
    assert_eq!(compressed.len() as u64, wire.len);
    let plain = zstd::decode_all(&compressed[..]).unwrap();
    let mut entries = tar::Archive::new(&plain[..]);
    let paths: Vec<String> =
        entries.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
    assert_eq!(paths.first().map(String::as_str), Some("oci-layout"));
    assert_eq!(paths.last().map(String::as_str), Some("index.json"));
    assert_eq!(paths.len(), 5, "{paths:?}");
    let back = read_bytes(plain).unwrap();
    assert_eq!(back.images.len(), 1);
    assert_eq!(back.images[0].name, "registry.example/b:1");
    assert_eq!(back.images[0].digest, archive.images[1].digest);
    assert_eq!(wire.sha256().unwrap(), crate::digest::sha256_hex(&compressed));
}
