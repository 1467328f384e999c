//! What a new user meets at the command line before any host is involved: where the cluster
//! file is looked for, shell completions and the man page, and plain text off a terminal.

use std::path::Path;
use std::process::{Command, Output};

fn k3node(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_k3node"))
        .args(args)
        .current_dir(dir)
        .env_remove("K3NODE_LOG")
        .env_remove("RUST_LOG")
        .output()
        .expect("k3node runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn up_and_preflight_without_a_cluster_file_say_where_they_looked_and_what_to_do_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for command in ["up", "preflight"] {
        let out = k3node(dir.path(), &[command]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(stderr.contains("./cluster.yaml does not exist"), "{command}: {stderr}");
        assert!(
            stderr.contains("-c FILE") && stderr.contains("`k3node init`") && stderr.contains("--local"),
            "{command}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{command}: nothing on stdout: {}", text(&out.stdout));
    }
    // With the starter file in place, the same folder is read without -c.
    assert!(k3node(dir.path(), &["init"]).status.success());
    let out = k3node(dir.path(), &["validate"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "cluster.yaml: valid: cluster lab, 2 hosts: 1 server, 1 agent\n");
}

#[test]
fn completions_for_each_shell_and_the_man_page_name_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let bash = k3node(dir.path(), &["completions", "bash"]);
    assert!(bash.status.success() && text(&bash.stdout).contains("complete -F _k3node"), "{}", text(&bash.stderr));
    let zsh = k3node(dir.path(), &["completions", "zsh"]);
    assert!(zsh.status.success() && text(&zsh.stdout).starts_with("#compdef k3node"));
    let man = text(&k3node(dir.path(), &["man"]).stdout);
    assert!(man.contains(".TH k3node 1"), "{man}");
    for command in ["up", "preflight", "reset", "snapshot", "restore", "images", "status"] {
        assert!(man.contains(&format!("k3node\\-{command}")), "{command} missing from the man page");
    }
}

#[test]
fn errors_off_a_terminal_are_plain_text_with_the_place_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: Bad\n",
    )
    .unwrap();
    let out = k3node(dir.path(), &["validate", "-c", "bad.yaml"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "no terminal escape codes in a pipe: {stderr:?}");
    assert!(stderr.contains("bad.yaml:4:9: metadata.name: \"Bad\" is not a valid cluster name"), "{stderr}");
    assert!(stderr.contains("hint: use a DNS-1123 label"), "{stderr}");
}

#[test]
fn log_levels_follow_v_flags_and_k3node_log_on_stderr_only() {
    let dir = tempfile::tempdir().unwrap();
    // preflight --local checks this machine without changing it: a run that logs at every level.
    let run = |args: &[&str], env: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_k3node"));
        cmd.args(["preflight", "--local", "-o", "json"]).args(args).current_dir(dir.path());
        cmd.env_remove("K3NODE_LOG").env_remove("RUST_LOG");
        if let Some(filter) = env {
            cmd.env("K3NODE_LOG", filter);
        }
        let out = cmd.output().expect("k3node runs");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: stdout is the JSON report alone ({e}): {}", text(&out.stdout)));
        assert_eq!(json["command"], "preflight", "{args:?}");
        text(&out.stderr)
    };
    let levels = |stderr: &str| (stderr.contains(" INFO "), stderr.contains(" DEBUG "));
    assert_eq!(levels(&run(&[], None)), (false, false), "quiet by default");
    assert_eq!(levels(&run(&["-v"], None)), (true, false), "-v: info");
    let debug = run(&["-vv"], None);
    assert_eq!(levels(&debug), (true, true), "-vv: debug");
    assert!(debug.contains("k3node::operator::engine"), "the engine's phases are logged: {debug}");
    assert_eq!(levels(&run(&[], Some("k3node=debug"))), (true, true), "K3NODE_LOG without -v");
}
