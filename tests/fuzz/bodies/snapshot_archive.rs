//! Any tar stream as a snapshot archive: the reader that verify and restore both go through must
//! never panic, and an archive it accepts holds a manifest that validates and exactly the entries
//! it lists. The fuzzer's bytes are the tar itself; they are compressed and given a matching
//! sidecar here, so that mutations reach the manifest and entry checks instead of stopping at the
//! archive's checksum (which `walk` checks last, whatever the entries said).

use std::path::Path;

use k3node::host::snapshot::archive::{self, CheckOnly};
use k3node::host::system::fake::FakeSystem;

const ARCHIVE: &str = "/var/lib/rancher/k3s/server/db/snapshots/fuzz.tar.zst";

pub fn run(tar: &[u8]) {
    let compressed = zstd::bulk::compress(tar, 1).expect("zstd compresses any bytes");
    let sha256 = k3node::digest::sha256_hex(&compressed);
    let archive_path = Path::new(ARCHIVE);
    let sidecar = archive::sidecar_path(archive_path);
    let sys = FakeSystem::new()
        .file_bytes(ARCHIVE, &compressed)
        .file(&sidecar.display().to_string(), &archive::sidecar_text(&sha256, "fuzz.tar.zst"))
        .now(1_700_000_000_000);

    let first = archive::read_manifest(&sys, archive_path);
    match archive::walk(&sys, archive_path, &mut CheckOnly) {
        Ok(walked) => {
            assert_eq!(walked.sha256, sha256, "an accepted archive is the one its sidecar names");
            assert_eq!(walked.manifest.validate(), Ok(()), "an accepted manifest validates");
            let manifest = first.expect("what walk accepts, read_manifest reads");
            assert_eq!(manifest, walked.manifest, "both readers see the same manifest");
        }
        Err(error) => {
            // Every refusal names the archive, so the operator can tell which one it was.
            assert!(error.to_string().contains(ARCHIVE), "{error}");
        }
    }
}
