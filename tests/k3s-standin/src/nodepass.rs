//! Node passwords (contract section 6), as k3s keeps them.
//!
//! Node side: every node (servers too: they run an agent) has a random password in
//! `/etc/rancher/node/password` (16 random bytes as hex and a newline, mode 0600, created at
//! first start and reused), sent with each registration in the `k3s-Node-Name` /
//! `k3s-Node-Password` headers. `$K3S_STANDIN_NODE_CONFIG_DIR` replaces `/etc/rancher/node`
//! (test knob: several nodes on one machine).
//!
//! Server side: the first registration of a name stores an scrypt hash of the password in the
//! immutable Secret `<name>.node-password.k3s` (kube-system, type `k3s.cattle.io/node-password`,
//! data.hash in k3s's `$1:<salt hex>:15:8:1:<base64 key>` format); every later registration under
//! that name must bring the same password, else it is refused with 403 and the node logs k3s's
//! "Node password rejected" message and keeps retrying. Deleting the Node deletes the Secret
//! (store::delete), so that the name can register again. The password never reaches a log.

use crate::datastore::Datastore;
use crate::resources;
use crate::store::{self, ApiError};
use anyhow::{Context, Result};
use base64::Engine;
use serde_json::{json, Value};
use std::path::PathBuf;

pub const NAME_HEADER: &str = "k3s-Node-Name";
pub const PASSWORD_HEADER: &str = "k3s-Node-Password";
pub const SECRET_TYPE: &str = "k3s.cattle.io/node-password";

/// scrypt parameters of k3s's hasher: N = 2^15, r = 8, p = 1, 64-byte key, 8-byte salt.
const LOG_N: u8 = 15;
const R: u32 = 8;
const P: u32 = 1;
const KEY_LEN: usize = 64;

pub fn config_dir() -> PathBuf {
    std::env::var_os("K3S_STANDIN_NODE_CONFIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/rancher/node"))
}

pub fn password_file() -> PathBuf {
    config_dir().join("password")
}

/// The node's password: read from the file, or created there (0600) at first start.
pub fn ensure_local() -> Result<String> {
    let path = password_file();
    if let Ok(text) = std::fs::read_to_string(&path) {
        let p = text.trim().to_string();
        if !p.is_empty() {
            return Ok(p);
        }
    }
    let dir = config_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let bytes: [u8; 16] = rand::random();
    let password = hex::encode(bytes);
    crate::pki::write_private(&path, format!("{password}\n").as_bytes())
        .with_context(|| format!("writing node password file {}", path.display()))?;
    Ok(password)
}

/// `Node password rejected, ...`: what the k3s agent reports when the server answers 403.
pub fn rejected_message() -> String {
    format!(
        "Node password rejected, duplicate hostname or contents of '{}' may not match server node-passwd entry, try enabling a unique node name with the --with-node-id flag",
        password_file().display()
    )
}

pub fn secret_name(node: &str) -> String {
    format!("{}.node-password.k3s", node.to_lowercase())
}

fn scrypt_key(password: &str, salt: &[u8], log_n: u8, r: u32, p: u32, len: usize) -> Result<Vec<u8>> {
    let params = scrypt::Params::new(log_n, r, p).map_err(|e| anyhow::anyhow!("scrypt parameters: {e}"))?;
    let mut out = vec![0u8; len];
    scrypt::scrypt(password.as_bytes(), salt, &params, &mut out).map_err(|e| anyhow::anyhow!("scrypt: {e}"))?;
    Ok(out)
}

pub fn hash(password: &str) -> Result<String> {
    let salt: [u8; 8] = rand::random();
    let key = scrypt_key(password, &salt, LOG_N, R, P, KEY_LEN)?;
    let enc = base64::engine::general_purpose::STANDARD_NO_PAD.encode(key);
    Ok(format!("$1:{}:{LOG_N}:{R}:{P}:{enc}", hex::encode(salt)))
}

/// Err(reason) when the password does not match the hash (or the hash is unreadable).
pub fn verify(hash: &str, password: &str) -> Result<(), String> {
    let parts: Vec<&str> = hash.split(':').collect();
    let [version, salt, n, r, p, enc] = parts.as_slice() else {
        return Err("unexpected hash format".into());
    };
    if *version != "$1" {
        return Err(format!("hash version {} does not match package version 1", version.trim_start_matches('$')));
    }
    let salt = hex::decode(salt).map_err(|e| e.to_string())?;
    let want = base64::engine::general_purpose::STANDARD_NO_PAD.decode(enc).map_err(|e| e.to_string())?;
    let (n, r, p): (u8, u32, u32) =
        (n.parse().map_err(|_| "bad N")?, r.parse().map_err(|_| "bad r")?, p.parse().map_err(|_| "bad p")?);
    let got = scrypt_key(password, &salt, n, r, p, want.len()).map_err(|e| e.to_string())?;
    // Constant-time comparison: a timing difference would tell an attacker how much matched.
    let diff = got.iter().zip(want.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff == 0 && got.len() == want.len() {
        Ok(())
    } else {
        Err("hash does not match".into())
    }
}

/// Verifies the node's password against its Secret, or creates the Secret at first
/// registration. Err(403) with k3s's reason on a mismatch.
pub fn ensure_secret(kine: &Datastore, node: &str, password: &str) -> Result<(), ApiError> {
    let res = resources::builtin_kind("Secret");
    let name = secret_name(node);
    let forbidden = |why: String| ApiError {
        code: 403,
        reason: "Forbidden",
        message: format!("unable to verify password for node {node}: {why}"),
        details: Value::Null,
    };
    for _ in 0..2 {
        match store::get(kine, &res, Some("kube-system"), &name) {
            Ok(secret) => {
                let Some(h) = secret["data"]["hash"]
                    .as_str()
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    .and_then(|b| String::from_utf8(b).ok())
                else {
                    return Err(forbidden("password hash not found in node secret".into()));
                };
                return verify(&h, password).map_err(forbidden);
            }
            Err(e) if e.code == 404 => {
                let h = hash(password).map_err(ApiError::from)?;
                let secret = json!({
                    "metadata": {"name": name, "namespace": "kube-system"},
                    "immutable": true,
                    "type": SECRET_TYPE,
                    "data": {"hash": base64::engine::general_purpose::STANDARD.encode(h.as_bytes())},
                });
                match store::create(kine, &res, Some("kube-system"), secret, false) {
                    Ok(_) => return Ok(()),
                    // Another registration of the same name won the race: verify against it.
                    Err(e) if e.reason == "AlreadyExists" => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(forbidden("node secret changed while it was verified".into()))
}

/// Points the Secret at its Node (ownerReferences), as k3s's controller does once the node exists.
pub fn adopt(kine: &Datastore, node: &str, node_uid: &str) {
    let res = resources::builtin_kind("Secret");
    let patch =
        json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}]}});
    let body = serde_json::to_vec(&patch).unwrap_or_default();
    let _ = store::patch(
        kine,
        &res,
        Some("kube-system"),
        &secret_name(node),
        &body,
        crate::patch::PatchType::Strategic,
        false,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_have_k3s_format_and_verify_only_the_same_password() {
        let h = hash("s3cret").unwrap();
        let parts: Vec<&str> = h.split(':').collect();
        assert_eq!(parts[0], "$1");
        assert_eq!(parts[1].len(), 16);
        assert_eq!(&parts[2..5], &["15", "8", "1"]);
        assert!(verify(&h, "s3cret").is_ok());
        assert_eq!(verify(&h, "other").unwrap_err(), "hash does not match");
    }
}
