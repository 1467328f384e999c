//! The keys of k3s's /etc/rancher/k3s/config.yaml that `spec.k3s.config` accepts, with their
//! types. k3s itself skips unknown keys with a mere warning, so a typo would silently do nothing:
//! this table is what makes it an error instead (k3s-contract.md section 3). Keys newer than the
//! table go through `spec.k3s.extraConfig`, unchecked (see extra.rs).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use marked_yaml::types::MarkedMappingNode;
use marked_yaml::Node;
use serde_json::Value;

use super::diagnostic::{Pos, Sink};
use super::reader::{did_you_mean, index, is_null, is_plain, kind_name, Entry};

/// Which k3s commands take a key. Servers run an agent too, so `All` keys go to every node;
/// `Server` keys only make sense in a server's config.yaml, `Agent` keys only in an agent's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Server,
    All,
    /// Flags of `k3s agent` that `k3s server` does not take.
    Agent,
}

impl Scope {
    /// Whether a node of `role` takes the key.
    pub fn applies_to(self, role: super::Role) -> bool {
        match self {
            Scope::All => true,
            Scope::Server => role == super::Role::Server,
            Scope::Agent => role == super::Role::Agent,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    String,
    Bool,
    /// A non-negative integer.
    Int,
    Port,
    /// A list of strings; a single string is taken as a one-item list.
    List,
    /// Comma-separated CIDRs (at most one per IP family, for dual-stack), or a list of them.
    Cidrs,
    /// Comma-separated IP addresses, or a list of them.
    Ips,
    Ip,
    Enum(&'static [&'static str]),
    /// A list whose items (also comma-separated ones) come from a fixed set.
    EnumList(&'static [&'static str]),
    /// An octal file mode as a quoted string, like "0644".
    FileMode,
    /// A Go duration (`time.ParseDuration`): `30s`, `5m0s`, `1h30m`.
    Duration,
    /// `low-high`, two ports (`30000-32767`).
    PortRange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpec {
    pub name: &'static str,
    pub kind: Kind,
    pub scope: Scope,
    /// The value is a credential (or may embed one, like a datastore DSN): never print it.
    pub secret: bool,
}

pub const DISABLE_ITEMS: &[&str] = &["coredns", "servicelb", "traefik", "local-storage", "metrics-server", "runtimes"];
pub const FLANNEL_BACKENDS: &[&str] = &["vxlan", "host-gw", "wireguard-native", "none"];
pub const EGRESS_SELECTOR_MODES: &[&str] = &["agent", "cluster", "pod", "disabled"];

const fn key(name: &'static str, kind: Kind, scope: Scope) -> KeySpec {
    KeySpec { name, kind, scope, secret: false }
}

const fn secret(name: &'static str, kind: Kind, scope: Scope) -> KeySpec {
    KeySpec { name, kind, scope, secret: true }
}

/// Which k3s the table was taken from (also in the README's cluster.yaml reference).
pub const KEYS_SOURCE: &str = "k3s v1.31/v1.32 release lines: pkg/cli/cmds/server.go and agent.go (urfave/cli v1 flag definitions with supervisor-metrics, kine-tls, etcd-s3-proxy and etcd-s3-config-secret), cross-checked with `k3s server --help` and `k3s agent --help` in k3s-io/docs (docs/cli/server.md at 02434960d6d5, docs/cli/agent.md at 1f023c058c5f)";

/// [`KEYS_SOURCE`] in a few words, for messages.
pub const KEYS_SOURCE_SHORT: &str = "its table follows k3s v1.31/v1.32";

/// Every accepted key, sorted by name: the flags of `k3s server` and `k3s agent` (see
/// [`KEYS_SOURCE`]), minus those k3node manages ([`MANAGED`]), the deprecated aliases
/// ([`DEPRECATED`]) and `config` itself. Types follow the flag types: StringSlice flags are
/// lists, BoolFlag/BoolTFlag booleans, IntFlag numbers (ports where the flag is a port),
/// DurationFlag durations; CIDR and IP flags are checked as such. Scope: a flag of ServerFlags
/// only is `Server`, of the agent command only `Agent`, of both `All`.
pub const KEYS: &[KeySpec] = {
    use Kind::*;
    use Scope::{Agent, All, Server};
    &[
        key("advertise-address", Ip, Server),
        key("advertise-port", Port, Server),
        key("airgap-extra-registry", List, All),
        key("alsologtostderr", Bool, All),
        key("bind-address", Ip, All),
        key("cluster-cidr", Cidrs, Server),
        key("cluster-dns", Ips, Server),
        key("cluster-domain", String, Server),
        key("container-runtime-endpoint", String, All),
        key("data-dir", String, All),
        key("datastore-cafile", String, Server),
        key("datastore-certfile", String, Server),
        secret("datastore-endpoint", String, Server),
        key("datastore-keyfile", String, Server),
        key("debug", Bool, All),
        key("default-local-storage-path", String, Server),
        key("default-runtime", String, All),
        key("disable", EnumList(DISABLE_ITEMS), Server),
        key("disable-agent", Bool, Server),
        key("disable-apiserver", Bool, Server),
        key("disable-apiserver-lb", Bool, Agent),
        key("disable-cloud-controller", Bool, Server),
        key("disable-controller-manager", Bool, Server),
        key("disable-default-registry-endpoint", Bool, All),
        key("disable-etcd", Bool, Server),
        key("disable-helm-controller", Bool, Server),
        key("disable-kube-proxy", Bool, Server),
        key("disable-network-policy", Bool, Server),
        key("disable-scheduler", Bool, Server),
        key("docker", Bool, All),
        key("egress-selector-mode", Enum(EGRESS_SELECTOR_MODES), Server),
        key("embedded-registry", Bool, Server),
        key("enable-pprof", Bool, All),
        key("etcd-arg", List, Server),
        key("etcd-disable-snapshots", Bool, Server),
        key("etcd-expose-metrics", Bool, Server),
        key("etcd-s3", Bool, Server),
        secret("etcd-s3-access-key", String, Server),
        key("etcd-s3-bucket", String, Server),
        key("etcd-s3-config-secret", String, Server),
        key("etcd-s3-endpoint", String, Server),
        key("etcd-s3-endpoint-ca", String, Server),
        key("etcd-s3-folder", String, Server),
        key("etcd-s3-insecure", Bool, Server),
        // A proxy URL may carry a user and password.
        secret("etcd-s3-proxy", String, Server),
        key("etcd-s3-region", String, Server),
        secret("etcd-s3-secret-key", String, Server),
        key("etcd-s3-skip-ssl-verify", Bool, Server),
        key("etcd-s3-timeout", Duration, Server),
        key("etcd-snapshot-compress", Bool, Server),
        key("etcd-snapshot-dir", String, Server),
        key("etcd-snapshot-name", String, Server),
        key("etcd-snapshot-retention", Int, Server),
        key("etcd-snapshot-schedule-cron", String, Server),
        key("flannel-backend", Enum(FLANNEL_BACKENDS), Server),
        key("flannel-cni-conf", String, All),
        key("flannel-conf", String, All),
        key("flannel-external-ip", Bool, Server),
        key("flannel-iface", String, All),
        key("flannel-ipv6-masq", Bool, Server),
        key("helm-job-image", String, Server),
        key("https-listen-port", Port, Server),
        key("image-credential-provider-bin-dir", String, All),
        key("image-credential-provider-config", String, All),
        key("image-service-endpoint", String, All),
        key("kine-tls", Bool, Server),
        key("kube-apiserver-arg", List, Server),
        key("kube-cloud-controller-manager-arg", List, Server),
        key("kube-controller-manager-arg", List, Server),
        key("kube-proxy-arg", List, All),
        key("kube-scheduler-arg", List, Server),
        key("kubelet-arg", List, All),
        key("lb-server-port", Port, All),
        key("log", String, All),
        key("node-external-dns", List, All),
        key("node-external-ip", Ips, All),
        key("node-internal-dns", List, All),
        key("node-ip", Ips, All),
        key("nonroot-devices", Bool, All),
        key("pause-image", String, All),
        key("prefer-bundled-bin", Bool, All),
        key("private-registry", String, All),
        key("protect-kernel-defaults", Bool, All),
        key("resolv-conf", String, All),
        key("rootless", Bool, All),
        key("secrets-encryption", Bool, Server),
        key("selinux", Bool, All),
        key("service-cidr", Cidrs, Server),
        key("service-node-port-range", PortRange, Server),
        key("servicelb-namespace", String, Server),
        key("snapshotter", String, All),
        key("supervisor-metrics", Bool, Server),
        key("system-default-registry", String, Server),
        key("tls-san", List, Server),
        key("tls-san-security", Bool, Server),
        key("v", Int, All),
        key("vmodule", String, All),
        secret("vpn-auth", String, All),
        key("vpn-auth-file", String, All),
        key("with-node-id", Bool, All),
        key("write-kubeconfig", String, Server),
        key("write-kubeconfig-group", String, Server),
        key("write-kubeconfig-mode", FileMode, Server),
    ]
};

/// Keys k3node sets itself, with where the user's intent belongs instead.
pub const MANAGED: &[(&str, &str)] = &[
    ("agent-token", "k3node generates the cluster tokens, keeps them on the first server and hands them to joining nodes; they never belong in cluster.yaml"),
    ("agent-token-file", "k3node generates the cluster tokens, keeps them on the first server and hands them to joining nodes; they never belong in cluster.yaml"),
    ("cluster-init", "k3node decides which server initialises the cluster; list your servers in spec.hosts with role: server"),
    ("cluster-reset", "use `k3node restore` to reset a cluster from a snapshot"),
    ("cluster-reset-restore-path", "use `k3node restore` to reset a cluster from a snapshot"),
    ("config", "k3node writes /etc/rancher/k3s/config.yaml itself from spec.k3s.config"),
    ("node-label", "set labels per host in spec.hosts[].labels"),
    ("node-name", "the node name is spec.hosts[].name"),
    ("node-taint", "set taints per host in spec.hosts[].taints"),
    ("server", "k3node joins every node to the first server in spec.hosts"),
    ("token", "k3node generates the cluster token, keeps it on the first server and hands it to joining nodes; it never belongs in cluster.yaml"),
    ("token-file", "k3node generates the cluster token, keeps it on the first server and hands it to joining nodes; it never belongs in cluster.yaml"),
];

/// Hidden aliases and removed flags k3s still parses, with what to write instead.
pub const DEPRECATED: &[(&str, &str)] = &[
    ("cluster-secret", "the cluster token is k3node's to generate; remove this key"),
    ("disable-selinux", "SELinux support is off unless `selinux: true` is set; remove this key"),
    ("kube-cloud-controller-arg", "write `kube-cloud-controller-manager-arg`"),
    ("kube-controller-arg", "write `kube-controller-manager-arg`"),
    ("no-deploy", "write `disable` with the same list"),
    ("no-flannel", "write `flannel-backend: none`"),
];

pub fn key_spec(name: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|k| k.name == name)
}

/// Whether the value of `name` must be kept out of output, logs and process arguments. A key
/// the table does not know (from extraConfig) counts as secret when its name says so.
pub fn is_secret(name: &str) -> bool {
    match key_spec(name) {
        Some(k) => k.secret,
        None => crate::protocol::secret::secret_config_key(name),
    }
}

/// What the reader learnt from `spec.k3s.config`, with positions for the cross-field checks.
#[derive(Debug, Default)]
pub(crate) struct ConfigRead {
    pub values: BTreeMap<String, Value>,
    /// Position of each valid value.
    pub pos: BTreeMap<String, Pos>,
    /// Keys that were present but invalid: cross-field checks must not fall back to defaults
    /// for them, or they would report confusing follow-up errors.
    pub invalid: BTreeSet<String>,
}

/// Reports `e` when its key is one k3node sets itself or a deprecated alias; true then.
pub(crate) fn refused(sink: &mut Sink, e: &Entry<'_>) -> bool {
    let name = e.key.as_str();
    if let Some((_, hint)) = MANAGED.iter().find(|(k, _)| *k == name) {
        sink.error(e.key_pos(), &e.path, format!("`{name}` is managed by k3node and cannot be set here")).hint(*hint);
        return true;
    }
    if let Some((_, instead)) = DEPRECATED.iter().find(|(k, _)| *k == name) {
        sink.error(e.key_pos(), &e.path, format!("`{name}` is a deprecated k3s flag")).hint(*instead);
        return true;
    }
    if let Some(base) = name.strip_suffix('+') {
        sink.error(e.key_pos(), &e.path, format!("`{name}`: the `+` (append) suffix only works in k3s drop-in files"))
            .hint(format!("write the whole list under `{base}`"));
        return true;
    }
    false
}

/// The value of a known key, checked against its type.
pub(crate) fn read_known(sink: &mut Sink, e: &Entry<'_>, spec: &KeySpec) -> Option<Value> {
    if is_null(e.value) {
        // `key:` with nothing after it is almost always an unfinished edit.
        sink.error(e.key_pos(), &e.path, format!("`{}` has no value", spec.name))
            .hint("remove the key to use the k3s default");
        return None;
    }
    read_value(sink, e, spec.kind)
}

pub(crate) fn read(sink: &mut Sink, map: &MarkedMappingNode, path: &str) -> ConfigRead {
    let mut out = ConfigRead::default();
    let names: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
    for (key, value) in map.iter() {
        let name = key.as_str();
        let e = Entry { key, value, path: super::reader::child(path, name) };
        if refused(sink, &e) {
            continue;
        }
        let Some(spec) = key_spec(name) else {
            unknown_key(sink, &e, &names);
            continue;
        };
        match read_known(sink, &e, spec) {
            Some(v) => {
                out.pos.insert(name.to_string(), e.value_pos());
                out.values.insert(name.to_string(), v);
            }
            None => {
                out.invalid.insert(name.to_string());
            }
        }
    }
    out
}

fn unknown_key(sink: &mut Sink, e: &Entry<'_>, names: &[&str]) {
    let name = e.key.as_str();
    let message = match did_you_mean(name, names) {
        Some(close) => format!("unknown k3s config key `{name}`, did you mean `{close}`?"),
        None => format!("unknown k3s config key `{name}`"),
    };
    let hint = if name.starts_with('-') {
        "write k3s flags without the leading --, e.g. cluster-cidr".to_string()
    } else {
        "k3s ignores unknown keys, so k3node refuses them here; a key of a newer k3s goes in spec.k3s.extraConfig, passed unchecked"
            .to_string()
    };
    sink.error(e.key_pos(), &e.path, message).hint(hint);
}

fn read_value(sink: &mut Sink, e: &Entry<'_>, kind: Kind) -> Option<Value> {
    match kind {
        Kind::String => text(sink, e.value, &e.path).map(|s| Value::String(s.to_string())),
        Kind::Bool => read_bool(sink, e),
        Kind::Int => {
            let t = text(sink, e.value, &e.path)?;
            match t.parse::<u64>() {
                Ok(n) if t.bytes().all(|b| b.is_ascii_digit()) => Some(Value::from(n)),
                _ => {
                    sink.error(e.value_pos(), &e.path, format!("must be a whole number, found {t:?}"));
                    None
                }
            }
        }
        Kind::Port => {
            let t = text(sink, e.value, &e.path)?;
            match super::reader::parse_port(t) {
                Ok(p) => Some(Value::from(p)),
                Err(m) => {
                    sink.error(e.value_pos(), &e.path, m);
                    None
                }
            }
        }
        Kind::List => {
            let items = items(sink, e)?;
            Some(Value::Array(items.into_iter().map(|(s, _, _)| Value::String(s)).collect()))
        }
        Kind::EnumList(allowed) => {
            let mut ok = true;
            let list = items(sink, e)?;
            for (item, path, at) in &list {
                for part in item.split(',').map(str::trim) {
                    if !allowed.contains(&part) {
                        ok = false;
                        let d = sink.error(*at, path, format!("{part:?} is not one of {}", allowed.join(", ")));
                        if let Some(close) = did_you_mean(part, allowed) {
                            d.hint(format!("did you mean `{close}`?"));
                        }
                    }
                }
            }
            ok.then(|| Value::Array(list.into_iter().map(|(s, _, _)| Value::String(s)).collect()))
        }
        Kind::Enum(allowed) => {
            let t = text(sink, e.value, &e.path)?;
            if allowed.contains(&t) {
                return Some(Value::String(t.to_string()));
            }
            let d = sink.error(e.value_pos(), &e.path, format!("{t:?} is not one of {}", allowed.join(", ")));
            if let Some(close) = did_you_mean(t, allowed) {
                d.hint(format!("did you mean `{close}`?"));
            }
            None
        }
        Kind::Cidrs => {
            let parts = comma_items(sink, e)?;
            let mut ok = true;
            let mut families = BTreeSet::new();
            for (part, path, at) in &parts {
                match parse_cidr(part) {
                    Ok(net) => {
                        if net != net.trunc() {
                            // k3s (Go's net.ParseCIDR) keeps only the network part.
                            sink.warning(
                                *at,
                                path,
                                format!("{part} has host bits set; k3s will use the network {}", net.trunc()),
                            )
                            .hint(format!("write {} to say what k3s does", net.trunc()));
                        }
                        if !families.insert(matches!(net, IpNet::V4(_))) {
                            ok = false;
                            sink.error(*at, path, format!("{part:?}: at most one IPv4 and one IPv6 CIDR may be given"))
                                .hint("dual-stack takes one CIDR per IP family, e.g. 10.42.0.0/16,2001:cafe:42::/56");
                        }
                    }
                    Err(m) => {
                        ok = false;
                        sink.error(*at, path, m);
                    }
                }
            }
            ok.then(|| Value::String(join(&parts)))
        }
        Kind::Ips => {
            let parts = comma_items(sink, e)?;
            let mut ok = true;
            for (part, path, at) in &parts {
                if let Err(m) = parse_ip(part) {
                    ok = false;
                    sink.error(*at, path, m);
                }
            }
            ok.then(|| Value::String(join(&parts)))
        }
        Kind::Ip => {
            let t = text(sink, e.value, &e.path)?;
            match parse_ip(t) {
                Ok(_) => Some(Value::String(t.to_string())),
                Err(m) => {
                    sink.error(e.value_pos(), &e.path, m);
                    None
                }
            }
        }
        Kind::FileMode => read_mode(sink, e),
        Kind::Duration => {
            let t = text(sink, e.value, &e.path)?;
            if go_duration(t) {
                Some(Value::String(t.to_string()))
            } else {
                sink.error(e.value_pos(), &e.path, format!("{t:?} is not a duration")).hint(
                    "write a number with a unit, as Go reads durations: 30s, 5m, 1h30m (units ns, us, ms, s, m, h)",
                );
                None
            }
        }
        Kind::PortRange => {
            let t = text(sink, e.value, &e.path)?;
            let ports = t.split_once('-').map(|(a, b)| (super::reader::parse_port(a), super::reader::parse_port(b)));
            match ports {
                Some((Ok(low), Ok(high))) if low <= high => Some(Value::String(t.to_string())),
                _ => {
                    sink.error(e.value_pos(), &e.path, format!("{t:?} is not a port range"))
                        .hint("write low-high with ports from 1 to 65535, e.g. 30000-32767");
                    None
                }
            }
        }
    }
}

/// Go's `time.ParseDuration` syntax: an optional sign, then one or more decimal numbers each
/// followed by a unit; "0" alone is allowed.
fn go_duration(t: &str) -> bool {
    let rest = t.strip_prefix(['+', '-']).unwrap_or(t);
    if rest == "0" {
        return true;
    }
    let mut rest = rest;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let number = &rest[..digits];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return false;
        }
        rest = &rest[digits..];
        let Some(unit) =
            ["ns", "us", "\u{b5}s", "\u{3bc}s", "ms", "s", "m", "h"].iter().find(|u| rest.starts_with(**u))
        else {
            return false;
        };
        rest = &rest[unit.len()..];
    }
    true
}

/// An IP address as k3s (Go's net.ParseIP) reads it: IPv4 octets without leading zeros, which
/// some tools read as octal and Go refuses.
pub(crate) fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.parse::<IpAddr>().map_err(|_| {
        if has_leading_zero_octet(s) {
            format!("{s:?}: IPv4 address parts cannot have leading zeros (k3s refuses them; some tools read 042 as octal 34)")
        } else {
            format!("{s:?} is not a valid IP address")
        }
    })
}

fn has_leading_zero_octet(s: &str) -> bool {
    let v4 = s.rsplit(':').next().unwrap_or(s);
    let parts: Vec<&str> = v4.split('.').collect();
    parts.len() == 4
        && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && parts.iter().any(|p| p.len() > 1 && p.starts_with('0'))
}

/// A CIDR as k3s (Go's net.ParseCIDR) reads it: a strict address, then `/` and a prefix length
/// in range, written without leading zeros. Host bits may be set (k3s drops them; the caller
/// warns).
pub(crate) fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let Some((addr, prefix)) = s.split_once('/') else {
        return match s.parse::<IpAddr>() {
            Ok(_) => Err(format!("{s:?} is an address, not a CIDR: add the prefix length, e.g. {s}/16")),
            Err(_) => Err(format!("{s:?} is not a valid CIDR (e.g. 10.42.0.0/16)")),
        };
    };
    let ip = parse_ip(addr).map_err(|m| format!("in CIDR {s:?}: {m}"))?;
    let digits_ok = !prefix.is_empty() && prefix.len() <= 3 && prefix.bytes().all(|b| b.is_ascii_digit());
    let len = prefix.parse::<u8>().ok().filter(|_| digits_ok && (prefix == "0" || !prefix.starts_with('0')));
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match len {
        Some(len) if len <= max => IpNet::new(ip, len).map_err(|_| format!("{s:?} is not a valid CIDR")),
        _ => Err(format!("{s:?} is not a valid CIDR: the prefix length must be a number from 0 to {max}")),
    }
}

fn join(parts: &[(String, String, Pos)]) -> String {
    parts.iter().map(|(s, _, _)| s.as_str()).collect::<Vec<_>>().join(",")
}

/// A non-empty scalar's text, or an error saying what was found instead.
fn text<'n>(sink: &mut Sink, node: &'n Node, path: &str) -> Option<&'n str> {
    let at = Pos::of_node(node);
    match node {
        Node::Scalar(s) if !s.as_str().trim().is_empty() => Some(s.as_str()),
        Node::Scalar(_) => {
            sink.error(at, path, "must not be empty");
            None
        }
        other => {
            sink.error(at, path, format!("must be a single value, found {}", kind_name(other)));
            None
        }
    }
}

fn read_bool(sink: &mut Sink, e: &Entry<'_>) -> Option<Value> {
    let t = text(sink, e.value, &e.path)?;
    match t {
        "true" | "True" | "TRUE" => Some(Value::Bool(true)),
        "false" | "False" | "FALSE" => Some(Value::Bool(false)),
        other => {
            let d = sink.error(e.value_pos(), &e.path, format!("must be true or false, found {other:?}"));
            if matches!(other.to_ascii_lowercase().as_str(), "yes" | "no" | "on" | "off" | "y" | "n") {
                d.hint("YAML 1.1's yes/no/on/off are not booleans for k3s; write true or false");
            }
            None
        }
    }
}

/// The items of a list value (or of a single scalar), each with its path and position.
fn items(sink: &mut Sink, e: &Entry<'_>) -> Option<Vec<(String, String, Pos)>> {
    match e.value {
        Node::Scalar(_) => text(sink, e.value, &e.path).map(|t| vec![(t.to_string(), e.path.clone(), e.value_pos())]),
        Node::Sequence(seq) => {
            let mut out = Vec::new();
            let mut ok = true;
            for (i, item) in seq.iter().enumerate() {
                let path = index(&e.path, i);
                match text(sink, item, &path) {
                    Some(t) => out.push((t.to_string(), path, Pos::of_node(item))),
                    None => ok = false,
                }
            }
            ok.then_some(out)
        }
        Node::Mapping(_) => {
            sink.error(e.value_pos(), &e.path, "must be a list of strings (or a single string), found a mapping");
            None
        }
    }
}

/// Like [`items`], with comma-separated values split (`10.42.0.0/16,2001:cafe:42::/56`).
fn comma_items(sink: &mut Sink, e: &Entry<'_>) -> Option<Vec<(String, String, Pos)>> {
    let mut out = Vec::new();
    for (item, path, at) in items(sink, e)? {
        for part in item.split(',').map(str::trim) {
            out.push((part.to_string(), path.clone(), at));
        }
    }
    Some(out)
}

fn read_mode(sink: &mut Sink, e: &Entry<'_>) -> Option<Value> {
    let t = text(sink, e.value, &e.path)?;
    let octal = (3..=4).contains(&t.len()) && t.bytes().all(|b| (b'0'..=b'7').contains(&b));
    let plain = matches!(e.value, Node::Scalar(s) if is_plain(s));
    if plain && (t.bytes().all(|b| b.is_ascii_digit()) || t.starts_with("0o")) {
        sink.error(e.value_pos(), &e.path, format!("file mode {t} must be quoted, like \"0644\""))
            .hint(format!(
                "unquoted, YAML reads {t} as a number (0644 is 644 in YAML 1.2 and 420 in YAML 1.1), not as an octal mode; write \"{}\"",
                t.trim_start_matches("0o")
            ));
        return None;
    }
    if !octal {
        sink.error(e.value_pos(), &e.path, format!("{t:?} is not an octal file mode (e.g. \"0644\" or \"0600\")"));
        return None;
    }
    let mode = u32::from_str_radix(t, 8).unwrap_or(0);
    if mode & 0o7000 != 0 {
        // k3s passes the number to Go's os.FileMode and chmod, which drop setuid, setgid and
        // sticky given this way: "7777" would silently become 0777.
        sink.error(
            e.value_pos(),
            &e.path,
            format!("file mode {t:?} sets setuid, setgid or sticky bits, which k3s drops"),
        )
        .hint("a kubeconfig mode is three permission digits, e.g. \"0600\" or \"0640\"");
        return None;
    }
    if mode & 0o002 != 0 {
        sink.error(e.value_pos(), &e.path, format!("file mode {t:?} makes the admin kubeconfig writable by every user on the server"))
            .hint("anyone who can rewrite it can point kubectl at their own server; use \"0600\", or \"0640\" with write-kubeconfig-group");
        return None;
    }
    Some(Value::String(t.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_unique_and_disjoint_from_managed() {
        for pair in KEYS.windows(2) {
            assert!(pair[0].name < pair[1].name, "{} / {}", pair[0].name, pair[1].name);
        }
        for (m, _) in MANAGED.iter().chain(DEPRECATED) {
            assert!(key_spec(m).is_none(), "{m} is both refused and accepted");
        }
        assert!(is_secret("datastore-endpoint") && is_secret("etcd-s3-secret-key") && !is_secret("cluster-cidr"));
    }

    #[test]
    fn the_helper_masks_exactly_the_keys_the_table_calls_secret() {
        for k in KEYS {
            let masked = crate::protocol::secret::secret_config_key(k.name);
            assert_eq!(
                masked, k.secret,
                "{}: the table says secret={}, the helper's masking {masked}",
                k.name, k.secret
            );
        }
    }

    #[test]
    fn contract_keys_are_known_or_managed() {
        // k3s-contract.md section 3.
        for k in [
            "cluster-cidr",
            "service-cidr",
            "cluster-dns",
            "cluster-domain",
            "tls-san",
            "node-ip",
            "node-external-ip",
            "disable",
            "flannel-backend",
            "flannel-iface",
            "write-kubeconfig-mode",
            "data-dir",
            "kubelet-arg",
            "kube-apiserver-arg",
            "etcd-snapshot-schedule-cron",
            "etcd-snapshot-retention",
            "etcd-snapshot-dir",
            "secrets-encryption",
        ] {
            assert!(key_spec(k).is_some(), "{k}");
        }
        for k in [
            "node-name",
            "node-label",
            "node-taint",
            "token",
            "token-file",
            "agent-token",
            "server",
            "cluster-init",
            "cluster-reset",
            "cluster-reset-restore-path",
        ] {
            assert!(MANAGED.iter().any(|(m, _)| *m == k), "{k}");
        }
    }

    #[test]
    fn durations_as_go_reads_them() {
        for ok in ["5m0s", "30s", "1h30m", "0", "1.5h", "300ms", "-1s", "2\u{b5}s"] {
            assert!(go_duration(ok), "{ok}");
        }
        for bad in ["", "5", "m", "5 m", "1.2.3s", "5min", "s5", "+"] {
            assert!(!go_duration(bad), "{bad}");
        }
    }

    #[test]
    fn keys_of_the_current_k3s_are_accepted_with_their_types() {
        let (r, errs) = read_text(
            "supervisor-metrics: true\nkine-tls: false\netcd-s3-timeout: 5m0s\nservice-node-port-range: 30000-32767\n\
             disable-apiserver-lb: true\nbind-address: 10.0.0.1\n",
        );
        assert_eq!(errs, "");
        assert_eq!(r.values["supervisor-metrics"], serde_json::json!(true));
        assert_eq!(r.values["etcd-s3-timeout"], serde_json::json!("5m0s"));
        assert_eq!(key_spec("disable-apiserver-lb").map(|k| k.scope), Some(Scope::Agent));
        assert_eq!(key_spec("bind-address").map(|k| k.scope), Some(Scope::All));
        let (_, errs) = read_text(
            "etcd-s3-timeout: 5\nservice-node-port-range: 32767-30000\nkube-controller-arg: [a]\nno-deploy: [traefik]\nconfig: /x\n",
        );
        assert!(errs.contains("config.etcd-s3-timeout: \"5\" is not a duration"), "{errs}");
        assert!(errs.contains("\"32767-30000\" is not a port range"), "{errs}");
        assert!(
            errs.contains(
                "`kube-controller-arg` is a deprecated k3s flag\n  hint: write `kube-controller-manager-arg`"
            ),
            "{errs}"
        );
        assert!(errs.contains("`no-deploy` is a deprecated k3s flag"), "{errs}");
        assert!(errs.contains("config.config: `config` is managed by k3node"), "{errs}");
    }

    fn read_text(yaml: &str) -> (ConfigRead, String) {
        let node =
            marked_yaml::parse_yaml_with_options(0, yaml, marked_yaml::LoaderOptions::default().prevent_coercion(true))
                .expect("test yaml parses");
        let map = node.as_mapping().expect("mapping");
        let mut sink = Sink::new("t.yaml");
        let r = read(&mut sink, map, "config");
        (r, sink.finish().to_string())
    }

    #[test]
    fn values_are_typed_and_normalized() {
        let (r, errs) = read_text(
            "disable: traefik\ncluster-cidr: [10.42.0.0/16, 'fd00:42::/56']\nsecrets-encryption: true\n\
             etcd-snapshot-retention: 5\nwrite-kubeconfig-mode: \"0644\"\nkubelet-arg: max-pods=200\n",
        );
        assert_eq!(errs, "");
        assert_eq!(r.values["disable"], serde_json::json!(["traefik"]));
        assert_eq!(r.values["cluster-cidr"], serde_json::json!("10.42.0.0/16,fd00:42::/56"));
        assert_eq!(r.values["secrets-encryption"], serde_json::json!(true));
        assert_eq!(r.values["etcd-snapshot-retention"], serde_json::json!(5));
        assert_eq!(r.values["write-kubeconfig-mode"], serde_json::json!("0644"));
        assert_eq!(r.values["kubelet-arg"], serde_json::json!(["max-pods=200"]));
    }

    #[test]
    fn wrong_values_are_reported() {
        let (r, errs) = read_text(
            "write-kubeconfig-mode: 0644\nselinux: yes\ndisable: [traefik, treafik]\nflannel-backend: wireguard\n\
             cluster-cidr: 10.42.0.0\nservice-cidr: 10.43.0.0/16,10.44.0.0/16\ntoken: abc\nkube-apiserver-arg+: [a]\n\
             cluster-cdir: 10.42.0.0/16\n",
        );
        assert!(errs.contains("t.yaml:1:24: config.write-kubeconfig-mode: file mode 0644 must be quoted"), "{errs}");
        assert!(errs.contains("420 in YAML 1.1"), "{errs}");
        assert!(errs.contains("config.selinux: must be true or false"), "{errs}");
        assert!(errs.contains("t.yaml:3:20: config.disable[1]: \"treafik\" is not one of"), "{errs}");
        assert!(errs.contains("did you mean `traefik`?"), "{errs}");
        assert!(errs.contains("did you mean `wireguard-native`?"), "{errs}");
        assert!(errs.contains("is an address, not a CIDR"), "{errs}");
        assert!(errs.contains("at most one IPv4 and one IPv6 CIDR"), "{errs}");
        assert!(errs.contains("t.yaml:7:1: config.token: `token` is managed by k3node"), "{errs}");
        assert!(errs.contains("config.kube-apiserver-arg+"), "{errs}");
        assert!(errs.contains("unknown k3s config key `cluster-cdir`, did you mean `cluster-cidr`?"), "{errs}");
        assert!(r.invalid.contains("cluster-cidr") && r.invalid.contains("service-cidr"));
        assert!(r.values.is_empty(), "{:?}", r.values);
    }
}
