//! `spec.k3s.registries`: what every node's /etc/rancher/k3s/registries.yaml says (k3s's
//! private registry configuration: mirrors, and per registry its credentials and TLS files).
//!
//! The block is written as k3s's own file is (the same keys: `mirrors.<name>.endpoint`,
//! `rewrite`, `configs.<name>.auth.username|password|auth|identity_token`,
//! `configs.<name>.tls.cert_file|key_file|ca_file|insecure_skip_verify`), so a registries.yaml
//! pastes in as it is. One addition: a credential may be `{fromEnv: NAME}`, read from the
//! operator's environment when the file is loaded, so that it lives in no file.
//!
//! Invariants: credentials are [`Secret`]s from here on (never serialized, shown or logged);
//! every problem is reported at its file:line:col before any host is touched; the rendered file
//! is deterministic (sorted keys), so an unchanged cluster file restarts nothing.

use std::collections::BTreeMap;

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::Node;
use serde::Serialize;
use serde_json::{json, Value};

use super::diagnostic::Sink;
use super::reader::{self, child, mapping, no_hook, sequence, Entry, Fields};
use crate::protocol::Secret;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Registries {
    pub mirrors: BTreeMap<String, Mirror>,
    pub configs: BTreeMap<String, RegistryConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Mirror {
    pub endpoint: Vec<String>,
    pub rewrite: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RegistryConfig {
    pub auth: Option<RegistryAuth>,
    pub tls: Option<RegistryTls>,
}

/// Credentials: serialized as their names only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RegistryAuth {
    pub username: Option<String>,
    #[serde(serialize_with = "redacted")]
    pub password: Option<Secret>,
    #[serde(serialize_with = "redacted")]
    pub auth: Option<Secret>,
    #[serde(serialize_with = "redacted")]
    pub identity_token: Option<Secret>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RegistryTls {
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub ca_file: Option<String>,
    pub insecure_skip_verify: bool,
}

fn redacted<S: serde::Serializer>(value: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_str("<redacted>"),
        None => s.serialize_none(),
    }
}

impl Registries {
    /// registries.yaml as k3s reads it, keys sorted, credentials in clear (the file is 0600).
    pub fn render(&self, cluster: &str) -> String {
        let mut mirrors = serde_json::Map::new();
        for (name, m) in &self.mirrors {
            let mut entry = serde_json::Map::new();
            entry.insert("endpoint".into(), json!(m.endpoint));
            if !m.rewrite.is_empty() {
                entry.insert("rewrite".into(), json!(m.rewrite));
            }
            mirrors.insert(name.clone(), Value::Object(entry));
        }
        let mut configs = serde_json::Map::new();
        for (name, c) in &self.configs {
            let mut entry = serde_json::Map::new();
            if let Some(a) = &c.auth {
                let mut auth = serde_json::Map::new();
                if let Some(u) = &a.username {
                    auth.insert("username".into(), json!(u));
                }
                for (key, value) in
                    [("password", &a.password), ("auth", &a.auth), ("identity_token", &a.identity_token)]
                {
                    if let Some(v) = value {
                        auth.insert(key.into(), json!(v.expose()));
                    }
                }
                entry.insert("auth".into(), Value::Object(auth));
            }
            if let Some(t) = &c.tls {
                let mut tls = serde_json::Map::new();
                for (key, value) in [("cert_file", &t.cert_file), ("key_file", &t.key_file), ("ca_file", &t.ca_file)] {
                    if let Some(v) = value {
                        tls.insert(key.into(), json!(v));
                    }
                }
                if t.insecure_skip_verify {
                    tls.insert("insecure_skip_verify".into(), json!(true));
                }
                entry.insert("tls".into(), Value::Object(tls));
            }
            configs.insert(name.clone(), Value::Object(entry));
        }
        let mut top = serde_json::Map::new();
        if !mirrors.is_empty() {
            top.insert("mirrors".into(), Value::Object(mirrors));
        }
        if !configs.is_empty() {
            top.insert("configs".into(), Value::Object(configs));
        }
        let body = serde_yaml_ng::to_string(&Value::Object(top)).expect("JSON values always render");
        format!("# Written by k3node from the cluster file of cluster {cluster}; edit that file, not this one.\n{body}")
    }
}

/// Reads `spec.k3s.registries`; `env` looks a variable up (the process environment, or a map in tests).
pub(crate) fn read(sink: &mut Sink, e: &Entry<'_>, env: &dyn Fn(&str) -> Option<String>) -> Option<Registries> {
    let map = mapping(sink, e, "with mirrors and/or configs, as in k3s's registries.yaml")?;
    let f = Fields::new(sink, map, &e.path, &["mirrors", "configs"], &no_hook);
    let mut out = Registries::default();
    if let Some(e) = f.get("mirrors") {
        if let Some(map) = mapping(sink, e, "of registry name: {endpoint: [...]}") {
            for entry in entries(map, &e.path) {
                if registry_name(sink, &entry, true) {
                    if let Some(m) = mirror(sink, &entry) {
                        out.mirrors.insert(entry.key.as_str().to_string(), m);
                    }
                }
            }
        }
    }
    if let Some(e) = f.get("configs") {
        if let Some(map) = mapping(sink, e, "of registry host: {auth: ..., tls: ...}") {
            for entry in entries(map, &e.path) {
                if registry_name(sink, &entry, true) {
                    if let Some(c) = config(sink, &entry, env) {
                        out.configs.insert(entry.key.as_str().to_string(), c);
                    }
                }
            }
        }
    }
    if f.get("mirrors").is_none() && f.get("configs").is_none() {
        sink.error(e.key_pos(), &e.path, "registries needs mirrors, configs or both").hint(
            "e.g. mirrors: {docker.io: {endpoint: [\"https://mirror.example:5000\"]}}; leave registries out for none",
        );
        return None;
    }
    Some(out)
}

fn entries<'n>(map: &'n MarkedMappingNode, path: &str) -> Vec<Entry<'n>> {
    map.iter().map(|(key, value)| Entry { key, value, path: child(path, key.as_str()) }).collect()
}

/// `docker.io`, `registry.example.com:5000`, `10.0.0.5:5000` or `*` (k3s's wildcard).
fn registry_name(sink: &mut Sink, e: &Entry<'_>, wildcard: bool) -> bool {
    let name = e.key.as_str();
    let problem = if name.contains("://") {
        Some(("a registry name has no scheme", format!("write `{}`", name.split("://").nth(1).unwrap_or(""))))
    } else if name == "*" && wildcard {
        None
    } else if name.is_empty() || name.contains(['/', ' ', '\t', '@']) {
        Some((
            "not a registry host name",
            "a host name, with a port if not the default: `registry.example.com:5000`".into(),
        ))
    } else {
        None
    };
    match problem {
        Some((message, hint)) => {
            sink.error(e.key_pos(), &e.path, format!("`{name}`: {message}")).hint(hint);
            false
        }
        None => true,
    }
}

fn mirror(sink: &mut Sink, e: &Entry<'_>) -> Option<Mirror> {
    let map = mapping(sink, e, "with endpoint and optionally rewrite")?;
    let f = Fields::new(sink, map, &e.path, &["endpoint", "rewrite"], &no_hook);
    let mut out = Mirror::default();
    if let Some(e) = f.get("endpoint") {
        if let Some(list) = sequence(sink, e, "of registry URLs") {
            for (i, node) in list.iter().enumerate() {
                let path = reader::index(&e.path, i);
                let at = super::diagnostic::Pos::of_node(node);
                let Some(s) = reader::scalar(sink, node, &path, at) else { continue };
                match super::syntax::base_url(s.as_str().trim()) {
                    Ok(url) => out.endpoint.push(url),
                    Err(p) => {
                        let d = sink.error(at, path, p.message);
                        if let Some(h) = p.hint {
                            d.hint(h);
                        }
                    }
                }
            }
        }
    }
    if let Some(e) = f.get("rewrite") {
        if let Some(map) = mapping(sink, e, "of regular expression: replacement") {
            for entry in entries(map, &e.path) {
                let pattern = entry.key.as_str();
                if let Err(problem) = rewrite_pattern(pattern) {
                    sink.error(entry.key_pos(), &entry.path, problem)
                        .hint("k3s compiles each rewrite key as a regular expression (Go's RE2 syntax); escape a literal `.`, `(` or `*` with `\\`");
                    continue;
                }
                if let Some(to) = reader::string(sink, &entry) {
                    out.rewrite.insert(pattern.to_string(), to);
                }
            }
        }
    }
    Some(out)
}

/// A `rewrite` key is a regular expression k3s compiles when it reads registries.yaml: one that
/// does not compile would reach the node and fail there (k3s refuses the whole file).
fn rewrite_pattern(pattern: &str) -> Result<(), String> {
    let (kind, span) = match regex_syntax::Parser::new().parse(pattern) {
        Ok(_) => return Ok(()),
        Err(regex_syntax::Error::Parse(e)) => (e.kind().to_string(), *e.span()),
        Err(regex_syntax::Error::Translate(e)) => (e.kind().to_string(), *e.span()),
        Err(e) => (e.to_string(), regex_syntax::ast::Span::splat(regex_syntax::ast::Position::new(0, 1, 1))),
    };
    let at = pattern.get(span.start.offset..).unwrap_or_default();
    let near = if at.is_empty() { String::new() } else { format!(", `{}`", at.chars().take(12).collect::<String>()) };
    Err(format!("`{pattern}` is not a regular expression: {kind} (at character {}{near})", span.start.column))
}

fn config(sink: &mut Sink, e: &Entry<'_>, env: &dyn Fn(&str) -> Option<String>) -> Option<RegistryConfig> {
    let map = mapping(sink, e, "with auth and/or tls")?;
    let f = Fields::new(sink, map, &e.path, &["auth", "tls"], &no_hook);
    let mut out = RegistryConfig::default();
    if let Some(e) = f.get("auth") {
        if let Some(map) = mapping(sink, e, "with username and password, auth, or identity_token") {
            let a = Fields::new(sink, map, &e.path, &["username", "password", "auth", "identity_token"], &no_hook);
            let mut auth = RegistryAuth {
                username: a.get("username").and_then(|e| credential(sink, e, env)).map(|s| s.expose().to_string()),
                password: a.get("password").and_then(|e| credential(sink, e, env)),
                auth: a.get("auth").and_then(|e| credential(sink, e, env)),
                identity_token: a.get("identity_token").and_then(|e| credential(sink, e, env)),
            };
            match (a.get("username"), a.get("password")) {
                (Some(_), None) if a.get("auth").is_none() && a.get("identity_token").is_none() => {
                    sink.error(e.key_pos(), &e.path, "a username needs its password")
                        .hint("password: {fromEnv: REGISTRY_PASSWORD} keeps it out of the file");
                }
                (None, Some(p)) => {
                    sink.error(p.key_pos(), &p.path, "a password needs its username");
                }
                (None, None) if a.get("auth").is_none() && a.get("identity_token").is_none() => {
                    sink.error(e.key_pos(), &e.path, "auth needs username and password, auth, or identity_token");
                    auth = RegistryAuth::default();
                }
                _ => {}
            }
            out.auth = Some(auth);
        }
    }
    if let Some(e) = f.get("tls") {
        if let Some(map) = mapping(sink, e, "with cert_file, key_file, ca_file, insecure_skip_verify") {
            let t = Fields::new(
                sink,
                map,
                &e.path,
                &["cert_file", "key_file", "ca_file", "insecure_skip_verify"],
                &no_hook,
            );
            let file = |sink: &mut Sink, name: &str| -> Option<String> {
                let e = t.get(name)?;
                let path = reader::string(sink, e)?;
                if !path.starts_with('/') {
                    sink.error(e.value_pos(), &e.path, format!("`{path}` is not an absolute path"))
                        .hint("a path on the nodes (k3s reads it there); put the file on every node first");
                    return None;
                }
                Some(path)
            };
            let mut tls = RegistryTls {
                cert_file: file(sink, "cert_file"),
                key_file: file(sink, "key_file"),
                ca_file: file(sink, "ca_file"),
                insecure_skip_verify: false,
            };
            if let Some(e) = t.get("insecure_skip_verify") {
                tls.insecure_skip_verify = reader::boolean(sink, e).unwrap_or(false);
            }
            if t.get("cert_file").is_some() != t.get("key_file").is_some() {
                sink.error(
                    e.key_pos(),
                    &e.path,
                    "cert_file and key_file go together (a client certificate and its key)",
                );
            }
            out.tls = Some(tls);
        }
    }
    Some(out)
}

/// A credential: a string, or `{fromEnv: NAME}` read from the operator's environment.
fn credential(sink: &mut Sink, e: &Entry<'_>, env: &dyn Fn(&str) -> Option<String>) -> Option<Secret> {
    let Node::Mapping(map) = e.value else {
        return reader::string(sink, e).map(Secret::new);
    };
    let f = Fields::new(sink, map, &e.path, &["fromEnv"], &no_hook);
    let name_entry = f.required(sink, "fromEnv", "the name of an environment variable")?;
    let name = reader::string(sink, name_entry)?;
    if name.is_empty()
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        || name.starts_with(|c: char| c.is_ascii_digit())
    {
        sink.error(name_entry.value_pos(), &name_entry.path, format!("`{name}` is not an environment variable name"));
        return None;
    }
    match env(&name).filter(|v| !v.is_empty()) {
        Some(value) => Some(Secret::new(value)),
        None => {
            sink.error(name_entry.value_pos(), &name_entry.path, format!("the environment variable {name} is not set"))
                .hint(format!("export {name}=... before running k3node (its value is never shown)"));
            None
        }
    }
}

#[cfg(test)]
mod tests;
