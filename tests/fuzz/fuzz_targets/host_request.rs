//! libFuzzer's entry to the `host_request` target; what it checks is said in ../bodies/host_request.rs,
//! which the corpus replay in tests/fuzz_corpus.rs runs as well.

#![no_main]

#[path = "../bodies/host_request.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
