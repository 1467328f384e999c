//! provision/ on a real host: provision/bootstrap.sh, piped over ssh to a lab host as root (as the
//! README tells a user to run it), creates the user k3node with the lab's client key and
//! passwordless sudo, twice (the second run changes nothing); then k3node runs as that user
//! through sudo: `preflight --fix`, `preflight`, `up` of a single-server cluster, `reset`. The
//! command line of provision/cloud-init.yaml is run the same way.
//!
//! The scenarios use h5, after the up scenarios (whose local-mode scenario leaves k3s on h5): each
//! starts by resetting k3s there if present and removing any k3node user, and ends with h5 without
//! k3s (moved aside by reset) and without the k3node user and its sudoers file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;

use libtest_mimic::Trial;

use crate::common::{ensure, host_entry, status, Operator, Outcome};
use crate::mirror;
use crate::support::{Lab, LabHost};

const HOST: &str = "h5";
const USER: &str = "k3node";

pub fn trials(lab: &Arc<Lab>) -> Vec<Trial> {
    let t = |name: &str, f: fn(&Arc<Lab>) -> Outcome| {
        let lab = lab.clone();
        crate::common::timed(format!("provision::{name}"), move || f(&lab))
    };
    vec![
        t("bootstrap_refuses_bad_input_and_changes_nothing", refuses_bad_input),
        t("bootstrapped_user_runs_preflight_and_up_through_sudo", bootstrap_then_up),
        t("cloud_init_command_line_bootstraps_the_same_user", cloud_init_command),
    ]
}

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn script() -> Vec<u8> {
    std::fs::read(repo_file("provision/bootstrap.sh")).expect("provision/bootstrap.sh")
}

fn client_public_key(lab: &Lab) -> String {
    let path = format!("{}.pub", lab.client_key().display());
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")).trim().to_string()
}

fn quote(s: &str) -> String {
    shlex::try_quote(s).expect("no NUL in a shell word").into_owned()
}

/// `ssh user@host remote` from the lab netns with the lab client key, `stdin` piped in: how a user
/// runs `ssh root@HOST sh -s -- ... < provision/bootstrap.sh`.
fn ssh_with_stdin(lab: &Lab, host: &LabHost, user: &str, remote: &str, stdin: &[u8]) -> Output {
    let mut cmd = lab.command_in_netns(Path::new("ssh"));
    cmd.arg("-F").arg("/dev/null").arg("-i").arg(lab.client_key());
    for option in [
        "IdentitiesOnly=yes",
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "BatchMode=yes",
        "LogLevel=ERROR",
        "ConnectTimeout=5",
    ] {
        cmd.args(["-o", option]);
    }
    cmd.arg(format!("{user}@{}", host.address))
        .arg("--")
        .arg(remote)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start ssh");
    child.stdin.take().expect("stdin").write_all(stdin).expect("write to ssh");
    child.wait_with_output().expect("wait for ssh")
}

/// provision/bootstrap.sh with `args`, run as `user` on the host.
fn bootstrap(lab: &Lab, host: &LabHost, user: &str, args: &[&str]) -> (i32, String, String) {
    let words: Vec<String> = args.iter().map(|a| quote(a)).collect();
    let out = ssh_with_stdin(lab, host, user, &format!("sh -s -- {}", words.join(" ")), &script());
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

fn user_exists(host: &LabHost) -> Result<bool, libtest_mimic::Failed> {
    let answer = crate::common::sh(host, &format!("getent passwd {USER} >/dev/null && echo yes || echo no"))?;
    Ok(answer.trim() == "yes")
}

/// What the user's files look like, down to the inode: a file rewritten in place of itself differs.
fn footprint(host: &LabHost) -> Result<String, libtest_mimic::Failed> {
    crate::common::sh(
        host,
        &format!(
            "stat -c '%n %a %U %G %i %s' /etc/sudoers.d/{USER} /home/{USER}/.ssh /home/{USER}/.ssh/authorized_keys; \
             getent passwd {USER}; getent shadow {USER}"
        ),
    )
}

/// h5 as the scenarios start it: no k3s running (reset as root if the up scenarios left it), no k3node user.
fn clean_host(lab: &Arc<Lab>, host: &LabHost) -> Outcome {
    let installed = crate::common::sh(host, "test -e /usr/local/bin/k3s && echo yes || echo no")?;
    if installed.trim() == "yes" {
        let op = Operator::new(lab, "provision-root");
        op.trust(&[host]);
        let file = op.cluster_file("", &[(host, "server", "")]);
        let out = op.k3node(&["reset", "-c", file.to_str().unwrap(), "--yes"]);
        ensure(out.status.success(), || {
            format!(
                "resetting the k3s the up scenarios left on {}: {}",
                host.name,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    }
    remove_user(host)
}

fn remove_user(host: &LabHost) -> Outcome {
    crate::common::sh(
        host,
        &format!(
            "if getent passwd {USER} >/dev/null; then pkill -KILL -u {USER} || true; userdel -r {USER} 2>/dev/null || userdel {USER}; fi; \
             rm -f /etc/sudoers.d/{USER}"
        ),
    )?;
    Ok(())
}

fn refuses_bad_input(lab: &Arc<Lab>) -> Outcome {
    let h5 = lab.host(HOST);
    clean_host(lab, h5)?;
    let key = client_public_key(lab);
    // A throwaway key pair: its private half is fed to the script as a user's mistake would be.
    let scratch = lab.dir().join("provision-keys");
    std::fs::create_dir_all(&scratch).unwrap();
    let throwaway = scratch.join("id_ed25519");
    let _ = std::fs::remove_file(&throwaway);
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "throwaway", "-f"])
        .arg(&throwaway)
        .output()
        .expect("ssh-keygen");
    ensure(made.status.success(), || String::from_utf8_lossy(&made.stderr).into_owned())?;
    let private = std::fs::read_to_string(&throwaway).unwrap();
    let secret_line = private.lines().nth(2).unwrap_or("-").to_string();

    let sudoers_before = crate::common::sh(h5, "ls -A /etc/sudoers.d")?;
    let cases: [(&str, Vec<&str>, &str); 6] = [
        ("ops", vec!["--key", &key], "must run as root"),
        ("root", vec![], "no public key given"),
        ("root", vec!["--key", "ssh-ed25519 AAAAnot-a-key lab"], "not a valid SSH public key"),
        ("root", vec!["--key", private.trim_end()], "that is a private key"),
        ("root", vec!["--key", &key, "--user", "root"], "--user root"),
        ("root", vec!["--key", &key, "--user", "Bad.Name"], "invalid user name"),
    ];
    for (login, args, expected) in cases {
        let (code, stdout, stderr) = bootstrap(lab, h5, login, &args);
        ensure(code == 1 && stderr.contains(expected), || {
            format!(
                "as {login} with {:?}: exit {code}, expected {expected:?}\nstdout: {stdout}\nstderr: {stderr}",
                args.first()
            )
        })?;
        ensure(!stdout.contains(&secret_line) && !stderr.contains(&secret_line), || {
            "the private key reached the script's output".into()
        })?;
    }
    ensure(!user_exists(h5)?, || format!("a refused run created the user {USER}"))?;
    let after = crate::common::sh(h5, "ls -A /etc/sudoers.d")?;
    ensure(after == sudoers_before, || format!("a refused run changed /etc/sudoers.d: {sudoers_before:?} -> {after:?}"))
}

fn bootstrap_then_up(lab: &Arc<Lab>) -> Outcome {
    let h5 = lab.host(HOST);
    clean_host(lab, h5)?;
    ensure(!user_exists(h5)?, || format!("{} already has a user {USER}", h5.name))?;
    let w = crate::up::world(lab);
    let op = Operator::new(lab, "provision");
    op.trust(&[h5]);
    let file = op.home.join("cluster.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: provisioned\nspec:\n  ssh:\n    user: {USER}\n    keyPath: {}\n    knownHosts: {}\n  hosts:\n    - name: {}\n      address: {}\n      role: server\n  k3s:\n    version: {}\n    source:\n      mirror: {}\n",
            lab.client_key().display(),
            op.known_hosts().display(),
            h5.name,
            h5.address,
            mirror::VERSION,
            w.mirror.url()
        ),
    )
    .unwrap();
    let result = (|| -> Outcome {
        let key = client_public_key(lab);
        let (code, stdout, stderr) = bootstrap(lab, h5, "root", &["--key", &key]);
        ensure(code == 0, || format!("first run: exit {code}\n{stdout}\n{stderr}"))?;
        for said in [format!("created user {USER}"), format!("installed /etc/sudoers.d/{USER}"), "done: ".into()] {
            ensure(stdout.contains(&said), || format!("first run does not say {said:?}:\n{stdout}"))?;
        }
        let before = footprint(h5)?;
        let (code, stdout, stderr) = bootstrap(lab, h5, "root", &["--key", &key]);
        ensure(code == 0 && stdout.contains("nothing to change"), || {
            format!("second run: exit {code}\n{stdout}\n{stderr}")
        })?;
        let after = footprint(h5)?;
        ensure(before == after, || format!("the second run changed files:\n{before}\n->\n{after}"))?;
        ensure(
            after.contains(&format!("/etc/sudoers.d/{USER} 440 root root"))
                && after.contains(&format!("/home/{USER}/.ssh 700 {USER} {USER}"))
                && after.contains(&format!("/home/{USER}/.ssh/authorized_keys 600 {USER} {USER}")),
            || format!("modes and owners:\n{after}"),
        )?;
        crate::common::sh(h5, &format!("visudo -cf /etc/sudoers.d/{USER}"))?;
        let whoami = h5.sh_as(USER, "id -un; sudo -n id -un").map_err(|e| format!("{e:#}"))?;
        ensure(whoami == format!("{USER}\nroot\n"), || format!("as {USER}, then through sudo: {whoami:?}"))?;

        // k3node as the new user: the host agent runs through sudo -n.
        let path = file.to_str().unwrap();
        let fix = op.k3node(&["preflight", "-c", path, "--fix"]);
        ensure(fix.status.code().is_some_and(|c| c <= 1), || String::from_utf8_lossy(&fix.stderr).into_owned())?;
        let (code, json, stderr) = op.k3node_json(&["preflight", "-c", path, "-o", "json"]);
        ensure(code == 0, || {
            format!("preflight as {USER} failed ({code}): {}\n{stderr}", host_entry(&json, HOST).unwrap_or(&json))
        })?;
        ensure(status(&json, HOST, "privileges") == "pass", || {
            format!("the agent did not run as root: {:?}", crate::common::check(&json, HOST, "privileges"))
        })?;
        let logins = crate::common::sh(
            h5,
            "journalctl -u ssh --no-pager -o cat | grep -c 'Accepted publickey for k3node' || true",
        )?;
        ensure(logins.trim().parse::<u32>().unwrap_or(0) > 0, || format!("sshd logged no login of {USER}"))?;
        let sudo_log = crate::common::sh(h5, "journalctl -t sudo --no-pager -o cat | grep 'k3node host' || true")?;
        ensure(sudo_log.contains(&format!("{USER} : ")) && sudo_log.contains("USER=root"), || {
            format!("sudo logged no k3node host agent run by {USER}:\n{sudo_log}")
        })?;

        let cache = op.home.join("cache");
        let (code, json, stderr) = op.k3node_json(&[
            "up",
            "-c",
            path,
            "-o",
            "json",
            "--ready-timeout",
            "90",
            "--cache-dir",
            cache.to_str().unwrap(),
        ]);
        ensure(code == 0, || format!("up as {USER} failed ({code}): {json}\n{stderr}"))?;
        let nodes = crate::common::sh(h5, "k3s kubectl get nodes -o json")?;
        let nodes: serde_json::Value = serde_json::from_str(&nodes).map_err(|e| format!("{e}: {nodes}"))?;
        let ready = nodes["items"].as_array().into_iter().flatten().any(|n| {
            n["metadata"]["name"] == HOST
                && n["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        ensure(ready, || format!("{HOST} is not a Ready node: {nodes}"))?;
        let kubeconfig =
            std::fs::read_to_string(op.home.join(".kube/config")).map_err(|e| format!("kubeconfig: {e}"))?;
        ensure(kubeconfig.contains(&format!("https://{}:6443", h5.address)), || kubeconfig.clone())?;
        let owner = crate::common::sh(h5, "stat -c '%U %a' /usr/local/bin/k3s /etc/rancher/k3s/config.yaml")?;
        ensure(owner.lines().all(|l| l.starts_with("root ")), || {
            format!("installed through sudo, owned by root: {owner}")
        })?;

        let out = op.k3node(&["reset", "-c", path, "--yes"]);
        ensure(out.status.success(), || format!("reset as {USER}: {}", String::from_utf8_lossy(&out.stderr)))?;
        let left = crate::common::sh(h5, "test -e /usr/local/bin/k3s && echo k3s-left || echo clean")?;
        ensure(left.trim() == "clean", || "reset as the bootstrapped user left k3s installed".into())
    })();
    let cleanup = remove_user(h5);
    result.and(cleanup)
}

fn cloud_init_command(lab: &Arc<Lab>) -> Outcome {
    let h5 = lab.host(HOST);
    clean_host(lab, h5)?;
    let text = std::fs::read_to_string(repo_file("provision/cloud-init.yaml")).unwrap();
    let data: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).map_err(|e| format!("cloud-init.yaml: {e}"))?;
    let file = &data["write_files"][0];
    let (path, content, permissions) = (
        file["path"].as_str().unwrap_or_default(),
        file["content"].as_str().unwrap_or_default(),
        file["permissions"].as_str().unwrap_or_default(),
    );
    let argv: Vec<String> = data["runcmd"][0]
        .as_sequence()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default();
    ensure(argv.len() == 5 && argv[0] == path, || format!("runcmd: {argv:?}"))?;
    let result = (|| -> Outcome {
        // write_files, as cloud-init does it: the content, the mode, root's.
        let out = ssh_with_stdin(
            lab,
            h5,
            "root",
            &format!("cat > {0} && chmod {permissions} {0} && chown root:root {0}", quote(path)),
            content.as_bytes(),
        );
        ensure(out.status.success(), || String::from_utf8_lossy(&out.stderr).into_owned())?;
        // Left as shipped, the placeholder is refused and nothing is created.
        let shipped: Vec<String> = argv.iter().map(|a| quote(a)).collect();
        let out = ssh_with_stdin(lab, h5, "root", &shipped.join(" "), b"");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        ensure(out.status.code() == Some(1) && stderr.contains("not a valid SSH public key"), || {
            format!("the unedited user-data: {:?}\n{stderr}", out.status.code())
        })?;
        ensure(!user_exists(h5)?, || "the placeholder key created a user".into())?;
        // With the key filled in, as a user edits the file.
        let mut edited: Vec<String> = shipped[..4].to_vec();
        edited.push(quote(&client_public_key(lab)));
        let out = ssh_with_stdin(lab, h5, "root", &edited.join(" "), b"");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure(out.status.success() && stdout.contains(&format!("created user {USER}")), || {
            format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr))
        })?;
        let whoami = h5.sh_as(USER, "sudo -n id -un").map_err(|e| format!("{e:#}"))?;
        ensure(whoami.trim() == "root", || format!("sudo as {USER}: {whoami}"))
    })();
    let cleanup = remove_user(h5).and(crate::common::sh(h5, &format!("rm -f {}", quote(path))).map(|_| ()));
    result.and(cleanup)
}
