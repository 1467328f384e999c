//! libFuzzer's entry to the `version` target; what it checks is said in ../bodies/version.rs,
//! which the corpus replay in tests/fuzz_corpus.rs runs as well.

#![no_main]

#[path = "../bodies/version.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
