//! Names and URLs of k3s release artifacts (k3s-contract.md section 1), and the small text
//! helpers they need: percent-encoding of a version in a URL path, version checks, redaction.

use super::ArtifactError;

/// The architectures k3s publishes binaries for, with their names (Debian-style as k3node's host
/// agent reports them; binary file name; the arch in `sha256sum-<arch>.txt`).
const ARCHES: &[(&str, &str, &str)] = &[
    ("amd64", "k3s", "amd64"),
    ("arm64", "k3s-arm64", "arm64"),
    ("armhf", "k3s-armhf", "arm"),
    ("s390x", "k3s-s390x", "s390x"),
];

/// One architecture's artifact names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchNames {
    /// Debian-style name: amd64, arm64, armhf, s390x.
    pub arch: &'static str,
    /// The binary's file name in a release: `k3s`, `k3s-arm64`, `k3s-armhf`, `k3s-s390x`.
    pub binary: &'static str,
    /// The checksum file's name: `sha256sum-<amd64|arm64|arm|s390x>.txt`.
    pub checksum_file: &'static str,
    /// The airgap images bundle: `k3s-airgap-images-<amd64|arm64|arm|s390x>.tar.zst`.
    pub airgap_images: &'static str,
}

/// The artifact names for `arch` (amd64, arm64, armhf or s390x).
pub fn arch_names(arch: &str) -> Result<ArchNames, ArtifactError> {
    let found = ARCHES.iter().find(|(a, _, _)| *a == arch);
    let Some(&(arch, binary, sums)) = found else {
        return Err(ArtifactError::UnknownArch { arch: arch.to_string() });
    };
    let (checksum_file, airgap_images) = match sums {
        "amd64" => ("sha256sum-amd64.txt", "k3s-airgap-images-amd64.tar.zst"),
        "arm64" => ("sha256sum-arm64.txt", "k3s-airgap-images-arm64.tar.zst"),
        "arm" => ("sha256sum-arm.txt", "k3s-airgap-images-arm.tar.zst"),
        _ => ("sha256sum-s390x.txt", "k3s-airgap-images-s390x.tar.zst"),
    };
    Ok(ArchNames { arch, binary, checksum_file, airgap_images })
}

/// `<base>/<version, percent-encoded>/<file>`: where a release or a mirror serves `file`.
/// `base` has no trailing slash (one is tolerated).
pub fn release_file_url(base: &str, version: &str, file: &str) -> String {
    format!("{}/{}/{}", base.trim_end_matches('/'), encode_path_segment(version), encode_path_segment(file))
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so that `+` becomes `%2B`
/// (a literal `+` in a path is read as a space by some servers, S3 among them).
pub fn encode_path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes; `None` when an escape is malformed or the result is not UTF-8.
pub fn decode_percent(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Whether `s` looks like a k3s version: `v1.<minor>.<patch>[-rcN]+k3sN`.
pub fn is_k3s_version(s: &str) -> bool {
    let number = |t: &str| !t.is_empty() && t.len() <= 9 && t.bytes().all(|b| b.is_ascii_digit());
    let Some(rest) = s.strip_prefix("v1.") else {
        return false;
    };
    let Some((kube, k3s)) = rest.split_once('+') else {
        return false;
    };
    let (core, pre) = match kube.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (kube, None),
    };
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 2
        && parts.iter().all(|p| number(p))
        && pre.is_none_or(|p| p.strip_prefix("rc").is_some_and(number))
        && k3s.strip_prefix("k3s").is_some_and(number)
}

/// The version a channel's redirect points at: the last non-empty path segment of `location`
/// (absolute URL or path; query and fragment ignored), percent-decoded, when it is a k3s version
/// ([`is_k3s_version`]); None otherwise.
pub fn version_from_location(location: &str) -> Option<String> {
    last_segment(location).filter(|v| is_k3s_version(v))
}

/// The last non-empty path segment of `location`, percent-decoded: what a redirect names.
pub fn last_segment(location: &str) -> Option<String> {
    let no_fragment = location.split('#').next().unwrap_or("");
    let no_query = no_fragment.split('?').next().unwrap_or("");
    let path = match no_query.split_once("://") {
        Some((_, rest)) => rest.split_once('/').map_or("", |(_, p)| p),
        None => no_query,
    };
    let last = path.split('/').rfind(|s| !s.is_empty())?;
    decode_percent(last)
}

/// `url` fit for messages and logs: no user info (a mirror's basic-auth password) and no query
/// (signed URLs carry tokens there).
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            if !u.username().is_empty() || u.password().is_some() {
                let _ = u.set_username("***");
                let _ = u.set_password(None);
            }
            if u.query().is_some() {
                u.set_query(Some("***"));
            }
            u.set_fragment(None);
            u.to_string()
        }
        // Not a URL we could send either; keep what cannot hold a secret.
        Err(_) => match url.split_once('@') {
            Some((_, rest)) => format!("***@{rest}"),
            None => url.split('?').next().unwrap_or(url).to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names_follow_the_contract() {
        let n = arch_names("amd64").unwrap();
        assert_eq!((n.binary, n.checksum_file), ("k3s", "sha256sum-amd64.txt"));
        let n = arch_names("arm64").unwrap();
        assert_eq!((n.binary, n.checksum_file), ("k3s-arm64", "sha256sum-arm64.txt"));
        let n = arch_names("armhf").unwrap();
        assert_eq!((n.binary, n.checksum_file), ("k3s-armhf", "sha256sum-arm.txt"));
        assert_eq!(n.airgap_images, "k3s-airgap-images-arm.tar.zst");
        let n = arch_names("s390x").unwrap();
        assert_eq!((n.binary, n.checksum_file), ("k3s-s390x", "sha256sum-s390x.txt"));
        let e = arch_names("x86_64").unwrap_err().to_string();
        assert!(e.contains("x86_64") && e.contains("amd64, arm64, armhf"), "{e}");
    }

    #[test]
    fn release_urls_encode_the_plus() {
        assert_eq!(
            release_file_url("https://github.com/k3s-io/k3s/releases/download", "v1.31.4+k3s1", "k3s"),
            "https://github.com/k3s-io/k3s/releases/download/v1.31.4%2Bk3s1/k3s"
        );
        assert_eq!(
            release_file_url("http://127.0.0.1:8080/mirror/", "v1.32.0-rc1+k3s2", "sha256sum-arm.txt"),
            "http://127.0.0.1:8080/mirror/v1.32.0-rc1%2Bk3s2/sha256sum-arm.txt"
        );
        assert_eq!(encode_path_segment("a b/c?"), "a%20b%2Fc%3F");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(decode_percent("v1.31.4%2Bk3s1").as_deref(), Some("v1.31.4+k3s1"));
        assert_eq!(decode_percent("v1.31.4%2bk3s1").as_deref(), Some("v1.31.4+k3s1"));
        assert_eq!(decode_percent("plain").as_deref(), Some("plain"));
        assert_eq!(decode_percent("bad%2"), None);
        assert_eq!(decode_percent("bad%zz"), None);
    }

    #[test]
    fn versions() {
        for ok in ["v1.31.4+k3s1", "v1.32.0-rc1+k3s2", "v1.28.15+k3s10"] {
            assert!(is_k3s_version(ok), "{ok}");
        }
        for bad in [
            "",
            "1.31.4+k3s1",
            "v1.31.4",
            "v1.31+k3s1",
            "v2.0.0+k3s1",
            "v1.31.4+k3s",
            "v1.31.4-beta+k3s1",
            "v1.31.4+k3s1/..",
            "v1.31.4 +k3s1",
            "stable",
        ] {
            assert!(!is_k3s_version(bad), "{bad}");
        }
    }

    #[test]
    fn version_from_redirect_location() {
        let v = |l: &str| version_from_location(l);
        assert_eq!(v("/k3s-io/k3s/releases/tag/v1.31.4%2Bk3s1").as_deref(), Some("v1.31.4+k3s1"));
        assert_eq!(v("https://github.com/k3s-io/k3s/releases/tag/v1.31.4+k3s1").as_deref(), Some("v1.31.4+k3s1"));
        assert_eq!(v("https://x/tag/v1.31.4%2Bk3s1/?a=b#c").as_deref(), Some("v1.31.4+k3s1"));
        assert_eq!(v("https://example.com"), None);
        // Found by the `version` fuzz target: a last segment that is no version is none.
        assert_eq!(v("https://github.com/k3s-io/k3s/31.4%2Bk3s1"), None);
        assert_eq!(v("https://x/tag/latest"), None);
        assert_eq!(v("v4+k3s1"), None);
        assert_eq!(v(""), None);
    }

    #[test]
    fn redaction_drops_credentials_and_queries() {
        assert_eq!(
            redact_url("https://user:secret@mirror.example/k3s/v1%2Bk3s1/k3s?token=abc"),
            "https://***@mirror.example/k3s/v1%2Bk3s1/k3s?***"
        );
        assert_eq!(redact_url("http://127.0.0.1:1/a"), "http://127.0.0.1:1/a");
        assert!(!redact_url("not a url://u:p@x").contains("u:p"));
    }
}
