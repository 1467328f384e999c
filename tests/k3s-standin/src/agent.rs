//! `k3s agent`: joins a server with K3S_URL + K3S_TOKEN, registers its node, heartbeats.

use crate::config::Config;
use crate::node::Registration;
use crate::{clients, error, info, nodepass, notify, token, warn};
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

    let name = crate::server::node_name(&cfg);
    let (internal, external) = crate::server::node_ips(&cfg);
    let node_password = nodepass::ensure_local()?;
    let node_headers = [(nodepass::NAME_HEADER, name.clone()), (nodepass::PASSWORD_HEADER, node_password.clone())];

    // Validate the token against the server's CA, then authenticate and fetch the agent's
    // configuration and kubelet certificates (where the node password is checked); wait while
    // the server is away or refuses, as k3s does, every 5 s.
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
        match agent_config(&client, &url, &tok.password, &node_headers, &internal, &agent_dir).await {
            Ok(()) => break (client, cacerts),
            Err(e) => info!("Waiting to retrieve agent configuration; server is not ready: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    if tok.ca_hash.is_none() {
        warn!("Cluster CA certificate is not trusted by the host CA bundle, but the token does not include a CA hash. Use the full token from the server's node-token file to enable Cluster CA validation.");
    }
    crate::pki::write_private(&agent_dir.join("server-ca.crt"), &cacerts)?;

    crate::syssetup::configure();
    crate::containerd::start(&data_dir, cfg.str("container-runtime-endpoint").as_deref()).await;

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
            .header(nodepass::NAME_HEADER, &name)
            .header(nodepass::PASSWORD_HEADER, &node_password)
            .body(body.clone())
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => break,
            Ok(r) if r.status().as_u16() == 403 => {
                info!("Waiting to retrieve agent configuration; server is not ready: {}", nodepass::rejected_message())
            }
            Ok(r) => error!("Unable to register node {name} with {url}: {}", r.status()),
            Err(e) => error!("Unable to register node {name} with {url}: {}", clients::chain(&e)),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    info!("Node {name} registered with {url}");
    crate::kubelet::start_healthz().await;
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

/// GET /v1-k3s/config, then the kubelet's serving and client certificates (written under
/// agent/ as k3s writes them). A 403 on the certificates is k3s's node password refusal.
async fn agent_config(
    client: &reqwest::Client,
    url: &str,
    password: &str,
    node_headers: &[(&str, String)],
    node_ips: &[String],
    agent_dir: &std::path::Path,
) -> Result<()> {
    let cfg_url = format!("{url}/v1-k3s/config");
    let r = client
        .get(&cfg_url)
        .basic_auth("node", Some(password))
        .send()
        .await
        .map_err(|e| anyhow!(clients::chain(&e)))?;
    if !r.status().is_success() {
        bail!("{cfg_url}: {}", r.status());
    }
    for cert in ["serving-kubelet", "client-kubelet"] {
        let u = format!("{url}/v1-k3s/{cert}.crt");
        let mut rb = client.get(&u).basic_auth("node", Some(password)).header("k3s-Node-IP", node_ips.join(","));
        for (k, v) in node_headers {
            rb = rb.header(*k, v);
        }
        let r = rb.send().await.map_err(|e| anyhow!(clients::chain(&e)))?;
        if r.status().as_u16() == 403 {
            bail!("{}", nodepass::rejected_message());
        }
        if !r.status().is_success() {
            bail!("{u}: {}", r.status());
        }
        let pem = r.text().await.context("certificate body")?;
        let split =
            pem.find("-----BEGIN PRIVATE KEY-----").ok_or_else(|| anyhow!("{u}: no private key in the answer"))?;
        crate::pki::write_private(&agent_dir.join(format!("{cert}.crt")), &pem.as_bytes()[..split])?;
        crate::pki::write_private(&agent_dir.join(format!("{cert}.key")), &pem.as_bytes()[split..])?;
    }
    Ok(())
}
