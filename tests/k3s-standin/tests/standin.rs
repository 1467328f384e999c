//! Black-box tests of the k3s stand-in binary, on this machine: temp data dirs, free loopback
//! ports (never 6443), no containerd unless the containerd test asks for it.

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_k3s-standin");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A stand-in process with its stderr in a file, its own NOTIFY_SOCKET, killed on drop.
struct Proc {
    child: Child,
    log: PathBuf,
    notify: UnixDatagram,
    exited: Option<ExitStatus>,
}

impl Proc {
    fn spawn(dir: &Path, tag: &str, bin: &str, args: &[String], env: &[(&str, String)]) -> Proc {
        Proc::spawn_with(dir, tag, bin, args, env, &[])
    }

    /// `spawn`, with some of the default test environment removed again.
    fn spawn_with(dir: &Path, tag: &str, bin: &str, args: &[String], env: &[(&str, String)], unset: &[&str]) -> Proc {
        std::fs::create_dir_all(dir).unwrap();
        let log = dir.join(format!("{tag}.log"));
        let sock_path = dir.join(format!("{tag}.notify"));
        let _ = std::fs::remove_file(&sock_path);
        let notify = UnixDatagram::bind(&sock_path).unwrap();
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .env("NOTIFY_SOCKET", &sock_path)
            .env("K3S_STANDIN_HEARTBEAT_INTERVAL", "1")
            .env("K3S_STANDIN_RUN_DIR", dir.join("run"))
            .env("K3S_STANDIN_NODE_CONFIG_DIR", dir.join(format!("node-{tag}")))
            // Only the syssetup test (in namespaces of its own) lets the stand-in touch the kernel.
            .env("K3S_STANDIN_NO_SYSSETUP", "1");
        for v in [
            "K3S_URL",
            "K3S_TOKEN",
            "K3S_TOKEN_FILE",
            "K3S_NODE_NAME",
            "K3S_DATA_DIR",
            "K3S_CONFIG_FILE",
            "K3S_KUBECONFIG_MODE",
            "K3S_KUBECONFIG_OUTPUT",
            "K3S_AGENT_TOKEN",
            "K3S_CLUSTER_INIT",
        ] {
            cmd.env_remove(v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        for k in unset {
            cmd.env_remove(k);
        }
        Proc { child: cmd.spawn().unwrap(), log, notify, exited: None }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for READY=1 on the notify socket.
    fn wait_ready(&mut self, secs: u64) {
        self.notify.set_nonblocking(false).unwrap();
        self.notify.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut buf = [0u8; 256];
        while Instant::now() < deadline {
            if let Ok(n) = self.notify.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(msg.contains("READY=1"), "unexpected notify message {msg:?}");
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("process exited ({st}) before READY=1:\n{}", self.log());
            }
        }
        panic!("no READY=1 within {secs}s:\n{}", self.log());
    }

    fn got_ready(&self) -> bool {
        self.notify.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 256];
        self.notify.recv(&mut buf).is_ok()
    }

    fn wait_exit(&mut self, secs: u64) -> Option<ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                self.exited = Some(st);
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn term(&mut self) -> Option<ExitStatus> {
        unsafe_kill(self.child.id(), nix::sys::signal::Signal::SIGTERM);
        self.wait_exit(15)
    }
}

fn unsafe_kill(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct Server {
    dir: PathBuf,
    port: u16,
    proc: Proc,
}

fn s(v: &str) -> String {
    v.to_string()
}

fn server_args(dir: &Path, port: u16, name: &str, extra: &[String], containerd: bool) -> Vec<String> {
    let cfg = dir.join("config.yaml");
    if !cfg.exists() {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(&cfg, "").unwrap();
    }
    let mut a = vec![
        s("server"),
        s("--config"),
        cfg.display().to_string(),
        s("--data-dir"),
        dir.join("data").display().to_string(),
        s("--https-listen-port"),
        port.to_string(),
        s("--bind-address"),
        s("127.0.0.1"),
        s("--write-kubeconfig"),
        dir.join("k3s.yaml").display().to_string(),
        s("--node-name"),
        s(name),
        s("--node-ip"),
        s("127.0.0.1"),
    ];
    if !containerd {
        a.extend([s("--container-runtime-endpoint"), s("unix:///nonexistent/containerd.sock")]);
    }
    a.extend(extra.iter().cloned());
    a
}

fn start_server(dir: &Path, name: &str, extra: &[String], env: &[(&str, String)]) -> Server {
    let port = free_port();
    let args = server_args(dir, port, name, extra, false);
    let mut proc = Proc::spawn(dir, name, BIN, &args, env);
    proc.wait_ready(30);
    Server { dir: dir.to_path_buf(), port, proc }
}

impl Server {
    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
    fn token(&self) -> String {
        std::fs::read_to_string(self.dir.join("data/server/token")).unwrap().trim().to_string()
    }
    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("k3s.yaml")
    }
}

fn agent_args(dir: &Path, name: &str, extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        s("agent"),
        s("--data-dir"),
        dir.join("data").display().to_string(),
        s("--node-name"),
        s(name),
        s("--node-ip"),
        s("127.0.0.2"),
        s("--container-runtime-endpoint"),
        s("unix:///nonexistent/containerd.sock"),
        s("--config"),
        dir.join("none.yaml").display().to_string(),
    ];
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("none.yaml"), "").unwrap();
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).arg("kubectl").args(args).env("KUBECONFIG", kubeconfig).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// name -> Ready condition status ("True", "Unknown", ...)
fn nodes(kubeconfig: &Path) -> BTreeMap<String, (String, Value)> {
    let (ok, out, err) = kubectl(kubeconfig, &["get", "nodes", "-o", "json"]);
    assert!(ok, "kubectl failed: {err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["kind"], "List");
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let ready = n["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap()
                ["status"]
                .as_str()
                .unwrap()
                .to_string();
            (n["metadata"]["name"].as_str().unwrap().to_string(), (ready, n.clone()))
        })
        .collect()
}

fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}");
}

fn insecure_get(url: &str) -> reqwest::blocking::Response {
    reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .no_proxy()
        .build()
        .unwrap()
        .get(url)
        .send()
        .unwrap()
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Fails (never skips) when Debian's etcd is missing, naming the packages.
fn need_etcd() {
    for (bin, package) in [("etcd", "etcd-server"), ("etcdctl", "etcd-client")] {
        let found = std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .chain(["/usr/bin"])
            .any(|d| Path::new(d).join(bin).is_file());
        assert!(found, "{bin} is missing: the stand-in's HA servers run Debian's etcd (apt-get install {package})");
    }
}

/// A base for K3S_STANDIN_ETCD_PORT_BASE: base, +1, +2 (client, peer, metrics) and +20, +21
/// (the temporary member of --cluster-reset) all free now.
fn etcd_port_base() -> u16 {
    loop {
        let base = 20000 + (rand_u16() % 30000);
        let ports = [base, base + 1, base + 2, base + 20, base + 21];
        let held: Vec<_> = ports.iter().filter_map(|p| TcpListener::bind(("127.0.0.1", *p)).ok()).collect();
        if held.len() == ports.len() {
            return base;
        }
    }
}

fn rand_u16() -> u16 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    (t.subsec_nanos() ^ std::process::id().wrapping_mul(2654435761)) as u16
}

/// `k3s etcd-snapshot <args>` against `srv` (its data dir for the token, its URL).
fn etcd_snapshot(srv: &Server, args: &[&str]) -> (bool, String, String) {
    let none = srv.dir.join("none.yaml");
    std::fs::write(&none, "").unwrap();
    let out = Command::new(BIN)
        .arg("etcd-snapshot")
        .args(args)
        .arg("--data-dir")
        .arg(srv.dir.join("data"))
        .args(["--etcd-server", &srv.url(), "--config"])
        .arg(&none)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Starts a server on a given port (a restart keeps its URL, which other servers were given).
fn start_server_on(dir: &Path, port: u16, name: &str, extra: &[String], env: &[(&str, String)]) -> Server {
    let args = server_args(dir, port, name, extra, false);
    let mut proc = Proc::spawn(dir, name, BIN, &args, env);
    proc.wait_ready(60);
    Server { dir: dir.to_path_buf(), port, proc }
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("standin").tempdir().unwrap()
}

fn with_trailer(dir: &Path, version: &str) -> PathBuf {
    let copy = dir.join("k3s-copy");
    let mut bytes = std::fs::read(BIN).unwrap();
    bytes.extend_from_slice(format!("\nK3S_STANDIN_VERSION={version}\n").as_bytes());
    std::fs::write(&copy, bytes).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

#[test]
fn version_trailer_and_argv0_dispatch() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "k3s version v1.31.4+k3s1 (5ac18c0e)\ngo version go1.22.9\n");
    let out = Command::new(BIN).arg("-v").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("k3s version v1.31.4+k3s1 (5ac18c0e)\n"));

    let dir = tmp();
    let copy = with_trailer(dir.path(), "v1.30.8+k3s2");
    let out = Command::new(&copy).arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.starts_with("k3s version v1.30.8+k3s2 ("), "{text}");
    assert!(text.ends_with("\ngo version go1.22.9\n"), "{text}");

    // kubectl / ctr / crictl symlinks dispatch on argv[0].
    let links = dir.path().join("bin");
    std::fs::create_dir(&links).unwrap();
    for n in ["kubectl", "ctr", "crictl", "k3s"] {
        std::os::unix::fs::symlink(&copy, links.join(n)).unwrap();
    }
    let out = Command::new(links.join("kubectl")).args(["version", "--client"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Client Version: v1.30.8+k3s2"));
    let out = Command::new(links.join("crictl")).arg("ps").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not supported by the stand-in"));
    for sub in ["check-config", "token"] {
        let out = Command::new(BIN).arg(sub).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{sub}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("not supported by the stand-in"));
    }

    // `ctr` runs the host's ctr (first on PATH that is not the stand-in) with k3s's defaults.
    let fake = dir.path().join("fakebin");
    std::fs::create_dir(&fake).unwrap();
    std::fs::write(fake.join("ctr"), "#!/bin/sh\necho \"$CONTAINERD_ADDRESS|$CONTAINERD_NAMESPACE|$*\"\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(fake.join("ctr"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}:/usr/bin:/bin", links.display(), fake.display());
    let out = Command::new(links.join("ctr"))
        .args(["images", "ls"])
        .env("PATH", &path)
        .env_remove("K3S_STANDIN_RUN_DIR")
        .env_remove("CONTAINERD_ADDRESS")
        .env_remove("CONTAINERD_NAMESPACE")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "/run/k3s/containerd/containerd.sock|k8s.io|images ls\n");
    let out = Command::new(links.join("k3s"))
        .args(["ctr", "-n", "other", "images", "ls"])
        .env("PATH", &path)
        .env("CONTAINERD_NAMESPACE", "mine")
        .env_remove("K3S_STANDIN_RUN_DIR")
        .env_remove("CONTAINERD_ADDRESS")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "/run/k3s/containerd/containerd.sock|mine|-n other images ls\n");
}

#[test]
fn server_files_token_kubeconfig_datastore_and_config_precedence() {
    let dir = tmp();
    let d = dir.path();
    std::fs::write(
        d.join("config.yaml"),
        "write-kubeconfig-mode: \"0640\"\nnode-label:\n  - from=config\nnode-taint:\n  - t=config:NoSchedule\ntls-san: [standin.example]\nno-such-key: true\n",
    )
    .unwrap();
    std::fs::create_dir(d.join("config.yaml.d")).unwrap();
    std::fs::write(
        d.join("config.yaml.d/10-a.yaml"),
        "node-label+: [from-dropin=a]\nnode-taint: [t=dropin:NoSchedule]\n",
    )
    .unwrap();
    std::fs::write(d.join("config.yaml.d/20-b.yml"), "node-label+:\n  - second=b\n").unwrap();
    let srv = start_server(d, "srv1", &[s("--node-taint"), s("t=cli:NoExecute")], &[]);
    let log = srv.proc.log();
    assert!(log.contains("level=warning msg=\"Unknown flag --no-such-key found in config.yaml, skipping\""), "{log}");
    assert!(log.contains("level=info msg=\"k3s is up and running\""), "{log}");

    let sd = d.join("data/server");
    for f in ["tls/server-ca.crt", "tls/server-ca.key", "tls/client-ca.crt", "tls/client-ca.key"] {
        assert!(sd.join(f).is_file(), "{f}");
    }
    // Token: K10<sha256 of /cacerts>::server:<password>, 0600; node-token and agent-token link to it.
    let token = srv.token();
    let cacerts = insecure_get(&format!("{}/cacerts", srv.url())).bytes().unwrap().to_vec();
    assert_eq!(cacerts, std::fs::read(sd.join("tls/server-ca.crt")).unwrap());
    let hash = sha256_hex(&cacerts);
    let rest =
        token.strip_prefix(&format!("K10{hash}::server:")).unwrap_or_else(|| panic!("token {token} vs hash {hash}"));
    assert_eq!(rest.len(), 32);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(sd.join("token")).unwrap().permissions().mode() & 0o777, 0o600);
    for l in ["node-token", "agent-token"] {
        let meta = std::fs::symlink_metadata(sd.join(l)).unwrap();
        assert!(meta.file_type().is_symlink(), "{l}");
        assert_eq!(std::fs::read_link(sd.join(l)).unwrap(), sd.join("token"));
    }
    assert_eq!(std::fs::metadata(srv.kubeconfig()).unwrap().permissions().mode() & 0o777, 0o640);
    let kc = std::fs::read_to_string(srv.kubeconfig()).unwrap();
    assert!(kc.contains(&format!("server: https://127.0.0.1:{}", srv.port)), "{kc}");

    // Plain endpoints.
    assert_eq!(insecure_get(&format!("{}/ping", srv.url())).text().unwrap(), "pong");
    assert_eq!(insecure_get(&format!("{}/readyz", srv.url())).text().unwrap(), "ok");
    let v: Value = insecure_get(&format!("{}/version", srv.url())).json().unwrap();
    assert_eq!(v["gitVersion"], "v1.31.4+k3s1");
    assert_eq!(insecure_get(&format!("{}/api/v1/nodes", srv.url())).status().as_u16(), 401);
    // Bearer token and basic server:<password> also authenticate.
    let client = reqwest::blocking::Client::builder().danger_accept_invalid_certs(true).no_proxy().build().unwrap();
    let r = client.get(format!("{}/api/v1/nodes", srv.url())).bearer_auth(&token).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = client.get(format!("{}/api/v1/nodes/srv1", srv.url())).basic_auth("server", Some(rest)).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = client.get(format!("{}/api/v1/nodes", srv.url())).basic_auth("server", Some("wrong")).send().unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // The node: roles, labels from config.yaml + drop-ins (`key+` appends), taints from the CLI.
    let (ok, table, _) = kubectl(&srv.kubeconfig(), &["get", "nodes"]);
    assert!(ok);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME   STATUS   ROLES"), "{table}");
    assert!(lines[1].starts_with("srv1   Ready    control-plane,master   "), "{table}");
    assert!(lines[1].ends_with("v1.31.4+k3s1"), "{table}");
    let (ok, one, _) = kubectl(&srv.kubeconfig(), &["get", "node", "srv1", "-o", "json"]);
    assert!(ok);
    let n: Value = serde_json::from_str(&one).unwrap();
    let labels = &n["metadata"]["labels"];
    assert_eq!(labels["from"], "config");
    assert_eq!(labels["from-dropin"], "a");
    assert_eq!(labels["second"], "b");
    assert_eq!(labels["node-role.kubernetes.io/control-plane"], "true");
    assert_eq!(labels["node-role.kubernetes.io/master"], "true");
    assert_eq!(labels["kubernetes.io/hostname"], "srv1");
    assert_eq!(n["spec"]["taints"], serde_json::json!([{"key": "t", "value": "cli", "effect": "NoExecute"}]));
    assert_eq!(n["status"]["nodeInfo"]["kubeletVersion"], "v1.31.4+k3s1");
    assert_eq!(n["status"]["addresses"][0], serde_json::json!({"type": "InternalIP", "address": "127.0.0.1"}));
    let (ok, _, err) = kubectl(&srv.kubeconfig(), &["get", "node", "nope"]);
    assert!(!ok);
    assert!(err.contains("Error from server (NotFound): nodes \"nope\" not found"), "{err}");

    // Datastore: kine table in WAL mode, written continuously (lease renewals).
    let db = sd.join("db/state.db");
    assert!(d.join("data/server/db/state.db-wal").exists());
    let count = || -> i64 {
        let c = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        c.query_row("SELECT COUNT(*) FROM kine WHERE name LIKE '/registry/leases/%'", [], |r| r.get(0)).unwrap()
    };
    let before = count();
    std::thread::sleep(Duration::from_millis(2500));
    let after = count();
    assert!(after >= before + 2, "lease rows {before} -> {after}");
}

#[test]
fn server_restart_keeps_identity_and_rejects_other_token() {
    let dir = tmp();
    let d = dir.path();
    let mut srv = start_server(d, "srvr", &[s("--token"), s("short-secret")], &[]);
    let token = srv.token();
    assert!(token.ends_with("::server:short-secret"), "{token}");
    let ca = std::fs::read(d.join("data/server/tls/server-ca.crt")).unwrap();
    assert_eq!(srv.proc.term().map(|s| s.success()), Some(true), "SIGTERM exits 0");

    // Same data dir, token from config.yaml this time (and the full K10 form): same identity.
    std::fs::write(d.join("config.yaml"), format!("token: {token}\n")).unwrap();
    let mut srv = start_server(d, "srvr", &[], &[]);
    assert_eq!(srv.token(), token);
    assert_eq!(std::fs::read(d.join("data/server/tls/server-ca.crt")).unwrap(), ca);
    srv.proc.term();

    // Another token cannot open the bootstrap data.
    std::fs::write(d.join("config.yaml"), "").unwrap();
    let args = server_args(d, free_port(), "srvr", &[s("--token"), s("other-secret")], false);
    let mut p = Proc::spawn(d, "srvr-bad", BIN, &args, &[]);
    let st = p.wait_exit(20).expect("server with another token must exit");
    assert!(!st.success());
    assert!(p.log().contains("bootstrap data already found and encrypted with different token"), "{}", p.log());

    // A restored state.db with the CA files gone: the CA comes back from the datastore.
    std::fs::remove_dir_all(d.join("data/server/tls")).unwrap();
    std::fs::remove_file(d.join("data/server/token")).unwrap();
    let mut srv =
        start_server(d, "srvr", &[s("--token"), token.clone()], &[("K3S_TOKEN", s("ignored-because-cli-wins"))]);
    assert_eq!(std::fs::read(d.join("data/server/tls/server-ca.crt")).unwrap(), ca);
    assert_eq!(srv.token(), token);

    // A consistent copy of the datastore (VACUUM INTO, as a backup would take it), then
    // --cluster-reset --cluster-reset-restore-path: old db moved aside, snapshot in place.
    let snap = d.join("snap.db");
    let c = rusqlite::Connection::open(d.join("data/server/db/state.db")).unwrap();
    c.execute("VACUUM INTO ?1", [snap.display().to_string()]).unwrap();
    drop(c);
    srv.proc.term();
    let args = server_args(
        d,
        free_port(),
        "srvr",
        &[
            s("--cluster-reset"),
            s("--cluster-reset-restore-path"),
            snap.display().to_string(),
            s("--token"),
            token.clone(),
        ],
        false,
    );
    let mut p = Proc::spawn(d, "srvr-reset", BIN, &args, &[]);
    let st = p.wait_exit(20).expect("cluster-reset exits");
    assert!(st.success(), "{}", p.log());
    assert!(p
        .log()
        .contains("Managed etcd cluster membership has been reset, restart without --cluster-reset flag now."));
    let old: Vec<_> = std::fs::read_dir(d.join("data/server/db"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("etcd-old-"))
        .collect();
    assert_eq!(old.len(), 1);
    let mut srv = start_server(d, "srvr", &[], &[]);
    assert_eq!(srv.token(), token);
    assert!(nodes(&srv.kubeconfig()).contains_key("srvr"));
    srv.proc.term();
}

#[test]
fn agent_token_and_unreachable_server() {
    let dir = tmp();
    let d = dir.path();
    let srv = start_server(
        &d.join("server"),
        "srvat",
        &[s("--token"), s("server-secret"), s("--agent-token"), s("agent-secret")],
        &[],
    );
    let sd = d.join("server/data/server");
    let cacerts = std::fs::read(sd.join("tls/server-ca.crt")).unwrap();
    let agent_token = std::fs::read_to_string(sd.join("agent-token")).unwrap();
    assert!(!std::fs::symlink_metadata(sd.join("agent-token")).unwrap().file_type().is_symlink());
    assert_eq!(agent_token, format!("K10{}::node:agent-secret\n", sha256_hex(&cacerts)));
    let mut ag = Proc::spawn(
        &d.join("a"),
        "a",
        BIN,
        &agent_args(&d.join("a"), "at-agent", &[]),
        &[("K3S_URL", srv.url()), ("K3S_TOKEN", agent_token.trim().to_string())],
    );
    // Nothing listens here: the agent waits and says so, and is never ready.
    let dead = format!("https://127.0.0.1:{}", free_port());
    let mut lost = Proc::spawn(
        &d.join("l"),
        "l",
        BIN,
        &agent_args(&d.join("l"), "lost-agent", &[]),
        &[("K3S_URL", dead), ("K3S_TOKEN", agent_token.trim().to_string())],
    );
    ag.wait_ready(20);
    assert_eq!(nodes(&srv.kubeconfig())["at-agent"].0, "True");
    // The agent token does not let a server join.
    let client = reqwest::blocking::Client::builder().danger_accept_invalid_certs(true).no_proxy().build().unwrap();
    let r = client
        .get(format!("{}/v1-k3s/server-bootstrap", srv.url()))
        .basic_auth("server", Some("agent-secret"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = client
        .get(format!("{}/v1-k3s/server-bootstrap", srv.url()))
        .basic_auth("server", Some("server-secret"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400, "not an HA server");
    wait_for(10, "retry log lines", || lost.log().matches("failed to get CA certs").count() >= 2);
    assert!(lost.wait_exit(0).is_none());
    assert!(!lost.got_ready());
}

#[test]
fn agents_join_with_good_token_only() {
    let dir = tmp();
    let d = dir.path();
    let srv = start_server(&d.join("server"), "srva", &[], &[("K3S_STANDIN_NODE_GRACE", s("3"))]);
    let token = srv.token();
    let kc = srv.kubeconfig();
    let password = token.rsplit(':').next().unwrap().to_string();

    // Good agent: K3S_URL + K3S_TOKEN (full token) from the environment, labels and taints from flags.
    let mut good = Proc::spawn(
        &d.join("a1"),
        "a1",
        BIN,
        &agent_args(
            &d.join("a1"),
            "agent-good",
            &["--node-label", "tier=edge", "--node-taint", "dedicated=edge:NoSchedule"],
        ),
        &[("K3S_URL", srv.url()), ("K3S_TOKEN", token.clone())],
    );
    // Agent with a short token (trust on first use), another version of the binary.
    let copy = with_trailer(d, "v1.30.8+k3s2");
    let mut short = Proc::spawn(
        &d.join("a2"),
        "a2",
        copy.to_str().unwrap(),
        &agent_args(&d.join("a2"), "agent-short", &["--server", &srv.url(), "--token", &password]),
        &[],
    );
    // Wrong CA hash in the token.
    let bad_hash = format!("K10{}::server:{password}", "0".repeat(64));
    let mut badhash = Proc::spawn(
        &d.join("a3"),
        "a3",
        BIN,
        &agent_args(&d.join("a3"), "agent-badhash", &[]),
        &[("K3S_URL", srv.url()), ("K3S_TOKEN", bad_hash)],
    );
    // Plain http URL.
    let mut http = Proc::spawn(
        &d.join("a4"),
        "a4",
        BIN,
        &agent_args(&d.join("a4"), "agent-http", &[]),
        &[("K3S_URL", format!("http://127.0.0.1:{}", srv.port)), ("K3S_TOKEN", token.clone())],
    );
    // Right CA hash, wrong password.
    let wrong_pw = format!("{}wrong", token.rsplit_once(':').unwrap().0);
    let wp_file = d.join("wrong-token");
    std::fs::write(&wp_file, format!("{wrong_pw}:x\n")).unwrap();
    let mut wrong = Proc::spawn(
        &d.join("a5"),
        "a5",
        BIN,
        &agent_args(&d.join("a5"), "agent-wrongpw", &[]),
        &[("K3S_URL", srv.url()), ("K3S_TOKEN_FILE", wp_file.display().to_string())],
    );

    good.wait_ready(20);
    short.wait_ready(20);
    let st = badhash.wait_exit(15).expect("agent with a wrong CA hash must exit");
    assert!(!st.success());
    assert!(
        badhash.log().contains("token CA hash does not match the Cluster CA certificate hash"),
        "{}",
        badhash.log()
    );
    let st = http.wait_exit(15).expect("agent with an http:// URL must exit");
    assert!(!st.success());
    assert!(http.log().contains("https://"), "{}", http.log());
    assert!(short.log().contains("the token does not include a CA hash"), "{}", short.log());

    let n = nodes(&kc);
    assert_eq!(n["agent-good"].0, "True", "{n:?}");
    assert_eq!(n["agent-short"].0, "True");
    assert_eq!(n["srva"].0, "True");
    let g = &n["agent-good"].1;
    assert_eq!(g["metadata"]["labels"]["tier"], "edge");
    assert!(g["metadata"]["labels"].get("node-role.kubernetes.io/control-plane").is_none());
    assert_eq!(g["spec"]["taints"][0]["key"], "dedicated");
    assert_eq!(g["status"]["nodeInfo"]["kubeletVersion"], "v1.31.4+k3s1");
    assert_eq!(n["agent-short"].1["status"]["nodeInfo"]["kubeletVersion"], "v1.30.8+k3s2");
    let (_, table, _) = kubectl(&kc, &["get", "nodes"]);
    assert!(
        table.lines().any(|l| l.starts_with("agent-good ") && l.contains(" Ready ") && l.contains("<none>")),
        "{table}"
    );

    // The wrong password never gets in and keeps retrying (as k3s does), never READY.
    assert!(wrong.wait_exit(1).is_none(), "{}", wrong.log());
    assert!(!wrong.got_ready());
    assert!(!n.contains_key("agent-wrongpw"));
    assert!(wrong.log().contains("401 Unauthorized"), "{}", wrong.log());
    assert!(srv.proc.log().contains("invalid username/password combination"));

    // An agent that stops heartbeating turns NotReady (Unknown) after the grace period.
    let _ = good.child.kill();
    let _ = good.child.wait();
    good.exited = Some(ExitStatus::default());
    wait_for(15, "agent-good NotReady", || nodes(&kc)["agent-good"].0 == "Unknown");
    let (_, table, _) = kubectl(&kc, &["get", "nodes"]);
    assert!(table.lines().any(|l| l.starts_with("agent-good ") && l.contains(" NotReady ")), "{table}");
    assert_eq!(nodes(&kc)["agent-short"].0, "True");

    let (ok, out, _) = kubectl(&kc, &["delete", "node", "agent-good"]);
    assert!(ok);
    assert_eq!(out, "node \"agent-good\" deleted\n");
    assert!(!nodes(&kc).contains_key("agent-good"));
}

#[test]
fn ha_servers_share_one_etcd_ca_token_and_nodes() {
    need_etcd();
    let dir = tmp();
    let d = dir.path();
    let base = |b: u16| [("K3S_STANDIN_ETCD_PORT_BASE", b.to_string())];
    let (base_a, base_b) = (etcd_port_base(), etcd_port_base());
    let a = start_server(
        &d.join("a"),
        "ha-a",
        &[s("--cluster-init"), s("--cluster-cidr"), s("10.50.0.0/16")],
        &base(base_a),
    );
    let token = a.token();
    std::fs::create_dir_all(d.join("b")).unwrap();
    std::fs::write(
        d.join("b/config.yaml"),
        format!("server: {}\ntoken: {token}\ncluster-cidr: 10.50.0.0/16\n", a.url()),
    )
    .unwrap();
    let b = start_server(&d.join("b"), "ha-b", &[], &base(base_b));
    assert_eq!(b.token(), token, "one token for the cluster");
    for f in
        ["server-ca.crt", "server-ca.key", "client-ca.crt", "client-ca.key", "etcd/server-ca.crt", "etcd/peer-ca.key"]
    {
        assert_eq!(
            std::fs::read(d.join("a/data/server/tls").join(f)).unwrap(),
            std::fs::read(d.join("b/data/server/tls").join(f)).unwrap(),
            "{f}"
        );
    }
    // k3s's layout: the member's data and name under server/db/etcd.
    for srv in ["a", "b"] {
        let name = std::fs::read_to_string(d.join(srv).join("data/server/db/etcd/name")).unwrap();
        assert!(name.starts_with(&format!("ha-{srv}-")), "{name}");
        assert!(d.join(srv).join("data/server/db/etcd/member/wal").is_dir());
        assert!(!d.join(srv).join("data/server/db/state.db").exists(), "no SQLite on an etcd server");
    }
    // An agent joining through the second server.
    let mut ag = Proc::spawn(
        &d.join("ag"),
        "ag",
        BIN,
        &agent_args(&d.join("ag"), "ha-agent", &[]),
        &[("K3S_URL", b.url()), ("K3S_TOKEN", token.clone())],
    );
    ag.wait_ready(20);
    for kc in [a.kubeconfig(), b.kubeconfig()] {
        wait_for(10, "all nodes on every server", || {
            let n = nodes(&kc);
            ["ha-a", "ha-b", "ha-agent"].iter().all(|k| n.get(*k).map(|x| x.0 == "True").unwrap_or(false))
        });
    }
    let n = nodes(&a.kubeconfig());
    for srv in ["ha-a", "ha-b"] {
        let labels = &n[srv].1["metadata"]["labels"];
        assert_eq!(labels["node-role.kubernetes.io/etcd"], "true", "{srv}");
        assert_eq!(labels["node-role.kubernetes.io/control-plane"], "true");
    }
    assert!(n["ha-b"].1["spec"]["podCIDR"].as_str().unwrap().starts_with("10.50."));

    // One cluster through either server: both read and write the same etcd (node-password
    // secrets of nodes that registered through the second one too).
    let home = d.join("home");
    for secret in ["ha-a", "ha-b", "ha-agent"] {
        rk_ok(&a.kubeconfig(), &home, &["get", "secret", "-n", "kube-system", &format!("{secret}.node-password.k3s")]);
    }
    assert_eq!(
        rk_ok(&b.kubeconfig(), &home, &["create", "configmap", "via-b", "--from-literal=x=y"]),
        "configmap/via-b created\n"
    );
    assert_eq!(rk_ok(&a.kubeconfig(), &home, &["get", "configmap", "via-b", "-o", "jsonpath={.data.x}"]), "y");
    let table = rk_ok(&b.kubeconfig(), &home, &["get", "nodes"]);
    assert!(table.starts_with("NAME") && table.contains("ha-agent"), "{table}");

    // A server whose critical configuration differs refuses to start (before joining etcd).
    std::fs::create_dir_all(d.join("c")).unwrap();
    std::fs::write(d.join("c/config.yaml"), format!("server: {}\ntoken: {token}\n", a.url())).unwrap();
    let args = server_args(&d.join("c"), free_port(), "ha-c", &[s("--cluster-cidr"), s("10.99.0.0/16")], false);
    let mut c = Proc::spawn(&d.join("c"), "ha-c", BIN, &args, &base(etcd_port_base()));
    let st = c.wait_exit(20).expect("mismatching server must exit");
    assert!(!st.success());
    assert!(c.log().contains("critical configuration value mismatch"), "{}", c.log());
    assert!(c.log().contains("critical configuration mismatched: cluster-cidr"), "{}", c.log());
    assert!(!d.join("c/data/server/db/etcd").exists(), "no member added for a refused server");

    // Deleting a node through the joined server deletes it cluster-wide.
    let (ok, _, err) = kubectl(&b.kubeconfig(), &["delete", "node", "ha-agent"]);
    assert!(ok, "{err}");
    drop(ag);
    assert!(!nodes(&a.kubeconfig()).contains_key("ha-agent"));

    // Two members: with the first one gone there is no quorum. The second server, restarted,
    // waits for its datastore and logs it as k3s does, never READY.
    let (mut a, mut b) = (a, b);
    assert!(a.proc.term().expect("a stops").success());
    assert!(b.proc.term().expect("b stops").success());
    let args = server_args(&d.join("b"), b.port, "ha-b", &[], false);
    let b2 = Proc::spawn(&d.join("b"), "ha-b2", BIN, &args, &base(base_b));
    wait_for(30, "the datastore test failure in the log", || {
        b2.log().contains("Failed to test data store connection: ")
    });
    assert!(!b2.got_ready(), "{}", b2.log());
}

#[test]
fn etcd_snapshot_restore_brings_back_older_objects_and_servers_rejoin() {
    need_etcd();
    let dir = tmp();
    let d = dir.path();
    let bases = [etcd_port_base(), etcd_port_base(), etcd_port_base()];
    let env = |i: usize| [("K3S_STANDIN_ETCD_PORT_BASE", bases[i].to_string())];
    let home = d.join("home");
    let started = Instant::now();
    let s1 = start_server(&d.join("1"), "etcd-1", &[s("--cluster-init")], &env(0));
    let token = s1.token();
    let join_cfg = format!("server: {}\ntoken: {token}\n", s1.url());
    let mut others = vec![];
    for i in [1, 2] {
        std::fs::create_dir_all(d.join(format!("{}", i + 1))).unwrap();
        std::fs::write(d.join(format!("{}/config.yaml", i + 1)), &join_cfg).unwrap();
        others.push(start_server(&d.join(format!("{}", i + 1)), &format!("etcd-{}", i + 1), &[], &env(i)));
    }
    let (s2, s3) = (others.remove(0), others.remove(0));
    eprintln!("3 servers up in {:?}", started.elapsed());

    // Written through server 1, read through server 3: one etcd.
    rk_ok(&s1.kubeconfig(), &home, &["create", "configmap", "before", "--from-literal=k=v"]);
    let uid = rk_ok(&s3.kubeconfig(), &home, &["get", "configmap", "before", "-o", "jsonpath={.metadata.uid}"]);
    assert_eq!(uid.len(), 36, "{uid}");

    // save: k3s's file name and log line; ls: k3s's table.
    let (ok, _, err) = etcd_snapshot(&s1, &["save"]);
    assert!(ok, "{err}");
    let snap_dir = d.join("1/data/server/db/snapshots");
    let files: Vec<PathBuf> = std::fs::read_dir(&snap_dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let snap = files[0].clone();
    let snap_name = snap.file_name().unwrap().to_str().unwrap().to_string();
    let ts = snap_name.strip_prefix("on-demand-etcd-1-").expect("on-demand-<node>-<unix time>");
    assert!(ts.parse::<i64>().is_ok(), "{snap_name}");
    assert!(err.contains(&format!("level=info msg=\"Snapshot {snap_name} saved.\"")), "{err}");
    assert!(s1.proc.log().contains(&format!("Saving etcd snapshot to {}", snap.display())));
    let (ok, out, err) = etcd_snapshot(&s1, &["ls"]);
    assert!(ok, "{err}");
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0], vec!["Name", "Location", "Size", "Created"], "{out}");
    let size = std::fs::metadata(&snap).unwrap().len().to_string();
    let location = format!("file://{}", snap.display());
    assert!(lines.iter().any(|l| l[..3] == [snap_name.as_str(), location.as_str(), size.as_str()]), "{out}");

    // prune keeps the newest of one name; delete removes by name.
    for _ in 0..2 {
        let (ok, _, err) = etcd_snapshot(&s2, &["save", "--name", "extra"]);
        assert!(ok, "{err}");
        std::thread::sleep(Duration::from_millis(1100));
    }
    let (ok, _, err) = etcd_snapshot(&s2, &["prune", "--name", "extra", "--snapshot-retention", "1"]);
    assert!(ok, "{err}");
    assert_eq!(err.matches(" deleted.\"").count(), 1, "{err}");
    let left: Vec<String> = std::fs::read_dir(d.join("2/data/server/db/snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with("extra-etcd-2-"));
    let (ok, _, err) = etcd_snapshot(&s2, &["delete", &left[0]]);
    assert!(ok, "{err}");
    assert!(err.contains(&format!("Snapshot {} deleted.", left[0])), "{err}");
    assert_eq!(std::fs::read_dir(d.join("2/data/server/db/snapshots")).unwrap().count(), 0);

    // Written after the snapshot: gone after the restore.
    rk_ok(&s2.kubeconfig(), &home, &["create", "configmap", "after", "--from-literal=k=v"]);

    // Stop all; restore on server 1 (with the token, as on a new host).
    let ports = [s1.port, s2.port, s3.port];
    for mut srv in [s1, s2, s3] {
        assert!(srv.proc.term().expect("server stops").success());
    }
    let reset_args = server_args(
        &d.join("1"),
        ports[0],
        "etcd-1",
        &[
            s("--cluster-reset"),
            format!("--cluster-reset-restore-path={}", snap.display()),
            s("--token"),
            token.clone(),
        ],
        false,
    );
    let mut reset = Proc::spawn(&d.join("1"), "reset", BIN, &reset_args, &env(0));
    let st = reset.wait_exit(60).expect("cluster-reset exits");
    assert!(st.success(), "{}", reset.log());
    assert!(reset.log().contains("Managed etcd cluster membership has been reset, restart without --cluster-reset flag now. Backup and delete ${datadir}/server/db on each peer etcd server and rejoin the nodes"), "{}", reset.log());
    let db_entries: Vec<String> = std::fs::read_dir(d.join("1/data/server/db"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(db_entries.iter().any(|n| n.starts_with("etcd-old-")), "{db_entries:?}");

    let s1 = start_server_on(&d.join("1"), ports[0], "etcd-1", &[], &env(0));
    assert_eq!(rk_ok(&s1.kubeconfig(), &home, &["get", "configmap", "before", "-o", "jsonpath={.metadata.uid}"]), uid);
    let (ok, _, err) = rk(&s1.kubeconfig(), &home, &["get", "configmap", "after"]);
    assert!(!ok);
    assert!(err.contains("configmaps \"after\" not found"), "{err}");

    // The other servers, their server/db removed, rejoin as new members.
    let mut rejoined = vec![];
    for i in [1, 2] {
        let dir = d.join(format!("{}", i + 1));
        std::fs::remove_dir_all(dir.join("data/server/db")).unwrap();
        rejoined.push(start_server_on(&dir, ports[i], &format!("etcd-{}", i + 1), &[], &env(i)));
    }
    assert_eq!(
        rk_ok(&rejoined[1].kubeconfig(), &home, &["get", "configmap", "before", "-o", "jsonpath={.metadata.uid}"]),
        uid
    );
    wait_for(15, "three Ready servers", || {
        let n = nodes(&rejoined[1].kubeconfig());
        ["etcd-1", "etcd-2", "etcd-3"].iter().all(|k| n.get(*k).map(|x| x.0 == "True").unwrap_or(false))
    });
    // The real etcd's view: three started voting members, server 1's under a new name.
    let tls = d.join("1/data/server/tls/etcd");
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=https://127.0.0.1:{}", bases[0]))
        .arg(format!("--cacert={}", tls.join("server-ca.crt").display()))
        .arg(format!("--cert={}", tls.join("client.crt").display()))
        .arg(format!("--key={}", tls.join("client.key").display()))
        .args(["member", "list"])
        .output()
        .unwrap();
    let members = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(members.lines().count(), 3, "{members}");
    assert!(members.lines().all(|l| l.contains(", started, ") && l.ends_with(", false")), "{members}");
    let name1 = std::fs::read_to_string(d.join("1/data/server/db/etcd/name")).unwrap();
    assert!(members.contains(&format!(", {name1}, https://127.0.0.1:{}", bases[0] + 1)), "{members}");

    // One of three gone: the other two keep a quorum and serve writes.
    let mut s1 = s1;
    assert!(s1.proc.term().expect("server 1 stops").success());
    assert_eq!(
        rk_ok(&rejoined[0].kubeconfig(), &home, &["create", "configmap", "quorum", "--from-literal=k=v"]),
        "configmap/quorum created\n"
    );
    eprintln!("scenario done in {:?}", started.elapsed());
}

#[test]
fn etcd_snapshot_on_a_sqlite_server_fails_with_k3s_message() {
    let dir = tmp();
    let srv = start_server(&dir.path().join("lite"), "lite", &[], &[]);
    let (ok, _, err) = etcd_snapshot(&srv, &["save"]);
    assert!(!ok);
    assert!(err.contains("level=fatal msg=\"Error: see server log for details: etcd datastore disabled\""), "{err}");
    assert!(srv.proc.log().contains("etcd datastore disabled"), "{}", srv.proc.log());
    assert!(!dir.path().join("lite/data/server/db/snapshots").exists());
}

fn oci_image_tar(name: &str) -> Vec<u8> {
    fn add(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, data).unwrap();
    }
    let mut layer = tar::Builder::new(Vec::new());
    add(&mut layer, "hello.txt", format!("hello from {name}\n").as_bytes());
    let layer = layer.into_inner().unwrap();
    let arch = if cfg!(target_arch = "aarch64") { "arm64" } else { "amd64" };
    let lh = sha256_hex(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{lh}")]}
    }))
    .unwrap();
    let ch = sha256_hex(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{ch}"), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{lh}"), "size": layer.len()}]
    }))
    .unwrap();
    let mh = sha256_hex(&manifest);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{mh}"), "size": manifest.len(),
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": "1.0"}}]
    }))
    .unwrap();
    let mut b = tar::Builder::new(Vec::new());
    add(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add(&mut b, "index.json", &index);
    add(&mut b, &format!("blobs/sha256/{lh}"), &layer);
    add(&mut b, &format!("blobs/sha256/{ch}"), &config);
    add(&mut b, &format!("blobs/sha256/{mh}"), &manifest);
    b.into_inner().unwrap()
}

#[test]
fn containerd_starts_and_imports_preloaded_images_pinned() {
    let have = ["/usr/bin/containerd", "/usr/bin/ctr"].iter().all(|p| Path::new(p).exists());
    assert!(have, "this test needs the host's containerd and ctr: apt-get install containerd");
    assert!(nix::unistd::Uid::effective().is_root(), "this test needs root (containerd)");
    let dir = tmp();
    let d = dir.path();
    let images = d.join("data/agent/images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::write(images.join("a.tar"), oci_image_tar("docker.io/library/standin-a:1.0")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &oci_image_tar("docker.io/library/standin-b:1.0")).unwrap();
    std::fs::write(images.join("b.tar.gz"), gz.finish().unwrap()).unwrap();
    let zst = ruzstd::encoding::compress_to_vec(
        &oci_image_tar("docker.io/library/standin-c:1.0")[..],
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    std::fs::write(images.join("c.tar.zst"), zst).unwrap();
    std::fs::write(images.join("README"), "not an image").unwrap();
    let port = free_port();
    let args = server_args(d, port, "ctrd", &[], true);
    let mut p = Proc::spawn(d, "ctrd", BIN, &args, &[]);
    p.wait_ready(60);
    let sock = d.join("run/containerd/containerd.sock");
    assert!(sock.exists(), "{}", p.log());
    assert!(d.join("data/agent/etc/containerd/config.toml").is_file());
    let out = Command::new(BIN)
        .args(["ctr", "images", "ls", "-q"])
        .env("K3S_STANDIN_RUN_DIR", d.join("run"))
        .env_remove("CONTAINERD_ADDRESS")
        .env_remove("CONTAINERD_NAMESPACE")
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        list.contains("docker.io/library/standin-a:1.0"),
        "{list}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.log()
    );
    assert!(list.contains("docker.io/library/standin-b:1.0"), "{list}\n{}", p.log());
    assert!(list.contains("docker.io/library/standin-c:1.0"), "{list}\n{}", p.log());
    // Pinned, as `k3s ctr images ls` shows it: both labels on every preloaded image.
    let out = Command::new(BIN)
        .args(["ctr", "images", "ls"])
        .env("K3S_STANDIN_RUN_DIR", d.join("run"))
        .env_remove("CONTAINERD_ADDRESS")
        .env_remove("CONTAINERD_NAMESPACE")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    for image in ["standin-a", "standin-b", "standin-c"] {
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("docker.io/library/{image}:1.0 ")))
            .unwrap_or_else(|| panic!("{table}"));
        assert!(
            line.contains("io.cattle.k3s.pinned=pinned") && line.contains("io.cri-containerd.pinned=pinned"),
            "{table}"
        );
    }
    assert_eq!(p.log().matches("level=info msg=\"Imported images from ").count(), 3, "{}", p.log());
    assert!(!p.log().contains("Unable to import"), "{}", p.log());
    assert_eq!(p.term().map(|s| s.success()), Some(true));
    assert!(std::os::unix::net::UnixStream::connect(&sock).is_err(), "containerd stopped with the stand-in");
}

/// The real kubectl (Debian's kubernetes-client, or any kubectl on PATH that is not the
/// stand-in): tests that need it fail when it is missing.
fn real_kubectl() -> PathBuf {
    let me = std::fs::canonicalize(BIN).ok();
    let path = std::env::var("PATH").unwrap_or_default();
    for d in path.split(':').filter(|d| !d.is_empty()).chain(["/usr/bin"]) {
        let p = Path::new(d).join("kubectl");
        if p.is_file() && std::fs::canonicalize(&p).ok() != me {
            return p;
        }
    }
    panic!("this test needs the real kubectl: apt-get install kubernetes-client");
}

/// Runs the real kubectl with its own discovery cache and HOME (nothing shared between tests).
fn rk(kubeconfig: &Path, home: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(real_kubectl())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(home.join("cache"))
        .args(args)
        .env("HOME", home)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    let strip = |b: &[u8]| {
        // kubectl cluster-info colours its output even into a pipe.
        let t = String::from_utf8_lossy(b).to_string();
        let mut out = String::new();
        let mut it = t.chars().peekable();
        while let Some(c) = it.next() {
            if c == '\u{1b}' {
                for n in it.by_ref() {
                    if n.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    (out.status.success(), strip(&out.stdout), strip(&out.stderr))
}

fn rk_ok(kubeconfig: &Path, home: &Path, args: &[&str]) -> String {
    let (ok, out, err) = rk(kubeconfig, home, args);
    assert!(ok, "kubectl {args:?} failed:\n{out}\n{err}");
    out
}

#[test]
fn node_password_mismatch_is_refused_with_the_k3s_message_until_the_node_is_deleted() {
    let dir = tmp();
    let d = dir.path();
    let srv = start_server(&d.join("server"), "srvp", &[], &[]);
    let (kc, home) = (srv.kubeconfig(), d.join("home"));
    // The server runs an agent too: its own password file and secret.
    let own = std::fs::read_to_string(d.join("server/node-srvp/password")).unwrap();
    assert!(
        own.ends_with('\n') && own.trim().len() == 32 && own.trim().chars().all(|c| c.is_ascii_hexdigit()),
        "{own:?}"
    );
    rk_ok(&kc, &home, &["get", "secret", "-n", "kube-system", "srvp.node-password.k3s"]);

    let mut first = Proc::spawn(
        &d.join("a1"),
        "a1",
        BIN,
        &agent_args(&d.join("a1"), "twin", &[]),
        &[("K3S_URL", srv.url()), ("K3S_TOKEN", srv.token())],
    );
    first.wait_ready(20);
    let pw_file = d.join("a1/node-a1/password");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&pw_file).unwrap().permissions().mode() & 0o777, 0o600);
    let secret: Value = serde_json::from_str(&rk_ok(
        &kc,
        &home,
        &["get", "secret", "-n", "kube-system", "twin.node-password.k3s", "-o", "json"],
    ))
    .unwrap();
    assert_eq!(secret["type"], "k3s.cattle.io/node-password");
    assert_eq!(secret["immutable"], true);
    assert_eq!(secret["metadata"]["ownerReferences"][0]["name"], "twin");
    let hash = String::from_utf8(
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, secret["data"]["hash"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(hash.starts_with("$1:") && hash.contains(":15:8:1:"), "{hash}");
    let password = std::fs::read_to_string(&pw_file).unwrap();
    assert!(!hash.contains(password.trim()) && !srv.proc.log().contains(password.trim()), "the password leaked");

    // Another node under the same name (its own, different password): refused, keeps retrying.
    let mut second = Proc::spawn(
        &d.join("a2"),
        "a2",
        BIN,
        &agent_args(&d.join("a2"), "twin", &[]),
        &[("K3S_URL", srv.url()), ("K3S_TOKEN", srv.token())],
    );
    let refusal = format!(
        "Node password rejected, duplicate hostname or contents of '{}' may not match server node-passwd entry, try enabling a unique node name with the --with-node-id flag",
        d.join("a2/node-a2/password").display()
    );
    wait_for(20, "two refusals", || second.log().matches(&refusal).count() >= 2);
    assert!(
        second.log().contains(&format!(
            "level=info msg=\"Waiting to retrieve agent configuration; server is not ready: {refusal}"
        )),
        "{}",
        second.log()
    );
    assert!(!second.got_ready());
    assert!(second.wait_exit(0).is_none());
    assert!(
        srv.proc.log().contains("unable to verify password for node twin: hash does not match"),
        "{}",
        srv.proc.log()
    );

    // Deleting the Node deletes its secret: the name is free and the second node gets in.
    let _ = first.child.kill();
    let _ = first.child.wait();
    first.exited = Some(ExitStatus::default());
    assert_eq!(rk_ok(&kc, &home, &["delete", "node", "twin"]), "node \"twin\" deleted\n");
    let (ok, _, err) = rk(&kc, &home, &["get", "secret", "-n", "kube-system", "twin.node-password.k3s"]);
    assert!(!ok && err.contains("secrets \"twin.node-password.k3s\" not found"), "{err}");
    second.wait_ready(20);
    assert_eq!(nodes(&kc)["twin"].0, "True");
    let again: Value = serde_json::from_str(&rk_ok(
        &kc,
        &home,
        &["get", "secret", "-n", "kube-system", "twin.node-password.k3s", "-o", "json"],
    ))
    .unwrap();
    assert_ne!(again["data"]["hash"], secret["data"]["hash"], "a new secret for the new password");
    assert!(
        d.join("a2/data/agent/client-kubelet.crt").is_file() && d.join("a2/data/agent/serving-kubelet.key").is_file()
    );
}

#[test]
fn the_real_kubectl_gets_describes_creates_applies_and_deletes() {
    let dir = tmp();
    let d = dir.path();
    let mut srv = start_server(d, "kc1", &[], &[]);
    let (kc, home) = (srv.kubeconfig(), d.join("home"));

    let table = rk_ok(&kc, &home, &["get", "nodes"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME   STATUS   ROLES                  AGE   VERSION"), "{table}");
    assert!(
        lines[1].starts_with("kc1    Ready    control-plane,master   ") && lines[1].ends_with("v1.31.4+k3s1"),
        "{table}"
    );
    let wide = rk_ok(&kc, &home, &["get", "nodes", "-o", "wide"]);
    assert!(wide.lines().next().unwrap().contains("INTERNAL-IP   EXTERNAL-IP   OS-IMAGE"), "{wide}");
    assert!(wide.contains(" 127.0.0.1 ") && wide.contains("containerd://1.7.23-k3s2"), "{wide}");
    let info = rk_ok(&kc, &home, &["cluster-info"]);
    assert!(info.contains(&format!("Kubernetes control plane is running at {}", srv.url())), "{info}");
    assert!(
        info.contains(&format!(
            "CoreDNS is running at {}/api/v1/namespaces/kube-system/services/kube-dns:dns/proxy",
            srv.url()
        )),
        "{info}"
    );

    // A node-problem-detector style status patch and event: readable and described.
    let client = reqwest::blocking::Client::builder().danger_accept_invalid_certs(true).no_proxy().build().unwrap();
    let patch = serde_json::json!({"status": {"conditions": [{"type": "KernelDeadlock", "status": "True", "reason": "DockerHung",
        "message": "task docker:7 blocked", "lastHeartbeatTime": "2024-05-01T10:11:12Z", "lastTransitionTime": "2024-05-01T10:11:12Z"}]}});
    let r = client
        .patch(format!("{}/api/v1/nodes/kc1/status", srv.url()))
        .bearer_auth(srv.token())
        .header("content-type", "application/strategic-merge-patch+json")
        .body(patch.to_string())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let event = serde_json::json!({"metadata": {"name": "kc1.npd1", "namespace": "default"},
        "involvedObject": {"kind": "Node", "name": "kc1", "uid": "kc1"}, "reason": "DockerHung", "type": "Warning",
        "message": "task docker:7 blocked for more than 300 seconds", "source": {"component": "kernel-monitor", "host": "kc1"},
        "firstTimestamp": "2024-05-01T10:11:12Z", "lastTimestamp": "2024-05-01T10:11:12Z", "count": 1});
    let r = client
        .post(format!("{}/api/v1/namespaces/default/events", srv.url()))
        .bearer_auth(srv.token())
        .header("content-type", "application/json")
        .body(event.to_string())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let conds: Value =
        serde_json::from_str(&rk_ok(&kc, &home, &["get", "node", "kc1", "-o", "jsonpath={.status.conditions}"]))
            .unwrap();
    let kd = conds.as_array().unwrap().iter().find(|c| c["type"] == "KernelDeadlock").expect("patched condition");
    assert_eq!((kd["status"].as_str(), kd["reason"].as_str()), (Some("True"), Some("DockerHung")));
    assert!(conds.as_array().unwrap().iter().any(|c| c["type"] == "Ready" && c["status"] == "True"), "{conds}");
    let desc = rk_ok(&kc, &home, &["describe", "node", "kc1"]);
    for want in [
        "Name:               kc1",
        "KernelDeadlock",
        "DockerHung",
        "Ready ",
        "Lease:",
        "Non-terminated Pods:",
        "task docker:7 blocked for more than 300 seconds",
    ] {
        assert!(desc.contains(want), "{want:?} missing from:\n{desc}");
    }

    // Node edits kubectl makes with patches: label, cordon (and the selector that finds them).
    assert_eq!(rk_ok(&kc, &home, &["label", "node", "kc1", "tier=edge"]), "node/kc1 labeled\n");
    assert_eq!(rk_ok(&kc, &home, &["get", "nodes", "-l", "tier=edge", "-o", "name"]), "node/kc1\n");
    assert_eq!(rk_ok(&kc, &home, &["cordon", "kc1"]), "node/kc1 cordoned\n");
    assert!(rk_ok(&kc, &home, &["get", "nodes"]).contains(" Ready,SchedulingDisabled "));
    assert_eq!(rk_ok(&kc, &home, &["uncordon", "kc1"]), "node/kc1 uncordoned\n");

    // ConfigMaps: create, get -o json, AlreadyExists, delete, NotFound, as kubectl prints them.
    assert_eq!(rk_ok(&kc, &home, &["create", "configmap", "x", "--from-literal=a=b"]), "configmap/x created\n");
    let cm: Value = serde_json::from_str(&rk_ok(&kc, &home, &["get", "configmap", "x", "-o", "json"])).unwrap();
    assert_eq!(cm["data"]["a"], "b");
    assert_eq!(cm["metadata"]["namespace"], "default");
    assert!(cm["metadata"]["uid"].as_str().unwrap().len() == 36 && cm["metadata"]["resourceVersion"].is_string());
    assert!(cm["metadata"]["creationTimestamp"].is_string());
    let (ok, _, err) = rk(&kc, &home, &["create", "configmap", "x", "--from-literal=a=c"]);
    // kubectl 1.20 prints "Error from server (AlreadyExists): ...", newer ones "error: failed to create configmap: ...".
    assert!(!ok && err.contains("configmaps \"x\" already exists"), "{err}");
    let cms = rk_ok(&kc, &home, &["get", "configmaps"]);
    assert!(cms.starts_with("NAME   DATA   AGE\nx      1      "), "{cms}");

    // Namespaces: create, apply -f (create, then a change), selectors.
    assert_eq!(rk_ok(&kc, &home, &["create", "namespace", "team"]), "namespace/team created\n");
    let manifest = d.join("app.yaml");
    let doc = |v: &str| {
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: app\n  labels:\n    tier: web\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: app\ndata:\n  level: \"{v}\"\n")
    };
    std::fs::write(&manifest, doc("1")).unwrap();
    let out = rk_ok(&kc, &home, &["apply", "-f", manifest.to_str().unwrap()]);
    assert_eq!(out, "namespace/app created\nconfigmap/settings created\n");
    std::fs::write(&manifest, doc("2")).unwrap();
    let out = rk_ok(&kc, &home, &["apply", "-f", manifest.to_str().unwrap()]);
    assert_eq!(out, "namespace/app unchanged\nconfigmap/settings configured\n");
    assert_eq!(rk_ok(&kc, &home, &["get", "configmap", "settings", "-n", "app", "-o", "jsonpath={.data.level}"]), "2");
    let ns = rk_ok(&kc, &home, &["get", "namespaces", "-l", "tier=web", "-o", "name"]);
    assert_eq!(ns, "namespace/app\n");
    let (ok, _, err) = rk(&kc, &home, &["delete", "namespace", "kube-system"]);
    assert!(!ok && err.contains("namespaces \"kube-system\" is forbidden: this namespace may not be deleted"), "{err}");

    // Objects live in the datastore: they survive a restart.
    srv.proc.term();
    let srv = start_server(d, "kc1", &[], &[]);
    assert_eq!(rk_ok(&kc, &home, &["get", "configmap", "settings", "-n", "app", "-o", "jsonpath={.data.level}"]), "2");
    assert_eq!(rk_ok(&kc, &home, &["delete", "configmap", "x"]), "configmap \"x\" deleted\n");
    let (ok, _, err) = rk(&kc, &home, &["get", "configmap", "x"]);
    assert!(!ok && err.contains("Error from server (NotFound): configmaps \"x\" not found"), "{err}");
    drop(srv);
}

/// Runs `script` (sh) with `unshare` in new namespaces, then execs the stand-in server there.
fn server_in_namespaces(dir: &Path, tag: &str, unshare: &[&str], script: &str, path_prefix: &Path) -> Proc {
    let have = Path::new("/usr/bin/unshare").exists() && Path::new("/usr/bin/nsenter").exists();
    assert!(have, "this test needs unshare and nsenter: apt-get install util-linux");
    assert!(nix::unistd::Uid::effective().is_root(), "this test needs root (new network namespaces)");
    let mut args: Vec<String> = unshare.iter().map(|s| s.to_string()).collect();
    args.extend([s("sh"), s("-c"), format!("{script}\nexec \"$0\" \"$@\""), s(BIN)]);
    args.extend(server_args(dir, free_port(), tag, &[], false));
    let path = format!("{}:{}", path_prefix.display(), std::env::var("PATH").unwrap_or_default());
    Proc::spawn_with(dir, tag, "/usr/bin/unshare", &args, &[("PATH", path)], &["K3S_STANDIN_NO_SYSSETUP"])
}

/// A `modprobe` that records its arguments and fails for iptable_filter (the test must not load
/// modules into the machine's kernel).
fn fake_modprobe(dir: &Path) -> PathBuf {
    let bin = dir.join("fakebin");
    std::fs::create_dir_all(&bin).unwrap();
    let script =
        format!("#!/bin/sh\necho \"$@\" >> {}\n[ \"$2\" != iptable_filter ]\n", dir.join("modprobe.calls").display());
    std::fs::write(bin.join("modprobe"), script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin.join("modprobe"), std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

fn sysctl_in(pid: u32, entry: &str) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["cat", &format!("/proc/sys/{entry}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One HTTP/1.0 GET from inside the network namespace of `pid`: (status line, body).
fn get_in(pid: u32, port: u16, path: &str) -> (String, String) {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET {path} HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && cat <&3"
    );
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["bash", "-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "GET {path}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text.lines().next().unwrap_or("").trim().to_string();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

#[test]
fn the_kubelets_healthz_answers_ok_on_loopback_port_10248_once_the_node_runs() {
    let dir = tmp();
    let d = dir.path();
    let fake = fake_modprobe(d);
    // A network namespace of the test's own, so that the port is this server's.
    let mut p = server_in_namespaces(&d.join("srv"), "healthz", &["--net"], "ip link set lo up", &fake);
    p.wait_ready(30);
    let pid = p.child.id();
    let (status, body) = get_in(pid, 10248, "/healthz");
    assert!(status.starts_with("HTTP/1.0 200") || status.starts_with("HTTP/1.1 200"), "{status}\n{}", p.log());
    assert_eq!(body, "ok");
    let (status, _) = get_in(pid, 10248, "/no-such-check");
    assert!(status.contains(" 404"), "{status}");
    p.term();
}

#[test]
fn every_start_loads_modules_and_sets_forwarding_sysctls_or_says_why_not() {
    let dir = tmp();
    let d = dir.path();
    let fake = fake_modprobe(d);

    // A network namespace of the test's own: /proc/sys/net is writable there, forwarding starts at 0.
    let mut p = server_in_namespaces(&d.join("rw"), "sys-rw", &["--net"], "ip link set lo up", &fake);
    p.wait_ready(30);
    let log = p.log();
    // (Writing all/forwarding also turns on default/forwarding: the kernel propagates it, so
    // k3s finds that one already set.)
    assert!(log.contains("level=info msg=\"Set sysctl 'net/ipv4/conf/all/forwarding' to 1\""), "{log}");
    for entry in ["net/ipv4/conf/all/forwarding", "net/ipv4/conf/default/forwarding"] {
        assert_eq!(sysctl_in(p.child.id(), entry), "1", "{entry}\n{log}");
    }
    let calls = std::fs::read_to_string(d.join("modprobe.calls")).unwrap_or_default();
    for m in ["overlay", "nf_conntrack", "br_netfilter", "iptable_nat", "iptable_filter"] {
        let loaded = Path::new("/sys/module").join(m).exists();
        assert!(
            log.contains(&format!("Module {m} was already loaded")) || calls.contains(&format!("-- {m}\n")),
            "{m}: neither loaded nor asked for\n{log}\n{calls}"
        );
        if !loaded && m == "iptable_filter" {
            assert!(
                log.contains("level=warning msg=\"Failed to load kernel module iptable_filter with modprobe\""),
                "{log}"
            );
        }
    }
    p.term();

    // /proc/sys read-only (as in a container without its own network namespace): logged, not fatal.
    let mut p = server_in_namespaces(
        &d.join("ro"),
        "sys-ro",
        &["--net", "--mount", "--propagation", "private"],
        "ip link set lo up && mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys",
        &fake,
    );
    p.wait_ready(30);
    let log = p.log();
    assert!(
        log.contains("level=error msg=\"Failed to set sysctl: open /proc/sys/net/ipv4/conf/all/forwarding: read-only file system\""),
        "{log}"
    );
    assert_eq!(sysctl_in(p.child.id(), "net/ipv4/conf/all/forwarding"), "0");
    p.term();
}

#[test]
fn manifests_become_addons_and_their_objects_are_applied_like_k3s_does() {
    let dir = tmp();
    let d = dir.path();
    let m = d.join("data/server/manifests");
    std::fs::create_dir_all(m.join("storage")).unwrap();
    let team = |quota: &str, with_cm: bool| {
        let mut t = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team\n  labels:\n    pod-security.kubernetes.io/enforce: restricted\n---\napiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: team-quota\n  namespace: team\nspec:\n  hard:\n    pods: \"{quota}\"\n---\napiVersion: v1\nkind: LimitRange\nmetadata:\n  name: team-limits\n  namespace: team\nspec:\n  limits:\n  - type: Container\n    default: {{cpu: 500m}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: default-deny\n  namespace: team\nspec:\n  podSelector: {{}}\n  policyTypes: [Ingress]\n"
        );
        if with_cm {
            t.push_str("---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: team-settings\n  namespace: team\ndata:\n  a: b\n");
        }
        t
    };
    std::fs::write(m.join("team.yaml"), team("10", true)).unwrap();
    std::fs::write(
        m.join("storage/fast.yml"),
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: fast\nprovisioner: rancher.io/local-path\nreclaimPolicy: Delete\nvolumeBindingMode: WaitForFirstConsumer\n",
    )
    .unwrap();
    std::fs::write(
        m.join("widgets.json"),
        r#"{"apiVersion": "v1", "kind": "List", "items": [
  {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "widgets.example.com"},
   "spec": {"group": "example.com", "scope": "Namespaced", "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "versions": [{"name": "v1", "served": true, "storage": true}]}},
  {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w1", "namespace": "default"}, "spec": {"size": 3}}]}"#,
    )
    .unwrap();
    std::fs::write(m.join("skipped.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: skipped\n").unwrap();
    std::fs::write(m.join("skipped.yaml.skip"), "").unwrap();
    std::fs::write(m.join(".hidden.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: hidden\n").unwrap();
    std::fs::write(m.join("notes.txt"), "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: notes\n").unwrap();
    std::fs::write(m.join("bad_name.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: bad\n").unwrap();
    std::fs::write(m.join("unknown.yaml"), "apiVersion: example.org/v9\nkind: Gadget\nmetadata:\n  name: g\n").unwrap();

    let env = [("K3S_STANDIN_MANIFESTS_INTERVAL", s("1"))];
    let mut srv = start_server(d, "dep1", &[], &env);
    let (kc, home) = (srv.kubeconfig(), d.join("home"));
    let addons = rk_ok(&kc, &home, &["get", "addons", "-n", "kube-system"]);
    let lines: Vec<&str> = addons.lines().collect();
    assert!(lines[0].starts_with("NAME") && lines[0].contains("SOURCE") && lines[0].contains("CHECKSUM"), "{addons}");
    let names: Vec<&str> = lines[1..].iter().map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(names, vec!["fast", "team", "unknown", "widgets"], "{addons}");
    let team_sum = sha256_hex(&std::fs::read(m.join("team.yaml")).unwrap());
    let team_line = lines.iter().find(|l| l.starts_with("team ")).unwrap();
    assert!(
        team_line.contains(&m.join("team.yaml").display().to_string()) && team_line.ends_with(&team_sum),
        "{addons}"
    );
    let log = srv.proc.log();
    assert!(
        log.contains("Addon.k3s.cattle.io \\\"bad_name\\\" is invalid: metadata.name: Invalid value: \\\"bad_name\\\""),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "failed to process {}: no matches for kind \\\"Gadget\\\" in version \\\"example.org/v9\\\"",
            m.join("unknown.yaml").display()
        )),
        "{log}"
    );

    assert!(rk_ok(&kc, &home, &["get", "resourcequotas", "-n", "team"]).contains("team-quota"));
    assert!(rk_ok(&kc, &home, &["get", "limitranges", "-n", "team"]).contains("team-limits"));
    let np = rk_ok(&kc, &home, &["get", "networkpolicies", "-n", "team"]);
    assert!(np.starts_with("NAME           POD-SELECTOR   AGE\ndefault-deny   <none>  "), "{np}");
    let sc = rk_ok(&kc, &home, &["get", "storageclasses"]);
    assert!(sc.contains("fast   rancher.io/local-path   Delete          WaitForFirstConsumer"), "{sc}");
    assert!(rk_ok(&kc, &home, &["get", "widgets"]).contains("w1"));
    let ns = rk_ok(&kc, &home, &["get", "namespaces", "-o", "name"]);
    assert!(
        ns.contains("namespace/team\n") && !ns.contains("skipped") && !ns.contains("hidden") && !ns.contains("notes"),
        "{ns}"
    );
    let quota: Value =
        serde_json::from_str(&rk_ok(&kc, &home, &["get", "quota", "team-quota", "-n", "team", "-o", "json"])).unwrap();
    assert_eq!(quota["metadata"]["annotations"]["objectset.rio.cattle.io/owner-name"], "team");
    let events = rk_ok(&kc, &home, &["get", "events", "-n", "kube-system"]);
    assert!(events.contains("AppliedManifest") && events.contains("addon/team"), "{events}");

    // A changed file is applied again; what it no longer holds is deleted.
    std::fs::write(m.join("team.yaml"), team("20", false)).unwrap();
    wait_for(15, "the changed manifest applied", || {
        rk(&kc, &home, &["get", "quota", "team-quota", "-n", "team", "-o", "jsonpath={.spec.hard.pods}"]).1 == "20"
    });
    let (ok, _, err) = rk(&kc, &home, &["get", "configmap", "team-settings", "-n", "team"]);
    assert!(!ok && err.contains("not found"), "{err}");
    let sum: String =
        rk_ok(&kc, &home, &["get", "addon", "team", "-n", "kube-system", "-o", "jsonpath={.spec.checksum}"]);
    assert_eq!(sum, sha256_hex(&std::fs::read(m.join("team.yaml")).unwrap()));

    // A removed file leaves its Addon and objects (k3s deletes nothing for it).
    std::fs::remove_file(m.join("storage/fast.yml")).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    rk_ok(&kc, &home, &["get", "addon", "fast", "-n", "kube-system"]);
    rk_ok(&kc, &home, &["get", "storageclass", "fast"]);

    // `disable: [team]`: file, Addon and everything the Addon applied are removed.
    srv.proc.term();
    let srv = start_server(d, "dep1", &[s("--disable"), s("team")], &env);
    assert!(!m.join("team.yaml").exists());
    let (ok, _, err) = rk(&kc, &home, &["get", "addon", "team", "-n", "kube-system"]);
    assert!(!ok && err.contains("not found"), "{err}");
    let (ok, _, err) = rk(&kc, &home, &["get", "namespace", "team"]);
    assert!(!ok && err.contains("namespaces \"team\" not found"), "{err}");
    drop(srv);
}
