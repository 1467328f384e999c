//! Private keys for public-key authentication, loaded once per run before any connection so that
//! a passphrase is asked for once, not once per host.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh::keys::PrivateKey;

use super::TransportError;

/// Environment variable that supplies the passphrase of encrypted keys in automation.
pub const PASSPHRASE_ENV: &str = "K3NODE_SSH_KEY_PASSPHRASE";

/// The keys OpenSSH tries when none is configured.
pub fn default_identity_files() -> Vec<PathBuf> {
    let ssh = crate::home::home_or_root().join(".ssh");
    ["id_ed25519", "id_ecdsa", "id_rsa"].iter().map(|n| ssh.join(n)).collect()
}

#[derive(Default, Clone)]
pub struct Keyring {
    keys: BTreeMap<PathBuf, Arc<PrivateKey>>,
}

impl Keyring {
    /// Loads `required` keys (a missing or unreadable one is an error: the user named it) and
    /// whichever of `optional` exist (OpenSSH's defaults).
    pub fn load(required: &[PathBuf], optional: &[PathBuf]) -> Result<Keyring, TransportError> {
        let mut keyring = Keyring::default();
        for path in required {
            if !keyring.keys.contains_key(path) {
                let key = load_key(path)?;
                keyring.keys.insert(path.clone(), Arc::new(key));
            }
        }
        for path in optional {
            if path.exists() && !keyring.keys.contains_key(path) {
                match load_key(path) {
                    Ok(key) => {
                        keyring.keys.insert(path.clone(), Arc::new(key));
                    }
                    Err(e) => tracing::warn!("skipping default key: {e}"),
                }
            }
        }
        Ok(keyring)
    }

    pub fn get(&self, path: &Path) -> Option<Arc<PrivateKey>> {
        self.keys.get(path).cloned()
    }

    pub fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.keys.keys()
    }
}

fn load_key(path: &Path) -> Result<PrivateKey, TransportError> {
    let key_error = |detail: String| TransportError::Key { path: path.to_path_buf(), detail };
    match russh::keys::load_secret_key(path, None) {
        Ok(key) => Ok(key),
        Err(russh::keys::Error::KeyIsEncrypted) => {
            let passphrase = passphrase_for(path).map_err(key_error)?;
            russh::keys::load_secret_key(path, Some(&passphrase))
                .map_err(|e| key_error(format!("cannot decrypt it with the passphrase given: {e}")))
        }
        Err(russh::keys::Error::IO(e)) => Err(key_error(format!("cannot read it: {e}"))),
        Err(e) => Err(key_error(format!("not a usable private key: {e}"))),
    }
}

fn passphrase_for(path: &Path) -> Result<String, String> {
    if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        return Err(format!("it is encrypted; set {PASSPHRASE_ENV} or run k3node from a terminal to be asked"));
    }
    rpassword::prompt_password(format!("Passphrase for {}: ", path.display()))
        .map_err(|e| format!("cannot read the passphrase: {e}"))
}
