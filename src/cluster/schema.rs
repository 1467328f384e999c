//! Reads the YAML tree into the typed cluster file: shape, types, defaults and per-field syntax.
//! Rules that relate several fields live in validate.rs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::{LoadError as YamlError, LoaderOptions, Node};

use super::diagnostic::{Location, Pos, Sink};
use super::extra::{self, ExtraScope};
use super::k3s_config::{self, ConfigRead};
use super::prescan;
use super::reader::{self, child, index, mapping, no_hook, sequence, Entry, Fields};
use super::syntax::{self, Problem};
use super::{
    paths, ArtifactSource, Bastion, ClusterFile, Host, HostKeyCheck, HostSsh, K3sSpec, Role, SshDefaults, API_VERSION,
    DEFAULT_CHANNEL, DEFAULT_RELEASE_URL, KIND,
};

/// Positions the cross-field checks need, for values that were read successfully.
#[derive(Debug, Default)]
pub(crate) struct Spans {
    /// The `spec.hosts` key, when present.
    pub hosts_key: Option<Pos>,
    /// One per entry of `hosts`, same order.
    pub hosts: Vec<HostSpans>,
    pub config: ConfigRead,
    /// The `spec.k3s.env` key, when present.
    pub env: Option<Pos>,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct HostSpans {
    pub name: Option<Pos>,
    pub address: Option<Pos>,
    /// Whether `role` was valid (an invalid role must not make "no server" fire as well).
    pub role_ok: bool,
}

/// Parses the YAML, reporting syntax errors (which stop everything: there is no tree to check).
/// `text` comes from [`super::source::decode`]: UTF-8, printable, LF line breaks.
pub(crate) fn load_yaml(sink: &mut Sink, text: &str) -> Option<MarkedMappingNode> {
    // Editors do not show a byte-order mark, and it would become part of the first key.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if !prescan::check(sink, text) {
        return None;
    }
    // Coercion off so that a quoted "0644" can be told from a plain 0644; duplicate keys are
    // errors since the last one silently winning hides mistakes.
    let options = LoaderOptions::default().prevent_coercion(true).error_on_duplicate_keys(true);
    match marked_yaml::parse_yaml_with_options(0, text, options) {
        Ok(Node::Mapping(map)) => Some(map),
        Ok(other) => {
            top_not_mapping(sink, Pos::of_node(&other));
            None
        }
        Err(e) => {
            yaml_error(sink, e);
            None
        }
    }
}

fn top_not_mapping(sink: &mut Sink, at: Pos) {
    sink.error(at, "", "the cluster file must be a YAML mapping at the top level").hint(format!(
        "it starts with `apiVersion: {API_VERSION}` and `kind: {KIND}`; `k3node init` writes a starter file"
    ));
}

fn yaml_error(sink: &mut Sink, e: YamlError) {
    let at = |m: &marked_yaml::Marker| Pos { line: m.line(), column: m.column() };
    let anchors = "repeat the values instead; settings shared by all hosts go in spec.ssh";
    match e {
        YamlError::TopLevelMustBeMapping(m) | YamlError::TopLevelMustBeSequence(m) => top_not_mapping(sink, at(&m)),
        YamlError::UnexpectedAnchor(m) => {
            sink.error(at(&m), "", "YAML anchors and aliases (&name, *name) are not supported in a cluster file")
                .hint(anchors);
        }
        YamlError::MappingKeyMustBeScalar(m) => {
            sink.error(at(&m), "", "mapping keys must be plain strings");
        }
        YamlError::UnexpectedTag(m) => {
            sink.error(at(&m), "", "YAML tags (!!str, !name) are not supported in a cluster file")
                .hint("quote the value to make it a string");
        }
        YamlError::ScanError(m, scan) => {
            let info = scan.info();
            let d = sink.error(at(&m), "", format!("YAML syntax error: {info}"));
            if info.contains("anchor") {
                d.hint(format!("YAML anchors and aliases are not supported; {anchors}"));
            } else if info.contains("tabs") {
                d.hint("indent with spaces; YAML does not allow tabs for indentation");
            }
        }
        YamlError::DuplicateKey(dup) => {
            let first = Pos::of_span(dup.prev_key.span());
            sink.error(
                Pos::of_span(dup.key.span()),
                "",
                format!("duplicate key `{}` (first at line {})", dup.key.as_str(), first.line),
            );
        }
    }
}

fn report(sink: &mut Sink, at: Pos, path: &str, p: Problem) {
    let d = sink.error(at, path, p.message);
    if let Some(h) = p.hint {
        d.hint(h);
    }
}

/// Context of one read: where relative paths start, and the home for `~`.
struct Cx<'a> {
    base_dir: &'a Path,
    home: Option<&'a Path>,
}

pub(crate) fn read(
    sink: &mut Sink,
    root: &MarkedMappingNode,
    base_dir: &Path,
    home: Option<&Path>,
    source: PathBuf,
) -> (ClusterFile, Spans) {
    let cx = Cx { base_dir, home };
    let mut spans = Spans::default();
    let mut file = ClusterFile {
        source,
        name: String::new(),
        ssh: cx.ssh_defaults(sink, None),
        hosts: Vec::new(),
        k3s: K3sSpec {
            version: None,
            channel: Some(DEFAULT_CHANNEL.to_string()),
            source: ArtifactSource::Release { url: DEFAULT_RELEASE_URL.to_string() },
            config: BTreeMap::new(),
            channel_url: None,
            api_endpoint: None,
            extra_config: BTreeMap::new(),
            env: BTreeMap::new(),
            registries: None,
            airgap_images: false,
        },
        warnings: Default::default(),
        manifest_sources: Vec::new(),
        manifests: Vec::new(),
        backup: super::Backup::defaults(base_dir),
        agent: super::AgentSpec::default(),
        images: Vec::new(),
    };
    if root.is_empty() {
        sink.error(Pos::START, "", "the cluster file is empty").hint("`k3node init` writes a commented starter file");
        return (file, spans);
    }
    let top = Fields::new(sink, root, "", &["apiVersion", "kind", "metadata", "spec"], &no_hook);
    if let Some(e) = top.required(sink, "apiVersion", API_VERSION) {
        if let Some(v) = reader::string(sink, e) {
            if v != API_VERSION {
                sink.error(e.value_pos(), &e.path, format!("unsupported apiVersion {v:?}"))
                    .hint(format!("this version of k3node reads apiVersion: {API_VERSION}"));
            }
        }
    }
    if let Some(e) = top.required(sink, "kind", KIND) {
        if let Some(v) = reader::string(sink, e) {
            if v != KIND {
                sink.error(e.value_pos(), &e.path, format!("kind must be {KIND}, found {v:?}"));
            }
        }
    }
    if let Some(meta) = top.required(sink, "metadata", "with the cluster's name") {
        if let Some(map) = mapping(sink, meta, "with the cluster's name") {
            let meta = Fields::new(sink, map, &meta.path, &["name"], &no_hook);
            if let Some(e) = meta.required(sink, "name", "the cluster's name, also its kubeconfig context") {
                if let Some(name) = reader::string(sink, e) {
                    if let Err(p) = syntax::cluster_name(&name) {
                        report(sink, e.value_pos(), &e.path, p);
                    }
                    file.name = name;
                }
            }
        }
    }
    let Some(spec) = top.required(sink, "spec", "with hosts and k3s settings") else {
        return (file, spans);
    };
    let Some(spec_map) = mapping(sink, spec, "with ssh, hosts and k3s") else {
        return (file, spans);
    };
    let spec = Fields::new(
        sink,
        spec_map,
        &spec.path,
        &["ssh", "hosts", "k3s", "manifests", "images", "backup", "agent"],
        &no_hook,
    );
    if let Some(e) = spec.get("manifests") {
        file.manifest_sources = cx.manifest_sources(sink, e, "of manifest files and directories");
    }
    if let Some(e) = spec.get("images") {
        file.images = cx
            .manifest_sources(sink, e, "of image archive files")
            .into_iter()
            .map(|m| super::ImageArchive { path: m.path, at: m.at })
            .collect();
    }
    file.ssh = cx.ssh_defaults(sink, spec.get("ssh"));
    // k3s first: a host's extraConfig may not repeat what spec.k3s.config sets.
    if let Some(k3s) = spec.get("k3s") {
        cx.k3s(sink, k3s, &mut file.k3s, &mut spans);
    }
    if let Some(hosts) = spec.required(sink, "hosts", "the machines of the cluster") {
        spans.hosts_key = Some(hosts.key_pos());
        if let Some(list) = sequence(sink, hosts, "of hosts, each with name, address and role") {
            if list.is_empty() {
                sink.error(hosts.value_pos(), &hosts.path, "the hosts list is empty")
                    .hint("list at least one host with role: server");
            }
            for (i, item) in list.iter().enumerate() {
                let (host, host_spans) = cx.host(sink, item, &index(&hosts.path, i), &spans.config);
                file.hosts.push(host);
                spans.hosts.push(host_spans);
            }
        }
    }
    if let Some(backup) = spec.get("backup") {
        super::backup::read(sink, backup, &mut file.backup, &|sink, e| cx.path(sink, e));
    }
    if let Some(agent) = spec.get("agent") {
        super::agent::read(sink, agent, &mut file.agent, &file.k3s.config);
    }
    (file, spans)
}

impl Cx<'_> {
    /// `spec.manifests`: files and directories, each with where it was written (they are read
    /// and checked by [`super::manifests::read`], before any host is touched).
    fn manifest_sources(&self, sink: &mut Sink, e: &Entry<'_>, what: &str) -> Vec<super::manifests::ManifestSource> {
        let mut out = Vec::new();
        let Some(list) = sequence(sink, e, what) else {
            return out;
        };
        for (i, item) in list.iter().enumerate() {
            let path = index(&e.path, i);
            let at = Pos::of_node(item);
            let Some(s) = reader::scalar(sink, item, &path, at) else { continue };
            match paths::resolve(s.as_str(), self.base_dir, self.home) {
                Ok(resolved) => out.push(super::manifests::ManifestSource { path: resolved, at: sink.location(at) }),
                Err(m) => {
                    sink.error(at, &path, m);
                }
            }
        }
        out
    }

    /// A `keyPath` setting: the resolved path and where it was written.
    fn key_path(&self, sink: &mut Sink, e: Option<&Entry<'_>>) -> (Option<PathBuf>, Option<Location>) {
        match e.and_then(|e| self.path(sink, e).map(|p| (p, sink.location(e.value_pos())))) {
            Some((path, at)) => (Some(path), Some(at)),
            None => (None, None),
        }
    }

    fn path(&self, sink: &mut Sink, e: &Entry<'_>) -> Option<PathBuf> {
        let text = reader::string(sink, e)?;
        match paths::resolve(&text, self.base_dir, self.home) {
            Ok(p) => Some(p),
            Err(m) => {
                sink.error(e.value_pos(), &e.path, m);
                None
            }
        }
    }

    fn ssh_defaults(&self, sink: &mut Sink, e: Option<&Entry<'_>>) -> SshDefaults {
        let home_path = |rel: &str| self.home.map(|h| h.join(rel));
        let mut d = SshDefaults {
            user: "root".to_string(),
            port: 22,
            key_path: None,
            key_path_at: None,
            known_hosts: home_path(".ssh/known_hosts").unwrap_or_else(|| PathBuf::from(".ssh/known_hosts")),
            config_file: home_path(".ssh/config").filter(|p| p.is_file()),
            host_key_check: HostKeyCheck::Strict,
            bastion: None,
        };
        let Some(e) = e else { return d };
        let Some(map) = mapping(sink, e, "of SSH settings") else {
            return d;
        };
        const FIELDS: &[&str] = &["user", "port", "keyPath", "knownHosts", "configFile", "hostKeyCheck", "bastion"];
        let f = Fields::new(sink, map, &e.path, FIELDS, &no_hook);
        if let Some(u) = f.get("user").and_then(|e| user(sink, e)) {
            d.user = u;
        }
        if let Some(p) = f.get("port").and_then(|e| reader::port(sink, e)) {
            d.port = p;
        }
        (d.key_path, d.key_path_at) = self.key_path(sink, f.get("keyPath"));
        if let Some(p) = f.get("knownHosts").and_then(|e| self.path(sink, e)) {
            d.known_hosts = p;
        }
        if let Some(e) = f.get("configFile") {
            d.config_file = self.path(sink, e);
        }
        if let Some(e) = f.get("hostKeyCheck") {
            if let Some(mode) = host_key_check(sink, e) {
                d.host_key_check = mode;
            }
        }
        d.bastion = f.get("bastion").and_then(|e| self.bastion(sink, e));
        d
    }

    fn bastion(&self, sink: &mut Sink, e: &Entry<'_>) -> Option<Bastion> {
        let map = mapping(sink, e, "with the jump host's address")?;
        let f = Fields::new(sink, map, &e.path, &["address", "user", "port", "keyPath"], &no_hook);
        let address =
            f.required(sink, "address", "the jump host's IP address or DNS name").and_then(|e| address(sink, e));
        let (key_path, key_path_at) = self.key_path(sink, f.get("keyPath"));
        let b = Bastion {
            address: address.clone().unwrap_or_default(),
            user: f.get("user").and_then(|e| user(sink, e)),
            port: f.get("port").and_then(|e| reader::port(sink, e)).unwrap_or(22),
            key_path,
            key_path_at,
        };
        address.map(|_| b)
    }

    fn host(&self, sink: &mut Sink, node: &Node, path: &str, config: &ConfigRead) -> (Host, HostSpans) {
        let mut host = Host {
            name: String::new(),
            address: String::new(),
            role: Role::Agent,
            ssh: HostSsh::default(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            extra_config: BTreeMap::new(),
            env: BTreeMap::new(),
        };
        let mut spans = HostSpans::default();
        let Node::Mapping(map) = node else {
            sink.error(
                Pos::of_node(node),
                path,
                format!("each host must be a mapping with name, address and role, found {}", reader::kind_name(node)),
            );
            return (host, spans);
        };
        const FIELDS: &[&str] = &["name", "address", "role", "ssh", "labels", "taints", "k3s", "env"];
        let f = Fields::new(sink, map, path, FIELDS, &no_hook);
        if let Some(e) = f.required(sink, "name", "the node name, e.g. server-1") {
            if let Some(name) = reader::string(sink, e) {
                match syntax::node_name(&name) {
                    Ok(()) => spans.name = Some(e.value_pos()),
                    Err(p) => report(sink, e.value_pos(), &e.path, p),
                }
                host.name = name;
            }
        }
        if let Some(e) = f.required(sink, "address", "IP address or DNS name to reach it over SSH") {
            if let Some(a) = address(sink, e) {
                spans.address = Some(e.value_pos());
                host.address = a;
            }
        }
        if let Some(e) = f.required(sink, "role", "server or agent") {
            if let Some(role) = role(sink, e) {
                host.role = role;
                spans.role_ok = true;
            }
        }
        if let Some(e) = f.get("ssh") {
            host.ssh = self.host_ssh(sink, e);
        }
        if let Some(e) = f.get("labels") {
            host.labels = labels(sink, e);
        }
        if let Some(e) = f.get("taints") {
            host.taints = taints(sink, e);
        }
        if let Some(e) = f.get("k3s") {
            if let Some(map) = mapping(sink, e, "with extraConfig") {
                let k3s = Fields::new(sink, map, &e.path, &["extraConfig"], &no_hook);
                if let Some(e) = k3s.get("extraConfig") {
                    if let Some(map) = mapping(sink, e, "of config.yaml keys for this host") {
                        let role = spans.role_ok.then_some(host.role);
                        host.extra_config = extra::extra_config(sink, map, &e.path, config, ExtraScope::Host(role));
                    }
                }
            }
        }
        if let Some(e) = f.get("env") {
            if let Some(map) = mapping(sink, e, "of NAME: value") {
                host.env = extra::env(sink, map, &e.path);
            }
        }
        (host, spans)
    }

    fn host_ssh(&self, sink: &mut Sink, e: &Entry<'_>) -> HostSsh {
        let mut s = HostSsh::default();
        let Some(map) = mapping(sink, e, "of SSH overrides for this host") else {
            return s;
        };
        let only_global = |k: &str| {
            ["knownHosts", "configFile", "hostKeyCheck"]
                .contains(&k)
                .then(|| (format!("`{k}` can only be set in spec.ssh"), Some("it applies to every host".to_string())))
        };
        let f = Fields::new(sink, map, &e.path, &["user", "port", "keyPath", "bastion"], &only_global);
        s.user = f.get("user").and_then(|e| user(sink, e));
        s.port = f.get("port").and_then(|e| reader::port(sink, e));
        (s.key_path, s.key_path_at) = self.key_path(sink, f.get("keyPath"));
        s.bastion = f.get("bastion").and_then(|e| self.bastion(sink, e));
        s
    }

    fn k3s(&self, sink: &mut Sink, e: &Entry<'_>, out: &mut K3sSpec, spans: &mut Spans) {
        let Some(map) = mapping(sink, e, "with version or channel, source and config") else {
            return;
        };
        let f = Fields::new(
            sink,
            map,
            &e.path,
            &[
                "version",
                "channel",
                "channelUrl",
                "apiEndpoint",
                "source",
                "config",
                "extraConfig",
                "env",
                "registries",
                "airgapImages",
            ],
            &no_hook,
        );
        if let Some(e) = f.get("channelUrl") {
            if let Some(text) = reader::string(sink, e) {
                match syntax::base_url(&text) {
                    Ok(url) => out.channel_url = Some(url),
                    Err(p) => report(sink, e.value_pos(), &e.path, p),
                }
            }
        }
        if let Some(e) = f.get("apiEndpoint") {
            if let Some(text) = reader::string(sink, e) {
                match syntax::address(&text) {
                    Ok(()) => out.api_endpoint = Some(text),
                    Err(p) => report(sink, e.value_pos(), &e.path, p),
                }
            }
        }
        let version = f.get("version");
        let channel = f.get("channel");
        if let Some(v) = version.and_then(|e| reader::string(sink, e).map(|s| (e, s))) {
            if let Err(p) = syntax::k3s_version(&v.1) {
                report(sink, v.0.value_pos(), &v.0.path, p);
            }
            out.version = Some(v.1);
            out.channel = None;
        }
        if let Some(c) = channel.and_then(|e| reader::string(sink, e).map(|s| (e, s))) {
            if let Err(p) = syntax::k3s_channel(&c.1) {
                report(sink, c.0.value_pos(), &c.0.path, p);
            }
            out.channel = Some(c.1);
        }
        if let (Some(_), Some(c)) = (version, channel) {
            sink.error(c.key_pos(), &c.path, "set either k3s.version or k3s.channel, not both")
                .hint("version pins an exact release; channel follows a release line");
        }
        if let Some(e) = f.get("source") {
            if let Some(src) = self.source(sink, e) {
                out.source = src;
            }
        }
        if let Some(e) = f.get("config") {
            if let Some(map) = mapping(sink, e, "of k3s config.yaml keys") {
                let read = k3s_config::read(sink, map, &e.path);
                out.config = read.values.clone();
                spans.config = read;
            }
        }
        if let Some(e) = f.get("extraConfig") {
            if let Some(map) = mapping(sink, e, "of config.yaml keys k3node does not know") {
                out.extra_config = extra::extra_config(sink, map, &e.path, &spans.config, ExtraScope::Cluster);
            }
        }
        if let Some(e) = f.get("env") {
            if let Some(map) = mapping(sink, e, "of NAME: value") {
                out.env = extra::env(sink, map, &e.path);
                spans.env = Some(e.key_pos());
            }
        }
        if let Some(e) = f.get("airgapImages") {
            out.airgap_images = reader::boolean(sink, e).unwrap_or(false);
        }
        if let Some(e) = f.get("registries") {
            out.registries = super::registries::read(sink, e, &|name| std::env::var(name).ok());
        }
    }

    fn source(&self, sink: &mut Sink, e: &Entry<'_>) -> Option<ArtifactSource> {
        let map = mapping(sink, e, "with one of releaseUrl, mirror, airgapDir")?;
        const KINDS: &[&str] = &["releaseUrl", "mirror", "airgapDir"];
        let f = Fields::new(sink, map, &e.path, KINDS, &no_hook);
        let given: Vec<&Entry<'_>> = KINDS.iter().filter_map(|k| f.get(k)).collect();
        for extra in given.iter().skip(1) {
            sink.error(
                extra.key_pos(),
                &extra.path,
                format!("only one source may be set, and `{}` is set already", given[0].key.as_str()),
            )
            .hint("choose one of releaseUrl, mirror, airgapDir");
        }
        let first = given.first()?;
        let url = |sink: &mut Sink| {
            let text = reader::string(sink, first)?;
            syntax::base_url(&text).map_err(|p| report(sink, first.value_pos(), &first.path, p)).ok()
        };
        match first.key.as_str() {
            "releaseUrl" => url(sink).map(|url| ArtifactSource::Release { url }),
            "mirror" => url(sink).map(|url| ArtifactSource::Mirror { url }),
            _ => self.path(sink, first).map(|path| ArtifactSource::AirgapDir { path }),
        }
    }
}

fn user(sink: &mut Sink, e: &Entry<'_>) -> Option<String> {
    let u = reader::string(sink, e)?;
    if u.chars().any(|c| c.is_whitespace() || c.is_control() || c == '@' || c == ':') {
        sink.error(e.value_pos(), &e.path, format!("{u:?} is not a valid user name"));
        return None;
    }
    Some(u)
}

fn address(sink: &mut Sink, e: &Entry<'_>) -> Option<String> {
    let a = reader::string(sink, e)?;
    match syntax::address(&a) {
        Ok(()) => Some(a),
        Err(p) => {
            report(sink, e.value_pos(), &e.path, p);
            None
        }
    }
}

fn role(sink: &mut Sink, e: &Entry<'_>) -> Option<Role> {
    let r = reader::string(sink, e)?;
    match r.as_str() {
        "server" => Some(Role::Server),
        "agent" => Some(Role::Agent),
        other => {
            let d = sink.error(e.value_pos(), &e.path, format!("role must be server or agent, found {other:?}"));
            match other.to_ascii_lowercase().as_str() {
                "master" | "control-plane" | "controlplane" | "controller" => {
                    d.hint("k3s calls control-plane nodes `server`");
                }
                "worker" | "node" | "client" => {
                    d.hint("k3s calls worker nodes `agent`");
                }
                o => {
                    if let Some(close) = reader::did_you_mean(o, &["server", "agent"]) {
                        d.hint(format!("did you mean `{close}`?"));
                    }
                }
            }
            None
        }
    }
}

fn host_key_check(sink: &mut Sink, e: &Entry<'_>) -> Option<HostKeyCheck> {
    let v = reader::string(sink, e)?;
    match v.as_str() {
        "strict" => Some(HostKeyCheck::Strict),
        "accept-new" => Some(HostKeyCheck::AcceptNew),
        other => {
            let d = sink.error(
                e.value_pos(),
                &e.path,
                format!("hostKeyCheck must be strict or accept-new, found {other:?}"),
            );
            if matches!(
                other.to_ascii_lowercase().as_str(),
                "no" | "false" | "off" | "none" | "ignore" | "insecure" | "disabled"
            ) {
                d.hint("k3node never skips host key verification; accept-new trusts a key the first time a host is seen and still refuses changed keys");
            } else if let Some(close) = reader::did_you_mean(other, &["strict", "accept-new"]) {
                d.hint(format!("did you mean `{close}`?"));
            }
            None
        }
    }
}

fn labels(sink: &mut Sink, e: &Entry<'_>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(map) = mapping(sink, e, "of label: value") else {
        return out;
    };
    for (key, value) in map.iter() {
        let k = key.as_str();
        let path = child(&e.path, k);
        let entry = Entry { key, value, path: path.clone() };
        if let Err(p) = syntax::label_key(k).and_then(|()| syntax::node_label_allowed(k)) {
            report(sink, entry.key_pos(), &path, p);
            continue;
        }
        let v = match value {
            _ if entry.is_null() => String::new(),
            Node::Scalar(s) => s.as_str().to_string(),
            other => {
                sink.error(
                    entry.value_pos(),
                    &path,
                    format!("a label value must be a string, found {}", reader::kind_name(other)),
                );
                continue;
            }
        };
        if let Err(p) = syntax::label_value(&v) {
            report(sink, entry.value_pos(), &path, p);
            continue;
        }
        out.insert(k.to_string(), v);
    }
    out
}

fn taints(sink: &mut Sink, e: &Entry<'_>) -> Vec<String> {
    let mut out = Vec::new();
    let Some(list) = sequence(sink, e, "of key[=value]:Effect") else {
        return out;
    };
    for (i, item) in list.iter().enumerate() {
        let path = index(&e.path, i);
        let at = Pos::of_node(item);
        let Some(s) = reader::scalar(sink, item, &path, at) else {
            continue;
        };
        match syntax::taint(s.as_str()) {
            Ok(()) => out.push(s.as_str().to_string()),
            Err(p) => report(sink, at, &path, p),
        }
    }
    out
}
