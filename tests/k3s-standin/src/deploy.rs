//! k3s's deploy controller (auto-deploying manifests, k3s pkg/deploy): every `.yaml`, `.yml` or
//! `.json` file under `<data-dir>/server/manifests/` (recursively) becomes an `Addon`
//! (`k3s.cattle.io/v1`, kube-system) named after the file's base name up to its first dot, with
//! spec.source = the path and spec.checksum = sha256 of the content, and its documents are applied
//! into the object store, owned by that Addon.
//!
//! As in k3s: dotfiles are ignored, `foo.yaml.skip` makes the controller ignore `foo.yaml`; the
//! directory is scanned at start (everything applied) and then every 15 s, where a file whose
//! modification time changed is applied again if its checksum differs; objects the Addon applied
//! before and that the file no longer holds are deleted; a file that disappears leaves its Addon
//! and its objects in place (k3s documents that deleting a file deletes nothing); a file whose
//! base name is in `disable` is removed from disk together with its Addon and every object the
//! Addon owns. A file that fails (bad YAML, unknown kind) is logged as k3s logs it and retried at
//! the next scan. The stand-in writes none of k3s's packaged manifests (ccm, coredns, ...).

use crate::datastore::Datastore;
use crate::resources::{self, Resource};
use crate::store::{self, ApiError};
use crate::{error, info};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const OWNER_GVK: &str = "objectset.rio.cattle.io/owner-gvk";
const OWNER_NAME: &str = "objectset.rio.cattle.io/owner-name";
const OWNER_NAMESPACE: &str = "objectset.rio.cattle.io/owner-namespace";
const ADDON_GVK: &str = "k3s.cattle.io/v1, Kind=Addon";

/// Seconds between scans ($K3S_STANDIN_MANIFESTS_INTERVAL, default 15 as in k3s).
fn interval() -> Duration {
    let secs = std::env::var("K3S_STANDIN_MANIFESTS_INTERVAL").ok().and_then(|v| v.parse::<f64>().ok()).unwrap_or(15.0);
    Duration::from_secs_f64(secs.clamp(0.1, 3600.0))
}

pub struct Controller {
    base: PathBuf,
    disabled: Vec<String>,
    mod_times: BTreeMap<PathBuf, SystemTime>,
}

/// `foo.yaml` → `foo`, `a.b.yaml` → `a` (everything before the first dot, as k3s names Addons).
pub fn addon_name(path: &Path) -> String {
    let file = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    file.split('.').next().unwrap_or_default().to_string()
}

fn has_manifest_suffix(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.ends_with(".yaml") || n.ends_with(".yml") || n.ends_with(".json")
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// The documents of a manifest (YAML or JSON, `---` separated; a `List` counts as its items).
pub fn documents(text: &str) -> Result<Vec<Value>, String> {
    let mut out = vec![];
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let v: Value =
            serde::Deserialize::deserialize(doc).map_err(|e| format!("error converting YAML to JSON: {e}"))?;
        match v {
            Value::Null => continue,
            Value::Object(_) if v["kind"].as_str().is_some_and(|k| k.ends_with("List")) && v["items"].is_array() => {
                out.extend(v["items"].as_array().cloned().unwrap_or_default())
            }
            Value::Object(_) => out.push(v),
            _ => return Err("Object 'Kind' is missing in the document".into()),
        }
    }
    Ok(out)
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn owned_by(obj: &Value, addon: &str) -> bool {
    let a = &obj["metadata"]["annotations"];
    a[OWNER_GVK] == ADDON_GVK && a[OWNER_NAME] == addon && a[OWNER_NAMESPACE] == "kube-system"
}

/// Every stored object the Addon applied: (resource, namespace, name).
fn owned_objects(kine: &Datastore, addon: &str) -> Vec<(Resource, Option<String>, String)> {
    let mut out = vec![];
    for r in resources::all(kine) {
        for row in kine.list(&r.prefix()).unwrap_or_default() {
            let Ok(o) = serde_json::from_slice::<Value>(&row.value) else { continue };
            if owned_by(&o, addon) {
                let ns = o["metadata"]["namespace"].as_str().map(String::from);
                out.push((r.clone(), ns, o["metadata"]["name"].as_str().unwrap_or_default().to_string()));
            }
        }
    }
    out
}

/// Records an event on the Addon (kube-system), as k3s's deploy controller does, and logs it as
/// client-go's event broadcaster does.
fn event(kine: &Datastore, addon: &Value, kind: &str, reason: &str, message: &str) {
    let name = addon["metadata"]["name"].as_str().unwrap_or_default();
    info!(
        "Event(v1.ObjectReference{{Kind:\"Addon\", Namespace:\"kube-system\", Name:\"{name}\", APIVersion:\"k3s.cattle.io/v1\"}}): type: '{kind}' reason: '{reason}' {message}"
    );
    let now = crate::timefmt::rfc3339(crate::timefmt::now_secs());
    let suffix: u64 = rand::random();
    let ev = json!({
        "metadata": {"name": format!("{name}.{suffix:016x}"), "namespace": "kube-system"},
        "involvedObject": {"kind": "Addon", "namespace": "kube-system", "name": name, "uid": addon["metadata"]["uid"],
                           "apiVersion": "k3s.cattle.io/v1"},
        "reason": reason, "message": message, "type": kind, "count": 1,
        "source": {"component": "deploy"}, "firstTimestamp": now, "lastTimestamp": now,
    });
    let _ = store::create(kine, &resources::builtin_kind("Event"), Some("kube-system"), ev, false);
}

fn get_or_create_addon(kine: &Datastore, name: &str, path: &Path) -> Result<Value, ApiError> {
    let res = resources::builtin_kind("Addon");
    match store::get(kine, &res, Some("kube-system"), name) {
        Ok(a) => Ok(a),
        Err(e) if e.code == 404 => store::create(
            kine,
            &res,
            Some("kube-system"),
            json!({"metadata": {"name": name, "namespace": "kube-system"}, "spec": {"source": path.display().to_string()}}),
            false,
        ),
        Err(e) => Err(e),
    }
}

/// Stores one object of a manifest, owned by the Addon: created, or replaced in place.
fn apply_object(kine: &Datastore, addon: &str, mut obj: Value) -> Result<(Resource, Option<String>, String), String> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_string();
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    if kind.is_empty() {
        return Err("Object 'Kind' is missing".into());
    }
    let res = resources::by_kind(kine, &api_version, &kind)
        .ok_or_else(|| format!("no matches for kind \"{kind}\" in version \"{api_version}\""))?;
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let ns = if res.namespaced {
        Some(obj["metadata"]["namespace"].as_str().filter(|s| !s.is_empty()).unwrap_or("default").to_string())
    } else {
        None
    };
    let ann = &mut obj["metadata"]["annotations"];
    ann[OWNER_GVK] = json!(ADDON_GVK);
    ann[OWNER_NAME] = json!(addon);
    ann[OWNER_NAMESPACE] = json!("kube-system");
    let result = match store::get(kine, &res, ns.as_deref(), &name) {
        Ok(_) => {
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            store::update(kine, &res, ns.as_deref(), &name, obj, false)
        }
        Err(e) if e.code == 404 => store::create(kine, &res, ns.as_deref(), obj, false),
        Err(e) => Err(e),
    };
    result.map_err(|e| e.message)?;
    Ok((res, ns, name))
}

impl Controller {
    pub fn new(data_dir: &Path, disabled: Vec<String>) -> Controller {
        let base = data_dir.join("server/manifests");
        if let Err(e) = std::fs::create_dir_all(&base) {
            error!("failed to create {}: {e}", base.display());
        }
        Controller { base, disabled, mod_times: BTreeMap::new() }
    }

    /// `disable` names a file by its base name without the last extension, or a subdirectory.
    fn is_disabled(&self, path: &Path) -> bool {
        let rel = path.strip_prefix(&self.base).unwrap_or(path);
        let parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().to_string()).collect();
        for i in 1..parts.len() {
            if self.disabled.contains(&parts[..i].join("/")) {
                return true;
            }
        }
        let file = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !has_manifest_suffix(file) {
            return false;
        }
        let stem = path.file_stem().and_then(|n| n.to_str()).unwrap_or_default();
        self.disabled.iter().any(|d| d == stem)
    }

    /// One pass over the directory. `force` applies every file (the first pass after start).
    pub fn scan(&mut self, kine: &Datastore, force: bool) {
        let mut files = vec![];
        walk(&self.base, &mut files);
        files.sort();
        let skips: Vec<String> = files
            .iter()
            .filter_map(|p| {
                p.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".skip")).map(String::from)
            })
            .collect();
        for path in files {
            let file = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            if self.is_disabled(&path) {
                if let Err(e) = self.remove(kine, &path) {
                    error!("Failed to process config: failed to delete {}: {e}", path.display());
                }
                continue;
            }
            if file.starts_with('.') || skips.contains(&file) || !has_manifest_suffix(&file) {
                continue;
            }
            let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            if !force && mtime.is_some() && self.mod_times.get(&path) == mtime.as_ref() {
                continue;
            }
            match self.deploy(kine, &path, !force) {
                Ok(()) => {
                    if let Some(t) = mtime {
                        self.mod_times.insert(path, t);
                    }
                }
                Err(e) => error!("Failed to process config: failed to process {}: {e}", path.display()),
            }
        }
    }

    fn deploy(&self, kine: &Datastore, path: &Path, compare_checksum: bool) -> Result<(), String> {
        let name = addon_name(path);
        let res = resources::builtin_kind("Addon");
        store::validate_name(&res, &name).map_err(|e| {
            format!(
                "Addon.k3s.cattle.io \"{name}\" is invalid: {}",
                e.message.split_once(": ").map(|x| x.1).unwrap_or(&e.message)
            )
        })?;
        let mut addon = get_or_create_addon(kine, &name, path).map_err(|e| e.message)?;
        let content = std::fs::read(path).map_err(|e| {
            event(
                kine,
                &addon,
                "Warning",
                "ReadManifestFailed",
                &format!("Read manifest at \"{}\" failed: {e}", path.display()),
            );
            e.to_string()
        })?;
        let checksum = sha256_hex(&content);
        if compare_checksum && addon["spec"]["checksum"] == checksum.as_str() {
            return Ok(());
        }
        let docs = documents(&String::from_utf8_lossy(&content)).map_err(|e| {
            event(
                kine,
                &addon,
                "Warning",
                "ParseManifestFailed",
                &format!("Parse manifest at \"{}\" failed: {e}", path.display()),
            );
            e
        })?;
        event(kine, &addon, "Normal", "ApplyingManifest", &format!("Applying manifest at \"{}\"", path.display()));
        let mut applied = vec![];
        for doc in docs {
            match apply_object(kine, &name, doc) {
                Ok(x) => applied.push(x),
                Err(e) => {
                    event(
                        kine,
                        &addon,
                        "Warning",
                        "ApplyManifestFailed",
                        &format!("Applying manifest at \"{}\" failed: {e}", path.display()),
                    );
                    return Err(e);
                }
            }
        }
        // Objects this Addon applied before that the file no longer holds are deleted.
        for (r, ns, n) in owned_objects(kine, &name) {
            if !applied.iter().any(|(ar, ans, an)| ar.kind == r.kind && ar.group == r.group && *ans == ns && *an == n) {
                let _ = store::delete(kine, &r, ns.as_deref(), &n, false);
            }
        }
        let mut gvks: Vec<Value> = vec![];
        for (r, _, _) in &applied {
            let g = json!({"Group": r.group, "Version": r.version, "Kind": r.kind});
            if !gvks.contains(&g) {
                gvks.push(g);
            }
        }
        addon["spec"]["source"] = json!(path.display().to_string());
        addon["spec"]["checksum"] = json!(checksum);
        addon["status"] = json!({"gvks": gvks});
        if let Some(m) = addon["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        store::update(kine, &res, Some("kube-system"), &name, addon.clone(), false).map_err(|e| e.message)?;
        event(kine, &addon, "Normal", "AppliedManifest", &format!("Applied manifest at \"{}\"", path.display()));
        Ok(())
    }

    /// A disabled manifest: its Addon, every object the Addon owns, then the file.
    fn remove(&self, kine: &Datastore, path: &Path) -> Result<(), String> {
        let name = addon_name(path);
        let res = resources::builtin_kind("Addon");
        if let Ok(addon) = store::get(kine, &res, Some("kube-system"), &name) {
            event(kine, &addon, "Normal", "DeletingManifest", &format!("Deleting manifest at \"{}\"", path.display()));
            store::delete(kine, &res, Some("kube-system"), &name, false).map_err(|e| e.message)?;
        }
        for (r, ns, n) in owned_objects(kine, &name) {
            let _ = store::delete(kine, &r, ns.as_deref(), &n, false);
        }
        std::fs::remove_file(path).map_err(|e| e.to_string())?;
        info!("Removed disabled manifest {}", path.display());
        Ok(())
    }
}

/// Scans every interval, forever (the first, forced scan is the caller's, at start).
pub async fn run(kine: std::sync::Arc<Datastore>, mut c: Controller) {
    loop {
        tokio::time::sleep(interval()).await;
        let k = kine.clone();
        c = match tokio::task::spawn_blocking(move || {
            c.scan(&k, false);
            c
        })
        .await
        {
            Ok(c) => c,
            Err(e) => {
                error!("deploy controller stopped: {e}");
                return;
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addon_names_and_documents_follow_k3s() {
        assert_eq!(addon_name(Path::new("/m/ccm.yaml")), "ccm");
        assert_eq!(addon_name(Path::new("/m/sub/team-quota.v2.yml")), "team-quota");
        let docs = documents("# c\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n---\n{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": [{\"apiVersion\": \"v1\", \"kind\": \"ConfigMap\", \"metadata\": {\"name\": \"b\"}}]}\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1]["kind"], "ConfigMap");
        assert!(documents("a: [").is_err());
    }
}
