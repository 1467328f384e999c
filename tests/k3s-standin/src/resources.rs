//! The kinds the stand-in's Kubernetes API serves: group, version, plural, scope, short names,
//! and where their objects live in the datastore (k8s's etcd key layout, as kine stores it).
//!
//! Built-in kinds are a fixed table; kinds defined by a stored CustomResourceDefinition are added
//! at lookup time, so discovery shows what a manifest brought in. Invariant: one (group, plural)
//! maps to exactly one storage prefix, and every prefix ends with '/', so that listing one kind
//! never picks up another whose name starts the same.

use crate::datastore::Datastore;
use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// `additionalPrinterColumns` of a CRD: (column name, JSON path).
    pub printer_columns: Vec<(String, String)>,
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `configmaps` or `addons.k3s.cattle.io`, as the apiserver names a resource in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Where every object of this kind lives: k8s's keys for built-in kinds
    /// (`/registry/configmaps/<ns>/<name>`, `/registry/minions/<name>` for nodes,
    /// `/registry/services/specs/...`) and `/registry/<group>/<plural>/...` for custom ones.
    pub fn prefix(&self) -> String {
        match (self.group.as_str(), self.plural.as_str()) {
            ("", "nodes") => "/registry/minions/".into(),
            ("", "services") => "/registry/services/specs/".into(),
            (g, p) if is_builtin_group(g) => format!("/registry/{p}/"),
            (g, p) => format!("/registry/{g}/{p}/"),
        }
    }

    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("{}{ns}/{name}", self.prefix()),
            _ => format!("{}{name}", self.prefix()),
        }
    }

    /// Prefix of one namespace's objects (or of all objects with None).
    pub fn list_prefix(&self, namespace: Option<&str>) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("{}{ns}/", self.prefix()),
            _ => self.prefix(),
        }
    }
}

/// Groups whose objects k8s stores under `/registry/<plural>/` without the group.
fn is_builtin_group(g: &str) -> bool {
    g.is_empty() || g.ends_with(".k8s.io") || matches!(g, "apps" | "batch" | "policy" | "autoscaling")
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    categories: &'static [&'static str],
}

const fn b(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    categories: &'static [&'static str],
) -> Builtin {
    Builtin { group, version, kind, plural, namespaced, short, categories }
}

/// The built-in kinds: what `kubectl get nodes|describe node|cluster-info` need, what k3s's own
/// objects are (Addon, the node-password Secrets), and the kinds cluster add-on manifests commonly
/// hold (quotas, limit ranges, network policies, storage classes, RBAC, workloads).
static BUILTINS: &[Builtin] = &[
    b("", "v1", "Namespace", "namespaces", false, &["ns"], &[]),
    b("", "v1", "Node", "nodes", false, &["no"], &[]),
    b("", "v1", "ConfigMap", "configmaps", true, &["cm"], &[]),
    b("", "v1", "Secret", "secrets", true, &[], &[]),
    b("", "v1", "Service", "services", true, &["svc"], &["all"]),
    b("", "v1", "Event", "events", true, &["ev"], &[]),
    b("", "v1", "Pod", "pods", true, &["po"], &["all"]),
    b("", "v1", "ServiceAccount", "serviceaccounts", true, &["sa"], &[]),
    b("", "v1", "ResourceQuota", "resourcequotas", true, &["quota"], &[]),
    b("", "v1", "LimitRange", "limitranges", true, &["limits"], &[]),
    b("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", true, &["pvc"], &[]),
    b("", "v1", "PersistentVolume", "persistentvolumes", false, &["pv"], &[]),
    b("", "v1", "Endpoints", "endpoints", true, &["ep"], &[]),
    b("apps", "v1", "Deployment", "deployments", true, &["deploy"], &["all"]),
    b("apps", "v1", "DaemonSet", "daemonsets", true, &["ds"], &["all"]),
    b("apps", "v1", "StatefulSet", "statefulsets", true, &["sts"], &["all"]),
    b("apps", "v1", "ReplicaSet", "replicasets", true, &["rs"], &["all"]),
    b("batch", "v1", "Job", "jobs", true, &[], &["all"]),
    b("batch", "v1", "CronJob", "cronjobs", true, &["cj"], &["all"]),
    b("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", true, &["pdb"], &[]),
    b("coordination.k8s.io", "v1", "Lease", "leases", true, &[], &[]),
    b("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", true, &["netpol"], &[]),
    b("networking.k8s.io", "v1", "Ingress", "ingresses", true, &["ing"], &[]),
    b("networking.k8s.io", "v1", "IngressClass", "ingressclasses", false, &[], &[]),
    b("storage.k8s.io", "v1", "StorageClass", "storageclasses", false, &["sc"], &[]),
    b("rbac.authorization.k8s.io", "v1", "Role", "roles", true, &[], &[]),
    b("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", true, &[], &[]),
    b("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", false, &[], &[]),
    b("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", false, &[], &[]),
    b("scheduling.k8s.io", "v1", "PriorityClass", "priorityclasses", false, &["pc"], &[]),
    b(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
        &["crd", "crds"],
        &[],
    ),
    b("k3s.cattle.io", "v1", "Addon", "addons", true, &[], &[]),
];

fn builtin(x: &Builtin) -> Resource {
    let mut r = Resource {
        group: x.group.into(),
        version: x.version.into(),
        kind: x.kind.into(),
        plural: x.plural.into(),
        namespaced: x.namespaced,
        short_names: x.short.iter().map(|s| s.to_string()).collect(),
        categories: x.categories.iter().map(|s| s.to_string()).collect(),
        printer_columns: vec![],
    };
    if r.kind == "Addon" {
        // k3s's Addon CRD prints these two columns (and no AGE).
        r.printer_columns =
            vec![("Source".into(), ".spec.source".into()), ("Checksum".into(), ".spec.checksum".into())];
    }
    r
}

pub fn crd_resource() -> Resource {
    builtin(BUILTINS.iter().find(|x| x.kind == "CustomResourceDefinition").expect("CRD kind"))
}

/// The served version of each stored CustomResourceDefinition.
fn custom(kine: &Datastore) -> Vec<Resource> {
    let rows = kine.list(&crd_resource().prefix()).unwrap_or_default();
    let mut out = vec![];
    for row in rows {
        let Ok(crd) = serde_json::from_slice::<Value>(&row.value) else { continue };
        let spec = &crd["spec"];
        let (Some(group), Some(kind), Some(plural)) =
            (spec["group"].as_str(), spec["names"]["kind"].as_str(), spec["names"]["plural"].as_str())
        else {
            continue;
        };
        for v in spec["versions"].as_array().cloned().unwrap_or_default() {
            if v["served"] == false {
                continue;
            }
            let Some(version) = v["name"].as_str() else { continue };
            let strings = |x: &Value| -> Vec<String> {
                x.as_array()
                    .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
                    .unwrap_or_default()
            };
            out.push(Resource {
                group: group.into(),
                version: version.into(),
                kind: kind.into(),
                plural: plural.into(),
                namespaced: spec["scope"] != "Cluster",
                short_names: strings(&spec["names"]["shortNames"]),
                categories: strings(&spec["names"]["categories"]),
                printer_columns: v["additionalPrinterColumns"]
                    .as_array()
                    .map(|cols| {
                        cols.iter()
                            .filter_map(|c| {
                                Some((c["name"].as_str()?.to_string(), c["jsonPath"].as_str()?.to_string()))
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
    }
    out
}

/// Every kind served now: the built-ins, then the custom ones (a CRD cannot shadow a built-in).
pub fn all(kine: &Datastore) -> Vec<Resource> {
    let mut v: Vec<Resource> = BUILTINS.iter().map(builtin).collect();
    for c in custom(kine) {
        if !v.iter().any(|x| x.group == c.group && x.plural == c.plural && x.version == c.version) {
            v.push(c);
        }
    }
    v
}

pub fn by_plural(kine: &Datastore, group: &str, version: &str, plural: &str) -> Option<Resource> {
    all(kine).into_iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

pub fn by_kind(kine: &Datastore, api_version: &str, kind: &str) -> Option<Resource> {
    all(kine).into_iter().find(|r| r.api_version() == api_version && r.kind == kind)
}

/// The built-in kind (no datastore needed): for code that knows what it stores.
pub fn builtin_kind(kind: &str) -> Resource {
    builtin(BUILTINS.iter().find(|x| x.kind == kind).unwrap_or_else(|| panic!("no built-in kind {kind}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_kubernetes_layout() {
        assert_eq!(builtin_kind("Node").key(None, "n1"), "/registry/minions/n1");
        assert_eq!(builtin_kind("ConfigMap").key(Some("default"), "x"), "/registry/configmaps/default/x");
        assert_eq!(
            builtin_kind("Service").key(Some("kube-system"), "kube-dns"),
            "/registry/services/specs/kube-system/kube-dns"
        );
        assert_eq!(builtin_kind("Lease").key(Some("kube-node-lease"), "n1"), "/registry/leases/kube-node-lease/n1");
        assert_eq!(builtin_kind("Addon").key(Some("kube-system"), "a"), "/registry/k3s.cattle.io/addons/kube-system/a");
        assert_eq!(builtin_kind("StorageClass").key(None, "fast"), "/registry/storageclasses/fast");
        assert_eq!(builtin_kind("Secret").list_prefix(Some("kube-system")), "/registry/secrets/kube-system/");
    }

    #[test]
    fn a_stored_crd_adds_its_kind() {
        let dir = tempfile::tempdir().unwrap();
        let k = Datastore::open_sqlite(&dir.path().join("s.db")).unwrap();
        let crd = serde_json::json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Cluster", "names": {"kind": "Widget", "plural": "widgets", "shortNames": ["wd"]},
                     "versions": [{"name": "v1", "served": true, "storage": true}]}});
        k.put(&crd_resource().key(None, "widgets.example.com"), &serde_json::to_vec(&crd).unwrap()).unwrap();
        let r = by_kind(&k, "example.com/v1", "Widget").unwrap();
        assert!(!r.namespaced);
        assert_eq!(r.short_names, vec!["wd"]);
        assert_eq!(r.key(None, "w"), "/registry/example.com/widgets/w");
    }
}
