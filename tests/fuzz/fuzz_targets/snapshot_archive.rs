//! libFuzzer's entry to the `snapshot_archive` target; what it checks is said in ../bodies/snapshot_archive.rs,
//! which the corpus replay in tests/fuzz_corpus.rs runs as well.

#![no_main]

#[path = "../bodies/snapshot_archive.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
