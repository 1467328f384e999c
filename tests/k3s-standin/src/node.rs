//! Node objects (Kubernetes `v1/Node` JSON) and their leases, stored in the datastore under k3s's keys:
//! `/registry/minions/<name>` and `/registry/leases/kube-node-lease/<name>`.

use crate::datastore::Datastore;
use crate::timefmt;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub const NODE_PREFIX: &str = "/registry/minions/";
pub const LEASE_PREFIX: &str = "/registry/leases/kube-node-lease/";
pub const CONTAINERD_VERSION: &str = "containerd://1.7.23-k3s2";

/// Seconds without a lease renewal before a node is no longer Ready (set once at server start).
static GRACE: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(40);

pub fn set_grace(secs: i64) {
    GRACE.store(secs, std::sync::atomic::Ordering::Relaxed);
}

pub fn grace() -> i64 {
    GRACE.load(std::sync::atomic::Ordering::Relaxed)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Taint {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub effect: String,
}

/// Parses `key=value:Effect` or `key:Effect`.
pub fn parse_taint(s: &str) -> Result<Taint, String> {
    let (kv, effect) = s.rsplit_once(':').ok_or_else(|| format!("invalid taint {s:?}: missing effect"))?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(format!("invalid taint {s:?}: effect must be NoSchedule, PreferNoSchedule or NoExecute"));
    }
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k.to_string(), Some(v.to_string())),
        None => (kv.to_string(), None),
    };
    if key.is_empty() {
        return Err(format!("invalid taint {s:?}: empty key"));
    }
    Ok(Taint { key, value, effect: effect.to_string() })
}

/// What a node (agent or server) tells the server when it registers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registration {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub internal_ips: Vec<String>,
    pub external_ips: Vec<String>,
    pub hostname: String,
    pub version: String,
    pub os_image: String,
    pub kernel_version: String,
    pub machine_id: String,
    pub boot_id: String,
    pub cpus: usize,
    pub memory_kib: u64,
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default()
}

pub fn hostname() -> String {
    let h = read_trim("/proc/sys/kernel/hostname");
    if h.is_empty() {
        "localhost".into()
    } else {
        h.to_lowercase()
    }
}

pub fn os_image() -> String {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("PRETTY_NAME=") {
            return v.trim_matches('"').to_string();
        }
    }
    "Linux".into()
}

fn memory_kib() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

impl Registration {
    pub fn local(
        name: &str,
        mut labels: BTreeMap<String, String>,
        node_labels: &[String],
        taints: &[String],
        internal_ips: Vec<String>,
        external_ips: Vec<String>,
    ) -> Result<Registration, String> {
        let host = hostname();
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "arm" => "arm",
            "s390x" => "s390x",
            other => other,
        };
        for (k, v) in [
            ("beta.kubernetes.io/arch", arch),
            ("beta.kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", arch),
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/hostname", name),
            ("node.kubernetes.io/instance-type", "k3s"),
        ] {
            labels.insert(k.into(), v.into());
        }
        for l in node_labels {
            let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
            if k.is_empty() {
                return Err(format!("invalid node-label {l:?}"));
            }
            labels.insert(k.to_string(), v.to_string());
        }
        let taints = taints.iter().map(|t| parse_taint(t)).collect::<Result<Vec<_>, _>>()?;
        Ok(Registration {
            name: name.to_string(),
            labels,
            taints,
            internal_ips,
            external_ips,
            hostname: host,
            version: crate::version::version().to_string(),
            os_image: os_image(),
            kernel_version: read_trim("/proc/sys/kernel/osrelease"),
            machine_id: read_trim("/etc/machine-id"),
            boot_id: read_trim("/proc/sys/kernel/random/boot_id"),
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            memory_kib: memory_kib(),
        })
    }
}

/// `10.42.0.0/16` + index -> `10.42.<index>.0/24`
fn pod_cidr(cluster_cidr: &str, index: u32) -> Option<String> {
    let first = cluster_cidr.split(',').next()?.trim();
    let (addr, _) = first.split_once('/')?;
    let ip: std::net::Ipv4Addr = addr.parse().ok()?;
    let o = ip.octets();
    if index > 255 {
        return None;
    }
    Some(format!("{}.{}.{}.0/24", o[0], o[1], index))
}

/// Creates or updates the Node object for a registration, and renews its lease.
pub fn register(kine: &Datastore, reg: &Registration, cluster_cidr: &str) -> Result<Value> {
    let key = format!("{NODE_PREFIX}{}", reg.name);
    let existing: Option<Value> = kine.get(&key)?.and_then(|r| serde_json::from_slice(&r.value).ok());
    let now = timefmt::rfc3339(timefmt::now_secs());
    let unschedulable = existing.as_ref().map(|n| n["spec"]["unschedulable"].clone()).unwrap_or(Value::Null);
    let (uid, created, mut labels, pod_cidr_v, conditions) = match &existing {
        Some(n) => (
            n["metadata"]["uid"].as_str().unwrap_or_default().to_string(),
            n["metadata"]["creationTimestamp"].as_str().unwrap_or(&now).to_string(),
            serde_json::from_value::<BTreeMap<String, String>>(n["metadata"]["labels"].clone()).unwrap_or_default(),
            n["spec"]["podCIDR"].as_str().map(String::from),
            n["status"]["conditions"].clone(),
        ),
        None => (crate::store::random_uid(), now.clone(), BTreeMap::new(), None, Value::Null),
    };
    labels.extend(reg.labels.clone());
    let pod_cidr_v = pod_cidr_v.or_else(|| {
        let used: Vec<String> = kine
            .list(NODE_PREFIX)
            .unwrap_or_default()
            .iter()
            .filter_map(|r| serde_json::from_slice::<Value>(&r.value).ok())
            .filter_map(|n| n["spec"]["podCIDR"].as_str().map(String::from))
            .collect();
        (0..256).filter_map(|i| pod_cidr(cluster_cidr, i)).find(|c| !used.contains(c))
    });
    let mut addresses = Vec::new();
    for ip in &reg.internal_ips {
        addresses.push(json!({"type": "InternalIP", "address": ip}));
    }
    for ip in &reg.external_ips {
        addresses.push(json!({"type": "ExternalIP", "address": ip}));
    }
    addresses.push(json!({"type": "Hostname", "address": reg.hostname}));
    let mem = format!("{}Ki", reg.memory_kib);
    let mut spec = json!({"providerID": format!("k3s://{}", reg.name)});
    if let Some(c) = &pod_cidr_v {
        spec["podCIDR"] = json!(c);
        spec["podCIDRs"] = json!([c]);
    }
    if !reg.taints.is_empty() {
        spec["taints"] = serde_json::to_value(&reg.taints)?;
    }
    if unschedulable == true {
        // A cordon (kubectl cordon) outlives restarts, as with a real kubelet.
        spec["unschedulable"] = json!(true);
    }
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": reg.name,
            "uid": uid,
            "creationTimestamp": created,
            "labels": labels,
            "annotations": {
                "k3s.io/hostname": reg.hostname,
                "k3s.io/internal-ip": reg.internal_ips.join(","),
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": spec,
        "status": {
            "addresses": addresses,
            "allocatable": {"cpu": reg.cpus.to_string(), "ephemeral-storage": "100Gi", "memory": mem, "pods": "110"},
            "capacity": {"cpu": reg.cpus.to_string(), "ephemeral-storage": "100Gi", "memory": mem, "pods": "110"},
            "conditions": if conditions.is_array() { conditions } else { json!([]) },
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "architecture": reg.labels.get("kubernetes.io/arch").cloned().unwrap_or_else(|| "amd64".into()),
                "bootID": reg.boot_id,
                "containerRuntimeVersion": CONTAINERD_VERSION,
                "kernelVersion": reg.kernel_version,
                "kubeProxyVersion": reg.version,
                "kubeletVersion": reg.version,
                "machineID": reg.machine_id,
                "operatingSystem": "linux",
                "osImage": reg.os_image,
                "systemUUID": reg.machine_id,
            },
        },
    });
    kine.put(&key, &serde_json::to_vec(&node)?)?;
    renew_lease(kine, &reg.name)?;
    Ok(node)
}

/// Renews the node's Lease (kube-node-lease), as the kubelet does. False if the node is unknown.
pub fn renew_lease(kine: &Datastore, name: &str) -> Result<bool> {
    if kine.get(&format!("{NODE_PREFIX}{name}"))?.is_none() {
        return Ok(false);
    }
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": 40,
            "renewTime": timefmt::rfc3339_micros(timefmt::now_micros()),
        },
    });
    kine.put(&format!("{LEASE_PREFIX}{name}"), &serde_json::to_vec(&lease)?)?;
    Ok(true)
}

/// The Node as the API shows it: Ready from the lease (Unknown after `grace` seconds without
/// renewal, with the unreachable taints the node lifecycle controller adds), resourceVersion.
pub fn view(kine: &Datastore, row: &crate::datastore::Row, grace: i64) -> Option<Value> {
    let mut node: Value = serde_json::from_slice(&row.value).ok()?;
    let name = node["metadata"]["name"].as_str()?.to_string();
    node["metadata"]["resourceVersion"] = json!(row.id.to_string());
    let now = timefmt::now_secs();
    let lease_time = kine
        .get(&format!("{LEASE_PREFIX}{name}"))
        .ok()
        .flatten()
        .and_then(|l| serde_json::from_slice::<Value>(&l.value).ok())
        .and_then(|l| l["spec"]["renewTime"].as_str().and_then(timefmt::parse_rfc3339));
    let mut conditions: Vec<Value> = node["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let heartbeat = lease_time;
    let created = node["metadata"]["creationTimestamp"].as_str().and_then(timefmt::parse_rfc3339).unwrap_or(now);
    let ready = heartbeat.map(|h| now - h <= grace).unwrap_or(false);
    let hb = timefmt::rfc3339(heartbeat.unwrap_or(created));
    let ready_cond = if ready {
        json!({"type": "Ready", "status": "True", "reason": "KubeletReady",
               "message": "kubelet is posting ready status",
               "lastHeartbeatTime": hb, "lastTransitionTime": timefmt::rfc3339(created)})
    } else {
        json!({"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
               "message": "Kubelet stopped posting node status.",
               "lastHeartbeatTime": hb,
               "lastTransitionTime": timefmt::rfc3339(heartbeat.map(|h| h + grace).unwrap_or(created))})
    };
    conditions.retain(|c| c["type"] != "Ready");
    for (t, reason, msg) in [
        ("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    ] {
        if !conditions.iter().any(|c| c["type"] == t) {
            conditions.push(json!({"type": t, "status": if ready { "False" } else { "Unknown" }, "reason": reason,
                "message": msg, "lastHeartbeatTime": hb, "lastTransitionTime": timefmt::rfc3339(created)}));
        }
    }
    conditions.push(ready_cond);
    node["status"]["conditions"] = json!(conditions);
    if !ready {
        let mut taints = node["spec"]["taints"].as_array().cloned().unwrap_or_default();
        for effect in ["NoSchedule", "NoExecute"] {
            let t = json!({"key": "node.kubernetes.io/unreachable", "effect": effect, "timeAdded": hb});
            if !taints.iter().any(|x| x["key"] == t["key"] && x["effect"] == t["effect"]) {
                taints.push(t);
            }
        }
        node["spec"]["taints"] = json!(taints);
    }
    Some(node)
}

#[cfg(test)]
pub fn list_view(kine: &Datastore, grace: i64) -> Result<Value> {
    let items: Vec<Value> = kine.list(NODE_PREFIX)?.iter().filter_map(|r| view(kine, r, grace)).collect();
    let rev = kine.current_revision().unwrap_or(0);
    Ok(
        json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": rev.to_string()}, "items": items}),
    )
}

#[cfg(test)]
pub fn get_view(kine: &Datastore, name: &str, grace: i64) -> Result<Option<Value>> {
    Ok(kine.get(&format!("{NODE_PREFIX}{name}"))?.and_then(|r| view(kine, &r, grace)))
}

pub fn delete(kine: &Datastore, name: &str) -> Result<bool> {
    let existed = kine.delete(&format!("{NODE_PREFIX}{name}"))?;
    kine.delete(&format!("{LEASE_PREFIX}{name}"))?;
    Ok(existed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints() {
        assert_eq!(
            parse_taint("a=b:NoSchedule").unwrap(),
            Taint { key: "a".into(), value: Some("b".into()), effect: "NoSchedule".into() }
        );
        assert_eq!(parse_taint("a:NoExecute").unwrap().value, None);
        assert!(parse_taint("a=b").is_err());
        assert!(parse_taint("a=b:Sometimes").is_err());
    }

    #[test]
    fn ready_follows_lease() {
        let dir = tempfile::tempdir().unwrap();
        let k = Datastore::open_sqlite(&dir.path().join("s.db")).unwrap();
        let mut labels = BTreeMap::new();
        labels.insert("node-role.kubernetes.io/control-plane".to_string(), "true".to_string());
        let reg = Registration::local(
            "n1",
            labels,
            &["x=y".into()],
            &["t=v:NoSchedule".into()],
            vec!["10.0.0.1".into()],
            vec![],
        )
        .unwrap();
        register(&k, &reg, "10.42.0.0/16").unwrap();
        let v = get_view(&k, "n1", 40).unwrap().unwrap();
        let ready =
            v["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
        assert_eq!(ready["status"], "True");
        assert_eq!(v["metadata"]["labels"]["x"], "y");
        assert_eq!(v["spec"]["podCIDR"], "10.42.0.0/24");
        assert_eq!(v["spec"]["taints"][0]["key"], "t");
        let v = get_view(&k, "n1", -1).unwrap().unwrap();
        let ready =
            v["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
        assert_eq!(ready["status"], "Unknown");
        let reg2 = Registration::local("n2", BTreeMap::new(), &[], &[], vec![], vec![]).unwrap();
        register(&k, &reg2, "10.42.0.0/16").unwrap();
        assert_eq!(get_view(&k, "n2", 40).unwrap().unwrap()["spec"]["podCIDR"], "10.42.1.0/24");
        assert!(delete(&k, "n2").unwrap());
        assert!(!renew_lease(&k, "n2").unwrap());
        assert_eq!(list_view(&k, 40).unwrap()["items"].as_array().unwrap().len(), 1);
    }
}
