//! A helper that runs on the hosts k3s supports: the lab host `old1` boots Debian bullseye
//! (glibc 2.31, like Debian 11, Ubuntu 20.04, RHEL 8), where the k3node these tests run (built
//! here, against a newer glibc) cannot start. That is told clearly; with the static (musl) build
//! of k3node named as the amd64 helper, preflight and up work there, k3s (the stand-in, static too)
//! included.
//!
//! The static builds are made by the test itself (`cargo build --target x86_64-unknown-linux-musl`,
//! needing Debian's musl-tools and the rustup target, which .ci/run installs); when they cannot be
//! built the trial fails saying so, never skips.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use libtest_mimic::Trial;

use crate::common::{ensure, host_entry, Operator, Outcome};
use crate::mirror;
use crate::support::Lab;

pub const HOST: &str = "old1";
const MUSL: &str = "x86_64-unknown-linux-musl";
/// The static stand-in is published as its own release, so the old host pins it.
const STATIC_VERSION: &str = "v1.31.4+k3s9";
const STATIC_SCENARIO: &str = "the_static_helper_runs_preflight_and_up_on_an_old_glibc_host";

pub fn trials(lab: &Arc<Lab>) -> Vec<Trial> {
    let t = |name: &str, f: fn(&Arc<Lab>) -> Outcome| {
        let lab = lab.clone();
        crate::common::timed(format!("portable::{name}"), move || f(&lab))
    };
    vec![
        t("a_dynamically_linked_helper_on_an_old_glibc_is_refused_naming_the_static_build", dynamic_refused),
        t(STATIC_SCENARIO, static_works),
    ]
}

/// Starts the static builds in the background when the run includes the scenario that needs them:
/// a fresh checkout's takes minutes of CPU, which the scenarios before it, mostly waiting on
/// their hosts, leave free. The scenario then waits for what is left of it.
pub fn prebuild(args: &libtest_mimic::Arguments) {
    let needed = format!("portable::{STATIC_SCENARIO}");
    let included = match &args.filter {
        None => true,
        Some(filter) if args.exact => *filter == needed,
        Some(filter) => needed.contains(filter.as_str()),
    };
    if included && !args.list {
        std::thread::spawn(static_builds);
    }
}

/// `target/x86_64-unknown-linux-musl/debug/{k3node,k3s-standin}`, built once per run, at low
/// priority (it runs beside the scenarios).
fn static_builds() -> Result<(PathBuf, PathBuf), String> {
    static BUILT: OnceLock<Result<(PathBuf, PathBuf), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let out = std::process::Command::new("nice")
                .args(["-n", "10", env!("CARGO")])
                .args(["build", "--locked", "--target", MUSL, "--bin", "k3node", "--bin", "k3s-standin"])
                .args(["-p", "k3node", "-p", "k3s-standin"])
                .env("CC_x86_64_unknown_linux_musl", "musl-gcc")
                .current_dir(root)
                .output()
                .map_err(|e| format!("cannot run cargo: {e}"))?;
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
                return Err(format!(
                    "the static build failed (it needs `apt-get install musl-tools` and `rustup target add {MUSL}`):\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
            let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
            let dir = target.join(MUSL).join("debug");
            Ok((dir.join("k3node"), dir.join("k3s-standin")))
        })
        .clone()
}

/// A one-server cluster on the old host, with the static release pinned (the stand-in built here
/// would not start there).
fn cluster_file(op: &Operator, mirror_url: &str) -> PathBuf {
    let path = op.cluster_file("", &[(op.lab.host(HOST), "server", "")]);
    let mut yaml = std::fs::read_to_string(&path).unwrap();
    yaml.push_str(&format!("  k3s:\n    version: {STATIC_VERSION}\n    source:\n      mirror: {mirror_url}\n"));
    std::fs::write(&path, yaml).unwrap();
    path
}

fn dynamic_refused(lab: &Arc<Lab>) -> Outcome {
    let op = Operator::new(lab, "portable-dynamic");
    let old = lab.host(HOST);
    op.trust(&[old]);
    let glibc = crate::common::sh(old, "ldd --version | head -1")?;
    ensure(glibc.contains("2.31"), || format!("{HOST} is not the old host: {glibc}"))?;
    let file = op.cluster_file("", &[(old, "server", "")]);
    let (code, json, stderr) = op.k3node_json(&["preflight", "-c", file.to_str().unwrap(), "-o", "json"]);
    let entry = host_entry(&json, HOST).cloned().unwrap_or_default();
    ensure(code == 1 && entry["error"]["kind"] == "helper-cannot-run", || format!("{entry}\n{stderr}"))?;
    let message = entry["error"]["message"].as_str().unwrap_or_default();
    ensure(message.contains("GLIBC") && message.contains("static (musl) build"), || message.to_string())?;
    // Nothing lasting was left: the check's temporary helper went with it.
    let left = crate::common::sh(old, "ls /usr/local/bin/k3node /run/k3node-helper.* 2>&1 || true")?;
    ensure(left.lines().all(|l| l.contains("No such file")), || format!("left on {HOST}: {left}"))
}

fn static_works(lab: &Arc<Lab>) -> Outcome {
    let (helper, standin) = static_builds()?;
    let w = crate::up::world(lab);
    let binary = std::fs::read(&standin).map_err(|e| format!("{}: {e}", standin.display()))?;
    let mut release = binary;
    release.extend_from_slice(format!("\nK3S_STANDIN_VERSION={STATIC_VERSION}\n").as_bytes());
    mirror::publish(&w.mirror.root, STATIC_VERSION, &release);

    let op = Operator::new(lab, "portable-static");
    let old = lab.host(HOST);
    op.trust(&[old]);
    let file = cluster_file(&op, &w.mirror.url());
    let file = file.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut cmd = lab.command_in_netns(Path::new(crate::common::K3NODE));
        cmd.args(args).env("HOME", &op.home).env("K3NODE_HELPER_AMD64", &helper).env_remove("SSH_AUTH_SOCK");
        let out = cmd.output().expect("run k3node");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        (out.status.code().unwrap_or(-1), json, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (_, json, stderr) = run(&["preflight", "-c", file, "-o", "json", "--fix"]);
    let entry = host_entry(&json, HOST).cloned().unwrap_or_default();
    ensure(entry.get("checks").is_some() && entry["helper"] == "installed", || format!("{entry}\n{stderr}"))?;
    let os = entry["checks"].as_array().and_then(|c| c.iter().find(|c| c["id"] == "os")).cloned().unwrap_or_default();
    ensure(os["reason"].as_str().is_some_and(|r| r.contains("11")), || format!("os check: {os}"))?;
    let (code, json, stderr) = run(&["up", "-c", file, "-o", "json", "--ready-timeout", "90"]);
    ensure(code == 0, || format!("up on {HOST}: {json}\n{stderr}"))?;
    let nodes = crate::common::sh(old, "k3s kubectl get nodes -o name")?;
    ensure(nodes.contains(&format!("node/{HOST}")), || format!("nodes on {HOST}: {nodes}"))?;
    // Leave the host as it was found.
    let (code, json, stderr) = run(&["reset", "-c", file, "--yes", "-o", "json"]);
    ensure(code == 0, || format!("reset of {HOST}: {json}\n{stderr}"))
}
