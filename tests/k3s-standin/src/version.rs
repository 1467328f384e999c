//! The version the stand-in claims to be. Built in: v1.31.4+k3s1. Tests that need other versions
//! (or simply different binaries) append a trailer line to a copy of the executable:
//! the file's last bytes are `\nK3S_STANDIN_VERSION=<version>\n`. ELF loaders ignore trailing bytes.

use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom};
use std::sync::OnceLock;

pub const DEFAULT_VERSION: &str = "v1.31.4+k3s1";
pub const DEFAULT_COMMIT: &str = "5ac18c0e";
pub const GO_VERSION: &str = "go1.22.9";
pub const TRAILER_KEY: &str = "K3S_STANDIN_VERSION=";

/// Parses the trailer from the last bytes of a file.
pub fn parse_trailer(tail: &[u8]) -> Option<String> {
    let body = tail.strip_suffix(b"\n")?;
    let start = body.iter().rposition(|&b| b == b'\n')? + 1;
    let line = std::str::from_utf8(&body[start..]).ok()?;
    let v = line.strip_prefix(TRAILER_KEY)?;
    if v.is_empty() || v.len() > 100 || !v.chars().all(|c| c.is_ascii_graphic()) {
        return None;
    }
    Some(v.to_string())
}

fn read_own_trailer() -> Option<String> {
    let mut f = std::fs::File::open("/proc/self/exe").ok()?;
    let len = f.metadata().ok()?.len();
    let n = len.min(256);
    f.seek(SeekFrom::Start(len - n)).ok()?;
    let mut buf = Vec::with_capacity(n as usize);
    f.read_to_end(&mut buf).ok()?;
    parse_trailer(&buf)
}

pub fn version() -> &'static str {
    static V: OnceLock<String> = OnceLock::new();
    V.get_or_init(|| read_own_trailer().unwrap_or_else(|| DEFAULT_VERSION.to_string()))
}

/// The short commit printed by `k3s --version`: the real one for the default version, else derived.
pub fn commit() -> String {
    let v = version();
    if v == DEFAULT_VERSION {
        DEFAULT_COMMIT.to_string()
    } else {
        hex::encode(Sha256::digest(v.as_bytes()))[..8].to_string()
    }
}

/// (major, minor) of `v1.31.4+k3s1` -> ("1", "31")
pub fn major_minor() -> (String, String) {
    let v = version().trim_start_matches('v');
    let mut it = v.split(['.', '+', '-']);
    (it.next().unwrap_or("1").to_string(), it.next().unwrap_or("0").to_string())
}

pub fn print_version() {
    println!("k3s version {} ({})", version(), commit());
    println!("go version {GO_VERSION}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer() {
        assert_eq!(parse_trailer(b"\x7fELF...\nK3S_STANDIN_VERSION=v1.30.2+k3s2\n").as_deref(), Some("v1.30.2+k3s2"));
        assert_eq!(parse_trailer(b"\x7fELF...K3S_STANDIN_VERSION=v1.30.2+k3s2\n"), None);
        assert_eq!(parse_trailer(b"\x7fELF...\nK3S_STANDIN_VERSION=v1.30.2+k3s2"), None);
        assert_eq!(parse_trailer(b"\nK3S_STANDIN_VERSION=\n"), None);
        assert_eq!(parse_trailer(b"\x00\x01\x02"), None);
    }
}
