//! `k3node up`, re-runs, changes, joins, reset and HA against the k3s stand-in on real hosts.
//! The scenarios build on each other (one cluster through its life), so they run in this order.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use libtest_mimic::Trial;

use crate::common::{ensure, wait_for, Operator, Outcome};
use crate::mirror::{self, Mirror};
use crate::support::{Lab, LabHost};

/// The seed 000 cluster: one server and two agents.
const SEED_CONFIG: &str = "      cluster-cidr: 10.42.0.0/16\n      service-cidr: 10.43.0.0/16\n      cluster-dns: 10.43.0.10\n      disable: [traefik, servicelb]\n      write-kubeconfig-mode: \"644\"\n      kube-apiserver-arg: [request-timeout=300s]\n      tls-san: [k3s.lab.example]\n";

pub(crate) struct World {
    op: Operator,
    /// The one release mirror of the run (its address is fixed): other scenarios install from it too.
    pub(crate) mirror: Mirror,
}

static WORLD: Mutex<Option<Arc<World>>> = Mutex::new(None);

pub(crate) fn world(lab: &Arc<Lab>) -> Arc<World> {
    let mut guard = WORLD.lock().unwrap();
    guard
        .get_or_insert_with(|| {
            let op = Operator::new(lab, "up");
            op.trust(&lab.hosts().iter().collect::<Vec<_>>());
            let mirror = Mirror::start(lab);
            mirror::publish(&mirror.root, mirror::VERSION, &mirror::release_binary(mirror::VERSION));
            Arc::new(World { op, mirror })
        })
        .clone()
}

/// Drops the mirror (its thread lives in the lab netns) before the lab goes.
pub fn finish() {
    WORLD.lock().unwrap().take();
}

pub fn trials(lab: &Arc<Lab>) -> Vec<Trial> {
    let t = |name: &str, f: fn(&Arc<Lab>, &World) -> Outcome| {
        let lab = lab.clone();
        crate::common::timed(format!("up::{name}"), move || {
            let w = world(&lab);
            f(&lab, &w)
        })
    };
    vec![
        t("seed_cluster_installed_as_the_contract_says", seed_cluster),
        t("rerun_on_converged_cluster_changes_and_restarts_nothing", rerun_noop),
        t("changed_label_restarts_only_its_host", changed_label),
        t("an_install_sh_host_is_taken_over_quietly_and_drift_is_converged_with_a_restart", take_over_and_drift),
        t("two_runs_at_once_the_second_is_refused_naming_the_first_and_the_cluster_converges", two_runs_at_once),
        t("dry_run_shows_the_diff_and_changes_nothing", dry_run),
        t("added_node_joins_without_touching_the_rest", added_node),
        t("registries_yaml_reaches_every_node_restarts_them_once_and_its_password_is_never_shown", registries),
        t("wrong_token_is_refused_with_the_k3s_reason", wrong_token),
        t("tampered_release_is_refused_and_nothing_installed", tampered_release),
        t("interrupted_run_converges_when_re_run", interrupted_run),
        t("an_agent_that_lost_its_node_password_rejoins_under_its_name", lost_node_password),
        t("one_host_reset_alone_rejoins_under_its_name", one_host_reset),
        t("reset_then_up_again", reset_then_up),
        t("ha_three_servers_and_an_agent_whose_hubs_hand_the_lease_over_when_its_holder_stops", ha),
        t("local_mode_inside_a_lab_host", local_mode),
        t("seed_004_end_to_end_with_its_add_ons_delivered_and_read_by_real_kubectl", seed_004),
    ]
}

fn cluster_yaml(w: &World, hosts: &[(&LabHost, &str, &str)], config: &str) -> PathBuf {
    let mut yaml = format!(
        "apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: lab\nspec:\n  ssh:\n    keyPath: {}\n    knownHosts: {}\n  hosts:\n",
        w.op.lab.client_key().display(),
        w.op.known_hosts().display()
    );
    for (h, role, extra) in hosts {
        yaml.push_str(&format!("    - name: {}\n      address: {}\n      role: {role}\n{extra}", h.name, h.address));
    }
    yaml.push_str(&format!(
        "  k3s:\n    version: {}\n    source:\n      mirror: {}\n    config:\n{config}",
        mirror::VERSION,
        w.mirror.url()
    ));
    let path = w.op.home.join("cluster.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn seed_hosts(lab: &Lab) -> Vec<(&LabHost, &'static str, &'static str)> {
    vec![
        (lab.host("h1"), "server", ""),
        (lab.host("h2"), "agent", "      labels: {tier: web}\n"),
        (lab.host("h3"), "agent", ""),
    ]
}

fn up(w: &World, file: &std::path::Path, extra: &[&str]) -> (i32, serde_json::Value, String) {
    let mut args = vec!["up", "-c", file.to_str().unwrap(), "-o", "json", "--ready-timeout", "90"];
    let cache = w.op.home.join("cache");
    args.extend(["--cache-dir", cache.to_str().unwrap()]);
    args.extend(extra);
    w.op.k3node_json(&args)
}

fn node<'a>(json: &'a serde_json::Value, host: &str) -> &'a serde_json::Value {
    json["hosts"].as_array().and_then(|a| a.iter().find(|n| n["host"] == host)).unwrap_or(&serde_json::Value::Null)
}

fn states(json: &serde_json::Value) -> BTreeMap<String, String> {
    json["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| (n["host"].as_str().unwrap_or("").to_string(), n["state"].as_str().unwrap_or("").to_string()))
        .collect()
}

/// Systemd's id for the current run of the host's k3s unit: it changes on every (re)start.
fn invocation(h: &LabHost) -> String {
    crate::common::sh(h, "systemctl show -p InvocationID --value k3s k3s-agent 2>/dev/null | tr -d '\\n'")
        .unwrap_or_default()
}

fn invocations(lab: &Lab, names: &[&str]) -> BTreeMap<String, String> {
    names.iter().map(|n| (n.to_string(), invocation(lab.host(n)))).collect()
}

/// kubectl from the operator side, through the kubeconfig k3node merged (the stand-in is kubectl).
fn nodes_via_kubeconfig(w: &World) -> Result<BTreeMap<String, bool>, String> {
    let mut cmd = w.op.lab.command_in_netns(&mirror::standin_binary());
    cmd.args(["kubectl", "get", "nodes", "-o", "json"]).env("KUBECONFIG", w.op.home.join(".kube/config"));
    let out = cmd.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    Ok(list["items"]
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
        .collect())
}

fn all_ready(w: &World, names: &[&str]) -> Outcome {
    let nodes = nodes_via_kubeconfig(w)?;
    for n in names {
        ensure(nodes.get(*n) == Some(&true), || format!("{n} not Ready through the merged kubeconfig: {nodes:?}"))?;
    }
    Ok(())
}

const SERVER_UNIT: &str = "[Unit]\nDescription=Lightweight Kubernetes\nDocumentation=https://k3s.io\nWants=network-online.target\nAfter=network-online.target\n\n[Install]\nWantedBy=multi-user.target\n\n[Service]\nType=notify\nEnvironmentFile=-/etc/default/%N\nEnvironmentFile=-/etc/sysconfig/%N\nEnvironmentFile=-/etc/systemd/system/k3s.service.env\nKillMode=process\nDelegate=yes\nUser=root\n# Having non-zero Limit*s causes performance problems due to accounting overhead\n# in the kernel. We recommend using cgroups to do container-local accounting.\nLimitNOFILE=1048576\nLimitNPROC=infinity\nLimitCORE=infinity\nTasksMax=infinity\nTimeoutStartSec=0\nRestart=always\nRestartSec=5s\nExecStartPre=-/sbin/modprobe br_netfilter\nExecStartPre=-/sbin/modprobe overlay\nExecStart=/usr/local/bin/k3s \\\n    server \\\n\n";

fn seed_cluster(lab: &Arc<Lab>, w: &World) -> Outcome {
    let file = cluster_yaml(w, &seed_hosts(lab), SEED_CONFIG);
    // Fresh lab hosts have ip_forward off: preflight (the first phase of up) would stop the run.
    let fix = w.op.k3node(&["preflight", "-c", file.to_str().unwrap(), "--fix"]);
    let fixed = String::from_utf8_lossy(&fix.stdout).into_owned();
    let (code, json, stderr) = up(w, &file, &[]);
    ensure(code == 0, || {
        format!(
            "up failed ({code}): {}\n{stderr}\npreflight --fix said:\n{fixed}",
            serde_json::to_string_pretty(&json).unwrap()
        )
    })?;

    let (h1, h2) = (lab.host("h1"), lab.host("h2"));
    let unit = crate::common::sh(h1, "cat /etc/systemd/system/k3s.service")?;
    ensure(unit == SERVER_UNIT, || format!("server unit differs from the contract:\n{unit}"))?;
    let agent_unit = crate::common::sh(h2, "cat /etc/systemd/system/k3s-agent.service")?;
    ensure(
        agent_unit
            == SERVER_UNIT
                .replace("k3s.service.env", "k3s-agent.service.env")
                .replace("    server \\\n", "    agent \\\n"),
        || format!("agent unit:\n{agent_unit}"),
    )?;
    let modes = crate::common::sh(
        h1,
        "stat -c '%n %a %U' /usr/local/bin/k3s /etc/rancher/k3s/config.yaml /var/lib/rancher/k3s/server/token",
    )?;
    ensure(
        modes.contains("/usr/local/bin/k3s 755 root")
            && modes.contains("config.yaml 600 root")
            && modes.contains("token 600 root"),
        || modes.clone(),
    )?;
    let links = crate::common::sh(h1, "readlink /usr/local/bin/kubectl /usr/local/bin/crictl")?;
    ensure(links.lines().all(|l| l.ends_with("k3s")) && links.lines().count() == 2, || format!("links: {links}"))?;
    // The lab's base image has containerd's own ctr: the installer leaves an existing command alone.
    let ctr = crate::common::sh(h1, "test -e /usr/local/bin/ctr && echo linked || echo absent; command -v ctr")?;
    ensure(ctr.starts_with("absent\n/usr/bin/ctr"), || format!("ctr: {ctr}"))?;
    let config = crate::common::sh(h1, "cat /etc/rancher/k3s/config.yaml")?;
    for needle in [
        "cluster-cidr: 10.42.0.0/16",
        "service-cidr: 10.43.0.0/16",
        "cluster-dns: 10.43.0.10",
        "traefik",
        "servicelb",
        "request-timeout=300s",
        "k3s.lab.example",
        "node-name: h1",
    ] {
        ensure(config.contains(needle), || format!("config.yaml lacks {needle}:\n{config}"))?;
    }
    let agent_env = crate::common::sh(
        h2,
        "stat -c %a /etc/systemd/system/k3s-agent.service.env; cat /etc/systemd/system/k3s-agent.service.env",
    )?;
    let token = crate::common::sh(h1, "cat /var/lib/rancher/k3s/server/token")?.trim().to_string();
    ensure(
        agent_env.starts_with("600\n")
            && agent_env.contains(&format!("K3S_URL='https://{}:6443'\n", h1.address))
            && agent_env.contains(&token),
        || "agent env file".into(),
    )?;
    ensure(token.starts_with("K10") && token.contains("::server:"), || "token format".into())?;
    let printed = format!("{json}{stderr}");
    ensure(!printed.contains(&token) && !printed.contains(token.split("::server:").nth(1).unwrap_or("-")), || {
        "the token reached k3node's output".into()
    })?;
    let agent_config = crate::common::sh(h2, "cat /etc/rancher/k3s/config.yaml")?;
    ensure(agent_config.contains("tier=web") && !agent_config.contains("cluster-cidr"), || {
        format!("agent config:\n{agent_config}")
    })?;
    let mode = crate::common::sh(h1, "stat -c %a /etc/rancher/k3s/k3s.yaml")?;
    ensure(mode.trim() == "644", || format!("write-kubeconfig-mode not honoured: {mode}"))?;
    let kubeconfig =
        std::fs::read_to_string(w.op.home.join(".kube/config")).map_err(|e| format!("no kubeconfig: {e}"))?;
    ensure(
        kubeconfig.contains("current-context: lab") && kubeconfig.contains(&format!("https://{}:6443", h1.address)),
        || kubeconfig.clone(),
    )?;
    all_ready(w, &["h1", "h2", "h3"])
}

fn rerun_noop(lab: &Arc<Lab>, w: &World) -> Outcome {
    let file = cluster_yaml(w, &seed_hosts(lab), SEED_CONFIG);
    let before = invocations(lab, &["h1", "h2", "h3"]);
    let (code, json, stderr) = up(w, &file, &[]);
    let after = invocations(lab, &["h1", "h2", "h3"]);
    ensure(code == 0, || format!("{json}\n{stderr}"))?;
    ensure(states(&json).values().all(|s| s == "unchanged"), || format!("states: {:?}", states(&json)))?;
    ensure(before == after, || format!("units restarted: {before:?} -> {after:?}"))
}

fn two_runs_at_once(lab: &Arc<Lab>, w: &World) -> Outcome {
    // The first run restarts h3 (a new label), so it holds the hosts' locks for a while.
    let mut hosts = seed_hosts(lab);
    hosts[1].2 = "      labels: {tier: api}\n";
    hosts[2].2 = "      labels: {lock: held}\n";
    let file = cluster_yaml(w, &hosts, SEED_CONFIG);
    let cache = w.op.home.join("cache");
    let first =
        w.op.lab
            .command_in_netns(std::path::Path::new(crate::common::K3NODE))
            .args(["up", "-c", file.to_str().unwrap(), "-o", "json", "--cache-dir", cache.to_str().unwrap()])
            .env("HOME", &w.op.home)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
    let h1 = lab.host("h1");
    // /run is the host's own tmpfs: asked for inside the host.
    let held = || h1.sh("test -e /run/k3node/lock.holder.json && echo held").unwrap_or_default().contains("held");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !held() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (code, json, stderr) = up(w, &file, &[]);
    let first = first.wait_with_output().map_err(|e| e.to_string())?;
    ensure(first.status.success(), || format!("the first run failed: {}", String::from_utf8_lossy(&first.stderr)))?;
    ensure(code == 1, || format!("the second run was not refused: {json}\n{stderr}"))?;
    let lock =
        json["phases"].as_array().and_then(|p| p.iter().find(|p| p["name"] == "lock")).cloned().unwrap_or_default();
    ensure(lock["state"] == "failed" && lock["message"].as_str().is_some_and(|m| m.contains("`up` from")), || {
        format!("lock phase of the second run: {lock}")
    })?;
    ensure(node(&json, "h1")["error"]["kind"] == "conflict", || format!("h1: {}", node(&json, "h1")))?;
    ensure(
        json["phases"].to_string().contains("\"preflight\"") && !json["hosts"].to_string().contains("restarted"),
        || format!("the refused run changed something: {json}"),
    )?;
    // Back to the seed cluster: it converges, and no lock is left behind.
    let mut hosts = seed_hosts(lab);
    hosts[1].2 = "      labels: {tier: api}\n";
    let (code, json, stderr) = up(w, &cluster_yaml(w, &hosts, SEED_CONFIG), &[]);
    ensure(code == 0 && node(&json, "h3")["state"] == "restarted", || format!("{json}\n{stderr}"))?;
    ensure(!held(), || "the lock's holder record stayed".into())?;
    all_ready(w, &["h1", "h2", "h3"])
}

fn changed_label(lab: &Arc<Lab>, w: &World) -> Outcome {
    let mut hosts = seed_hosts(lab);
    hosts[1].2 = "      labels: {tier: api}\n";
    let file = cluster_yaml(w, &hosts, SEED_CONFIG);
    let before = invocations(lab, &["h1", "h2", "h3"]);
    let (code, json, stderr) = up(w, &file, &[]);
    let after = invocations(lab, &["h1", "h2", "h3"]);
    ensure(code == 0, || format!("{json}\n{stderr}"))?;
    ensure(node(&json, "h2")["state"] == "restarted", || format!("{:?}", states(&json)))?;
    ensure(before["h1"] == after["h1"] && before["h3"] == after["h3"] && before["h2"] != after["h2"], || {
        format!("{before:?} -> {after:?}")
    })?;
    ensure(crate::common::sh(lab.host("h2"), "cat /etc/rancher/k3s/config.yaml")?.contains("tier=api"), || {
        "label not applied".into()
    })
}

/// h3 (an agent) as install.sh leaves a host, then drifted by hand in three ways.
fn take_over_and_drift(lab: &Arc<Lab>, w: &World) -> Outcome {
    let mut hosts = seed_hosts(lab);
    hosts[1].2 = "      labels: {tier: api}\n";
    let file = cluster_yaml(w, &hosts, SEED_CONFIG);
    let h3 = lab.host("h3");
    let sh = |cmd: &str| crate::common::sh(h3, cmd);
    const ENV: &str = "/etc/systemd/system/k3s-agent.service.env";
    const CONFIG: &str = "/etc/rancher/k3s/config.yaml";
    let run = |what: &str| -> Result<(String, String, String), libtest_mimic::Failed> {
        let before = invocation(h3);
        let (code, json, stderr) = up(w, &file, &[]);
        ensure(code == 0, || format!("{what}: {json}\n{stderr}"))?;
        Ok((before, invocation(h3), node(&json, "h3")["state"].as_str().unwrap_or("").to_string()))
    };

    // The files are byte for byte install.sh's (seed_cluster checks the unit against the contract);
    // started by someone else and without k3node's record, the host is one install.sh set up.
    sh("rm /var/lib/rancher/k3node/k3s-agent.applied.json && systemctl restart k3s-agent")?;
    let (before, after, state) = run("take-over")?;
    ensure(before == after && state == "unchanged", || format!("take-over: {state}, {before} -> {after}"))?;

    // config.yaml rewritten by hand with the same meaning, k3s restarted: nothing to restart for.
    sh(&format!(
        "sed -i '1i # tidied by hand' {CONFIG} && sed -i 's/: /:  /' {CONFIG} && systemctl restart k3s-agent"
    ))?;
    let (before, after, state) = run("formatting")?;
    ensure(before == after && state != "restarted", || format!("formatting only: {state}, {before} -> {after}"))?;

    // A variable added to the env file and k3s restarted on it: put back, and k3s restarted.
    sh(&format!("echo \"HTTP_PROXY='http://192.0.2.1:3128'\" >> {ENV} && systemctl restart k3s-agent"))?;
    let (before, after, state) = run("env drift")?;
    ensure(before != after && state == "restarted", || format!("env drift: {state}, {before} -> {after}"))?;
    ensure(!sh(&format!("cat {ENV}"))?.contains("HTTP_PROXY"), || "the drifted variable stayed".into())?;

    // A config key added and k3s restarted on it: the same.
    sh(&format!("printf 'kubelet-arg:\\n  - max-pods=50\\n' >> {CONFIG} && systemctl restart k3s-agent"))?;
    let (before, after, state) = run("config drift")?;
    ensure(before != after && state == "restarted", || format!("config drift: {state}, {before} -> {after}"))?;
    ensure(!sh(&format!("cat {CONFIG}"))?.contains("max-pods"), || "the drifted key stayed".into())?;

    // A key added while k3s keeps running what k3node started: the file is put back, no restart.
    sh(&format!("printf 'kubelet-arg:\\n  - max-pods=60\\n' >> {CONFIG}"))?;
    let (before, after, state) = run("drift not yet applied")?;
    ensure(before == after && state == "changed", || format!("unapplied drift: {state}, {before} -> {after}"))?;
    ensure(!sh(&format!("cat {CONFIG}"))?.contains("max-pods"), || "the drifted key stayed".into())
}

fn dry_run(lab: &Arc<Lab>, w: &World) -> Outcome {
    let mut hosts = seed_hosts(lab);
    hosts[1].2 = "      labels: {tier: api}\n";
    let changed = SEED_CONFIG.replace("request-timeout=300s", "request-timeout=120s");
    let file = cluster_yaml(w, &hosts, &changed);
    let before = crate::common::sh(lab.host("h1"), "cat /etc/rancher/k3s/config.yaml")?;
    let out = w.op.k3node(&[
        "up",
        "-c",
        file.to_str().unwrap(),
        "--dry-run",
        "--cache-dir",
        w.op.home.join("cache").to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure(out.status.success(), || format!("{text}\n{}", String::from_utf8_lossy(&out.stderr)))?;
    ensure(
        text.contains("h1 would change")
            && text.contains("request-timeout=300s")
            && text.contains("request-timeout=120s"),
        || text.clone(),
    )?;
    let token = crate::common::sh(lab.host("h1"), "cat /var/lib/rancher/k3s/server/token")?;
    ensure(!text.contains(token.trim()), || "the dry run printed the token".into())?;
    ensure(!text.contains("h2 would change") && !text.contains("h3 would change"), || {
        format!("only h1 is concerned:\n{text}")
    })?;
    ensure(crate::common::sh(lab.host("h1"), "cat /etc/rancher/k3s/config.yaml")? == before, || {
        "dry run changed the host".into()
    })?;
    let before = invocations(lab, &["h1", "h2", "h3"]);
    let (code, json, stderr) = up(w, &file, &[]);
    let after = invocations(lab, &["h1", "h2", "h3"]);
    ensure(code == 0, || format!("{json}\n{stderr}"))?;
    ensure(before["h1"] != after["h1"] && before["h2"] == after["h2"] && before["h3"] == after["h3"], || {
        format!("only h1 restarts: {before:?} -> {after:?}")
    })
}

fn added_node(lab: &Arc<Lab>, w: &World) -> Outcome {
    let mut hosts = seed_hosts(lab);
    hosts[1].2 = "      labels: {tier: api}\n";
    hosts.push((lab.host("h4"), "agent", ""));
    let config = SEED_CONFIG.replace("request-timeout=300s", "request-timeout=120s");
    let file = cluster_yaml(w, &hosts, &config);
    let _ = w.op.k3node(&["preflight", "-c", file.to_str().unwrap(), "--fix"]);
    let before = invocations(lab, &["h1", "h2", "h3"]);
    let (code, json, stderr) = up(w, &file, &[]);
    let after = invocations(lab, &["h1", "h2", "h3"]);
    ensure(code == 0, || format!("{json}\n{stderr}"))?;
    ensure(before == after, || format!("existing nodes restarted: {before:?} -> {after:?}"))?;
    // A first install is reported as one, not as a restart.
    ensure(node(&json, "h4")["state"] == "installed", || format!("{:?}", states(&json)))?;
    all_ready(w, &["h1", "h2", "h3", "h4"])
}

/// `spec.k3s.registries` on 1 server + 3 agents, its password from the operator's environment.
fn registries(lab: &Arc<Lab>, w: &World) -> Outcome {
    const ENV: &str = "K3NODE_LAB_REGISTRY_PASSWORD";
    const FILE: &str = "/etc/rancher/k3s/registries.yaml";
    let (first, second) = ("lab-registry-pw-one", "lab-registry-pw-two");
    let mut hosts = seed_hosts(lab);
    hosts[1].2 = "      labels: {tier: api}\n";
    hosts.push((lab.host("h4"), "agent", ""));
    let names = ["h1", "h2", "h3", "h4"];
    let config = SEED_CONFIG.replace("request-timeout=300s", "request-timeout=120s")
        + "    registries:\n      mirrors:\n        docker.io:\n          endpoint: [\"https://mirror.lab.example:5000\"]\n      configs:\n        mirror.lab.example:5000:\n          auth:\n            username: lab-robot\n            password: {fromEnv: K3NODE_LAB_REGISTRY_PASSWORD}\n";
    let file = cluster_yaml(w, &hosts, &config);
    let cache = w.op.home.join("cache");
    // (exit code, stdout, stdout and stderr)
    let run = |password: &str, extra: &[&str]| -> Result<(i32, String, String), libtest_mimic::Failed> {
        let out = w
            .op
            .lab
            .command_in_netns(std::path::Path::new(crate::common::K3NODE))
            .args(["up", "-c", file.to_str().unwrap(), "--ready-timeout", "90", "--cache-dir", cache.to_str().unwrap()])
            .args(extra)
            .env("HOME", &w.op.home)
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("K3NODE_LOG")
            .env(ENV, password)
            .output()
            .map_err(|e| e.to_string())?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        ensure(!text.contains(first) && !text.contains(second), || format!("a registry password was shown:\n{text}"))?;
        Ok((out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), text))
    };
    let json = |stdout: &str| -> serde_json::Value { serde_json::from_str(stdout).unwrap_or_default() };
    let files_hold = |password: &str| -> Outcome {
        for n in names {
            let h = lab.host(n);
            let mode = crate::common::sh(h, &format!("stat -c %a {FILE}"))?;
            let text = crate::common::sh(h, &format!("cat {FILE}"))?;
            ensure(mode.trim() == "600", || format!("{n}: {FILE} has mode {mode}"))?;
            ensure(text.contains("mirror.lab.example:5000") && text.contains(password), || format!("{n}: {text}"))?;
        }
        Ok(())
    };

    // Added: written on every node, and each k3s restarts once to read it.
    let before = invocations(lab, &names);
    let (code, _, text) = run(first, &["-o", "json"])?;
    let after = invocations(lab, &names);
    ensure(code == 0, || text.clone())?;
    ensure(names.iter().all(|n| before[*n] != after[*n]), || {
        format!("not every node restarted: {before:?} -> {after:?}")
    })?;
    files_hold(first)?;

    // Again: nothing to do.
    let (code, stdout, text) = run(first, &["-o", "json"])?;
    ensure(code == 0 && states(&json(&stdout)).values().all(|s| s == "unchanged"), || text.clone())?;
    ensure(invocations(lab, &names) == after, || "a re-run restarted k3s".into())?;

    // A new password: the dry run says it changed without showing it, and changes nothing.
    let (code, _, text) = run(second, &["--dry-run"])?;
    ensure(code == 0 && text.contains("registries.yaml") && text.contains("password: <changed (masked)>"), || {
        text.clone()
    })?;
    files_hold(first)?;
    let (code, stdout, text) = run(second, &["-o", "json"])?;
    ensure(code == 0 && states(&json(&stdout)).values().all(|s| s == "restarted"), || text.clone())?;
    files_hold(second)
}

fn wrong_token(lab: &Arc<Lab>, w: &World) -> Outcome {
    // A token for another cluster: its CA hash cannot match this server's CA.
    let h4 = lab.host("h4");
    crate::common::sh(h4, &format!("sed -i \"s/^K3S_TOKEN='K10[0-9a-f]*::/K3S_TOKEN='K10{}::/\" /etc/systemd/system/k3s-agent.service.env && systemctl restart --no-block k3s-agent", "0".repeat(64)))?;
    let mut seen = String::new();
    for _ in 0..30 {
        seen = crate::common::sh(h4, "journalctl -u k3s-agent --no-pager -o cat -n 50")?;
        if seen.contains("token CA hash does not match the Cluster CA certificate hash") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    ensure(seen.contains("token CA hash does not match the Cluster CA certificate hash"), || {
        format!("agent journal:\n{seen}")
    })?;
    // Through k3node's own install operation the failure comes back diagnosed, the token masked.
    let bad = format!("K10{}::server:not-the-password", "0".repeat(64));
    let request = k3node::protocol::k3s::InstallRequest {
        role: k3node::protocol::preflight::Role::Agent,
        node_name: "h4".into(),
        binary_sha256: mirror::sha256_hex(&mirror::release_binary(mirror::VERSION)),
        config_yaml: k3node::protocol::Secret::new("node-name: h4\n"),
        env: vec![
            ("K3S_URL".into(), k3node::protocol::Secret::new(format!("https://{}:6443", lab.host("h1").address))),
            ("K3S_TOKEN".into(), k3node::protocol::Secret::new(bad.clone())),
        ],
        registries_yaml: None,
        ready_timeout_secs: 20,
        dry_run: false,
    };
    let answer = w.op.with_session(
        w.op.endpoint(h4, "root"),
        w.op.options(k3node::transport::HostKeyPolicy::Strict),
        w.op.keyring(),
        async move |s| {
            let s = s.expect("connect to h4");
            // The helper the earlier `up` installed on h4.
            let helper = k3node::operator::link::SshLink::new(s, k3node::protocol::HELPER_PATH.into(), None);
            let link = k3node::operator::link::Link::new(std::sync::Arc::new(helper));
            link.call(&request).send().await.map_err(|e| e.to_string())
        },
    );
    let message = answer.err().unwrap_or_default();
    ensure(message.contains("likely cause") && message.contains("token"), || {
        format!("install with a wrong token: {message}")
    })?;
    ensure(!message.contains("not-the-password"), || "the token's password reached the error".into())?;
    // k3node puts the right token back, and the node rejoins.
    let mut hosts = seed_hosts(lab);
    hosts[1].2 = "      labels: {tier: api}\n";
    hosts.push((h4, "agent", ""));
    let file = cluster_yaml(w, &hosts, &SEED_CONFIG.replace("request-timeout=300s", "request-timeout=120s"));
    let (code, json, stderr) = up(w, &file, &[]);
    ensure(code == 0 && node(&json, "h4")["state"] == "restarted", || format!("{json}\n{stderr}"))?;
    all_ready(w, &["h4"])
}

/// Node passwords (contract section 6): the stand-in refuses a registration under an existing
/// name with another password, as k3s does; k3node deletes the stale Node before the host joins.
fn lost_node_password(lab: &Arc<Lab>, w: &World) -> Outcome {
    let mut hosts = seed_hosts(lab);
    hosts.push((lab.host("h4"), "agent", ""));
    let file = cluster_yaml(w, &hosts, SEED_CONFIG);
    let h3 = lab.host("h3");
    crate::common::sh(h3, "systemctl stop k3s-agent && rm -rf /etc/rancher/node")?;
    let (code, json, stderr) = up(w, &file, &[]);
    ensure(code == 0 && node(&json, "h3")["state"] == "restarted", || format!("{json}\n{stderr}"))?;
    let password = crate::common::sh(h3, "stat -c %a /etc/rancher/node/password")?;
    ensure(password.trim() == "600", || format!("a new node password: {password}"))?;
    all_ready(w, &["h1", "h2", "h3", "h4"])
}

fn one_host_reset(lab: &Arc<Lab>, w: &World) -> Outcome {
    let mut hosts = seed_hosts(lab);
    hosts.push((lab.host("h4"), "agent", ""));
    let file = cluster_yaml(w, &hosts, SEED_CONFIG);
    let out =
        w.op.k3node(&["reset", "-c", file.to_str().unwrap(), "--hosts", "h4", "--yes", "--keep-helper", "-o", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    ensure(out.status.success(), || format!("reset of h4: {json}\n{}", String::from_utf8_lossy(&out.stderr)))?;
    // --keep-helper: k3s is gone, the helper stays (reset_then_up checks that it goes without it).
    let left = crate::common::sh(lab.host("h4"), "ls /usr/local/bin/k3s /usr/local/bin/k3node 2>/dev/null || true")?;
    ensure(left.trim() == "/usr/local/bin/k3node", || format!("h4 after reset --keep-helper: {left}"))?;
    let forget = json["phases"].as_array().and_then(|p| p.iter().find(|p| p["name"] == "forget nodes")).cloned();
    ensure(forget.as_ref().is_some_and(|p| p["message"].as_str().is_some_and(|m| m.contains("h4"))), || {
        format!("forget nodes: {forget:?}")
    })?;
    let nodes = crate::common::sh(lab.host("h1"), "k3s kubectl get nodes -o name")?;
    ensure(!nodes.contains("node/h4"), || format!("h4 is still a node: {nodes}"))?;
    // The kubeconfig keeps the cluster's context: the cluster is still there.
    let kubeconfig = std::fs::read_to_string(w.op.home.join(".kube/config")).unwrap_or_default();
    ensure(kubeconfig.contains("name: lab"), || "a partial reset removed the cluster's context".into())?;
    let (code, json, stderr) = up(w, &file, &[]);
    ensure(code == 0 && node(&json, "h4")["state"] == "installed", || format!("{json}\n{stderr}"))?;
    ensure(node(&json, "h4")["helper"] == "up-to-date", || format!("the kept helper was replaced: {json}"))?;
    all_ready(w, &["h1", "h2", "h3", "h4"])
}

fn reset_then_up(lab: &Arc<Lab>, w: &World) -> Outcome {
    let mut hosts = seed_hosts(lab);
    hosts.push((lab.host("h4"), "agent", ""));
    let file = cluster_yaml(w, &hosts, SEED_CONFIG);
    let out = w.op.k3node(&["reset", "-c", file.to_str().unwrap(), "--yes"]);
    ensure(out.status.success(), || {
        format!("reset: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })?;
    for h in ["h1", "h2", "h3", "h4"] {
        let left = lab.host(h).sh("ls /usr/local/bin/k3s /etc/systemd/system/k3s*.service 2>/dev/null; systemctl is-active k3s k3s-agent || true")?;
        ensure(
            !left.contains("/usr/local/bin/k3s") && !left.contains(".service") && !left.contains("\nactive"),
            || format!("{h} after reset: {left}"),
        )?;
    }
    let aside =
        crate::common::sh(lab.host("h1"), "ls -d /var/lib/rancher/k3s.k3node-reset-* /etc/rancher/k3s.k3node-reset-*")?;
    ensure(aside.lines().count() >= 2, || format!("data was not moved aside: {aside}"))?;
    // What was set aside is self-contained: its node-token names the token beside it, not the next cluster's.
    let link = crate::common::sh(
        lab.host("h1"),
        "readlink $(ls -d /var/lib/rancher/k3s.k3node-reset-* | tail -1)/server/node-token",
    )?;
    ensure(link.trim() == "token", || format!("the moved-aside node-token points at {link}"))?;
    // k3node's own traces went with k3s, and the whole cluster's context left the kubeconfig.
    let helper = crate::common::sh(lab.host("h2"), "test -e /usr/local/bin/k3node && echo present || echo absent")?;
    ensure(helper.trim() == "absent", || "reset left the helper on h2".into())?;
    let kubeconfig = std::fs::read_to_string(w.op.home.join(".kube/config")).unwrap_or_default();
    ensure(!kubeconfig.contains("name: lab"), || format!("the reset cluster's context stayed:\n{kubeconfig}"))?;
    let (code, json, stderr) = up(w, &file, &[]);
    ensure(code == 0, || format!("{json}\n{stderr}"))?;
    all_ready(w, &["h1", "h2", "h3", "h4"])
}

fn ha(lab: &Arc<Lab>, w: &World) -> Outcome {
    let hosts = [
        (lab.host("h1"), "server", ""),
        (lab.host("h2"), "server", ""),
        (lab.host("h3"), "server", ""),
        (lab.host("h4"), "agent", ""),
    ];
    let file = cluster_yaml(w, &hosts, SEED_CONFIG);
    // The daemons report every 2 s: the hubs' lease lasts 3 intervals (see hubs_elect_one_leader).
    let yaml = std::fs::read_to_string(&file).unwrap().replace("  k3s:\n", "  agent:\n    interval: 2s\n  k3s:\n");
    std::fs::write(&file, yaml).unwrap();
    let out = w.op.k3node(&["reset", "-c", file.to_str().unwrap(), "--yes"]);
    ensure(out.status.success(), || String::from_utf8_lossy(&out.stderr).into_owned())?;
    let (code, json, stderr) = up(w, &file, &[]);
    ensure(code == 0, || format!("{json}\n{stderr}"))?;
    ensure(
        crate::common::sh(lab.host("h1"), "cat /etc/rancher/k3s/config.yaml")?.contains("cluster-init: true"),
        || "first server without cluster-init".into(),
    )?;
    let second = crate::common::sh(lab.host("h2"), "cat /etc/rancher/k3s/config.yaml")?;
    ensure(second.contains(&format!("server: https://{}:6443", lab.host("h1").address)), || second.clone())?;
    let token = |h: &str| lab.host(h).sh("cat /var/lib/rancher/k3s/server/token").unwrap_or_default();
    ensure(token("h1") == token("h2") && token("h2") == token("h3"), || "servers do not share one token".into())?;
    all_ready(w, &["h1", "h2", "h3", "h4"])?;
    hubs_elect_one_leader(lab, w)
}

/// Every server runs a hub; one holds the `kube-system/k3node-hub` Lease and publishes Node
/// conditions. Its hub stopped, another server's takes the Lease over (after the lease's 3
/// intervals, 6 s here, unrenewed) and publishes: the stopped server's node turns Unknown.
fn hubs_elect_one_leader(lab: &Arc<Lab>, w: &World) -> Outcome {
    const SERVERS: [&str; 3] = ["h1", "h2", "h3"];
    let within = std::time::Duration::from_secs(40);
    let lease = |field: &str| {
        let jsonpath = format!("jsonpath={{.spec.{field}}}");
        let out = kubectl(w, &["get", "lease", "-n", "kube-system", "k3node-hub", "-o", &jsonpath]);
        out.map(|v| v.trim().to_string()).map_err(|e| e.message().unwrap_or("kubectl failed").to_string())
    };
    let held_by_a_server = |holder: String| match SERVERS.contains(&holder.as_str()) {
        true => Ok(holder),
        false => Err(format!("the lease is held by {holder:?}")),
    };
    let leader = wait_for(within, || lease("holderIdentity").and_then(held_by_a_server))?;
    let transitions = lease("leaseTransitions")?.parse::<i64>().unwrap_or(0);
    lab.host(&leader).sh("systemctl stop k3node-agent")?;
    let result = (|| -> Outcome {
        wait_for(within, || match lease("holderIdentity").and_then(held_by_a_server)? {
            holder if holder == leader => Err(format!("{leader}, stopped, still holds the lease")),
            holder => Ok(holder),
        })?;
        let now = lease("leaseTransitions")?.parse::<i64>().unwrap_or(0);
        ensure(now > transitions, || format!("leaseTransitions {transitions} -> {now}"))?;
        let condition =
            format!("jsonpath={{.status.conditions[?(@.type==\"{}\")].status}}", k3node::hub::kube::CONDITION_TYPE);
        wait_for(within, || {
            let status =
                kubectl(w, &["get", "node", &leader, "-o", &condition]).map_err(|_| "kubectl failed".to_string())?;
            match status.trim() {
                "Unknown" => Ok(()),
                other => Err(format!("the new leader left {leader}'s condition at {other:?}")),
            }
        })?;
        Ok(())
    })();
    lab.host(&leader).sh("systemctl start k3node-agent")?;
    result
}

/// Real kubectl (Debian's kubernetes-client) through the kubeconfig `up` merged.
fn kubectl(w: &World, args: &[&str]) -> Result<String, libtest_mimic::Failed> {
    let mut cmd = w.op.lab.command_in_netns(std::path::Path::new("kubectl"));
    cmd.args(args).env("KUBECONFIG", w.op.home.join(".kube/config"));
    let out = cmd.output().map_err(|e| format!("kubectl (apt-get install kubernetes-client): {e}"))?;
    ensure(out.status.success(), || format!("kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Seed 004 played end to end on two hosts: its settings, its add-ons (manifests/) delivered
/// through spec.manifests into the server's auto-deploy directory, where k3s applies them.
fn seed_004(lab: &Arc<Lab>, w: &World) -> Outcome {
    let ha = [
        (lab.host("h1"), "server", ""),
        (lab.host("h2"), "server", ""),
        (lab.host("h3"), "server", ""),
        (lab.host("h4"), "agent", ""),
    ];
    let out = w.op.k3node(&["reset", "-c", cluster_yaml(w, &ha, SEED_CONFIG).to_str().unwrap(), "--yes"]);
    ensure(out.status.success(), || String::from_utf8_lossy(&out.stderr).into_owned())?;
    let manifests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
    let hosts = [(lab.host("h1"), "server", ""), (lab.host("h2"), "agent", "")];
    let with = |list: &str| {
        let file = cluster_yaml(w, &hosts, SEED_CONFIG);
        let mut yaml = std::fs::read_to_string(&file).unwrap();
        yaml = yaml.replace("  k3s:\n", &format!("  manifests:\n{list}  k3s:\n"));
        std::fs::write(&file, yaml).unwrap();
        file
    };
    let file = with(&format!("    - {}\n", manifests.display()));
    let (code, json, stderr) = up(w, &file, &[]);
    ensure(code == 0, || format!("{json}\n{stderr}"))?;
    ensure(json["phases"].to_string().contains("5 manifests"), || format!("{}", json["phases"]))?;
    all_ready(w, &["h1", "h2"])?;
    // The user's first commands after `up`, with Debian's kubectl through the merged kubeconfig.
    let ready = kubectl(
        w,
        &[
            "get",
            "nodes",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status} {end}",
        ],
    )?;
    ensure(ready.contains("h1=True") && ready.contains("h2=True"), || format!("kubectl get nodes: {ready}"))?;
    let described = kubectl(w, &["describe", "node", "h2"])?;
    ensure(described.contains("Name:") && described.contains("h2"), || {
        format!("kubectl describe node h2: {described}")
    })?;
    kubectl(w, &["cluster-info"])?;
    // k3s scans its manifests directory every 15 s, so the add-ons appear within two scans.
    let wanted = ["k3node-00-namespaces", "k3node-10-resource-quotas", "k3node-40-network-policies"];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(45);
    loop {
        let addons = kubectl(w, &["get", "addons", "-n", "kube-system", "-o", "name"])?;
        if wanted.iter().all(|name| addons.contains(name)) {
            break;
        }
        ensure(std::time::Instant::now() < deadline, || format!("after 45 s, AddOns {wanted:?} wanted: {addons}"))?;
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let namespaces = kubectl(w, &["get", "namespaces", "-o", "name"])?;
    ensure(namespaces.contains("namespace/crypto-lakehouse"), || format!("namespaces: {namespaces}"))?;
    let quotas = kubectl(w, &["get", "resourcequotas", "-A", "-o", "name"])?;
    ensure(!quotas.trim().is_empty(), || "no resource quota applied".into())?;
    // A re-run delivers nothing again; a dry run of a shorter list shows what would go; the
    // real run removes the files dropped from the list, and never k3s's own.
    let (_, again, _) = up(w, &file, &[]);
    let changed = |host: &serde_json::Value| {
        host["changes"].as_array().is_some_and(|c| c.iter().any(|c| c["action"] != "unchanged"))
    };
    ensure(!changed(node(&again, "h1")), || format!("a re-run changed h1: {}", node(&again, "h1")))?;
    let shorter = with(&format!("    - {}\n", manifests.join("00-namespaces.yaml").display()));
    let (code, plan, stderr) = up(w, &shorter, &["--dry-run"]);
    let planned = node(&plan, "h1")["changes"].to_string();
    ensure(code == 0 && planned.contains("k3node-10-resource-quotas.yaml") && planned.contains("removed"), || {
        format!("{planned}\n{stderr}")
    })?;
    let (code, json, stderr) = up(w, &shorter, &[]);
    ensure(code == 0, || format!("{json}\n{stderr}"))?;
    let left = crate::common::sh(lab.host("h1"), "ls /var/lib/rancher/k3s/server/manifests")?;
    ensure(left.contains("k3node-00-namespaces.yaml") && !left.contains("k3node-10-resource-quotas.yaml"), || {
        format!("server manifests: {left}")
    })?;
    // The seed's day-2 steps: a snapshot of the server, and the fleet's health from the hub.
    let config = file.to_str().unwrap();
    let (code, json, stderr) = w.op.k3node_json(&["snapshot", "create", "-c", config, "-o", "json"]);
    let created = &json["snapshots"][0];
    ensure(code == 0 && created["state"] == "created" && created["host"] == "h1", || format!("{json}\n{stderr}"))?;
    let (code, json, stderr) = w.op.k3node_json(&[
        "snapshot",
        "verify",
        &format!("h1:{}", created["name"].as_str().unwrap_or_default()),
        "-c",
        config,
        "-o",
        "json",
    ]);
    ensure(code == 0, || format!("snapshot verify: {json}\n{stderr}"))?;
    // Every node's daemon reports within two of its 10 s intervals of starting.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    loop {
        let (_, view, stderr) = w.op.k3node_json(&["status", "-c", config, "-o", "json"]);
        let reported = |n: &str| {
            view["nodes"].as_array().into_iter().flatten().any(|e| {
                e["node"] == n && e["state"] != "stale" && e["checks"].as_array().is_some_and(|c| !c.is_empty())
            })
        };
        if reported("h1") && reported("h2") {
            return Ok(());
        }
        ensure(std::time::Instant::now() < deadline, || {
            format!("after 40 s, not every node reported: {view}\n{stderr}")
        })?;
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}

fn local_mode(lab: &Arc<Lab>, w: &World) -> Outcome {
    let h5 = lab.host("h5");
    std::fs::copy(crate::common::K3NODE, h5.root.join("usr/local/bin/k3node"))
        .map_err(|e| format!("copy k3node into h5: {e}"))?;
    // The output says where the checks ran: this machine, not a host over SSH.
    let said = crate::common::sh(h5, "k3node preflight --local --fix 2>&1 >/dev/null || true")?;
    ensure(said.contains("local mode: checking this machine (h5) as a k3s server, not over SSH"), || said.clone())?;
    let cmd = format!(
        "k3node up --local --k3s-version {} --mirror {} --ready-timeout 60 -o json",
        mirror::VERSION,
        w.mirror.url()
    );
    let out = h5.sh(&cmd).map_err(|e| format!("local up on h5: {e:#}"))?;
    let json: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
    ensure(node(&json, "h5")["state"] == "installed", || format!("{json}"))?;
    // JSON says it too, for scripts.
    ensure(json["local"] == true, || format!("no local marker: {json}"))?;
    let nodes = crate::common::sh(h5, "k3s kubectl get nodes -o json")?;
    ensure(nodes.contains("\"h5\""), || nodes.clone())?;
    let kubeconfig = crate::common::sh(h5, "cat /root/.kube/config")?;
    ensure(kubeconfig.contains("current-context: local") && kubeconfig.contains("https://127.0.0.1:6443"), || {
        kubeconfig.clone()
    })?;
    let again = crate::common::sh(h5, &cmd)?;
    ensure(again.contains("\"state\": \"unchanged\""), || format!("second local up: {again}"))
}

fn tampered_release(lab: &Arc<Lab>, w: &World) -> Outcome {
    // A release whose binary does not match its own checksum file, as after tampering in transit.
    let version = "v1.31.5+k3s1";
    let genuine = mirror::release_binary(version);
    mirror::publish(&w.mirror.root, version, &genuine);
    let mut tampered = genuine.clone();
    let at = tampered.len() / 2;
    tampered[at] ^= 0xff;
    std::fs::write(w.mirror.root.join(version).join("k3s"), &tampered).unwrap();
    let mut hosts = seed_hosts(lab);
    hosts[1].2 = "      labels: {tier: api}\n";
    hosts.push((lab.host("h4"), "agent", ""));
    let file = cluster_yaml(w, &hosts, &SEED_CONFIG.replace("request-timeout=300s", "request-timeout=120s"));
    let text = std::fs::read_to_string(&file).unwrap().replace(mirror::VERSION, version);
    std::fs::write(&file, text).unwrap();
    let before = crate::common::sh(lab.host("h1"), "sha256sum /usr/local/bin/k3s")?;
    let (code, json, stderr) = up(w, &file, &[]);
    let artifacts = json["phases"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "artifacts"))
        .cloned()
        .unwrap_or_default();
    ensure(code == 1 && artifacts["ok"] == false, || format!("{json}\n{stderr}"))?;
    let message = artifacts["message"].as_str().unwrap_or_default();
    ensure(message.contains("sha256") && message.contains(&mirror::sha256_hex(&tampered)), || {
        format!("artifacts phase: {message}")
    })?;
    ensure(crate::common::sh(lab.host("h1"), "sha256sum /usr/local/bin/k3s")? == before, || {
        "the host's k3s changed".into()
    })?;
    // A checksum file that lies about the binary is refused the same way.
    std::fs::write(w.mirror.root.join(version).join("k3s"), &genuine).unwrap();
    std::fs::write(w.mirror.root.join(version).join("sha256sum-amd64.txt"), format!("{}  k3s\n", "ab".repeat(32)))
        .unwrap();
    let (code, json, _) = up(w, &file, &[]);
    ensure(code == 1 && json["phases"].to_string().contains(&"ab".repeat(32)), || {
        format!("lying checksum file: {json}")
    })?;
    ensure(crate::common::sh(lab.host("h1"), "sha256sum /usr/local/bin/k3s")? == before, || {
        "the host's k3s changed".into()
    })
}

fn interrupted_run(lab: &Arc<Lab>, w: &World) -> Outcome {
    let mut hosts = seed_hosts(lab);
    hosts.push((lab.host("h4"), "agent", ""));
    let file = cluster_yaml(w, &hosts, SEED_CONFIG);
    let out = w.op.k3node(&["reset", "-c", file.to_str().unwrap(), "--yes"]);
    ensure(out.status.success(), || String::from_utf8_lossy(&out.stderr).into_owned())?;
    // Killed in the middle: uploads and the first server's start are under way.
    let mut child = w.op.lab.command_in_netns(std::path::Path::new(crate::common::K3NODE));
    child
        .args([
            "up",
            "-c",
            file.to_str().unwrap(),
            "-o",
            "json",
            "--cache-dir",
            w.op.home.join("cache").to_str().unwrap(),
        ])
        .env("HOME", &w.op.home)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = child.spawn().map_err(|e| e.to_string())?;
    std::thread::sleep(std::time::Duration::from_millis(700));
    let _ = child.kill();
    let _ = child.wait();
    // And a connection dropped in the middle of a run: h4 goes away, then comes back.
    let h4 = lab.host("h4");
    h4.disconnect()?;
    let (code, _, _) = up(w, &file, &["--connect-timeout", "3"]);
    h4.reconnect()?;
    ensure(code != 0, || "up succeeded although h4 was cut off".into())?;
    let (code, json, stderr) = up(w, &file, &[]);
    ensure(code == 0, || format!("re-run after the interruptions: {json}\n{stderr}"))?;
    let leftovers = crate::common::sh(lab.host("h1"), "ls -a /usr/local/bin /etc/rancher/k3s /etc/systemd/system | grep -c -e k3node-tmp -e k3node-receive -e k3node-upload || true")?;
    ensure(leftovers.trim() == "0", || format!("temp files left behind: {leftovers}"))?;
    all_ready(w, &["h1", "h2", "h3", "h4"])
}
