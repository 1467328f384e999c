//! Any bytes as a release's `sha256sum-<arch>.txt`: parsing never panics, and what it accepts
//! is 64 lowercase hex digits per named file, each file once.

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(entries) = k3node::artifacts::parse_checksum_file(text, "fuzz.txt") {
        for e in &entries {
            assert_eq!(e.sha256.len(), 64);
            assert!(e.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            assert!(!e.file_name.is_empty());
        }
        for e in &entries {
            let found = k3node::artifacts::expected_sha256(text, "fuzz.txt", &e.file_name).expect("listed");
            assert_eq!(found, e.sha256);
        }
    }
}
