//! k3s tokens (`K10<ca hash>::<user>:<password>` or a short token) and the bootstrap data
//! sealed with the token, as k3s keeps it in the datastore.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// sha256 hex of the cluster CA bundle, from a secure (K10) token.
    pub ca_hash: Option<String>,
    pub username: Option<String>,
    pub password: String,
}

pub fn parse(token: &str) -> Result<Token, String> {
    let token = token.trim();
    if token.is_empty() {
        return Err("token is empty".into());
    }
    if let Some(rest) = token.strip_prefix("K10") {
        let (hash, creds) = rest.split_once("::").ok_or_else(|| "invalid token format".to_string())?;
        if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err("invalid token CA hash".into());
        }
        let (user, pass) = creds.split_once(':').ok_or_else(|| "invalid token format".to_string())?;
        if pass.is_empty() {
            return Err("invalid token format: empty password".into());
        }
        return Ok(Token {
            ca_hash: Some(hash.to_lowercase()),
            username: Some(user.to_string()),
            password: pass.to_string(),
        });
    }
    Ok(Token { ca_hash: None, username: None, password: token.to_string() })
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub fn format(ca_bytes: &[u8], user: &str, password: &str) -> String {
    format!("K10{}::{user}:{password}", sha256_hex(ca_bytes))
}

pub fn random_password() -> String {
    let b: [u8; 16] = rand::random();
    hex::encode(b)
}

/// The k3s message when a token's CA hash does not match the CA the server serves.
pub fn check_hash(token: &Token, ca_bytes: &[u8]) -> Result<(), String> {
    if let Some(expected) = &token.ca_hash {
        let actual = sha256_hex(ca_bytes);
        if *expected != actual {
            return Err(format!(
                "token CA hash does not match the Cluster CA certificate hash: {expected} != {actual}"
            ));
        }
    }
    Ok(())
}

/// Cluster-wide material every server shares (k3s's "bootstrap data").
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Bootstrap {
    pub server_ca_crt: String,
    pub server_ca_key: String,
    pub client_ca_crt: String,
    pub client_ca_key: String,
    /// The embedded etcd's CAs (HA clusters only; empty for a SQLite server).
    #[serde(default)]
    pub etcd_server_ca_crt: String,
    #[serde(default)]
    pub etcd_server_ca_key: String,
    #[serde(default)]
    pub etcd_peer_ca_crt: String,
    #[serde(default)]
    pub etcd_peer_ca_key: String,
}

/// k3s stores bootstrap data under `/bootstrap/<first 12 hex of sha256(passphrase)>`.
pub fn bootstrap_key(password: &str) -> String {
    format!("/bootstrap/{}", &sha256_hex(password.as_bytes())[..12])
}

fn keystream_xor(key: &[u8; 32], nonce: &[u8], data: &mut [u8]) {
    for (i, chunk) in data.chunks_mut(32).enumerate() {
        let mut h = Sha256::new();
        h.update(key);
        h.update(nonce);
        h.update((i as u64).to_le_bytes());
        let block = h.finalize();
        for (b, k) in chunk.iter_mut().zip(block.iter()) {
            *b ^= k;
        }
    }
}

fn derive(password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"k3s-standin-bootstrap\0");
    h.update(password.as_bytes());
    h.finalize().into()
}

/// Seals bootstrap data with the token password (a SHA-256 keystream: test support, not crypto
/// anyone should rely on; what matters is that the data is unusable without the same token).
pub fn seal(b: &Bootstrap, password: &str) -> Vec<u8> {
    let mut plain = serde_json::to_vec(b).expect("bootstrap json");
    let nonce: [u8; 16] = rand::random();
    let check = Sha256::digest(&plain);
    keystream_xor(&derive(password), &nonce, &mut plain);
    let mut out = nonce.to_vec();
    out.extend_from_slice(&check[..8]);
    out.extend_from_slice(&plain);
    out
}

pub fn open(sealed: &[u8], password: &str) -> Option<Bootstrap> {
    if sealed.len() < 24 {
        return None;
    }
    let (nonce, rest) = sealed.split_at(16);
    let (check, ct) = rest.split_at(8);
    let mut plain = ct.to_vec();
    keystream_xor(&derive(password), nonce, &mut plain);
    if &Sha256::digest(&plain)[..8] != check {
        return None;
    }
    serde_json::from_slice(&plain).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let h = sha256_hex(b"ca");
        let t = parse(&format!("K10{h}::server:secret")).unwrap();
        assert_eq!(t.ca_hash.as_deref(), Some(h.as_str()));
        assert_eq!(t.username.as_deref(), Some("server"));
        assert_eq!(t.password, "secret");
        assert!(check_hash(&t, b"ca").is_ok());
        let e = check_hash(&t, b"other").unwrap_err();
        assert!(e.starts_with("token CA hash does not match the Cluster CA certificate hash: "));
        let short = parse("just-a-secret").unwrap();
        assert_eq!(short.ca_hash, None);
        assert_eq!(short.password, "just-a-secret");
        assert!(parse("K10abc::server:x").is_err());
        assert_eq!(format(b"ca", "node", "p"), format!("K10{h}::node:p"));
    }

    #[test]
    fn sealing() {
        let b = Bootstrap {
            server_ca_crt: "a".into(),
            server_ca_key: "b".into(),
            client_ca_crt: "c".into(),
            client_ca_key: "d".into(),
            ..Default::default()
        };
        let s = seal(&b, "pw");
        assert_eq!(open(&s, "pw"), Some(b));
        assert_eq!(open(&s, "other"), None);
        assert_eq!(bootstrap_key("pw").len(), "/bootstrap/".len() + 12);
    }
}
