//! The operator's home directory, resolved one way everywhere (SSH files, the cache, the
//! kubeconfig, `~` in the cluster file): $HOME, else the password database (HOME can be unset
//! under cron or systemd).

use std::path::PathBuf;

pub fn home_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(home));
    }
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.dir)
        .filter(|d| !d.as_os_str().is_empty())
}

/// The home directory, or `/` when none can be found (a path under it then simply does not exist).
pub fn home_or_root() -> PathBuf {
    home_dir().unwrap_or_else(|| PathBuf::from("/"))
}
