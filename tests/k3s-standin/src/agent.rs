//! `k3s agent`: joins a server with K3S_URL + K3S_TOKEN, registers its node, heartbeats.

use crate::config::Config;
use crate::node::Registration;
use crate::{clients, error, info, notify, token, warn};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::time::Duration;

pub async fn run(cfg: Config) -> i32 {
    crate::server::supervise(run_inner(cfg)).await
}

async fn run_inner(cfg: Config) -> Result<()> {
    info!("Starting k3s agent {} ({})", crate::version::version(), crate::version::commit());
    let url = cfg.str("server").ok_or_else(|| anyhow!("--server is required"))?;
    if !url.starts_with("https://") {
        bail!("only https:// URLs are supported, invalid scheme: {url}");
    }
    let url = url.trim_end_matches('/').to_string();
    let tok =
        cfg.token("token", "token-file").map_err(|e| anyhow!(e))?.ok_or_else(|| anyhow!("--token is required"))?;
    let tok = token::parse(&tok).map_err(|e| anyhow!("failed to validate token: {e}"))?;
    let data_dir = std::path::absolute(cfg.data_dir())?;
    let agent_dir = data_dir.join("agent");
    std::fs::create_dir_all(&agent_dir)?;

    // Validate the token against the server's CA, then authenticate; wait while the server is away.
    let (client, cacerts) = loop {
        let cacerts = match clients::fetch_cacerts(&url).await {
            Ok(b) => b,
            Err(e) => {
                error!("failed to get CA certs: {e}");
                info!("Waiting to retrieve agent configuration; server is not ready: {url}");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        token::check_hash(&tok, &cacerts).map_err(|e| anyhow!("failed to validate token: {e}"))?;
        let client = clients::trusting(&cacerts, None)?;
        match client.get(format!("{url}/v1-k3s/config")).basic_auth("node", Some(&tok.password)).send().await {
            Ok(r) if r.status().is_success() => break (client, cacerts),
            Ok(r) => error!(
                "Waiting to retrieve agent configuration; server is not ready: {url}/v1-k3s/config: {}",
                r.status()
            ),
            Err(e) => error!("Waiting to retrieve agent configuration; server is not ready: {}", clients::chain(&e)),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    if tok.ca_hash.is_none() {
        warn!("Cluster CA certificate is not trusted by the host CA bundle, but the token does not include a CA hash. Use the full token from the server's node-token file to enable Cluster CA validation.");
    }
    crate::pki::write_private(&agent_dir.join("server-ca.crt"), &cacerts)?;

    crate::containerd::start(&data_dir, cfg.str("container-runtime-endpoint").as_deref()).await;

    let name = crate::server::node_name(&cfg);
    let (internal, external) = crate::server::node_ips(&cfg);
    let reg = Registration::local(
        &name,
        BTreeMap::new(),
        &cfg.list("node-label"),
        &cfg.list("node-taint"),
        internal,
        external,
    )
    .map_err(|e| anyhow!(e))?;
    let body = serde_json::to_vec(&reg).context("registration")?;
    loop {
        match client
            .post(format!("{url}/v1-k3s/nodes"))
            .basic_auth("node", Some(&tok.password))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => break,
            Ok(r) => error!("Unable to register node {name} with {url}: {}", r.status()),
            Err(e) => error!("Unable to register node {name} with {url}: {}", clients::chain(&e)),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    info!("Node {name} registered with {url}");
    info!("k3s agent is up and running");
    notify::ready();

    let hb_client = client.clone();
    let hb_url = format!("{url}/v1-k3s/nodes/{name}/heartbeat");
    let password = tok.password.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::server::heartbeat_interval());
        loop {
            tick.tick().await;
            match hb_client.put(&hb_url).basic_auth("node", Some(&password)).send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => error!("Error updating node status, will retry: {hb_url}: {}", r.status()),
                Err(e) => error!("Error updating node status, will retry: {}", clients::chain(&e)),
            }
        }
    });
    std::future::pending::<()>().await;
    Ok(())
}
