//! The fuzz targets' committed corpora (tests/fuzz/corpus/TARGET), replayed through the targets'
//! own bodies (tests/fuzz/bodies/) on the stable toolchain: every input a campaign kept, and every
//! input that once crashed a target, must still pass the target's checks. This is the regression
//! check of the fuzzing; new inputs are found by libFuzzer (tests/fuzz/README.md, and CI's short
//! runs after the tests).

use std::panic::{self, AssertUnwindSafe};
use std::path::Path;

#[path = "fuzz/bodies/checksum_file.rs"]
mod checksum_file;
#[path = "fuzz/bodies/cluster_file.rs"]
mod cluster_file;
#[path = "fuzz/bodies/host_request.rs"]
mod host_request;
#[path = "fuzz/bodies/image_archive.rs"]
mod image_archive;
#[path = "fuzz/bodies/snapshot_archive.rs"]
mod snapshot_archive;
#[path = "fuzz/bodies/token.rs"]
mod token;
#[path = "fuzz/bodies/version.rs"]
mod version;

/// Runs `body` on every file of the target's corpus; fails naming each input whose run panicked,
/// and when the corpus is missing or empty (a replay of nothing proves nothing).
fn replay(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus").join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{}: an empty corpus", dir.display());
    let mut failed = Vec::new();
    for input in &inputs {
        let data = std::fs::read(input).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
        if panic::catch_unwind(AssertUnwindSafe(|| body(&data))).is_err() {
            failed.push(input.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{target}: {} of {} inputs failed: {failed:#?}", failed.len(), inputs.len());
}

#[test]
fn every_cluster_file_input_is_read_without_a_panic_and_accepted_ones_render() {
    replay("cluster_file", cluster_file::run);
}

#[test]
fn every_host_request_input_is_answered_with_exactly_one_result_or_error() {
    replay("host_request", host_request::run);
}

#[test]
fn every_checksum_file_input_parses_to_well_formed_entries_or_an_error() {
    replay("checksum_file", checksum_file::run);
}

#[test]
fn every_version_input_is_read_without_a_panic_and_locations_give_valid_versions() {
    replay("version", version::run);
}

#[test]
fn every_token_input_leaves_no_secret_in_the_scrubbed_text() {
    replay("token", token::run);
}

#[test]
fn every_snapshot_archive_input_is_refused_naming_the_archive_or_read_alike_by_both_readers() {
    replay("snapshot_archive", snapshot_archive::run);
}

#[test]
fn every_image_archive_input_is_refused_naming_the_file_or_holds_all_its_blobs() {
    replay("image_archive", image_archive::run);
}

#[test]
#[should_panic(expected = "checksum_file: 1 of 1 inputs failed")]
fn an_input_the_body_panics_on_fails_the_replay() {
    replay("checksum_file", |_| panic!("a body that refuses every input"));
}
