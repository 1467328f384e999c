//! Any text as a k3s version, a channel server's redirect location, or a URL path segment: none
//! of the readers panics, and a location's version is always one `is_k3s_version` accepts.

use k3node::artifacts::names;

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = names::is_k3s_version(text);
    if let Some(v) = names::version_from_location(text) {
        assert!(names::is_k3s_version(&v), "{v:?} from {text:?}");
    }
    if let Some(decoded) = names::decode_percent(text) {
        let _ = names::encode_path_segment(&decoded);
    }
    let _ = names::redact_url(text);
}
