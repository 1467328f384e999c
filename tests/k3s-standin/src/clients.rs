//! HTTPS clients: the unverified /cacerts fetch, and clients trusting only the cluster CA.

use anyhow::Result;
use std::time::Duration;

/// The error and its causes, as Go prints wrapped errors.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}

fn base() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
}

pub fn insecure() -> reqwest::Client {
    base().danger_accept_invalid_certs(true).build().expect("http client")
}

/// A client that trusts only `ca_pem`, optionally presenting a client certificate (PEM cert + key).
pub fn trusting(ca_pem: &[u8], identity_pem: Option<&[u8]>) -> Result<reqwest::Client> {
    let mut b = base().tls_built_in_root_certs(false);
    for c in reqwest::Certificate::from_pem_bundle(ca_pem)? {
        b = b.add_root_certificate(c);
    }
    if let Some(id) = identity_pem {
        b = b.identity(reqwest::Identity::from_pem(id)?);
    }
    Ok(b.build()?)
}

/// GET <url>/cacerts without verifying the server (what a joining node does first).
pub async fn fetch_cacerts(url: &str) -> Result<Vec<u8>, String> {
    let u = format!("{}/cacerts", url.trim_end_matches('/'));
    let resp = insecure().get(&u).send().await.map_err(|e| format!("Get \"{u}\": {}", chain(&e)))?;
    if !resp.status().is_success() {
        return Err(format!("{u}: {}", resp.status()));
    }
    resp.bytes().await.map(|b| b.to_vec()).map_err(|e| chain(&e))
}
