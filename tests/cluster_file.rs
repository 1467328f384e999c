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
    assert!(!f.k3s.airgap_images, "the airgap images bundle only when asked for");
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
    assert!(f.k3s.airgap_images);
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
        .chain(cluster::k3s_config::DEPRECATED.iter().map(|(k, _)| *k))
        .chain(cluster::MANAGED_ENV.iter().map(|(k, _)| *k))
        .chain(cluster::CLUSTER_WIDE_KEYS.iter().copied())
        .filter(|k| !text.contains(&format!("`{k}`")))
        .collect();
    missing.sort();
    assert!(missing.is_empty(), "{name} does not mention: {missing:?}");
}

// ---------------------------------------------------------------------------------------------
// Hostile input: findings of fuzzing `k3node validate -c FILE`. Whatever the bytes, the result
// is a diagnostic with a position (or a read error) and exit status 2, never a crash or a hang.
// ---------------------------------------------------------------------------------------------

const MINIMAL: &str = "apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: lab\nspec:\n  hosts:\n    - name: server-1\n      address: 192.168.56.10\n      role: server\n";

/// The diagnostics of an invalid file, rendered.
fn refusal(result: Result<ClusterFile, LoadError>) -> String {
    match result {
        Ok(f) => panic!("accepted: {f:?}"),
        Err(LoadError::Invalid(d)) => d.to_string(),
        Err(other) => panic!("not a diagnostic: {other}"),
    }
}

fn k3node() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_k3node"))
}

/// Runs the binary, killing it if it has not finished within `limit` (a hang is a failure, not
/// a stuck test run).
fn run_within(
    mut cmd: std::process::Command,
    stdin: Option<&[u8]>,
    limit: std::time::Duration,
) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("k3node runs");
    if let Some(bytes) = stdin {
        child.stdin.take().expect("stdin").write_all(bytes).expect("write stdin");
    }
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            panic!("k3node {:?} did not finish within {limit:?}", cmd.get_args().collect::<Vec<_>>());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn validate(path: &Path) -> std::process::Output {
    let mut cmd = k3node();
    cmd.arg("validate").arg("-c").arg(path);
    run_within(cmd, None, std::time::Duration::from_secs(20))
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn block_nesting_twenty_thousand_deep_is_refused_with_its_line_instead_of_overflowing_the_stack() {
    let deep = "- ".repeat(20_000);
    let bare = refusal(cluster::parse("deep.yaml", Path::new("/"), &deep));
    assert!(bare.starts_with("deep.yaml:1:129: lists and mappings are nested more than 64 levels deep here"), "{bare}");
    let taints = format!("{MINIMAL}      taints:\n        {deep}\n");
    let in_taints = refusal(cluster::parse("taints.yaml", Path::new("/"), &taints));
    assert!(in_taints.starts_with("taints.yaml:11:"), "{in_taints}");
    let kubelet = format!("{MINIMAL}  k3s:\n    config:\n      kubelet-arg:\n        {deep}\n");
    let in_kubelet = refusal(cluster::parse("kubelet.yaml", Path::new("/"), &kubelet));
    assert!(in_kubelet.starts_with("kubelet.yaml:13:") && in_kubelet.contains("nested more than 64"), "{in_kubelet}");
    // Flow nesting the same way, below the scanner's own limit of 255.
    let flow = format!("{MINIMAL}      taints: {}\n", "[".repeat(200));
    assert!(refusal(cluster::parse("flow.yaml", Path::new("/"), &flow)).contains("nested more than 64"));

    // The binary, whose main thread has the stack the finding overflowed: exit 2, not 134.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("deep.yaml");
    std::fs::write(&path, deep).expect("write");
    let out = validate(&path);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("deep.yaml:1:129: lists and mappings are nested"), "{}", stderr(&out));
}

#[test]
fn bare_cr_crlf_and_lf_line_endings_are_read_the_same() {
    let two_documents = format!("{MINIMAL}---\nfoo: 1\n");
    let mut rendered = Vec::new();
    for ending in ["\n", "\r\n", "\r"] {
        let bytes = two_documents.replace('\n', ending);
        let out = refusal(cluster::parse_bytes("c.yaml", Path::new("/"), bytes.as_bytes()));
        rendered.push(out);
    }
    assert!(rendered[0].starts_with("c.yaml:10:1: a second YAML document starts here"), "{}", rendered[0]);
    assert_eq!(rendered[1], rendered[0], "CRLF");
    assert_eq!(rendered[2], rendered[0], "bare CR");
    // And a valid file is valid with every ending, with the same positions for its errors.
    let bad_port = format!("{MINIMAL}      ssh:\n        port: 0\n");
    for ending in ["\r\n", "\r"] {
        assert!(cluster::parse("ok.yaml", Path::new("/"), &MINIMAL.replace('\n', ending)).is_ok());
        let out = refusal(cluster::parse("p.yaml", Path::new("/"), &bad_port.replace('\n', ending)));
        assert!(out.starts_with("p.yaml:11:15: spec.hosts[0].ssh.port:"), "{out}");
    }
}

#[test]
fn utf16_and_utf32_files_are_refused_naming_their_encoding() {
    let utf16le: Vec<u8> = [0xFF, 0xFE].into_iter().chain(MINIMAL.encode_utf16().flat_map(u16::to_le_bytes)).collect();
    let utf16be: Vec<u8> = MINIMAL.encode_utf16().flat_map(u16::to_be_bytes).collect();
    let utf32le: Vec<u8> =
        [0xFF, 0xFE, 0, 0].into_iter().chain(MINIMAL.chars().flat_map(|c| (c as u32).to_le_bytes())).collect();
    for (bytes, encoding) in [
        (utf16le, "UTF-16 (little-endian, with a byte-order mark)"),
        (utf16be, "UTF-16 (big-endian)"),
        (utf32le, "UTF-32 (little-endian, with a byte-order mark)"),
    ] {
        let out = refusal(cluster::parse_bytes("enc.yaml", Path::new("/"), &bytes));
        assert!(
            out.starts_with(&format!("enc.yaml:1:1: the file is {encoding}, but a cluster file must be UTF-8")),
            "{out}"
        );
    }
}

#[test]
fn bytes_that_are_not_utf8_are_refused_with_their_offset_and_line() {
    // A `!!binary` value pasted as raw bytes, and a Latin-1 é.
    let mut binary = format!("{MINIMAL}      labels:\n        blob: ").into_bytes();
    binary.extend_from_slice(&[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A]);
    let out = refusal(cluster::parse_bytes("bin.yaml", Path::new("/"), &binary));
    let offset = MINIMAL.len() + "      labels:\n        blob: ".len();
    assert!(
        out.starts_with(&format!("bin.yaml:11:15: not valid UTF-8: byte 0x89 at offset {offset} (line 11, column 15)")),
        "{out}"
    );
    let latin1 = refusal(cluster::parse_bytes("l1.yaml", Path::new("/"), b"apiVersion: caf\xe9\n"));
    assert!(latin1.starts_with("l1.yaml:1:16: not valid UTF-8: byte 0xE9 at offset 15"), "{latin1}");
    // NUL would end the YAML scanner's input early: what follows it must not be ignored.
    let nul = refusal(cluster::parse_bytes("nul.yaml", Path::new("/"), format!("{MINIMAL}\0---\nfoo: 1\n").as_bytes()));
    assert!(nul.starts_with("nul.yaml:10:1: control character NUL"), "{nul}");
}

#[test]
fn what_is_not_a_regular_file_is_refused_without_blocking_or_reading_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("cluster.yaml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let lo = dir.path().join("loop-a");
    std::os::unix::fs::symlink(dir.path().join("loop-b"), &lo).expect("symlink");
    std::os::unix::fs::symlink(&lo, dir.path().join("loop-b")).expect("symlink");
    let cases: [(&Path, &str); 6] = [
        (&fifo, "is a named pipe (FIFO), not a cluster file; to read the cluster file from a pipe, pass `-c -`"),
        (Path::new("/dev/zero"), "/dev/zero is a character device, not a cluster file"),
        (Path::new("/dev/urandom"), "/dev/urandom is a character device, not a cluster file"),
        (dir.path(), "is a directory, not a cluster file"),
        (&lo, "Too many levels of symbolic links"),
        (&dir.path().join("missing.yaml"), "No such file or directory"),
    ];
    for (path, expected) in cases {
        let err = cluster::load(path).expect_err("refused");
        assert!(err.to_string().contains(expected), "{}: {err}", path.display());
        let out = validate(path);
        assert_eq!(out.status.code(), Some(2), "{}: {}", path.display(), stderr(&out));
        assert!(stderr(&out).contains(expected), "{}", stderr(&out));
    }
}

#[test]
fn a_file_larger_than_one_mebibyte_is_refused_before_it_is_read_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big.yaml");
    let big = format!("{MINIMAL}# {}\n", "x".repeat(cluster::MAX_FILE_SIZE as usize));
    std::fs::write(&path, &big).expect("write");
    match cluster::load(&path) {
        Err(LoadError::TooLarge { size, .. }) => assert_eq!(size, big.len() as u64),
        other => panic!("{other:?}"),
    }
    let out = validate(&path);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is larger than 1024 KiB"), "{}", stderr(&out));
    // Through stdin the cap holds as well, without a size to look at first.
    let mut cmd = k3node();
    cmd.args(["validate", "-c", "-"]);
    let out = run_within(cmd, Some(big.as_bytes()), std::time::Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("- is larger than 1024 KiB"), "{}", stderr(&out));
}

#[test]
fn the_cluster_file_can_be_read_from_stdin() {
    let mut cmd = k3node();
    cmd.args(["validate", "-c", "-"]);
    let out = run_within(cmd, Some(MINIMAL.as_bytes()), std::time::Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "<stdin>: valid: cluster lab, 1 host: 1 server, 0 agents\n");
    let mut cmd = k3node();
    cmd.args(["validate", "-c", "-"]);
    let out = run_within(
        cmd,
        Some(MINIMAL.replace("192.168.56.10", "192.168.56.300").as_bytes()),
        std::time::Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).starts_with("error: <stdin>:8:16: spec.hosts[0].address:"), "{}", stderr(&out));
}

#[test]
fn a_newline_in_the_file_name_is_escaped_so_each_diagnostic_stays_on_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("evil\nname\u{1b}[2J.yaml");
    std::fs::write(&path, MINIMAL.replace("server-1", "Server-1")).expect("write");
    let out = validate(&path);
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    let first = text.lines().next().expect("a line");
    assert!(first.contains("evil\\nname\\u{1b}[2J.yaml:7:13: spec.hosts[0].name:"), "{text}");
    assert!(!text.contains('\u{1b}'), "{text:?}");
    let ok = dir.path().join("ok\n.yaml");
    std::fs::write(&ok, MINIMAL).expect("write");
    let out = validate(&ok);
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok\\n.yaml: valid"), "{out:?}");
}

#[test]
fn half_a_million_bad_list_items_give_a_short_report_in_linear_time() {
    let items = 500_000 / 2;
    let file = format!("{MINIMAL}      taints: [{}x]\n", "x,".repeat(items));
    assert!(file.len() as u64 <= cluster::MAX_FILE_SIZE);
    let started = std::time::Instant::now();
    let LoadError::Invalid(d) = cluster::parse("big.yaml", Path::new("/"), &file).expect_err("invalid") else {
        panic!("not a diagnostic")
    };
    let elapsed = started.elapsed();
    assert_eq!(d.len() + d.omitted(), items + 1);
    assert_eq!(d.len(), cluster::MAX_KEPT_DIAGNOSTICS);
    let text = d.to_string();
    // Each shown diagnostic has a hint line; then one line for the rest.
    assert_eq!(text.lines().count(), 2 * cluster::MAX_SHOWN_DIAGNOSTICS + 1, "{text}");
    assert!(text.ends_with(&format!(
        "... and {} more (fix the ones above and run again)",
        items + 1 - cluster::MAX_SHOWN_DIAGNOSTICS
    )));
    // Unoptimized build on a shared machine: generous, but far below what a quadratic pass takes.
    assert!(elapsed < std::time::Duration::from_secs(30), "{elapsed:?}");
}

#[test]
fn a_cidr_with_host_bits_is_accepted_with_a_warning_naming_the_network_k3s_uses() {
    let f = parse_file(&corpus("valid").join("cidr-host-bits.yaml")).expect("valid");
    let warnings: Vec<String> = f.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "cidr-host-bits.yaml:12:21: warning: spec.k3s.config.cluster-cidr: 10.42.0.1/16 has host bits set; k3s will use the network 10.42.0.0/16\n  hint: write 10.42.0.0/16 to say what k3s does",
            "cidr-host-bits.yaml:13:21: warning: spec.k3s.config.service-cidr: 10.43.7.0/16 has host bits set; k3s will use the network 10.43.0.0/16\n  hint: write 10.43.0.0/16 to say what k3s does",
        ]
    );
    assert!(f.warnings.iter().all(|w| w.severity == cluster::Severity::Warning));
    assert_eq!(f.k3s.cluster_dns(), "10.43.0.10");
    // validate prints them on stderr and still succeeds.
    let out = validate(&corpus("valid").join("cidr-host-bits.yaml"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: spec.k3s.config.cluster-cidr: 10.42.0.1/16 has host bits set"),
        "{}",
        stderr(&out)
    );
}

// ---------------------------------------------------------------------------------------------
// Keys of the current k3s, extraConfig and env.
// ---------------------------------------------------------------------------------------------

#[test]
fn keys_of_the_installed_k3s_and_the_escape_hatches_are_read_with_a_warning_per_unchecked_key() {
    let f = parse_file(&corpus("valid").join("escape-hatches.yaml")).expect("valid");
    let c = &f.k3s.config;
    assert_eq!(c["supervisor-metrics"], json!(true));
    assert_eq!(c["etcd-s3-timeout"], json!("5m0s"));
    assert_eq!(c["service-node-port-range"], json!("30000-32000"));
    let extra = &f.k3s.extra_config;
    assert_eq!(extra["secrets-encryption-provider"], json!("secretbox"));
    assert_eq!(extra["kube-apiserver-burst"], json!(400));
    assert_eq!(extra["feature-gate-x"], json!(false));
    assert_eq!(extra["extra-list"], json!(["a", "b", 3]));
    let server = f.host("server-1").expect("server-1");
    assert_eq!(server.extra_config["flannel-iface"], json!("enp0s8"));
    assert_eq!(server.extra_config["kube-apiserver-arg"], json!(["audit-log-maxage=30"]));
    let agent = f.host("agent-1").expect("agent-1");
    assert_eq!(f.extra_config_for(agent)["etcd-snapshot-reconcile-interval"], json!("5m"), "the host's value wins");
    assert_eq!(f.extra_config_for(server)["etcd-snapshot-reconcile-interval"], json!("10m"));

    let unchecked: Vec<String> = f
        .warnings
        .iter()
        .filter(|w| w.message.ends_with("it is passed to k3s unchecked"))
        .map(|w| w.field.clone())
        .collect();
    assert_eq!(
        unchecked,
        [
            "spec.hosts[1].k3s.extraConfig.etcd-snapshot-reconcile-interval",
            "spec.k3s.extraConfig.secrets-encryption-provider",
            "spec.k3s.extraConfig.etcd-snapshot-reconcile-interval",
            "spec.k3s.extraConfig.etcd-s3-bucket-lookup-type",
            "spec.k3s.extraConfig.kube-apiserver-burst",
            "spec.k3s.extraConfig.feature-gate-x",
            "spec.k3s.extraConfig.extra-list",
        ]
    );
    let first = f.warnings.iter().find(|w| w.field == "spec.k3s.extraConfig.secrets-encryption-provider").unwrap();
    assert_eq!(
        first.to_string().lines().next().unwrap(),
        "escape-hatches.yaml:29:7: warning: spec.k3s.extraConfig.secrets-encryption-provider: `secrets-encryption-provider` is not a key k3node knows (its table follows k3s v1.31/v1.32); it is passed to k3s unchecked"
    );
    // The env values are secrets: kept, never shown.
    let env = &f.k3s.env;
    assert_eq!(env["HTTP_PROXY"].expose(), "http://proxy-user:s3cr3t-pw@proxy.example:3128");
    assert_eq!(env["K3S_ROOTLESS_MTU"].expose(), "1400");
    assert_eq!(env["EMPTY"].expose(), "");
    assert!(!format!("{f:?}").contains("s3cr3t"), "Debug shows no env value");
    assert!(!serde_json::to_string(&f).expect("json").contains("s3cr3t"), "JSON shows no env value");
    assert!(!f.warnings.to_string().contains("s3cr3t"));
    // registries.yaml: k3s's keys as pasted; its password kept as a secret, never shown.
    let registries = f.k3s.registries.as_ref().expect("spec.k3s.registries");
    assert_eq!(registries.mirrors["docker.io"].endpoint, ["https://mirror.example:5000"]);
    assert_eq!(registries.mirrors["docker.io"].rewrite["^library/(.*)"], "mirrored/$1");
    assert!(registries.mirrors.contains_key("*"));
    let rendered = registries.render(&f.name);
    let credentials: Vec<String> =
        k3node::protocol::secret::registries_secrets(&rendered).into_iter().map(|(_, v)| v).collect();
    assert_eq!(credentials, ["r3gistry-pw"]);
    assert!(rendered.contains("      password: r3gistry-pw\n"));
    assert!(!format!("{f:?}").contains("r3gistry") && !serde_json::to_string(&f).expect("json").contains("r3gistry"));
    // The agent, outside the k3s docs' private ranges and not covered by a NO_PROXY the user wrote:
    // no warning, since the user wrote none and the default covers it.
    let agent_env = f.env_for(agent);
    assert!(agent_env["NO_PROXY"].expose().ends_with(",203.0.113.21"), "{}", agent_env["NO_PROXY"].expose());
    assert!(agent_env["CONTAINERD_NO_PROXY"].expose().contains(".cluster.local"));
}

#[test]
fn escape_hatch_values_never_appear_in_diagnostics() {
    let err = parse_file(&corpus("invalid").join("escape-hatches.yaml")).expect_err("invalid");
    let text = err.to_string();
    assert!(!text.contains("s3cr3t") && !text.contains("line2"), "{text}");
}

#[test]
fn a_no_proxy_that_leaves_a_host_to_the_proxy_gets_a_warning() {
    let text = format!(
        "{MINIMAL}    - name: agent-1\n      address: 203.0.113.21\n      role: agent\n  k3s:\n    env:\n      HTTPS_PROXY: http://proxy:3128\n      NO_PROXY: 192.168.0.0/16\n"
    );
    let f = cluster::parse("np.yaml", Path::new("/"), &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        f.warnings.to_string(),
        "np.yaml:14:5: warning: spec.k3s.env.NO_PROXY: NO_PROXY does not cover the address of spec.hosts[1] (203.0.113.21): nodes would reach it through the proxy\n  hint: add the hosts' network (e.g. 192.168.0.0/16) or their addresses to NO_PROXY"
    );
    assert_eq!(f.env_for(&f.hosts[0])["NO_PROXY"].expose(), "192.168.0.0/16,10.42.0.0/16,10.43.0.0/16");
}

// ---------------------------------------------------------------------------------------------
// Key files: positions at load, existence checked apart from it.
// ---------------------------------------------------------------------------------------------

fn with_keys(dir: &Path) -> String {
    format!(
        "apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: lab\nspec:\n  ssh:\n    keyPath: keys/default\n    bastion:\n      address: jump.example\n      keyPath: {}/keys/jump\n  hosts:\n    - name: server-1\n      address: 192.168.56.10\n      role: server\n      ssh:\n        keyPath: ./keys/server-1\n    - name: agent-1\n      address: 192.168.56.11\n      role: agent\n      ssh:\n        bastion:\n          address: jump2.example\n          keyPath: keys\n",
        dir.display()
    )
}

#[test]
fn each_key_path_is_loaded_with_the_position_it_was_written_at() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = cluster::parse("keys.yaml", dir.path(), &with_keys(dir.path())).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(f.ssh.key_path_at.as_ref().map(ToString::to_string).as_deref(), Some("keys.yaml:7:14"));
    let jump = f.ssh.bastion.as_ref().expect("bastion");
    assert_eq!(jump.key_path_at.as_ref().map(ToString::to_string).as_deref(), Some("keys.yaml:10:16"));
    let server = f.host("server-1").expect("server-1");
    assert_eq!(server.key_path_at(&f.ssh).map(ToString::to_string).as_deref(), Some("keys.yaml:16:18"));
    let agent = f.host("agent-1").expect("agent-1");
    assert_eq!(agent.key_path_at(&f.ssh), f.ssh.key_path_at.as_ref(), "the default's position for the default's file");
    assert_eq!(
        agent.bastion(&f.ssh).and_then(|b| b.key_path_at.as_ref()).map(ToString::to_string).as_deref(),
        Some("keys.yaml:23:20")
    );
}

#[test]
fn missing_or_unusable_key_files_are_reported_at_their_key_path_setting() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("keys")).expect("mkdir");
    std::fs::write(dir.path().join("keys/default"), "key").expect("write");
    let f = cluster::parse("keys.yaml", dir.path(), &with_keys(dir.path())).unwrap_or_else(|e| panic!("{e}"));
    let found = cluster::check_key_files(&f);
    let keys = dir.path().join("keys");
    assert_eq!(
        found.iter().map(|d| d.to_string().lines().next().unwrap().to_string()).collect::<Vec<_>>(),
        [
            format!("keys.yaml:10:16: spec.ssh.bastion.keyPath: key file {}/jump does not exist", keys.display()),
            format!("keys.yaml:16:18: spec.hosts[0].ssh.keyPath: key file {}/server-1 does not exist", keys.display()),
            format!("keys.yaml:23:20: spec.hosts[1].ssh.bastion.keyPath: key file {} is a directory", keys.display()),
        ]
    );
    // All present: nothing to say.
    std::fs::write(keys.join("jump"), "key").expect("write");
    std::fs::write(keys.join("server-1"), "key").expect("write");
    let text = with_keys(dir.path()).replace("          keyPath: keys\n", "          keyPath: keys/default\n");
    let f = cluster::parse("keys.yaml", dir.path(), &text).unwrap_or_else(|e| panic!("{e}"));
    assert!(cluster::check_key_files(&f).is_empty());
}

#[test]
fn validate_reports_a_missing_key_file_with_exit_status_2_and_reads_stdin_relative_to_the_current_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!("{MINIMAL}      ssh:\n        keyPath: ./id_test\n");
    let mut cmd = k3node();
    cmd.args(["validate", "-c", "-"]).current_dir(dir.path());
    let out = run_within(cmd, Some(text.as_bytes()), std::time::Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let expected = format!(
        "error: <stdin>:11:18: spec.hosts[0].ssh.keyPath: key file {}/id_test does not exist",
        dir.path().display()
    );
    assert!(stderr(&out).starts_with(&expected), "{}", stderr(&out));

    std::fs::write(dir.path().join("id_test"), "key").expect("write");
    let mut cmd = k3node();
    cmd.args(["validate", "-c", "-"]).current_dir(dir.path());
    let out = run_within(cmd, Some(text.as_bytes()), std::time::Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn validate_reports_a_missing_or_directory_spec_images_archive_at_its_entry_with_exit_status_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("images")).expect("mkdir");
    let text = format!("{MINIMAL}  images:\n    - ./app.tar\n    - ./images\n");
    let validate = || {
        let mut cmd = k3node();
        cmd.args(["validate", "-c", "-"]).current_dir(dir.path());
        run_within(cmd, Some(text.as_bytes()), std::time::Duration::from_secs(20))
    };
    let out = validate();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let root = dir.path().display();
    let text_out = stderr(&out);
    assert!(
        text_out.contains(&format!("<stdin>:11:7: spec.images[0]: image archive {root}/app.tar does not exist"))
            && text_out.contains(&format!("<stdin>:12:7: spec.images[1]: image archive {root}/images is a directory")),
        "{text_out}"
    );

    std::fs::write(dir.path().join("app.tar"), "an archive").expect("write");
    std::fs::remove_dir(dir.path().join("images")).expect("rmdir");
    std::fs::write(dir.path().join("images"), "another").expect("write");
    let out = validate();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn many_long_unknown_keys_are_reported_in_linear_time_with_shortened_messages() {
    // Finding: "did you mean" compared every long key with every known key by edit distance,
    // quadratic in the key length: 100 keys of 5000 characters took 20 s.
    let keys: String = (0..200).map(|i| format!("      ? {}{i}\n      : 1\n", "a".repeat(5000))).collect();
    let text = format!("{MINIMAL}  k3s:\n    config:\n{keys}");
    assert!(text.len() as u64 <= cluster::MAX_FILE_SIZE);
    let started = std::time::Instant::now();
    let LoadError::Invalid(d) = cluster::parse("keys.yaml", Path::new("/"), &text).expect_err("invalid") else {
        panic!("not a diagnostic")
    };
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
    assert_eq!(d.len(), 200);
    let first = &d.0[0];
    assert_eq!((first.line, first.column), (12, 9));
    assert!(first.field.ends_with("... (4617 more characters)"), "{}", first.field);
    assert!(first.message.starts_with("unknown k3s config key `aaaa") && first.message.ends_with("more characters)"));
}

#[test]
fn up_and_restore_refuse_a_spec_images_archive_that_is_not_an_image_archive_before_connecting_with_exit_status_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("app.tar"), "not a tar at all").expect("write");
    std::fs::write(dir.path().join("snap.tar.zst"), "a snapshot").expect("write");
    // 192.0.2.1 is TEST-NET-1: nothing answers there, so reaching it would take the connect timeout.
    let text = MINIMAL.replace("192.168.56.10", "192.0.2.1") + "  images:\n    - ./app.tar\n";
    std::fs::write(dir.path().join("cluster.yaml"), text).expect("write");
    for command in [&["up"][..], &["restore", "--from", "snap.tar.zst", "--yes"]] {
        let mut cmd = k3node();
        cmd.args(command).args(["-c", "cluster.yaml", "--connect-timeout", "30"]).current_dir(dir.path());
        let started = std::time::Instant::now();
        let out = run_within(cmd, None, std::time::Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(2), "{command:?}: {}", stderr(&out));
        let text_out = stderr(&out);
        assert!(
            text_out.contains("cluster.yaml:11:7: spec.images:")
                && text_out.contains("app.tar")
                && text_out.contains("not a tar"),
            "{command:?}: {text_out}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{command:?} tried to connect first: {text_out}"
        );
    }
}
