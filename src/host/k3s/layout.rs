//! Every path of k3s on a host, once: where install.sh puts things (contract sections 2, 3, 6,
//! 7, 8) and where k3node keeps its own records.

use std::path::{Path, PathBuf};

use crate::protocol::node::Role;

/// Where the operator uploads k3s and where install.sh puts it.
pub const K3S_BIN: &str = "/usr/local/bin/k3s";
pub const BIN_DIR: &str = "/usr/local/bin";
pub const UNIT_DIR: &str = "/etc/systemd/system";
pub const CONFIG_DIR: &str = "/etc/rancher/k3s";
pub const CONFIG_FILE: &str = "/etc/rancher/k3s/config.yaml";
/// Drop-ins read after config.yaml, in name order.
pub const CONFIG_DROPIN_DIR: &str = "/etc/rancher/k3s/config.yaml.d";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/rancher/k3s";
/// k3s's default data dir parent, whose free space preflight measures.
pub const RANCHER_DIR: &str = "/var/lib/rancher";
pub const DEFAULT_KUBECONFIG: &str = "/etc/rancher/k3s/k3s.yaml";
pub const KUBELET_DIR: &str = "/var/lib/kubelet";
/// Where every node keeps its password (contract section 6).
pub const NODE_DIR: &str = "/etc/rancher/node";
/// k3node's own state on a host: records of what each service was started with.
pub const RECORD_DIR: &str = "/var/lib/rancher/k3node";
pub const KILLALL_SCRIPT: &str = "/usr/local/bin/k3s-killall.sh";
/// Where snapshot archives go unless the request names another directory (0700; archives 0600).
pub const SNAPSHOT_DIR: &str = "/var/lib/rancher/k3node/snapshots";
/// k3node's record of the last restore on this host: what it moved aside, for re-runs and rollback.
pub const RESTORE_RECORD: &str = "/var/lib/rancher/k3node/restore.json";
/// What a restore's check staged while k3s ran, kept for the restore that follows it.
pub const RESTORE_STAGED: &str = "/var/lib/rancher/k3node/restore-staged.json";
/// Registry mirrors and credentials, beside config.yaml.
pub const REGISTRIES_FILE: &str = "/etc/rancher/k3s/registries.yaml";
/// The node password (contract section 6).
pub const NODE_PASSWORD_FILE: &str = "/etc/rancher/node/password";
/// Below the data dir: the server's part (token, tls, cred, manifests, db).
pub const SERVER_DIR: &str = "server";
/// Below the data dir: kine's SQLite datastore, in WAL mode (`-wal` and `-shm` beside it).
pub const SQLITE_DB: &str = "server/db/state.db";
pub const SQLITE_SIDECARS: [&str; 2] = ["server/db/state.db-wal", "server/db/state.db-shm"];
/// Below the data dir: embedded etcd's data, and where `k3s etcd-snapshot` keeps snapshots.
pub const ETCD_DATA_DIR: &str = "server/db/etcd";
pub const ETCD_SNAPSHOT_DIR: &str = "server/db/snapshots";
/// Below the data dir: the auto-deploy manifests dir.
pub const MANIFESTS_DIR: &str = "server/manifests";
/// What k3s itself writes into the manifests dir at every start (its packaged components): not
/// the user's, so a snapshot leaves them out and k3s writes them again after a restore.
pub const K3S_PACKAGED_MANIFESTS: [&str; 7] = [
    "ccm.yaml",
    "coredns.yaml",
    "local-storage.yaml",
    "metrics-server",
    "rolebindings.yaml",
    "runtimes.yaml",
    "traefik.yaml",
];
/// Commands linked to k3s in [`BIN_DIR`] where the host has none of its own.
pub const LINKED_COMMANDS: [&str; 3] = ["kubectl", "crictl", "ctr"];

/// `k3s` for a server, `k3s-agent` for an agent, as install.sh names them.
pub fn service_name(role: Role) -> &'static str {
    match role {
        Role::Server => "k3s",
        Role::Agent => "k3s-agent",
    }
}

pub fn unit_path(service: &str) -> PathBuf {
    Path::new(UNIT_DIR).join(format!("{service}.service"))
}

pub fn env_path(service: &str) -> PathBuf {
    Path::new(UNIT_DIR).join(format!("{service}.service.env"))
}

pub fn uninstall_script_path(service: &str) -> PathBuf {
    Path::new(BIN_DIR).join(format!("{service}-uninstall.sh"))
}

/// k3node's record of what `service` was last started with (`<service>.applied.json`).
pub fn record_path(service: &str) -> PathBuf {
    Path::new(RECORD_DIR).join(format!("{service}.applied.json"))
}

/// True when a link's target is the k3s binary (relative, as install.sh makes it, or absolute).
pub fn links_to_k3s(target: &Path) -> bool {
    target == Path::new("k3s") || target == Path::new(K3S_BIN)
}
