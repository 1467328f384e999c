//! k3s's embedded etcd (HA servers: `cluster-init` and the servers that join it), played by
//! Debian's `etcd` binary (package etcd-server) as a child process of the server, with the
//! layout, ports and TLS of k3s's in-process etcd:
//!
//! - data in `<data-dir>/server/db/etcd/` (the member name, `<node name>-<8 hex>`, in its `name`
//!   file, as k3s keeps it); the directory counts as initialized once `member/wal` exists;
//! - client port 2379 (loopback and the node IP), peer 2380, metrics 2381 on loopback; a
//!   temporary plain-HTTP member on 2399/2400 (loopback) to reconcile the datastore during
//!   `--cluster-reset`, as k3s logs "Starting temporary etcd to reconcile with datastore";
//! - TLS under `<data-dir>/server/tls/etcd/`: `server-ca` (client side) and `peer-ca` (peers),
//!   both cluster-wide (they travel in the bootstrap data), and per server `server-client`
//!   (etcd's serving certificate), `peer-server-client` (peer traffic) and `client` (what the
//!   server itself presents to etcd). Clients and peers must present certificates.
//!
//! The server talks to its local member through etcd's JSON gateway (`/v3/kv/...`,
//! `/v3/cluster/...`, the gRPC API's HTTP form) with the `client` certificate; snapshots are taken
//! and restored with Debian's `etcdctl` (package etcd-client), as etcd's snapshot API does it.
//!
//! Invariants: the child never outlives the server (it is stopped with it, and gets SIGKILL from
//! the kernel if the server dies without stopping it); nothing here logs a key, a value or a
//! token.

use crate::pki::{self, Ca};
use crate::token::Bootstrap;
use crate::{info, warn};
use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// The ports of one server's member. k3s's are fixed (2379, 2380, 2381, and 2399/2400 for the
/// temporary member); `$K3S_STANDIN_ETCD_PORT_BASE` (a test knob) moves them all together, so
/// that several servers can run on one machine: client = base, peer = base+1, metrics = base+2,
/// temporary client = base+20, temporary peer = base+21.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub client: u16,
    pub peer: u16,
    pub metrics: u16,
    pub temp_client: u16,
    pub temp_peer: u16,
}

pub fn ports() -> Ports {
    let base = std::env::var("K3S_STANDIN_ETCD_PORT_BASE").ok().and_then(|v| v.parse::<u16>().ok()).unwrap_or(2379);
    Ports { client: base, peer: base + 1, metrics: base + 2, temp_client: base + 20, temp_peer: base + 21 }
}

/// Where one server's etcd lives on disk.
#[derive(Clone, Debug)]
pub struct Layout {
    /// `<data-dir>/server/db/etcd`
    pub data: PathBuf,
    /// `<data-dir>/server/tls/etcd`
    pub tls: PathBuf,
}

impl Layout {
    pub fn new(server_dir: &Path) -> Layout {
        Layout { data: server_dir.join("db/etcd"), tls: server_dir.join("tls/etcd") }
    }

    /// k3s's test: a member that has run once has a WAL directory.
    pub fn initialized(&self) -> bool {
        self.data.join("member/wal").is_dir()
    }

    fn name_file(&self) -> PathBuf {
        self.data.join("name")
    }

    /// The member name kept in `db/etcd/name`, or a new `<node name>-<8 hex>` written there
    /// (always a new one with `fresh`, as k3s does on a reset).
    pub fn member_name(&self, node_name: &str, fresh: bool) -> Result<String> {
        if !fresh {
            if let Ok(n) = std::fs::read_to_string(self.name_file()) {
                if !n.trim().is_empty() {
                    return Ok(n.trim().to_string());
                }
            }
        }
        let suffix: [u8; 4] = rand::random();
        let name = format!("{node_name}-{}", hex::encode(suffix));
        std::fs::create_dir_all(&self.data)?;
        pki::set_mode(&self.data, 0o700)?;
        pki::write_private(&self.name_file(), name.as_bytes())?;
        Ok(name)
    }

    pub fn ca_file(&self) -> PathBuf {
        self.tls.join("server-ca.crt")
    }
    pub fn client_cert(&self) -> PathBuf {
        self.tls.join("client.crt")
    }
    pub fn client_key(&self) -> PathBuf {
        self.tls.join("client.key")
    }
}

/// This server's member: its name and the addresses it advertises.
#[derive(Clone, Debug)]
pub struct Member {
    pub name: String,
    /// The node IP (first node-ip), advertised to peers and clients.
    pub ip: String,
    pub ports: Ports,
    pub layout: Layout,
}

fn host(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

impl Member {
    pub fn peer_url(&self) -> String {
        format!("https://{}:{}", host(&self.ip), self.ports.peer)
    }
    pub fn client_url(&self) -> String {
        format!("https://{}:{}", host(&self.ip), self.ports.client)
    }
    /// What the server itself uses: the loopback client URL, as k3s's `https://127.0.0.1:2379`.
    pub fn local_endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.ports.client)
    }
    fn listen(&self, port: u16) -> String {
        let mut urls = vec![format!("https://127.0.0.1:{port}")];
        if self.ip != "127.0.0.1" {
            urls.push(format!("https://{}:{port}", host(&self.ip)));
        }
        urls.join(",")
    }
}

/// A server's running member, as the supervisor API needs it (`/db/info`, `/db/snapshot`).
pub struct Node {
    pub member: Member,
    pub client: Client,
    pub snapshots: crate::snapshot::Settings,
}

/// The cluster-wide etcd CAs: taken from the bootstrap data when it has them, else created (a new
/// cluster) and returned so that they go into the bootstrap data.
pub fn ensure_cas(layout: &Layout, b: Option<&Bootstrap>) -> Result<(Ca, Ca)> {
    let from = |crt: &str, key: &str| {
        (!crt.is_empty() && !key.is_empty()).then(|| Ca { cert_pem: crt.to_string(), key_pem: key.to_string() })
    };
    let mut out = vec![];
    for (name, cn, given) in [
        ("server-ca", "etcd-server-ca", b.and_then(|b| from(&b.etcd_server_ca_crt, &b.etcd_server_ca_key))),
        ("peer-ca", "etcd-peer-ca", b.and_then(|b| from(&b.etcd_peer_ca_crt, &b.etcd_peer_ca_key))),
    ] {
        let ca = match given {
            Some(ca) => {
                let current = Ca::load(&layout.tls, name)?;
                if current.as_ref().map(|c| c.cert_pem != ca.cert_pem || c.key_pem != ca.key_pem).unwrap_or(true) {
                    ca.save(&layout.tls, name)?;
                }
                ca
            }
            None => Ca::load_or_create(&layout.tls, name, cn)?,
        };
        out.push(ca);
    }
    let peer = out.pop().expect("peer CA");
    let server = out.pop().expect("server CA");
    Ok((server, peer))
}

/// This server's etcd certificates, signed by the cluster's etcd CAs (re-issued at every start,
/// like k3s's serving certificates, so that a changed node IP is in them).
pub fn write_leaf_certs(member: &Member, server_ca: &Ca, peer_ca: &Ca) -> Result<()> {
    let tls = &member.layout.tls;
    let sans = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
        member.ip.clone(),
        crate::node::hostname(),
    ];
    pki::save_leaf(tls, "server-client", &server_ca.sign_server_client("etcd-server", &sans)?, server_ca)?;
    pki::save_leaf(tls, "peer-server-client", &peer_ca.sign_server_client("etcd-peer", &sans)?, peer_ca)?;
    pki::save_leaf(tls, "client", &server_ca.sign_client("etcd-client", None)?, server_ca)?;
    Ok(())
}

/// The host's `etcd` or `etcdctl`; missing, an error naming the Debian package.
pub fn binary(name: &str) -> Result<PathBuf> {
    let package = if name == "etcd" { "etcd-server" } else { "etcd-client" };
    crate::containerd::find_external(name).ok_or_else(|| {
        anyhow!("{name} not found on PATH: the k3s stand-in runs Debian's {name} for k3s's embedded etcd (apt-get install {package})")
    })
}

/// How a member starts.
pub enum Start {
    /// A new one-member cluster (the first server).
    New,
    /// Joining, or restarting on existing data: `--initial-cluster-state=existing` with this
    /// initial cluster (ignored by etcd once the data dir is initialized).
    Existing(String),
}

/// The running member, stopped by `stop()` with the server.
static CHILD: std::sync::Mutex<Option<tokio::process::Child>> = std::sync::Mutex::new(None);

fn spawn(args: Vec<String>) -> Result<tokio::process::Child> {
    let bin = binary("etcd")?;
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(&args).env_remove("NOTIFY_SOCKET").stdin(Stdio::null()).stdout(Stdio::null()).kill_on_drop(true);
    // k3s's etcd lives and dies with k3s: if the server is killed without stopping it, the
    // kernel kills it too.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
    cmd.spawn().context("starting etcd")
}

fn common_args(name: &str, data: &Path) -> Vec<String> {
    vec![
        format!("--name={name}"),
        format!("--data-dir={}", data.display()),
        // k3s's embedded etcd settings.
        "--election-timeout=5000".into(),
        "--heartbeat-interval=500".into(),
        "--logger=zap".into(),
        "--log-outputs=stderr".into(),
        // The gateway warns at every request of the server's own client (its certificate's common
        // name is ignored there): only errors reach the log.
        "--log-level=error".into(),
    ]
}

/// Starts this server's member (TLS, k3s's ports). Must be called from an async task on a
/// runtime worker or the main thread: the kernel's parent-death signal follows the thread that
/// spawned the child.
pub fn start(member: &Member, how: Start) -> Result<()> {
    let tls = &member.layout.tls;
    let f = |n: &str| tls.join(n).display().to_string();
    let mut args = common_args(&member.name, &member.layout.data);
    args.extend([
        format!("--listen-client-urls={}", member.listen(member.ports.client)),
        format!("--advertise-client-urls={}", member.client_url()),
        format!("--listen-peer-urls={}", member.listen(member.ports.peer)),
        format!("--initial-advertise-peer-urls={}", member.peer_url()),
        format!("--listen-metrics-urls=http://127.0.0.1:{}", member.ports.metrics),
        "--client-cert-auth".into(),
        format!("--trusted-ca-file={}", f("server-ca.crt")),
        format!("--cert-file={}", f("server-client.crt")),
        format!("--key-file={}", f("server-client.key")),
        "--peer-client-cert-auth".into(),
        format!("--peer-trusted-ca-file={}", f("peer-ca.crt")),
        format!("--peer-cert-file={}", f("peer-server-client.crt")),
        format!("--peer-key-file={}", f("peer-server-client.key")),
    ]);
    match how {
        Start::New => args.extend([
            format!("--initial-cluster={}={}", member.name, member.peer_url()),
            "--initial-cluster-state=new".into(),
        ]),
        Start::Existing(cluster) => {
            args.extend([format!("--initial-cluster={cluster}"), "--initial-cluster-state=existing".into()])
        }
    }
    std::fs::create_dir_all(&member.layout.data)?;
    pki::set_mode(&member.layout.data, 0o700)?;
    let child = spawn(args)?;
    *CHILD.lock().unwrap() = Some(child);
    Ok(())
}

/// Stops the member (SIGTERM, SIGKILL after 5 s: a member whose peers are gone may wait for
/// them; its WAL makes the kill safe); a no-op when none runs.
pub async fn stop() {
    let child = CHILD.lock().unwrap().take();
    if let Some(child) = child {
        stop_child(child).await;
    }
}

async fn stop_child(mut child: tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// Whether the member process has exited (and how), without waiting.
pub fn exited() -> Option<String> {
    let mut guard = CHILD.lock().unwrap();
    let child = guard.as_mut()?;
    match child.try_wait() {
        Ok(Some(st)) => Some(st.to_string()),
        _ => None,
    }
}

/// The temporary member of `--cluster-reset`: plain HTTP on loopback only (2399/2400), on the
/// real data dir; `force_new` resets the membership to this member alone (etcd's
/// `--force-new-cluster`). Stopped when dropped.
pub struct Temporary {
    child: Option<tokio::process::Child>,
    pub client: Client,
}

impl Temporary {
    pub async fn start(member: &Member, force_new: bool) -> Result<Temporary> {
        let p = member.ports;
        let mut args = common_args(&member.name, &member.layout.data);
        args.extend([
            format!("--listen-client-urls=http://127.0.0.1:{}", p.temp_client),
            format!("--advertise-client-urls=http://127.0.0.1:{}", p.temp_client),
            format!("--listen-peer-urls=http://127.0.0.1:{}", p.temp_peer),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{}", p.temp_peer),
            format!("--initial-cluster={}=http://127.0.0.1:{}", member.name, p.temp_peer),
            "--listen-metrics-urls=".into(),
        ]);
        if force_new {
            args.push("--force-new-cluster".into());
        }
        let child = spawn(args)?;
        let client = Client::plain(&format!("http://127.0.0.1:{}", p.temp_client))?;
        Ok(Temporary { child: Some(child), client })
    }

    pub async fn stop(mut self) {
        if let Some(c) = self.child.take() {
            stop_child(c).await;
        }
    }
}

impl Drop for Temporary {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
        }
    }
}

/// One member as etcd's member list shows it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct MemberInfo {
    #[serde(rename = "ID", with = "string_u64")]
    pub id: u64,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "peerURLs", default)]
    pub peer_urls: Vec<String>,
    #[serde(rename = "clientURLs", default)]
    pub client_urls: Vec<String>,
    #[serde(rename = "isLearner", default)]
    pub is_learner: bool,
}

/// etcd's JSON gateway writes 64-bit integers as strings.
mod string_u64 {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        match &v {
            serde_json::Value::String(s) => s.parse().map_err(serde::de::Error::custom),
            serde_json::Value::Number(n) => n.as_u64().ok_or_else(|| serde::de::Error::custom("not a u64")),
            _ => Err(serde::de::Error::custom("not a u64")),
        }
    }
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn unb64(v: &Value) -> Vec<u8> {
    v.as_str().and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok()).unwrap_or_default()
}

fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The end of the key range that holds every key starting with `prefix` (etcd's prefix range).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A client of etcd's JSON gateway. Its methods block (the datastore is used from blocking
/// code, as SQLite is): requests run on a small runtime of the client's own, so that they may be
/// called from anywhere, async tasks included, without nesting runtimes.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    endpoints: Vec<String>,
    rt: tokio::runtime::Handle,
}

fn client_runtime() -> tokio::runtime::Handle {
    static RT: std::sync::OnceLock<tokio::runtime::Handle> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("etcd client runtime");
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name("etcd-client".into())
            .spawn(move || rt.block_on(std::future::pending::<()>()))
            .expect("etcd client thread");
        handle
    })
    .clone()
}

impl Client {
    /// A TLS client of `endpoints`, trusting the etcd server CA and presenting `client.crt`.
    pub fn tls(layout: &Layout, endpoints: Vec<String>) -> Result<Client> {
        let ca = std::fs::read(layout.ca_file()).with_context(|| format!("reading {}", layout.ca_file().display()))?;
        let mut id = std::fs::read(layout.client_cert())?;
        id.extend(std::fs::read(layout.client_key())?);
        let http = crate::clients::trusting(&ca, Some(&id))?;
        Ok(Client { http, endpoints, rt: client_runtime() })
    }

    fn plain(endpoint: &str) -> Result<Client> {
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build()?;
        Ok(Client { http, endpoints: vec![endpoint.to_string()], rt: client_runtime() })
    }

    /// One gateway call, tried on each endpoint in turn until one answers.
    pub fn call(&self, path: &str, body: Value) -> Result<Value> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (http, endpoints, path) = (self.http.clone(), self.endpoints.clone(), path.to_string());
        self.rt.spawn(async move {
            let mut last = anyhow!("no etcd endpoint");
            for ep in &endpoints {
                // k3s's datastore test gives up after 10 s too.
                match http.post(format!("{ep}{path}")).json(&body).timeout(Duration::from_secs(10)).send().await {
                    Ok(resp) => {
                        let status = resp.status();
                        let v: Value = match resp.json().await {
                            Ok(v) => v,
                            Err(e) => {
                                last = anyhow!("{ep}{path}: {status}: {}", crate::clients::chain(&e));
                                continue;
                            }
                        };
                        let result = if status.is_success() {
                            Ok(v)
                        } else {
                            Err(anyhow!("{}", v["error"].as_str().or(v["message"].as_str()).unwrap_or("etcd error")))
                        };
                        let _ = tx.send(result);
                        return;
                    }
                    Err(e) => last = anyhow!("{}", crate::clients::chain(&e)),
                }
            }
            let _ = tx.send(Err(last));
        });
        rx.recv().map_err(|_| anyhow!("etcd client stopped"))?
    }

    fn row(kv: &Value) -> crate::datastore::Row {
        crate::datastore::Row {
            id: int(&kv["mod_revision"]),
            name: String::from_utf8_lossy(&unb64(&kv["key"])).to_string(),
            create_revision: int(&kv["create_revision"]),
            value: unb64(&kv["value"]),
        }
    }

    pub fn get(&self, key: &str) -> Result<Option<crate::datastore::Row>> {
        let v = self.call("/v3/kv/range", json!({"key": b64(key.as_bytes())}))?;
        Ok(v["kvs"].as_array().and_then(|k| k.first()).map(Self::row))
    }

    pub fn list(&self, prefix: &str) -> Result<Vec<crate::datastore::Row>> {
        let v = self.call(
            "/v3/kv/range",
            json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix.as_bytes()))}),
        )?;
        Ok(v["kvs"].as_array().map(|k| k.iter().map(Self::row).collect()).unwrap_or_default())
    }

    pub fn put(&self, key: &str, value: &[u8]) -> Result<i64> {
        let v = self.call("/v3/kv/put", json!({"key": b64(key.as_bytes()), "value": b64(value)}))?;
        Ok(int(&v["header"]["revision"]))
    }

    pub fn create(&self, key: &str, value: &[u8]) -> Result<Option<i64>> {
        let k = b64(key.as_bytes());
        let v = self.call(
            "/v3/kv/txn",
            json!({"compare": [{"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
                   "success": [{"request_put": {"key": k, "value": b64(value)}}]}),
        )?;
        Ok((v["succeeded"] == true).then(|| int(&v["header"]["revision"])))
    }

    pub fn update(&self, key: &str, expected: i64, value: &[u8]) -> Result<Result<i64, Option<i64>>> {
        let k = b64(key.as_bytes());
        let v = self.call(
            "/v3/kv/txn",
            json!({"compare": [{"key": k, "target": "MOD", "result": "EQUAL", "mod_revision": expected.to_string()}],
                   "success": [{"request_put": {"key": k, "value": b64(value)}}],
                   "failure": [{"request_range": {"key": k}}]}),
        )?;
        if v["succeeded"] == true {
            return Ok(Ok(int(&v["header"]["revision"])));
        }
        let current = v["responses"][0]["response_range"]["kvs"][0]["mod_revision"].clone();
        Ok(Err((!current.is_null()).then(|| int(&current))))
    }

    pub fn current_revision(&self) -> Result<i64> {
        let v = self.call("/v3/kv/range", json!({"key": b64(b"\0"), "count_only": true}))?;
        Ok(int(&v["header"]["revision"]))
    }

    pub fn delete(&self, key: &str) -> Result<bool> {
        let v = self.call("/v3/kv/deleterange", json!({"key": b64(key.as_bytes())}))?;
        Ok(int(&v["deleted"]) > 0)
    }

    pub fn compact(&self, keep: i64) -> Result<()> {
        let rev = self.current_revision()? - keep;
        if rev <= 0 {
            return Ok(());
        }
        match self.call("/v3/kv/compaction", json!({"revision": rev.to_string()})) {
            Err(e) if e.to_string().contains("compacted") => Ok(()),
            other => other.map(|_| ()),
        }
    }

    pub fn member_list(&self) -> Result<Vec<MemberInfo>> {
        let v = self.call("/v3/cluster/member/list", json!({}))?;
        Ok(serde_json::from_value(v["members"].clone()).unwrap_or_default())
    }

    /// Adds a learner (k3s's MemberAddAsLearner: a new member does not count for the quorum
    /// until it is promoted).
    pub fn member_add_learner(&self, peer_url: &str) -> Result<u64> {
        let v = self.call("/v3/cluster/member/add", json!({"peerURLs": [peer_url], "isLearner": true}))?;
        let m: MemberInfo = serde_json::from_value(v["member"].clone()).context("member add answer")?;
        Ok(m.id)
    }

    pub fn member_promote(&self, id: u64) -> Result<()> {
        self.call("/v3/cluster/member/promote", json!({"ID": id.to_string()})).map(|_| ())
    }

    /// (this member's id, whether it is still a learner).
    pub fn status(&self) -> Result<(u64, bool)> {
        let v = self.call("/v3/maintenance/status", json!({}))?;
        let id = v["header"]["member_id"].as_str().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        Ok((id, v["isLearner"] == true))
    }

    /// k3s's datastore test: the local member answers, is a voting member, and is in the member
    /// list under its name and peer URL (else k3s's "this server is a not a member..." message).
    pub fn test(&self, member: &Member) -> Result<()> {
        let (_, learner) = self.status()?;
        if learner {
            bail!("this server has not yet been promoted from learner to voting member");
        }
        let members = self.member_list()?;
        if members.iter().any(|m| m.name == member.name && m.peer_urls.contains(&member.peer_url())) {
            // A linearizable read proves the quorum too.
            self.current_revision()?;
            return Ok(());
        }
        let found: Vec<String> =
            members.iter().filter_map(|m| m.peer_urls.first().map(|p| format!("{}={p}", m.name))).collect();
        bail!(
            "this server is a not a member of the etcd cluster. Found [{}], expect: {}={}",
            found.join(" "),
            member.name,
            member.ip
        )
    }
}

fn etcdctl() -> Result<std::process::Command> {
    let mut cmd = std::process::Command::new(binary("etcdctl")?);
    cmd.env("ETCDCTL_API", "3").stdin(Stdio::null());
    Ok(cmd)
}

fn run(mut cmd: std::process::Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running etcdctl {what}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_string();
        bail!("etcdctl {what} failed ({}): {last}", out.status);
    }
    Ok(())
}

/// A snapshot of the local member into `path` (etcd's snapshot API through etcdctl).
pub fn snapshot_save(member: &Member, path: &Path) -> Result<()> {
    let l = &member.layout;
    let mut cmd = etcdctl()?;
    cmd.arg(format!("--endpoints={}", member.local_endpoint()))
        .arg(format!("--cacert={}", l.ca_file().display()))
        .arg(format!("--cert={}", l.client_cert().display()))
        .arg(format!("--key={}", l.client_key().display()))
        .arg("snapshot")
        .arg("save")
        .arg(path);
    run(cmd, "snapshot save")
}

/// Restores `snapshot` into the member's (absent) data dir as a one-member cluster.
pub fn snapshot_restore(member: &Member, snapshot: &Path) -> Result<()> {
    let mut cmd = etcdctl()?;
    cmd.arg("snapshot")
        .arg("restore")
        .arg(snapshot)
        .arg(format!("--name={}", member.name))
        .arg(format!("--data-dir={}", member.layout.data.display()))
        .arg(format!("--initial-cluster={}={}", member.name, member.peer_url()))
        .arg(format!("--initial-advertise-peer-urls={}", member.peer_url()));
    run(cmd, "snapshot restore")
}

/// Waits until `f` succeeds, logging the failure as k3s does ("Failed to test data store
/// connection: ...") at most every 5 s; `give_up` bounds the wait.
pub async fn wait_until<T>(
    what: &str,
    give_up: Option<Duration>,
    mut f: impl FnMut() -> Result<T> + Send,
) -> Result<T> {
    let start = std::time::Instant::now();
    let mut last_log: Option<std::time::Instant> = None;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) => {
                if let Some(st) = exited() {
                    warn!("etcd exited ({st}); the server keeps retrying");
                }
                if give_up.is_some_and(|g| start.elapsed() > g) {
                    return Err(e.context(what.to_string()));
                }
                if last_log
                    .map(|t| t.elapsed() >= Duration::from_secs(5))
                    .unwrap_or(start.elapsed() >= Duration::from_secs(5))
                {
                    info!("{what}: {e:#}");
                    last_log = Some(std::time::Instant::now());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges_cover_exactly_the_prefix() {
        assert_eq!(prefix_end(b"/registry/"), b"/registry0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn member_lists_parse_as_the_gateway_writes_them() {
        let v = json!([{"ID": "11618499748231764229", "peerURLs": ["https://127.0.0.1:2380"], "isLearner": true},
                       {"ID": "13668033151171901709", "name": "a-1", "peerURLs": ["https://x:2380"], "clientURLs": ["https://x:2379"]}]);
        let m: Vec<MemberInfo> = serde_json::from_value(v).unwrap();
        assert_eq!(m[0].id, 11618499748231764229);
        assert!(m[0].is_learner && m[0].name.is_empty());
        assert_eq!(m[1].client_urls, vec!["https://x:2379".to_string()]);
        assert_eq!(serde_json::to_value(&m[1]).unwrap()["ID"], "13668033151171901709");
    }
}
