//! The node daemon and the hub on real hosts: 1 server (h1) and 3 agents (h2, h3, h4) installed
//! by `up`, then health reported, stale nodes, Node conditions read with the real kubectl, `status`
//! (and `--watch`) with the Kubernetes API down, a hub away for a while, a forged report, the
//! metrics read by a real Prometheus with a reader's certificate and checked by promtool, and `reset`.
//!
//! Intervals are shortened through the daemon's settings file (2 s), never by sleeping for
//! minutes. The scenarios build on each other, so they run in this order.
//!
//! Lab-only settings, and why: the disk thresholds are lowered (warn 5%, fail 2%) because the lab
//! hosts' / is the test machine's own disk, whose free share is not the test's to choose; h4's
//! /var/lib/rancher is a 2.5 GiB tmpfs (preflight wants 2 GiB), so filling it is exact and
//! leaves the machine's disk alone; load and CPU thresholds
//! are raised (the machine is shared with builds).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k3node::daemon::settings::{Settings, Thresholds, Tuning};
use libtest_mimic::Trial;
use serde_json::Value;

use crate::common::{ensure, sh, wait_for, Operator, Outcome};
use crate::mirror;
use crate::support::{Lab, LabHost};

const INTERVAL: u64 = 2;
const HUB_PORT: u16 = 10270;
/// The hub re-patches an unchanged condition this often in the lab (300 s by default).
const RESYNC: u64 = 4;
const AGENTS: [&str; 3] = ["h2", "h3", "h4"];
const ALL: [&str; 4] = ["h1", "h2", "h3", "h4"];

pub fn trials(lab: &Arc<Lab>) -> Vec<Trial> {
    let t = |name: &str, f: fn(&Arc<Lab>, &Operator, &Path) -> Outcome| {
        let lab = lab.clone();
        crate::common::timed(format!("daemon::{name}"), move || {
            let op = operator(&lab);
            let file = cluster_file(&lab, &op);
            f(&lab, &op, &file)
        })
    };
    vec![
        t("every_node_reports_within_two_intervals_and_status_shows_all_ok", install_and_report),
        t("a_filled_disk_turns_that_node_to_fail_with_the_reason", filled_disk),
        t("k3s_stopped_on_an_agent_shows_in_status_and_in_its_node_condition", k3s_stopped),
        t("a_retired_condition_type_of_the_hub_is_removed_another_owners_kept_and_ours_re_synced", retired_and_resync),
        t("with_the_kubernetes_api_down_status_still_shows_the_fleet_and_watch_keeps_it_current", api_down),
        t("an_agent_cut_off_goes_stale_after_three_intervals_and_its_condition_unknown", agent_cut_off),
        t("the_hub_stopped_for_a_while_loses_no_report", hub_away),
        t("a_nodes_certificate_used_to_report_as_another_node_is_forbidden_and_nothing_stored", forged_report),
        t(
            "a_readers_certificate_lets_prometheus_scrape_the_hub_metrics_that_pass_promtool_and_its_reports_are_forbidden",
            metrics_read_by_prometheus,
        ),
        t("reset_removes_the_daemon", reset_removes),
    ]
}

/// The scenarios' operator: one home for all of them (the kubeconfig `up` merged stays), made
/// afresh by the first scenario that runs.
fn operator(lab: &Arc<Lab>) -> Operator {
    static MADE: std::sync::Once = std::sync::Once::new();
    let home = lab.dir().join("operators").join("daemon-op");
    MADE.call_once(|| {
        let op = Operator::new(lab, "daemon-op");
        op.trust(&lab.hosts().iter().collect::<Vec<_>>());
    });
    Operator { home, lab: lab.clone() }
}

fn cluster_file(lab: &Arc<Lab>, op: &Operator) -> PathBuf {
    let w = crate::up::world(lab);
    let mut yaml = format!(
        "apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: lab\nspec:\n  ssh:\n    keyPath: {}\n    knownHosts: {}\n  hosts:\n",
        lab.client_key().display(),
        op.known_hosts().display()
    );
    for (name, role) in [("h1", "server"), ("h2", "agent"), ("h3", "agent"), ("h4", "agent")] {
        let h = lab.host(name);
        yaml.push_str(&format!("    - name: {}\n      address: {}\n      role: {role}\n", h.name, h.address));
    }
    yaml.push_str(&format!(
        "  k3s:\n    version: {}\n    source:\n      mirror: {}\n",
        mirror::VERSION,
        w.mirror.url()
    ));
    let path = op.home.join("cluster.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn k3node(op: &Operator, args: &[&str]) -> (i32, String, String) {
    let out = op.k3node(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `k3node status -o json`, parsed.
fn status(op: &Operator, file: &Path) -> Result<Value, String> {
    let (code, out, err) = k3node(op, &["status", "-c", file.to_str().unwrap(), "-o", "json"]);
    serde_json::from_str(&out).map_err(|e| format!("status exited {code}, stdout is not JSON ({e}): {out}\n{err}"))
}

fn node<'a>(view: &'a Value, name: &str) -> &'a Value {
    view["nodes"].as_array().and_then(|n| n.iter().find(|n| n["node"] == name)).unwrap_or(&Value::Null)
}

fn lab_tuning() -> Tuning {
    Tuning {
        interval_secs: INTERVAL,
        disabled_checks: vec![],
        thresholds: Thresholds {
            // The lab's disks are the machine's, whatever it has free; only h4's 2.5 GiB tmpfs,
            // filled to its last 10 MiB (0.4%), is meant to cross these lines.
            disk_free_warn_percent: 1.0,
            disk_free_fail_percent: 0.5,
            load_per_cpu_warn: 50.0,
            load_per_cpu_fail: 100.0,
            cpu_busy_warn_percent: 101.0,
            cpu_busy_fail_percent: 102.0,
            ..Thresholds::default()
        },
        condition_resync_secs: RESYNC,
        ..Tuning::default()
    }
}

/// Rewrites the host's settings with the lab's tuning and restarts its daemon.
fn shorten(h: &LabHost) -> Outcome {
    let text = sh(h, "cat /etc/k3node/agent.yaml")?;
    let mut settings = Settings::parse("agent.yaml", &text).map_err(|e| e.to_string())?;
    settings.tuning = lab_tuning();
    std::fs::write(h.root.join("etc/k3node/agent.yaml"), settings.render()).map_err(|e| e.to_string())?;
    sh(h, "chmod 600 /etc/k3node/agent.yaml && systemctl restart k3node-agent")?;
    Ok(())
}

fn install_and_report(lab: &Arc<Lab>, op: &Operator, file: &Path) -> Outcome {
    // Hosts as earlier scenarios left them (HA servers, local mode): reset first.
    // Not the old-glibc host: only the static helper runs there (portable.rs).
    let roles: Vec<_> = lab
        .hosts()
        .iter()
        .filter(|h| h.name != crate::portable::HOST)
        .map(|h| (h, if h.name == "h1" { "server" } else { "agent" }, ""))
        .collect();
    let everyone = op.cluster_file("", &roles);
    let (code, out, err) = k3node(op, &["reset", "-c", everyone.to_str().unwrap(), "--yes"]);
    ensure(code == 0, || format!("reset before the scenario failed: {out}\n{err}"))?;
    let file_again = cluster_file(lab, op);
    let h4 = lab.host("h4");
    sh(h4, "mountpoint -q /var/lib/rancher || { mkdir -p /var/lib/rancher && mount -t tmpfs -o size=2560m tmpfs /var/lib/rancher; }")?;
    let fix = k3node(op, &["preflight", "-c", file_again.to_str().unwrap(), "--fix"]);
    let cache = op.home.join("cache");
    let (code, out, err) = k3node(
        op,
        &[
            "up",
            "-c",
            file.to_str().unwrap(),
            "-o",
            "json",
            "--ready-timeout",
            "90",
            "--cache-dir",
            cache.to_str().unwrap(),
        ],
    );
    ensure(code == 0, || format!("up failed ({code}): {out}\n{err}\npreflight --fix: {}", fix.1))?;
    let report: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
    let daemon = report["phases"].as_array().and_then(|p| p.iter().find(|p| p["name"] == "daemon")).cloned();
    ensure(daemon.as_ref().is_some_and(|d| d["state"] == "done"), || format!("daemon phase: {daemon:?}"))?;

    // The unit as systemd runs it: enabled, active, hardened, and the key private.
    let h1 = lab.host("h1");
    let unit = sh(h1, "systemctl show k3node-agent -p ActiveState,UnitFileState,Type,NoNewPrivileges,ProtectSystem,WatchdogUSec,MemoryMax,DropInPaths; stat -c '%a' /etc/k3node/agent.yaml /etc/k3node/tls/node.key /etc/k3node/tls/ca.key")?;
    for needle in [
        "ActiveState=active",
        "UnitFileState=enabled",
        "Type=notify",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "WatchdogUSec=1min",
        // The hub's cap, sized for 4 nodes: the unit's own 128M, from the drop-in `up` wrote.
        "MemoryMax=134217728",
        "DropInPaths=/etc/systemd/system/k3node-agent.service.d/10-hub-memory.conf",
        "600\n600\n600",
    ] {
        ensure(unit.contains(needle), || format!("k3node-agent on h1 lacks {needle}:\n{unit}"))?;
    }
    // malloc's arenas: capped for an agent, malloc's own for a hub (the server's drop-in).
    let arenas = |h: &str| {
        sh(lab.host(h), "tr '\\0' '\\n' < /proc/$(systemctl show -p MainPID --value k3node-agent)/environ | grep '^MALLOC_ARENA_MAX=' || echo unset")
    };
    ensure(arenas("h1")?.trim() == "unset", || "the hub runs with the agent's MALLOC_ARENA_MAX".into())?;
    ensure(arenas("h2")?.trim() == "MALLOC_ARENA_MAX=2", || "an agent runs without MALLOC_ARENA_MAX=2".into())?;
    // SIGPIPE stays ignored in the daemon (signal 13, bit 12 of SigIgn): a peer closing its end
    // mid-write is an error to retry, not a death systemd would count as a clean exit.
    for h in ["h1", "h2"] {
        let ignored =
            sh(lab.host(h), "grep '^SigIgn:' /proc/$(systemctl show -p MainPID --value k3node-agent)/status")?;
        let mask = u64::from_str_radix(ignored.trim().trim_start_matches("SigIgn:").trim(), 16).unwrap_or(0);
        ensure(mask & (1 << 12) != 0, || format!("k3node-agent on {h} does not ignore SIGPIPE: {ignored}"))?;
    }
    // The hub may hold a connection per node, beyond systemd's soft limit of 1,024 open files.
    let open_files =
        sh(lab.host("h1"), "grep '^Max open files' /proc/$(systemctl show -p MainPID --value k3node-agent)/limits")?;
    let limits: Vec<u64> = open_files.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    ensure(limits.len() == 2 && limits[0] == limits[1] && limits[0] > 1024, || {
        format!("the hub's open files limit is not raised to its hard limit: {open_files}")
    })?;
    let agent_key = sh(lab.host("h2"), "test -e /etc/k3node/tls/ca.key && echo present || echo absent")?;
    ensure(agent_key.trim() == "absent", || "an agent holds the CA key".into())?;

    // A second up changes and restarts nothing (the daemon included).
    let before: Vec<String> = ALL
        .iter()
        .map(|n| sh(lab.host(n), "systemctl show -p InvocationID --value k3node-agent").unwrap_or_default())
        .collect();
    let (code, out, err) =
        k3node(op, &["up", "-c", file.to_str().unwrap(), "-o", "json", "--cache-dir", cache.to_str().unwrap()]);
    ensure(code == 0, || format!("second up: {out}\n{err}"))?;
    let after: Vec<String> = ALL
        .iter()
        .map(|n| sh(lab.host(n), "systemctl show -p InvocationID --value k3node-agent").unwrap_or_default())
        .collect();
    ensure(before == after, || format!("a re-run restarted the daemon: {before:?} -> {after:?}\n{out}"))?;

    // Lab intervals, then every node reports within two of them.
    for n in ALL {
        shorten(lab.host(n))?;
    }
    let restarted = Instant::now();
    let view = wait_for(Duration::from_secs(4 * INTERVAL + 5), || {
        let view = status(op, file)?;
        for n in ALL {
            let entry = node(&view, n);
            if entry["state"] != "ok" {
                return Err(format!("{n} is {}: {}", entry["state"], entry["problems"]));
            }
        }
        Ok(view)
    })?;
    let took = restarted.elapsed();
    ensure(took <= Duration::from_secs(2 * INTERVAL + 3), || format!("all ok only after {took:?}"))?;
    for n in ALL {
        let entry = node(&view, n);
        ensure(entry["k3s_version"] == mirror::VERSION, || format!("{n}: {entry}"))?;
        let names: Vec<&str> =
            entry["checks"].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str()).collect();
        for check in
            ["cpu", "memory", "load", "disk-root", "disk-rancher", "k3s", "containerd", "kubelet", "certificates"]
        {
            ensure(names.contains(&check), || format!("{n} has no {check} check: {names:?}"))?;
        }
    }
    let (code, table, err) = k3node(op, &["status", "-c", file.to_str().unwrap()]);
    ensure(code == 0 && table.contains("4 nodes: 4 ok, 0 warn, 0 fail, 0 stale (hub on h1)"), || {
        format!("{table}\n{err}")
    })
}

fn filled_disk(lab: &Arc<Lab>, op: &Operator, file: &Path) -> Outcome {
    let h4 = lab.host("h4");
    // All but 10 MiB of what is free: below the lab's 0.5% failure line.
    sh(h4, "avail=$(df --output=avail -B1 /var/lib/rancher | tail -n 1); fallocate -l $((avail - 10485760)) /var/lib/rancher/fill")?;
    let problem = wait_for(Duration::from_secs(4 * INTERVAL + 5), || {
        let view = status(op, file)?;
        let entry = node(&view, "h4");
        let problem = entry["problems"].as_array().into_iter().flatten().find(|p| p["name"] == "disk-rancher").cloned();
        match problem {
            Some(p) if entry["state"] == "fail" => Ok(p),
            _ => Err(format!("h4: {entry}")),
        }
    })?;
    let reason = problem["reason"].as_str().unwrap_or("");
    ensure(reason.contains("% free under /var/lib/rancher"), || format!("reason: {reason}"))?;
    let (code, table, _) = k3node(op, &["status", "-c", file.to_str().unwrap()]);
    ensure(code == 1 && table.contains("fail disk-rancher"), || format!("status table ({code}):\n{table}"))?;
    sh(h4, "rm -f /var/lib/rancher/fill")?;
    wait_for(Duration::from_secs(4 * INTERVAL + 5), || {
        let view = status(op, file)?;
        (node(&view, "h4")["state"] == "ok").then_some(()).ok_or_else(|| format!("h4: {}", node(&view, "h4")))
    })?;
    Ok(())
}

/// The K3nodeHealthy condition of `name`, read with the real kubectl through up's kubeconfig.
/// Every condition of the Node, as the API has them.
fn conditions(lab: &Lab, op: &Operator, name: &str) -> Result<Vec<Value>, String> {
    let out = lab
        .command_in_netns(Path::new("kubectl"))
        .args(["get", "node", name, "-o", "jsonpath={.status.conditions}"])
        .env("KUBECONFIG", op.home.join(".kube/config"))
        .output()
        .map_err(|e| format!("kubectl (apt-get install kubernetes-client): {e}"))?;
    if !out.status.success() {
        return Err(format!("kubectl: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let all: Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))?;
    let all = all.as_array().cloned().unwrap_or_default();
    if !all.iter().any(|c| c["type"] == "Ready") {
        return Err(format!("the Ready condition is gone: {all:?}"));
    }
    Ok(all)
}

/// The hub's K3nodeHealthy condition of the Node.
fn condition(lab: &Lab, op: &Operator, name: &str) -> Result<Value, String> {
    let all = conditions(lab, op, name)?;
    all.iter()
        .find(|c| c["type"] == "K3nodeHealthy")
        .cloned()
        .ok_or_else(|| format!("no K3nodeHealthy condition: {all:?}"))
}

/// A condition type the hub published once and no longer does (`K3node*`), and another owner's:
/// the restarted hub removes the first and leaves the second. Unchanged, the hub's own condition
/// is patched again every `condition_resync_secs` (its heartbeat moves, its transition does not).
fn retired_and_resync(lab: &Arc<Lab>, op: &Operator, _file: &Path) -> Outcome {
    let patch = r#"{"status":{"conditions":[
        {"type":"K3nodeDiskPressureOld","status":"False","reason":"Retired","message":"an older k3node's check"},
        {"type":"OtherOwnerProblem","status":"False","reason":"NotOurs","message":"another detector's"}]}}"#;
    let out = lab
        .command_in_netns(Path::new("kubectl"))
        .args(["patch", "node", "h3", "--subresource=status", "--type=strategic", "-p", patch])
        .env("KUBECONFIG", op.home.join(".kube/config"))
        .output()
        .map_err(|e| e.to_string())?;
    ensure(out.status.success(), || format!("kubectl patch: {}", String::from_utf8_lossy(&out.stderr)))?;
    let types = |all: &[Value]| all.iter().filter_map(|c| c["type"].as_str().map(str::to_string)).collect::<Vec<_>>();
    let before = types(&conditions(lab, op, "h3")?);
    ensure(before.iter().any(|t| t == "K3nodeDiskPressureOld"), || format!("the patch did not land: {before:?}"))?;
    sh(lab.host("h1"), "systemctl restart k3node-agent")?;
    let all = wait_for(Duration::from_secs(6 * INTERVAL + 10), || {
        let all = conditions(lab, op, "h3")?;
        let t = types(&all);
        let done = !t.iter().any(|t| t == "K3nodeDiskPressureOld")
            && t.iter().any(|t| t == "OtherOwnerProblem")
            && all.iter().any(|c| c["type"] == "K3nodeHealthy" && c["status"] == "True");
        done.then_some(all).ok_or_else(|| format!("h3: {t:?}"))
    })?;
    // The only server's hub holds the Lease that lets one hub at a time patch conditions.
    let lease = lab
        .command_in_netns(Path::new("kubectl"))
        .args(["get", "lease", "-n", "kube-system", "k3node-hub", "-o", "json"])
        .env("KUBECONFIG", op.home.join(".kube/config"))
        .output()
        .map_err(|e| e.to_string())?;
    let lease: Value = serde_json::from_slice(&lease.stdout)
        .map_err(|e| format!("kubectl get lease ({e}): {}", String::from_utf8_lossy(&lease.stderr)))?;
    ensure(lease["spec"]["holderIdentity"] == "h1" && lease["spec"]["leaseDurationSeconds"] == 3 * INTERVAL, || {
        format!("{lease}")
    })?;
    let first = all.iter().find(|c| c["type"] == "K3nodeHealthy").cloned().unwrap_or_default();
    // The lab's re-sync is RESYNC seconds: the heartbeat moves with nothing else changing.
    let later = wait_for(Duration::from_secs(3 * RESYNC + 5), || {
        let c = condition(lab, op, "h3")?;
        (c["lastHeartbeatTime"] != first["lastHeartbeatTime"]).then_some(c.clone()).ok_or_else(|| format!("{c}"))
    })?;
    ensure(later["status"] == "True" && later["lastTransitionTime"] == first["lastTransitionTime"], || {
        format!("a re-sync is not a transition: {first} -> {later}")
    })
}

fn k3s_stopped(lab: &Arc<Lab>, op: &Operator, file: &Path) -> Outcome {
    let healthy = wait_for(Duration::from_secs(4 * INTERVAL + 5), || {
        let c = condition(lab, op, "h2")?;
        (c["status"] == "True").then_some(c.clone()).ok_or_else(|| format!("{c}"))
    })?;
    let h2 = lab.host("h2");
    sh(h2, "systemctl stop k3s-agent")?;
    let seen = k3s_stopped_is_seen(lab, op, file, &healthy);
    // Started again whatever was seen: the next scenarios expect h2 healthy.
    sh(h2, "systemctl start k3s-agent")?;
    seen?;
    wait_for(Duration::from_secs(4 * INTERVAL + 10), || {
        let c = condition(lab, op, "h2")?;
        (c["status"] == "True").then_some(()).ok_or_else(|| format!("{c}"))
    })?;
    Ok(())
}

/// h2's stopped k3s in `status` and in its Node condition. A report taken while the unit was
/// still stopping says "deactivating" (a failure too); a later one must say inactive.
fn k3s_stopped_is_seen(lab: &Arc<Lab>, op: &Operator, file: &Path, healthy: &Value) -> Outcome {
    let inactive = |text: &str| text.contains("k3s-agent.service is inactive");
    wait_for(Duration::from_secs(4 * INTERVAL + 5), || {
        let view = status(op, file)?;
        let entry = node(&view, "h2");
        let k3s = entry["problems"].as_array().into_iter().flatten().find(|p| p["name"] == "k3s").cloned();
        match k3s {
            Some(p) if entry["state"] == "fail" && inactive(p["reason"].as_str().unwrap_or("")) => Ok(p),
            _ => Err(format!("h2: {entry}")),
        }
    })?;
    let c = wait_for(Duration::from_secs(4 * INTERVAL + 5), || {
        let c = condition(lab, op, "h2")?;
        let failing = c["status"] == "False" && inactive(c["message"].as_str().unwrap_or(""));
        failing.then_some(c.clone()).ok_or_else(|| format!("{c}"))
    })?;
    ensure(c["reason"] == "ChecksFail", || format!("{c}"))?;
    // The kubelet runs inside k3s's process: its health endpoint went with it.
    let view = status(op, file)?;
    let kubelet =
        node(&view, "h2")["problems"].as_array().into_iter().flatten().find(|p| p["name"] == "kubelet").cloned();
    ensure(kubelet.as_ref().is_some_and(|p| p["state"] == "fail"), || format!("h2's kubelet check: {kubelet:?}"))?;
    ensure(c["lastTransitionTime"] != healthy["lastTransitionTime"], || format!("no transition: {healthy} -> {c}"))?;
    let describe = lab
        .command_in_netns(Path::new("kubectl"))
        .args(["describe", "node", "h2"])
        .env("KUBECONFIG", op.home.join(".kube/config"))
        .output()
        .map_err(|e| e.to_string())?;
    let describe = String::from_utf8_lossy(&describe.stdout).into_owned();
    ensure(describe.contains("K3nodeHealthy") && describe.contains("ChecksFail"), || describe.clone())
}

/// k3s stopped on the only server takes the Kubernetes API down; `status` reads the hub through
/// SSH, not the API, so it still shows the fleet (with the server failing), and `--watch` keeps
/// printing newer views until interrupted.
fn api_down(lab: &Arc<Lab>, op: &Operator, file: &Path) -> Outcome {
    let h1 = lab.host("h1");
    sh(h1, "systemctl stop k3s")?;
    let seen = api_down_is_seen(lab, op, file);
    // Started again whatever was seen: the next scenarios expect every node ok.
    sh(h1, "systemctl start k3s")?;
    seen?;
    wait_for(Duration::from_secs(30 * INTERVAL), || {
        let view = status(op, file)?;
        match ALL.iter().find(|n| node(&view, n)["state"] != "ok") {
            Some(n) => Err(format!("{n} after k3s started again: {}", node(&view, n))),
            None => Ok(()),
        }
    })?;
    Ok(())
}

fn api_down_is_seen(lab: &Arc<Lab>, op: &Operator, file: &Path) -> Outcome {
    let kubectl = lab
        .command_in_netns(Path::new("kubectl"))
        .args(["get", "nodes", "--request-timeout", "5s"])
        .env("KUBECONFIG", op.home.join(".kube/config"))
        .output()
        .map_err(|e| e.to_string())?;
    ensure(!kubectl.status.success(), || "the API still answers with k3s stopped on h1".into())?;
    wait_for(Duration::from_secs(4 * INTERVAL + 5), || {
        let view = status(op, file)?;
        let entry = node(&view, "h1");
        let k3s = entry["problems"].as_array().into_iter().flatten().find(|p| p["name"] == "k3s").cloned();
        let inactive = k3s.is_some_and(|p| p["reason"].as_str().unwrap_or("").contains("k3s.service is inactive"));
        let agents_there = AGENTS.iter().all(|n| node(&view, n)["last_seq"].as_u64().unwrap_or(0) > 0);
        (entry["state"] == "fail" && inactive && agents_there).then_some(()).ok_or_else(|| format!("{view}"))
    })?;

    // --watch, as JSON: one view per second until SIGINT, each newer than the one before.
    let child = op
        .k3node_command(&["status", "-c", file.to_str().unwrap(), "-o", "json", "--watch", "--every", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs(3 * INTERVAL + 2));
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT);
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let views: Vec<Value> =
        serde_json::Deserializer::from_str(&stdout).into_iter::<Value>().collect::<Result<_, _>>().map_err(|e| {
            format!(
                "--watch output is not a stream of views ({e}): {stdout}
{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    ensure(out.status.success(), || format!("--watch ended with {:?} on SIGINT", out.status))?;
    ensure(views.len() >= 3, || format!("{} views in {} s: {stdout}", views.len(), 3 * INTERVAL + 2))?;
    let seq = |view: &Value| node(view, "h2")["last_seq"].as_u64().unwrap_or(0);
    let (first, last) = (&views[0], &views[views.len() - 1]);
    ensure(seq(last) > seq(first), || {
        format!(
            "--watch showed no newer report of h2: {first}
{last}"
        )
    })
}

fn agent_cut_off(lab: &Arc<Lab>, op: &Operator, file: &Path) -> Outcome {
    let h3 = lab.host("h3");
    let before = status(op, file)?;
    let seq_before = node(&before, "h3")["last_seq"].as_u64().unwrap_or(0);
    h3.disconnect().map_err(|e| format!("{e:#}"))?;
    let cut = Instant::now();
    let stale = wait_for(Duration::from_secs(6 * INTERVAL + 5), || {
        let view = status(op, file)?;
        let entry = node(&view, "h3").clone();
        (entry["state"] == "stale").then_some(entry.clone()).ok_or_else(|| format!("h3: {entry}"))
    });
    let unknown = stale.as_ref().ok().map(|_| {
        wait_for(Duration::from_secs(4 * INTERVAL + 5), || {
            let c = condition(lab, op, "h3")?;
            (c["status"] == "Unknown").then_some(c.clone()).ok_or_else(|| format!("{c}"))
        })
    });
    h3.reconnect().map_err(|e| format!("{e:#}"))?;
    let stale = stale?;
    // Stale is three intervals after the last report, which came at most one interval before the cut.
    ensure(cut.elapsed() >= Duration::from_secs(2 * INTERVAL), || {
        format!("stale too early: {:?} after the cut", cut.elapsed())
    })?;
    ensure(stale["problems"][0]["reason"].as_str().unwrap_or("").starts_with("no report for"), || format!("{stale}"))?;
    let c = unknown.expect("computed when stale")?;
    ensure(c["reason"] == "ReportStale", || format!("{c}"))?;
    // Back on the network: what it buffered meanwhile arrives, nothing lost.
    wait_for(Duration::from_secs(6 * INTERVAL + 10), || {
        let view = status(op, file)?;
        let entry = node(&view, "h3");
        let seq = entry["last_seq"].as_u64().unwrap_or(0);
        if entry["state"] == "ok" && seq > seq_before + 3 && entry["lost_total"] == 0 {
            Ok(())
        } else {
            Err(format!("h3: {entry}"))
        }
    })
    .map_err(|e| format!("{e}\n{}", daemon_journal(h3)))?;
    Ok(())
}

/// The last lines of the node daemon's journal on `h`, for a failure's message.
fn daemon_journal(h: &LabHost) -> String {
    let journal =
        sh(h, "journalctl -u k3node-agent -n 40 --no-pager -o short-precise").unwrap_or_else(|e| format!("{e:?}"));
    format!("journal of k3node-agent on {}:\n{journal}", h.name)
}

fn hub_away(lab: &Arc<Lab>, op: &Operator, file: &Path) -> Outcome {
    let h1 = lab.host("h1");
    let before = status(op, file)?;
    sh(h1, "systemctl stop k3node-agent")?;
    std::thread::sleep(Duration::from_secs(5 * INTERVAL));
    sh(h1, "systemctl start k3node-agent")?;
    wait_for(Duration::from_secs(6 * INTERVAL + 10), || {
        let view = status(op, file)?;
        for n in AGENTS {
            let (was, now) = (node(&before, n), node(&view, n));
            let seq = now["last_seq"].as_u64().unwrap_or(0);
            let prior = was["last_seq"].as_u64().unwrap_or(0);
            if seq < prior + 5 {
                return Err(format!("{n} has not caught up: {prior} -> {seq}"));
            }
            if now["lost_total"] != 0 || now["dropped_total"] != 0 {
                return Err(format!("{n} lost reports: {now}"));
            }
            if now["reports_total"].as_u64() != Some(seq) {
                return Err(format!("{n}: {} reports stored for sequence numbers 1..{seq}", now["reports_total"]));
            }
        }
        Ok(())
    })
    .map_err(|e| format!("{e}\n{}", AGENTS.map(|n| daemon_journal(lab.host(n))).join("\n")))?;
    Ok(())
}

/// Runs `f` with a TLS client holding `host`'s daemon certificate, in the lab network.
fn as_node<T: Send + 'static>(lab: &Lab, host: &str, f: impl AsyncFnOnce(reqwest::Client) -> T + Send + 'static) -> T {
    as_holder_of(lab, tls_material(&lab.host(host).root.join("etc/k3node/tls"), "node"), f)
}

/// `dir`'s ca.crt, NAME.crt and NAME.key.
fn tls_material(dir: &Path, name: &str) -> k3node::daemon::pki::TlsMaterial {
    let read = |file: String| std::fs::read_to_string(dir.join(&file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    k3node::daemon::pki::TlsMaterial {
        ca_cert_pem: read("ca.crt".into()),
        node_cert_pem: read(format!("{name}.crt")),
        node_key_pem: k3node::protocol::Secret::new(read(format!("{name}.key"))),
    }
}

/// Runs `f` with a TLS client holding `material`, in the lab network.
fn as_holder_of<T: Send + 'static>(
    lab: &Lab,
    material: k3node::daemon::pki::TlsMaterial,
    f: impl AsyncFnOnce(reqwest::Client) -> T + Send + 'static,
) -> T {
    let config = material.client_config().expect("usable TLS material");
    lab.in_netns(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let client = reqwest::Client::builder().use_preconfigured_tls(config).build().unwrap();
            f(client).await
        })
    })
}

fn forged_report(lab: &Arc<Lab>, op: &Operator, file: &Path) -> Outcome {
    let url = format!("https://{}:{HUB_PORT}/v1/reports", lab.host("h1").address);
    let forged = serde_json::json!({
        "protocol": 1, "node": "h3", "stream": "forged", "dropped_total": 0,
        "reports": [{"seq": 1, "at_ms": 0, "interval_secs": 2, "role": "agent",
                     "checks": [{"name": "k3s", "state": "ok", "reason": "forged"}], "gauges": {}}]
    });
    let (code, body) = as_node(lab, "h2", async move |client| {
        let r =
            client.post(&url).header("content-type", "application/json").body(forged.to_string()).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    });
    ensure(code == 403 && body.contains("a node reports only for itself"), || format!("{code}: {body}"))?;
    // Nothing stored: h3's stream goes on (a stored forged stream would restart it at 1).
    let view = status(op, file)?;
    let h3 = node(&view, "h3");
    ensure(h3["last_seq"].as_u64().unwrap_or(0) > 1 && !h3.to_string().contains("forged"), || format!("h3: {h3}"))
}

/// `k3node metrics-cert`, then a real Prometheus scraping the hub with the scrape config it
/// printed; the metrics it read pass promtool; the reader's reports are forbidden.
fn metrics_read_by_prometheus(lab: &Arc<Lab>, op: &Operator, file: &Path) -> Outcome {
    let out_dir = op.home.join("metrics");
    let _ = std::fs::remove_dir_all(&out_dir);
    let (code, printed, err) =
        k3node(op, &["metrics-cert", "-c", file.to_str().unwrap(), "--out", out_dir.to_str().unwrap()]);
    ensure(code == 0, || format!("metrics-cert: {printed}\n{err}"))?;
    let key_mode = std::fs::metadata(out_dir.join("prometheus.key")).map_err(|e| e.to_string())?.permissions().mode();
    ensure(key_mode & 0o777 == 0o600, || format!("prometheus.key is {key_mode:o}"))?;
    let (again, _, err) =
        k3node(op, &["metrics-cert", "-c", file.to_str().unwrap(), "--out", out_dir.to_str().unwrap()]);
    ensure(again == 2 && err.contains("exists"), || format!("a second run over the same files: {again}: {err}"))?;
    let snippet = printed.split_once("scrape_configs):\n").map(|(_, s)| s).ok_or_else(|| printed.clone())?;

    // Prometheus, in the lab's network, with what metrics-cert printed as its only job.
    let prom = op.home.join("prometheus");
    let _ = std::fs::remove_dir_all(&prom);
    std::fs::create_dir_all(prom.join("data")).map_err(|e| e.to_string())?;
    std::fs::write(
        prom.join("prometheus.yml"),
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n{snippet}\n"),
    )
    .map_err(|e| e.to_string())?;
    let mut server = lab
        .command_in_netns(Path::new("prometheus"))
        .arg(format!("--config.file={}", prom.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", prom.join("data").display()))
        .arg("--web.listen-address=127.0.0.1:19090")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(prom.join("log")).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("prometheus (apt-get install prometheus): {e}"))?;
    let query = |q: &'static str| {
        lab.in_netns(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let url = format!("http://127.0.0.1:19090/api/v1/query?query={q}");
                reqwest::get(url).await.map_err(|e| e.to_string())?.text().await.map_err(|e| e.to_string())
            })
        })
    };
    let scraped = wait_for(Duration::from_secs(60), || {
        let up = query("up")?;
        let states = query("k3node_node_state%7Bstate%3D%22ok%22%7D%3D%3D1")?;
        let ok = up.contains("\"value\":[")
            && up.contains("\"1\"]")
            && ALL.iter().all(|n| states.contains(&format!("\"node\":\"{n}\"")));
        if ok {
            Ok(())
        } else {
            Err(format!("up: {up}\nok nodes: {states}"))
        }
    });
    let _ = server.kill();
    let _ = server.wait();
    scraped.map_err(|e| format!("{e}\n{}", std::fs::read_to_string(prom.join("log")).unwrap_or_default()))?;

    // The same metrics as the reader reads them pass promtool; its reports are refused.
    let base = format!("https://{}:{HUB_PORT}", lab.host("h1").address);
    let (text, refused) = as_holder_of(lab, tls_material(&out_dir, "prometheus"), async move |client| {
        let text = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        let batch = serde_json::json!({"protocol": 1, "node": "h2", "stream": "reader", "dropped_total": 0,
            "reports": [{"seq": 1, "at_ms": 0, "interval_secs": 2, "role": "agent", "checks": [], "gauges": {}}]});
        let r = client.post(format!("{base}/v1/reports")).body(batch.to_string()).send().await.unwrap();
        (text, r.status().as_u16())
    });
    ensure(refused == 403, || format!("a reader's report: {refused}"))?;
    for n in ALL {
        ensure(text.contains(&format!("k3node_node_state{{node=\"{n}\",state=\"ok\"}} 1")), || {
            format!("{n}:\n{text}")
        })?;
    }
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool (apt-get install prometheus): {e}"))?;
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure(out.status.success() && said.trim().is_empty(), || format!("promtool: {said}"))
}

fn reset_removes(lab: &Arc<Lab>, op: &Operator, file: &Path) -> Outcome {
    let (code, out, err) = k3node(op, &["reset", "-c", file.to_str().unwrap(), "--yes"]);
    ensure(code == 0, || format!("reset: {out}\n{err}"))?;
    for n in ALL {
        let h = lab.host(n);
        let left = sh(h, "systemctl is-active k3node-agent; test -e /etc/systemd/system/k3node-agent.service && echo unit; test -e /etc/systemd/system/k3node-agent.service.d && echo drop-in; test -e /etc/k3node && echo config; ls -d /var/lib/k3node* 2>/dev/null; true")?;
        ensure(
            !left.contains("\nunit")
                && !left.contains("drop-in")
                && !left.contains("config")
                && left.starts_with("inactive"),
            || format!("{n}: {left}"),
        )?;
        ensure(left.contains("/var/lib/k3node.k3node-reset-"), || {
            format!("{n}: the daemon's state was not moved aside: {left}")
        })?;
    }
    sh(lab.host("h4"), "umount /var/lib/rancher 2>/dev/null; true")?;
    Ok(())
}
