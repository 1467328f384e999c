//! Server-side printing (`meta.k8s.io/v1` Table): what `kubectl get` shows comes from the
//! server since kubectl 1.16, so the columns here are the apiserver's for each kind (node:
//! NAME STATUS ROLES AGE VERSION, wide adds the addresses, OS image, kernel and runtime; Addon:
//! the CRD's SOURCE and CHECKSUM columns). Kinds without printers of their own get NAME and AGE.
//! Priority-1 columns are the ones `-o wide` adds.

use crate::resources::Resource;
use crate::timefmt;
use serde_json::{json, Value};

struct Col {
    name: &'static str,
    priority: u8,
    cell: fn(&Value, i64) -> Value,
}

fn s(v: &Value) -> Value {
    json!(v.as_str().unwrap_or_default())
}

fn age(o: &Value, now: i64) -> Value {
    match o["metadata"]["creationTimestamp"].as_str().and_then(timefmt::parse_rfc3339) {
        Some(t) => json!(timefmt::human_duration(now - t)),
        None => json!("<unknown>"),
    }
}

fn name(o: &Value, _: i64) -> Value {
    s(&o["metadata"]["name"])
}

fn node_status(n: &Value, _: i64) -> Value {
    let ready = n["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .map(|c| c["status"] == "True")
        .unwrap_or(false);
    let mut st = if ready { "Ready".to_string() } else { "NotReady".to_string() };
    if n["spec"]["unschedulable"] == true {
        st.push_str(",SchedulingDisabled");
    }
    json!(st)
}

fn node_roles(n: &Value, _: i64) -> Value {
    let mut r: Vec<String> = n["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .filter(|k| !k.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    r.sort();
    json!(if r.is_empty() { "<none>".to_string() } else { r.join(",") })
}

fn node_address(n: &Value, kind: &str) -> Value {
    json!(n["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["type"] == kind))
        .and_then(|a| a["address"].as_str())
        .unwrap_or("<none>"))
}

fn data_count(o: &Value, _: i64) -> Value {
    let n = |f: &str| o[f].as_object().map(|m| m.len()).unwrap_or(0);
    json!(n("data") + n("binaryData"))
}

fn svc_ports(o: &Value, _: i64) -> Value {
    let ports: Vec<String> = o["spec"]["ports"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let mut x = p["port"].to_string();
                    if let Some(np) = p["nodePort"].as_i64() {
                        x.push_str(&format!(":{np}"));
                    }
                    format!("{x}/{}", p["protocol"].as_str().unwrap_or("TCP"))
                })
                .collect()
        })
        .unwrap_or_default();
    json!(if ports.is_empty() { "<none>".to_string() } else { ports.join(",") })
}

fn svc_external(o: &Value, _: i64) -> Value {
    let ips: Vec<String> = o["spec"]["externalIPs"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
        .unwrap_or_default();
    json!(if ips.is_empty() { "<none>".to_string() } else { ips.join(",") })
}

fn svc_selector(o: &Value, _: i64) -> Value {
    let sel: Vec<String> = o["spec"]["selector"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect())
        .unwrap_or_default();
    json!(if sel.is_empty() { "<none>".to_string() } else { sel.join(",") })
}

fn event_last_seen(o: &Value, now: i64) -> Value {
    let t = ["lastTimestamp", "eventTime", "firstTimestamp"]
        .iter()
        .find_map(|f| o[*f].as_str().and_then(timefmt::parse_rfc3339))
        .or_else(|| o["metadata"]["creationTimestamp"].as_str().and_then(timefmt::parse_rfc3339));
    json!(t.map(|t| timefmt::human_duration(now - t)).unwrap_or_else(|| "<unknown>".into()))
}

fn event_object(o: &Value, _: i64) -> Value {
    let io = &o["involvedObject"];
    json!(format!(
        "{}/{}",
        io["kind"].as_str().unwrap_or_default().to_lowercase(),
        io["name"].as_str().unwrap_or_default()
    ))
}

fn columns(kind: &str) -> Vec<Col> {
    let c = |name, priority, cell| Col { name, priority, cell };
    match kind {
        "Node" => vec![
            c("Name", 0, name),
            c("Status", 0, node_status),
            c("Roles", 0, node_roles),
            c("Age", 0, age),
            c("Version", 0, |n, _| s(&n["status"]["nodeInfo"]["kubeletVersion"])),
            c("Internal-IP", 1, |n, _| node_address(n, "InternalIP")),
            c("External-IP", 1, |n, _| node_address(n, "ExternalIP")),
            c("OS-Image", 1, |n, _| s(&n["status"]["nodeInfo"]["osImage"])),
            c("Kernel-Version", 1, |n, _| s(&n["status"]["nodeInfo"]["kernelVersion"])),
            c("Container-Runtime", 1, |n, _| s(&n["status"]["nodeInfo"]["containerRuntimeVersion"])),
        ],
        "Namespace" => vec![c("Name", 0, name), c("Status", 0, |o, _| s(&o["status"]["phase"])), c("Age", 0, age)],
        "ConfigMap" => vec![c("Name", 0, name), c("Data", 0, data_count), c("Age", 0, age)],
        "Secret" => {
            vec![c("Name", 0, name), c("Type", 0, |o, _| s(&o["type"])), c("Data", 0, data_count), c("Age", 0, age)]
        }
        "Service" => vec![
            c("Name", 0, name),
            c("Type", 0, |o, _| s(&o["spec"]["type"])),
            c("Cluster-IP", 0, |o, _| s(&o["spec"]["clusterIP"])),
            c("External-IP", 0, svc_external),
            c("Port(s)", 0, svc_ports),
            c("Age", 0, age),
            c("Selector", 1, svc_selector),
        ],
        "Event" => vec![
            c("Last Seen", 0, event_last_seen),
            c("Type", 0, |o, _| s(&o["type"])),
            c("Reason", 0, |o, _| s(&o["reason"])),
            c("Object", 0, event_object),
            c("Message", 0, |o, _| s(&o["message"])),
        ],
        "Pod" => vec![
            c("Name", 0, name),
            c("Ready", 0, |o, _| {
                let all = o["spec"]["containers"].as_array().map(|a| a.len()).unwrap_or(0);
                let ready = o["status"]["containerStatuses"]
                    .as_array()
                    .map(|a| a.iter().filter(|x| x["ready"] == true).count())
                    .unwrap_or(0);
                json!(format!("{ready}/{all}"))
            }),
            c("Status", 0, |o, _| json!(o["status"]["phase"].as_str().unwrap_or("Pending"))),
            c("Restarts", 0, |_, _| json!(0)),
            c("Age", 0, age),
        ],
        "Lease" => vec![c("Name", 0, name), c("Holder", 0, |o, _| s(&o["spec"]["holderIdentity"])), c("Age", 0, age)],
        "NetworkPolicy" => vec![
            c("Name", 0, name),
            c("Pod-Selector", 0, |o, _| {
                let sel: Vec<String> = o["spec"]["podSelector"]["matchLabels"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect())
                    .unwrap_or_default();
                json!(if sel.is_empty() { "<none>".to_string() } else { sel.join(",") })
            }),
            c("Age", 0, age),
        ],
        "StorageClass" => vec![
            c("Name", 0, |o, _| {
                let n = o["metadata"]["name"].as_str().unwrap_or_default();
                let default = o["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true";
                json!(if default { format!("{n} (default)") } else { n.to_string() })
            }),
            c("Provisioner", 0, |o, _| s(&o["provisioner"])),
            c("ReclaimPolicy", 0, |o, _| json!(o["reclaimPolicy"].as_str().unwrap_or("Delete"))),
            c("VolumeBindingMode", 0, |o, _| json!(o["volumeBindingMode"].as_str().unwrap_or("Immediate"))),
            c("AllowVolumeExpansion", 0, |o, _| {
                json!(o["allowVolumeExpansion"].as_bool().unwrap_or(false).to_string())
            }),
            c("Age", 0, age),
        ],
        _ => vec![c("Name", 0, name), c("Age", 0, age)],
    }
}

/// Reads a CRD printer column's JSON path (`.spec.source`; dotted paths only).
fn json_path(o: &Value, path: &str) -> Value {
    let mut cur = o;
    for part in path.trim_start_matches('.').split('.') {
        cur = &cur[part];
    }
    match cur {
        Value::Null => json!(""),
        Value::String(_) | Value::Number(_) | Value::Bool(_) => cur.clone(),
        other => json!(other.to_string()),
    }
}

/// The Table of `items`, with each row's object metadata (kubectl uses it for --show-labels).
pub fn table(res: &Resource, items: &[Value], resource_version: &str) -> Value {
    let now = timefmt::now_secs();
    let (defs, rows): (Vec<Value>, Vec<Value>) = if !res.printer_columns.is_empty() {
        let mut defs = vec![
            json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
        ];
        defs.extend(
            res.printer_columns
                .iter()
                .map(|(n, _)| json!({"name": n, "type": "string", "format": "", "description": "", "priority": 0})),
        );
        let rows = items
            .iter()
            .map(|o| {
                let mut cells = vec![name(o, now)];
                cells.extend(res.printer_columns.iter().map(|(_, p)| json_path(o, p)));
                row(o, cells)
            })
            .collect();
        (defs, rows)
    } else {
        let cols = columns(&res.kind);
        let defs = cols
            .iter()
            .map(|c| {
                json!({"name": c.name, "type": "string", "format": if c.name == "Name" { "name" } else { "" },
                       "description": "", "priority": c.priority})
            })
            .collect();
        let rows = items.iter().map(|o| row(o, cols.iter().map(|c| (c.cell)(o, now)).collect())).collect();
        (defs, rows)
    };
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
           "columnDefinitions": defs, "rows": rows})
}

fn row(o: &Value, cells: Vec<Value>) -> Value {
    json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}})
}
