//! `spec.manifests`: the cluster add-ons k3node delivers to the servers' auto-deploy directory.
//!
//! The cluster file lists files and directories (their `.yaml`, `.yml` and `.json` files, sorted,
//! not recursing); [`read`] reads them all and checks every YAML document before any host is
//! touched: it parses, it has `apiVersion`, `kind` and `metadata.name`, and no object (kind,
//! namespace, name) appears twice, each problem at its file:line. Like the key files, they are
//! read by the commands that use them, not by [`super::load`], which reads the cluster file only.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use super::diagnostic::{Diagnostics, Location, Severity};
use super::escape_file_name;

/// A manifest file is kilobytes; this is the most read of one.
pub const MAX_MANIFEST_SIZE: u64 = 1 << 20;

/// One file as it is delivered (`k3node-<name>` on the servers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Manifest {
    /// The file's name, unique across the list.
    pub name: String,
    pub source: PathBuf,
    pub content: String,
    /// What it creates, for messages and dry runs: `Kind namespace/name`.
    pub objects: Vec<String>,
}

/// A `spec.manifests` entry: the path it names and where the cluster file names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestSource {
    pub path: PathBuf,
    pub at: Location,
}

fn is_manifest_name(name: &str) -> bool {
    !name.starts_with('.') && [".yaml", ".yml", ".json"].iter().any(|ext| name.ends_with(ext))
}

/// Reads and checks every manifest `sources` name; every problem is reported, not just the first.
pub fn read(sources: &[ManifestSource]) -> Result<Vec<Manifest>, Diagnostics> {
    let mut problems: Vec<super::Diagnostic> = Vec::new();
    let mut error = |at: &Location, field: &str, message: String, hint: Option<String>| {
        problems.push(at.diagnostic(Severity::Error, field.to_string(), message, hint));
    };
    let mut files: Vec<(PathBuf, Location, String)> = Vec::new();
    for (i, source) in sources.iter().enumerate() {
        let field = format!("spec.manifests[{i}]");
        let shown = escape_file_name(&source.path.display().to_string());
        match std::fs::metadata(&source.path) {
            Ok(meta) if meta.is_dir() => {
                let mut names: Vec<PathBuf> = match std::fs::read_dir(&source.path) {
                    Ok(entries) => entries
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(is_manifest_name))
                        .collect(),
                    Err(e) => {
                        error(&source.at, &field, format!("cannot read the directory {shown}: {e}"), None);
                        continue;
                    }
                };
                names.sort();
                if names.is_empty() {
                    error(&source.at, &field, format!("{shown} holds no .yaml, .yml or .json file"), None);
                }
                files.extend(names.into_iter().map(|p| (p, source.at.clone(), field.clone())));
            }
            Ok(meta) if meta.is_file() => files.push((source.path.clone(), source.at.clone(), field)),
            Ok(_) => error(&source.at, &field, format!("{shown} is neither a file nor a directory"), None),
            Err(e) => error(
                &source.at,
                &field,
                format!("cannot read {shown}: {e}"),
                Some("paths are relative to the cluster file's directory".into()),
            ),
        }
    }

    let mut manifests: Vec<Manifest> = Vec::new();
    // Every object once: (kind, namespace, name) -> where it was first seen.
    let mut seen: BTreeMap<(String, String, String), String> = BTreeMap::new();
    for (path, at, field) in files {
        let shown = escape_file_name(&path.display().to_string());
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !is_manifest_name(&name) {
            error(&at, &field, format!("{shown}: a manifest's name ends in .yaml, .yml or .json"), None);
            continue;
        }
        if let Some(other) = manifests.iter().find(|m| m.name == name) {
            let first = escape_file_name(&other.source.display().to_string());
            error(
                &at,
                &field,
                format!("{shown} has the same file name as {first}: each is delivered as k3node-{name}"),
                Some("rename one of them".into()),
            );
            continue;
        }
        let text = match std::fs::metadata(&path) {
            // A FIFO or a device named like a manifest would block or never end.
            Ok(meta) if !meta.is_file() => {
                error(&at, &field, format!("{shown} is not a regular file"), None);
                continue;
            }
            Ok(meta) if meta.len() > MAX_MANIFEST_SIZE => {
                error(&at, &field, format!("{shown} is larger than {} KiB", MAX_MANIFEST_SIZE / 1024), None);
                continue;
            }
            _ => match std::fs::read(&path).map(String::from_utf8) {
                Ok(Ok(text)) => text,
                Ok(Err(_)) => {
                    error(&at, &field, format!("{shown} is not UTF-8 text"), None);
                    continue;
                }
                Err(e) => {
                    error(&at, &field, format!("cannot read {shown}: {e}"), None);
                    continue;
                }
            },
        };
        let mut objects = Vec::new();
        for (first_line, doc) in documents(&text) {
            let here = |line: usize| Location { file: shown.clone(), line: first_line + line, column: 1 };
            let value: serde_yaml_ng::Value = match serde_yaml_ng::from_str(doc) {
                Ok(v) => v,
                Err(e) => {
                    let line = e.location().map(|l| l.line().saturating_sub(1)).unwrap_or(0);
                    let message = e.to_string();
                    let message = message.split(" at line ").next().unwrap_or(&message).to_string();
                    error(&here(line), "", format!("not valid YAML: {message}"), None);
                    continue;
                }
            };
            if value.is_null() {
                continue;
            }
            let text_at = |key: &[&str]| -> Option<String> {
                let mut v = &value;
                for k in key {
                    v = v.get(*k)?;
                }
                v.as_str().filter(|s| !s.is_empty()).map(str::to_string)
            };
            let (api, kind, name) = (text_at(&["apiVersion"]), text_at(&["kind"]), text_at(&["metadata", "name"]));
            let missing: Vec<&str> = [("apiVersion", &api), ("kind", &kind), ("metadata.name", &name)]
                .iter()
                .filter(|(_, v)| v.is_none())
                .map(|(k, _)| *k)
                .collect();
            if !missing.is_empty() {
                error(
                    &here(0),
                    "",
                    format!("a document without {}: Kubernetes cannot apply it", missing.join(", ")),
                    None,
                );
                continue;
            }
            let (kind, name) = (kind.unwrap_or_default(), name.unwrap_or_default());
            let namespace = text_at(&["metadata", "namespace"]).unwrap_or_default();
            let key = (kind.clone(), namespace.clone(), name.clone());
            let shown_object =
                if namespace.is_empty() { format!("{kind} {name}") } else { format!("{kind} {namespace}/{name}") };
            match seen.get(&key) {
                Some(first) => error(
                    &here(0),
                    "",
                    format!("{shown_object} is defined twice (first at {first})"),
                    Some("keep one definition".into()),
                ),
                None => {
                    seen.insert(key, format!("{}:{}", shown, first_line));
                }
            }
            objects.push(shown_object);
        }
        manifests.push(Manifest { name, source: path, content: text, objects });
    }
    if problems.is_empty() {
        Ok(manifests)
    } else {
        Err(Diagnostics(problems, 0))
    }
}

/// The YAML documents of a stream with the line each starts on (1-based): split at `---` lines.
fn documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start_line = 1;
    let mut start = 0;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if line.starts_with("---") && line[3..].trim().is_empty() {
            docs.push((start_line, &text[start..offset]));
            start = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start..]));
    docs.into_iter().filter(|(_, d)| !d.trim().is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn at() -> Location {
        Location { file: "cluster.yaml".into(), line: 20, column: 5 }
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_directory_gives_its_manifests_in_name_order_with_their_objects() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "20-quota.yaml",
            "apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: q\n  namespace: apps\n",
        );
        write(dir.path(), "00-ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: apps\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: db\n");
        write(dir.path(), "README.md", "not a manifest");
        let got = read(&[ManifestSource { path: dir.path().to_path_buf(), at: at() }]).unwrap();
        let names: Vec<&str> = got.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["00-ns.yaml", "20-quota.yaml"]);
        assert_eq!(got[0].objects, ["Namespace apps", "Namespace db"]);
        assert_eq!(got[1].objects, ["ResourceQuota apps/q"]);
    }

    #[test]
    fn bad_documents_and_duplicates_are_named_at_their_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(
            dir.path(),
            "a.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: apps\n---\nkind: ConfigMap\nmetadata:\n  name: c\n",
        );
        let b = write(dir.path(), "b.yaml", "# the same namespace again\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: apps\n---\nkey: [unclosed\n");
        let err = read(&[ManifestSource { path: a.clone(), at: at() }, ManifestSource { path: b.clone(), at: at() }])
            .unwrap_err()
            .to_string();
        let a_shown = a.display().to_string();
        let b_shown = b.display().to_string();
        assert!(err.contains(&format!("{a_shown}:6:1: a document without apiVersion")), "{err}");
        assert!(
            err.contains(&format!("{b_shown}:3:1: Namespace apps is defined twice (first at {a_shown}:1)")),
            "{err}"
        );
        assert!(
            err.contains(&format!("{b_shown}:9:1: not valid YAML"))
                || err.contains(&format!("{b_shown}:8:1: not valid YAML")),
            "{err}"
        );
    }

    #[test]
    fn a_missing_path_is_an_error_at_the_setting() {
        let err = read(&[ManifestSource { path: PathBuf::from("/no/such/dir"), at: at() }]).unwrap_err().to_string();
        assert!(err.starts_with("cluster.yaml:20:5: spec.manifests[0]: cannot read /no/such/dir"), "{err}");
    }

    #[test]
    fn a_fifo_named_like_a_manifest_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "00-ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: apps\n");
        nix::unistd::mkfifo(&dir.path().join("10-pipe.yaml"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = read(&[ManifestSource { path: dir.path().to_path_buf(), at: at() }]).unwrap_err().to_string();
        assert!(err.contains("10-pipe.yaml is not a regular file"), "{err}");
    }
}
