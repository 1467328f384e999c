//! Software on the host: commands k3s and the kubelet call, runtimes and Kubernetes
//! distributions that conflict with k3s, and an installed k3s (no downgrades).

use std::cmp::Ordering;
use std::fmt;
use std::path::{Path, PathBuf};

use super::{fail, pass, warn, Host, K3S_BIN};
use crate::protocol::preflight::{Check, PreflightRequest, Role, Status};

struct RequiredCommand {
    name: &'static str,
    when_missing: Status,
    why: &'static str,
    package: &'static str,
}

const COMMANDS: &[RequiredCommand] = &[
    RequiredCommand {
        name: "mount",
        when_missing: Status::Fail,
        why: "the kubelet mounts volumes with it",
        package: "util-linux",
    },
    RequiredCommand {
        name: "umount",
        when_missing: Status::Fail,
        why: "the kubelet unmounts volumes with it",
        package: "util-linux",
    },
    RequiredCommand {
        name: "nsenter",
        when_missing: Status::Fail,
        why: "the kubelet enters pod namespaces with it (port-forward, exec probes)",
        package: "util-linux",
    },
    RequiredCommand {
        name: "modprobe",
        when_missing: Status::Warn,
        why:
            "k3s's unit loads overlay and br_netfilter with it; without it they must be built in or loaded another way",
        package: "kmod",
    },
    RequiredCommand {
        name: "ip",
        when_missing: Status::Warn,
        why: "k3s itself does not need it, but k3s-killall.sh and network troubleshooting do",
        package: "iproute2",
    },
    RequiredCommand {
        name: "iptables",
        when_missing: Status::Warn,
        why: "k3s then uses the iptables it ships in its data dir (/var/lib/rancher/k3s/data/current/bin/aux)",
        package: "iptables",
    },
];

pub(super) fn checks(host: &Host, req: &PreflightRequest) -> Vec<Check> {
    let mut checks: Vec<Check> = COMMANDS.iter().map(|c| command(host, c)).collect();
    checks.push(conflicting_runtimes(host));
    checks.push(k3s_installed(host, req));
    checks.push(config_dropins(host));
    checks
}

// ---- config drop-ins ----

/// k3s reads /etc/rancher/k3s/config.yaml.d/*.yaml after config.yaml and lets them win; k3node
/// writes none, so any there changes what k3s runs with behind the cluster file's back.
fn config_dropins(host: &Host) -> Check {
    let dir = crate::host::k3s::layout::CONFIG_DROPIN_DIR;
    let mut names: Vec<String> = host
        .sys
        .read_dir_names(std::path::Path::new(dir))
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    if names.is_empty() {
        return pass("config-dropins", format!("no drop-ins in {dir}"));
    }
    names.sort();
    let described: Vec<String> = names
        .iter()
        .map(|name| {
            let text = host.read(&format!("{dir}/{name}")).unwrap_or_default();
            let keys: Vec<String> = match serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text) {
                Ok(serde_yaml_ng::Value::Mapping(map)) => {
                    map.keys().filter_map(|k| k.as_str()).map(|k| k.trim_end_matches('+').to_string()).collect()
                }
                _ => vec!["(not a YAML mapping)".into()],
            };
            format!("{name} ({})", keys.join(", "))
        })
        .collect();
    warn(
        "config-dropins",
        format!(
            "{dir} holds files k3node did not write, and k3s lets them override config.yaml: {}",
            described.join("; ")
        ),
        "move their settings into the cluster file (spec.k3s.config) and remove the files, or keep them knowingly",
    )
}

// ---- commands ----

fn command(host: &Host, cmd: &RequiredCommand) -> Check {
    let id = format!("command-{}", cmd.name);
    let Some(path) = host.sys.find_command(cmd.name) else {
        let reason = format!("{} not found in PATH or the sbin directories: {}", cmd.name, cmd.why);
        let fix = format!("install the {} package (apt-get install {0} / dnf install {0})", cmd.package);
        return match cmd.when_missing {
            Status::Warn => warn(id, reason, fix),
            _ => fail(id, reason, fix),
        };
    };
    if cmd.name == "iptables" {
        return iptables(host, id, &path);
    }
    pass(id, path.display().to_string())
}

/// iptables 1.8.0 to 1.8.3 in nf_tables mode mangle kube-proxy's rules (k3s check-config).
fn iptables(host: &Host, id: String, path: &Path) -> Check {
    let Ok(out) = host.sys.run(path, &["--version"]) else {
        return pass(id, format!("{} (version unknown)", path.display()));
    };
    let line = out.stdout.lines().next().unwrap_or("").trim().to_string();
    // "iptables v1.8.9 (nf_tables)" / "iptables v1.8.7 (legacy)"
    let version = line.split_whitespace().find_map(|w| w.strip_prefix('v')).and_then(|v| {
        let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
        Some((parts.next()??, parts.next()??, parts.next().flatten().unwrap_or(0)))
    });
    let nft = line.contains("nf_tables");
    match version {
        Some((1, 8, patch)) if nft && patch <= 3 => warn(
            id,
            format!("{} is {line}: iptables 1.8.0-1.8.3 in nf_tables mode break kube-proxy's rules", path.display()),
            "upgrade iptables to 1.8.4 or newer, or switch to the legacy backend \
             (update-alternatives --set iptables /usr/sbin/iptables-legacy)",
        ),
        _ if line.is_empty() => pass(id, format!("{} (version unknown)", path.display())),
        _ => pass(id, format!("{} ({line})", path.display())),
    }
}

// ---- conflicting runtimes and distributions ----

fn first_existing<'a>(host: &Host, paths: &[&'a str]) -> Option<&'a str> {
    paths.iter().copied().find(|p| host.exists(p))
}

/// A kubelet that is not k3s's: k3s runs its kubelet in-process and installs no kubelet binary,
/// but a hand-made `kubelet -> k3s` link is harmless.
fn foreign_kubelet(host: &Host) -> Option<PathBuf> {
    let path = host.sys.find_command("kubelet")?;
    match host.sys.read_link(&path) {
        Ok(target) if target.file_name().is_some_and(|n| n == "k3s") => None,
        _ => Some(path),
    }
}

fn conflicting_runtimes(host: &Host) -> Check {
    const ID: &str = "conflicting-runtimes";
    let mut fails: Vec<String> = Vec::new();
    let mut warns: Vec<String> = Vec::new();
    let mut fixes: Vec<String> = Vec::new();

    let dockerd = host.sys.find_command("dockerd");
    let docker_sock = first_existing(host, &["/run/docker.sock", "/var/run/docker.sock"]);
    if dockerd.is_some() || docker_sock.is_some() {
        let seen: Vec<String> = dockerd
            .iter()
            .map(|p| format!("dockerd at {}", p.display()))
            .chain(docker_sock.map(|s| format!("{s} present")))
            .collect();
        warns.push(format!(
            "Docker is installed ({}): it runs beside k3s's own containerd, does not share its images, and both \
             program iptables",
            seen.join(", ")
        ));
        fixes.push(
            "to keep Docker is fine; to free its resources: systemctl disable --now docker.service docker.socket"
                .into(),
        );
    }
    if let Some(sock) = first_existing(host, &["/run/containerd/containerd.sock"]) {
        warns.push(format!(
            "a system containerd is running ({sock}); k3s runs its own at /run/k3s/containerd, so images are not shared"
        ));
        fixes.push(
            "import images with `k3node images import`; stop the system containerd if nothing else needs it".into(),
        );
    }
    if let Some(sock) = first_existing(host, &["/var/run/crio/crio.sock", "/run/crio/crio.sock"]) {
        warns.push(format!("CRI-O is running ({sock}); k3s uses its own containerd"));
        fixes.push("systemctl disable --now crio, unless another tool needs it".into());
    }

    if let Some(kubelet) = foreign_kubelet(host) {
        fails.push(format!(
            "a kubelet that is not k3s's is installed ({}): two kubelets fight over port 10250 and the node's cgroups",
            kubelet.display()
        ));
        fixes.push("kubeadm reset -f, then remove the kubelet package (apt-get purge kubelet kubeadm)".into());
    }
    let rke2 = host.sys.find_command("rke2").map(|p| p.display().to_string());
    if let Some(seen) =
        rke2.as_deref().or_else(|| first_existing(host, &["/etc/rancher/rke2", "/var/lib/rancher/rke2"]))
    {
        fails.push(format!("RKE2 is installed ({seen})"));
        fixes.push("uninstall RKE2: /usr/local/bin/rke2-uninstall.sh (or /usr/bin/rke2-uninstall.sh)".into());
    }
    let k0s = host.sys.find_command("k0s").map(|p| p.display().to_string());
    if let Some(seen) = k0s.as_deref().or_else(|| first_existing(host, &["/var/lib/k0s", "/etc/k0s"])) {
        fails.push(format!("k0s is installed ({seen})"));
        fixes.push("uninstall k0s: k0s stop && k0s reset".into());
    }
    let microk8s = host.sys.find_command("microk8s").map(|p| p.display().to_string());
    if let Some(seen) =
        microk8s.as_deref().or_else(|| first_existing(host, &["/snap/bin/microk8s", "/var/snap/microk8s"]))
    {
        fails.push(format!("MicroK8s is installed ({seen})"));
        fixes.push("snap remove --purge microk8s".into());
    }

    if !fails.is_empty() {
        let mut found = fails;
        found.extend(warns);
        fail(ID, format!("another Kubernetes is on this host: {}", found.join("; ")), fixes.join("; "))
    } else if !warns.is_empty() {
        warn(ID, warns.join("; "), fixes.join("; "))
    } else {
        pass(ID, "no Docker, system containerd, CRI-O or other Kubernetes distribution found")
    }
}

// ---- installed k3s ----

/// A k3s release version: `v1.31.4+k3s1`, `v1.32.0-rc2+k3s1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct K3sVersion {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    pub pre: Option<String>,
    /// The `+k3sN` revision; None when the string has none.
    pub k3s: Option<u64>,
}

impl K3sVersion {
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let s = s.strip_prefix('v').unwrap_or(s);
        let (core, build) = match s.split_once('+') {
            Some((core, build)) => (core, Some(build)),
            None => (s, None),
        };
        let (nums, pre) = match core.split_once('-') {
            Some((nums, pre)) if !pre.is_empty() => (nums, Some(pre.to_string())),
            Some(_) => return None,
            None => (core, None),
        };
        let mut parts = nums.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        let k3s = match build {
            Some(b) => Some(b.strip_prefix("k3s")?.parse().ok()?),
            None => None,
        };
        Some(K3sVersion { major, minor, patch, pre, k3s })
    }

    /// Release order: numbers first, a pre-release before its release, then the k3s revision
    /// (ignored when either side lacks one, so `v1.31.4` equals `v1.31.4+k3s2`).
    pub fn compare(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (&self.pre, &other.pre) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(a), Some(b)) => natural(a).cmp(&natural(b)),
            })
            .then_with(|| match (self.k3s, other.k3s) {
                (Some(a), Some(b)) => a.cmp(&b),
                _ => Ordering::Equal,
            })
    }
}

/// `rc10` after `rc2`: the letters, then the number.
fn natural(pre: &str) -> (String, u64) {
    let digits = pre.len() - pre.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (alpha, num) = pre.split_at(pre.len() - digits);
    (alpha.to_string(), num.parse().unwrap_or(0))
}

impl fmt::Display for K3sVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)?;
        if let Some(pre) = &self.pre {
            write!(f, "-{pre}")?;
        }
        if let Some(k3s) = self.k3s {
            write!(f, "+k3s{k3s}")?;
        }
        Ok(())
    }
}

/// The version from `k3s --version`: `k3s version v1.31.4+k3s1 (a1b2c3d4)`.
pub(super) fn parse_k3s_version_output(stdout: &str) -> Option<K3sVersion> {
    let first = stdout.lines().next()?;
    let mut words = first.split_whitespace();
    words.by_ref().find(|w| *w == "version")?;
    K3sVersion::parse(words.next()?)
}

const SERVER_UNIT: &str = "/etc/systemd/system/k3s.service";
const AGENT_UNIT: &str = "/etc/systemd/system/k3s-agent.service";

fn k3s_installed(host: &Host, req: &PreflightRequest) -> Check {
    const ID: &str = "k3s-installed";
    if !host.k3s_installed {
        return pass(ID, format!("k3s is not installed ({K3S_BIN} absent)"));
    }
    let installed = match host.sys.run(Path::new(K3S_BIN), &["--version"]) {
        Ok(out) if out.success() => match parse_k3s_version_output(&out.stdout) {
            Some(v) => v,
            None => {
                return warn(
                    ID,
                    format!(
                        "{K3S_BIN} is installed but `k3s --version` printed no version: {:?}",
                        out.stdout.lines().next().unwrap_or("")
                    ),
                    format!("check {K3S_BIN}; `k3node up` replaces it with a verified binary"),
                )
            }
        },
        Ok(out) => {
            return warn(
                ID,
                format!("{K3S_BIN} is installed but `k3s --version` failed: {}", out.failure_summary()),
                format!("check {K3S_BIN}; `k3node up` replaces it with a verified binary"),
            )
        }
        Err(e) => {
            return warn(
                ID,
                format!("{K3S_BIN} is installed but cannot be run: {e}"),
                format!("check {K3S_BIN}; `k3node up` replaces it with a verified binary"),
            )
        }
    };

    // Turning a server into an agent (or back) is a reinstall, not an upgrade.
    let (server_unit, agent_unit) = (host.exists(SERVER_UNIT), host.exists(AGENT_UNIT));
    let installed_role = match (server_unit, agent_unit) {
        (true, false) => Some(Role::Server),
        (false, true) => Some(Role::Agent),
        _ => None,
    };
    if let Some(installed_role) = installed_role.filter(|r| *r != req.role) {
        let (is, wanted) = match installed_role {
            Role::Server => ("a server (k3s.service)", "an agent"),
            Role::Agent => ("an agent (k3s-agent.service)", "a server"),
        };
        return fail(
            ID,
            format!("k3s {installed} is installed here as {is}, but cluster.yaml makes this host {wanted}"),
            "uninstall k3s from this host first (k3node reset), or change its role in cluster.yaml",
        );
    }

    let Some(requested) = req.k3s_version.as_deref() else {
        return pass(ID, format!("k3s {installed} is installed"));
    };
    let Some(wanted) = K3sVersion::parse(requested) else {
        return warn(
            ID,
            format!("k3s {installed} is installed; the requested version {requested:?} cannot be compared with it"),
            "request an exact k3s version such as v1.31.4+k3s1",
        );
    };
    match wanted.compare(&installed) {
        Ordering::Equal => pass(ID, format!("k3s {installed} is installed, the requested version")),
        Ordering::Greater => {
            let skipped = (wanted.major == installed.major)
                .then(|| wanted.minor.saturating_sub(installed.minor))
                .filter(|jump| *jump > 1);
            let mut reason = format!("k3s {installed} is installed and will be upgraded to {wanted}");
            if let Some(jump) = skipped {
                reason.push_str(&format!(
                    ", skipping {} minor version{}: Kubernetes supports upgrading one minor version at a time",
                    jump - 1,
                    if jump == 2 { "" } else { "s" }
                ));
            }
            warn(
                ID,
                reason,
                "nothing to do if intended: `k3node up` upgrades it (take a snapshot first: k3node snapshot create)",
            )
        }
        Ordering::Less => fail(
            ID,
            format!("k3s {installed} is installed, newer than the requested {wanted}: k3s does not support downgrades"),
            format!(
                "request {installed} or newer in cluster.yaml, or uninstall k3s from this host first (k3node reset)"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::host::system::fake::FakeSystem;

    fn run(sys: &FakeSystem, role: Role, version: Option<&str>) -> Vec<Check> {
        let mut req = request(role);
        req.k3s_version = version.map(String::from);
        checks(&host(sys), &req)
    }

    #[test]
    fn healthy_software_passes() {
        let checks = run(&healthy_host(), Role::Server, Some("v1.31.4+k3s1"));
        assert_eq!(find(&checks, "command-mount").reason, "/usr/bin/mount");
        assert_eq!(find(&checks, "command-iptables").reason, "/usr/sbin/iptables (iptables v1.8.9 (nf_tables))");
        assert_eq!(
            find(&checks, "conflicting-runtimes").reason,
            "no Docker, system containerd, CRI-O or other Kubernetes distribution found"
        );
        assert_eq!(find(&checks, "k3s-installed").reason, "k3s is not installed (/usr/local/bin/k3s absent)");
        assert!(checks.iter().all(|c| c.status == Status::Pass), "{checks:#?}");
    }

    #[test]
    fn missing_commands_fail_or_warn() {
        let sys = healthy_host().without_command("nsenter").without_command("iptables").without_command("ip");
        let checks = run(&sys, Role::Agent, None);
        let nsenter = find(&checks, "command-nsenter");
        assert_eq!(nsenter.status, Status::Fail);
        assert!(nsenter.fix.as_deref().unwrap().contains("util-linux"));
        let iptables = find(&checks, "command-iptables");
        assert_eq!(iptables.status, Status::Warn);
        assert!(iptables.reason.contains("iptables it ships in its data dir"), "{iptables:?}");
        assert_eq!(find(&checks, "command-ip").status, Status::Warn);
    }

    #[test]
    fn broken_nft_iptables_warns() {
        let sys = healthy_host().output("/usr/sbin/iptables", &["--version"], 0, "iptables v1.8.2 (nf_tables)\n", "");
        let c = run(&sys, Role::Agent, None);
        assert_eq!(find(&c, "command-iptables").status, Status::Warn);
        let legacy = healthy_host().output("/usr/sbin/iptables", &["--version"], 0, "iptables v1.8.2 (legacy)\n", "");
        assert_eq!(find(&run(&legacy, Role::Agent, None), "command-iptables").status, Status::Pass);
    }

    #[test]
    fn docker_and_containerd_warn() {
        let sys = healthy_host()
            .command("dockerd", "/usr/bin/dockerd")
            .file("/run/docker.sock", "")
            .file("/run/containerd/containerd.sock", "");
        let checks = run(&sys, Role::Agent, None);
        let c = find(&checks, "conflicting-runtimes");
        assert_eq!(c.status, Status::Warn);
        assert!(
            c.reason.starts_with("Docker is installed (dockerd at /usr/bin/dockerd, /run/docker.sock present)"),
            "{c:?}"
        );
        assert!(c.reason.contains("a system containerd is running (/run/containerd/containerd.sock)"), "{c:?}");
        assert!(c.fix.as_deref().unwrap().contains("systemctl disable --now docker.service docker.socket"));
    }

    #[test]
    fn config_drop_ins_k3node_did_not_write_are_a_warning_naming_each_file_and_its_keys() {
        assert_eq!(find(&run(&healthy_host(), Role::Agent, None), "config-dropins").status, Status::Pass);
        let sys = healthy_host()
            .file(
                "/etc/rancher/k3s/config.yaml.d/90-stray.yaml",
                "server: https://10.0.0.99:6443\nnode-label+:\n  - x=y\n",
            )
            .file("/etc/rancher/k3s/config.yaml.d/10-odd.yml", "- not a mapping\n")
            .file("/etc/rancher/k3s/config.yaml.d/notes.txt", "data-dir: /ignored\n");
        let checks = run(&sys, Role::Agent, None);
        let c = find(&checks, "config-dropins");
        assert_eq!(c.status, Status::Warn);
        assert!(
            c.reason.ends_with("k3s lets them override config.yaml: 10-odd.yml ((not a YAML mapping)); 90-stray.yaml (server, node-label)"),
            "{c:?}"
        );
        assert!(!c.reason.contains("notes.txt"), "{c:?}");
        assert!(c.fix.as_deref().unwrap().contains("spec.k3s.config"), "{c:?}");
    }

    #[test]
    fn other_kubernetes_fails() {
        let kubeadm = healthy_host().command("kubelet", "/usr/bin/kubelet");
        let c = run(&kubeadm, Role::Agent, None);
        let c = find(&c, "conflicting-runtimes");
        assert_eq!(c.status, Status::Fail);
        assert!(c.reason.contains("/usr/bin/kubelet"), "{c:?}");
        assert!(c.fix.as_deref().unwrap().contains("kubeadm reset"));

        let rke2 = healthy_host().dir("/etc/rancher/rke2");
        assert!(find(&run(&rke2, Role::Agent, None), "conflicting-runtimes")
            .reason
            .contains("RKE2 is installed (/etc/rancher/rke2)"));
        let microk8s = healthy_host().file("/snap/bin/microk8s", "");
        assert_eq!(find(&run(&microk8s, Role::Agent, None), "conflicting-runtimes").status, Status::Fail);
        let k0s = healthy_host().command("k0s", "/usr/local/bin/k0s");
        assert_eq!(find(&run(&k0s, Role::Agent, None), "conflicting-runtimes").status, Status::Fail);

        // A kubelet link to k3s is k3s's own.
        let link = healthy_host().command("kubelet", "/usr/local/bin/kubelet").link("/usr/local/bin/kubelet", "k3s");
        assert_eq!(find(&run(&link, Role::Agent, None), "conflicting-runtimes").status, Status::Pass);
    }

    #[test]
    fn installed_k3s_same_version_passes() {
        let sys = with_k3s(healthy_host(), "k3s version v1.31.4+k3s1 (a1b2c3d4)");
        let c = run(&sys, Role::Server, Some("v1.31.4+k3s1"));
        let c = find(&c, "k3s-installed");
        assert_eq!(c.status, Status::Pass);
        assert_eq!(c.reason, "k3s v1.31.4+k3s1 is installed, the requested version");
        let any = run(&sys, Role::Server, None);
        assert_eq!(find(&any, "k3s-installed").reason, "k3s v1.31.4+k3s1 is installed");
    }

    #[test]
    fn installed_older_k3s_is_upgraded_with_a_warning() {
        let sys = with_k3s(healthy_host(), "k3s version v1.30.8+k3s1 (5a1b2c3d)");
        let c = run(&sys, Role::Server, Some("v1.31.4+k3s1"));
        let c = find(&c, "k3s-installed");
        assert_eq!(c.status, Status::Warn);
        assert_eq!(c.reason, "k3s v1.30.8+k3s1 is installed and will be upgraded to v1.31.4+k3s1");

        let far = with_k3s(healthy_host(), "k3s version v1.28.15+k3s1 (5a1b2c3d)");
        let c = run(&far, Role::Server, Some("v1.31.4+k3s1"));
        assert!(find(&c, "k3s-installed").reason.contains("skipping 2 minor versions"), "{c:?}");
    }

    #[test]
    fn downgrade_is_refused() {
        let sys = with_k3s(healthy_host(), "k3s version v1.31.4+k3s2 (a1b2c3d4)");
        let c = run(&sys, Role::Server, Some("v1.31.4+k3s1"));
        let c = find(&c, "k3s-installed");
        assert_eq!(c.status, Status::Fail);
        assert_eq!(
            c.reason,
            "k3s v1.31.4+k3s2 is installed, newer than the requested v1.31.4+k3s1: k3s does not support downgrades"
        );
        let minor = run(&with_k3s(healthy_host(), "k3s version v1.32.0+k3s1 (x)"), Role::Server, Some("v1.31.9+k3s3"));
        assert_eq!(find(&minor, "k3s-installed").status, Status::Fail);
    }

    #[test]
    fn installed_k3s_in_the_other_role_fails() {
        let sys = with_k3s(healthy_host(), "k3s version v1.31.4+k3s1 (a1b2c3d4)");
        let c = run(&sys, Role::Agent, Some("v1.31.4+k3s1"));
        let c = find(&c, "k3s-installed");
        assert_eq!(c.status, Status::Fail);
        assert!(c.reason.contains("as a server (k3s.service), but cluster.yaml makes this host an agent"), "{c:?}");
    }

    #[test]
    fn broken_k3s_binary_warns() {
        let sys = healthy_host().file(K3S_BIN, "").output(
            K3S_BIN,
            &["--version"],
            126,
            "",
            "cannot execute binary file: Exec format error\n",
        );
        let c = run(&sys, Role::Server, Some("v1.31.4+k3s1"));
        let c = find(&c, "k3s-installed");
        assert_eq!(c.status, Status::Warn);
        assert!(c.reason.contains("Exec format error (exit status 126)"), "{c:?}");
        let unrunnable = healthy_host().file(K3S_BIN, "").run_error(K3S_BIN, &["--version"], "Permission denied");
        assert_eq!(find(&run(&unrunnable, Role::Server, None), "k3s-installed").status, Status::Warn);
    }

    #[test]
    fn version_ordering() {
        let v = |s: &str| K3sVersion::parse(s).unwrap();
        assert_eq!(v("v1.31.4+k3s1").to_string(), "v1.31.4+k3s1");
        assert_eq!(v("v1.31.4+k3s1").compare(&v("v1.31.4+k3s2")), Ordering::Less);
        assert_eq!(v("v1.31.10+k3s1").compare(&v("v1.31.9+k3s3")), Ordering::Greater);
        assert_eq!(v("v1.32.0-rc2+k3s1").compare(&v("v1.32.0+k3s1")), Ordering::Less);
        assert_eq!(v("v1.32.0-rc10+k3s1").compare(&v("v1.32.0-rc2+k3s1")), Ordering::Greater);
        assert_eq!(v("1.31.4").compare(&v("v1.31.4+k3s2")), Ordering::Equal);
        assert_eq!(v("v2.0.0+k3s1").compare(&v("v1.99.99+k3s9")), Ordering::Greater);
        for bad in ["stable", "v1.31", "v1.31.4+rke2r1", "v1.31.4-+k3s1", "v1.31.4.1+k3s1", ""] {
            assert!(K3sVersion::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(
            parse_k3s_version_output("k3s version v1.31.4+k3s1 (a1b2c3d4)\ngo version go1.22.9\n"),
            Some(v("v1.31.4+k3s1"))
        );
        assert_eq!(parse_k3s_version_output("garbage\n"), None);
    }
}
