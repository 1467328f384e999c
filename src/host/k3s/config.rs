//! The few k3s settings the host side needs to know (where the data and the kubeconfig are),
//! read as k3s reads them: config.yaml, then the drop-ins in name order, the last value wins.

use std::io;
use std::path::{Path, PathBuf};

use super::{describe_io, CONFIG_DROPIN_DIR, CONFIG_FILE, DEFAULT_DATA_DIR, DEFAULT_KUBECONFIG};
use crate::host::system::HostSystem;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    pub data_dir: PathBuf,
    pub kubeconfig: PathBuf,
    /// `server:` (the URL a joining server or agent talks to), when set.
    pub server: Option<String>,
    /// The drop-ins read after config.yaml, each with the keys it sets.
    pub dropins: Vec<(PathBuf, Vec<String>)>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            data_dir: DEFAULT_DATA_DIR.into(),
            kubeconfig: DEFAULT_KUBECONFIG.into(),
            server: None,
            dropins: Vec::new(),
        }
    }
}

/// A config file's error: where, and what (never its contents, which may hold a token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl crate::host::error::Failure for ConfigError {
    fn kind(&self) -> crate::protocol::ErrorKind {
        crate::protocol::ErrorKind::Failed
    }
}

impl From<String> for ConfigError {
    fn from(message: String) -> Self {
        ConfigError(message)
    }
}

/// config.yaml's meaning as k3s reads it (keys and values, not formatting), as a stable text:
/// two files with the same canonical form configure k3s the same way. None when it is not YAML.
pub(super) fn canonical(text: &str) -> Option<String> {
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).ok()?;
    let json = as_flag_values(serde_json::to_value(&value).ok()?);
    // serde_json's maps are sorted, so key order does not matter.
    Some(serde_json::to_string(&json).expect("a JSON value always serializes"))
}

/// Scalars as the text k3s turns them into (it sets each key as a command-line flag), so that
/// `max-pods: 50` and `max-pods: "50"`, or `true` and `"true"`, mean the same.
fn as_flag_values(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Bool(b) => Value::String(b.to_string()),
        Value::Number(n) => Value::String(n.to_string()),
        Value::Array(items) => Value::Array(items.into_iter().map(as_flag_values).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, as_flag_values(v))).collect()),
        other => other,
    }
}

/// The settings of the host as it is: /etc/rancher/k3s/config.yaml (absent: defaults) and drop-ins.
pub(crate) fn on_host(sys: &dyn HostSystem) -> Result<Settings, ConfigError> {
    let main = match sys.read_to_string(Path::new(CONFIG_FILE)) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(ConfigError(format!("cannot read {CONFIG_FILE}: {}", describe_io(&e)))),
    };
    with_main(sys, &main)
}

/// The settings k3s will run with once config.yaml is `main` (the host's drop-ins still apply).
pub(super) fn with_main(sys: &dyn HostSystem, main: &str) -> Result<Settings, ConfigError> {
    let mut settings = Settings::default();
    apply(&mut settings, CONFIG_FILE, main)?;
    let mut dropins: Vec<String> = match sys.read_dir_names(Path::new(CONFIG_DROPIN_DIR)) {
        Ok(names) => names.into_iter().filter(|n| n.ends_with(".yaml") || n.ends_with(".yml")).collect(),
        Err(_) => Vec::new(),
    };
    dropins.sort();
    for name in dropins {
        let path = Path::new(CONFIG_DROPIN_DIR).join(&name);
        let text =
            sys.read_to_string(&path).map_err(|e| format!("cannot read {}: {}", path.display(), describe_io(&e)))?;
        let keys = apply(&mut settings, &path.to_string_lossy(), &text)?;
        settings.dropins.push((path, keys));
    }
    Ok(settings)
}

/// The settings of config.yaml's text `main` and the drop-ins' (name, text) pairs, as k3s combines
/// them (drop-ins in name order, only `.yaml`/`.yml`): for files that are not on the host yet,
/// such as those inside a snapshot.
pub(crate) fn from_texts(main: &str, dropins: &[(String, String)]) -> Result<Settings, ConfigError> {
    let mut settings = Settings::default();
    apply(&mut settings, CONFIG_FILE, main)?;
    let mut sorted: Vec<&(String, String)> =
        dropins.iter().filter(|(n, _)| n.ends_with(".yaml") || n.ends_with(".yml")).collect();
    sorted.sort();
    for (name, text) in sorted {
        let path = Path::new(CONFIG_DROPIN_DIR).join(name);
        let keys = apply(&mut settings, &path.to_string_lossy(), text)?;
        settings.dropins.push((path, keys));
    }
    Ok(settings)
}

/// Applies one file's settings; returns the keys it sets.
fn apply(settings: &mut Settings, path: &str, text: &str) -> Result<Vec<String>, String> {
    // The parser's message can quote the document, which may hold a token: only its position is kept.
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| match e.location() {
        Some(at) => format!("{path} is not valid YAML (line {}, column {})", at.line(), at.column()),
        None => format!("{path} is not valid YAML"),
    })?;
    let map = match value {
        serde_yaml_ng::Value::Mapping(map) => map,
        serde_yaml_ng::Value::Null => return Ok(Vec::new()),
        _ => return Err(format!("{path} is not a YAML mapping of k3s settings")),
    };
    let text_of = |key: &str| -> Result<Option<String>, String> {
        match map.get(key) {
            None | Some(serde_yaml_ng::Value::Null) => Ok(None),
            Some(serde_yaml_ng::Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(format!("{path}: {key} must be a non-empty string")),
        }
    };
    if let Some(dir) = text_of("data-dir")? {
        settings.data_dir = absolute(path, "data-dir", &dir)?;
    }
    if let Some(file) = text_of("write-kubeconfig")? {
        settings.kubeconfig = absolute(path, "write-kubeconfig", &file)?;
    }
    if let Some(server) = text_of("server")? {
        settings.server = Some(server);
    }
    let mut keys: Vec<String> =
        map.keys().filter_map(|k| k.as_str()).map(|k| k.trim_end_matches('+').to_string()).collect();
    keys.sort();
    keys.dedup();
    Ok(keys)
}

fn absolute(path: &str, key: &str, value: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(value);
    if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(format!("{path}: {key} must be an absolute path without `..`, not {value:?}"));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::system::fake::FakeSystem;

    #[test]
    fn defaults_without_config() {
        assert_eq!(on_host(&FakeSystem::new()).unwrap(), Settings::default());
    }

    #[test]
    fn dropins_override_in_name_order() {
        let sys = FakeSystem::new()
            .file(CONFIG_FILE, "token: secret\ndata-dir: /srv/k3s\nserver: https://10.0.0.1:6443\n")
            .file("/etc/rancher/k3s/config.yaml.d/20-b.yaml", "write-kubeconfig: /root/b.yaml\n")
            .file("/etc/rancher/k3s/config.yaml.d/10-a.yml", "write-kubeconfig: /root/a.yaml\n")
            .file("/etc/rancher/k3s/config.yaml.d/notes.txt", "data-dir: /ignored\n");
        let s = on_host(&sys).unwrap();
        assert_eq!(s.data_dir, PathBuf::from("/srv/k3s"));
        assert_eq!(s.kubeconfig, PathBuf::from("/root/b.yaml"));
        assert_eq!(s.server.as_deref(), Some("https://10.0.0.1:6443"));
        let names: Vec<_> = s.dropins.iter().map(|(p, k)| (p.display().to_string(), k.join(","))).collect();
        assert_eq!(
            names,
            vec![
                ("/etc/rancher/k3s/config.yaml.d/10-a.yml".to_string(), "write-kubeconfig".to_string()),
                ("/etc/rancher/k3s/config.yaml.d/20-b.yaml".to_string(), "write-kubeconfig".to_string()),
            ]
        );
    }

    #[test]
    fn canonical_config_ignores_formatting_and_key_order() {
        let a = canonical("cluster-init: true\ntls-san:\n  - a\n  - b\nnode-name: n1\n").unwrap();
        let b = canonical("# written by install.sh\nnode-name: \"n1\"\ntls-san: [a, b]\ncluster-init: true\n").unwrap();
        assert_eq!(a, b);
        // k3s sets every key as a flag: a quoted scalar is the same value.
        let c = canonical("cluster-init: \"true\"\ntls-san: [a, b]\nnode-name: n1\n").unwrap();
        assert_eq!(a, c);
        assert_eq!(canonical("max-pods: 50\n"), canonical("max-pods: \"50\"\n"));
        assert_ne!(canonical("max-pods: 50\n"), canonical("max-pods: 60\n"));
        assert_ne!(a, canonical("cluster-init: true\ntls-san: [b, a]\nnode-name: n1\n").unwrap());
        assert_eq!(canonical("key: [\n"), None);
    }

    #[test]
    fn errors_never_quote_the_file() {
        let sys = FakeSystem::new().file(CONFIG_FILE, "token: K10supersecret\n  bad: [\n");
        let err = on_host(&sys).unwrap_err().0;
        assert!(err.contains("not valid YAML (line"), "{err}");
        assert!(!err.contains("supersecret"), "{err}");
        let rel = with_main(&FakeSystem::new(), "data-dir: relative/dir\n").unwrap_err().0;
        assert!(rel.contains("absolute"), "{rel}");
    }
}
