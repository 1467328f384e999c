//! Image names as Kubernetes and containerd's CRI read them: `app:1` is
//! `docker.io/library/app:1`, `team/app` is `docker.io/team/app:latest`, `registry:5000/app@sha256:..`
//! keeps its registry and digest. An archive's names are normalised this way before import, so
//! that a pod's `image: app:1` finds what k3node imported.

/// Why a name is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not an image name: {reason}")]
pub struct BadReference {
    pub name: String,
    pub reason: &'static str,
}

/// `name` in the full form containerd stores (`docker.io/library/app:1`).
pub fn normalize(name: &str) -> Result<String, BadReference> {
    let bad = |reason| BadReference { name: name.to_string(), reason };
    if name.is_empty() || name.len() > 4096 {
        return Err(bad("empty or longer than 4096 characters"));
    }
    let (rest, digest) = match name.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (name, None),
    };
    if let Some(d) = digest {
        let hex = d.strip_prefix("sha256:").ok_or_else(|| bad("only sha256 digests are known"))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            return Err(bad("a sha256 digest is 64 lowercase hex digits"));
        }
    }
    // A tag is what follows the last ':' after the last '/' (a ':' before it is a registry port).
    let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (path, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            && !t.starts_with(['.', '-']);
        if !ok {
            return Err(bad("a tag is up to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"));
        }
    }
    let (domain, remainder) = match path.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (first.to_string(), rest.to_string())
        }
        _ => ("docker.io".to_string(), path.to_string()),
    };
    if domain.bytes().any(|b| b.is_ascii_uppercase()) && domain != "docker.io" {
        // Registries are DNS names; Go's reference parser refuses uppercase ones too.
        return Err(bad("a registry name is lowercase"));
    }
    let remainder =
        if domain == "docker.io" && !remainder.contains('/') { format!("library/{remainder}") } else { remainder };
    for component in remainder.split('/') {
        let ok = !component.is_empty()
            && component.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && component.as_bytes()[0].is_ascii_alphanumeric()
            && component.as_bytes()[component.len() - 1].is_ascii_alphanumeric();
        if !ok {
            return Err(bad("path components are lowercase letters, digits and '.', '_', '-' between them"));
        }
    }
    let mut out = format!("{domain}/{remainder}");
    match (tag, digest) {
        (Some(t), _) => out.push_str(&format!(":{t}")),
        (None, None) => out.push_str(":latest"),
        (None, Some(_)) => {}
    }
    if let Some(d) = digest {
        out.push_str(&format!("@{d}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_completed_as_the_kubelet_completes_them() {
        let cases = [
            ("app:1", "docker.io/library/app:1"),
            ("app", "docker.io/library/app:latest"),
            ("team/app", "docker.io/team/app:latest"),
            ("docker.io/library/app:1", "docker.io/library/app:1"),
            ("registry.example:5000/a/b:v2.0", "registry.example:5000/a/b:v2.0"),
            ("localhost/app", "localhost/app:latest"),
            (
                "app@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                "docker.io/library/app@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            ),
        ];
        for (given, want) in cases {
            assert_eq!(normalize(given).unwrap(), want, "{given}");
        }
    }

    #[test]
    fn names_containerd_would_refuse_are_refused_with_the_reason() {
        for bad in ["", "App:1", "app:", "app:-x", "a//b", "app@sha1:00", "-app", "registry.Example/app"] {
            let err = normalize(bad).unwrap_err();
            assert_eq!(err.name, bad);
        }
    }
}
