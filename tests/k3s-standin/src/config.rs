//! k3s's configuration sources and their precedence, as the contract (section 3) describes:
//! CLI flags > config.yaml.d drop-ins (name order, last wins, `key+:` appends) > config.yaml
//! > `K3S_*` environment variables > built-in defaults.
//!
//! The files become flags, so a key the subcommand does not know is skipped with k3s's warning
//! (`Unknown flag --foo found in config.yaml, skipping`), while an unknown flag on the command
//! line is an error, as with urfave/cli.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG: &str = "/etc/rancher/k3s/config.yaml";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/rancher/k3s";
pub const DEFAULT_KUBECONFIG: &str = "/etc/rancher/k3s/k3s.yaml";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Bool,
    Str,
    List,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Cmd {
    Server,
    Agent,
    /// `k3s etcd-snapshot save|ls|delete|prune`: a client of a running server's `/db/snapshot`.
    EtcdSnapshot,
}

impl Cmd {
    pub fn name(self) -> &'static str {
        match self {
            Cmd::Server => "server",
            Cmd::Agent => "agent",
            Cmd::EtcdSnapshot => "etcd-snapshot",
        }
    }
}

pub struct Flag {
    pub name: &'static str,
    pub kind: Kind,
    pub short: Option<&'static str>,
    pub env: &'static [&'static str],
}

const fn f(name: &'static str, kind: Kind) -> Flag {
    Flag { name, kind, short: None, env: &[] }
}
const fn fe(name: &'static str, kind: Kind, env: &'static [&'static str]) -> Flag {
    Flag { name, kind, short: None, env }
}
const fn fs(name: &'static str, kind: Kind, short: &'static str, env: &'static [&'static str]) -> Flag {
    Flag { name, kind, short: Some(short), env }
}

use Kind::{Bool as B, List as L, Str as S};

/// Flags of both `k3s server` and `k3s agent`.
static COMMON: &[Flag] = &[
    fs("config", S, "c", &["K3S_CONFIG_FILE"]),
    fe("debug", B, &["K3S_DEBUG"]),
    f("v", S),
    f("vmodule", S),
    fs("log", S, "l", &[]),
    f("alsologtostderr", B),
    fs("data-dir", S, "d", &["K3S_DATA_DIR"]),
    fs("token", S, "t", &["K3S_TOKEN"]),
    fe("token-file", S, &["K3S_TOKEN_FILE"]),
    fs("server", S, "s", &["K3S_URL"]),
    fe("node-name", S, &["K3S_NODE_NAME"]),
    f("with-node-id", B),
    f("node-label", L),
    f("node-taint", L),
    f("image-credential-provider-bin-dir", S),
    f("image-credential-provider-config", S),
    f("docker", B),
    f("container-runtime-endpoint", S),
    f("default-runtime", S),
    f("image-service-endpoint", S),
    f("disable-default-registry-endpoint", B),
    f("nonroot-devices", B),
    f("pause-image", S),
    f("snapshotter", S),
    f("private-registry", S),
    f("system-default-registry", S),
    fs("node-ip", L, "i", &[]),
    f("node-external-ip", L),
    f("node-internal-dns", L),
    f("node-external-dns", L),
    fe("resolv-conf", S, &["K3S_RESOLV_CONF"]),
    f("flannel-iface", S),
    f("flannel-conf", S),
    f("flannel-cni-conf", S),
    f("kubelet-arg", L),
    f("kube-proxy-arg", L),
    f("protect-kernel-defaults", B),
    fe("selinux", B, &["K3S_SELINUX"]),
    fe("lb-server-port", S, &["K3S_LB_SERVER_PORT"]),
    f("rootless", B),
    f("prefer-bundled-bin", B),
    fe("vpn-auth", S, &["K3S_VPN_AUTH"]),
    fe("vpn-auth-file", S, &["K3S_VPN_AUTH_FILE"]),
    f("enable-pprof", B),
    f("airgap-extra-registry", L),
];

static AGENT_ONLY: &[Flag] = &[f("disable-apiserver-lb", B), f("bind-address", S)];

static SERVER_ONLY: &[Flag] = &[
    f("bind-address", S),
    f("advertise-address", S),
    f("advertise-port", S),
    f("https-listen-port", S),
    f("supervisor-port", S),
    f("apiserver-port", S),
    f("apiserver-bind-address", S),
    f("tls-san", L),
    f("tls-san-security", B),
    f("cluster-cidr", L),
    f("service-cidr", L),
    f("service-node-port-range", S),
    f("cluster-dns", L),
    f("cluster-domain", S),
    f("flannel-backend", S),
    f("flannel-ipv6-masq", B),
    f("flannel-external-ip", B),
    f("egress-selector-mode", S),
    f("servicelb-namespace", S),
    fs("write-kubeconfig", S, "o", &["K3S_KUBECONFIG_OUTPUT"]),
    fe("write-kubeconfig-mode", S, &["K3S_KUBECONFIG_MODE"]),
    fe("write-kubeconfig-group", S, &["K3S_KUBECONFIG_GROUP"]),
    f("helm-job-image", S),
    fe("agent-token", S, &["K3S_AGENT_TOKEN"]),
    fe("agent-token-file", S, &["K3S_AGENT_TOKEN_FILE"]),
    fe("cluster-init", B, &["K3S_CLUSTER_INIT"]),
    fe("cluster-reset", B, &["K3S_CLUSTER_RESET"]),
    f("cluster-reset-restore-path", S),
    f("kube-apiserver-arg", L),
    f("etcd-arg", L),
    f("kube-controller-manager-arg", L),
    f("kube-scheduler-arg", L),
    f("kube-cloud-controller-manager-arg", L),
    f("kine-tls", B),
    fe("datastore-endpoint", S, &["K3S_DATASTORE_ENDPOINT"]),
    fe("datastore-cafile", S, &["K3S_DATASTORE_CAFILE"]),
    fe("datastore-certfile", S, &["K3S_DATASTORE_CERTFILE"]),
    fe("datastore-keyfile", S, &["K3S_DATASTORE_KEYFILE"]),
    f("etcd-expose-metrics", B),
    f("etcd-disable-snapshots", B),
    f("etcd-snapshot-name", S),
    f("etcd-snapshot-schedule-cron", S),
    f("etcd-snapshot-retention", S),
    f("etcd-snapshot-dir", S),
    f("etcd-snapshot-compress", B),
    f("etcd-s3", B),
    f("etcd-s3-endpoint", S),
    f("etcd-s3-endpoint-ca", S),
    f("etcd-s3-skip-ssl-verify", B),
    f("etcd-s3-access-key", S),
    f("etcd-s3-secret-key", S),
    f("etcd-s3-bucket", S),
    f("etcd-s3-region", S),
    f("etcd-s3-folder", S),
    f("etcd-s3-proxy", S),
    f("etcd-s3-config-secret", S),
    f("etcd-s3-insecure", B),
    f("etcd-s3-timeout", S),
    f("default-local-storage-path", S),
    f("disable", L),
    f("disable-scheduler", B),
    f("disable-cloud-controller", B),
    f("disable-kube-proxy", B),
    f("disable-network-policy", B),
    f("disable-helm-controller", B),
    f("disable-apiserver", B),
    f("disable-controller-manager", B),
    f("disable-etcd", B),
    f("disable-agent", B),
    f("embedded-registry", B),
    f("supervisor-metrics", B),
    f("secrets-encryption", B),
    f("secrets-encryption-provider", S),
];

/// Flags of `k3s etcd-snapshot` and its subcommands (the `--etcd-` prefix of the server's
/// snapshot flags may be left out there, as in k3s).
static ETCD_SNAPSHOT: &[Flag] = &[
    fs("config", S, "c", &["K3S_CONFIG_FILE"]),
    fe("debug", B, &["K3S_DEBUG"]),
    fs("log", S, "l", &[]),
    f("alsologtostderr", B),
    fs("data-dir", S, "d", &["K3S_DATA_DIR"]),
    fe("node-name", S, &["K3S_NODE_NAME"]),
    fs("etcd-token", S, "t", &[]),
    fs("etcd-server", S, "s", &[]),
    f("name", S),
    f("dir", S),
    f("etcd-snapshot-dir", S),
    f("snapshot-compress", B),
    f("etcd-snapshot-compress", B),
    f("snapshot-retention", S),
    f("o", S),
    f("output", S),
];

pub fn flags(cmd: Cmd) -> impl Iterator<Item = &'static Flag> {
    let (common, extra): (&'static [Flag], &'static [Flag]) = match cmd {
        Cmd::Server => (COMMON, SERVER_ONLY),
        Cmd::Agent => (COMMON, AGENT_ONLY),
        Cmd::EtcdSnapshot => (ETCD_SNAPSHOT, &[]),
    };
    common.iter().chain(extra.iter())
}

pub fn lookup(cmd: Cmd, name: &str) -> Option<&'static Flag> {
    flags(cmd).find(|f| f.name == name)
}

fn lookup_short(cmd: Cmd, name: &str) -> Option<&'static Flag> {
    flags(cmd).find(|f| f.short == Some(name))
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Bool(bool),
    Str(String),
    List(Vec<String>),
}

#[derive(Debug, Default)]
pub struct Config {
    values: BTreeMap<String, Value>,
    /// Where each value came from (for debugging): cli, file path, env NAME.
    pub sources: BTreeMap<String, String>,
    /// Warnings to log (unknown keys in the files).
    pub warnings: Vec<String>,
    /// Files read, in order.
    pub files: Vec<PathBuf>,
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "t" | "yes" => Some(true),
        "false" | "0" | "f" | "no" | "" => Some(false),
        _ => None,
    }
}

fn yaml_scalar(v: &serde_yaml_ng::Value) -> Option<String> {
    use serde_yaml_ng::Value as Y;
    match v {
        Y::String(s) => Some(s.clone()),
        Y::Number(n) => Some(n.to_string()),
        Y::Bool(b) => Some(b.to_string()),
        Y::Null => Some(String::new()),
        Y::Tagged(t) => yaml_scalar(&t.value),
        _ => None,
    }
}

fn yaml_to_value(flag: &Flag, v: &serde_yaml_ng::Value) -> Result<Value, String> {
    use serde_yaml_ng::Value as Y;
    let list = |v: &Y| -> Result<Vec<String>, String> {
        match v {
            Y::Sequence(items) => {
                items.iter().map(|i| yaml_scalar(i).ok_or_else(|| format!("invalid value for {}", flag.name))).collect()
            }
            other => Ok(vec![yaml_scalar(other).ok_or_else(|| format!("invalid value for {}", flag.name))?]),
        }
    };
    match flag.kind {
        Kind::Bool => match v {
            Y::Bool(b) => Ok(Value::Bool(*b)),
            other => {
                let s = yaml_scalar(other).unwrap_or_default();
                parse_bool(&s).map(Value::Bool).ok_or_else(|| format!("invalid boolean value {s:?} for {}", flag.name))
            }
        },
        Kind::Str => Ok(Value::Str(list(v)?.join(","))),
        Kind::List => Ok(Value::List(list(v)?)),
    }
}

/// Reads config.yaml then its drop-ins into `values`. Missing files are fine unless `required`.
fn read_files(cmd: Cmd, config: &Path, required: bool, cfg: &mut Config) -> Result<BTreeMap<String, Value>, String> {
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    let mut files = Vec::new();
    if config.exists() {
        files.push(config.to_path_buf());
    } else if required {
        return Err(format!("open {}: no such file or directory", config.display()));
    }
    let dropin_dir = PathBuf::from(format!("{}.d", config.display()));
    if let Ok(rd) = std::fs::read_dir(&dropin_dir) {
        let mut names: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml") | Some("yml")))
            .collect();
        names.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        files.extend(names);
    }
    for file in &files {
        let text = std::fs::read_to_string(file).map_err(|e| format!("failed to read {}: {e}", file.display()))?;
        if text.trim().is_empty() {
            continue;
        }
        let doc: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&text).map_err(|e| format!("failed to parse {}: {e}", file.display()))?;
        let map = match doc {
            serde_yaml_ng::Value::Mapping(m) => m,
            serde_yaml_ng::Value::Null => continue,
            _ => return Err(format!("failed to parse {}: not a map of flags", file.display())),
        };
        for (k, v) in map {
            let Some(key) = yaml_scalar(&k) else { continue };
            let (name, append) = match key.strip_suffix('+') {
                Some(n) => (n.to_string(), true),
                None => (key.clone(), false),
            };
            let Some(flag) = lookup(cmd, &name) else {
                cfg.warnings.push(format!("Unknown flag --{name} found in config.yaml, skipping"));
                continue;
            };
            let value = match yaml_to_value(flag, &v) {
                Ok(v) => v,
                Err(e) => {
                    cfg.warnings.push(format!("{e} in {}, skipping", file.display()));
                    continue;
                }
            };
            let value = match (append, out.remove(&name), value) {
                (true, Some(Value::List(mut old)), Value::List(new)) => {
                    old.extend(new);
                    Value::List(old)
                }
                (true, Some(Value::Str(old)), Value::Str(new)) if !old.is_empty() => Value::Str(format!("{old},{new}")),
                (_, _, v) => v,
            };
            cfg.sources.insert(name.clone(), file.display().to_string());
            out.insert(name, value);
        }
    }
    cfg.files = files;
    Ok(out)
}

/// Parses the subcommand's arguments (urfave/cli style: `--flag value`, `--flag=value`, `-f value`,
/// repeatable list flags, bare booleans).
fn parse_cli(cmd: Cmd, args: &[String]) -> Result<BTreeMap<String, Value>, String> {
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            if i < args.len() {
                return Err(format!("unexpected argument {:?}", args[i]));
            }
            break;
        }
        let Some(stripped) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')).filter(|s| !s.is_empty()) else {
            return Err(format!("unexpected argument {arg:?}"));
        };
        let (name, inline) = match stripped.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (stripped, None),
        };
        let flag = lookup(cmd, name)
            .or_else(|| lookup_short(cmd, name))
            .ok_or_else(|| format!("flag provided but not defined: -{name}"))?;
        let value = match flag.kind {
            Kind::Bool => match inline {
                Some(v) => {
                    Value::Bool(parse_bool(&v).ok_or_else(|| format!("invalid boolean value {v:?} for -{name}"))?)
                }
                None => Value::Bool(true),
            },
            _ => {
                let v = match inline {
                    Some(v) => v,
                    None => {
                        let v = args.get(i).cloned().ok_or_else(|| format!("flag needs an argument: -{name}"))?;
                        i += 1;
                        v
                    }
                };
                if flag.kind == Kind::List {
                    match out.remove(flag.name) {
                        Some(Value::List(mut old)) => {
                            old.push(v);
                            Value::List(old)
                        }
                        _ => Value::List(vec![v]),
                    }
                } else {
                    Value::Str(v)
                }
            }
        };
        out.insert(flag.name.to_string(), value);
    }
    Ok(out)
}

impl Config {
    /// Resolves all sources. `env` looks up an environment variable; `default_config` is where
    /// config.yaml is looked for when neither `--config` nor `K3S_CONFIG_FILE` says.
    pub fn resolve(
        cmd: Cmd,
        args: &[String],
        env: &dyn Fn(&str) -> Option<String>,
        default_config: &Path,
    ) -> Result<Config, String> {
        let mut cfg = Config::default();
        let cli = parse_cli(cmd, args)?;
        let env_nonempty = |n: &str| env(n).filter(|v| !v.is_empty());
        let (config_path, required) = match cli.get("config") {
            Some(Value::Str(p)) => (PathBuf::from(p), true),
            _ => match env_nonempty("K3S_CONFIG_FILE") {
                Some(p) => (PathBuf::from(p), false),
                None => (default_config.to_path_buf(), false),
            },
        };
        // Lowest first: environment.
        for flag in flags(cmd) {
            for name in flag.env {
                if let Some(v) = env_nonempty(name) {
                    let value = match flag.kind {
                        Kind::Bool => Value::Bool(parse_bool(&v).unwrap_or(false)),
                        Kind::Str => Value::Str(v),
                        Kind::List => Value::List(vec![v]),
                    };
                    cfg.sources.insert(flag.name.to_string(), format!("env {name}"));
                    cfg.values.insert(flag.name.to_string(), value);
                    break;
                }
            }
        }
        let files = read_files(cmd, &config_path, required, &mut cfg)?;
        cfg.values.extend(files);
        for (k, v) in cli {
            cfg.sources.insert(k.clone(), "cli".into());
            cfg.values.insert(k, v);
        }
        Ok(cfg)
    }

    pub fn str(&self, name: &str) -> Option<String> {
        match self.values.get(name)? {
            Value::Str(s) if !s.is_empty() => Some(s.clone()),
            Value::List(l) if !l.is_empty() => Some(l.join(",")),
            _ => None,
        }
    }

    pub fn str_or(&self, name: &str, default: &str) -> String {
        self.str(name).unwrap_or_else(|| default.to_string())
    }

    pub fn bool(&self, name: &str) -> bool {
        matches!(self.values.get(name), Some(Value::Bool(true)))
    }

    pub fn list(&self, name: &str) -> Vec<String> {
        match self.values.get(name) {
            Some(Value::List(l)) => l.clone(),
            Some(Value::Str(s)) if !s.is_empty() => vec![s.clone()],
            _ => vec![],
        }
    }

    /// A list flag whose items may also be comma-separated (`--disable traefik,servicelb`).
    pub fn list_split(&self, name: &str) -> Vec<String> {
        self.list(name)
            .iter()
            .flat_map(|s| s.split(','))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }

    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(self.str_or("data-dir", DEFAULT_DATA_DIR))
    }

    /// token / token-file (k3s reads the file and trims it).
    pub fn token(&self, key: &str, file_key: &str) -> Result<Option<String>, String> {
        if let Some(t) = self.str(key) {
            return Ok(Some(t.trim().to_string()));
        }
        if let Some(path) = self.str(file_key) {
            let t = std::fs::read_to_string(&path).map_err(|e| format!("failed to read token file {path}: {e}"))?;
            let t = t.trim().to_string();
            if !t.is_empty() {
                return Ok(Some(t));
            }
        }
        Ok(None)
    }
}

pub fn usage(cmd: Cmd) -> String {
    let mut s = format!(
        "NAME:\n   k3s {} - Run management {}\n\nUSAGE:\n   k3s {} [OPTIONS]\n\nOPTIONS:\n",
        cmd.name(),
        cmd.name(),
        cmd.name()
    );
    for f in flags(cmd) {
        let short = f.short.map(|s| format!(", -{s}")).unwrap_or_default();
        let val = match f.kind {
            Kind::Bool => "",
            _ => " value",
        };
        let env = if f.env.is_empty() { String::new() } else { format!(" [${}]", f.env.join(", $")) };
        s.push_str(&format!("   --{}{short}{val}{env}\n", f.name));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn precedence_files_dropins_cli_env() {
        let dir = tempfile::tempdir().unwrap();
        let cfgp = dir.path().join("config.yaml");
        std::fs::write(
            &cfgp,
            "cluster-cidr: 10.10.0.0/16\nnode-label:\n  - a=1\nnode-taint: [t=1:NoSchedule]\ntls-san: [one]\ntoken: fromfile\nwrite-kubeconfig-mode: \"0644\"\nfoo-bar: 1\n",
        )
        .unwrap();
        let d = dir.path().join("config.yaml.d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("10-a.yaml"), "cluster-cidr: 10.20.0.0/16\nnode-label+: [b=2]\ntls-san: [two]\n")
            .unwrap();
        std::fs::write(d.join("20-b.yml"), "cluster-cidr: 10.30.0.0/16\nnode-label+:\n  - c=3\n").unwrap();
        std::fs::write(d.join("30-ignored.txt"), "cluster-cidr: 1.2.3.0/24\n").unwrap();
        let env = |n: &str| match n {
            "K3S_TOKEN" => Some("fromenv".to_string()),
            "K3S_NODE_NAME" => Some("envnode".to_string()),
            "K3S_KUBECONFIG_MODE" => Some("600".to_string()),
            _ => None,
        };
        let cfg = Config::resolve(
            Cmd::Server,
            &args(&["--config", cfgp.to_str().unwrap(), "--node-taint", "x=y:NoExecute", "--cluster-init"]),
            &env,
            Path::new("/nonexistent"),
        )
        .unwrap();
        assert_eq!(cfg.str("cluster-cidr").as_deref(), Some("10.30.0.0/16"), "last drop-in wins");
        assert_eq!(cfg.list("node-label"), vec!["a=1", "b=2", "c=3"], "key+ appends");
        assert_eq!(cfg.list("tls-san"), vec!["two"], "plain key replaces a list");
        assert_eq!(cfg.list("node-taint"), vec!["x=y:NoExecute"], "cli beats files");
        assert_eq!(cfg.str("token").as_deref(), Some("fromfile"), "files beat env");
        assert_eq!(cfg.str("node-name").as_deref(), Some("envnode"), "env applies when nothing else sets it");
        assert_eq!(cfg.str("write-kubeconfig-mode").as_deref(), Some("0644"));
        assert!(cfg.bool("cluster-init"));
        assert_eq!(cfg.warnings, vec!["Unknown flag --foo-bar found in config.yaml, skipping".to_string()]);
        assert_eq!(cfg.files.len(), 3);
    }

    #[test]
    fn cli_forms_and_errors() {
        let none = |_: &str| None;
        let cfg = Config::resolve(
            Cmd::Agent,
            &args(&["-s", "https://x:6443", "--token=abc", "--node-label", "a=b", "--node-label=c=d", "--debug=false"]),
            &none,
            Path::new("/nonexistent"),
        )
        .unwrap();
        assert_eq!(cfg.str("server").as_deref(), Some("https://x:6443"));
        assert_eq!(cfg.str("token").as_deref(), Some("abc"));
        assert_eq!(cfg.list("node-label"), vec!["a=b", "c=d"]);
        assert!(!cfg.bool("debug"));
        let err = Config::resolve(Cmd::Agent, &args(&["--cluster-init"]), &none, Path::new("/x")).unwrap_err();
        assert_eq!(err, "flag provided but not defined: -cluster-init");
        let err = Config::resolve(Cmd::Server, &args(&["--config", "/nonexistent/c.yaml"]), &none, Path::new("/x"))
            .unwrap_err();
        assert!(err.contains("no such file"), "{err}");
    }

    #[test]
    fn unquoted_modes_keep_their_digits() {
        let dir = tempfile::tempdir().unwrap();
        let cfgp = dir.path().join("config.yaml");
        let none = |_: &str| None;
        for (text, want) in [("0644", "0644"), ("644", "644"), ("\"0600\"", "0600")] {
            std::fs::write(&cfgp, format!("write-kubeconfig-mode: {text}\n")).unwrap();
            let cfg = Config::resolve(Cmd::Server, &[], &none, &cfgp).unwrap();
            assert_eq!(cfg.str("write-kubeconfig-mode").as_deref(), Some(want), "{text}");
        }
    }

    #[test]
    fn server_only_keys_warn_for_agent() {
        let dir = tempfile::tempdir().unwrap();
        let cfgp = dir.path().join("config.yaml");
        std::fs::write(&cfgp, "cluster-cidr: 10.10.0.0/16\nnode-ip: 10.1.1.1\n").unwrap();
        let none = |_: &str| None;
        let cfg = Config::resolve(Cmd::Agent, &[], &none, &cfgp).unwrap();
        assert_eq!(cfg.list("node-ip"), vec!["10.1.1.1"]);
        assert_eq!(cfg.warnings, vec!["Unknown flag --cluster-cidr found in config.yaml, skipping".to_string()]);
    }
}
