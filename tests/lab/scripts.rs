//! k3node's k3s-killall.sh and uninstall scripts, its unit and its env file, and its native
//! `reset`, on a real host: real systemd reads the unit and the env file, the scripts and reset
//! meet real processes, mounts, network links and namespaces and iptables rules.
//!
//! The host is set up as k3s leaves one, without running k3s (the stand-in starts no shims, makes
//! no mounts, links or rules): the text comes straight from `k3node::host::k3s::files` (the
//! functions install-k3s writes the files with; writing them through `k3node up` would need the
//! stand-in running, which would own the host), the "k3s"
//! binary is a copy of dash, so that a `kubectl` link to it is k3s as far as the kernel can tell,
//! and the containerd-shims are copies of dash under `<data-dir>/data/<hash>/bin/` started by the
//! unit's main process (with a drop-in standing in for `k3s server`), so that they stay in the
//! service's cgroup when KillMode=process stops the main process, as real shims do. k3s's bundled
//! iptables (`bin/aux/`, which the lab host lacks) is this machine's iptables with its libraries.
//!
//! All on h5, which every scenario puts back as it found it (also when it fails).

use std::path::Path;
use std::sync::Arc;

use k3node::host::k3s::files::{env_text, killall_script, uninstall_script, unit_text};
use k3node::protocol::k3s::ResetRequest;
use k3node::protocol::preflight::Role;
use k3node::protocol::Secret;
use k3node::transport::HostKeyPolicy;
use libtest_mimic::Trial;

use crate::common::{ensure, Operator, Outcome};
use crate::support::{Lab, LabHost};

const HOST: &str = "h5";
/// The data dir of the scenarios that do not use the default one.
const DATA_DIR: &str = "/srv/k3s-lab";
const DEFAULT_DATA_DIR: &str = "/var/lib/rancher/k3s";
const HASH: &str = "lab0123";
/// Stands in for `k3s server`: started by the unit as /usr/local/bin/k3s (dash) with the shim's
/// path; starts two shims with containers (children and a grandchild), then waits.
const FAKE_SERVER: &str = r#"shim=$1
"$shim" -c 'sleep 3600 & sh -c "sleep 3600 & wait" & wait' &
"$shim" -c 'sleep 3600 & wait' &
wait
"#;
/// What the scenarios make on the host, removed before and after each of them.
const CLEAN_HOST: &str = r#"
for f in /sys/fs/cgroup/system.slice/k3s*.service/cgroup.kill; do [ -e "$f" ] && echo 1 > "$f"; done
units="lab-kubectl.service lab-tail.service lab-busy.service k3s.service k3s-agent.service"
systemctl stop $units 2>/dev/null
systemctl disable k3s.service k3s-agent.service 2>/dev/null
systemctl reset-failed $units 2>/dev/null
awk '{ print $2 }' /proc/self/mounts | grep -E '^(/run/k3s|/run/flannel|/var/lib/kubelet|/srv/k3s-lab|/var/lib/rancher|/run/netns/)' |
    sort -r | while read -r m; do umount -l "$m"; done
for ns in cni-lab1 lab-keep; do ip netns delete "$ns" 2>/dev/null; done
for l in cni0 vethlab0 vethlab2 lab-keep0 flannel.1 flannel-wg-v6 kube-ipvs0; do ip link delete "$l" 2>/dev/null; done
rm -rf /etc/systemd/system/k3s.service /etc/systemd/system/k3s-agent.service /etc/systemd/system/k3s.service.env \
    /etc/systemd/system/k3s-agent.service.env /etc/systemd/system/k3s.service.d /etc/rancher/k3s* /run/k3s /run/k3sother \
    /run/flannel /var/lib/cni /var/lib/kubelet* /var/lib/rancher /srv/k3s-lab* /usr/local/bin/k3s /usr/local/bin/k3s-killall.sh \
    /usr/local/bin/k3s-uninstall.sh /usr/local/bin/k3s-agent-uninstall.sh /usr/local/bin/kubectl /usr/local/bin/crictl \
    /usr/local/bin/ctr /usr/local/lib/k3s-lab-server
systemctl daemon-reload
true
"#;

pub fn trials(lab: &Arc<Lab>) -> Vec<Trial> {
    let t = |name: &str, f: fn(&Arc<Lab>, &LabHost) -> Outcome| {
        let lab = lab.clone();
        crate::common::timed(format!("scripts::{name}"), move || {
            let host = lab.host(HOST);
            let _clean = Clean::new(host)?;
            f(&lab, host)
        })
    };
    vec![
        t("systemd_reads_the_unit_and_every_env_value_exactly_as_k3node_wrote_them", unit_and_env),
        t("killall_kills_only_the_shim_trees_and_undoes_mounts_links_namespaces_and_rules", killall),
        t("uninstall_removes_k3s_and_its_data_and_itself_even_when_a_step_fails", uninstall),
        t("agent_uninstall_stops_early_while_the_server_remains_then_the_server_uninstall_finishes", two_services),
        t("reset_kills_only_the_shim_trees_forces_mounts_off_and_moves_the_data_aside", native_reset),
    ]
}

/// Puts the host back as the scenarios found it: when made, and when dropped (also on failure).
struct Clean<'a>(&'a LabHost);

impl<'a> Clean<'a> {
    fn new(host: &'a LabHost) -> Result<Clean<'a>, libtest_mimic::Failed> {
        clean(host)?;
        Ok(Clean(host))
    }
}

impl Drop for Clean<'_> {
    fn drop(&mut self) {
        if let Err(e) = clean(self.0) {
            eprintln!("scripts: cleaning {} up failed: {e:?}", self.0.name);
        }
    }
}

fn clean(host: &LabHost) -> Outcome {
    crate::common::sh(host, CLEAN_HOST)?;
    for table in ["filter", "nat"] {
        for family in ["iptables", "ip6tables"] {
            in_host_netns(host, &[family, "-t", table, "-F"])?;
            in_host_netns(host, &[family, "-t", table, "-X"])?;
        }
    }
    Ok(())
}

/// Runs a program of this machine inside the host's network namespace (iptables, which the lab
/// hosts lack): the rules it sees are the host's own.
fn in_host_netns(host: &LabHost, args: &[&str]) -> Result<String, libtest_mimic::Failed> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &host.netns])
        .args(args)
        .output()
        .map_err(|e| format!("ip netns exec {} {args:?}: {e}", host.netns))?;
    ensure(out.status.success(), || {
        format!("ip netns exec {} {args:?}: {}", host.netns, String::from_utf8_lossy(&out.stderr))
    })?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` as `user` and returns its exit status and its output, stdout and stderr merged.
fn run(host: &LabHost, user: &str, cmd: &str) -> Result<(i32, String), libtest_mimic::Failed> {
    let out = host.sh_as(user, &format!("{{ {cmd}\n}} 2>&1; echo \"exit status $?\"")).map_err(|e| format!("{e:#}"))?;
    let (text, status) =
        out.trim_end().rsplit_once("exit status ").ok_or_else(|| format!("no exit status in {out}"))?;
    Ok((status.parse().map_err(|e| format!("{e}: {out}"))?, text.to_string()))
}

/// Writes a file into the host's root filesystem (as root, with `mode`), parents created.
fn put(host: &LabHost, path: &str, contents: &[u8], mode: u32) -> Outcome {
    use std::os::unix::fs::PermissionsExt;
    let at = host.root.join(path.trim_start_matches('/'));
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(at.parent().expect("absolute path"))?;
        std::fs::write(&at, contents)?;
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(mode))
    };
    write().map_err(|e| format!("writing {path} into {}: {e}", host.name).into())
}

fn shim_path(data_dir: &str) -> String {
    format!("{data_dir}/data/{HASH}/bin/containerd-shim-runc-v2")
}

/// A host as install-k3s leaves it (unit, env file, scripts, binary, kubectl and crictl links),
/// plus k3s's data: the bundled shim binary and tools, a token.
fn install_files(host: &LabHost, role: Role, data_dir: &str, env: &[(String, Secret)]) -> Outcome {
    let service = match role {
        Role::Server => "k3s",
        Role::Agent => "k3s-agent",
    };
    let data = Path::new(data_dir);
    put(host, &format!("/etc/systemd/system/{service}.service"), unit_text(role).as_bytes(), 0o644)?;
    put(host, &format!("/etc/systemd/system/{service}.service.env"), env_text(env)?.as_bytes(), 0o600)?;
    put(host, "/usr/local/bin/k3s-killall.sh", killall_script(data).as_bytes(), 0o755)?;
    put(host, &format!("/usr/local/bin/{service}-uninstall.sh"), uninstall_script(role, data).as_bytes(), 0o755)?;
    put(host, &format!("/var/lib/rancher/k3node/{service}.applied.json"), b"{}\n", 0o600)?;
    put(host, "/etc/rancher/k3s/config.yaml", format!("data-dir: {data_dir}\n").as_bytes(), 0o600)?;
    let bin = format!("{data_dir}/data/{HASH}/bin");
    crate::common::sh(
        host,
        &format!(
            "set -e; install -m 0755 /bin/dash /usr/local/bin/k3s; ln -sfn k3s /usr/local/bin/kubectl; \
             ln -sfn /usr/local/bin/k3s /usr/local/bin/crictl; mkdir -p {bin}/aux {data_dir}/server; \
             install -m 0755 /bin/dash {bin}/containerd-shim-runc-v2; install -m 0755 /bin/true {bin}/runc; \
             echo K10lab::server:secret > {data_dir}/server/token; chmod 600 {data_dir}/server/token"
        ),
    )?;
    Ok(())
}

/// k3s's bundled iptables in `<data-dir>/data/<hash>/bin/aux/`: this machine's xtables-nft-multi
/// with its libraries and extensions, behind one wrapper per command.
fn install_bundled_iptables(host: &LabHost, data_dir: &str) -> Outcome {
    let multi = Path::new("/usr/sbin/xtables-nft-multi");
    let extensions = Path::new("/usr/lib/x86_64-linux-gnu/xtables");
    ensure(multi.exists() && extensions.is_dir(), || {
        "this test needs iptables on the machine running it (apt-get install iptables)".into()
    })?;
    let aux = format!("{data_dir}/data/{HASH}/bin/aux");
    let copy = |from: &Path, to: &str| -> Outcome {
        let bytes = std::fs::read(from).map_err(|e| format!("reading {}: {e}", from.display()))?;
        put(host, to, &bytes, 0o755)
    };
    copy(multi, &format!("{aux}/lib/xtables-nft-multi"))?;
    for lib in ["libnftnl.so.11", "libxtables.so.12", "libmnl.so.0"] {
        copy(&Path::new("/lib/x86_64-linux-gnu").join(lib), &format!("{aux}/lib/{lib}"))?;
    }
    let entries = std::fs::read_dir(extensions).map_err(|e| format!("{}: {e}", extensions.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| e.to_string())?;
        copy(&entry.path(), &format!("{aux}/xtables/{}", entry.file_name().to_string_lossy()))?;
    }
    for command in ["iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"]
    {
        let wrapper = format!(
            "#!/bin/sh\naux=$(dirname \"$0\")\nLD_LIBRARY_PATH=$aux/lib XTABLES_LIBDIR=$aux/xtables exec \"$aux/lib/xtables-nft-multi\" {command} \"$@\"\n"
        );
        put(host, &format!("{aux}/{command}"), wrapper.as_bytes(), 0o755)?;
    }
    Ok(())
}

/// A drop-in that makes k3s.service start the fake server (and so the shims) in its cgroup.
fn run_fake_server(host: &LabHost, data_dir: &str) -> Outcome {
    put(host, "/usr/local/lib/k3s-lab-server", FAKE_SERVER.as_bytes(), 0o644)?;
    let dropin = format!(
        "[Service]\nType=simple\nExecStartPre=\nExecStart=\nExecStart=/usr/local/bin/k3s /usr/local/lib/k3s-lab-server {}\n",
        shim_path(data_dir)
    );
    put(host, "/etc/systemd/system/k3s.service.d/lab.conf", dropin.as_bytes(), 0o644)?;
    crate::common::sh(host, "systemctl daemon-reload && systemctl start k3s.service")?;
    Ok(())
}

/// (pid, parent pid, command line) of every process on the host.
fn processes(host: &LabHost) -> Result<Vec<(u32, u32, String)>, libtest_mimic::Failed> {
    let ps = crate::common::sh(host, "ps -e -o pid=,ppid=,args=")?;
    Ok(ps
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?, f.collect::<Vec<_>>().join(" ")))
        })
        .collect())
}

/// The shims' pids and every process below them, once both shims run their three containers.
fn shim_trees(host: &LabHost, shim: &str) -> Result<Vec<u32>, libtest_mimic::Failed> {
    let mut last = Vec::new();
    for _ in 0..50 {
        let all = processes(host)?;
        let mut tree: Vec<u32> = all.iter().filter(|(_, _, args)| args.starts_with(shim)).map(|p| p.0).collect();
        let mut i = 0;
        while i < tree.len() {
            let parent = tree[i];
            tree.extend(all.iter().filter(|p| p.1 == parent).map(|p| p.0));
            i += 1;
        }
        // 2 shims; sleep, sh and its sleep below one, sleep below the other.
        if tree.len() == 6 {
            return Ok(tree);
        }
        last = all;
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Err(format!("the shims did not start their containers:\n{last:?}").into())
}

fn alive(host: &LabHost, pids: &[u32]) -> Result<Vec<u32>, libtest_mimic::Failed> {
    let all = processes(host)?;
    Ok(pids.iter().copied().filter(|pid| all.iter().any(|p| p.0 == *pid)).collect())
}

fn mount_points(host: &LabHost) -> Result<String, libtest_mimic::Failed> {
    crate::common::sh(host, "awk '{ print $2 }' /proc/self/mounts")
}

/// Values systemd's parser could get wrong: quotes, backslashes, blanks, shell syntax, nothing.
fn tricky_env() -> Vec<(String, Secret)> {
    [
        ("K3S_URL", "https://172.30.77.15:6443"),
        ("K3S_TOKEN", "K10abc::server:it's \"quoted\""),
        ("K3S_LAB_SHELL", "$HOME ${HOME} `id` $(id) ; & | < > * ? [a] ~ # ! %n %% \\$"),
        ("K3S_LAB_BACKSLASHES", r"C:\dir\new \\two \'"),
        ("K3S_LAB_BLANKS", "  two leading, a tab\tand two trailing  "),
        ("K3S_LAB_QUOTES", "''x'''"),
        ("K3S_LAB_QUOTE", "'"),
        ("K3S_LAB_EMPTY", ""),
        ("HTTPS_PROXY", "http://user:p'ss@proxy:3128"),
        ("no_proxy", "localhost,127.0.0.1,10.42.0.0/16"),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_string(), Secret::new(v)))
    .collect()
}

fn unit_and_env(_: &Arc<Lab>, host: &LabHost) -> Outcome {
    let env = tricky_env();
    install_files(host, Role::Server, DEFAULT_DATA_DIR, &env)?;
    put(host, "/etc/systemd/system/k3s-agent.service", unit_text(Role::Agent).as_bytes(), 0o644)?;
    crate::common::sh(host, "systemctl daemon-reload")?;

    // The continued ExecStart, as systemd reads it.
    let exec = crate::common::sh(host, "systemctl show -p ExecStart --value k3s.service k3s-agent.service")?;
    ensure(
        exec.contains("argv[]=/usr/local/bin/k3s server ;") && exec.contains("argv[]=/usr/local/bin/k3s agent ;"),
        || format!("ExecStart as systemd reads it:\n{exec}"),
    )?;
    let props = crate::common::sh(host, "systemctl show -p Type -p KillMode -p Delegate -p LimitNOFILE k3s.service")?;
    for want in ["Type=notify", "KillMode=process", "Delegate=yes", "LimitNOFILE=1048576"] {
        ensure(props.lines().any(|l| l == want), || format!("{want} missing:\n{props}"))?;
    }
    let verify = run(
        host,
        "root",
        "systemd-analyze verify /etc/systemd/system/k3s.service /etc/systemd/system/k3s-agent.service",
    )?;
    ensure(verify.0 == 0 && verify.1.trim().is_empty(), || format!("systemd-analyze verify: {verify:?}"))?;

    // The env file as the service gets it, through the unit's own EnvironmentFile=.
    put(
        host,
        "/etc/systemd/system/k3s.service.d/lab.conf",
        b"[Service]\nType=simple\nExecStartPre=\nExecStart=\nExecStart=/bin/sleep infinity\n",
        0o644,
    )?;
    crate::common::sh(host, "systemctl daemon-reload && systemctl start k3s.service")?;
    let environ =
        crate::common::sh(host, "tr '\\0' '\\n' < /proc/$(systemctl show -p MainPID --value k3s.service)/environ")?;
    for (name, value) in &env {
        let got = environ.lines().find_map(|l| l.strip_prefix(&format!("{name}=")));
        ensure(got == Some(value.expose()), || {
            format!(
                "{name}: systemd read {got:?}, k3node wrote {:?}; the service's environment:\n{environ}",
                value.expose()
            )
        })?;
    }
    Ok(())
}

/// The host as a running k3s server leaves it (in DATA_DIR): shims with containers in the
/// service's cgroup, mounts, a CNI network namespace, links and rules; beside them what is not
/// k3s's and must stay: a user's kubectl (k3s itself), a process naming the shim's path, a busy
/// mount with the process holding it, a lookalike mount, a link, a namespace and rules.
/// Returns the pids of the shims' process trees.
fn stage_running_server(host: &LabHost) -> Result<Vec<u32>, libtest_mimic::Failed> {
    install_files(host, Role::Server, DATA_DIR, &[])?;
    install_bundled_iptables(host, DATA_DIR)?;
    run_fake_server(host, DATA_DIR)?;
    let shim = shim_path(DATA_DIR);
    let shim_trees = shim_trees(host, &shim)?;
    let setup = format!(
        r#"set -e
# A user's kubectl (k3s itself), one of tail naming the shim's path, one holding a mount busy.
systemd-run --quiet --unit=lab-kubectl /usr/local/bin/kubectl -c 'sleep 3600; :'
systemd-run --quiet --unit=lab-tail tail -n 0 -f /dev/null {shim}
mkdir -p /run/k3s/busy /run/k3sother /run/k3s/containerd/io.containerd.runtime.v2.task/k8s.io/lab/rootfs
mount -t tmpfs lab-rootfs /run/k3s/containerd/io.containerd.runtime.v2.task/k8s.io/lab/rootfs
mkdir -p /run/k3s/containerd/io.containerd.runtime.v2.task/k8s.io/lab/rootfs/dev/shm
mount -t tmpfs lab-shm /run/k3s/containerd/io.containerd.runtime.v2.task/k8s.io/lab/rootfs/dev/shm
mount -t tmpfs lab-busy /run/k3s/busy
mount -t tmpfs lab-other /run/k3sother
systemd-run --quiet --unit=lab-busy -p WorkingDirectory=/run/k3s/busy sleep 3600
mkdir -p '/var/lib/kubelet/pods/labpod/volumes/kubernetes.io~empty-dir/cache' /var/lib/kubelet/plugins/lab.csi/mount
mount -t tmpfs lab-cache '/var/lib/kubelet/pods/labpod/volumes/kubernetes.io~empty-dir/cache'
echo data > '/var/lib/kubelet/pods/labpod/volumes/kubernetes.io~empty-dir/cache/file'
mount -t tmpfs lab-csi /var/lib/kubelet/plugins/lab.csi/mount
ip netns add cni-lab1
ip netns add lab-keep
ip link add cni0 type bridge
ip link add vethlab0 type veth peer name vethlab1
ip link add vethlab2 type veth peer name vethlab3
ip link set vethlab0 master cni0
ip link set vethlab2 master cni0
ip link add lab-keep0 type veth peer name lab-keep1
ip link add flannel.1 type vxlan id 1 dstport 8472
# WireGuard and IPVS are not in this kernel: a link of another type carries their names.
ip link add flannel-wg-v6 type ifb
ip link add kube-ipvs0 type ifb
mkdir -p /var/lib/cni/networks/cbr0
echo lab > /var/lib/cni/networks/cbr0/10.42.0.5
"#
    );
    crate::common::sh(host, &setup)?;
    for rule in [
        "iptables -N KUBE-SERVICES",
        "iptables -A INPUT -j KUBE-SERVICES",
        "iptables -N FLANNEL-FWD",
        "iptables -A FORWARD -m comment --comment flanneld-forward -j FLANNEL-FWD",
        "iptables -t nat -N CNI-lab",
        "iptables -t nat -A POSTROUTING -s 10.42.0.5/32 -j CNI-lab",
        "iptables -A INPUT -p tcp --dport 2222 -m comment --comment lab-keep -j ACCEPT",
        "ip6tables -N KUBE-FIREWALL",
        "ip6tables -A INPUT -j KUBE-FIREWALL",
        "ip6tables -A INPUT -p tcp --dport 2222 -m comment --comment lab-keep6 -j ACCEPT",
    ] {
        in_host_netns(host, &rule.split(' ').collect::<Vec<_>>())?;
    }
    // Everything the script must undo is there.
    let mounts = mount_points(host)?;
    for mounted in [
        "/run/k3s/containerd/io.containerd.runtime.v2.task/k8s.io/lab/rootfs/dev/shm",
        "/run/k3s/busy",
        "/var/lib/kubelet/pods/labpod/volumes/kubernetes.io~empty-dir/cache",
        "/var/lib/kubelet/plugins/lab.csi/mount",
        "/run/netns/cni-lab1",
    ] {
        ensure(mounts.lines().any(|m| m == mounted), || format!("setup: {mounted} is not mounted:\n{mounts}"))?;
    }
    let links = crate::common::sh(host, "ip -o link show master cni0; ip -o link show")?;
    for link in ["vethlab0@vethlab1: ", "vethlab2@vethlab3: ", "flannel.1: ", "flannel-wg-v6: ", "kube-ipvs0: "] {
        ensure(links.contains(link), || format!("setup: no {link}\n{links}"))?;
    }
    let rules = in_host_netns(host, &["iptables-save"])?;
    let rules6 = in_host_netns(host, &["ip6tables-save"])?;
    ensure(rules.contains("-j KUBE-SERVICES") && rules.contains("CNI-lab") && rules.contains("FLANNEL-FWD"), || {
        format!("setup: rules missing:\n{rules}")
    })?;
    ensure(rules6.contains("-j KUBE-FIREWALL"), || format!("setup: ip6tables rules missing:\n{rules6}"))?;
    let no_iptables = run(host, "root", "command -v iptables-save")?;
    ensure(no_iptables.0 != 0, || format!("the lab host has its own iptables: {no_iptables:?}"))?;

    let kubectl = crate::common::sh(host, "systemctl show -p MainPID --value lab-kubectl.service")?;
    let kubectl_exe = crate::common::sh(host, &format!("readlink /proc/{}/exe", kubectl.trim()))?;
    ensure(kubectl_exe.trim() == "/usr/local/bin/k3s", || format!("kubectl runs {kubectl_exe}"))?;
    Ok(shim_trees)
}

/// What k3s-killall.sh and reset both do to the staged host, and what they both leave alone.
fn stopped_and_undone(host: &LabHost, shim_trees: &[u32], said: &dyn Fn() -> String) -> Outcome {
    // Processes: the shims and their trees only.
    let left = alive(host, shim_trees)?;
    ensure(left.is_empty(), || format!("shim tree processes {left:?} of {shim_trees:?} survived; {}", said()))?;
    for unit in ["lab-kubectl", "lab-tail", "lab-busy"] {
        let state = run(host, "root", &format!("systemctl is-active {unit}.service"))?.1;
        ensure(state.trim() == "active", || format!("{unit} was killed ({state}); {}", said()))?;
    }
    let state = run(host, "root", "systemctl is-active k3s.service")?.1;
    ensure(state.trim() == "inactive", || format!("k3s.service is {state}; {}", said()))?;

    // Mounts and their mount points, the busy one and a lookalike aside.
    let mounts = mount_points(host)?;
    for gone in ["/run/k3s/containerd", "/var/lib/kubelet/pods", "/var/lib/kubelet/plugins", "/run/netns/cni-"] {
        ensure(!mounts.lines().any(|m| m.starts_with(gone)), || format!("still mounted under {gone}:\n{mounts}"))?;
    }
    for kept in ["/run/k3s/busy", "/run/k3sother", "/run/netns/lab-keep"] {
        ensure(mounts.lines().any(|m| m == kept), || format!("{kept} was unmounted:\n{mounts}"))?;
    }
    let paths = crate::common::sh(
        host,
        "for p in /run/k3s/containerd/io.containerd.runtime.v2.task/k8s.io/lab/rootfs \
         '/var/lib/kubelet/pods/labpod/volumes/kubernetes.io~empty-dir/cache' /var/lib/kubelet/plugins/lab.csi/mount \
         /run/netns/cni-lab1 /run/k3s/busy /var/lib/cni; do [ -e \"$p\" ] && echo \"present $p\" || echo \"absent $p\"; done",
    )?;
    for line in [
        "absent /run/k3s/containerd/io.containerd.runtime.v2.task/k8s.io/lab/rootfs",
        "absent /var/lib/kubelet/pods/labpod/volumes/kubernetes.io~empty-dir/cache",
        "absent /var/lib/kubelet/plugins/lab.csi/mount",
        "absent /run/netns/cni-lab1",
        "present /run/k3s/busy",
        "absent /var/lib/cni",
    ] {
        ensure(paths.lines().any(|l| l == line), || format!("{line} expected:\n{paths}"))?;
    }

    // Network links and namespaces.
    let links = crate::common::sh(host, "ip -o link show | awk -F': ' '{ print $2 }'; ip netns list")?;
    for gone in ["cni0", "vethlab0", "vethlab1", "vethlab2", "vethlab3", "flannel.1", "flannel-wg-v6", "kube-ipvs0"] {
        ensure(!links.lines().any(|l| l.split('@').next() == Some(gone)), || {
            format!("{gone} is still there:\n{links}")
        })?;
    }
    ensure(links.contains("lab-keep0") && links.lines().any(|l| l.starts_with("lab-keep")), || {
        format!("the unrelated link or namespace went:\n{links}")
    })?;
    ensure(!links.contains("cni-lab1"), || format!("cni-lab1 is still there:\n{links}"))
}

fn killall(_: &Arc<Lab>, host: &LabHost) -> Outcome {
    let shim_trees = stage_running_server(host)?;
    // Written for the default data dir; K3S_DATA_DIR points it at the one in use.
    put(host, "/usr/local/bin/k3s-killall.sh", killall_script(Path::new(DEFAULT_DATA_DIR)).as_bytes(), 0o755)?;

    // As a sudoer, not root: it re-executes itself with sudo and keeps K3S_DATA_DIR.
    let (status, output) = run(host, "ops", &format!("K3S_DATA_DIR={DATA_DIR} /usr/local/bin/k3s-killall.sh"))?;
    let said = || format!("k3s-killall.sh said:\n{output}");
    stopped_and_undone(host, &shim_trees, &said)?;

    // Rules, through the host's own (bundled) iptables only.
    let rules = in_host_netns(host, &["iptables-save"])? + &in_host_netns(host, &["iptables-save", "-t", "nat"])?;
    let rules6 = in_host_netns(host, &["ip6tables-save"])?;
    for (family, text, keep) in [("iptables", &rules, "lab-keep"), ("ip6tables", &rules6, "lab-keep6")] {
        ensure(!text.contains("KUBE-") && !text.contains("CNI-") && !text.to_lowercase().contains("flannel"), || {
            format!("{family} rules of k3s left:\n{text}")
        })?;
        ensure(text.contains(&format!("--comment {keep} ")), || format!("{family}: the unrelated rule went:\n{text}"))?;
    }

    // No configuration and no data deleted.
    let files = crate::common::sh(
        host,
        &format!(
            "ls /etc/systemd/system/k3s.service /etc/rancher/k3s/config.yaml {DATA_DIR}/server/token {}",
            shim_path(DATA_DIR)
        ),
    )?;
    ensure(files.lines().count() == 4, || format!("killall deleted files: {files}"))?;

    // It says what it does, and what it could not do.
    ensure(status == 1, || format!("exit status {status}, 1 expected (a busy mount stays); {}", said()))?;
    ensure(output.contains("/run/k3s/busy could not be unmounted (busy?): it was left in place"), said)?;
    ensure(output.contains("+ systemctl stop k3s.service") && output.contains("+ umount -f"), || {
        format!("no trace of its commands (set -x); {}", said())
    })
}

fn uninstall(_: &Arc<Lab>, host: &LabHost) -> Outcome {
    install_files(host, Role::Server, DATA_DIR, &[])?;
    let setup = format!(
        r#"set -e
systemctl daemon-reload
systemctl enable --quiet k3s.service
ln -s /usr/bin/ctr /usr/local/bin/ctr
mkdir -p /run/k3s/containerd /run/flannel {DATA_DIR}/storage {DATA_DIR}/agent/images /var/lib/kubelet/pods/p1 /var/lib/kubelet/lab-busy
echo x > /run/k3s/containerd/containerd.sock
echo FLANNEL_NETWORK=10.42.0.0/16 > /run/flannel/subnet.env
echo image > {DATA_DIR}/agent/images/lab.tar
echo hidden > {DATA_DIR}/.hidden
# A disk for volumes, mounted inside the data dir: left as it is, with what it holds.
mount -t tmpfs lab-storage {DATA_DIR}/storage
echo volume > {DATA_DIR}/storage/pvc-1
# A mount in /var/lib/kubelet that k3s-killall.sh does not undo: removing /var/lib/kubelet fails.
mount -t tmpfs lab-kubelet /var/lib/kubelet/lab-busy
echo held > /var/lib/kubelet/lab-busy/file
echo x > /var/lib/kubelet/pods/p1/file
"#
    );
    crate::common::sh(host, &setup)?;
    let check = format!(
        "for p in /usr/local/bin/k3s-uninstall.sh /usr/local/bin/k3s-killall.sh /usr/local/bin/k3s \
         /usr/local/bin/kubectl /usr/local/bin/crictl /usr/local/bin/ctr /etc/systemd/system/k3s.service \
         /etc/systemd/system/k3s.service.env /var/lib/rancher/k3node/k3s.applied.json \
         /etc/systemd/system/multi-user.target.wants/k3s.service /etc/rancher/k3s /run/k3s /run/flannel \
         {DATA_DIR}/server {DATA_DIR}/agent {DATA_DIR}/data {DATA_DIR}/.hidden {DATA_DIR}/storage/pvc-1 \
         /var/lib/kubelet/pods /var/lib/kubelet/lab-busy/file; \
         do if [ -e \"$p\" ] || [ -L \"$p\" ]; then echo \"present $p\"; else echo \"absent $p\"; fi; done"
    );
    let before = crate::common::sh(host, &check)?;
    ensure(before.lines().all(|l| l.starts_with("present ")), || format!("setup:\n{before}"))?;

    // The data dir it was written for, given with a trailing '/': the same dir.
    let (status, output) = run(host, "root", &format!("K3S_DATA_DIR={DATA_DIR}/ /usr/local/bin/k3s-uninstall.sh"))?;
    let said = || format!("k3s-uninstall.sh said:\n{output}");

    let paths = crate::common::sh(host, &check)?;
    let present = [
        "/usr/local/bin/ctr".to_string(),
        format!("{DATA_DIR}/storage/pvc-1"),
        "/var/lib/kubelet/lab-busy/file".to_string(),
    ];
    for line in paths.lines() {
        let (state, path) = line.split_once(' ').unwrap_or_default();
        let want = if present.iter().any(|p| p == path) { "present" } else { "absent" };
        ensure(state == want, || {
            format!(
                "{path} is {state}, {want} expected (the uninstall script removes itself even when a step failed); {}",
                said()
            )
        })?;
    }
    let known = run(host, "root", "systemctl cat k3s.service")?;
    ensure(known.0 != 0, || format!("systemd still knows k3s.service: {known:?}"))?;

    // It says what it does, and that it did not finish.
    ensure(status == 1, || format!("exit status {status}, 1 expected; {}", said()))?;
    ensure(output.contains("still mounted, so left in place: /var/lib/kubelet/lab-busy"), said)?;
    ensure(output.contains(&format!("Still mounted below {DATA_DIR}, so left in place: {DATA_DIR}/storage")), said)?;
    ensure(output.contains("+ /usr/local/bin/k3s-killall.sh") && output.contains("+ systemctl disable k3s"), || {
        format!("no trace of its commands (set -x); {}", said())
    })
}

fn two_services(_: &Arc<Lab>, host: &LabHost) -> Outcome {
    let server_env = [("K3S_TOKEN".to_string(), Secret::new("K10lab::server:secret"))];
    let agent_env = [
        ("K3S_URL".to_string(), Secret::new("https://172.30.77.11:6443")),
        ("K3S_TOKEN".to_string(), Secret::new("K10lab::node:secret")),
    ];
    install_files(host, Role::Server, DEFAULT_DATA_DIR, &server_env)?;
    install_files(host, Role::Agent, DEFAULT_DATA_DIR, &agent_env)?;
    crate::common::sh(host, "systemctl daemon-reload && systemctl enable --quiet k3s.service k3s-agent.service")?;
    let check = "for p in /usr/local/bin/k3s-agent-uninstall.sh /etc/systemd/system/k3s-agent.service \
                 /etc/systemd/system/k3s-agent.service.env /var/lib/rancher/k3node/k3s-agent.applied.json \
                 /usr/local/bin/k3s-uninstall.sh /usr/local/bin/k3s-killall.sh /usr/local/bin/k3s /usr/local/bin/kubectl \
                 /etc/systemd/system/k3s.service /etc/rancher/k3s/config.yaml /var/lib/rancher/k3s/server/token; \
                 do if [ -e \"$p\" ] || [ -L \"$p\" ]; then echo \"present $p\"; else echo \"absent $p\"; fi; done";
    let before = crate::common::sh(host, check)?;
    ensure(before.lines().all(|l| l.starts_with("present ")), || format!("setup:\n{before}"))?;

    // A data dir of / would be the whole host: refused before anything is done.
    let (status, output) = run(host, "root", "K3S_DATA_DIR=/ /usr/local/bin/k3s-agent-uninstall.sh")?;
    ensure(status == 1 && output.contains("K3S_DATA_DIR must be an absolute path other than /"), || {
        format!("with K3S_DATA_DIR=/: exit status {status}:\n{output}")
    })?;
    let after = crate::common::sh(host, check)?;
    ensure(after == before, || format!("K3S_DATA_DIR=/ changed the host:\n{after}"))?;

    let (status, output) = run(host, "root", "/usr/local/bin/k3s-agent-uninstall.sh")?;
    ensure(status == 0, || format!("exit status {status}:\n{output}"))?;
    ensure(output.contains("Additional k3s services installed: k3s.service;"), || output.clone())?;
    let paths = crate::common::sh(host, check)?;
    for (i, line) in paths.lines().enumerate() {
        let want = if i < 4 { "absent " } else { "present " };
        ensure(line.starts_with(want), || format!("after the agent's uninstall: {line}\n{output}"))?;
    }

    let (status, output) = run(host, "root", "/usr/local/bin/k3s-uninstall.sh")?;
    ensure(status == 0, || format!("exit status {status}:\n{output}"))?;
    let paths = crate::common::sh(host, check)?;
    ensure(paths.lines().all(|l| l.starts_with("absent ")), || {
        format!("after the server's uninstall:\n{paths}\n{output}")
    })?;
    let rancher = crate::common::sh(host, "ls -A /var/lib/rancher 2>/dev/null || true")?;
    ensure(rancher.trim() == "k3node", || format!("/var/lib/rancher holds: {rancher}"))
}

/// k3node's own reset (the agent's `reset` operation, over SSH as the operator calls it) on the
/// same host: what k3s-killall.sh does, then the uninstall, with the data moved aside.
fn native_reset(lab: &Arc<Lab>, host: &LabHost) -> Outcome {
    let shim_trees = stage_running_server(host)?;
    let agent = host.root.join("usr/local/bin/k3node");
    let had_agent = agent.exists();
    std::fs::copy(crate::common::K3NODE, &agent).map_err(|e| format!("copying k3node into {}: {e}", host.name))?;
    let op = Operator::new(lab, "scripts");
    op.trust(&[host]);
    let request = ResetRequest { dry_run: false, keep_helper: true };
    let answer = op.with_session(op.endpoint(host, "root"), op.options(HostKeyPolicy::Strict), op.keyring(), {
        async move |s| {
            let s = s.map_err(|e| e.to_string())?;
            let helper = k3node::operator::link::SshLink::new(s, k3node::protocol::HELPER_PATH.into(), None);
            let link = k3node::operator::link::Link::new(std::sync::Arc::new(helper));
            link.call(&request).send().await.map_err(|e| e.to_string())
        }
    });
    if !had_agent {
        let _ = std::fs::remove_file(&agent);
    }
    // The busy mount stays, so the reset says it did not finish, and what is left.
    let message = match answer {
        Ok(report) => return Err(format!("reset succeeded although /run/k3s/busy is busy: {report:?}").into()),
        Err(message) => message,
    };
    let said = || format!("reset said:\n{message}");
    stopped_and_undone(host, &shim_trees, &said)?;
    ensure(message.contains("unmount and remove /run/k3s/busy: Device or resource busy: it stays mounted"), said)?;
    ensure(message.contains("remove /run/k3s: /run/k3s/busy is still mounted, so it was left in place"), said)?;

    let check = format!(
        "for p in /usr/local/bin/k3s /usr/local/bin/kubectl /usr/local/bin/crictl /usr/local/bin/k3s-killall.sh \
         /usr/local/bin/k3s-uninstall.sh /etc/systemd/system/k3s.service /etc/systemd/system/k3s.service.env \
         /var/lib/rancher/k3node/k3s.applied.json {DATA_DIR} /etc/rancher/k3s /var/lib/kubelet; \
         do if [ -e \"$p\" ] || [ -L \"$p\" ]; then echo \"present $p\"; else echo \"absent $p\"; fi; done; \
         cat {DATA_DIR}.k3node-reset-*/server/token /etc/rancher/k3s.k3node-reset-*/config.yaml; \
         ls -d /var/lib/kubelet.k3node-reset-*"
    );
    let paths = crate::common::sh(host, &check)?;
    ensure(paths.lines().filter(|l| l.starts_with("absent ")).count() == 11, || {
        format!("after reset:\n{paths}\n{}", said())
    })?;
    ensure(paths.contains("K10lab::server:secret\n") && paths.contains(&format!("data-dir: {DATA_DIR}\n")), || {
        format!("the data was not moved aside:\n{paths}")
    })?;
    let enabled = run(host, "root", "systemctl is-enabled k3s.service")?;
    ensure(enabled.0 != 0, || format!("k3s.service is still enabled: {enabled:?}"))
}
