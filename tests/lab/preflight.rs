//! `k3node preflight` end to end: the binary as the operator runs it, real hosts, real breakage.

use std::net::TcpListener;
use std::os::fd::AsFd;
use std::sync::Arc;

use libtest_mimic::Trial;

use crate::common::{check, ensure, host_entry, status, Operator, Outcome, K3NODE};
use crate::support::{Lab, LabHost};

pub fn trials(lab: &Arc<Lab>) -> Vec<Trial> {
    let t = |name: &str, f: fn(&Arc<Lab>) -> Outcome| {
        let lab = lab.clone();
        crate::common::timed(format!("preflight::{name}"), move || f(&lab))
    };
    vec![
        t("invalid_cluster_file_touches_no_host", invalid_file_touches_nothing),
        t("detects_breakage_and_fix_repairs_what_is_safe", detects_and_fixes),
        t("one_host_down_others_checked", host_down),
        t("agent_reused_then_outdated_agent_replaced", agent_lifecycle),
        t("ssh_config_alias_user_and_key", ssh_config_alias),
        t("encrypted_key_passphrase_from_env", encrypted_key),
    ]
}

/// A TCP listener bound inside `host`'s network namespace, as a foreign service would be.
fn listen_on(host: &LabHost, port: u16) -> TcpListener {
    let netns = format!("/run/netns/{}", host.netns);
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&netns).expect("open netns");
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        TcpListener::bind(("0.0.0.0", port)).expect("bind")
    })
    .join()
    .expect("listener thread")
}

fn invalid_file_touches_nothing(lab: &Arc<Lab>) -> Outcome {
    let op = Operator::new(lab, "invalid");
    let h5 = lab.host("h5");
    op.trust(&[h5]);
    crate::common::sh(h5, "rm -f /usr/local/bin/k3node")?;
    let file = op.cluster_file("", &[(h5, "server", "      adress: 10.0.0.1\n")]);
    let out = op.k3node(&["preflight", "-c", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure(out.status.code() == Some(2), || format!("exit {:?}: {stderr}", out.status.code()))?;
    ensure(stderr.contains("cluster.yaml:") && stderr.contains("adress"), || format!("stderr: {stderr}"))?;
    let agent = crate::common::sh(h5, "test -e /usr/local/bin/k3node && echo present || echo absent")?;
    ensure(agent.trim() == "absent", || "the agent was installed from an invalid cluster file".into())
}

fn detects_and_fixes(lab: &Arc<Lab>) -> Outcome {
    let op = Operator::new(lab, "breakage");
    let (h1, h2, h3) = (lab.host("h1"), lab.host("h2"), lab.host("h3"));
    op.trust(&[h1, h2, h3]);
    let file = op.cluster_file("", &[(h1, "server", ""), (h2, "agent", ""), (h3, "agent", "")]);
    let file = file.to_str().unwrap();

    let listener = listen_on(h1, 6443);
    crate::common::sh(h1, "sysctl -qw net.ipv4.ip_forward=0 && rm -f /etc/sysctl.d/90-k3node.conf")?;
    crate::common::sh(h2, "hostname h3")?;
    let result = (|| -> Outcome {
        let (code, json, stderr) = op.k3node_json(&["preflight", "-c", file, "-o", "json"]);
        ensure(code == 1, || format!("exit {code} although checks fail\n{stderr}"))?;
        let port = host_entry(&json, "h1").and_then(|h| h["checks"].as_array()).and_then(|cs| {
            cs.iter().find(|c| c["id"].as_str().is_some_and(|id| id.contains("6443")) && c["status"] == "fail").cloned()
        });
        ensure(port.is_some(), || format!("no failing 6443 check on h1: {}", host_entry(&json, "h1").unwrap()))?;
        // k3s sets it at every start: a warning, not a failure (contract section 5).
        ensure(status(&json, "h1", "sysctl-net.ipv4.ip_forward") == "warn", || {
            format!("{:?}", check(&json, "h1", "sysctl-net.ipv4.ip_forward"))
        })?;
        ensure(
            status(&json, "h2", "unique-hostname") == "fail" && status(&json, "h3", "unique-hostname") == "fail",
            || format!("{:?} / {:?}", check(&json, "h2", "unique-hostname"), check(&json, "h3", "unique-hostname")),
        )?;
        ensure(status(&json, "h1", "unique-hostname") == "pass", || "h1 has a unique hostname".into())?;
        ensure(status(&json, "h2", "unique-machine-id") == "pass", || "machine-ids are distinct".into())?;

        let (code, json, stderr) = op.k3node_json(&["preflight", "-c", file, "-o", "json", "--fix"]);
        ensure(code == 1, || format!("the busy port cannot be fixed, exit must stay 1, got {code}\n{stderr}"))?;
        let fixes = host_entry(&json, "h1").map(|h| h["notes"].to_string()).unwrap_or_default();
        ensure(fixes.contains("ip_forward"), || format!("fixes on h1: {fixes}"))?;
        ensure(status(&json, "h1", "sysctl-net.ipv4.ip_forward") == "pass", || {
            "ip_forward still failing after --fix".into()
        })?;
        ensure(crate::common::sh(h1, "cat /proc/sys/net/ipv4/ip_forward")?.trim() == "1", || {
            "ip_forward not set on the host".into()
        })?;
        let persisted = crate::common::sh(h1, "cat /etc/sysctl.d/90-k3node.conf")?;
        ensure(persisted.contains("net.ipv4.ip_forward = 1") || persisted.contains("net.ipv4.ip_forward=1"), || {
            format!("persisted: {persisted}")
        })?;

        let (_, json, _) = op.k3node_json(&["preflight", "-c", file, "-o", "json", "--fix"]);
        for h in ["h1", "h2", "h3"] {
            // Fixes applied show as notes ("fixed: ..."); none this time.
            let again = host_entry(&json, h).map(|e| e["notes"].clone()).unwrap_or_default();
            ensure(again.as_array().is_none_or(|a| a.is_empty()), || {
                format!("second --fix changed {h} again: {again}")
            })?;
        }
        let table = op.k3node(&["preflight", "-c", file]);
        let text = String::from_utf8_lossy(&table.stdout);
        ensure(text.contains("preflight FAILED") && text.contains("6443") && text.contains("unique-hostname"), || {
            format!("table:\n{text}")
        })
    })();
    drop(listener);
    crate::common::sh(h2, "hostname h2")?;
    result
}

fn host_down(lab: &Arc<Lab>) -> Outcome {
    let op = Operator::new(lab, "down");
    let (h1, h2, h4) = (lab.host("h1"), lab.host("h2"), lab.host("h4"));
    op.trust(&[h1, h2, h4]);
    let file = op.cluster_file("", &[(h1, "server", ""), (h2, "agent", ""), (h4, "agent", "")]);
    h4.disconnect()?;
    let started = std::time::Instant::now();
    let (code, json, stderr) =
        op.k3node_json(&["preflight", "-c", file.to_str().unwrap(), "-o", "json", "--connect-timeout", "3"]);
    let took = started.elapsed();
    h4.reconnect()?;
    ensure(code == 1, || format!("exit {code}\n{stderr}"))?;
    let h4e = host_entry(&json, "h4").cloned().unwrap_or_default();
    ensure(h4e["error"]["kind"] == "unreachable", || format!("h4: {h4e}"))?;
    ensure(h4e["elapsed"].as_f64().is_some_and(|s| s < 6.0), || format!("h4 took {}", h4e["elapsed"]))?;
    for h in ["h1", "h2"] {
        ensure(host_entry(&json, h).is_some_and(|e| e.get("checks").is_some()), || {
            format!("{h} was not checked: {json}")
        })?;
    }
    ensure(took < std::time::Duration::from_secs(30), || format!("whole run took {took:?}"))
}

fn agent_lifecycle(lab: &Arc<Lab>) -> Outcome {
    let op = Operator::new(lab, "agent");
    let h3 = lab.host("h3");
    op.trust(&[h3]);
    let file = op.cluster_file("", &[(h3, "server", "")]);
    let file = file.to_str().unwrap();
    let helper_of = |json: &serde_json::Value| host_entry(json, "h3").map(|e| e["helper"].clone()).unwrap_or_default();
    // A check leaves nothing lasting: without an installed helper, a temporary copy runs and goes.
    crate::common::sh(h3, "rm -f /usr/local/bin/k3node")?;
    let (_, first, stderr) = op.k3node_json(&["preflight", "-c", file, "-o", "json"]);
    ensure(helper_of(&first) == "temporary", || format!("first: {}\n{stderr}", helper_of(&first)))?;
    let left =
        crate::common::sh(h3, "ls /usr/local/bin/k3node /run/k3node-helper.* /var/tmp/k3node-helper.* 2>&1 || true")?;
    ensure(left.lines().all(|l| l.contains("No such file")), || format!("the check left: {left}"))?;
    // Fixes change the host: the helper is installed, then found current.
    let (_, fixed, _) = op.k3node_json(&["preflight", "-c", file, "-o", "json", "--fix"]);
    let (_, second, _) = op.k3node_json(&["preflight", "-c", file, "-o", "json"]);
    ensure(helper_of(&fixed) == "installed" && second["hosts"][0]["helper"] == "up-to-date", || {
        format!("--fix {} then {}", helper_of(&fixed), helper_of(&second))
    })?;
    // An older helper answers hello with another protocol and hash: it must be replaced.
    crate::common::sh(
        h3,
        r#"printf '#!/bin/sh\necho '"'"'{"type":"result","value":{"version":"0.0.1","protocol":0,"binary_sha256":"00","arch":"amd64","capabilities":[]}}'"'"'\n' > /usr/local/bin/k3node"#,
    )?;
    let (_, third, stderr) = op.k3node_json(&["preflight", "-c", file, "-o", "json", "--fix"]);
    ensure(helper_of(&third) == "replaced", || format!("old helper: {}\n{stderr}", helper_of(&third)))?;
    let ours = std::process::Command::new("sha256sum").arg(K3NODE).output().unwrap();
    let ours = String::from_utf8_lossy(&ours.stdout).split_whitespace().next().unwrap_or_default().to_string();
    let theirs = crate::common::sh(h3, "sha256sum /usr/local/bin/k3node")?;
    ensure(theirs.starts_with(&ours), || format!("host has {theirs}, operator {ours}"))
}

fn ssh_config_alias(lab: &Arc<Lab>) -> Outcome {
    let op = Operator::new(lab, "ssh-config");
    let h5 = lab.host("h5");
    op.trust(&[h5]);
    let config = op.home.join("ssh_config");
    std::fs::write(
        &config,
        format!(
            "Host lab-five\n  HostName {}\n  User ops\n  IdentityFile {}\n",
            h5.address,
            lab.client_key().display()
        ),
    )
    .unwrap();
    let yaml = format!(
        "apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: lab\nspec:\n  ssh:\n    knownHosts: {}\n    configFile: {}\n  hosts:\n    - name: five\n      address: lab-five\n      role: server\n",
        op.known_hosts().display(),
        config.display()
    );
    let file = op.home.join("cluster.yaml");
    std::fs::write(&file, yaml).unwrap();
    let (_, json, stderr) = op.k3node_json(&["preflight", "-c", file.to_str().unwrap(), "-o", "json"]);
    let entry = host_entry(&json, "five").cloned().unwrap_or_default();
    ensure(entry.get("checks").is_some(), || format!("{entry}\n{stderr}"))?;
    ensure(entry["facts"]["hostname"] == "h5", || format!("reached {}", entry["facts"]["hostname"]))
}

fn encrypted_key(lab: &Arc<Lab>) -> Outcome {
    let op = Operator::new(lab, "passphrase");
    let h4 = lab.host("h4");
    op.trust(&[h4]);
    let key = op.home.join("locked_key");
    std::fs::copy(lab.client_key(), &key).unwrap();
    let rekey = std::process::Command::new("ssh-keygen")
        .args(["-q", "-p", "-N", "lab-passphrase", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    ensure(rekey.status.success(), || format!("ssh-keygen -p: {}", String::from_utf8_lossy(&rekey.stderr)))?;
    let yaml = format!(
        "apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: lab\nspec:\n  ssh:\n    keyPath: {}\n    knownHosts: {}\n  hosts:\n    - name: h4\n      address: {}\n      role: server\n",
        key.display(),
        op.known_hosts().display(),
        h4.address
    );
    let file = op.home.join("cluster.yaml");
    std::fs::write(&file, yaml).unwrap();
    let without = op.k3node(&["preflight", "-c", file.to_str().unwrap(), "-o", "json"]);
    let stderr = String::from_utf8_lossy(&without.stderr);
    ensure(without.status.code() == Some(1) && stderr.contains("K3NODE_SSH_KEY_PASSPHRASE"), || {
        format!("without passphrase: {stderr}")
    })?;
    ensure(!stderr.contains("lab-passphrase"), || "passphrase leaked".into())?;
    let mut cmd = lab.command_in_netns(std::path::Path::new(K3NODE));
    cmd.args(["preflight", "-c", file.to_str().unwrap(), "-o", "json"])
        .env("HOME", &op.home)
        .env("K3NODE_SSH_KEY_PASSPHRASE", "lab-passphrase");
    let with = cmd.output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&with.stdout).unwrap_or_default();
    ensure(host_entry(&json, "h4").is_some_and(|e| e.get("checks").is_some()), || {
        format!("with passphrase: {}", String::from_utf8_lossy(&with.stderr))
    })
}
