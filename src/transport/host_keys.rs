//! Host key verification against an OpenSSH known_hosts file.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use russh::keys::{HashAlg, PublicKey};

use super::TransportError;

/// What to do with a host whose key is not recorded yet. A changed key is refused under every policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyPolicy {
    Strict,
    /// Trust on first use: record an unknown key, like OpenSSH's StrictHostKeyChecking=accept-new.
    AcceptNew,
}

/// Appends from parallel connections must not interleave inside one line.
static LEARN_LOCK: Mutex<()> = Mutex::new(());

pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Checks `key` presented by `address:port`; `host` is the cluster file's name, for messages.
pub fn verify(
    host: &str,
    address: &str,
    port: u16,
    key: &PublicKey,
    known_hosts: &Path,
    policy: HostKeyPolicy,
) -> Result<(), TransportError> {
    let known_hosts_error =
        |detail: String| TransportError::KnownHosts { host: host.to_string(), path: known_hosts.to_path_buf(), detail };
    match russh::keys::check_known_hosts_path(address, port, key, known_hosts) {
        Ok(true) => Ok(()),
        Ok(false) => match policy {
            HostKeyPolicy::Strict => Err(TransportError::HostKeyUnknown {
                host: host.to_string(),
                address: display_address(address, port),
                fingerprint: fingerprint(key),
                known_hosts: known_hosts.to_path_buf(),
            }),
            HostKeyPolicy::AcceptNew => {
                let _guard = LEARN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
                russh::keys::known_hosts::learn_known_hosts_path(address, port, key, known_hosts)
                    .map_err(|e| known_hosts_error(e.to_string()))?;
                tracing::info!(host, fingerprint = %fingerprint(key), "recorded new host key in {}", known_hosts.display());
                Ok(())
            }
        },
        Err(russh::keys::Error::KeyChanged { line }) => {
            let expected = russh::keys::known_hosts::known_host_keys_path(address, port, known_hosts)
                .ok()
                .and_then(|keys| keys.into_iter().find(|(l, _)| *l == line))
                .map(|(_, k)| fingerprint(&k))
                .unwrap_or_else(|| "an unreadable key".to_string());
            Err(TransportError::HostKeyChanged {
                host: host.to_string(),
                address: display_address(address, port),
                expected,
                actual: fingerprint(key),
                known_hosts: known_hosts.to_path_buf(),
                line,
            })
        }
        Err(e) => Err(known_hosts_error(e.to_string())),
    }
}

fn display_address(address: &str, port: u16) -> String {
    if port == 22 {
        address.to_string()
    } else {
        format!("{address}:{port}")
    }
}

/// `~/.ssh/known_hosts`, the default when the cluster file names none.
pub fn default_known_hosts() -> PathBuf {
    crate::home::home_or_root().join(".ssh/known_hosts")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> PublicKey {
        PublicKey::from_openssh(text).unwrap()
    }

    #[test]
    fn unknown_refused_then_learned_then_changed_refused_with_both_fingerprints() {
        let dir = tempfile::tempdir().unwrap();
        let kh = dir.path().join("known_hosts");
        let first = key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEJH77aISLRbzTHUZqnq5ISUKw8zXpM8/X4UZD7OE99G");
        let second = key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFGT8+b1qm6zExEhPGXw+nlw6+c53/IEWNNCzpMLBgcK");
        let err = verify("h1", "10.0.0.1", 22, &first, &kh, HostKeyPolicy::Strict).unwrap_err();
        assert!(matches!(err, TransportError::HostKeyUnknown { .. }), "{err}");
        assert!(err.to_string().contains(&fingerprint(&first)));
        verify("h1", "10.0.0.1", 22, &first, &kh, HostKeyPolicy::AcceptNew).unwrap();
        verify("h1", "10.0.0.1", 22, &first, &kh, HostKeyPolicy::Strict).unwrap();
        let err = verify("h1", "10.0.0.1", 22, &second, &kh, HostKeyPolicy::AcceptNew).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&fingerprint(&first)) && text.contains(&fingerprint(&second)), "{text}");
    }
}
