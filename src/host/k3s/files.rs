//! The text of every file install-k3s writes: the unit (exactly the contract's), the env file,
//! and k3node's own killall and uninstall scripts (contract section 8, written from the contract).

use std::path::Path;

use super::{record_path, service_name, uninstall_script_path, KILLALL_SCRIPT, KUBELET_DIR};
use crate::protocol::preflight::Role;
use crate::protocol::Secret;

/// /etc/systemd/system/<service>.service, byte for byte what install.sh writes (contract section 2).
pub(super) fn unit_text(role: Role) -> String {
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
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStartPre=-/sbin/modprobe br_netfilter
ExecStartPre=-/sbin/modprobe overlay
ExecStart=/usr/local/bin/k3s {command}
"
    )
}

/// The env file: one `NAME=value` line per variable, in the request's order. Values are written
/// bare when systemd reads them back verbatim, else double-quoted with systemd's escapes.
/// Errors name the variable, never its value.
pub(super) fn env_text(env: &[(String, Secret)]) -> Result<String, String> {
    let mut out = String::new();
    for (name, value) in env {
        let valid_name = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(format!("env: {name:?} is not a valid variable name"));
        }
        let value = value.expose();
        if value.contains(['\n', '\r', '\0']) {
            return Err(format!(
                "env: the value of {name} contains a line break or NUL, which an env file cannot hold"
            ));
        }
        out.push_str(name);
        out.push('=');
        out.push_str(&env_value(value));
        out.push('\n');
    }
    Ok(out)
}

fn env_value(value: &str) -> String {
    let bare = !value.is_empty() && value.chars().all(|c| c.is_ascii_alphanumeric() || "_./:@%+,=~^-".contains(c));
    if bare {
        return value.to_string();
    }
    let mut quoted = String::from("\"");
    for c in value.chars() {
        if "\"\\`$".contains(c) {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// A string as one single-quoted shell word.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// /usr/local/bin/k3s-killall.sh: stops k3s and what it started, keeps every file.
pub(super) fn killall_script(data_dir: &Path) -> String {
    let data_dir = sh_quote(&data_dir.to_string_lossy());
    format!(
        r#"#!/bin/sh
# k3s-killall.sh, written by k3node: stops k3s and everything it started on this host
# (containers, mounts, network links, iptables rules). It deletes no configuration and no data.
# `k3node reset` does this and then uninstalls k3s, moving its data aside instead of deleting it.
set -u
[ "$(id -u)" -eq 0 ] || exec sudo "$0" "$@"

DATA_DIR={data_dir}

for unit in /etc/systemd/system/k3s*.service; do
    [ -f "$unit" ] && systemctl stop "${{unit##*/}}"
done

# Processes run from k3s's unpacked binaries (containerd-shims, and so the containers) or k3s itself.
k3s_pids() {{
    for proc in /proc/[0-9]*; do
        exe=$(readlink "$proc/exe" 2>/dev/null) || continue
        case "$exe" in
            "$DATA_DIR"/data/*/bin/*|/usr/local/bin/k3s) echo "${{proc#/proc/}}" ;;
        esac
    done
}}

children_of() {{
    for stat in /proc/[0-9]*/stat; do
        line=$(cat "$stat" 2>/dev/null) || continue
        ppid=$(echo "${{line##*) }}" | cut -d ' ' -f 2)
        if [ "$ppid" = "$1" ]; then
            child=${{stat#/proc/}}
            echo "${{child%/stat}}"
        fi
    done
}}

# A subshell body keeps each level's loop variable its own. Stopped first, so that no process
# forks while its children are listed; pid lists are split into words on purpose.
killtree() (
    for victim in "$@"; do
        kill -STOP "$victim" 2>/dev/null || continue
        # shellcheck disable=SC2046
        killtree $(children_of "$victim")
        kill -KILL "$victim" 2>/dev/null
    done
)

# shellcheck disable=SC2046
killtree $(k3s_pids)

# Mount points at or below a directory, deepest first.
unmount_below() {{
    awk -v dir="$1" '$5 == dir || index($5, dir "/") == 1 {{ print $5 }}' /proc/self/mountinfo | sort -r |
        while read -r mnt; do
            umount "$mnt" 2>/dev/null || umount -l "$mnt"
        done
}}
unmount_below /run/k3s
unmount_below /var/lib/kubelet/pods
unmount_below /var/lib/kubelet/plugins

for netns in /run/netns/cni-*; do
    [ -e "$netns" ] && ip netns delete "${{netns##*/}}"
done

for link in cni0 flannel.1 flannel-v6.1 kube-ipvs0 flannel-wg; do
    [ -e "/sys/class/net/$link" ] && ip link delete "$link"
done

rm -rf /var/lib/cni/

for tool in iptables ip6tables; do
    command -v "$tool-save" >/dev/null 2>&1 || continue
    command -v "$tool-restore" >/dev/null 2>&1 || continue
    "$tool-save" | grep -v -e 'KUBE-' -e 'CNI-' | grep -iv flannel | "$tool-restore"
done
exit 0
"#
    )
}

/// /usr/local/bin/k3s-uninstall.sh (server) or k3s-agent-uninstall.sh (agent).
pub(super) fn uninstall_script(role: Role, data_dir: &Path) -> String {
    let service = service_name(role);
    let me = uninstall_script_path(service);
    let me = me.display();
    let record = record_path(service);
    let record = record.display();
    let data_dir = sh_quote(&data_dir.to_string_lossy());
    format!(
        r#"#!/bin/sh
# {service}-uninstall.sh, written by k3node: removes k3s ({service}.service) from this host and
# DELETES its data, as the official uninstall script does.
# `k3node reset` does the same but moves the data aside instead of deleting it: the data dir,
# /etc/rancher/k3s and /var/lib/kubelet are renamed to <path>.k3node-reset-<UTC time>.
set -u
[ "$(id -u)" -eq 0 ] || exec sudo "$0" "$@"

SERVICE={service}
DATA_DIR={data_dir}

echo "This removes $SERVICE from this host and DELETES its data: $DATA_DIR, /etc/rancher/k3s, {KUBELET_DIR}." >&2
echo "'k3node reset' does the same but moves the data aside instead of deleting it." >&2
if [ -t 0 ]; then
    echo "Press Ctrl-C within 10 seconds to keep everything." >&2
    sleep 10
fi

[ -x {KILLALL_SCRIPT} ] && {KILLALL_SCRIPT}

systemctl disable "$SERVICE" 2>/dev/null
systemctl reset-failed "$SERVICE" 2>/dev/null
rm -f "/etc/systemd/system/$SERVICE.service" "/etc/systemd/system/$SERVICE.service.env" {record}
systemctl daemon-reload

remaining=
for unit in /etc/systemd/system/k3s*.service; do
    [ -f "$unit" ] && remaining="$remaining ${{unit##*/}}"
done
if [ -n "$remaining" ]; then
    echo "Still installed:$remaining; k3s, its data and the shared files stay." >&2
    rm -f {me}
    exit 0
fi

for cmd in kubectl crictl ctr; do
    link="/usr/local/bin/$cmd"
    [ -L "$link" ] || continue
    case "$(readlink "$link")" in
        k3s|/usr/local/bin/k3s) rm -f "$link" ;;
    esac
done

rm -rf /etc/rancher/k3s /run/k3s /run/flannel "$DATA_DIR" {KUBELET_DIR}
rm -f /usr/local/bin/k3s {KILLALL_SCRIPT} {me}
exit 0
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::system::{HostSystem, RealSystem};

    #[test]
    fn server_unit_is_the_contracts_text() {
        let expected = "[Unit]\nDescription=Lightweight Kubernetes\nDocumentation=https://k3s.io\n\
            Wants=network-online.target\nAfter=network-online.target\n\n[Install]\nWantedBy=multi-user.target\n\n\
            [Service]\nType=notify\nEnvironmentFile=-/etc/default/%N\nEnvironmentFile=-/etc/sysconfig/%N\n\
            EnvironmentFile=-/etc/systemd/system/k3s.service.env\nKillMode=process\nDelegate=yes\nUser=root\n\
            LimitNOFILE=1048576\nLimitNPROC=infinity\nLimitCORE=infinity\nTasksMax=infinity\nTimeoutStartSec=0\n\
            Restart=always\nRestartSec=5s\nExecStartPre=-/sbin/modprobe br_netfilter\n\
            ExecStartPre=-/sbin/modprobe overlay\nExecStart=/usr/local/bin/k3s server\n";
        assert_eq!(unit_text(Role::Server), expected);
    }

    #[test]
    fn agent_unit_differs_only_in_env_file_and_command() {
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
                ("ExecStart=/usr/local/bin/k3s server", "ExecStart=/usr/local/bin/k3s agent"),
            ]
        );
        assert_eq!(server.lines().count(), agent.lines().count());
    }

    #[test]
    fn env_lines_in_order_quoted_only_when_needed() {
        let env = vec![
            ("K3S_URL".to_string(), Secret::new("https://192.168.56.10:6443")),
            ("K3S_TOKEN".to_string(), Secret::new("K10abc::server:pw")),
            ("NO_PROXY".to_string(), Secret::new("localhost,127.0.0.1,10.42.0.0/16")),
            ("ODD".to_string(), Secret::new("a b\"c$d\\e")),
            ("EMPTY".to_string(), Secret::new("")),
        ];
        assert_eq!(
            env_text(&env).unwrap(),
            "K3S_URL=https://192.168.56.10:6443\nK3S_TOKEN=K10abc::server:pw\nNO_PROXY=localhost,127.0.0.1,10.42.0.0/16\n\
             ODD=\"a b\\\"c\\$d\\\\e\"\nEMPTY=\"\"\n"
        );
    }

    #[test]
    fn bad_env_is_refused_without_showing_the_value() {
        let err = env_text(&[("K3S_TOKEN".into(), Secret::new("top\nsecret"))]).unwrap_err();
        assert!(err.contains("K3S_TOKEN") && !err.contains("secret"), "{err}");
        assert!(env_text(&[("1BAD".into(), Secret::new("x"))]).is_err());
        assert!(env_text(&[("A-B".into(), Secret::new("x"))]).is_err());
    }

    /// The scripts parse (`sh -n`), and data dirs with quotes stay one word.
    #[test]
    fn scripts_are_valid_shell() {
        let dir = tempfile::tempdir().unwrap();
        let sh = RealSystem::host().find_command("sh").expect("sh");
        let odd = Path::new("/srv/it's k3s");
        for (name, text) in [
            ("killall", killall_script(Path::new("/var/lib/rancher/k3s"))),
            ("killall-odd", killall_script(odd)),
            ("server", uninstall_script(Role::Server, odd)),
            ("agent", uninstall_script(Role::Agent, Path::new("/var/lib/rancher/k3s"))),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, &text).unwrap();
            let out = RealSystem::host().run(&sh, &["-n", path.to_str().unwrap()]).unwrap();
            assert!(out.success(), "{name}: {}\n{text}", out.failure_summary());
        }
        assert!(killall_script(odd).contains(r"DATA_DIR='/srv/it'\''s k3s'"));
    }

    #[test]
    fn uninstall_scripts_point_to_k3node_reset_and_remove_their_own_role() {
        let server = uninstall_script(Role::Server, Path::new("/var/lib/rancher/k3s"));
        assert!(server.contains("'k3node reset' does the same but moves the data aside"));
        assert!(server.contains("SERVICE=k3s\n"));
        assert!(
            server.contains("rm -f /usr/local/bin/k3s /usr/local/bin/k3s-killall.sh /usr/local/bin/k3s-uninstall.sh")
        );
        let agent = uninstall_script(Role::Agent, Path::new("/var/lib/rancher/k3s"));
        assert!(agent.contains("SERVICE=k3s-agent\n"));
        assert!(agent.contains("/var/lib/rancher/k3node/k3s-agent.applied.json"));
        assert!(agent.contains("/usr/local/bin/k3s-agent-uninstall.sh"));
    }
}
