//! The Kubernetes API of the stand-in, enough for the real kubectl: discovery (`/api`,
//! `/api/v1`, `/apis`, `/apis/<group>[/<version>]`, `/openapi/v2`), and GET/LIST/POST/PUT/
//! PATCH/DELETE on every kind of `resources` (label and field selectors on lists, server-side
//! Tables when the client asks for them, `dryRun`), with Kubernetes `Status` errors.
//!
//! `/openapi/v2` answers an OpenAPI document without definitions (empty protobuf for kubectl,
//! which then skips its client-side schema validation; JSON for JSON clients); `/openapi/v3` is
//! 404, which kubectl treats as "use v2". Watches are not served (405).

use crate::datastore::Datastore;
use crate::patch::PatchType;
use crate::resources::{self, Resource};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{self, ApiError, ApiResult};
use serde_json::{json, Value};

pub struct Answer {
    pub code: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

fn ok_json(v: &Value) -> Answer {
    Answer { code: 200, content_type: "application/json", body: serde_json::to_vec(v).unwrap_or_default() }
}

fn created(v: &Value) -> Answer {
    Answer { code: 201, content_type: "application/json", body: serde_json::to_vec(v).unwrap_or_default() }
}

pub fn error(e: &ApiError) -> Answer {
    Answer { code: e.code, content_type: "application/json", body: serde_json::to_vec(&e.status()).unwrap_or_default() }
}

const VERBS: &[&str] = &["create", "delete", "get", "list", "patch", "update"];

fn resource_entry(r: &Resource) -> Value {
    let mut v = json!({"name": r.plural, "singularName": r.kind.to_lowercase(), "namespaced": r.namespaced,
                       "kind": r.kind, "verbs": VERBS});
    if !r.short_names.is_empty() {
        v["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        v["categories"] = json!(r.categories);
    }
    v
}

fn resource_list(kine: &Datastore, group: &str, version: &str) -> Option<Value> {
    let all: Vec<Resource> =
        resources::all(kine).into_iter().filter(|r| r.group == group && r.version == version).collect();
    if all.is_empty() {
        return None;
    }
    let mut list: Vec<Value> = vec![];
    for r in &all {
        list.push(resource_entry(r));
        if matches!(r.kind.as_str(), "Node" | "Namespace") {
            list.push(json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": false,
                             "kind": r.kind, "verbs": ["get", "patch", "update"]}));
        }
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}))
}

fn group_entry(kine: &Datastore, group: &str) -> Option<Value> {
    let mut versions: Vec<String> =
        resources::all(kine).into_iter().filter(|r| r.group == group).map(|r| r.version).collect();
    versions.dedup();
    let first = versions.first()?.clone();
    Some(json!({"name": group,
                "versions": versions.iter().map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v})).collect::<Vec<_>>(),
                "preferredVersion": {"groupVersion": format!("{group}/{first}"), "version": first}}))
}

fn group_list(kine: &Datastore) -> Value {
    let mut groups: Vec<String> = vec![];
    for r in resources::all(kine) {
        if !r.group.is_empty() && !groups.contains(&r.group) {
            groups.push(r.group);
        }
    }
    let entries: Vec<Value> = groups.iter().filter_map(|g| group_entry(kine, g)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": entries})
}

/// Parsed query of a request (percent-decoded).
#[derive(Default)]
struct Query {
    label_selector: String,
    field_selector: String,
    watch: bool,
    dry_run: bool,
}

fn parse_query(q: &str) -> Query {
    let mut out = Query::default();
    for (k, v) in form_urlencoded::parse(q.as_bytes()) {
        match k.as_ref() {
            "labelSelector" => out.label_selector = v.into_owned(),
            "fieldSelector" => out.field_selector = v.into_owned(),
            "watch" => out.watch = v == "true" || v == "1",
            "dryRun" => out.dry_run = !v.is_empty(),
            _ => {}
        }
    }
    out
}

/// The parts of a resource path: `[/namespaces/<ns>]/<plural>[/<name>[/<subresource>]]`.
struct Target<'a> {
    namespace: Option<&'a str>,
    plural: &'a str,
    name: Option<&'a str>,
    sub: Option<&'a str>,
}

fn target<'a>(rest: &[&'a str]) -> Option<Target<'a>> {
    match rest {
        [p] => Some(Target { namespace: None, plural: p, name: None, sub: None }),
        ["namespaces", ns, p] if !matches!(*p, "status" | "finalize") => {
            Some(Target { namespace: Some(ns), plural: p, name: None, sub: None })
        }
        ["namespaces", ns, p, n] => Some(Target { namespace: Some(ns), plural: p, name: Some(n), sub: None }),
        ["namespaces", ns, p, n, sub] => Some(Target { namespace: Some(ns), plural: p, name: Some(n), sub: Some(sub) }),
        [p, n] => Some(Target { namespace: None, plural: p, name: Some(n), sub: None }),
        [p, n, sub] => Some(Target { namespace: None, plural: p, name: Some(n), sub: Some(sub) }),
        _ => None,
    }
}

fn wants_table(accept: &str) -> bool {
    accept.split(',').next().map(|first| first.contains("as=Table")).unwrap_or(false)
}

fn not_found_path() -> Answer {
    error(&ApiError {
        code: 404,
        reason: "NotFound",
        message: "the server could not find the requested resource".into(),
        details: Value::Null,
    })
}

/// One request under /api, /apis or /openapi. `host` is the Host the client used (discovery
/// tells clients where the apiserver is).
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub accept: &'a str,
    pub content_type: &'a str,
    pub body: &'a [u8],
    pub host: &'a str,
}

pub fn handle(kine: &Datastore, req: &Request) -> Answer {
    let (method, path, accept, host) = (req.method, req.path, req.accept, req.host);
    let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    match (method, segs.as_slice()) {
        ("GET", ["api"]) => {
            return ok_json(&json!({"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}]}))
        }
        ("GET", ["apis"]) => return ok_json(&group_list(kine)),
        ("GET", ["api", v]) => return resource_list(kine, "", v).map(|l| ok_json(&l)).unwrap_or_else(not_found_path),
        ("GET", ["apis", g]) => {
            return group_entry(kine, g)
                .map(|e| {
                    let mut e = e;
                    e["kind"] = json!("APIGroup");
                    e["apiVersion"] = json!("v1");
                    ok_json(&e)
                })
                .unwrap_or_else(not_found_path)
        }
        ("GET", ["apis", g, v]) => {
            return resource_list(kine, g, v).map(|l| ok_json(&l)).unwrap_or_else(not_found_path)
        }
        ("GET", ["openapi", "v2"]) => return openapi_v2(accept),
        _ => {}
    }
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api", v, rest @ ..] if !rest.is_empty() => ("", v, rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (g, v, rest),
        _ => return not_found_path(),
    };
    let Some(t) = target(rest) else { return not_found_path() };
    let Some(res) = resources::by_plural(kine, group, version, t.plural) else { return not_found_path() };
    if !res.namespaced && t.namespace.is_some() {
        return not_found_path();
    }
    let q = parse_query(req.query);
    match serve(kine, &res, &t, req, &q) {
        Ok(a) => a,
        Err(e) => error(&e),
    }
}

fn body_json(body: &[u8]) -> ApiResult<Value> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json ({e})"
        ))
    })
}

fn serve(kine: &Datastore, res: &Resource, t: &Target, req: &Request, q: &Query) -> ApiResult<Answer> {
    let (method, accept, content_type, body) = (req.method, req.accept, req.content_type, req.body);
    if q.watch {
        return Err(ApiError::method_not_allowed("watch is not supported by the k3s stand-in"));
    }
    if let Some(sub) = t.sub {
        if sub != "status" {
            return Err(ApiError {
                code: 404,
                reason: "NotFound",
                message: format!("the server could not find the requested resource ({sub})"),
                details: Value::Null,
            });
        }
    }
    let ns = if res.namespaced { t.namespace } else { None };
    match (method, t.name) {
        ("GET", None) => {
            let labels = LabelSelector::parse(&q.label_selector).map_err(ApiError::bad_request)?;
            let fields = FieldSelector::parse(&q.field_selector).map_err(ApiError::bad_request)?;
            let (items, rev) = store::list(kine, res, ns, &labels, &fields)?;
            if wants_table(accept) {
                return Ok(ok_json(&crate::tables::table(res, &items, &rev.to_string())));
            }
            Ok(ok_json(&json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(),
                                "metadata": {"resourceVersion": rev.to_string()}, "items": items})))
        }
        ("POST", None) => {
            let obj = body_json(body)?;
            let ns = if res.namespaced { Some(ns.unwrap_or("default")) } else { None };
            Ok(created(&store::create(kine, res, ns, obj, q.dry_run)?))
        }
        ("GET", Some(name)) => {
            let obj = store::get(kine, res, ns, name)?;
            if wants_table(accept) {
                let rv = obj["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string();
                return Ok(ok_json(&crate::tables::table(res, &[obj], &rv)));
            }
            Ok(ok_json(&obj))
        }
        ("PUT", Some(name)) => Ok(ok_json(&store::update(kine, res, ns, name, body_json(body)?, q.dry_run)?)),
        ("PATCH", Some(name)) => {
            let pt = PatchType::from_content_type(content_type).ok_or_else(|| ApiError {
                code: 415,
                reason: "UnsupportedMediaType",
                message: format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?})"),
                details: Value::Null,
            })?;
            Ok(ok_json(&store::patch(kine, res, ns, name, body, pt, q.dry_run)?))
        }
        ("DELETE", Some(name)) => Ok(ok_json(&store::delete(kine, res, ns, name, q.dry_run)?)),
        (m, _) => Err(ApiError::method_not_allowed(format!(
            "{m} is not supported on {} by the k3s stand-in",
            res.qualified()
        ))),
    }
}

/// An OpenAPI v2 document without definitions. kubectl asks for the protobuf form
/// (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`): an empty message is a valid
/// empty `openapi_v2.Document`, so kubectl finds no schema and skips client-side validation.
fn openapi_v2(accept: &str) -> Answer {
    if accept.contains("protobuf") {
        // The apiserver labels this octet-stream (Go's MIME parser rejects the '@' of the
        // requested type).
        return Answer { code: 200, content_type: "application/octet-stream", body: vec![] };
    }
    ok_json(&json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": crate::version::version()},
                    "paths": {}, "definitions": {}}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_namespace_resource_and_subresource() {
        let t = target(&["namespaces", "kube-system", "secrets", "x"]).unwrap();
        assert_eq!((t.namespace, t.plural, t.name, t.sub), (Some("kube-system"), "secrets", Some("x"), None));
        let t = target(&["nodes", "n1", "status"]).unwrap();
        assert_eq!((t.namespace, t.plural, t.name, t.sub), (None, "nodes", Some("n1"), Some("status")));
        let t = target(&["namespaces", "team", "status"]).unwrap();
        assert_eq!((t.plural, t.name, t.sub), ("namespaces", Some("team"), Some("status")));
        let t = target(&["namespaces", "team"]).unwrap();
        assert_eq!((t.plural, t.name), ("namespaces", Some("team")));
        assert!(wants_table("application/json;as=Table;v=v1;g=meta.k8s.io,application/json"));
        assert!(!wants_table("application/json"));
    }
}
