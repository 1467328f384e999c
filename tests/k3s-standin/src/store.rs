//! The object store behind the Kubernetes API: any served kind, kept in the kine datastore
//! under k8s's keys (so objects survive restarts and come back with a restored state.db).
//!
//! Invariants, as the apiserver keeps them: every object has metadata.uid, creationTimestamp
//! and a resourceVersion (the kine revision of its row, added when read, never stored); a create
//! never overwrites (AlreadyExists); an update or patch that names a resourceVersion succeeds only
//! against that revision (Conflict); namespaced objects need their namespace; `default`,
//! `kube-system` and `kube-public` cannot be deleted; deleting a namespace deletes what is in it.
//! Nodes are read through `node::view` (Ready comes from the lease), and deleting a Node deletes
//! its node-password Secret too, as k3s's node controller does.

use crate::datastore::Datastore;
use crate::node;
use crate::patch::{self, PatchType};
use crate::resources::{self, Resource};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::timefmt;
use base64::Engine;
use serde_json::{json, Value};
use std::sync::OnceLock;

/// A failed API call, rendered as a Kubernetes `Status` (what kubectl prints as
/// `Error from server (<reason>): <message>`).
#[derive(Debug)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    pub fn not_found(res: &Resource, name: &str) -> ApiError {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("{} \"{name}\" not found", res.qualified()),
            details: json!({"name": name, "group": res.group, "kind": res.plural}),
        }
    }
    pub fn already_exists(res: &Resource, name: &str) -> ApiError {
        ApiError {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{} \"{name}\" already exists", res.qualified()),
            details: json!({"name": name, "group": res.group, "kind": res.plural}),
        }
    }
    pub fn conflict(res: &Resource, name: &str) -> ApiError {
        ApiError {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                res.qualified()
            ),
            details: json!({"name": name, "group": res.group, "kind": res.plural}),
        }
    }
    pub fn invalid(res: &Resource, name: &str, field: &str, msg: &str) -> ApiError {
        ApiError {
            code: 422,
            reason: "Invalid",
            message: format!("{} \"{name}\" is invalid: {field}: {msg}", res.kind),
            details: json!({"name": name, "group": res.group, "kind": res.kind,
                            "causes": [{"reason": "FieldValueInvalid", "message": msg, "field": field}]}),
        }
    }
    pub fn forbidden(res: &Resource, name: &str, msg: &str) -> ApiError {
        ApiError {
            code: 403,
            reason: "Forbidden",
            message: format!("{} \"{name}\" is forbidden: {msg}", res.qualified()),
            details: json!({"name": name, "group": res.group, "kind": res.plural}),
        }
    }
    pub fn bad_request(msg: impl Into<String>) -> ApiError {
        ApiError { code: 400, reason: "BadRequest", message: msg.into(), details: Value::Null }
    }
    pub fn method_not_allowed(msg: impl Into<String>) -> ApiError {
        ApiError { code: 405, reason: "MethodNotAllowed", message: msg.into(), details: Value::Null }
    }
    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        ApiError {
            code: 500,
            reason: "InternalError",
            message: format!("Internal error occurred: {e}"),
            details: Value::Null,
        }
    }

    pub fn status(&self) -> Value {
        let mut v = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": self.message, "reason": self.reason, "code": self.code});
        if !self.details.is_null() {
            v["details"] = self.details.clone();
        }
        v
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> ApiError {
        ApiError::internal(format!("{e:#}"))
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Cluster settings the store needs for defaults (service IPs).
pub struct Settings {
    pub service_cidr: String,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

pub fn configure(s: Settings) {
    let _ = SETTINGS.set(s);
}

fn service_cidr() -> String {
    SETTINGS.get().map(|s| s.service_cidr.clone()).unwrap_or_else(|| "10.43.0.0/16".into())
}

/// Namespaces that exist from the start and cannot be deleted (kube-node-lease can).
pub const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];
const IMMORTAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

/// A random (version 4) UUID, as metadata.uid.
pub fn random_uid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

const DNS1123_SUBDOMAIN: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1123_LABEL: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn valid_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(valid_label)
}

/// Checks a name as the apiserver does for the kind (namespaces and services: DNS labels).
pub fn validate_name(res: &Resource, name: &str) -> ApiResult<()> {
    let label_kinds = matches!(res.kind.as_str(), "Namespace" | "Service");
    let ok = if label_kinds { valid_label(name) } else { valid_subdomain(name) };
    if ok {
        return Ok(());
    }
    let why = if label_kinds { DNS1123_LABEL } else { DNS1123_SUBDOMAIN };
    Err(ApiError::invalid(res, name, "metadata.name", &format!("Invalid value: \"{name}\": {why}")))
}

/// The object as the API returns it: resourceVersion from the row; nodes through their view.
fn finish(kine: &Datastore, res: &Resource, row: &crate::datastore::Row) -> Option<Value> {
    if res.kind == "Node" {
        return node::view(kine, row, node::grace());
    }
    let mut v: Value = serde_json::from_slice(&row.value).ok()?;
    v["metadata"]["resourceVersion"] = json!(row.id.to_string());
    if v.get("apiVersion").is_none() {
        v["apiVersion"] = json!(res.api_version());
    }
    if v.get("kind").is_none() {
        v["kind"] = json!(res.kind);
    }
    Some(v)
}

pub fn get(kine: &Datastore, res: &Resource, ns: Option<&str>, name: &str) -> ApiResult<Value> {
    let row = kine.get(&res.key(ns, name))?.ok_or_else(|| ApiError::not_found(res, name))?;
    finish(kine, res, &row).ok_or_else(|| ApiError::internal(format!("stored {} {name} is not JSON", res.kind)))
}

/// Objects of `res` (in `ns`, or everywhere) that match both selectors, and the list's revision.
pub fn list(
    kine: &Datastore,
    res: &Resource,
    ns: Option<&str>,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> ApiResult<(Vec<Value>, i64)> {
    let rev = kine.current_revision()?;
    let items = kine
        .list(&res.list_prefix(ns))?
        .iter()
        .filter_map(|r| finish(kine, res, r))
        .filter(|o| labels.matches(o) && fields.matches(o))
        .collect();
    Ok((items, rev))
}

fn ensure_namespace(kine: &Datastore, res: &Resource, ns: Option<&str>) -> ApiResult<()> {
    if !res.namespaced {
        return Ok(());
    }
    let ns = ns.ok_or_else(|| ApiError::bad_request("the namespace of the object is missing"))?;
    let nsres = resources::builtin_kind("Namespace");
    if kine.get(&nsres.key(None, ns))?.is_none() {
        return Err(ApiError::not_found(&nsres, ns));
    }
    Ok(())
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Kind-specific defaults and checks the apiserver applies on every write.
fn defaults(kine: &Datastore, res: &Resource, obj: &mut Value, name: &str) -> ApiResult<()> {
    match res.kind.as_str() {
        "Namespace" => {
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
            if obj["spec"]["finalizers"].is_null() {
                obj["spec"]["finalizers"] = json!(["kubernetes"]);
            }
            obj["status"] = json!({"phase": "Active"});
        }
        "Secret" => {
            if let Some(sd) = obj.as_object_mut().and_then(|o| o.remove("stringData")) {
                for (k, v) in sd.as_object().cloned().unwrap_or_default() {
                    obj["data"][k] = json!(b64(v.as_str().unwrap_or_default().as_bytes()));
                }
            }
            for (k, v) in obj["data"].as_object().cloned().unwrap_or_default() {
                let ok =
                    v.as_str().map(|s| base64::engine::general_purpose::STANDARD.decode(s).is_ok()).unwrap_or(false);
                if !ok {
                    return Err(ApiError::invalid(res, name, &format!("data[{k}]"), "Invalid value: not base64 data"));
                }
            }
            if obj["type"].is_null() {
                obj["type"] = json!("Opaque");
            }
        }
        "Service" => {
            let spec = &mut obj["spec"];
            if spec["type"].is_null() {
                spec["type"] = json!("ClusterIP");
            }
            if spec["sessionAffinity"].is_null() {
                spec["sessionAffinity"] = json!("None");
            }
            if let Some(ports) = spec["ports"].as_array_mut() {
                for p in ports {
                    if p["protocol"].is_null() {
                        p["protocol"] = json!("TCP");
                    }
                    if p["targetPort"].is_null() {
                        p["targetPort"] = p["port"].clone();
                    }
                }
            }
            if spec["clusterIP"].is_null() || spec["clusterIP"] == "" {
                let ip = allocate_service_ip(kine)?;
                spec["clusterIP"] = json!(ip);
            }
            if spec["clusterIPs"].is_null() {
                spec["clusterIPs"] = json!([spec["clusterIP"].clone()]);
            }
            if spec["ipFamilies"].is_null() {
                spec["ipFamilies"] = json!(["IPv4"]);
                spec["ipFamilyPolicy"] = json!("SingleStack");
            }
            if obj["status"].is_null() {
                obj["status"] = json!({"loadBalancer": {}});
            }
        }
        _ => {}
    }
    Ok(())
}

/// The lowest free address of service-cidr after the first (the first is `kubernetes`).
fn allocate_service_ip(kine: &Datastore) -> ApiResult<String> {
    let cidr = service_cidr();
    let first = cidr.split(',').next().unwrap_or_default().trim().to_string();
    let (addr, bits) = first.split_once('/').ok_or_else(|| ApiError::internal(format!("bad service-cidr {cidr}")))?;
    let base: std::net::Ipv4Addr = addr.parse().map_err(|_| ApiError::internal(format!("bad service-cidr {cidr}")))?;
    let bits: u32 = bits.parse().unwrap_or(16);
    let size = 1u32 << (32 - bits.min(30));
    let svc = resources::builtin_kind("Service");
    let used: Vec<String> = kine
        .list(&svc.prefix())?
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.value).ok())
        .filter_map(|s| s["spec"]["clusterIP"].as_str().map(String::from))
        .collect();
    for i in 2..size - 1 {
        let ip = std::net::Ipv4Addr::from(u32::from(base) + i).to_string();
        if !used.contains(&ip) {
            return Ok(ip);
        }
    }
    Err(ApiError::internal(format!("the service IP range {cidr} is full")))
}

fn name_of(obj: &Value) -> Option<String> {
    obj["metadata"]["name"].as_str().filter(|s| !s.is_empty()).map(String::from)
}

/// POST: stores a new object. `ns` is the namespace of the URL (it wins over the body's, which
/// must then agree, as in the apiserver).
pub fn create(kine: &Datastore, res: &Resource, ns: Option<&str>, mut obj: Value, dry_run: bool) -> ApiResult<Value> {
    if !obj.is_object() {
        return Err(ApiError::bad_request("the body of the request is not a JSON object"));
    }
    if let Some(body_ns) = obj["metadata"]["namespace"].as_str().filter(|s| !s.is_empty()) {
        if res.namespaced && ns.is_some() && Some(body_ns) != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
    }
    let name = match name_of(&obj) {
        Some(n) => n,
        None => match obj["metadata"]["generateName"].as_str() {
            Some(prefix) => {
                let suffix: String = (0..5)
                    .map(|_| b"bcdfghjklmnpqrstvwxz2456789"[rand::random::<u8>() as usize % 27] as char)
                    .collect();
                format!("{prefix}{suffix}")
            }
            None => {
                return Err(ApiError::invalid(
                    res,
                    "",
                    "metadata.name",
                    "Required value: name or generateName is required",
                ))
            }
        },
    };
    validate_name(res, &name)?;
    ensure_namespace(kine, res, ns)?;
    obj["apiVersion"] = json!(res.api_version());
    obj["kind"] = json!(res.kind);
    let meta = &mut obj["metadata"];
    meta["name"] = json!(name);
    if res.namespaced {
        meta["namespace"] = json!(ns);
    } else if let Some(m) = meta.as_object_mut() {
        m.remove("namespace");
    }
    meta["uid"] = json!(random_uid());
    meta["creationTimestamp"] = json!(timefmt::rfc3339(timefmt::now_secs()));
    if let Some(m) = meta.as_object_mut() {
        m.remove("resourceVersion");
        m.remove("generateName");
    }
    defaults(kine, res, &mut obj, &name)?;
    if dry_run {
        return Ok(obj);
    }
    let key = res.key(ns, &name);
    let bytes = serde_json::to_vec(&obj).map_err(ApiError::internal)?;
    match kine.create(&key, &bytes)? {
        Some(rev) => {
            obj["metadata"]["resourceVersion"] = json!(rev.to_string());
            Ok(obj)
        }
        None => Err(ApiError::already_exists(res, &name)),
    }
}

/// Common part of PUT and PATCH: `new` replaces the stored object whose revision is `rev`,
/// keeping what clients cannot change (uid, creationTimestamp, name, namespace).
fn replace(
    kine: &Datastore,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    (old, rev): (&Value, i64),
    mut new: Value,
    dry_run: bool,
) -> ApiResult<Value> {
    if let Some(want) = new["metadata"]["resourceVersion"].as_str().filter(|s| !s.is_empty()) {
        if want != rev.to_string() {
            return Err(ApiError::conflict(res, name));
        }
    }
    if new["metadata"]["name"].as_str().is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            new["metadata"]["name"].as_str().unwrap_or_default()
        )));
    }
    if matches!(res.kind.as_str(), "Secret" | "ConfigMap") && old["immutable"] == true {
        let changed = ["data", "binaryData", "stringData"].iter().any(|f| !new[*f].is_null() && new[*f] != old[*f]);
        if changed || new["immutable"] != true {
            return Err(ApiError::invalid(res, name, "data", "Forbidden: field is immutable when `immutable` is set"));
        }
    }
    new["apiVersion"] = json!(res.api_version());
    new["kind"] = json!(res.kind);
    for f in ["uid", "creationTimestamp", "name", "namespace"] {
        new["metadata"][f] = old["metadata"][f].clone();
    }
    if let Some(m) = new["metadata"].as_object_mut() {
        m.retain(|_, v| !v.is_null());
        m.remove("resourceVersion");
    }
    if res.kind == "Node" {
        // Ready and the unreachable taints are computed when read, never stored.
        if let Some(c) = new["status"]["conditions"].as_array_mut() {
            c.retain(|x| x["type"] != "Ready");
        }
        if let Some(t) = new["spec"]["taints"].as_array_mut() {
            t.retain(|x| x["key"] != "node.kubernetes.io/unreachable");
        }
    }
    defaults(kine, res, &mut new, name)?;
    if dry_run {
        return Ok(new);
    }
    let bytes = serde_json::to_vec(&new).map_err(ApiError::internal)?;
    match kine.update(&res.key(ns, name), rev, &bytes)? {
        Ok(_) => get(kine, res, ns, name),
        Err(Some(_)) => Err(ApiError::conflict(res, name)),
        Err(None) => Err(ApiError::not_found(res, name)),
    }
}

fn stored(kine: &Datastore, res: &Resource, ns: Option<&str>, name: &str) -> ApiResult<(Value, i64)> {
    let row = kine.get(&res.key(ns, name))?.ok_or_else(|| ApiError::not_found(res, name))?;
    let v: Value = serde_json::from_slice(&row.value).map_err(ApiError::internal)?;
    Ok((v, row.id))
}

/// PUT.
pub fn update(
    kine: &Datastore,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    new: Value,
    dry_run: bool,
) -> ApiResult<Value> {
    let (old, rev) = stored(kine, res, ns, name)?;
    replace(kine, res, ns, name, (&old, rev), new, dry_run)
}

/// PATCH of the object (or of its status: the same object here, no separate status storage).
pub fn patch(
    kine: &Datastore,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    body: &[u8],
    pt: PatchType,
    dry_run: bool,
) -> ApiResult<Value> {
    for _ in 0..5 {
        let (old, rev) = stored(kine, res, ns, name)?;
        let mut new = old.clone();
        patch::apply(&mut new, body, pt_clone(&pt)).map_err(|m| ApiError {
            code: 422,
            reason: "Invalid",
            message: m,
            details: Value::Null,
        })?;
        let explicit_rv = new["metadata"]["resourceVersion"].as_str().is_some_and(|s| !s.is_empty());
        match replace(kine, res, ns, name, (&old, rev), new, dry_run) {
            // A concurrent writer moved the object on: a patch without a resourceVersion retries,
            // as the apiserver's GuaranteedUpdate does.
            Err(e) if e.reason == "Conflict" && !explicit_rv => continue,
            other => return other,
        }
    }
    Err(ApiError::conflict(res, name))
}

fn pt_clone(pt: &PatchType) -> PatchType {
    match pt {
        PatchType::Merge => PatchType::Merge,
        PatchType::Json => PatchType::Json,
        PatchType::Strategic => PatchType::Strategic,
        PatchType::Apply => PatchType::Apply,
    }
}

/// DELETE. Returns what the apiserver answers: the namespace (Terminating) for namespaces, a
/// `Status` of success for everything else.
pub fn delete(kine: &Datastore, res: &Resource, ns: Option<&str>, name: &str, dry_run: bool) -> ApiResult<Value> {
    let obj = get(kine, res, ns, name)?;
    if res.kind == "Namespace" && IMMORTAL_NAMESPACES.contains(&name) {
        return Err(ApiError::forbidden(res, name, "this namespace may not be deleted"));
    }
    let success = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                         "details": {"name": name, "group": res.group, "kind": res.plural, "uid": obj["metadata"]["uid"]}});
    if dry_run {
        return Ok(success);
    }
    match res.kind.as_str() {
        "Node" => {
            node::delete(kine, name)?;
            // k3s's node controller removes the node's password secret with the node, so that the
            // name can register again (with any password).
            let secret = resources::builtin_kind("Secret");
            kine.delete(&secret.key(Some("kube-system"), &crate::nodepass::secret_name(name)))?;
        }
        "Namespace" => {
            for r in resources::all(kine).iter().filter(|r| r.namespaced) {
                for row in kine.list(&r.list_prefix(Some(name)))? {
                    kine.delete(&row.name)?;
                }
            }
            kine.delete(&res.key(None, name))?;
            let mut gone = obj;
            gone["status"]["phase"] = json!("Terminating");
            gone["metadata"]["deletionTimestamp"] = json!(timefmt::rfc3339(timefmt::now_secs()));
            return Ok(gone);
        }
        _ => {
            if !kine.delete(&res.key(ns, name))? {
                return Err(ApiError::not_found(res, name));
            }
        }
    }
    Ok(success)
}

/// Creates what a fresh k3s server has before any client asks: the system namespaces and the
/// `default/kubernetes` Service, plus the kube-dns and metrics-server Services that the packaged
/// coredns and metrics-server add-ons would create (unless disabled), so that `kubectl
/// cluster-info` lists what it lists on k3s. Existing objects are left alone.
pub fn seed(kine: &Datastore, service_cidr: &str, cluster_dns: &str, disabled: &[String]) -> anyhow::Result<()> {
    let nsres = resources::builtin_kind("Namespace");
    for ns in SYSTEM_NAMESPACES {
        if kine.get(&nsres.key(None, ns))?.is_none() {
            create(kine, &nsres, None, json!({"metadata": {"name": ns}}), false)
                .map_err(|e| anyhow::anyhow!(e.message))?;
        }
    }
    let svc = resources::builtin_kind("Service");
    let first_ip = {
        let (addr, _) =
            service_cidr.split(',').next().unwrap_or_default().trim().split_once('/').unwrap_or(("10.43.0.0", "16"));
        let ip: std::net::Ipv4Addr = addr.parse().unwrap_or(std::net::Ipv4Addr::new(10, 43, 0, 0));
        std::net::Ipv4Addr::from(u32::from(ip) + 1).to_string()
    };
    let mut wanted = vec![(
        "default",
        json!({"metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
               "spec": {"clusterIP": first_ip, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}}),
    )];
    if !disabled.iter().any(|d| d == "coredns") {
        wanted.push((
            "kube-system",
            json!({"metadata": {"name": "kube-dns", "labels": {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "CoreDNS"},
                                "annotations": {"prometheus.io/port": "9153", "prometheus.io/scrape": "true"}},
                   "spec": {"clusterIP": cluster_dns.split(',').next().unwrap_or("10.43.0.10").trim(), "selector": {"k8s-app": "kube-dns"},
                            "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                                      {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                                      {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}]}}),
        ));
    }
    if !disabled.iter().any(|d| d == "metrics-server") {
        wanted.push((
            "kube-system",
            json!({"metadata": {"name": "metrics-server", "labels": {"kubernetes.io/cluster-service": "true", "kubernetes.io/name": "Metrics-server"}},
                   "spec": {"selector": {"k8s-app": "metrics-server"}, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": "https"}]}}),
        ));
    }
    for (ns, obj) in wanted {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
        if kine.get(&svc.key(Some(ns), &name))?.is_none() {
            create(kine, &svc, Some(ns), obj, false).map_err(|e| anyhow::anyhow!(e.message))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Datastore) {
        let dir = tempfile::tempdir().unwrap();
        let k = Datastore::open_sqlite(&dir.path().join("s.db")).unwrap();
        seed(&k, "10.43.0.0/16", "10.43.0.10", &[]).unwrap();
        (dir, k)
    }

    #[test]
    fn objects_get_metadata_and_creates_never_overwrite() {
        let (_d, k) = store();
        let cm = resources::builtin_kind("ConfigMap");
        let o =
            create(&k, &cm, Some("default"), json!({"metadata": {"name": "x"}, "data": {"a": "b"}}), false).unwrap();
        assert_eq!(o["metadata"]["uid"].as_str().unwrap().len(), 36);
        assert!(o["metadata"]["creationTimestamp"].is_string());
        let rv = o["metadata"]["resourceVersion"].as_str().unwrap().to_string();
        assert_eq!(get(&k, &cm, Some("default"), "x").unwrap()["metadata"]["resourceVersion"], rv.as_str());
        let e = create(&k, &cm, Some("default"), json!({"metadata": {"name": "x"}}), false).unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (409, "configmaps \"x\" already exists"));
        let e = create(&k, &cm, Some("nope"), json!({"metadata": {"name": "y"}}), false).unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (404, "namespaces \"nope\" not found"));
        let e = create(&k, &cm, Some("default"), json!({"metadata": {"name": "Bad_Name"}}), false).unwrap_err();
        assert_eq!(e.code, 422);
    }

    #[test]
    fn stale_resource_versions_conflict_and_patches_retry() {
        let (_d, k) = store();
        let cm = resources::builtin_kind("ConfigMap");
        let o =
            create(&k, &cm, Some("default"), json!({"metadata": {"name": "x"}, "data": {"a": "1"}}), false).unwrap();
        let mut stale = o.clone();
        stale["data"]["a"] = json!("2");
        update(&k, &cm, Some("default"), "x", stale.clone(), false).unwrap();
        stale["data"]["a"] = json!("3");
        let e = update(&k, &cm, Some("default"), "x", stale, false).unwrap_err();
        assert_eq!(e.reason, "Conflict");
        let p = patch(&k, &cm, Some("default"), "x", br#"{"data":{"b":"4"}}"#, PatchType::Strategic, false).unwrap();
        assert_eq!(p["data"], json!({"a": "2", "b": "4"}));
        assert_eq!(p["metadata"]["uid"], o["metadata"]["uid"]);
    }

    #[test]
    fn namespaces_cascade_and_system_ones_stay() {
        let (_d, k) = store();
        let nsr = resources::builtin_kind("Namespace");
        let cm = resources::builtin_kind("ConfigMap");
        create(&k, &nsr, None, json!({"metadata": {"name": "team"}}), false).unwrap();
        create(&k, &cm, Some("team"), json!({"metadata": {"name": "c"}}), false).unwrap();
        delete(&k, &nsr, None, "team", false).unwrap();
        assert_eq!(get(&k, &cm, Some("team"), "c").unwrap_err().code, 404);
        let e = delete(&k, &nsr, None, "kube-system", false).unwrap_err();
        assert_eq!(e.message, "namespaces \"kube-system\" is forbidden: this namespace may not be deleted");
    }

    #[test]
    fn services_get_cluster_ips_and_secrets_take_string_data() {
        let (_d, k) = store();
        let svc = resources::builtin_kind("Service");
        let dns = get(&k, &svc, Some("kube-system"), "kube-dns").unwrap();
        assert_eq!(dns["spec"]["clusterIP"], "10.43.0.10");
        assert_eq!(get(&k, &svc, Some("default"), "kubernetes").unwrap()["spec"]["clusterIP"], "10.43.0.1");
        let s = create(
            &k,
            &svc,
            Some("default"),
            json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}}),
            false,
        )
        .unwrap();
        // .1 is kubernetes, .2 went to the seeded metrics-server: the lowest free one.
        assert_eq!(s["spec"]["clusterIP"], "10.43.0.3");
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
        let sec = resources::builtin_kind("Secret");
        let o = create(&k, &sec, Some("default"), json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}}), false)
            .unwrap();
        assert_eq!(o["data"]["k"], "dg==");
        assert_eq!(o["type"], "Opaque");
    }
}
