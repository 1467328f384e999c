//! The text of every file install-k3s writes besides config.yaml: the unit (byte for byte what
//! install.sh writes), the env file (install.sh's quoting), and k3node's own k3s-killall.sh and
//! uninstall scripts (contract section 8: they do what the official ones do, in k3node's text).
//!
//! Invariants: a host installed by install.sh and one installed by k3node hold the same unit and,
//! for the same variables, the same env file, so that k3node takes over an install.sh host without
//! restarting k3s; every env value reads back through systemd's EnvironmentFile= parser exactly as
//! given; the scripts are POSIX sh (checked with shellcheck by the tests) and quote every path.
//!
//! Public (hidden from the docs) only so that the lab tests can put these files on a real host
//! without installing k3s; everything else goes through `install`.

use std::path::Path;

use super::{
    env_path, record_path, service_name, uninstall_script_path, unit_path, BIN_DIR, K3S_BIN, KILLALL_SCRIPT,
    KUBELET_DIR,
};
use crate::protocol::preflight::Role;
use crate::protocol::Secret;

/// /etc/systemd/system/<service>.service, byte for byte what install.sh writes (contract section 2):
/// two comment lines before the limits, ExecStart continued over two more lines, the last one
/// empty, as install.sh leaves it when given no arguments (k3node passes everything in config.yaml).
pub fn unit_text(role: Role) -> String {
    let service = service_name(role);
    let command = match role {
        Role::Server => "server",
        Role::Agent => "agent",
    };
    format!(
        "[Unit]
Description=Lightweight Kubernetes
Documentation=https://k3s.io
Wants=network-online.target
After=network-online.target

[Install]
WantedBy=multi-user.target

[Service]
Type=notify
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/sysconfig/%N
EnvironmentFile=-/etc/systemd/system/{service}.service.env
KillMode=process
Delegate=yes
User=root
# Having non-zero Limit*s causes performance problems due to accounting overhead
# in the kernel. We recommend using cgroups to do container-local accounting.
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStartPre=-/sbin/modprobe br_netfilter
ExecStartPre=-/sbin/modprobe overlay
ExecStart=/usr/local/bin/k3s \\
    {command} \\

"
    )
}

/// The env file as install.sh writes it: each line as `sh -c export` (dash) prints it, without
/// `export `: `NAME='value'`, a `'` inside written `'"'"'`. The K3S_* and CONTAINERD_* variables
/// come first, then the proxy variables, each group in byte order as `export` lists them (any
/// other variable, which install.sh would drop, last). systemd's EnvironmentFile= parser reads
/// every such value back unchanged. install.sh passes the lines through `read` and `echo`, which
/// drop backslashes and squeeze blanks: for values without those its file has the same bytes.
///
/// A server without variables gets an empty file. Errors name the variable, never its value.
pub fn env_text(env: &[(String, Secret)]) -> Result<String, String> {
    let mut lines = Vec::new();
    for (name, value) in env {
        let valid_name = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(format!("env: {name:?} is not a valid variable name"));
        }
        let value = value.expose();
        // systemd would read a quoted line break back, but the file is read line by line by
        // people and by k3node's masking of secrets in diffs.
        if value.contains(['\n', '\r', '\0']) {
            return Err(format!(
                "env: the value of {name} contains a line break or NUL, which k3node does not write to an env file"
            ));
        }
        lines.push((env_group(name), name.as_str(), format!("{name}={}\n", sh_quote(value))));
    }
    lines.sort();
    Ok(lines.into_iter().map(|(_, _, line)| line).collect())
}

/// install.sh's two greps, in its order: `^(K3S|CONTAINERD)_`, then `^(NO|HTTP|HTTPS)_PROXY`
/// ignoring case. Variables of neither group come last.
fn env_group(name: &str) -> u8 {
    let upper = name.to_ascii_uppercase();
    if name.starts_with("K3S_") || name.starts_with("CONTAINERD_") {
        0
    } else if ["NO_PROXY", "HTTP_PROXY", "HTTPS_PROXY"].iter().any(|p| upper.starts_with(p)) {
        1
    } else {
        2
    }
}

/// A string as one single-quoted shell word, a `'` inside written `'"'"'`, as dash's `export`
/// prints it (and as systemd's env file parser reads it back).
fn sh_quote(s: &str) -> String {
    // dash's single_quote(): a quoted run up to the next `'`, then that run of `'`s in double
    // quotes, and so on; a value ending in `'` ends with the double-quoted run.
    let mut out = String::with_capacity(s.len() + 2);
    let mut rest = s;
    loop {
        let run = rest.find('\'').unwrap_or(rest.len());
        out.push('\'');
        out.push_str(&rest[..run]);
        out.push('\'');
        rest = &rest[run..];
        if rest.is_empty() {
            return out;
        }
        let quotes = rest.len() - rest.trim_start_matches('\'').len();
        out.push('"');
        out.push_str(&rest[..quotes]);
        out.push('"');
        rest = &rest[quotes..];
        if rest.is_empty() {
            return out;
        }
    }
}

/// Shell functions both scripts use.
const COMMON_FUNCTIONS: &str = r##"failed=
# Notes a step that did not work: the script goes on with the others and fails at the end.
fail() {
    failed="$failed
  $*"
}

# Runs a lookup without tracing it, so that the trace shows what is done. Only ever called
# inside $(...): it turns tracing off for the shell it runs in.
quietly() {
    { set +x; } 2>/dev/null
    "$@"
}

# Mount points whose path starts with $1, deepest first; a directory is given with a trailing
# '/' and then matches itself too. /proc/self/mounts writes blanks as \040 and tabs as \011.
# shellcheck disable=SC2317 # called through quietly, which shellcheck does not follow
mount_points() {
    prefix=$1 awk '
        { path = $2; gsub(/\\040/, " ", path); gsub(/\\011/, "\t", path) }
        index(path, ENVIRON["prefix"]) == 1 || path "/" == ENVIRON["prefix"] { print path }
    ' /proc/self/mounts | LC_ALL=C sort -r
}
"##;

const KILLALL_TEMPLATE: &str = r##"#!/bin/sh
# k3s-killall.sh, written by k3node: stops k3s and everything it started on this host (services,
# containers, mounts, network links and namespaces, iptables rules), as the official
# k3s-killall.sh does. It deletes no configuration and no data. K3S_DATA_DIR overrides the data
# dir k3s was installed with. `k3node reset` does this too, then uninstalls k3s.
[ "$(id -u)" -eq 0 ] || exec sudo --preserve-env=K3S_DATA_DIR "$0" "$@"

DEFAULT_DATA_DIR=@DEFAULT_DATA_DIR@
K3S_DATA_DIR=${K3S_DATA_DIR:-$DEFAULT_DATA_DIR}
# Compared with mount points and executables' paths: without trailing '/', and never / itself.
while [ "$K3S_DATA_DIR" != / ] && [ "${K3S_DATA_DIR%/}" != "$K3S_DATA_DIR" ]; do
    K3S_DATA_DIR=${K3S_DATA_DIR%/}
done
case $K3S_DATA_DIR in
    /?*) ;;
    *)
        echo "K3S_DATA_DIR must be an absolute path other than /, not '$K3S_DATA_DIR': nothing was done" >&2
        exit 1
        ;;
esac

# k3s's bundled tools (containerd, runc, and iptables in aux/), after the host's own.
for bin in "$K3S_DATA_DIR"/data/*/bin; do
    [ -d "$bin" ] && PATH=$PATH:$bin:$bin/aux
done
export PATH

@COMMON_FUNCTIONS@
set -x

for unit in /etc/systemd/system/k3s*.service; do
    [ -s "$unit" ] || continue
    systemctl stop "${unit##*/}" || fail "systemctl stop ${unit##*/} failed"
done
for script in /etc/init.d/k3s*; do
    [ -x "$script" ] || continue
    "$script" stop || fail "$script stop failed"
done

# "pid ppid" of every process. The command name in /proc/<pid>/stat may hold blanks and ')'.
# shellcheck disable=SC2317 # called through quietly
process_table() {
    cat /proc/[0-9]*/stat 2>/dev/null | awk '{ pid = $1; sub(/^.*\) /, ""); print pid, $2 }'
}

# shellcheck disable=SC2317 # called through quietly
children() {
    process_table | awk -v parent="$1" '$2 == parent { print $1 }'
}

# The containerd-shims k3s started (KillMode=process leaves them, and with them the containers,
# running): processes whose executable is one of its bundled bin/containerd-shim* binaries, also
# through a symlinked data dir and after an upgrade deleted the binary. Never a process because
# its command line names such a path, nor kubectl, crictl or ctr (which are k3s itself).
# shellcheck disable=SC2317 # called through quietly
shim_pids() {
    real_data_dir=$(cd -P -- "$K3S_DATA_DIR" 2>/dev/null && pwd -P) || real_data_dir=$K3S_DATA_DIR
    for exe in /proc/[0-9]*/exe; do
        target=$(readlink "$exe" 2>/dev/null) || continue
        case $target in
            "$K3S_DATA_DIR"/data/*/bin/containerd-shim* | "$real_data_dir"/data/*/bin/containerd-shim*)
                pid=${exe#/proc/}
                echo "${pid%/exe}"
                ;;
        esac
    done
}

# Stops each process before listing its children, so that none starts another one unseen, then
# kills the tree, children first. A subshell body: each level keeps its own loop variable.
killtree() (
    for pid in "$@"; do
        kill -STOP "$pid" 2>/dev/null || continue
        # shellcheck disable=SC2046 # one word per pid
        killtree $(quietly children "$pid")
        kill -KILL "$pid" 2>/dev/null
    done
)

# shellcheck disable=SC2046 # one word per pid
killtree $(quietly shim_pids)

# Unmounts (forced, as `umount -f`) every mount whose path starts with $1, deepest first, and
# removes each mount point once nothing is mounted there any more. A mount that stays (busy)
# keeps its mount point.
unmount_and_remove() {
    mounts=$(quietly mount_points "$1")
    while IFS= read -r mnt; do
        [ -n "$mnt" ] || continue
        if ! umount -f "$mnt"; then
            fail "$mnt could not be unmounted (busy?): it was left in place"
        elif [ -z "$(quietly mount_points "$mnt/")" ]; then
            rm -rf "$mnt" || fail "rm -rf $mnt failed"
        fi
    done <<EOF
$mounts
EOF
}
unmount_and_remove /run/k3s/
unmount_and_remove /var/lib/kubelet/pods/
unmount_and_remove /var/lib/kubelet/plugins/
unmount_and_remove /run/netns/cni-

for netns in /run/netns/cni-*; do
    [ -e "$netns" ] || continue
    ip netns delete "${netns##*/}" || fail "ip netns delete ${netns##*/} failed"
done

delete_link() {
    ip link show dev "$1" >/dev/null 2>&1 || return 0
    ip link delete "$1" || ! ip link show dev "$1" >/dev/null 2>&1 || fail "ip link delete $1 failed"
}

# The pods' veths, enslaved to the CNI bridge: "9: veth1a2b@if2: <...>" gives veth1a2b.
# shellcheck disable=SC2317 # called through quietly
cni0_ports() {
    ip -o link show master cni0 2>/dev/null | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }'
}
for port in $(quietly cni0_ports); do
    delete_link "$port"
done
for link in cni0 flannel.1 flannel-v6.1 kube-ipvs0 flannel-wg flannel-wg-v6; do
    delete_link "$link"
done

# k3s's tailscale integration advertises the pod network as routes.
if command -v tailscale >/dev/null 2>&1; then
    tailscale set --advertise-routes= || fail "tailscale set --advertise-routes= failed"
fi

rm -rf /var/lib/cni/ || fail "rm -rf /var/lib/cni/ failed"

# The rules of kube-proxy, the CNI plugins and flannel; every other rule stays.
for family in iptables ip6tables; do
    if ! command -v "$family-save" >/dev/null 2>&1 || ! command -v "$family-restore" >/dev/null 2>&1; then
        continue
    fi
    if ! rules=$("$family-save"); then
        fail "$family-save failed: the $family rules were left as they are"
        continue
    fi
    if ! printf '%s\n' "$rules" | grep -q -e KUBE- -e CNI- && ! printf '%s\n' "$rules" | grep -qi flannel; then
        continue
    fi
    printf '%s\n' "$rules" | grep -v -e KUBE- -e CNI- | grep -iv flannel | "$family-restore" ||
        fail "$family-restore failed: the $family rules were left as they are"
done

{ set +x; } 2>/dev/null
if [ -n "$failed" ]; then
    echo "k3s-killall.sh: not everything could be stopped or removed:$failed" >&2
    exit 1
fi
exit 0
"##;

/// /usr/local/bin/k3s-killall.sh: stops k3s and what it started, keeps every file. `data_dir`
/// is the one k3s was installed with (K3S_DATA_DIR overrides it when the script runs).
pub fn killall_script(data_dir: &Path) -> String {
    KILLALL_TEMPLATE
        .replace("@COMMON_FUNCTIONS@", COMMON_FUNCTIONS)
        .replace("@DEFAULT_DATA_DIR@", &sh_quote(&data_dir.to_string_lossy()))
}

const UNINSTALL_TEMPLATE: &str = r##"#!/bin/sh
# @SERVICE@-uninstall.sh, written by k3node: removes k3s (@SERVICE@.service) from this host and
# DELETES its data, as the official uninstall script does. K3S_DATA_DIR overrides the data dir
# k3s was installed with. `k3node reset` does the same but moves the data aside instead: the data
# dir, /etc/rancher/k3s and /var/lib/kubelet are renamed to <path>.k3node-reset-<UTC time>.
set -x
[ "$(id -u)" -eq 0 ] || exec sudo --preserve-env=K3S_DATA_DIR "$0" "$@"

SERVICE=@SERVICE@
DEFAULT_DATA_DIR=@DEFAULT_DATA_DIR@
K3S_DATA_DIR=${K3S_DATA_DIR:-$DEFAULT_DATA_DIR}
# Compared with mount points and executables' paths: without trailing '/', and never / itself.
while [ "$K3S_DATA_DIR" != / ] && [ "${K3S_DATA_DIR%/}" != "$K3S_DATA_DIR" ]; do
    K3S_DATA_DIR=${K3S_DATA_DIR%/}
done
case $K3S_DATA_DIR in
    /?*) ;;
    *)
        echo "K3S_DATA_DIR must be an absolute path other than /, not '$K3S_DATA_DIR': nothing was done" >&2
        exit 1
        ;;
esac
# The killall script stops what runs from the same data dir.
export K3S_DATA_DIR

{ set +x; } 2>/dev/null
echo "This removes $SERVICE from this host and DELETES its data: $K3S_DATA_DIR, /etc/rancher/k3s, @KUBELET_DIR@." >&2
echo "'k3node reset' does the same but moves the data aside instead of deleting it." >&2
if [ -t 0 ]; then
    echo "Press Ctrl-C within 10 seconds to keep everything." >&2
    sleep 10
fi
set -x

@COMMON_FUNCTIONS@
kept=
finish() {
    { set +x; } 2>/dev/null
    [ -z "$kept" ] || echo "Still mounted below $K3S_DATA_DIR, so left in place:$kept" >&2
    if [ -n "$failed" ]; then
        echo "$SERVICE-uninstall.sh did not finish:$failed" >&2
        echo "Fix the cause, then remove what is left by hand or run 'k3node reset' on this host." >&2
        exit 1
    fi
    exit 0
}

if [ -x @KILLALL@ ]; then
    @KILLALL@ || fail "@KILLALL@ did not finish (see its messages above)"
fi

if command -v systemctl >/dev/null 2>&1; then
    systemctl disable "$SERVICE"
    systemctl reset-failed "$SERVICE"
fi
if command -v rc-update >/dev/null 2>&1; then
    rc-update delete "$SERVICE" default
fi
rm -f @UNIT@ @ENV@ @RECORD@ || fail "the unit or env file of $SERVICE could not be removed"
if command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload
fi

# From here on the script is gone once it ends, also when a step fails: what it uninstalls is.
# shellcheck disable=SC2317 # called by the EXIT trap
remove_self() {
    rm -f @SELF@
}
trap remove_self EXIT
trap 'exit 1' HUP INT TERM

# A host may run a server and an agent: k3s itself and the shared files stay for the other one.
remaining=
for other in /etc/systemd/system/k3s*.service /etc/init.d/k3s*; do
    [ -e "$other" ] && remaining="$remaining ${other##*/}"
done
if [ -n "$remaining" ]; then
    { set +x; } 2>/dev/null
    echo "Additional k3s services installed:$remaining; k3s itself, its data and its shared files stay." >&2
    echo "k3s-killall.sh stopped them: start them again with systemctl start." >&2
    finish
fi

# kubectl, crictl, ctr: only the links to k3s, never a command of the host's own.
for cmd in kubectl crictl ctr; do
    link=@BIN_DIR@/$cmd
    [ -L "$link" ] || continue
    case $(readlink "$link") in
        k3s | @K3S_BIN@) rm -f "$link" || fail "rm -f $link failed" ;;
    esac
done

# Removes the tree at $1 except what is mounted at or below it, which stays as it is (with what
# it holds) and is named in $kept.
remove_unmounted() {
    [ -e "$1" ] || [ -L "$1" ] || return 0
    mounted=$(quietly mount_points "$1/")
    if [ -z "$mounted" ]; then
        rm -rf "$1" || fail "rm -rf $1 failed"
    elif printf '%s\n' "$mounted" | grep -qxF -e "$1"; then
        kept="$kept $1"
    else
        for entry in "$1"/* "$1"/.[!.]* "$1"/..?*; do
            remove_unmounted "$entry"
        done
    fi
}

remove_unmounted /etc/rancher/k3s
remove_unmounted /run/k3s
remove_unmounted /run/flannel
remove_unmounted @KUBELET_DIR@
if [ -n "$kept" ]; then
    fail "still mounted, so left in place:$kept"
    kept=
fi
# Below the data dir, what is still mounted stays on purpose (a disk for volumes, say).
remove_unmounted "$K3S_DATA_DIR"
rm -f @K3S_BIN@ @KILLALL@ || fail "rm -f @K3S_BIN@ @KILLALL@ failed"
finish
"##;

/// /usr/local/bin/k3s-uninstall.sh (server) or k3s-agent-uninstall.sh (agent). `data_dir` is the
/// one k3s was installed with (K3S_DATA_DIR overrides it when the script runs).
pub fn uninstall_script(role: Role, data_dir: &Path) -> String {
    let service = service_name(role);
    let quote = |p: &Path| sh_quote(&p.to_string_lossy());
    UNINSTALL_TEMPLATE
        .replace("@COMMON_FUNCTIONS@", COMMON_FUNCTIONS)
        .replace("@DEFAULT_DATA_DIR@", &quote(data_dir))
        .replace("@UNIT@", &quote(&unit_path(service)))
        .replace("@ENV@", &quote(&env_path(service)))
        .replace("@RECORD@", &quote(&record_path(service)))
        .replace("@SELF@", &quote(&uninstall_script_path(service)))
        .replace("@KILLALL@", KILLALL_SCRIPT)
        .replace("@K3S_BIN@", K3S_BIN)
        .replace("@BIN_DIR@", BIN_DIR)
        .replace("@KUBELET_DIR@", KUBELET_DIR)
        .replace("@SERVICE@", service)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::host::system::{HostSystem, RealSystem};

    /// Contract section 2, between its markers.
    const CONTRACT_SERVER_UNIT: &str = "[Unit]
Description=Lightweight Kubernetes
Documentation=https://k3s.io
Wants=network-online.target
After=network-online.target

[Install]
WantedBy=multi-user.target

[Service]
Type=notify
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/sysconfig/%N
EnvironmentFile=-/etc/systemd/system/k3s.service.env
KillMode=process
Delegate=yes
User=root
# Having non-zero Limit*s causes performance problems due to accounting overhead
# in the kernel. We recommend using cgroups to do container-local accounting.
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStartPre=-/sbin/modprobe br_netfilter
ExecStartPre=-/sbin/modprobe overlay
ExecStart=/usr/local/bin/k3s \\
    server \\

";

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, Secret)> {
        pairs.iter().map(|(n, v)| (n.to_string(), Secret::new(*v))).collect()
    }

    /// A program the test needs, or a failure naming the Debian package that has it.
    fn required(program: &str, package: &str) -> std::path::PathBuf {
        RealSystem::host()
            .find_command(program)
            .unwrap_or_else(|| panic!("{program} is not installed: this test needs it (apt-get install {package})"))
    }

    #[test]
    fn server_unit_is_the_contracts_text_byte_for_byte() {
        assert_eq!(unit_text(Role::Server), CONTRACT_SERVER_UNIT);
        assert!(unit_text(Role::Server).ends_with("k3s \\\n    server \\\n\n"));
    }

    #[test]
    fn agent_unit_differs_only_in_its_env_file_and_command() {
        let server = unit_text(Role::Server);
        let agent = unit_text(Role::Agent);
        let differing: Vec<(&str, &str)> = server.lines().zip(agent.lines()).filter(|(s, a)| s != a).collect();
        assert_eq!(
            differing,
            vec![
                (
                    "EnvironmentFile=-/etc/systemd/system/k3s.service.env",
                    "EnvironmentFile=-/etc/systemd/system/k3s-agent.service.env"
                ),
                ("    server \\", "    agent \\"),
            ]
        );
        assert_eq!(server.len() + "-agent".len() - 1, agent.len(), "`-agent`, and `agent` for `server`: nothing else");
    }

    #[test]
    fn env_lines_are_single_quoted_in_install_sh_order() {
        let text = env_text(&env(&[
            ("K3S_URL", "https://192.168.56.10:6443"),
            ("no_proxy", "localhost,127.0.0.1"),
            ("K3S_TOKEN", "K10abc::server:pw"),
            ("HTTP_PROXY", "http://proxy:3128"),
            ("CONTAINERD_HTTP_PROXY", "http://proxy:3128"),
            ("EMPTY", ""),
        ]))
        .unwrap();
        assert_eq!(
            text,
            "CONTAINERD_HTTP_PROXY='http://proxy:3128'\nK3S_TOKEN='K10abc::server:pw'\n\
             K3S_URL='https://192.168.56.10:6443'\nHTTP_PROXY='http://proxy:3128'\nno_proxy='localhost,127.0.0.1'\n\
             EMPTY=''\n"
        );
    }

    #[test]
    fn a_server_without_variables_gets_an_empty_env_file() {
        assert_eq!(env_text(&[]).unwrap(), "");
    }

    /// What install.sh's `sh -c export` prints, from the real dash, for values with quotes,
    /// blanks, backslashes and shell syntax: the same lines, in the same order.
    #[test]
    fn env_lines_are_what_dash_export_prints() {
        let dash = required("dash", "dash");
        let pairs = [
            ("K3S_URL", "https://10.0.0.1:6443"),
            ("K3S_TOKEN", "it's a \"token\" with $HOME, `id`, \\n and  two  blanks"),
            ("K3S_NODE_NAME", "'"),
            ("K3S_NODE_LABEL", "a''b'"),
            ("K3S_EMPTY", ""),
            ("HTTPS_PROXY", "http://user:p'w@proxy:3128"),
            ("CONTAINERD_NO_PROXY", "a=b;c&d|e#f*g?h"),
        ];
        let out = Command::new(dash).arg("-c").arg("export").env_clear().envs(pairs).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let names: Vec<&str> = pairs.iter().map(|(n, _)| *n).collect();
        // dash lists every variable, ours among them, sorted: install.sh's greps keep the groups.
        let printed = String::from_utf8(out.stdout).unwrap();
        let exported: Vec<&str> = printed
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter(|l| names.iter().any(|n| l.starts_with(&format!("{n}="))))
            .collect();
        let (k3s, proxies): (Vec<&str>, Vec<&str>) = exported.iter().partition(|l| !l.starts_with("HTTPS_PROXY="));
        let expected: String = k3s.iter().chain(&proxies).map(|l| format!("{l}\n")).collect();
        assert_eq!(exported.len(), pairs.len(), "{printed}");
        assert_eq!(env_text(&env(&pairs)).unwrap(), expected);
        assert!(expected.contains("K3S_NODE_NAME=''\"'\"\n"), "{expected}");
    }

    #[test]
    fn bad_env_is_refused_without_showing_the_value() {
        let err = env_text(&env(&[("K3S_TOKEN", "top\nsecret")])).unwrap_err();
        assert!(err.contains("K3S_TOKEN") && !err.contains("secret"), "{err}");
        assert!(env_text(&env(&[("K3S_TOKEN", "cr\rsecret")])).is_err());
        assert!(env_text(&env(&[("1BAD", "x")])).is_err());
        assert!(env_text(&env(&[("A-B", "x")])).is_err());
    }

    fn all_scripts() -> Vec<(String, String)> {
        let custom = Path::new("/srv/it's k3s");
        let default = Path::new(crate::host::k3s::DEFAULT_DATA_DIR);
        vec![
            ("k3s-killall.sh (default data dir)".into(), killall_script(default)),
            ("k3s-killall.sh (custom data dir)".into(), killall_script(custom)),
            ("k3s-uninstall.sh (default data dir)".into(), uninstall_script(Role::Server, default)),
            ("k3s-uninstall.sh (custom data dir)".into(), uninstall_script(Role::Server, custom)),
            ("k3s-agent-uninstall.sh (default data dir)".into(), uninstall_script(Role::Agent, default)),
            ("k3s-agent-uninstall.sh (custom data dir)".into(), uninstall_script(Role::Agent, custom)),
        ]
    }

    /// POSIX sh (dash parses them) and nothing shellcheck objects to, for a server and an agent,
    /// with the default data dir and one that needs quoting.
    #[test]
    fn scripts_are_posix_sh_and_shellcheck_clean() {
        let shellcheck = required("shellcheck", "shellcheck");
        let dash = required("dash", "dash");
        let dir = tempfile::tempdir().unwrap();
        for (i, (name, text)) in all_scripts().into_iter().enumerate() {
            let path = dir.path().join(format!("script-{i}.sh"));
            std::fs::write(&path, &text).unwrap();
            let parsed = RealSystem::host().run(&dash, &["-n", path.to_str().unwrap()]).unwrap();
            assert!(parsed.success(), "{name} does not parse: {}", parsed.failure_summary());
            let checked = RealSystem::host()
                .run(&shellcheck, &["--shell=sh", "--severity=style", path.to_str().unwrap()])
                .unwrap();
            assert!(checked.success(), "shellcheck on {name}:\n{}{}", checked.stdout, checked.stderr);
        }
    }

    #[test]
    fn the_data_dir_is_the_scripts_default_and_k3s_data_dir_overrides_it() {
        let odd = Path::new("/srv/it's k3s");
        for (name, text) in [("killall", killall_script(odd)), ("uninstall", uninstall_script(Role::Agent, odd))] {
            assert!(text.contains("\nDEFAULT_DATA_DIR='/srv/it'\"'\"'s k3s'\n"), "{name}:\n{text}");
            assert!(text.contains("\nK3S_DATA_DIR=${K3S_DATA_DIR:-$DEFAULT_DATA_DIR}\n"), "{name}");
            assert!(text.contains("exec sudo --preserve-env=K3S_DATA_DIR \"$0\" \"$@\""), "{name}");
        }
    }

    #[test]
    fn uninstall_scripts_remove_their_own_role_and_point_to_k3node_reset() {
        let server = uninstall_script(Role::Server, Path::new("/var/lib/rancher/k3s"));
        assert!(server.contains("'k3node reset' does the same but moves the data aside"));
        assert!(server.contains("\nSERVICE=k3s\n"));
        assert!(server.contains(
            "rm -f '/etc/systemd/system/k3s.service' '/etc/systemd/system/k3s.service.env' \
             '/var/lib/rancher/k3node/k3s.applied.json'"
        ));
        assert!(server.contains("rm -f '/usr/local/bin/k3s-uninstall.sh'\n"));
        let agent = uninstall_script(Role::Agent, Path::new("/var/lib/rancher/k3s"));
        assert!(agent.contains("\nSERVICE=k3s-agent\n"));
        assert!(agent.contains("'/var/lib/rancher/k3node/k3s-agent.applied.json'"));
        assert!(agent.contains("rm -f '/usr/local/bin/k3s-agent-uninstall.sh'\n"));
        for text in [server, agent, killall_script(Path::new("/x"))] {
            let placeholder =
                text.match_indices('@').any(|(i, _)| text[i + 1..].starts_with(|c: char| c.is_ascii_uppercase()));
            assert!(!placeholder, "a placeholder was left:\n{text}");
        }
    }
}
