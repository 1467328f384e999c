//! Snapshots and restore on real hosts, against the k3s stand-in (SQLite that keeps writing, and
//! real etcd for HA), with the real kubectl from the operator side. One cluster through its life,
//! so the scenarios run in this order:
//! create/list/verify/pull and a restore that brings back exactly what the snapshot held; bad
//! archives refused before anything stops; 20 snapshots under writes (and the seed's `tar czf`
//! copies counted); an interrupted restore run again, and a rollback; the timer; disaster
//! recovery onto a fresh host with the old server's container destroyed (h1 is gone after it);
//! HA on three etcd servers.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libtest_mimic::Trial;

use crate::common::{ensure, sh, Operator, Outcome};
use crate::mirror;
use crate::support::{Lab, LabHost};

struct World {
    op: Operator,
    mirror_url: String,
    /// The archive pulled by the first scenario, restored by the later ones.
    pulled: Mutex<Option<PathBuf>>,
}

static WORLD: Mutex<Option<Arc<World>>> = Mutex::new(None);

fn world(lab: &Arc<Lab>) -> Arc<World> {
    let mirror_url = crate::up::world(lab).mirror.url();
    let mut guard = WORLD.lock().unwrap();
    guard
        .get_or_insert_with(|| {
            let op = Operator::new(lab, "snapshot");
            op.trust(&lab.hosts().iter().collect::<Vec<_>>());
            Arc::new(World { op, mirror_url, pulled: Mutex::new(None) })
        })
        .clone()
}

pub fn trials(lab: &Arc<Lab>) -> Vec<Trial> {
    let t = |name: &str, f: fn(&Arc<Lab>, &World) -> Outcome| {
        let lab = lab.clone();
        crate::common::timed(format!("snapshot::{name}"), move || {
            let w = world(&lab);
            f(&lab, &w)
        })
    };
    vec![
        t("a_restore_brings_back_what_the_snapshot_held_with_its_uids_and_the_old_ca_and_token", create_and_restore),
        t("bad_archives_are_refused_before_k3s_stops_naming_the_entry_with_exit_2", bad_archives),
        t("twenty_snapshots_under_writes_all_pass_the_integrity_check_and_a_full_disk_leaves_nothing", under_writes),
        t("an_interrupted_restore_converges_when_run_again_and_a_rollback_undoes_a_restore", interrupted),
        t("the_timer_takes_snapshots_on_schedule_and_keeps_the_retention", timer),
        t("disaster_recovery_onto_a_fresh_host_brings_the_agents_back_and_forgets_the_lost_server", disaster_recovery),
        t("ha_three_etcd_servers_snapshot_and_cluster_reset_restore", ha),
    ]
}

/// A cluster file: `hosts` are (host, role); `backup` is the YAML of spec.backup's fields.
fn cluster_yaml(w: &World, name: &str, hosts: &[(&LabHost, &str)], backup: &str) -> PathBuf {
    let mut yaml = format!(
        "apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: snap\nspec:\n  ssh:\n    keyPath: {}\n    knownHosts: {}\n  hosts:\n",
        w.op.lab.client_key().display(),
        w.op.known_hosts().display()
    );
    for (h, role) in hosts {
        yaml.push_str(&format!("    - name: {}\n      address: {}\n      role: {role}\n", h.name, h.address));
    }
    yaml.push_str(&format!(
        "  k3s:\n    version: {}\n    source:\n      mirror: {}\n    config:\n      disable: [traefik, servicelb]\n",
        mirror::VERSION,
        w.mirror_url
    ));
    if !backup.is_empty() {
        yaml.push_str("  backup:\n");
        yaml.push_str(backup);
    }
    let path = w.op.home.join(name);
    std::fs::write(&path, yaml).unwrap();
    path
}

fn k3node(w: &World, args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = w.op.k3node(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    let shown = if json.is_null() { stdout } else { String::new() };
    (out.status.code().unwrap_or(-1), json, format!("{shown}{stderr}"))
}

fn with_cache<'a>(w: &World, args: &[&'a str], cache: &'a str) -> Vec<&'a str> {
    let _ = w;
    let mut all = args.to_vec();
    all.extend(["--cache-dir", cache]);
    all
}

/// `up` on `file`; the lock of a scheduled snapshot taken at that very moment is waited out.
fn up(w: &World, file: &Path) -> Outcome {
    let cache = w.op.home.join("cache").display().to_string();
    let mut last = String::new();
    for _ in 0..4 {
        let args = ["up", "-c", file.to_str().unwrap(), "-o", "json", "--ready-timeout", "120"];
        let (code, json, stderr) = k3node(w, &with_cache(w, &args, &cache));
        if code == 0 {
            return Ok(());
        }
        last = format!("up failed ({code}): {json}\n{stderr}");
        if !json.to_string().contains("\"conflict\"") {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    Err(last.into())
}

fn restore(w: &World, file: &Path, extra: &[&str]) -> (i32, serde_json::Value, String) {
    let cache = w.op.home.join("cache").display().to_string();
    let mut args = vec!["restore", "-c", file.to_str().unwrap(), "--yes", "-o", "json", "--ready-timeout", "120"];
    args.extend(extra);
    k3node(w, &with_cache(w, &args, &cache))
}

fn reset(w: &World, lab: &Lab, names: &[&str]) -> Outcome {
    let hosts: Vec<(&LabHost, &str)> = names.iter().map(|n| (lab.host(n), "agent")).collect();
    let mut hosts = hosts;
    hosts[0].1 = "server";
    let file = cluster_yaml(w, "reset.yaml", &hosts, "");
    let (code, json, stderr) = k3node(w, &["reset", "-c", file.to_str().unwrap(), "--yes", "-o", "json"]);
    ensure(code == 0, || format!("reset of {names:?}: {json}\n{stderr}"))
}

/// Installs a fresh cluster on `hosts` (fixes first: fresh lab hosts have ip_forward off).
fn fresh_cluster(
    w: &World,
    lab: &Lab,
    hosts: &[(&LabHost, &str)],
    file: &str,
) -> Result<PathBuf, libtest_mimic::Failed> {
    let names: Vec<&str> = hosts.iter().map(|(h, _)| h.name.as_str()).collect();
    reset(w, lab, &names)?;
    let file = cluster_yaml(w, file, hosts, "");
    let _ = w.op.k3node(&["preflight", "-c", file.to_str().unwrap(), "--fix"]);
    up(w, &file)?;
    Ok(file)
}

/// The real kubectl, through the kubeconfig k3node merged.
fn kubectl(w: &World, args: &[&str]) -> Output {
    let mut cmd = w.op.lab.command_in_netns(Path::new("kubectl"));
    cmd.arg("--kubeconfig").arg(w.op.home.join(".kube/config")).args(args).env("HOME", &w.op.home);
    cmd.output().expect("kubectl (apt-get install kubernetes-client) runs")
}

fn create_cm(w: &World, name: &str) -> Result<String, libtest_mimic::Failed> {
    let out = kubectl(w, &["create", "configmap", name, "--from-literal=k=v"]);
    ensure(out.status.success(), || {
        format!("kubectl create configmap {name}: {}", String::from_utf8_lossy(&out.stderr))
    })?;
    cm_uid(w, name).ok_or_else(|| format!("configmap {name} has no uid after its creation").into())
}

fn cm_uid(w: &World, name: &str) -> Option<String> {
    let out = kubectl(w, &["get", "configmap", name, "-o", "jsonpath={.metadata.uid}"]);
    let uid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !uid.is_empty()).then_some(uid)
}

fn ready_nodes(w: &World) -> BTreeMap<String, bool> {
    let out = kubectl(w, &["get", "nodes", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let ready = n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            (n["metadata"]["name"].as_str().unwrap_or("").to_string(), ready)
        })
        .collect()
}

fn all_ready(w: &World, names: &[&str]) -> Outcome {
    // Agents heartbeat every 5 s: give them a little while after a restart.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let nodes = ready_nodes(w);
        if names.iter().all(|n| nodes.get(*n) == Some(&true)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("not all of {names:?} Ready through the merged kubeconfig: {nodes:?}").into());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn invocation(h: &LabHost, unit: &str) -> String {
    sh(h, &format!("systemctl show -p InvocationID --value {unit}")).unwrap_or_default().trim().to_string()
}

fn phase<'a>(json: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    json["phases"].as_array().and_then(|p| p.iter().find(|p| p["name"] == name)).unwrap_or(&serde_json::Value::Null)
}

fn create_and_restore(lab: &Arc<Lab>, w: &World) -> Outcome {
    let (h1, h2, h3) = (lab.host("h1"), lab.host("h2"), lab.host("h3"));
    // Whatever earlier scenarios left on the hosts this file uses goes first.
    reset(w, lab, &["h1", "h2", "h3", "h4", "h5"])?;
    let file = fresh_cluster(w, lab, &[(h1, "server"), (h2, "agent"), (h3, "agent")], "cluster.yaml")?;
    let config = file.to_str().unwrap();
    let before = create_cm(w, "before")?;

    let (code, json, stderr) = k3node(w, &["snapshot", "create", "-c", config, "-o", "json"]);
    ensure(code == 0, || format!("snapshot create: {json}\n{stderr}"))?;
    let created = &json["snapshots"][0];
    let name = created["name"].as_str().unwrap_or_default().to_string();
    ensure(name.starts_with("on-demand-h1-") && created["state"] == "created", || format!("{json}"))?;
    let modes = sh(h1, &format!("stat -c '%a %n' /var/lib/rancher/k3node/snapshots /var/lib/rancher/k3node/snapshots/{name}.tar.zst /var/lib/rancher/k3node/snapshots/{name}.tar.zst.sha256"))?;
    ensure(
        modes.lines().map(|l| l.split(' ').next().unwrap_or("")).collect::<Vec<_>>() == ["700", "600", "600"],
        || format!("modes: {modes}"),
    )?;

    let (code, json, stderr) = k3node(w, &["snapshot", "list", "-c", config, "-o", "json"]);
    let listed = json["snapshots"].as_array().cloned().unwrap_or_default();
    ensure(code == 0 && listed.iter().any(|s| s["name"] == name.as_str()), || format!("{json}\n{stderr}"))?;
    let one = listed.iter().find(|s| s["name"] == name.as_str()).unwrap();
    ensure(
        one["host"] == "h1"
            && one["manifest"]["datastore"] == "sqlite"
            && one["manifest"]["k3s_version"] == mirror::VERSION
            && one["manifest"]["node"] == "h1",
        || format!("list: {one}"),
    )?;

    let (code, json, stderr) = k3node(w, &["snapshot", "verify", "-c", config, &format!("h1:{name}"), "-o", "json"]);
    ensure(code == 0 && json["snapshots"][0]["check"] == "PRAGMA integrity_check: ok", || format!("{json}\n{stderr}"))?;

    let pulls = w.op.home.join("pulled");
    let (code, json, stderr) =
        k3node(w, &["snapshot", "pull", "-c", config, "--to", pulls.to_str().unwrap(), "-o", "json"]);
    ensure(code == 0, || format!("pull: {json}\n{stderr}"))?;
    let local = pulls.join(format!("{name}.tar.zst"));
    ensure(local.is_file() && pulls.join(format!("{name}.tar.zst.sha256")).is_file(), || format!("{json}"))?;
    let (code, _, stderr) = k3node(w, &["snapshot", "verify", local.to_str().unwrap(), "-o", "json"]);
    ensure(code == 0, || format!("local verify: {stderr}"))?;
    *w.pulled.lock().unwrap() = Some(local.clone());

    let after = create_cm(w, "after")?;
    ensure(after != before, || "two configmaps with one uid".into())?;
    let token = sh(h1, "cat /var/lib/rancher/k3s/server/token")?;
    let ca = sh(h1, "sha256sum < /var/lib/rancher/k3s/server/tls/server-ca.crt")?;
    let (code, json, stderr) = restore(w, &file, &["--from", local.to_str().unwrap()]);
    ensure(code == 0, || format!("restore: {json}\n{stderr}"))?;
    ensure(json["restore"]["moved_aside"].as_array().is_some_and(|m| !m.is_empty()), || format!("{json}"))?;
    ensure(phase(&json, "stop")["message"].as_str().is_some_and(|m| m.contains("h2") && m.contains("h3")), || {
        format!("the agents were not stopped: {}", phase(&json, "stop"))
    })?;
    ensure(cm_uid(w, "before").as_deref() == Some(before.as_str()), || "the configmap of before the snapshot".into())?;
    ensure(cm_uid(w, "after").is_none(), || "a configmap made after the snapshot came back".into())?;
    ensure(sh(h1, "cat /var/lib/rancher/k3s/server/token")? == token, || "the token changed".into())?;
    ensure(sh(h1, "sha256sum < /var/lib/rancher/k3s/server/tls/server-ca.crt")? == ca, || "the CA changed".into())?;
    let aside = sh(h1, "ls -d /var/lib/rancher/k3s/server.k3node-restore-* /etc/rancher/k3s.k3node-restore-*")?;
    ensure(aside.lines().count() >= 2, || format!("nothing was moved aside: {aside}"))?;
    // Staged by the check while k3s ran, used by the restore without reading the archive again,
    // then moved in: nothing staged is left.
    ensure(json["restore"]["staging"][0]["step"] == "verify and stage the archive", || format!("{json}"))?;
    ensure(json["restore"]["actions"][0].as_str().is_some_and(|a| a.starts_with("use the")), || {
        format!("the restore did not use what its check staged: {}", json["restore"]["actions"])
    })?;
    let staged =
        sh(h1, "ls -d /var/lib/rancher/k3s/*.k3node-staged-* /etc/rancher/*.k3node-staged-* /var/lib/rancher/k3node/restore-staged.json 2>/dev/null || true")?;
    ensure(staged.trim().is_empty(), || format!("staged data left behind: {staged}"))?;
    let printed = format!("{json}{stderr}");
    ensure(
        !printed.contains(token.trim()) && !printed.contains(token.trim().rsplit(':').next().unwrap_or("-")),
        || "the token reached k3node's output".into(),
    )?;
    all_ready(w, &["h1", "h2", "h3"])
}

/// A tar entry as the bad archives write it: raw name bytes, so that what k3node never makes can be made.
enum Body<'a> {
    File(&'a [u8]),
    Symlink(&'a str),
    HardLink(&'a str),
    Char,
}

fn append_raw(tar: &mut tar::Builder<Vec<u8>>, name: &str, body: Body<'_>, mode: u32) {
    let mut header = tar::Header::new_gnu();
    header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
    let (kind, data): (tar::EntryType, &[u8]) = match body {
        Body::File(bytes) => (tar::EntryType::Regular, bytes),
        Body::Symlink(t) => {
            header.set_link_name_literal(t).unwrap();
            (tar::EntryType::Symlink, &[])
        }
        Body::HardLink(t) => {
            header.set_link_name_literal(t).unwrap();
            (tar::EntryType::Link, &[])
        }
        Body::Char => (tar::EntryType::Char, &[]),
    };
    header.set_entry_type(kind);
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_735_787_045);
    header.set_cksum();
    tar.append(&header, data).unwrap();
}

/// The good archive's entries (tar headers and bytes), its manifest first.
fn entries_of(archive: &Path) -> Vec<(tar::Header, Vec<u8>)> {
    let file = std::fs::File::open(archive).unwrap();
    let mut tar = tar::Archive::new(zstd::stream::read::Decoder::new(file).unwrap());
    tar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (e.header().clone(), data)
        })
        .collect()
}

/// A bad archive: the good one's entries with `change` applied to the manifest, plus `extra`.
fn rebuild(
    good: &[(tar::Header, Vec<u8>)],
    out: &Path,
    change: impl Fn(&mut serde_json::Value),
    extra: &dyn Fn(&mut tar::Builder<Vec<u8>>),
) {
    let mut tar = tar::Builder::new(Vec::new());
    for (i, (header, data)) in good.iter().enumerate() {
        if i == 0 {
            let mut manifest: serde_json::Value = serde_json::from_slice(data).unwrap();
            change(&mut manifest);
            let json = serde_json::to_vec_pretty(&manifest).unwrap();
            let mut h = header.clone();
            h.set_size(json.len() as u64);
            h.set_cksum();
            tar.append(&h, json.as_slice()).unwrap();
        } else {
            tar.append(header, data.as_slice()).unwrap();
        }
    }
    extra(&mut tar);
    let bytes = zstd::encode_all(tar.into_inner().unwrap().as_slice(), 3).unwrap();
    write_with_sidecar(out, &bytes);
}

fn write_with_sidecar(out: &Path, bytes: &[u8]) {
    std::fs::write(out, bytes).unwrap();
    let name = out.file_name().unwrap().to_string_lossy();
    std::fs::write(format!("{}.sha256", out.display()), format!("{}  {name}\n", mirror::sha256_hex(bytes))).unwrap();
}

fn list_entry(manifest: &mut serde_json::Value, entry: serde_json::Value) {
    manifest["entries"].as_array_mut().unwrap().push(entry);
}

fn bad_archives(lab: &Arc<Lab>, w: &World) -> Outcome {
    let h1 = lab.host("h1");
    let file = w.op.home.join("cluster.yaml");
    let good_path = w.pulled.lock().unwrap().clone().ok_or("the first scenario pulled no archive")?;
    let good_bytes = std::fs::read(&good_path).unwrap();
    let good = entries_of(&good_path);
    let dir = w.op.home.join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let evil = b"evil";
    let evil_sha = mirror::sha256_hex(evil);
    type Case<'a> = (&'static str, &'static str, Box<dyn Fn(&Path) + 'a>);
    let good_sidecar = std::fs::read_to_string(format!("{}.sha256", good_path.display())).unwrap();
    let cases: Vec<Case<'_>> = vec![
        ("flipped", "sha256", {
            let (bytes, sidecar) = (good_bytes.clone(), good_sidecar.clone());
            Box::new(move |out: &Path| {
                let mut bytes = bytes.clone();
                let at = bytes.len() / 2;
                bytes[at] ^= 0x40;
                std::fs::write(out, &bytes).unwrap();
                let name = out.file_name().unwrap().to_string_lossy();
                let sha = sidecar.split_whitespace().next().unwrap();
                std::fs::write(format!("{}.sha256", out.display()), format!("{sha}  {name}\n")).unwrap();
            })
        }),
        ("truncated", "sha256", {
            let (bytes, sidecar) = (good_bytes.clone(), good_sidecar.clone());
            Box::new(move |out: &Path| {
                std::fs::write(out, &bytes[..bytes.len() / 2]).unwrap();
                let name = out.file_name().unwrap().to_string_lossy();
                let sha = sidecar.split_whitespace().next().unwrap();
                std::fs::write(format!("{}.sha256", out.display()), format!("{sha}  {name}\n")).unwrap();
            })
        }),
        ("wrong-manifest", "var/lib/rancher/k3s/server/token", {
            Box::new(|out: &Path| {
                rebuild(
                    &good,
                    out,
                    |m| {
                        for e in m["entries"].as_array_mut().unwrap() {
                            if e["path"] == "var/lib/rancher/k3s/server/token" {
                                e["sha256"] = serde_json::json!("0".repeat(64));
                            }
                        }
                    },
                    &|_| {},
                )
            })
        }),
        ("absolute", "/etc/cron.d/k3node-evil", {
            Box::new(|out: &Path| {
                rebuild(&good, out, |_| {}, &|t| append_raw(t, "/etc/cron.d/k3node-evil", Body::File(evil), 0o644))
            })
        }),
        ("dotdot", "..", {
            Box::new(|out: &Path| {
                rebuild(&good, out, |_| {}, &|t| {
                    append_raw(t, "var/lib/rancher/k3s/server/../../../../etc/evil", Body::File(evil), 0o644)
                })
            })
        }),
        ("symlink-escape", "var/lib/rancher/k3s/server/tls/evil", {
            Box::new(|out: &Path| {
                rebuild(
                    &good,
                    out,
                    |m| {
                        list_entry(
                            m,
                            serde_json::json!({"path": "var/lib/rancher/k3s/server/tls/evil", "kind": "symlink", "size": 0, "mode": "0777", "uid": 0, "gid": 0, "target": "/etc/shadow"}),
                        )
                    },
                    &|t| append_raw(t, "var/lib/rancher/k3s/server/tls/evil", Body::Symlink("/etc/shadow"), 0o777),
                )
            })
        }),
        ("hardlink", "var/lib/rancher/k3s/server/tls/hard", {
            Box::new(|out: &Path| {
                rebuild(&good, out, |_| {}, &|t| {
                    append_raw(t, "var/lib/rancher/k3s/server/tls/hard", Body::HardLink("/etc/shadow"), 0o600)
                })
            })
        }),
        ("device", "var/lib/rancher/k3s/server/tls/dev", {
            Box::new(|out: &Path| {
                rebuild(&good, out, |_| {}, &|t| append_raw(t, "var/lib/rancher/k3s/server/tls/dev", Body::Char, 0o600))
            })
        }),
        ("outside", "etc/cron.d/k3node-evil", {
            let (evil_sha, good) = (evil_sha.clone(), &good);
            Box::new(move |out: &Path| {
                let sha = evil_sha.clone();
                rebuild(
                    good,
                    out,
                    move |m| {
                        list_entry(
                            m,
                            serde_json::json!({"path": "etc/cron.d/k3node-evil", "kind": "file", "size": 4, "mode": "0644", "uid": 0, "gid": 0, "sha256": sha}),
                        )
                    },
                    &|t| append_raw(t, "etc/cron.d/k3node-evil", Body::File(evil), 0o644),
                )
            })
        }),
    ];
    let k3s_before = invocation(h1, "k3s");
    let agent_before = invocation(lab.host("h2"), "k3s-agent");
    let record =
        || sh(h1, "stat -c %Y /var/lib/rancher/k3node/restore.json 2>/dev/null || echo none").unwrap_or_default();
    let record_before = record();
    for (case, named, make) in &cases {
        let out = dir.join(format!("bad-{case}.tar.zst"));
        make(&out);
        let (code, json, stderr) = restore(w, &file, &["--from", out.to_str().unwrap()]);
        let message = phase(&json, "archive")["message"].as_str().unwrap_or_default().to_string();
        ensure(code == 2 && json["bad_archive"] == true, || format!("{case}: exit {code}: {json}\n{stderr}"))?;
        ensure(message.contains(named), || format!("{case}: the refusal does not name {named:?}: {message}"))?;
        ensure(phase(&json, "stop")["state"] == "not-run" && phase(&json, "push")["state"] == "not-run", || {
            format!("{case}: phases after the refusal ran: {json}")
        })?;
    }
    // Refused on the host as well: an archive put in h1's snapshot directory by hand.
    let on_host = h1.root.join("var/lib/rancher/k3node/snapshots");
    // Its sha256 fits its sidecar, so the archive phase (on the target itself) passes it on to
    // the target's check, which reads all of it: refused there, with the entry named, staging
    // removed, before anything stops.
    for (case, named, _) in cases.iter().filter(|(case, _, _)| ["dotdot", "hardlink"].contains(case)) {
        for ext in ["tar.zst", "tar.zst.sha256"] {
            std::fs::copy(dir.join(format!("bad-{case}.{ext}")), on_host.join(format!("bad-{case}.{ext}"))).unwrap();
        }
        let (code, json, stderr) = restore(w, &file, &["--from", &format!("h1:bad-{case}")]);
        ensure(code == 2 && json["bad_archive"] == true, || format!("{case} on h1: exit {code}: {json}\n{stderr}"))?;
        let message = phase(&json, "check")["message"].as_str().unwrap_or_default().to_string();
        ensure(message.contains(named), || format!("{case} on h1: the refusal does not name {named:?}: {json}"))?;
        ensure(phase(&json, "stop")["state"] == "not-run", || {
            format!("{case} on h1: phases after the refusal ran: {json}")
        })?;
        let staged = sh(
            h1,
            "ls -d /var/lib/rancher/k3s/*.k3node-staged-* /etc/rancher/*.k3node-staged-* /var/lib/rancher/k3node/restore-staged.json 2>/dev/null || true",
        )?;
        ensure(staged.trim().is_empty(), || format!("{case} on h1: a refused check left {staged}"))?;
        for ext in ["tar.zst", "tar.zst.sha256"] {
            let _ = std::fs::remove_file(on_host.join(format!("bad-{case}.{ext}")));
        }
    }
    ensure(invocation(h1, "k3s") == k3s_before && invocation(lab.host("h2"), "k3s-agent") == agent_before, || {
        "k3s was restarted by a refused restore".into()
    })?;
    ensure(record() == record_before, || "a refused restore wrote a restore record".into())?;
    let evil = sh(h1, "ls /etc/cron.d/k3node-evil /etc/evil 2>/dev/null || true")?;
    ensure(evil.trim().is_empty(), || format!("a refused archive wrote {evil}"))
}

fn under_writes(lab: &Arc<Lab>, w: &World) -> Outcome {
    let h1 = lab.host("h1");
    // The writer: configmaps created one after another through the API while snapshots are taken.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let home = w.op.home.clone();
    let writer = {
        let (stop, lab) = (stop.clone(), w.op.lab.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 2000 {
                let out = lab
                    .command_in_netns(Path::new("kubectl"))
                    .arg("--kubeconfig")
                    .arg(home.join(".kube/config"))
                    .args(["create", "configmap", &format!("load-{n}"), "--from-literal=k=v"])
                    .env("HOME", &home)
                    .output();
                if out.is_ok_and(|o| o.status.success()) {
                    n += 1;
                }
            }
            n
        })
    };
    let k3s_before = invocation(h1, "k3s");
    let (checked, failures) = w.op.with_session(
        w.op.endpoint(h1, "root"),
        w.op.options(k3node::transport::HostKeyPolicy::Strict),
        w.op.keyring(),
        async move |s| {
            let s = s.expect("connect to h1");
            let helper = k3node::operator::link::SshLink::new(s, k3node::protocol::HELPER_PATH.into(), None);
            let link = k3node::operator::link::Link::new(Arc::new(helper));
            let mut failures = Vec::new();
            let mut checked = 0;
            for i in 0..20 {
                let create = k3node::protocol::snapshot::CreateSnapshot {
                    cluster: "snap".into(),
                    node: "h1".into(),
                    name_prefix: format!("load{i}"),
                    dir: Some("/var/tmp/k3node-load".into()),
                };
                match link.call(&create).send().await {
                    Ok(c) => {
                        let verify =
                            k3node::protocol::snapshot::VerifySnapshot { path: c.path.clone(), sum_only: false };
                        match link.call(&verify).send().await {
                            Ok(v) if v.database_check == "PRAGMA integrity_check: ok" => checked += 1,
                            Ok(v) => failures.push(format!("{}: {}", c.name, v.database_check)),
                            Err(e) => failures.push(format!("{}: {e}", c.name)),
                        }
                    }
                    Err(e) => failures.push(format!("snapshot {i}: {e}")),
                }
            }
            (checked, failures)
        },
    );
    // The seed's way, measured in the same run under the same writes: `tar czf` of the live dir.
    let mut torn = 0;
    let mut seed_copies = 0;
    let scratch = w.op.home.join("seed");
    for i in 0..20 {
        sh(h1, &format!("tar czf /var/tmp/seed-{i}.tgz -C / var/lib/rancher/k3s/server/db 2>/dev/null || true"))?;
        let copy = scratch.join(format!("{i}"));
        std::fs::create_dir_all(&copy).unwrap();
        let tgz = h1.root.join(format!("var/tmp/seed-{i}.tgz"));
        let untar = std::process::Command::new("tar").arg("xzf").arg(&tgz).arg("-C").arg(&copy).status();
        seed_copies += 1;
        let db = copy.join("var/lib/rancher/k3s/server/db/state.db");
        let ok = untar.is_ok_and(|s| s.success())
            && rusqlite::Connection::open(&db)
                .and_then(|c| c.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0)))
                .is_ok_and(|r| r == "ok");
        if !ok {
            torn += 1;
        }
        let _ = std::fs::remove_file(&tgz);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.join().unwrap_or(0);
    eprintln!(
        "snapshot lab: 20 k3node snapshots under {writes} API writes: {checked} passed PRAGMA integrity_check; the seed's `tar czf` of the live db: {torn} of {seed_copies} copies torn (fail integrity_check or do not open)"
    );
    sh(h1, "rm -rf /var/tmp/k3node-load")?;
    ensure(failures.is_empty() && checked == 20, || format!("{checked}/20 checked: {failures:?}"))?;
    ensure(writes > 0, || "the writer wrote nothing".into())?;

    // A full disk while creating: a clear error, no partial archive, k3s undisturbed.
    sh(h1, "mkdir -p /var/tmp/k3node-full && mount -t tmpfs -o size=64k tmpfs /var/tmp/k3node-full")?;
    let outcome = w.op.with_session(
        w.op.endpoint(h1, "root"),
        w.op.options(k3node::transport::HostKeyPolicy::Strict),
        w.op.keyring(),
        async move |s| {
            let s = s.expect("connect to h1");
            let helper = k3node::operator::link::SshLink::new(s, k3node::protocol::HELPER_PATH.into(), None);
            let link = k3node::operator::link::Link::new(Arc::new(helper));
            let create = k3node::protocol::snapshot::CreateSnapshot {
                cluster: "snap".into(),
                node: "h1".into(),
                name_prefix: "full".into(),
                dir: Some("/var/tmp/k3node-full".into()),
            };
            link.call(&create).send().await.map_err(|e| (e.host_kind(), e.to_string()))
        },
    );
    let left = sh(h1, "ls -A /var/tmp/k3node-full; umount /var/tmp/k3node-full; rmdir /var/tmp/k3node-full")?;
    let Err((kind, message)) = outcome else { return Err("a snapshot into a 64 KiB disk succeeded".into()) };
    ensure(kind == Some(k3node::protocol::ErrorKind::NoSpace), || format!("full disk: {kind:?}: {message}"))?;
    ensure(left.trim().is_empty(), || format!("a full disk left {left}"))?;
    ensure(invocation(h1, "k3s") == k3s_before, || "k3s restarted while snapshots were taken".into())
}

fn interrupted(lab: &Arc<Lab>, w: &World) -> Outcome {
    let h1 = lab.host("h1");
    let file = w.op.home.join("cluster.yaml");
    let local = w.pulled.lock().unwrap().clone().ok_or("the first scenario pulled no archive")?;
    let before = cm_uid(w, "before").ok_or("no configmap `before`")?;
    create_cm(w, "later")?;
    // Killed in the middle: once the target has begun (its restore record says in-progress).
    let cache = w.op.home.join("cache");
    let mut child =
        w.op.lab
            .command_in_netns(Path::new(crate::common::K3NODE))
            .args(["restore", "-c", file.to_str().unwrap(), "--yes", "--from", local.to_str().unwrap(), "--cache-dir"])
            .arg(&cache)
            .env("HOME", &w.op.home)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
    let record = h1.root.join("var/lib/rancher/k3node/restore.json");
    let start = std::fs::metadata(&record).and_then(|m| m.modified()).ok();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut landed = false;
    while Instant::now() < deadline {
        let changed = std::fs::metadata(&record).and_then(|m| m.modified()).ok() != start;
        if changed && std::fs::read_to_string(&record).is_ok_and(|t| t.contains("in-progress")) {
            landed = true;
            break;
        }
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    eprintln!(
        "snapshot lab: the operator was killed {} the target's restore",
        if landed { "during" } else { "before or after" }
    );
    let (code, json, stderr) = restore(w, &file, &["--from", local.to_str().unwrap()]);
    ensure(code == 0, || format!("the restore run again: {json}\n{stderr}"))?;
    ensure(cm_uid(w, "before").as_deref() == Some(before.as_str()) && cm_uid(w, "later").is_none(), || {
        "the restore run again did not converge to the snapshot".into()
    })?;
    all_ready(w, &["h1", "h2", "h3"])?;

    // A rollback puts back what the last restore replaced.
    create_cm(w, "rolled")?;
    let (code, json, stderr) = restore(w, &file, &["--from", local.to_str().unwrap()]);
    ensure(code == 0 && cm_uid(w, "rolled").is_none(), || format!("restore: {json}\n{stderr}"))?;
    let (code, json, stderr) = restore(w, &file, &["--rollback"]);
    ensure(code == 0 && json["rollback"]["moved_back"].as_array().is_some_and(|m| !m.is_empty()), || {
        format!("rollback: {json}\n{stderr}")
    })?;
    ensure(cm_uid(w, "rolled").is_some(), || "the rollback did not bring back the data of before the restore".into())?;
    all_ready(w, &["h1", "h2", "h3"])
}

fn timer(lab: &Arc<Lab>, w: &World) -> Outcome {
    let (h1, h2, h3) = (lab.host("h1"), lab.host("h2"), lab.host("h3"));
    let hosts = [(h1, "server"), (h2, "agent"), (h3, "agent")];
    let backup = "    schedule: \"*:*:0/5\"\n    randomizedDelay: 0\n    retention:\n      keepLast: 2\n";
    let file = cluster_yaml(w, "timer.yaml", &hosts, backup);
    up(w, &file)?;
    let units = sh(h1, "systemctl is-enabled k3node-snapshot.timer; systemctl is-active k3node-snapshot.timer")?;
    ensure(units == "enabled\nactive\n", || format!("the timer: {units}"))?;
    let calendar = sh(h1, "systemctl show -p TimersCalendar --value k3node-snapshot.timer")?;
    ensure(calendar.contains("*-*-* *:*:00/5"), || format!("the timer's calendar: {calendar}"))?;
    let scheduled = || {
        sh(h1, "ls /var/lib/rancher/k3node/snapshots | grep -c '^scheduled-h1-.*\\.tar\\.zst$' || true")
            .unwrap_or_default()
            .trim()
            .parse::<usize>()
            .unwrap_or(0)
    };
    let runs = || {
        sh(h1, "journalctl -u k3node-snapshot.service --no-pager -o cat | grep -c '\"type\":\"result\"' || true")
            .unwrap_or_default()
            .trim()
            .parse::<usize>()
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while runs() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
    }
    // Counted between two runs (a run creates, then prunes).
    let idle = || sh(h1, "systemctl is-active k3node-snapshot.service || true").unwrap_or_default().trim() != "active";
    let deadline = Instant::now() + Duration::from_secs(10);
    while !idle() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ran, kept) = (runs(), scheduled());
    ensure(ran >= 3, || format!("the timer ran {ran} snapshot(s) in 60 s"))?;
    ensure(kept == 2, || format!("{ran} scheduled snapshots, {kept} kept (retention keepLast 2)"))?;
    // On-demand snapshots are not the timer's to prune.
    let on_demand = sh(h1, "ls /var/lib/rancher/k3node/snapshots | grep -c '^on-demand-' || true")?;
    ensure(on_demand.trim() != "0", || "the timer pruned on-demand snapshots".into())?;
    // No schedule any more: the timer goes.
    let plain = cluster_yaml(w, "cluster.yaml", &hosts, "");
    up(w, &plain)?;
    let left = sh(h1, "ls /etc/systemd/system/k3node-snapshot.* 2>/dev/null || true; systemctl is-active k3node-snapshot.timer || true")?;
    ensure(!left.contains("/etc/systemd/system") && !left.starts_with("active"), || format!("the timer stayed: {left}"))
}

fn disaster_recovery(lab: &Arc<Lab>, w: &World) -> Outcome {
    let (h1, h2, h3, h5) = (lab.host("h1"), lab.host("h2"), lab.host("h3"), lab.host("h5"));
    let file = w.op.home.join("cluster.yaml");
    let config = file.to_str().unwrap();
    let kept = create_cm(w, "survives")?;
    let (code, json, stderr) = k3node(w, &["snapshot", "create", "-c", config, "-o", "json"]);
    ensure(code == 0, || format!("snapshot create: {json}\n{stderr}"))?;
    let pulls = w.op.home.join("dr");
    let (code, json, stderr) =
        k3node(w, &["snapshot", "pull", "-c", config, "--to", pulls.to_str().unwrap(), "-o", "json"]);
    ensure(code == 0, || format!("pull: {json}\n{stderr}"))?;
    let local = PathBuf::from(json["snapshots"][0]["path"].as_str().unwrap_or_default());
    // The server is gone: its container is powered off for good.
    let _ = h1.sh("systemctl poweroff");
    let deadline = Instant::now() + Duration::from_secs(30);
    while h1.sh("true").is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    ensure(h1.sh("true").is_err(), || "h1 still answers after its poweroff".into())?;
    // The cluster file now names the new server; the agents stay.
    let dr = cluster_yaml(w, "dr.yaml", &[(h5, "server"), (h2, "agent"), (h3, "agent")], "");
    let _ = w.op.k3node(&["preflight", "-c", dr.to_str().unwrap(), "--fix"]);
    let started = Instant::now();
    let (code, json, stderr) = restore(w, &dr, &["--from", local.to_str().unwrap(), "--to", "h5"]);
    ensure(code == 0, || format!("disaster recovery: {json}\n{stderr}"))?;
    eprintln!("snapshot lab: disaster recovery onto h5 took {:.1?}", started.elapsed());
    ensure(json["fresh_target"] == true, || format!("h5 was not seen as fresh: {json}"))?;
    ensure(phase(&json, "forget nodes")["message"].as_str().is_some_and(|m| m.contains("h1")), || {
        format!("forget nodes: {}", phase(&json, "forget nodes"))
    })?;
    all_ready(w, &["h5", "h2", "h3"])?;
    let nodes = ready_nodes(w);
    ensure(!nodes.contains_key("h1"), || format!("the lost server's Node stayed: {nodes:?}"))?;
    ensure(cm_uid(w, "survives").as_deref() == Some(kept.as_str()), || "the configmap's uid after recovery".into())?;
    let env = sh(h2, "cat /etc/systemd/system/k3s-agent.service.env")?;
    ensure(env.contains(&format!("K3S_URL='https://{}:6443'", h5.address)), || format!("h2's env file: {env}"))?;
    let config = sh(h5, "cat /etc/rancher/k3s/config.yaml")?;
    ensure(config.contains("node-name: h5") && !config.contains("h1"), || format!("h5 runs with h1's config: {config}"))
}

fn ha(lab: &Arc<Lab>, w: &World) -> Outcome {
    let (h2, h3, h4, h5) = (lab.host("h2"), lab.host("h3"), lab.host("h4"), lab.host("h5"));
    let file = fresh_cluster(w, lab, &[(h2, "server"), (h3, "server"), (h4, "server"), (h5, "agent")], "ha.yaml")?;
    let config = file.to_str().unwrap();
    let before = create_cm(w, "ha-before")?;
    let (code, json, stderr) = k3node(w, &["snapshot", "create", "-c", config, "-o", "json"]);
    ensure(code == 0 && json["snapshots"][0]["manifest"]["datastore"] == "etcd", || format!("{json}\n{stderr}"))?;
    let name = json["snapshots"][0]["name"].as_str().unwrap_or_default().to_string();
    create_cm(w, "ha-after")?;
    let started = Instant::now();
    let (code, json, stderr) = restore(w, &file, &["--from", &format!("h2:{name}")]);
    ensure(code == 0, || format!("HA restore: {json}\n{stderr}"))?;
    // On the target already: its sha256 checked there first, then read in full once, by the
    // check, whose staging the restore used.
    ensure(json["archive"]["state"] == "sha256-checked", || format!("HA restore: {}", json["archive"]))?;
    ensure(json["restore"]["actions"][0].as_str().is_some_and(|a| a.starts_with("use the")), || {
        format!("HA restore: the restore did not use what its check staged: {}", json["restore"]["actions"])
    })?;
    eprintln!("snapshot lab: HA restore (cluster reset, 2 servers rejoining) took {:.1?}", started.elapsed());
    ensure(phase(&json, "rejoin")["message"].as_str().is_some_and(|m| m.contains("h3") && m.contains("h4")), || {
        format!("rejoin: {}", phase(&json, "rejoin"))
    })?;
    ensure(cm_uid(w, "ha-before").as_deref() == Some(before.as_str()), || "ha-before after the restore".into())?;
    ensure(cm_uid(w, "ha-after").is_none(), || "a configmap made after the etcd snapshot came back".into())?;
    let reset = sh(h3, "ls -d /var/lib/rancher/k3s/server/db.k3node-restore-*")?;
    ensure(!reset.trim().is_empty(), || "h3's old member data was not kept".into())?;
    all_ready(w, &["h2", "h3", "h4", "h5"])
}
