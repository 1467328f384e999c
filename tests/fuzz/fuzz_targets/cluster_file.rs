//! libFuzzer's entry to the `cluster_file` target; what it checks is said in ../bodies/cluster_file.rs,
//! which the corpus replay in tests/fuzz_corpus.rs runs as well.

#![no_main]

#[path = "../bodies/cluster_file.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
