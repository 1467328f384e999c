//! PATCH bodies as the apiserver takes them: JSON merge patch (RFC 7396) and JSON patch
//! (RFC 6902) through the json-patch crate, and strategic merge patch for the kinds served.
//!
//! Strategic merge: maps merge recursively, `null` deletes a key, lists are replaced unless the
//! field has a merge key in Kubernetes' API types; those that do here: conditions and addresses
//! (`type`), containers, volumes, env and the like (`name`), service ports (`port`), container
//! ports (`containerPort`), ownerReferences (`uid`). Directives kubectl and client-go send are
//! understood: `$patch: replace|delete`, `$retainKeys`, `$setElementOrder/<field>`,
//! `$deleteFromPrimitiveList/<field>`. Anything else in a list is a full replacement, which is
//! what the apiserver does for lists without a patch strategy.

use serde_json::{Map, Value};

pub enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" => Some(PatchType::Apply),
            _ => None,
        }
    }
}

/// Applies `patch` to `target`. Err is the message of a 400/422 answer.
pub fn apply(target: &mut Value, patch_body: &[u8], pt: PatchType) -> Result<(), String> {
    match pt {
        PatchType::Json => {
            let ops: json_patch::Patch =
                serde_json::from_slice(patch_body).map_err(|e| format!("invalid JSON patch: {e}"))?;
            json_patch::patch(target, &ops).map_err(|e| e.to_string())
        }
        PatchType::Merge => {
            let p: Value = serde_json::from_slice(patch_body).map_err(|e| format!("invalid merge patch: {e}"))?;
            json_patch::merge(target, &p);
            Ok(())
        }
        PatchType::Strategic => {
            let p: Value =
                serde_json::from_slice(patch_body).map_err(|e| format!("invalid strategic merge patch: {e}"))?;
            strategic(target, &p, &[]);
            Ok(())
        }
        PatchType::Apply => {
            Err("server-side apply is not supported by the k3s stand-in: use kubectl apply without --server-side"
                .into())
        }
    }
}

/// The merge key of the list at `path` (field names from the object root), if the Kubernetes
/// type declares `patchStrategy: merge` for it.
fn merge_key(path: &[String]) -> Option<&'static str> {
    let last = path.last()?.as_str();
    let parent = path.len().checked_sub(2).map(|i| path[i].as_str());
    Some(match last {
        "conditions" | "addresses" => "type",
        "containers" | "initContainers" | "ephemeralContainers" | "volumes" | "env" | "imagePullSecrets" => "name",
        "volumeMounts" => "mountPath",
        "ownerReferences" => "uid",
        "ports" if parent == Some("spec") => "port",
        "ports" => "containerPort",
        _ => return None,
    })
}

pub fn strategic(target: &mut Value, patch: &Value, path: &[String]) {
    let Some(pmap) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if pmap.get("$patch").and_then(|v| v.as_str()) == Some("replace") {
        let mut m = pmap.clone();
        m.remove("$patch");
        *target = Value::Object(m);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let retain: Option<Vec<String>> = pmap
        .get("$retainKeys")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect());
    let tmap = target.as_object_mut().expect("object");
    for (k, v) in pmap {
        if k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(list), Some(del)) = (tmap.get_mut(field).and_then(|l| l.as_array_mut()), v.as_array()) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if v.is_null() {
            tmap.remove(k);
            continue;
        }
        let mut sub = path.to_vec();
        sub.push(k.clone());
        match v {
            Value::Object(inner) if inner.get("$patch").and_then(|p| p.as_str()) == Some("delete") => {
                tmap.remove(k);
            }
            Value::Object(_) => {
                let slot = tmap.entry(k.clone()).or_insert(Value::Null);
                strategic(slot, v, &sub);
            }
            Value::Array(items) => match merge_key(&sub) {
                Some(key) => {
                    let slot = tmap.entry(k.clone()).or_insert(Value::Array(vec![]));
                    merge_list(slot, items, key, &sub);
                }
                None => {
                    tmap.insert(k.clone(), v.clone());
                }
            },
            _ => {
                tmap.insert(k.clone(), v.clone());
            }
        }
    }
    if let Some(keep) = retain {
        tmap.retain(|k, _| keep.contains(k));
    }
}

fn merge_list(slot: &mut Value, items: &[Value], key: &str, path: &[String]) {
    if items.iter().any(|i| i.get("$patch").and_then(|p| p.as_str()) == Some("replace")) {
        let kept: Vec<Value> =
            items.iter().filter(|i| i.get("$patch").and_then(|p| p.as_str()) != Some("replace")).cloned().collect();
        *slot = Value::Array(kept);
        return;
    }
    if !slot.is_array() {
        *slot = Value::Array(vec![]);
    }
    let list = slot.as_array_mut().expect("array");
    for item in items {
        let id = item.get(key).cloned().unwrap_or(Value::Null);
        let pos = list.iter().position(|x| x.get(key) == Some(&id) && !id.is_null());
        if item.get("$patch").and_then(|p| p.as_str()) == Some("delete") {
            if let Some(p) = pos {
                list.remove(p);
            }
            continue;
        }
        match pos {
            Some(p) => strategic(&mut list[p], item, path),
            None => {
                let mut fresh = Value::Object(Map::new());
                strategic(&mut fresh, item, path);
                list.push(fresh);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_merges_conditions_by_type_and_replaces_plain_lists() {
        let mut node = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "KernelDeadlock", "status": "False", "reason": "KernelHasNoDeadlock"}]},
            "spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]}});
        let patch = json!({"status": {"conditions": [{"type": "KernelDeadlock", "status": "True", "reason": "DockerHung"},
                                                      {"type": "K3nodeHealthy", "status": "True"}],
                                       "$setElementOrder/conditions": [{"type": "KernelDeadlock"}]},
                           "spec": {"taints": [{"key": "b", "effect": "NoExecute"}]}});
        apply(&mut node, &serde_json::to_vec(&patch).unwrap(), PatchType::Strategic).unwrap();
        let conds = node["status"]["conditions"].as_array().unwrap();
        assert_eq!(conds.len(), 3);
        assert_eq!(conds[0]["status"], "True");
        assert_eq!(conds[1], json!({"type": "KernelDeadlock", "status": "True", "reason": "DockerHung"}));
        assert_eq!(node["spec"]["taints"], json!([{"key": "b", "effect": "NoExecute"}]));
        assert!(node["status"].get("$setElementOrder/conditions").is_none());
    }

    #[test]
    fn nulls_and_directives_delete() {
        let mut cm = json!({"data": {"a": "1", "b": "2"}, "metadata": {"labels": {"x": "y"}}});
        strategic(&mut cm, &json!({"data": {"a": null, "c": "3"}, "metadata": {"labels": {"$patch": "delete"}}}), &[]);
        assert_eq!(cm, json!({"data": {"b": "2", "c": "3"}, "metadata": {}}));
        let mut svc = json!({"spec": {"ports": [{"port": 53, "name": "dns"}, {"port": 9153, "name": "metrics"}]}});
        strategic(&mut svc, &json!({"spec": {"ports": [{"port": 9153, "$patch": "delete"}]}}), &[]);
        assert_eq!(svc["spec"]["ports"], json!([{"port": 53, "name": "dns"}]));
    }

    #[test]
    fn merge_and_json_patches_follow_their_rfcs() {
        let mut cm = json!({"data": {"a": "1"}});
        apply(&mut cm, br#"{"data":{"a":null,"b":"2"}}"#, PatchType::Merge).unwrap();
        assert_eq!(cm, json!({"data": {"b": "2"}}));
        apply(&mut cm, br#"[{"op":"add","path":"/data/c","value":"3"}]"#, PatchType::Json).unwrap();
        assert_eq!(cm["data"]["c"], "3");
        assert!(apply(&mut cm, br#"[{"op":"remove","path":"/nope"}]"#, PatchType::Json).is_err());
    }
}
