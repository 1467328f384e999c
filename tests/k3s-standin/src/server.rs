//! `k3s server`.

use crate::api::{self, State};
use crate::config::{Config, DEFAULT_KUBECONFIG};
use crate::containerd;
use crate::datastore::Datastore;
use crate::node::{self, Registration};
use crate::pki::{self, Ca};
use crate::token::{self, Bootstrap, Token};
use crate::{clients, error, etcd, info, nodepass, notify, store, warn};
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
    etcd::stop().await;
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
}

/// Writes the CA files of the bootstrap data that are missing or differ (a joining server, or a
/// restore on a host without `server/tls`).
fn write_cas(tls: &Path, b: &Bootstrap) -> Result<()> {
    for (name, crt, k) in
        [("server-ca", &b.server_ca_crt, &b.server_ca_key), ("client-ca", &b.client_ca_crt, &b.client_ca_key)]
    {
        let current = Ca::load(tls, name)?;
        if current.as_ref().map(|c| c.cert_pem != *crt || c.key_pem != *k).unwrap_or(true) {
            if current.is_none() {
                info!("Reconciling bootstrap data: writing {name} from the datastore");
            }
            Ca { cert_pem: crt.clone(), key_pem: k.clone() }.save(tls, name)?;
        }
    }
    Ok(())
}

/// The bootstrap data stored under the token's key, opened with the token; k3s's error when
/// bootstrap data exists but the token does not open it. None on an empty datastore.
fn stored_bootstrap(db: &Datastore, password: &str) -> Result<Option<Bootstrap>> {
    let rows = db.list("/bootstrap/")?;
    if rows.is_empty() {
        return Ok(None);
    }
    let key = token::bootstrap_key(password);
    rows.iter().find(|r| r.name == key).and_then(|r| token::open(&r.value, password)).map(Some).ok_or_else(|| {
        anyhow!(
            "starting kubernetes: preparing server: bootstrap data already found and encrypted with different token"
        )
    })
}

/// A server that owns the cluster data (a single server, the first HA server, or any HA server
/// reading the shared etcd): the cluster CAs live in the datastore's bootstrap data, created
/// here on an empty datastore, and written back to `server/tls` where files are missing.
fn init_cluster(
    db: &Datastore,
    tls: &Path,
    server_dir: &Path,
    configured: Option<&Token>,
    agent_tok: Option<&Token>,
    etcd_layout: Option<&etcd::Layout>,
) -> Result<Cluster> {
    let password = match configured {
        Some(t) => t.password.clone(),
        None => existing_password(server_dir).unwrap_or_else(token::random_password),
    };
    let stored = match stored_bootstrap(db, &password)? {
        Some(b) => {
            write_cas(tls, &b)?;
            if let Some(l) = etcd_layout {
                etcd::ensure_cas(l, Some(&b))?;
            }
            b
        }
        None => {
            let server_ca = Ca::load_or_create(tls, "server-ca", "k3s-server-ca")?;
            let client_ca = Ca::load_or_create(tls, "client-ca", "k3s-client-ca")?;
            let mut b = Bootstrap {
                server_ca_crt: server_ca.cert_pem,
                server_ca_key: server_ca.key_pem,
                client_ca_crt: client_ca.cert_pem,
                client_ca_key: client_ca.key_pem,
                ..Default::default()
            };
            if let Some(l) = etcd_layout {
                let (server, peer) = etcd::ensure_cas(l, None)?;
                (b.etcd_server_ca_crt, b.etcd_server_ca_key) = (server.cert_pem, server.key_pem);
                (b.etcd_peer_ca_crt, b.etcd_peer_ca_key) = (peer.cert_pem, peer.key_pem);
            }
            db.put(&token::bootstrap_key(&password), &token::seal(&b, &password))?;
            b
        }
    };
    let server_ca = Ca::load(tls, "server-ca")?.context("server CA")?;
    if let Some(t) = configured {
        token::check_hash(t, server_ca.cert_pem.as_bytes()).map_err(|e| anyhow!("failed to validate token: {e}"))?;
    }
    Ok(Cluster {
        agent_password: agent_tok.map(|t| t.password.clone()).unwrap_or_else(|| password.clone()),
        password,
        bootstrap: stored,
    })
}

/// The server an HA server joined: where it asks for the bootstrap data and the etcd members.
struct JoinTarget {
    url: String,
    client: reqwest::Client,
    password: String,
}

/// A server joining an HA cluster through `url`: the CA check, the bootstrap data (CAs, agent
/// password, critical configuration compared with ours) from the supervisor.
async fn join_cluster(
    url: &str,
    tls: &Path,
    configured: Option<&Token>,
    critical: &BTreeMap<String, String>,
) -> Result<(Cluster, JoinTarget)> {
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
    write_cas(tls, &b)?;
    let cluster = Cluster {
        password: t.password.clone(),
        agent_password: resp["agentPassword"].as_str().unwrap_or(&t.password).to_string(),
        bootstrap: b,
    };
    Ok((cluster, JoinTarget { url, client, password: t.password.clone() }))
}

impl JoinTarget {
    /// The etcd members as the joined server sees them (k3s's `/db/info`).
    async fn members(&self) -> Result<Vec<etcd::MemberInfo>> {
        let u = format!("{}/db/info", self.url);
        let r = self.client.get(&u).basic_auth("server", Some(&self.password)).send().await?;
        if !r.status().is_success() {
            bail!("{u}: {}", r.status());
        }
        let v: Value = r.json().await?;
        Ok(serde_json::from_value(v["members"].clone())?)
    }
}

/// Adds this server to the etcd cluster of the server it joins, as k3s's join does: the member
/// list from `/db/info`, a refusal if another member already has this node name, then
/// MemberAddAsLearner through the members' client URLs; returns the initial cluster to start with.
async fn join_etcd(target: &JoinTarget, member: &etcd::Member, node_name: &str) -> Result<String> {
    let members = loop {
        match target.members().await {
            Ok(m) => break m,
            Err(e) => {
                error!("Failed to get etcd members from {}: {e:#}", target.url);
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    let mut cluster = vec![];
    let mut add = true;
    for m in &members {
        let Some(peer) = m.peer_urls.first() else { continue };
        let name = if m.name.is_empty() && *peer == member.peer_url() { member.name.clone() } else { m.name.clone() };
        if name == member.name && *peer == member.peer_url() {
            add = false;
        }
        let node_of = name.rsplit_once('-').map(|(n, _)| n).unwrap_or(&name);
        if name != member.name && node_of == node_name {
            let _ = std::fs::remove_file(member.layout.data.join("name"));
            bail!("duplicate node name found, please use a unique name for this node");
        }
        cluster.push(format!("{name}={peer}"));
    }
    if add {
        info!("Adding member {}={} to etcd cluster [{}]", member.name, member.peer_url(), cluster.join(" "));
        let endpoints: Vec<String> = members.iter().flat_map(|m| m.client_urls.clone()).collect();
        let client = etcd::Client::tls(&member.layout, endpoints)?;
        let peer = member.peer_url();
        etcd::wait_until("Failed to add this server to the etcd cluster", None, || client.member_add_learner(&peer))
            .await?;
        cluster.push(format!("{}={}", member.name, member.peer_url()));
    }
    info!("Starting etcd for cluster [{}]", cluster.join(" "));
    Ok(cluster.join(","))
}

/// Promotes this member from learner to voter once it has caught up (k3s's leader does this
/// in its learner controller; here the new member asks the others itself).
async fn promote(target: &JoinTarget, local: &etcd::Client, member: &etcd::Member) -> Result<()> {
    let (id, learner) = etcd::wait_until("Failed to test data store connection", None, || local.status()).await?;
    if !learner {
        return Ok(());
    }
    let endpoints: Vec<String> = loop {
        match target.members().await {
            Ok(m) => break m.iter().filter(|m| m.name != member.name).flat_map(|m| m.client_urls.clone()).collect(),
            Err(e) => {
                error!("Failed to get etcd members from {}: {e:#}", target.url);
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    let others = etcd::Client::tls(&member.layout, endpoints)?;
    etcd::wait_until("Waiting to promote this learner to a voting member", None, || others.member_promote(id)).await?;
    info!("Promoted etcd member {} to a voting member", member.name);
    Ok(())
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
        let (db, r, cidr, pw) = (state.kine.clone(), reg.clone(), state.cluster_cidr.clone(), password.clone());
        // The datastore blocks (SQLite, etcd requests) and scrypt is slow: off the async workers.
        let result = tokio::task::spawn_blocking(move || match nodepass::ensure_secret(&db, &r.name, &pw) {
            Ok(()) => match node::register(&db, &r, &cidr) {
                Ok(n) => {
                    nodepass::adopt(&db, &r.name, n["metadata"]["uid"].as_str().unwrap_or_default());
                    Ok(())
                }
                Err(e) => Err((false, format!("{e:#}"))),
            },
            Err(e) if e.code == 403 => Err((true, e.message)),
            Err(e) => Err((false, e.message)),
        })
        .await
        .unwrap_or_else(|e| Err((false, e.to_string())));
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

/// Heartbeats (lease renewals) of the server's own node, the datastore's compaction, and the
/// watch on the etcd child.
async fn background(state: Arc<State>, own: Option<String>) {
    let mut tick = tokio::time::interval(heartbeat_interval());
    let mut last_compact = std::time::Instant::now();
    let mut etcd_down_logged = false;
    loop {
        tick.tick().await;
        if state.etcd.is_some() {
            match etcd::exited() {
                Some(st) if !etcd_down_logged => {
                    error!("etcd exited ({st}): this server's datastore is unavailable until k3s restarts");
                    etcd_down_logged = true;
                }
                _ => {}
            }
        }
        let st = state.clone();
        let own = own.clone();
        let compact = last_compact.elapsed() > Duration::from_secs(300);
        if compact {
            last_compact = std::time::Instant::now();
        }
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(name) = &own {
                match node::renew_lease(&st.kine, name) {
                    Ok(true) => {}
                    Ok(false) => error!("Error updating node status, will retry: nodes \"{name}\" not found"),
                    Err(e) => error!("Error updating node lease: {e:#}"),
                }
            }
            if compact {
                match st.kine.compact(1000) {
                    Ok(n) if n > 0 => info!("Compacted {n} rows"),
                    Ok(_) => {}
                    Err(e) => error!("Compact failed: {e:#}"),
                }
            }
        })
        .await;
    }
}

/// SQLite magic: what a copy of state.db starts with (an etcd snapshot is a bbolt file).
fn is_sqlite_file(path: &Path) -> bool {
    let mut head = [0u8; 16];
    std::fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head)).is_ok()
        && &head == b"SQLite format 3\0"
}

const RESET_DONE: &str = "Managed etcd cluster membership has been reset, restart without --cluster-reset flag now. Backup and delete ${datadir}/server/db on each peer etcd server and rejoin the nodes";

fn reset_password(cfg: &Config, server_dir: &Path) -> Result<String> {
    Ok(match parse_token_opt(cfg.token("token", "token-file").map_err(|e| anyhow!(e))?)? {
        Some(t) => t.password,
        None => existing_password(server_dir).ok_or_else(|| anyhow!("--token is required to restore a snapshot"))?,
    })
}

/// `--cluster-reset [--cluster-reset-restore-path=<file>]`. With embedded etcd (an etcd data
/// dir, or an etcd snapshot to restore), as k3s: a snapshot is restored with etcd's restore into
/// a new `server/db/etcd` (the old one moves to `server/db/etcd-old-<unix time>`), otherwise the
/// membership is forced down to this member; a temporary member then proves that the token opens
/// the bootstrap data and writes missing CA files from it. With SQLite: a restore path is a copy
/// of state.db, put in place of the current one (moved to `etcd-old-<unix time>` as well).
async fn cluster_reset(cfg: &Config, server_dir: &Path) -> Result<()> {
    let layout = etcd::Layout::new(server_dir);
    let restore = cfg.str("cluster-reset-restore-path").map(PathBuf::from);
    let uses_etcd = match &restore {
        Some(p) if p.is_file() => !is_sqlite_file(p),
        _ => layout.initialized() || cfg.bool("cluster-init"),
    };
    if !uses_etcd {
        return sqlite_cluster_reset(cfg, server_dir, restore.as_deref());
    }
    let password = reset_password(cfg, server_dir)?;
    let node_name = node_name(cfg);
    let (ips, _) = node_ips(cfg);
    let db_dir = server_dir.join("db");
    if let Some(p) = &restore {
        if !p.exists() {
            bail!("etcd: snapshot path does not exist: {}", p.display());
        }
        if p.is_dir() {
            bail!("etcd: snapshot path must be a file, not a directory: {}", p.display());
        }
    } else if !layout.initialized() {
        bail!("etcd: no etcd data in {} to reset", layout.data.display());
    }
    let name = match &restore {
        Some(p) => {
            if layout.data.exists() {
                let old = db_dir.join(format!("etcd-old-{}", crate::timefmt::now_secs()));
                std::fs::rename(&layout.data, &old)
                    .with_context(|| format!("moving {} to {}", layout.data.display(), old.display()))?;
                info!("Moved the old etcd data dir to {}", old.display());
            }
            let member = etcd::Member {
                name: format!("{node_name}-{}", hex::encode(rand::random::<[u8; 4]>())),
                ip: ips.first().cloned().unwrap_or_else(|| "127.0.0.1".into()),
                ports: etcd::ports(),
                layout: layout.clone(),
            };
            info!("Pre-restore etcd database moved aside; restoring snapshot {}", p.display());
            etcd::snapshot_restore(&member, p)?;
            crate::pki::write_private(&layout.data.join("name"), member.name.as_bytes())?;
            member.name
        }
        None => layout.member_name(&node_name, false)?,
    };
    let member = etcd::Member {
        name,
        ip: ips.first().cloned().unwrap_or_else(|| "127.0.0.1".into()),
        ports: etcd::ports(),
        layout: layout.clone(),
    };
    info!("Starting temporary etcd to reconcile with datastore");
    let temp = etcd::Temporary::start(&member, restore.is_none()).await?;
    let db = Datastore::Etcd(temp.client.clone());
    let checked = async {
        etcd::wait_until("Waiting for the temporary etcd", Some(Duration::from_secs(60)), || db.current_revision())
            .await?;
        match stored_bootstrap(&db, &password)? {
            Some(b) => {
                let tls = server_dir.join("tls");
                write_cas(&tls, &b)?;
                etcd::ensure_cas(&layout, Some(&b))?;
            }
            None => warn!("No bootstrap data found in the restored datastore"),
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    temp.stop().await;
    checked?;
    info!("{RESET_DONE}");
    Ok(())
}

fn sqlite_cluster_reset(cfg: &Config, server_dir: &Path, restore: Option<&Path>) -> Result<()> {
    let db_dir = server_dir.join("db");
    if let Some(restore) = restore {
        anyhow::ensure!(restore.is_file(), "cluster-reset-restore-path {}: no such file", restore.display());
        let password = reset_password(cfg, server_dir)?;
        std::fs::create_dir_all(&db_dir)?;
        let old = db_dir.join(format!("etcd-old-{}", crate::timefmt::now_secs()));
        std::fs::create_dir_all(&old)?;
        for f in ["state.db", "state.db-wal", "state.db-shm"] {
            let p = db_dir.join(f);
            if p.exists() {
                std::fs::rename(&p, old.join(f))?;
            }
        }
        std::fs::copy(restore, db_dir.join("state.db"))?;
        let db = Datastore::open_sqlite(&db_dir.join("state.db"))?;
        stored_bootstrap(&db, &password)?;
        info!("Restored {} (previous db moved to {})", restore.display(), old.display());
    }
    info!("{RESET_DONE}");
    Ok(())
}

/// Starts (or joins) this server's etcd member and waits until it serves as a voting member;
/// returns the member and a client of it. A member that cannot reach a quorum, or that was
/// removed from the cluster, keeps the server waiting and logging, as k3s does.
async fn start_etcd(
    cfg: &Config,
    server_dir: &Path,
    node_name: &str,
    ip: &str,
    join: Option<(&JoinTarget, &Bootstrap)>,
) -> Result<(etcd::Member, etcd::Client)> {
    let layout = etcd::Layout::new(server_dir);
    etcd::binary("etcd")?;
    let (server_ca, peer_ca) = etcd::ensure_cas(&layout, join.map(|(_, b)| b))?;
    let initialized = layout.initialized();
    if initialized {
        info!("Managed etcd cluster bootstrap already complete and initialized");
    }
    let member = etcd::Member {
        name: layout.member_name(node_name, false)?,
        ip: ip.to_string(),
        ports: etcd::ports(),
        layout: layout.clone(),
    };
    etcd::write_leaf_certs(&member, &server_ca, &peer_ca)?;
    let how = match (initialized, join) {
        (true, _) => etcd::Start::Existing(format!("{}={}", member.name, member.peer_url())),
        (false, None) => {
            info!("Starting etcd for new cluster, cluster-reset={}", cfg.bool("cluster-reset"));
            etcd::Start::New
        }
        (false, Some((target, _))) => etcd::Start::Existing(join_etcd(target, &member, node_name).await?),
    };
    etcd::start(&member, how)?;
    let client = etcd::Client::tls(&layout, vec![member.local_endpoint()])?;
    if let Some((target, _)) = join {
        promote(target, &client, &member).await?;
    }
    etcd::wait_until("Failed to test data store connection", None, || client.test(&member)).await?;
    info!("etcd data store connection OK");
    Ok((member, client))
}

async fn run_inner(cfg: Config) -> Result<()> {
    info!("Starting k3s {} ({})", crate::version::version(), crate::version::commit());
    let data_dir = std::path::absolute(cfg.data_dir())?;
    let server_dir = data_dir.join("server");
    let tls = server_dir.join("tls");
    std::fs::create_dir_all(&tls)?;
    pki::set_mode(&server_dir, 0o700)?;
    if cfg.bool("cluster-reset") {
        return cluster_reset(&cfg, &server_dir).await;
    }
    if cfg.str("datastore-endpoint").is_some() {
        warn!("datastore-endpoint is not supported by the k3s stand-in: using the embedded datastore");
    }
    let port: u16 = cfg.str_or("https-listen-port", "6443").parse().context("https-listen-port")?;
    let bind = cfg.str_or("bind-address", "0.0.0.0");
    let configured = parse_token_opt(cfg.token("token", "token-file").map_err(|e| anyhow!(e))?)?;
    let agent_tok = parse_token_opt(cfg.token("agent-token", "agent-token-file").map_err(|e| anyhow!(e))?)?;
    let critical = critical_config(&cfg, agent_tok.as_ref());
    let name = node_name(&cfg);
    let (internal_ips, external_ips) = node_ips(&cfg);

    // k3s's datastore choice: embedded etcd with cluster-init, when joining a server, or when
    // an etcd data dir exists; else kine on SQLite.
    let join_url = cfg.str("server");
    let uses_etcd = cfg.bool("cluster-init") || join_url.is_some() || etcd::Layout::new(&server_dir).initialized();
    let (kine, cluster, etcd_node) = if uses_etcd {
        let ip = internal_ips.first().cloned().unwrap_or_else(|| "127.0.0.1".into());
        let joined = match &join_url {
            Some(url) if !etcd::Layout::new(&server_dir).initialized() => {
                info!("Joining the cluster at {url}");
                Some(join_cluster(url, &tls, configured.as_ref(), &critical).await?)
            }
            _ => None,
        };
        let (member, client) =
            start_etcd(&cfg, &server_dir, &name, &ip, joined.as_ref().map(|(c, t)| (t, &c.bootstrap))).await?;
        let db = Arc::new(Datastore::Etcd(client.clone()));
        let layout = member.layout.clone();
        let cluster = match joined {
            Some((c, _)) => c,
            None => init_cluster(&db, &tls, &server_dir, configured.as_ref(), agent_tok.as_ref(), Some(&layout))?,
        };
        let snapshots = crate::snapshot::Settings::from_config(&cfg, &data_dir, &name);
        (db, cluster, Some(Arc::new(etcd::Node { member, client, snapshots })))
    } else {
        let db_path = server_dir.join("db/state.db");
        info!("Configuring sqlite3 database connection pooling: maxIdleConns=2, maxOpenConns=0, connMaxLifetime=0s");
        let db = Arc::new(Datastore::open_sqlite(&db_path).with_context(|| format!("opening {}", db_path.display()))?);
        let cluster = init_cluster(&db, &tls, &server_dir, configured.as_ref(), agent_tok.as_ref(), None)?;
        (db, cluster, None)
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

    let service_cidr = cfg.str_or("service-cidr", "10.43.0.0/16");
    store::configure(store::Settings { service_cidr: service_cidr.clone() });
    node::set_grace(node_grace());
    {
        let (db, cidr, dns, disabled) =
            (kine.clone(), service_cidr.clone(), cfg.str_or("cluster-dns", "10.43.0.10"), cfg.list_split("disable"));
        tokio::task::spawn_blocking(move || store::seed(&db, &cidr, &dns, &disabled))
            .await
            .map_err(|e| anyhow!("{e}"))?
            .context("creating the system namespaces and services")?;
    }
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
        etcd: etcd_node.clone(),
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
        if etcd_node.is_some() {
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
    let mut deployer = crate::deploy::Controller::new(&data_dir, cfg.list_split("disable"));
    let k = kine.clone();
    deployer = tokio::task::spawn_blocking(move || {
        deployer.scan(&k, true);
        deployer
    })
    .await
    .map_err(|e| anyhow!("deploy controller: {e}"))?;
    tokio::spawn(crate::deploy::run(kine.clone(), deployer));
    if !disable_agent {
        crate::kubelet::start_healthz().await;
    }
    info!("k3s is up and running");
    notify::ready();
    std::future::pending::<()>().await;
    Ok(())
}
