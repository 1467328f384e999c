//! `k3s server`.

use crate::api::{self, State, Upstream};
use crate::config::{Config, DEFAULT_KUBECONFIG};
use crate::containerd;
use crate::kine::Kine;
use crate::node::{self, Registration};
use crate::pki::{self, Ca};
use crate::token::{self, Bootstrap, Token};
use crate::{clients, error, info, nodepass, notify, store, warn};
use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const MISMATCH: &str = "critical configuration value mismatch between servers";

/// Seconds between heartbeats ($K3S_STANDIN_HEARTBEAT_INTERVAL, default 5).
pub fn heartbeat_interval() -> Duration {
    let secs = std::env::var("K3S_STANDIN_HEARTBEAT_INTERVAL").ok().and_then(|v| v.parse::<f64>().ok()).unwrap_or(5.0);
    Duration::from_secs_f64(secs.clamp(0.1, 3600.0))
}

/// Seconds without heartbeat before a node is no longer Ready ($K3S_STANDIN_NODE_GRACE, default 40).
fn node_grace() -> i64 {
    std::env::var("K3S_STANDIN_NODE_GRACE").ok().and_then(|v| v.parse().ok()).unwrap_or(40)
}

pub async fn run(cfg: Config) -> i32 {
    supervise(run_inner(cfg)).await
}

/// Runs a server or agent until SIGTERM/SIGINT (exit 0) or a fatal error (exit 1); either way
/// the containerd child is stopped first.
pub async fn supervise(fut: impl std::future::Future<Output = Result<()>>) -> i32 {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let result = tokio::select! {
        r = fut => r,
        _ = term.recv() => { info!("Received SIGTERM, shutting down"); Ok(()) }
        _ = int.recv() => { info!("Received SIGINT, shutting down"); Ok(()) }
    };
    containerd::stop().await;
    match result {
        Ok(()) => 0,
        Err(e) => crate::fatal!("Error: {e:#}"),
    }
}

fn critical_config(cfg: &Config, agent_token: Option<&Token>) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("cluster-cidr".into(), cfg.str_or("cluster-cidr", "10.42.0.0/16"));
    m.insert("service-cidr".into(), cfg.str_or("service-cidr", "10.43.0.0/16"));
    m.insert("cluster-dns".into(), cfg.str_or("cluster-dns", "10.43.0.10"));
    m.insert("cluster-domain".into(), cfg.str_or("cluster-domain", "cluster.local"));
    m.insert("flannel-backend".into(), cfg.str_or("flannel-backend", "vxlan"));
    m.insert("agent-token".into(), agent_token.map(|t| token::sha256_hex(t.password.as_bytes())).unwrap_or_default());
    m.insert("secrets-encryption".into(), cfg.bool("secrets-encryption").to_string());
    m
}

fn existing_password(server_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(server_dir.join("token")).ok()?;
    token::parse(text.trim()).ok().map(|t| t.password)
}

fn parse_token_opt(t: Option<String>) -> Result<Option<Token>> {
    t.map(|t| token::parse(&t).map_err(|e| anyhow!(e))).transpose()
}

struct Cluster {
    password: String,
    agent_password: String,
    bootstrap: Bootstrap,
    upstream: Option<Upstream>,
}

/// A first (or only) server: the cluster CA lives here and in the datastore's bootstrap data.
fn init_cluster(
    kine: &Kine,
    tls: &Path,
    server_dir: &Path,
    configured: Option<&Token>,
    agent_tok: Option<&Token>,
) -> Result<Cluster> {
    let password = match configured {
        Some(t) => t.password.clone(),
        None => existing_password(server_dir).unwrap_or_else(token::random_password),
    };
    let key = token::bootstrap_key(&password);
    let rows = kine.list("/bootstrap/")?;
    if rows.is_empty() {
        let server_ca = Ca::load_or_create(tls, "server-ca", "k3s-server-ca")?;
        let client_ca = Ca::load_or_create(tls, "client-ca", "k3s-client-ca")?;
        let b = Bootstrap {
            server_ca_crt: server_ca.cert_pem,
            server_ca_key: server_ca.key_pem,
            client_ca_crt: client_ca.cert_pem,
            client_ca_key: client_ca.key_pem,
        };
        kine.put(&key, &token::seal(&b, &password))?;
    } else {
        let b = rows
            .iter()
            .find(|r| r.name == key)
            .and_then(|r| token::open(&r.value, &password))
            .ok_or_else(|| anyhow!("starting kubernetes: preparing server: bootstrap data already found and encrypted with different token"))?;
        for (name, crt, k) in
            [("server-ca", &b.server_ca_crt, &b.server_ca_key), ("client-ca", &b.client_ca_crt, &b.client_ca_key)]
        {
            if Ca::load(tls, name)?.is_none() {
                info!("Reconciling bootstrap data: writing {name} from the datastore");
                Ca { cert_pem: crt.clone(), key_pem: k.clone() }.save(tls, name)?;
            }
        }
    }
    let server_ca = Ca::load(tls, "server-ca")?.context("server CA")?;
    let client_ca = Ca::load(tls, "client-ca")?.context("client CA")?;
    if let Some(t) = configured {
        token::check_hash(t, server_ca.cert_pem.as_bytes()).map_err(|e| anyhow!("failed to validate token: {e}"))?;
    }
    Ok(Cluster {
        agent_password: agent_tok.map(|t| t.password.clone()).unwrap_or_else(|| password.clone()),
        password,
        bootstrap: Bootstrap {
            server_ca_crt: server_ca.cert_pem,
            server_ca_key: server_ca.key_pem,
            client_ca_crt: client_ca.cert_pem,
            client_ca_key: client_ca.key_pem,
        },
        upstream: None,
    })
}

/// A server joining an HA cluster through `url`.
async fn join_cluster(
    url: &str,
    kine: &Kine,
    tls: &Path,
    configured: Option<&Token>,
    critical: &BTreeMap<String, String>,
) -> Result<Cluster> {
    if !url.starts_with("https://") {
        bail!("only https:// URLs are supported, invalid scheme: {url}");
    }
    let url = url.trim_end_matches('/').to_string();
    let t = configured.ok_or_else(|| anyhow!("--token is required when joining a cluster (--server)"))?;
    let cacerts = loop {
        match clients::fetch_cacerts(&url).await {
            Ok(b) => break b,
            Err(e) => {
                error!("failed to get CA certs: {e}");
                info!("Waiting to join the cluster at {url}");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    token::check_hash(t, &cacerts).map_err(|e| anyhow!("failed to validate token: {e}"))?;
    if t.ca_hash.is_none() {
        warn!("Cluster CA certificate is not trusted by the host CA bundle, but the token does not include a CA hash. Use the full token from the server's node-token file to enable Cluster CA validation.");
    }
    let client = clients::trusting(&cacerts, None)?;
    let bs_url = format!("{url}/v1-k3s/server-bootstrap");
    let resp: Value = loop {
        match client.get(&bs_url).basic_auth("server", Some(&t.password)).send().await {
            Ok(r) if r.status().is_success() => break r.json().await.context("bootstrap data")?,
            Ok(r) if r.status().as_u16() == 401 => {
                bail!("starting kubernetes: preparing server: failed to bootstrap cluster data: {bs_url}: 401 Unauthorized")
            }
            Ok(r) => {
                let st = r.status();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                bail!(
                    "starting kubernetes: preparing server: failed to bootstrap cluster data: {bs_url}: {st}: {}",
                    body["message"].as_str().unwrap_or("")
                )
            }
            Err(e) => {
                error!("failed to get bootstrap data from {bs_url}: {}", clients::chain(&e));
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    let theirs: BTreeMap<String, String> = serde_json::from_value(resp["critical"].clone()).unwrap_or_default();
    let mut mismatch = false;
    for (k, v) in critical {
        if theirs.get(k) != Some(v) {
            warn!("critical configuration mismatched: {k}");
            mismatch = true;
        }
    }
    if mismatch {
        bail!("starting kubernetes: preparing server: failed to bootstrap cluster data: failed to validate server configuration: {MISMATCH}");
    }
    let b: Bootstrap = serde_json::from_value(resp["bootstrap"].clone()).context("bootstrap data")?;
    for (name, crt, k) in
        [("server-ca", &b.server_ca_crt, &b.server_ca_key), ("client-ca", &b.client_ca_crt, &b.client_ca_key)]
    {
        let current = Ca::load(tls, name)?;
        if current.as_ref().map(|c| c.cert_pem != *crt || c.key_pem != *k).unwrap_or(true) {
            Ca { cert_pem: crt.clone(), key_pem: k.clone() }.save(tls, name)?;
        }
    }
    let key = token::bootstrap_key(&t.password);
    kine.put(&key, &token::seal(&b, &t.password))?;
    Ok(Cluster {
        password: t.password.clone(),
        agent_password: resp["agentPassword"].as_str().unwrap_or(&t.password).to_string(),
        bootstrap: b,
        upstream: Some(Upstream { url, client, password: t.password.clone() }),
    })
}

fn symlink_to(target: &Path, link: &Path) -> Result<()> {
    if std::fs::read_link(link).ok().as_deref() == Some(target) {
        return Ok(());
    }
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(target, link).with_context(|| format!("symlink {}", link.display()))?;
    Ok(())
}

fn write_if_changed(path: &Path, data: &str) -> Result<()> {
    let is_file = std::fs::symlink_metadata(path).map(|m| m.file_type().is_file()).unwrap_or(false);
    if is_file && std::fs::read_to_string(path).ok().as_deref() == Some(data) {
        return pki::set_mode(path, 0o600);
    }
    let _ = std::fs::remove_file(path);
    pki::write_private(path, data.as_bytes())
}

fn write_tokens(server_dir: &Path, cacerts: &[u8], c: &Cluster, agent_tok: Option<&Token>) -> Result<()> {
    let tok_path = server_dir.join("token");
    write_if_changed(&tok_path, &format!("{}\n", token::format(cacerts, "server", &c.password)))?;
    symlink_to(&tok_path, &server_dir.join("node-token"))?;
    let agent_path = server_dir.join("agent-token");
    if agent_tok.is_some() || c.agent_password != c.password {
        write_if_changed(&agent_path, &format!("{}\n", token::format(cacerts, "node", &c.agent_password)))?;
    } else {
        symlink_to(&tok_path, &agent_path)?;
    }
    Ok(())
}

fn parse_mode(s: &str) -> Result<u32> {
    let t = s.trim().trim_start_matches("0o");
    u32::from_str_radix(t, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| anyhow!("invalid write-kubeconfig-mode {s:?}"))
}

fn write_kubeconfig(cfg: &Config, host: &str, port: u16, cacerts: &[u8], admin: &pki::Leaf) -> Result<PathBuf> {
    let path = PathBuf::from(cfg.str_or("write-kubeconfig", DEFAULT_KUBECONFIG));
    let mode = match cfg.str("write-kubeconfig-mode") {
        Some(m) => parse_mode(&m)?,
        None => 0o600,
    };
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
    let text = format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: https://{host}:{port}\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\nkind: Config\npreferences: {{}}\nusers:\n- name: default\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        b64(cacerts),
        b64(admin.cert_pem.as_bytes()),
        b64(admin.key_pem.as_bytes()),
    );
    pki::write_private(&path, text.as_bytes())?;
    pki::set_mode(&path, mode)?;
    info!("Wrote kubeconfig {}", path.display());
    Ok(path)
}

fn first_service_ip(cidr: &str) -> Option<String> {
    let (addr, _) = cidr.split(',').next()?.split_once('/')?;
    let ip: std::net::Ipv4Addr = addr.trim().parse().ok()?;
    Some(std::net::Ipv4Addr::from(u32::from(ip) + 1).to_string())
}

pub fn node_ips(cfg: &Config) -> (Vec<String>, Vec<String>) {
    let mut internal = cfg.list_split("node-ip");
    if internal.is_empty() {
        internal.push(crate::netinfo::primary_ipv4());
    }
    (internal, cfg.list_split("node-external-ip"))
}

pub fn node_name(cfg: &Config) -> String {
    cfg.str("node-name").map(|n| n.to_lowercase()).unwrap_or_else(node::hostname)
}

/// Registers the server's own node, with its node password as any agent does. A refused
/// password keeps it waiting (never READY), as k3s's agent waits for its configuration.
async fn register_self(state: &State, reg: &Registration) -> Result<()> {
    let password = nodepass::ensure_local()?;
    loop {
        let result: Result<(), (bool, String)> = match &state.upstream {
            None => {
                let (kine, name, pw) = (state.kine.clone(), reg.name.clone(), password.clone());
                let checked = tokio::task::spawn_blocking(move || nodepass::ensure_secret(&kine, &name, &pw)).await;
                match checked {
                    Ok(Ok(())) => match node::register(&state.kine, reg, &state.cluster_cidr) {
                        Ok(n) => {
                            nodepass::adopt(&state.kine, &reg.name, n["metadata"]["uid"].as_str().unwrap_or_default());
                            Ok(())
                        }
                        Err(e) => Err((false, format!("{e:#}"))),
                    },
                    Ok(Err(e)) if e.code == 403 => Err((true, e.message)),
                    Ok(Err(e)) => Err((false, e.message)),
                    Err(e) => Err((false, e.to_string())),
                }
            }
            Some(up) => match up
                .request_with(
                    hyper::Method::POST,
                    "/v1-k3s/nodes",
                    Some(serde_json::to_vec(reg).unwrap_or_default()),
                    Some("application/json"),
                    &[(nodepass::NAME_HEADER, reg.name.clone()), (nodepass::PASSWORD_HEADER, password.clone())],
                )
                .await
            {
                Ok((st, _, _)) if st.is_success() => Ok(()),
                Ok((st, _, _)) if st == hyper::StatusCode::FORBIDDEN => Err((true, String::new())),
                Ok((st, _, body)) => Err((false, format!("{st}: {}", String::from_utf8_lossy(&body)))),
                Err(e) => Err((false, clients::chain(&e))),
            },
        };
        match result {
            Ok(()) => {
                info!("Node {} registered", reg.name);
                return Ok(());
            }
            Err((true, _)) => {
                info!("Waiting to retrieve agent configuration; server is not ready: {}", nodepass::rejected_message());
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Err((false, e)) => {
                error!("Unable to register node {}: {e}", reg.name);
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// Heartbeats (lease renewals) of the server's own node, the HA mirror, and kine compaction.
async fn background(state: Arc<State>, own: Option<String>) {
    let mut tick = tokio::time::interval(heartbeat_interval());
    let mut last_compact = std::time::Instant::now();
    loop {
        tick.tick().await;
        if let Some(up) = &state.upstream {
            if let Some(name) = &own {
                match up.request(hyper::Method::PUT, &format!("/v1-k3s/nodes/{name}/heartbeat"), None, None).await {
                    Ok((st, _)) if st.is_success() => {}
                    Ok((st, _)) => error!("Error updating node status, will retry: {name}: {st}"),
                    Err(e) => error!("Error updating node status, will retry: {}", clients::chain(&e)),
                }
            }
            if let Ok((st, body)) = up.request(hyper::Method::GET, "/api/v1/nodes", None, None).await {
                if st.is_success() {
                    if let Ok(list) = serde_json::from_slice::<Value>(&body) {
                        mirror(&state.kine, &list);
                    }
                }
            }
        }
        if let Some(name) = &own {
            match node::renew_lease(&state.kine, name) {
                Ok(true) => {}
                Ok(false) if state.upstream.is_some() => {}
                Ok(false) => {
                    error!("Error updating node status, will retry: nodes \"{name}\" not found")
                }
                Err(e) => error!("Error updating node lease: {e:#}"),
            }
        }
        if last_compact.elapsed() > Duration::from_secs(300) {
            last_compact = std::time::Instant::now();
            match state.kine.compact(1000) {
                Ok(n) if n > 0 => info!("Compacted {n} rows"),
                Ok(_) => {}
                Err(e) => error!("Compact failed: {e:#}"),
            }
        }
    }
}

fn mirror(kine: &Kine, list: &Value) {
    let Some(items) = list["items"].as_array() else {
        return;
    };
    let names: Vec<&str> = items.iter().filter_map(|n| n["metadata"]["name"].as_str()).collect();
    for n in items {
        if let Err(e) = node::store_mirror(kine, n) {
            error!("mirror: {e:#}");
        }
    }
    for r in kine.list(node::NODE_PREFIX).unwrap_or_default() {
        let name = r.name.trim_start_matches(node::NODE_PREFIX);
        if !names.contains(&name) {
            let _ = node::delete(kine, name);
        }
    }
}

/// `--cluster-reset [--cluster-reset-restore-path=<file>]`: with a restore path (an SQLite copy of
/// state.db), the current db files move to server/db/etcd-old-<timestamp>/ and the file becomes state.db.
fn cluster_reset(cfg: &Config, server_dir: &Path) -> Result<()> {
    let db_dir = server_dir.join("db");
    if let Some(restore) = cfg.str("cluster-reset-restore-path") {
        let restore = PathBuf::from(restore);
        anyhow::ensure!(restore.is_file(), "cluster-reset-restore-path {}: no such file", restore.display());
        let password = match parse_token_opt(cfg.token("token", "token-file").map_err(|e| anyhow!(e))?)? {
            Some(t) => t.password,
            None => {
                existing_password(server_dir).ok_or_else(|| anyhow!("--token is required to restore a snapshot"))?
            }
        };
        std::fs::create_dir_all(&db_dir)?;
        let old = db_dir.join(format!("etcd-old-{}", crate::timefmt::now_secs()));
        std::fs::create_dir_all(&old)?;
        for f in ["state.db", "state.db-wal", "state.db-shm"] {
            let p = db_dir.join(f);
            if p.exists() {
                std::fs::rename(&p, old.join(f))?;
            }
        }
        std::fs::copy(&restore, db_dir.join("state.db"))?;
        let kine = Kine::open(&db_dir.join("state.db"))?;
        let rows = kine.list("/bootstrap/")?;
        let key = token::bootstrap_key(&password);
        if !rows.is_empty() && !rows.iter().any(|r| r.name == key && token::open(&r.value, &password).is_some()) {
            bail!("starting kubernetes: preparing server: bootstrap data already found and encrypted with different token");
        }
        info!("Restored {} (previous db moved to {})", restore.display(), old.display());
    }
    info!("Managed etcd cluster membership has been reset, restart without --cluster-reset flag now. Backup and delete ${{datadir}}/server/db on each peer etcd server and rejoin the nodes");
    Ok(())
}

async fn run_inner(cfg: Config) -> Result<()> {
    info!("Starting k3s {} ({})", crate::version::version(), crate::version::commit());
    let data_dir = std::path::absolute(cfg.data_dir())?;
    let server_dir = data_dir.join("server");
    let tls = server_dir.join("tls");
    std::fs::create_dir_all(&tls)?;
    pki::set_mode(&server_dir, 0o700)?;
    if cfg.bool("cluster-reset") {
        return cluster_reset(&cfg, &server_dir);
    }
    if cfg.str("datastore-endpoint").is_some() {
        warn!("datastore-endpoint is not supported by the k3s stand-in: using the embedded SQLite datastore");
    }
    let port: u16 = cfg.str_or("https-listen-port", "6443").parse().context("https-listen-port")?;
    let bind = cfg.str_or("bind-address", "0.0.0.0");
    let configured = parse_token_opt(cfg.token("token", "token-file").map_err(|e| anyhow!(e))?)?;
    let agent_tok = parse_token_opt(cfg.token("agent-token", "agent-token-file").map_err(|e| anyhow!(e))?)?;
    let critical = critical_config(&cfg, agent_tok.as_ref());

    let db_path = server_dir.join("db/state.db");
    info!("Configuring sqlite3 database connection pooling: maxIdleConns=2, maxOpenConns=0, connMaxLifetime=0s");
    let kine = Arc::new(Kine::open(&db_path).with_context(|| format!("opening {}", db_path.display()))?);
    let join_url = cfg.str("server");
    let cluster = match &join_url {
        Some(url) => {
            info!("Joining the cluster at {url}");
            join_cluster(url, &kine, &tls, configured.as_ref(), &critical).await?
        }
        None => init_cluster(&kine, &tls, &server_dir, configured.as_ref(), agent_tok.as_ref())?,
    };
    let server_ca = Ca::load(&tls, "server-ca")?.context("server CA")?;
    let client_ca = Ca::load(&tls, "client-ca")?.context("client CA")?;
    let cacerts = server_ca.cert_pem.as_bytes().to_vec();
    write_tokens(&server_dir, &cacerts, &cluster, agent_tok.as_ref())?;

    let admin = match pki::load_leaf(&tls, "client-admin") {
        Some(l) if client_ca.issued(&l.cert_pem) => l,
        _ => {
            let l = client_ca.sign_client("system:admin", Some("system:masters"))?;
            pki::save_leaf(&tls, "client-admin", &l, &client_ca)?;
            pki::load_leaf(&tls, "client-admin").context("client-admin")?
        }
    };

    let name = node_name(&cfg);
    let (internal_ips, external_ips) = node_ips(&cfg);
    let domain = cfg.str_or("cluster-domain", "cluster.local");
    let mut sans: Vec<String> = vec![
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        format!("kubernetes.default.svc.{domain}"),
        "localhost".into(),
        node::hostname(),
        name.clone(),
        "127.0.0.1".into(),
        "::1".into(),
    ];
    sans.extend(first_service_ip(&cfg.str_or("service-cidr", "10.43.0.0/16")));
    sans.extend(internal_ips.iter().cloned());
    sans.extend(external_ips.iter().cloned());
    sans.extend(cfg.str("advertise-address"));
    sans.extend(cfg.list_split("tls-san"));
    sans.extend(crate::netinfo::local_ips().iter().map(|i| i.to_string()));
    let serving = server_ca.sign_server("k3s", &sans)?;
    pki::save_leaf(&tls, "serving-kube-apiserver", &serving, &server_ca)?;
    let tls_cfg = api::tls_config(&serving.cert_pem, &serving.key_pem, &client_ca.cert_pem)?;

    let listener = tokio::net::TcpListener::bind((bind.as_str(), port))
        .await
        .map_err(|e| anyhow!("starting kubernetes: listen tcp {bind}:{port}: {e}"))?;
    info!("Running kube-apiserver and k3s supervisor on {bind}:{port}");

    let kc_host = match bind.as_str() {
        "0.0.0.0" | "::" | "" => "127.0.0.1".to_string(),
        b => b.to_string(),
    };
    write_kubeconfig(&cfg, &kc_host, port, &cacerts, &admin)?;

    let ha = cfg.bool("cluster-init") || join_url.is_some();
    let service_cidr = cfg.str_or("service-cidr", "10.43.0.0/16");
    store::configure(store::Settings { service_cidr: service_cidr.clone() });
    node::set_grace(node_grace());
    store::seed(&kine, &service_cidr, &cfg.str_or("cluster-dns", "10.43.0.10"), &cfg.list_split("disable"))
        .context("creating the system namespaces and services")?;
    let cluster_cidr = cfg.str_or("cluster-cidr", "10.42.0.0/16");
    let agent_config = json!({
        "clusterCIDR": cluster_cidr,
        "serviceCIDR": cfg.str_or("service-cidr", "10.43.0.0/16"),
        "clusterDNS": cfg.str_or("cluster-dns", "10.43.0.10"),
        "clusterDomain": domain,
        "flannelBackend": cfg.str_or("flannel-backend", "vxlan"),
    });
    let state = Arc::new(State {
        kine: kine.clone(),
        cacerts: cacerts.clone(),
        server_password: cluster.password.clone(),
        agent_password: cluster.agent_password.clone(),
        bootstrap: cluster.bootstrap.clone(),
        critical,
        ha,
        upstream: cluster.upstream,
        cluster_cidr,
        agent_config,
    });
    tokio::spawn(api::serve(listener, tls_cfg, state.clone()));

    let disable_agent = cfg.bool("disable-agent");
    if !disable_agent {
        crate::syssetup::configure();
        containerd::start(&data_dir, cfg.str("container-runtime-endpoint").as_deref()).await;
    }
    let own = if disable_agent {
        None
    } else {
        let mut labels = BTreeMap::new();
        labels.insert("node-role.kubernetes.io/control-plane".to_string(), "true".to_string());
        labels.insert("node-role.kubernetes.io/master".to_string(), "true".to_string());
        if ha {
            labels.insert("node-role.kubernetes.io/etcd".to_string(), "true".to_string());
        }
        let reg = Registration::local(
            &name,
            labels,
            &cfg.list("node-label"),
            &cfg.list("node-taint"),
            internal_ips,
            external_ips,
        )
        .map_err(|e| anyhow!(e))?;
        register_self(&state, &reg).await?;
        Some(name.clone())
    };
    tokio::spawn(background(state.clone(), own));
    let manifests = data_dir.join("server/manifests");
    if state.upstream.is_none() {
        let mut deployer = crate::deploy::Controller::new(&data_dir, cfg.list_split("disable"));
        let k = kine.clone();
        deployer = tokio::task::spawn_blocking(move || {
            deployer.scan(&k, true);
            deployer
        })
        .await
        .map_err(|e| anyhow!("deploy controller: {e}"))?;
        tokio::spawn(crate::deploy::run(kine.clone(), deployer));
    } else if std::fs::read_dir(&manifests).map(|mut d| d.next().is_some()).unwrap_or(false) {
        warn!(
            "{} is not applied by a joined server of the k3s stand-in: put manifests on the first server",
            manifests.display()
        );
    }
    info!("k3s is up and running");
    notify::ready();
    std::future::pending::<()>().await;
    Ok(())
}
