//! `sha256sum-<arch>.txt`: the release's checksum file, as `sha256sum` writes it
//! (`<64 hex>  <file name>` per line, or `<64 hex> *<file name>` in binary mode).

use std::fs::File;
use std::io;
use std::path::Path;

use crate::digest::Running;

use super::ArtifactError;

/// One line of a checksum file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChecksumEntry {
    /// Lowercase hex.
    pub sha256: String,
    pub file_name: String,
}

/// Parses a whole checksum file. `origin` (its URL or path) is what errors name. Blank lines are
/// skipped; any other line that is not `<hex>  <name>` makes the whole file malformed, and so do
/// two different hashes for one name: a file that is damaged in one place is not trusted in others.
pub fn parse(text: &str, origin: &str) -> Result<Vec<ChecksumEntry>, ArtifactError> {
    let mut entries: Vec<ChecksumEntry> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches(['\r', ' ', '\t']);
        if line.trim().is_empty() {
            continue;
        }
        let malformed =
            |reason: String| ArtifactError::ChecksumFileMalformed { file: origin.to_string(), line: i + 1, reason };
        let shown: String = line.chars().take(120).collect();
        let (hash, rest) = line.split_at(line.find([' ', '\t']).unwrap_or(line.len()));
        if !crate::digest::is_sha256_hex(hash) {
            return Err(malformed(format!("{shown:?} does not start with a sha256 (64 hex digits)")));
        }
        let name = rest.trim_start_matches([' ', '\t']);
        let name = name.strip_prefix('*').unwrap_or(name);
        if rest.is_empty() || name.is_empty() {
            return Err(malformed(format!("{shown:?} has no file name after the sha256")));
        }
        let entry = ChecksumEntry { sha256: hash.to_ascii_lowercase(), file_name: name.to_string() };
        match entries.iter().find(|e| e.file_name == entry.file_name) {
            Some(prev) if prev.sha256 != entry.sha256 => {
                return Err(malformed(format!(
                    "a second, different sha256 for {:?} (first {}, then {})",
                    entry.file_name, prev.sha256, entry.sha256
                )));
            }
            Some(_) => {}
            None => entries.push(entry),
        }
    }
    Ok(entries)
}

/// The sha256 (lowercase hex) that the checksum file lists for exactly `file_name`.
pub fn expected_sha256(text: &str, origin: &str, file_name: &str) -> Result<String, ArtifactError> {
    let entries = parse(text, origin)?;
    entries.iter().find(|e| e.file_name == file_name).map(|e| e.sha256.clone()).ok_or_else(|| {
        ArtifactError::ChecksumEntryMissing {
            file: origin.to_string(),
            name: file_name.to_string(),
            listed: entries.into_iter().map(|e| e.file_name).collect(),
        }
    })
}

/// The running hash of a file, for a download that continues where it stopped.
pub(crate) fn hash_state(path: &Path) -> io::Result<Running> {
    crate::digest::running_of(&mut File::open(path)?, 1 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0c5bbf7dd5b6d5c8a1b1aeb7fd3f4d9c2f8a1e0b6f6d2b4c5a6e7f8091a2b3c4";
    const B: &str = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855";

    #[test]
    fn picks_the_line_whose_name_is_exactly_the_binary() {
        let text = format!("{B}  k3s-airgap-images-arm64.tar.zst\n{A}  k3s-arm64\n{B}  k3s-arm64-extra\n\n");
        assert_eq!(expected_sha256(&text, "f", "k3s-arm64").unwrap(), A);
        // Uppercase hex is normalized; binary-mode `*name` and CRLF line ends are accepted.
        let text = format!("{B} *k3s\r\n");
        assert_eq!(expected_sha256(&text, "f", "k3s").unwrap(), B.to_ascii_lowercase());
    }

    #[test]
    fn a_missing_entry_is_an_error_naming_what_is_listed() {
        let text = format!("{A}  k3s-airgap-images-amd64.tar\n{A}  k3s-arm64\n");
        let e = expected_sha256(&text, "http://m/sha256sum-amd64.txt", "k3s").unwrap_err();
        assert!(matches!(e, ArtifactError::ChecksumEntryMissing { .. }));
        let msg = e.to_string();
        assert!(msg.contains("http://m/sha256sum-amd64.txt") && msg.contains("\"k3s\""), "{msg}");
        assert!(msg.contains("k3s-arm64"), "{msg}");
        // A suffix match is not a match.
        let text = format!("{A}  dist/k3s\n");
        assert!(expected_sha256(&text, "f", "k3s").is_err());
    }

    #[test]
    fn malformed_files_are_refused() {
        for (text, line) in [
            (format!("{A}  k3s\nnot a checksum line\n"), 2),
            (format!("{}  k3s\n", &A[..63]), 1),
            (format!("{A}\n"), 1),
            (format!("{A}  \n"), 1),
            (format!("SHA256 (k3s) = {A}\n"), 1),
            (format!("{A}  k3s\n{B}  k3s\n"), 2),
            ("<html><body>Not Found</body></html>".to_string(), 1),
        ] {
            match parse(&text, "f") {
                Err(ArtifactError::ChecksumFileMalformed { line: l, .. }) => {
                    assert_eq!(l, line, "{text}")
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
        // The same entry twice is harmless.
        assert_eq!(parse(&format!("{A}  k3s\n{A}  k3s\n"), "f").unwrap().len(), 1);
        assert!(parse("", "f").unwrap().is_empty());
    }

    #[test]
    fn the_resumable_hash_state_agrees_with_the_one_sha256_helper() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, b"").unwrap();
        assert_eq!(hash_state(&p).unwrap().finish(), crate::digest::sha256_file(&p).unwrap());
        assert_eq!(crate::digest::sha256_file(&p).unwrap().0, B.to_ascii_lowercase());
    }
}
