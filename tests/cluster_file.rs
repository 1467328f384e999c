//! The cluster file, through the public API only: a corpus of invalid files with the
//! diagnostics they must produce, valid files with the values they must yield, and the examples
//! in the README's cluster.yaml reference.

use std::path::{Path, PathBuf};

use k3node::cluster::{self, ArtifactSource, ClusterFile, HostKeyCheck, LoadError, Role};
use serde_json::json;

fn corpus(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(kind)
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    out.sort();
    out
}

fn file_name(p: &Path) -> String {
    p.file_name().expect("file name").to_string_lossy().into_owned()
}

/// Parses a corpus file the way the tests expect it named: by its bare file name.
fn parse_file(path: &Path) -> Result<ClusterFile, LoadError> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    cluster::parse(&file_name(path), path.parent().expect("parent"), &text)
}

fn home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").expect("HOME is set for the tests"))
}

#[test]
fn invalid_corpus_reports_expected_diagnostics() {
    let dir = corpus("invalid");
    let yamls = files(&dir, "yaml");
    assert!(yamls.len() >= 35, "only {} invalid files", yamls.len());
    let mut failures = Vec::new();
    for path in &yamls {
        let name = file_name(path);
        let expected_path = path.with_extension("expected");
        let Ok(expected) = std::fs::read_to_string(&expected_path) else {
            failures.push(format!("{name}: missing {}", file_name(&expected_path)));
            continue;
        };
        let rendered = match parse_file(path) {
            Ok(_) => {
                failures.push(format!("{name}: parsed as valid"));
                continue;
            }
            Err(LoadError::Invalid(d)) => {
                assert!(!d.is_empty(), "{name}: Invalid without diagnostics");
                for diag in d.iter() {
                    assert_eq!(diag.file, name);
                    assert!(diag.line >= 1 && diag.column >= 1, "{name}: {diag}");
                }
                d.to_string()
            }
            Err(other) => {
                failures.push(format!("{name}: unexpected error {other}"));
                continue;
            }
        };
        let lines: Vec<&str> = expected.lines().filter(|l| !l.trim().is_empty()).collect();
        match lines.first() {
            Some(first) if first.starts_with(&format!("{name}:")) => {}
            _ => failures.push(format!("{name}: the first expected line must start with `{name}:LINE:COL: field`")),
        }
        for line in lines {
            if !rendered.contains(line) {
                failures.push(format!("{name}: missing {line:?}\n--- got:\n{rendered}\n---"));
            }
        }
    }
    for expected in files(&dir, "expected") {
        if !expected.with_extension("yaml").exists() {
            failures.push(format!("{}: no matching .yaml", file_name(&expected)));
        }
    }
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let err = parse_file(&corpus("invalid").join("many-errors.yaml")).expect_err("invalid");
    let LoadError::Invalid(d) = err else { panic!("{err}") };
    assert_eq!(d.len(), 6, "{d}");
    // In file order.
    let lines: Vec<usize> = d.iter().map(|x| x.line).collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted);
    let first = &d.0[0];
    assert_eq!((first.line, first.column, first.field.as_str()), (7, 11, "spec.ssh.port"));
}

#[test]
fn valid_corpus_parses() {
    let yamls = files(&corpus("valid"), "yaml");
    assert!(yamls.len() >= 4);
    for path in yamls {
        if let Err(e) = parse_file(&path) {
            panic!("{}:\n{e}", file_name(&path));
        }
    }
}

#[test]
fn minimal_file_gets_every_default() {
    let f = parse_file(&corpus("valid").join("minimal.yaml")).expect("valid");
    assert_eq!(f.name, "solo");
    assert_eq!(f.source, corpus("valid").join("minimal.yaml"));
    assert_eq!(f.ssh.user, "root");
    assert_eq!(f.ssh.port, 22);
    assert_eq!(f.ssh.key_path, None);
    assert_eq!(f.ssh.known_hosts, home().join(".ssh/known_hosts"));
    let default_config = home().join(".ssh/config");
    assert_eq!(f.ssh.config_file, default_config.is_file().then_some(default_config));
    assert_eq!(f.ssh.host_key_check, HostKeyCheck::Strict);
    assert_eq!(f.ssh.bastion, None);
    let h = &f.hosts[0];
    assert_eq!((h.name.as_str(), h.address.as_str(), h.role), ("server-1", "192.168.56.10", Role::Server));
    assert_eq!(h.ssh_user(&f.ssh), "root");
    assert_eq!(h.ssh_port(&f.ssh), 22);
    assert_eq!(h.key_path(&f.ssh), None);
    assert!(h.labels.is_empty() && h.taints.is_empty());
    assert_eq!(f.k3s.version, None);
    assert_eq!(f.k3s.channel.as_deref(), Some("stable"));
    assert_eq!(f.k3s.source, ArtifactSource::Release { url: "https://github.com/k3s-io/k3s/releases/download".into() });
    assert!(f.k3s.config.is_empty());
    assert_eq!(f.k3s.cluster_cidr(), "10.42.0.0/16");
    assert_eq!(f.k3s.service_cidr(), "10.43.0.0/16");
    assert_eq!(f.k3s.cluster_dns(), "10.43.0.10");
    assert_eq!(f.servers().count(), 1);
    assert_eq!(f.agents().count(), 0);
    assert_eq!(f.backup.schedule, None, "no spec.backup: no timer");
    assert_eq!(f.backup.retention.keep_last, Some(cluster::DEFAULT_KEEP_LAST));
    assert_eq!(f.backup.pull_dir, corpus("valid").join("snapshots"));
}

#[test]
fn a_backup_schedule_retention_and_pull_dir_are_read_as_systemd_and_the_file_mean_them() {
    let dir = corpus("valid");
    let f = parse_file(&dir.join("backup.yaml")).expect("valid");
    assert_eq!(f.backup.schedule.as_deref(), Some("Mon..Fri *-*-* 02:30:00 UTC"));
    assert_eq!(f.backup.randomized_delay_secs, 5400);
    assert_eq!(f.backup.retention, cluster::Retention { keep_last: Some(7), keep_newer_than_secs: Some(14 * 86400) });
    assert_eq!(f.backup.pull_dir, dir.join("backups"), "relative to the cluster file's directory");
}

#[test]
fn vagrant_lab_overrides_and_paths() {
    let dir = corpus("valid");
    let f = parse_file(&dir.join("vagrant-lab.yaml")).expect("valid");
    assert_eq!(f.name, "lab");
    assert_eq!(f.ssh.user, "vagrant");
    // ~ is the operator's home.
    assert_eq!(f.ssh.key_path, Some(home().join(".vagrant.d/insecure_private_key")));

    let server = f.host("server-1").expect("server-1");
    assert_eq!(server.role, Role::Server);
    assert_eq!(server.ssh_user(&f.ssh), "vagrant");
    assert_eq!(server.ssh_port(&f.ssh), 22);
    // Relative paths start at the cluster file's directory.
    assert_eq!(server.key_path(&f.ssh), Some(dir.join(".vagrant/machines/server-1/virtualbox/private_key").as_path()));
    assert_eq!(server.labels.get("example.com/rack").map(String::as_str), Some("r1"));

    let agent = f.host("agent-1").expect("agent-1");
    assert_eq!(agent.role, Role::Agent);
    assert_eq!(agent.ssh_user(&f.ssh), "root");
    assert_eq!(agent.ssh_port(&f.ssh), 2222);
    assert_eq!(agent.key_path(&f.ssh), Some(dir.join("keys/agent-1").as_path()));
    assert_eq!(agent.labels.get("tier").map(String::as_str), Some("db"));
    assert_eq!(agent.labels.get("enabled").map(String::as_str), Some("true"));
    assert_eq!(agent.labels.get("node.kubernetes.io/pool").map(String::as_str), Some(""));
    assert_eq!(agent.taints, vec!["dedicated=db:NoSchedule", "example.com/maintenance:PreferNoSchedule"]);
    assert_eq!(f.host("nope"), None);
    assert_eq!(f.servers().map(|h| h.name.as_str()).collect::<Vec<_>>(), ["server-1"]);
    assert_eq!(f.agents().map(|h| h.name.as_str()).collect::<Vec<_>>(), ["agent-1"]);

    assert_eq!(f.k3s.version.as_deref(), Some("v1.31.4+k3s1"));
    assert_eq!(f.k3s.channel, None);
    let c = &f.k3s.config;
    assert_eq!(c["disable"], json!(["traefik"]));
    assert_eq!(c["write-kubeconfig-mode"], json!("0644"));
    assert_eq!(c["kube-apiserver-arg"], json!(["request-timeout=300s"]));
    assert_eq!(c["tls-san"], json!(["k3s.lab.example", "192.168.56.10"]));
    assert_eq!(f.k3s.cluster_cidr(), "10.42.0.0/16");
    assert_eq!(f.k3s.service_cidr(), "10.43.0.0/16");
    assert_eq!(f.k3s.cluster_dns(), "10.43.0.10");
}

#[test]
fn ha_airgap_bastions_and_dual_stack() {
    let dir = corpus("valid");
    let f = parse_file(&dir.join("ha-airgap.yaml")).expect("valid");
    assert_eq!(f.servers().count(), 3);
    assert_eq!(f.agents().count(), 1);
    assert_eq!(f.ssh.host_key_check, HostKeyCheck::AcceptNew);
    assert_eq!(f.ssh.known_hosts, dir.join("known_hosts"));
    assert_eq!(f.ssh.port, 2200);

    let default_bastion = f.ssh.bastion.as_ref().expect("bastion");
    assert_eq!(default_bastion.address, "bastion.example.com");
    assert_eq!(default_bastion.port, 22);
    assert_eq!(default_bastion.user, None);
    assert_eq!(default_bastion.user_or(&f.ssh), "ops");
    let cp1 = f.host("cp-1.prod").expect("cp-1");
    assert_eq!(cp1.bastion(&f.ssh), Some(default_bastion));
    assert_eq!(cp1.ssh_port(&f.ssh), 2200);
    let cp3 = f.host("cp-3.prod").expect("cp-3");
    assert_eq!(cp3.address, "fd00:10::13");
    let own = cp3.bastion(&f.ssh).expect("own bastion");
    assert_eq!((own.address.as_str(), own.user.as_deref(), own.port), ("198.51.100.7", Some("jump"), 2022));
    assert_eq!(own.key_path, Some(home().join(".ssh/jump")));

    assert_eq!(f.k3s.channel.as_deref(), Some("v1.31"));
    assert_eq!(f.k3s.source, ArtifactSource::AirgapDir { path: dir.join("../bundles/k3s") });
    let c = &f.k3s.config;
    assert_eq!(c["cluster-cidr"], json!("10.244.0.0/16,fd00:244::/56"));
    assert_eq!(c["service-cidr"], json!("10.96.0.0/12,fd00:96::/112"));
    assert_eq!(c["disable"], json!(["servicelb"]));
    assert_eq!(c["kubelet-arg"], json!(["max-pods=150"]));
    assert_eq!(c["secrets-encryption"], json!(true));
    assert_eq!(c["protect-kernel-defaults"], json!(false));
    assert_eq!(c["etcd-snapshot-retention"], json!(10));
    assert_eq!(c["https-listen-port"], json!(6443));
    assert_eq!(f.k3s.cluster_cidr(), "10.244.0.0/16,fd00:244::/56");
    // k3s's own default for cluster-dns: the 10th address of the service CIDR.
    assert_eq!(f.k3s.cluster_dns(), "10.96.0.10");
}

#[test]
fn yaml_styles_are_all_the_same() {
    let dir = corpus("valid");
    let f = parse_file(&dir.join("yaml-styles.yaml")).expect("valid");
    assert_eq!(f.name, "styles");
    assert_eq!(f.ssh.user, "1000");
    assert_eq!(f.ssh.known_hosts, PathBuf::from("/etc/ssh/ssh_known_hosts"));
    assert_eq!(f.ssh.config_file, Some(dir.join("ssh_config")));
    assert_eq!(f.hosts.len(), 2);
    assert_eq!(f.k3s.version.as_deref(), Some("v1.30.2-rc1+k3s1"));
    // The trailing slash is dropped: the installer appends /<version>/<file>.
    assert_eq!(f.k3s.source, ArtifactSource::Mirror { url: "https://mirror.example/k3s/releases".into() });
}

#[test]
fn load_reads_the_file_and_resolves_against_its_directory() {
    let path = corpus("valid").join("vagrant-lab.yaml");
    let f = cluster::load(&path).expect("valid");
    assert_eq!(f.source, path);
    let agent = f.host("agent-1").expect("agent-1");
    assert_eq!(agent.key_path(&f.ssh), Some(corpus("valid").join("keys/agent-1").as_path()));

    // Diagnostics name the file as it was given.
    let bad = corpus("invalid").join("invalid-ip.yaml");
    let err = cluster::load(&bad).expect_err("invalid");
    let text = err.to_string();
    assert!(text.starts_with(&format!("{}:11:16: spec.hosts[1].address:", bad.display())), "{text}");

    let missing = corpus("valid").join("no-such-file.yaml");
    match cluster::load(&missing) {
        Err(LoadError::Read { path, .. }) => assert_eq!(path, missing),
        other => panic!("{other:?}"),
    }
}

#[test]
fn diagnostics_render_as_documented() {
    let text = "apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: lab\nspec:\n  hosts:\n    - name: server-1\n      address: 10.0.0.300\n      role: server\n";
    let err = cluster::parse("cluster.yaml", Path::new("/srv"), text).expect_err("invalid");
    let LoadError::Invalid(d) = err else { panic!("{err}") };
    assert_eq!(
        d.to_string(),
        "cluster.yaml:8:16: spec.hosts[0].address: \"10.0.0.300\" is not a valid IP address or DNS name"
    );
    let one = &d.0[0];
    assert_eq!((one.file.as_str(), one.line, one.column), ("cluster.yaml", 8, 16));
    assert_eq!(one.field, "spec.hosts[0].address");
    assert_eq!(one.hint, None);
}

#[test]
fn starter_file_is_valid() {
    let text = cluster::starter_file();
    let f = cluster::parse("cluster.yaml", Path::new("/srv/lab"), &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(f.servers().count(), 1);
    assert_eq!(f.agents().count(), 1);
}

/// The README, which holds the cluster.yaml reference.
fn reference_doc() -> (String, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(text.contains("<!-- cluster-reference -->"), "README.md lost its cluster.yaml reference");
    ("README.md".into(), text)
}

/// The ```yaml blocks of a markdown text, with the line each starts on.
fn yaml_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in markdown.lines().enumerate() {
        let fence = line.trim_start();
        match &mut current {
            None if fence.starts_with("```yaml") || fence.starts_with("```yml") => {
                current = Some((i + 2, String::new()))
            }
            Some(_) if fence.starts_with("```") => blocks.extend(current.take()),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
            None => {}
        }
    }
    blocks
}

#[test]
fn reference_examples_are_valid() {
    let (name, text) = reference_doc();
    let examples: Vec<(usize, String)> = yaml_blocks(&text)
        .into_iter()
        .filter(|(_, b)| b.lines().next() == Some("apiVersion: k3node.io/v1alpha1"))
        .collect();
    assert!(!examples.is_empty(), "{name} has no cluster.yaml example");
    for (line, block) in examples {
        if let Err(e) = cluster::parse("example.yaml", Path::new("/srv/lab"), &block) {
            panic!("{name}: the example at line {line} is invalid:\n{e}");
        }
    }
}

#[test]
fn reference_lists_every_k3s_config_key() {
    let (name, text) = reference_doc();
    let mut missing: Vec<&str> = cluster::k3s_config::KEYS
        .iter()
        .map(|k| k.name)
        .chain(cluster::k3s_config::MANAGED.iter().map(|(k, _)| *k))
        .filter(|k| !text.contains(&format!("`{k}`")))
        .collect();
    missing.sort();
    assert!(missing.is_empty(), "{name} does not mention: {missing:?}");
}
