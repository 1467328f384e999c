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
                key_type: key.algorithm().as_str().to_string(),
                fingerprint: fingerprint(key),
                known_hosts: known_hosts.to_path_buf(),
                others: Vec::new(),
            }),
            HostKeyPolicy::AcceptNew => {
                let _guard = LEARN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
                learn(address, port, key, known_hosts).map_err(known_hosts_error)?;
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

/// Appends the host's key as OpenSSH writes it (`address type base64`, `[address]:port` off port
/// 22), on a line of its own: no empty line, and a file without a final newline gets one first.
fn learn(address: &str, port: u16, key: &PublicKey, known_hosts: &Path) -> Result<(), String> {
    let existing = match std::fs::read_to_string(known_hosts) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e.to_string()),
    };
    let pattern = if port == 22 { address.to_string() } else { format!("[{address}]:{port}") };
    let encoded = key.to_openssh().map_err(|e| e.to_string())?;
    // The key as type and base64 only: a comment has no place in known_hosts.
    let key_text: Vec<&str> = encoded.split_whitespace().take(2).collect();
    let mut text = existing;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("{pattern} {}\n", key_text.join(" ")));
    let mode = std::fs::metadata(known_hosts)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap_or(0o644);
    crate::fsutil::write_atomic(known_hosts, text.as_bytes(), mode).map_err(|e| e.to_string())
}

/// `ed25519` for `ssh-ed25519`, `ecdsa` for `ecdsa-sha2-nistp256`, `rsa` for `ssh-rsa`: the names
/// ssh-keyscan and the host's key files use.
pub fn short_type(key_type: &str) -> &str {
    match key_type {
        t if t.contains("ed25519") => "ed25519",
        t if t.starts_with("ecdsa") => "ecdsa",
        t if t.contains("rsa") => "rsa",
        t => t,
    }
}

/// The command that shows the same key's fingerprint from another path to the host.
pub fn keyscan_line(address: &str, key_type: &str) -> String {
    let t = short_type(key_type);
    match address.rsplit_once(':').filter(|(h, p)| !h.contains(':') && p.chars().all(|c| c.is_ascii_digit())) {
        Some((host, port)) => format!("ssh-keyscan -t {t} -p {port} {host}"),
        None => format!("ssh-keyscan -t {t} {address}"),
    }
}

/// "; it also offers TYPE FINGERPRINT (check: `ssh-keyscan -t T ADDRESS | ssh-keygen -lf -`), ..."
/// for a host's keys of other types than the one it presented; empty when there are none.
pub fn also_offered(address: &str, others: &[(String, String)]) -> String {
    let each: Vec<String> = others
        .iter()
        .map(|(key_type, fingerprint)| {
            format!("{key_type} {fingerprint} (`{} | ssh-keygen -lf -`)", keyscan_line(address, key_type))
        })
        .collect();
    match each.is_empty() {
        true => String::new(),
        false => format!("; it also offers {}", each.join(", ")),
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
        assert!(text.contains(&format!("ssh-keygen -R 10.0.0.1 -f {}", kh.display())), "{text}");
    }

    #[test]
    fn an_unknown_key_is_named_by_type_with_the_line_that_checks_it_out_of_band() {
        let dir = tempfile::tempdir().unwrap();
        let kh = dir.path().join("known_hosts");
        let k = key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEJH77aISLRbzTHUZqnq5ISUKw8zXpM8/X4UZD7OE99G");
        let text = verify("h1", "10.0.0.1", 2222, &k, &kh, HostKeyPolicy::Strict).unwrap_err().to_string();
        assert!(text.contains(&format!("it presents ssh-ed25519 {}", fingerprint(&k))), "{text}");
        assert!(text.contains("`ssh-keyscan -t ed25519 -p 2222 10.0.0.1 | ssh-keygen -lf -`"), "{text}");
        assert!(text.contains("ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub"), "{text}");
        assert!(!text.contains("also offers"), "no other keys known: {text}");

        let others = vec![
            ("ecdsa-sha2-nistp256".to_string(), "SHA256:ecdsaprint".to_string()),
            ("ssh-rsa".to_string(), "SHA256:rsaprint".to_string()),
        ];
        let TransportError::HostKeyUnknown { host, address, key_type, fingerprint, known_hosts, .. } =
            verify("h1", "10.0.0.1", 2222, &k, &kh, HostKeyPolicy::Strict).unwrap_err()
        else {
            panic!("not an unknown key")
        };
        let text =
            TransportError::HostKeyUnknown { host, address, key_type, fingerprint, known_hosts, others }.to_string();
        assert!(
            text.contains(
                "; it also offers ecdsa-sha2-nistp256 SHA256:ecdsaprint (`ssh-keyscan -t ecdsa -p 2222 10.0.0.1 | ssh-keygen -lf -`), \
                 ssh-rsa SHA256:rsaprint (`ssh-keyscan -t rsa -p 2222 10.0.0.1 | ssh-keygen -lf -`)"
            ),
            "{text}"
        );
    }

    #[test]
    fn recorded_keys_go_on_lines_of_their_own_without_empty_lines() {
        let dir = tempfile::tempdir().unwrap();
        let kh = dir.path().join("known_hosts");
        std::fs::write(
            &kh,
            "10.0.0.9 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFGT8+b1qm6zExEhPGXw+nlw6+c53/IEWNNCzpMLBgcK",
        )
        .unwrap();
        let k = key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEJH77aISLRbzTHUZqnq5ISUKw8zXpM8/X4UZD7OE99G");
        verify("h1", "10.0.0.1", 22, &k, &kh, HostKeyPolicy::AcceptNew).unwrap();
        verify("h2", "10.0.0.2", 2222, &k, &kh, HostKeyPolicy::AcceptNew).unwrap();
        let text = std::fs::read_to_string(&kh).unwrap();
        assert!(!text.contains("\n\n") && text.ends_with('\n'), "{text:?}");
        assert_eq!(text.lines().count(), 3);
        assert!(text.lines().nth(2).unwrap().starts_with("[10.0.0.2]:2222 ssh-ed25519 AAAA"), "{text}");
        verify("h2", "10.0.0.2", 2222, &k, &kh, HostKeyPolicy::Strict).unwrap();
    }
}
