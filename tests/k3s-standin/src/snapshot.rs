//! etcd snapshots, as k3s (v1.29+) splits them between the CLI and the server:
//!
//! - `k3s etcd-snapshot save|ls|list|l|delete|prune` is a client: it POSTs a request
//!   (`{"operation": ..., "name": [...], "dir": ..., "retention": ...}`) to the local server's
//!   `/db/snapshot` (`--etcd-server`, default `https://127.0.0.1:6443`) with the server token
//!   (`--etcd-token`, default the one in `<data-dir>/server/token`), then logs what the server
//!   did (`Snapshot <name> saved.`, `Snapshot <name> deleted.`) or prints the list as k3s's table
//!   (`Name Location Size Created`). A server without etcd answers `etcd datastore disabled`,
//!   which the CLI reports as `see server log for details: etcd datastore disabled`.
//! - the server takes the snapshot of its local member (etcd's snapshot API, through etcdctl)
//!   into `<dir>/<name>-<node name>-<unix time>`; `dir` defaults to `etcd-snapshot-dir`, else
//!   `<data-dir>/server/db/snapshots` (created when missing; another directory must exist).
//!   Prune keeps the newest `retention` files whose name starts with the given name.
//!
//! Invariants: a snapshot file appears complete or not at all (etcdctl writes `<file>.part` and
//! renames it); deleting never leaves the snapshot directory (names with a `/` are refused).

use crate::config::{self, Cmd, Config};
use crate::etcd;
use crate::{error, info};
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The server's snapshot configuration (its `etcd-snapshot-*` flags).
pub struct Settings {
    /// `<data-dir>/server/db/snapshots`
    pub default_dir: PathBuf,
    /// `etcd-snapshot-dir`
    pub dir: Option<PathBuf>,
    /// The server's node name: part of every snapshot file name.
    pub node_name: String,
}

impl Settings {
    pub fn from_config(cfg: &Config, data_dir: &Path, node_name: &str) -> Settings {
        Settings {
            default_dir: data_dir.join("server/db/snapshots"),
            dir: cfg.str("etcd-snapshot-dir").map(PathBuf::from),
            node_name: node_name.to_string(),
        }
    }

    /// k3s's snapshotDir(): only the default directory is created.
    fn resolve_dir(&self, requested: Option<&str>, create: bool) -> Result<PathBuf> {
        let dir = requested.map(PathBuf::from).or_else(|| self.dir.clone()).unwrap_or_else(|| self.default_dir.clone());
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => Ok(dir),
            Ok(_) => bail!("failed to get etcd-snapshot-dir: {} is not a directory", dir.display()),
            Err(_) if create && dir == self.default_dir => {
                std::fs::create_dir_all(&dir)?;
                crate::pki::set_mode(&dir, 0o700)?;
                Ok(dir)
            }
            Err(e) => bail!("failed to get etcd-snapshot-dir: stat {}: {e}", dir.display()),
        }
    }
}

/// k3s's SnapshotRequest.
#[derive(Deserialize, Default)]
struct Request {
    operation: String,
    #[serde(default)]
    name: Vec<String>,
    #[serde(default)]
    dir: Option<String>,
    #[serde(default)]
    retention: Option<i64>,
}

/// One snapshot file: its name, path, size and the time in its name (else its mtime).
struct File {
    name: String,
    path: PathBuf,
    size: u64,
    created: i64,
}

fn files(dir: &Path) -> Result<Vec<File>> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let meta = e.metadata()?;
        let name = e.file_name().to_string_lossy().to_string();
        if !meta.is_file() || name.ends_with(".part") {
            continue;
        }
        let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        let created = name
            .rsplit_once('-')
            .and_then(|(_, ts)| ts.parse::<i64>().ok())
            .unwrap_or_else(|| mtime.map(|d| d.as_secs() as i64).unwrap_or(0));
        out.push(File { name, path: e.path(), size: meta.len(), created });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes the oldest snapshots named `<prefix>...` beyond the newest `retention`.
fn retention(retention: i64, prefix: &str, dir: &Path) -> Result<Vec<String>> {
    if retention < 1 {
        return Ok(vec![]);
    }
    info!("Applying snapshot retention={retention} to local snapshots with prefix {prefix} in {}", dir.display());
    let mut matching: Vec<File> = files(dir)?.into_iter().filter(|f| f.name.starts_with(prefix)).collect();
    matching.sort_by(|a, b| b.created.cmp(&a.created).then(b.name.cmp(&a.name)));
    let mut deleted = vec![];
    for f in matching.into_iter().skip(retention as usize) {
        info!("Removing local snapshot {}", f.path.display());
        std::fs::remove_file(&f.path)?;
        deleted.push(f.name);
    }
    Ok(deleted)
}

/// Serves one `/db/snapshot` request on a server with etcd (blocking: etcdctl, file system).
pub fn handle(node: &etcd::Node, body: &[u8]) -> Result<Value> {
    let req: Request = serde_json::from_slice(body).context("snapshot request")?;
    let s = &node.snapshots;
    let name = req.name.first().cloned().unwrap_or_else(|| "on-demand".to_string());
    match req.operation.as_str() {
        "save" => {
            let dir = s.resolve_dir(req.dir.as_deref(), true)?;
            let file = format!("{name}-{}-{}", s.node_name, crate::timefmt::now_secs());
            let path = dir.join(&file);
            info!("Saving etcd snapshot to {}", path.display());
            if let Err(e) = etcd::snapshot_save(&node.member, &path) {
                error!("Failed to take etcd snapshot: {e:#}");
                return Err(e);
            }
            let deleted = retention(req.retention.unwrap_or(0), &name, &dir)?;
            Ok(json!({"created": [file], "deleted": deleted}))
        }
        "list" => {
            let dir = s.resolve_dir(req.dir.as_deref(), true)?;
            let items: Vec<Value> = files(&dir)?
                .iter()
                .map(|f| {
                    json!({"apiVersion": "k3s.cattle.io/v1", "kind": "ETCDSnapshotFile",
                           "metadata": {"name": format!("local-{}", f.name)},
                           "spec": {"snapshotName": f.name, "nodeName": s.node_name,
                                    "location": format!("file://{}", f.path.display())},
                           "status": {"size": f.size.to_string(),
                                      "creationTime": crate::timefmt::rfc3339(f.created), "readyToUse": true}})
                })
                .collect();
            Ok(json!({"apiVersion": "v1", "kind": "List", "items": items}))
        }
        "delete" => {
            let dir = s.resolve_dir(req.dir.as_deref(), false)?;
            let mut deleted = vec![];
            for n in &req.name {
                if n.contains('/') || n == ".." || n == "." {
                    bail!("invalid snapshot name: path traversal not allowed");
                }
                match std::fs::remove_file(dir.join(n)) {
                    Ok(()) => {
                        info!("Snapshot {n} deleted locally");
                        deleted.push(n.clone());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => info!("Snapshot {n} not found locally"),
                    Err(e) => error!("Failed to delete local snapshot {n}: {e}"),
                }
            }
            Ok(json!({"deleted": deleted}))
        }
        "prune" => {
            let dir = s.resolve_dir(req.dir.as_deref(), false)?;
            Ok(json!({"deleted": retention(req.retention.unwrap_or(5), &name, &dir)?}))
        }
        other => bail!("invalid snapshot operation {other:?}"),
    }
}

/// Go's tabwriter with padding 1: every column but the last as wide as its widest cell + 1.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols.saturating_sub(1))
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0) + 1)
        .collect();
    let mut out = String::new();
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            if i + 1 < r.len() {
                out.push_str(&format!("{cell:<w$}", w = widths[i]));
            } else {
                out.push_str(cell);
            }
        }
        out.push('\n');
    }
    out
}

/// Splits the command line into flags (with their values) and positional arguments.
fn split_args(args: &[String]) -> (Vec<String>, Vec<String>) {
    let (mut flags, mut positional) = (vec![], vec![]);
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        match a.strip_prefix("--").or_else(|| a.strip_prefix('-')).filter(|s| !s.is_empty()) {
            Some(name) => {
                flags.push(a.clone());
                let takes_value = !name.contains('=')
                    && config::lookup(Cmd::EtcdSnapshot, name)
                        .or_else(|| config::flags(Cmd::EtcdSnapshot).find(|f| f.short == Some(name)))
                        .is_some_and(|f| f.kind != config::Kind::Bool);
                if takes_value && i < args.len() {
                    flags.push(args[i].clone());
                    i += 1;
                }
            }
            None => positional.push(a.clone()),
        }
    }
    (flags, positional)
}

/// `k3s etcd-snapshot [save|ls|list|l|delete|prune] [flags] [names]`.
pub async fn cli(args: &[String]) -> i32 {
    let (sub, rest) = match args.first().map(String::as_str) {
        Some(s @ ("save" | "ls" | "list" | "l" | "delete" | "prune")) => (s.to_string(), &args[1..]),
        Some("-h" | "--help" | "help") => {
            print!("{}", usage());
            return 0;
        }
        _ => ("save".to_string(), args),
    };
    let (flags, positional) = split_args(rest);
    if flags.iter().any(|f| f == "-h" || f == "--help") {
        print!("{}", usage());
        return 0;
    }
    let env = |n: &str| std::env::var(n).ok();
    let cfg = match Config::resolve(Cmd::EtcdSnapshot, &flags, &env, Path::new(config::DEFAULT_CONFIG)) {
        Ok(c) => c,
        Err(e) => crate::fatal!("Error: {e}"),
    };
    crate::logx::set_debug(cfg.bool("debug"));
    for w in &cfg.warnings {
        crate::warn!("{w}");
    }
    match run(&sub, &cfg, &positional).await {
        Ok(()) => 0,
        Err(e) => crate::fatal!("Error: {e:#}"),
    }
}

fn usage() -> String {
    let mut s = "NAME:\n   k3s etcd-snapshot - Manage etcd snapshots\n\nUSAGE:\n   k3s etcd-snapshot command [command options] [arguments...]\n\nCOMMANDS:\n   delete       Delete given snapshot(s)\n   ls, list, l  List snapshots\n   prune        Remove snapshots that match the name prefix that exceed the configured retention count\n   save         Trigger an immediate etcd snapshot\n\nOPTIONS:\n".to_string();
    for f in config::flags(Cmd::EtcdSnapshot) {
        s.push_str(&format!("   --{}\n", f.name));
    }
    s
}

async fn run(sub: &str, cfg: &Config, positional: &[String]) -> Result<()> {
    let name = cfg.str_or("name", "on-demand");
    let dir = cfg.str("dir").or_else(|| cfg.str("etcd-snapshot-dir"));
    let request = match sub {
        "save" => {
            if !positional.is_empty() {
                bail!("this command does not take any arguments");
            }
            // On-demand snapshots are never pruned by save (k3s sets retention 0).
            json!({"operation": "save", "name": [name], "dir": dir, "retention": 0})
        }
        "ls" | "list" | "l" => json!({"operation": "list", "dir": dir}),
        "delete" => {
            if positional.is_empty() {
                bail!("no snapshots given for removal");
            }
            json!({"operation": "delete", "name": positional, "dir": dir})
        }
        _ => {
            let retention: i64 = cfg
                .str_or("snapshot-retention", "5")
                .parse()
                .map_err(|_| anyhow!("invalid value for --snapshot-retention"))?;
            json!({"operation": "prune", "name": [name], "dir": dir, "retention": retention})
        }
    };
    let answer = post(cfg, &request).await?;
    match sub {
        "ls" | "list" | "l" => {
            let mut rows = vec![vec!["Name".to_string(), "Location".into(), "Size".into(), "Created".into()]];
            let mut items: Vec<&Value> = answer["items"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
            items.sort_by_key(|i| i["spec"]["snapshotName"].as_str().unwrap_or_default().to_string());
            for i in items {
                rows.push(vec![
                    i["spec"]["snapshotName"].as_str().unwrap_or_default().to_string(),
                    i["spec"]["location"].as_str().unwrap_or_default().to_string(),
                    i["status"]["size"].as_str().unwrap_or("0").to_string(),
                    i["status"]["creationTime"].as_str().unwrap_or_default().to_string(),
                ]);
            }
            print!("{}", table(&rows));
        }
        _ => {
            for n in answer["created"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                info!("Snapshot {n} saved.");
            }
            for n in answer["deleted"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                info!("Snapshot {n} deleted.");
            }
        }
    }
    Ok(())
}

/// The request to the server, authenticated as a server with the token, trusting only the
/// cluster CA (checked against the token's hash when it is a full token).
async fn post(cfg: &Config, request: &Value) -> Result<Value> {
    let server = cfg.str_or("etcd-server", "https://127.0.0.1:6443").trim_end_matches('/').to_string();
    let token = match cfg.str("etcd-token") {
        Some(t) => t,
        None => {
            let path = cfg.data_dir().join("server/token");
            std::fs::read_to_string(&path).map_err(|e| anyhow!("open {}: {}", path.display(), io_reason(&e)))?
        }
    };
    let token = crate::token::parse(&token).map_err(|e| anyhow!(e))?;
    let cacerts = crate::clients::fetch_cacerts(&server).await.map_err(|e| anyhow!(e))?;
    crate::token::check_hash(&token, &cacerts).map_err(|e| anyhow!("failed to validate token: {e}"))?;
    let client = crate::clients::trusting(&cacerts, None)?;
    let url = format!("{server}/db/snapshot");
    let resp = client
        .post(&url)
        .basic_auth("server", Some(&token.password))
        .json(request)
        .timeout(std::time::Duration::from_secs(120))
        .send()
        .await
        .map_err(|e| anyhow!("see server log for details: Post \"{url}\": {}", crate::clients::chain(&e)))?;
    let status = resp.status();
    let body = resp.bytes().await?;
    if !status.is_success() {
        let msg = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        bail!("see server log for details: {msg}");
    }
    serde_json::from_slice(&body).context("snapshot answer")
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_every_column_but_the_last_like_go_tabwriter() {
        let t = table(&[
            vec!["Name".into(), "Location".into(), "Size".into(), "Created".into()],
            vec![
                "on-demand-a-1".into(),
                "file:///x/on-demand-a-1".into(),
                "20512".into(),
                "2024-01-01T00:00:00Z".into(),
            ],
        ]);
        assert_eq!(
            t,
            "Name          Location                Size  Created\non-demand-a-1 file:///x/on-demand-a-1 20512 2024-01-01T00:00:00Z\n"
        );
    }

    #[test]
    fn retention_keeps_the_newest_of_one_prefix_only() {
        let d = tempfile::tempdir().unwrap();
        for n in ["on-demand-n-100", "on-demand-n-300", "on-demand-n-200", "other-n-50"] {
            std::fs::write(d.path().join(n), b"x").unwrap();
        }
        let mut gone = retention(2, "on-demand", d.path()).unwrap();
        gone.sort();
        assert_eq!(gone, vec!["on-demand-n-100".to_string()]);
        let left: Vec<String> = files(d.path()).unwrap().into_iter().map(|f| f.name).collect();
        assert_eq!(left, vec!["on-demand-n-200", "on-demand-n-300", "other-n-50"]);
    }

    #[test]
    fn flags_and_names_are_told_apart() {
        let a: Vec<String> = ["--etcd-server", "https://x", "snap-1", "--debug", "snap-2", "--name=n"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (f, p) = split_args(&a);
        assert_eq!(f, vec!["--etcd-server", "https://x", "--debug", "--name=n"]);
        assert_eq!(p, vec!["snap-1", "snap-2"]);
    }
}
