//! The seed scenarios' files, checked without a lab: vagrant/ (through Vagrant's own Vagrantfile
//! loader, `vagrant validate`, and k3node's cluster-file loader), manifests/ (every document, and
//! kubectl's offline decoding), provision/ (shellcheck, cloud-init's YAML).
//!
//! Each test runs the real tool it needs and fails, naming the Debian package, when that tool is
//! missing: a skipped check would prove nothing. Vagrant runs with its home and machine state in a
//! temporary directory and its version check switched off, so the work tree and the network are
//! never touched.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use k3node::cluster::{self, ClusterFile, HostKeyCheck, Role};
use serde::Deserialize;
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn vagrant_dir() -> PathBuf {
    repo().join("vagrant")
}

/// The program `name` from PATH; a missing one fails the test with the package that provides it.
fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed, and this test needs it: apt-get install {package}"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------- vagrant/

/// Vagrant with a private home and machine-state directory, and no phoning home for updates.
fn vagrant_command(scratch: &Path, program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(vagrant_dir())
        .env("VAGRANT_HOME", scratch.join("vagrant-home"))
        .env("VAGRANT_DOTFILE_PATH", scratch.join("dot-vagrant"))
        .env("VAGRANT_CHECKPOINT_DISABLE", "1")
        .env_remove("K3NODE_CLUSTER_FILE")
        .env_remove("VAGRANT_CWD")
        .env_remove("VAGRANT_VAGRANTFILE");
    cmd
}

/// Asks Vagrant's own loader (the code `vagrant up` runs) what each machine of the Vagrantfile is.
/// The VirtualBox provider is not needed for that: its configuration is loaded, not executed.
const DESCRIBE_MACHINES: &str = r#"
require "json"
require "vagrant"
env = Vagrant::Environment.new(cwd: ARGV[0])
machines = env.machine_names.map do |name|
  config = env.vagrantfile.machine_config(name, :virtualbox, env.boxes, nil, false)[:config]
  vb = config.vm.get_provider_config(:virtualbox)
  {
    name: name.to_s,
    vm_box: config.vm.box,
    hostname: config.vm.hostname,
    private_networks: config.vm.networks.select { |type, _| type == :private_network }.map { |_, o| o[:ip] },
    vagrant_folder_disabled: config.vm.synced_folders.dig("/vagrant", :disabled) == true,
    insert_key: config.ssh.insert_key,
    modifyvm: vb.customizations.map { |_, argv| argv.map(&:to_s) },
  }
end
puts JSON.generate(machines)
"#;

#[derive(Debug, Deserialize)]
struct VagrantMachine {
    name: String,
    vm_box: String,
    hostname: String,
    private_networks: Vec<String>,
    vagrant_folder_disabled: bool,
    insert_key: bool,
    modifyvm: Vec<Vec<String>>,
}

impl VagrantMachine {
    /// The value given to `VBoxManage modifyvm <id> <flag> <value>`.
    fn modifyvm(&self, flag: &str) -> Option<u64> {
        let argv = self.modifyvm.iter().rev().find(|argv| argv.get(2).is_some_and(|f| f == flag))?;
        argv.get(3)?.parse().ok()
    }

    fn cpus(&self) -> u64 {
        self.modifyvm("--cpus").unwrap_or_else(|| panic!("{}: no CPU count set: {:?}", self.name, self.modifyvm))
    }

    fn memory_mib(&self) -> u64 {
        self.modifyvm("--memory").unwrap_or_else(|| panic!("{}: no memory set: {:?}", self.name, self.modifyvm))
    }

    /// Host CPU time the VM may use, in cores: CPUs times VirtualBox's execution cap.
    fn host_cores(&self) -> f64 {
        self.cpus() as f64 * self.modifyvm("--cpuexecutioncap").unwrap_or(100) as f64 / 100.0
    }
}

/// The machines the Vagrantfile defines, with `cluster_file` as K3NODE_CLUSTER_FILE when given.
fn vagrant_machines(cluster_file: Option<&Path>) -> Vec<VagrantMachine> {
    tool("vagrant", "vagrant");
    let ruby = tool("ruby", "ruby");
    let scratch = tempfile::tempdir().unwrap();
    let mut cmd = vagrant_command(scratch.path(), &ruby);
    cmd.arg("-e").arg(DESCRIBE_MACHINES).arg(vagrant_dir());
    if let Some(file) = cluster_file {
        cmd.env("K3NODE_CLUSTER_FILE", file);
    }
    let out = run(&mut cmd);
    assert!(out.status.success(), "Vagrant's loader failed ({}):\n{}", out.status, text(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("machines as JSON ({e}): {}\n{}", text(&out.stdout), text(&out.stderr)))
}

fn vagrant_cluster() -> ClusterFile {
    let path = vagrant_dir().join("cluster.yaml");
    cluster::load(&path).unwrap_or_else(|e| panic!("{}:\n{e}", path.display()))
}

/// The machines must be the cluster file's hosts: same names in the same order, each on its address.
fn assert_machines_are_hosts(machines: &[VagrantMachine], cluster: &ClusterFile) {
    let names: Vec<&str> = machines.iter().map(|m| m.name.as_str()).collect();
    let hosts: Vec<&str> = cluster.hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, hosts, "Vagrant's machines are not the cluster file's hosts");
    for (machine, host) in machines.iter().zip(&cluster.hosts) {
        assert_eq!(machine.hostname, host.name, "{}: the VM's hostname is not its node name", host.name);
        assert_eq!(machine.private_networks, vec![host.address.clone()], "{}: private network address", host.name);
    }
}

#[test]
fn vagrant_validate_accepts_the_vagrantfile() {
    let vagrant = tool("vagrant", "vagrant");
    let scratch = tempfile::tempdir().unwrap();
    // No provider can run here (no VirtualBox): --ignore-provider validates everything else.
    // K3NODE_UP=1 makes the after-up trigger run k3node: that variant must load as well.
    let chained =
        run(vagrant_command(scratch.path(), &vagrant).env("K3NODE_UP", "1").args(["validate", "--ignore-provider"]));
    assert!(chained.status.success(), "with K3NODE_UP=1: {}\n{}", text(&chained.stdout), text(&chained.stderr));
    let out = run(vagrant_command(scratch.path(), &vagrant).args(["validate", "--ignore-provider"]));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "vagrant validate failed ({}):\n{stdout}\n{}", out.status, text(&out.stderr));
    assert!(stdout.contains("Vagrantfile validated successfully"), "{stdout}");
    for host in &vagrant_cluster().hosts {
        assert!(
            stdout.contains(&format!("==> {}:", host.name)),
            "vagrant validate did not see {}:\n{stdout}",
            host.name
        );
    }
}

#[test]
fn vagrantfile_machines_are_the_cluster_file_hosts() {
    let cluster = vagrant_cluster();
    let machines = vagrant_machines(None);
    assert_machines_are_hosts(&machines, &cluster);
    for m in &machines {
        assert_eq!(m.vm_box, "debian/bookworm64", "{}", m.name);
        assert!(m.insert_key, "{}: Vagrant must generate the per-machine key cluster.yaml names", m.name);
        assert!(m.vagrant_folder_disabled, "{}: /vagrant would need guest additions the box lacks", m.name);
    }
    // Seed 004's layout: the server on .10, agents from .11 on.
    assert_eq!(cluster.servers().map(|h| h.address.as_str()).collect::<Vec<_>>(), ["192.168.56.10"]);
    let agents: Vec<&str> = cluster.agents().map(|h| h.address.as_str()).collect();
    assert_eq!(agents, ["192.168.56.11", "192.168.56.12"], "two agents by default");
}

#[test]
fn default_vms_fit_seed_000s_budget_and_k3s_minimums() {
    let cluster = vagrant_cluster();
    let machines = vagrant_machines(None);
    assert_machines_are_hosts(&machines, &cluster);
    for (m, host) in machines.iter().zip(&cluster.hosts) {
        // k3s's documented minimums (product.md, capability 3).
        let (cpus, mib) = match host.role {
            Role::Server => (2, 2048),
            Role::Agent => (1, 512),
        };
        assert!(m.cpus() >= cpus && m.memory_mib() >= mib, "{}: {} CPUs, {} MiB", m.name, m.cpus(), m.memory_mib());
    }
    let memory: u64 = machines.iter().map(VagrantMachine::memory_mib).sum();
    let cores: f64 = machines.iter().map(VagrantMachine::host_cores).sum();
    // Seed 000: "<8GB RAM, <4 CPU cores required".
    assert!(memory < 8 * 1024, "the VMs take {memory} MiB, seed 000's budget is under 8 GiB");
    assert!(cores < 4.0, "the VMs may use {cores} host cores, seed 000's budget is under 4");
}

/// A cluster file like vagrant/cluster.yaml with `agents` agents.
fn cluster_file_with_agents(dir: &Path, agents: usize) -> PathBuf {
    let mut yaml = String::from(
        "apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: bigger\nspec:\n  ssh:\n    user: vagrant\n  hosts:\n    - name: k3s-server\n      address: 192.168.56.10\n      role: server\n",
    );
    for i in 1..=agents {
        yaml.push_str(&format!(
            "    - name: k3s-agent-{i}\n      address: 192.168.56.{}\n      role: agent\n      ssh:\n        keyPath: .vagrant/machines/k3s-agent-{i}/virtualbox/private_key\n",
            10 + i
        ));
    }
    let path = dir.join("bigger.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

#[test]
fn vagrantfile_follows_the_cluster_file_when_agents_are_added() {
    let scratch = tempfile::tempdir().unwrap();
    let file = cluster_file_with_agents(scratch.path(), 3);
    let cluster = cluster::load(&file).unwrap_or_else(|e| panic!("the fixture must be a valid cluster file: {e}"));
    let machines = vagrant_machines(Some(&file));
    assert_machines_are_hosts(&machines, &cluster);
    assert_eq!(machines.len(), 4);
    assert_eq!(machines[3].private_networks, ["192.168.56.13"]);
}

#[test]
fn vagrantfile_refuses_a_cluster_file_it_cannot_use_and_names_the_field() {
    let vagrant = tool("vagrant", "vagrant");
    let scratch = tempfile::tempdir().unwrap();
    let cases = [
        ("no-server.yaml", "spec:\n  hosts:\n    - {name: a1, address: 192.168.56.11, role: agent}\n", "no host has role server"),
        (
            "outside.yaml",
            "spec:\n  hosts:\n    - {name: s1, address: 10.0.0.1, role: server}\n",
            "spec.hosts[0].address: 10.0.0.1 is outside VirtualBox's host-only range",
        ),
        (
            "twice.yaml",
            "spec:\n  hosts:\n    - {name: s1, address: 192.168.56.10, role: server}\n    - {name: s1, address: 192.168.56.11, role: agent}\n",
            "name s1 is used by more than one host",
        ),
        ("master.yaml", "spec:\n  hosts:\n    - {name: s1, address: 192.168.56.10, role: master}\n", "spec.hosts[0].role: must be server or agent"),
        ("not-yaml.yaml", "spec: [\n", "not valid YAML"),
    ];
    for (name, yaml, expected) in cases {
        let file = scratch.path().join(name);
        std::fs::write(&file, yaml).unwrap();
        let out = run(vagrant_command(scratch.path(), &vagrant)
            .args(["validate", "--ignore-provider"])
            .env("K3NODE_CLUSTER_FILE", &file));
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{name}: accepted:\n{}", text(&out.stdout));
        assert!(stderr.contains(&file.display().to_string()) && stderr.contains(expected), "{name}: {stderr}");
    }
    let missing = scratch.path().join("missing.yaml");
    let out = run(vagrant_command(scratch.path(), &vagrant)
        .args(["validate", "--ignore-provider"])
        .env("K3NODE_CLUSTER_FILE", &missing));
    assert!(!out.status.success() && text(&out.stderr).contains("no such file"), "{}", text(&out.stderr));
}

#[test]
fn cluster_file_reaches_each_vm_as_vagrant_with_the_key_vagrant_generates_for_it() {
    let cluster = vagrant_cluster();
    assert_eq!(cluster.ssh.user, "vagrant");
    assert_eq!(cluster.ssh.host_key_check, HostKeyCheck::AcceptNew, "fresh VMs have unknown host keys");
    let dot_vagrant = vagrant_dir().join(".vagrant");
    assert!(
        cluster.ssh.known_hosts.starts_with(&dot_vagrant),
        "known hosts {} belong beside the VMs, where destroying a VM forgets its key",
        cluster.ssh.known_hosts.display()
    );
    for host in &cluster.hosts {
        let expected = dot_vagrant.join("machines").join(&host.name).join("virtualbox/private_key");
        assert_eq!(host.key_path(&cluster.ssh), Some(expected.as_path()), "{}: not the key Vagrant writes", host.name);
    }
    let ignored = read(&vagrant_dir().join(".gitignore"));
    assert!(ignored.lines().any(|l| l.trim() == ".vagrant/"), "keys must never be committed: {ignored}");
}

#[test]
fn cluster_file_carries_the_seeds_k3s_settings() {
    let cluster = vagrant_cluster();
    let config = &cluster.k3s.config;
    let get = |key: &str| config.get(key).unwrap_or_else(|| panic!("{key} is not set: {config:?}"));
    assert_eq!(get("cluster-cidr"), "10.42.0.0/16");
    assert_eq!(get("service-cidr"), "10.43.0.0/16");
    assert_eq!(get("cluster-dns"), "10.43.0.10");
    assert_eq!(get("disable"), &serde_json::json!(["traefik", "servicelb"]));
    assert_eq!(get("kube-apiserver-arg"), &serde_json::json!(["request-timeout=300s"]));
    assert!(get("tls-san").as_array().is_some_and(|a| a.contains(&"crypto-lakehouse.local".into())));
    // VirtualBox gives every VM the same NAT address on eth0: pod traffic must use eth1.
    assert_eq!(get("flannel-iface"), "eth1");
}

#[test]
fn k3node_validate_accepts_the_vagrant_cluster_file() {
    // validate checks that key files exist; Vagrant writes them at `vagrant up`, so the file is
    // checked in a copy of vagrant/ whose keys ssh-keygen made where Vagrant puts them.
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("cluster.yaml");
    let yaml = std::fs::read_to_string(vagrant_dir().join("cluster.yaml")).unwrap();
    std::fs::write(&file, &yaml).unwrap();
    for key in yaml.lines().filter_map(|l| l.trim().strip_prefix("keyPath: ")) {
        let path = scratch.path().join(key.trim());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let made = run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&path));
        assert!(made.status.success(), "ssh-keygen: {}", text(&made.stderr));
    }
    let out = run(Command::new(env!("CARGO_BIN_EXE_k3node")).args(["validate", "-c"]).arg(&file));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("valid") && stdout.contains("3 hosts: 1 server, 2 agents"), "{stdout}");
}

#[test]
fn a_key_generated_by_vagrants_own_code_is_accepted_by_k3node() {
    tool("vagrant", "vagrant");
    let ruby = tool("ruby", "ruby");
    // The code Vagrant runs to make a machine's key (`config.ssh.insert_key`).
    let out = run(Command::new(ruby).args([
        "-e",
        r#"require "vagrant"; require "vagrant/util/keypair"; _, private_key, = Vagrant::Util::Keypair.create; print private_key"#,
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let scratch = tempfile::tempdir().unwrap();
    let key = scratch.path().join("private_key");
    std::fs::write(&key, &out.stdout).unwrap();
    let keyring = k3node::transport::Keyring::load(std::slice::from_ref(&key), &[]).unwrap_or_else(|e| {
        // Only the PEM header: even a throwaway private key stays out of the output.
        let header = text(&out.stdout).lines().next().unwrap_or_default().to_string();
        panic!("k3node cannot use the key Vagrant's code made ({header}): {e}")
    });
    assert_eq!(keyring.paths().collect::<Vec<_>>(), [&key]);
}

#[test]
fn destroying_a_vm_forgets_only_its_host_key_and_where_k3node_looks() {
    let ruby = tool("ruby", "ruby");
    let scratch = tempfile::tempdir().unwrap();
    let known_hosts = scratch.path().join("known_hosts");
    let lines = [
        "# k3node lab",
        "192.168.56.10 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeep10",
        "192.168.56.11 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGone11",
        "[192.168.56.11]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtherPort",
        "192.168.56.110 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINotAPrefix",
        "|1|c2FsdA==|aGFzaA== ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHashed",
    ];
    std::fs::write(&known_hosts, lines.join("\n") + "\n").unwrap();
    std::fs::set_permissions(&known_hosts, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let helper = vagrant_dir().join("k3node_cluster.rb");
    let script = r#"require ARGV[0]
puts K3nodeCluster.forget_host(ARGV[1], "192.168.56.11")
puts K3nodeCluster.forget_host(ARGV[1], "192.168.56.11")
puts K3nodeCluster.known_hosts(ARGV[2])"#;
    let out = run(Command::new(ruby)
        .arg("-e")
        .arg(script)
        .arg(&helper)
        .arg(&known_hosts)
        .arg(vagrant_dir().join("cluster.yaml")));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let answers: Vec<&str> = stdout.lines().collect();
    assert_eq!(answers[..2], ["1", "0"], "first call removes the line, the second finds none");
    let left = read(&known_hosts);
    let expected: Vec<&str> = lines.iter().copied().filter(|l| !l.starts_with("192.168.56.11 ")).collect();
    assert_eq!(left.lines().collect::<Vec<_>>(), expected);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&known_hosts).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the rewrite kept the file's mode");
    // The Vagrantfile cleans the file k3node records keys in, resolved the same way.
    assert_eq!(Path::new(answers[2]), vagrant_cluster().ssh.known_hosts);
}

// ---------------------------------------------------------------- manifests/

/// One YAML document of a manifest file.
struct Manifest {
    file: String,
    index: usize,
    doc: Yaml,
}

impl Manifest {
    fn at(&self) -> String {
        format!("manifests/{} document {}", self.file, self.index + 1)
    }

    fn str(&self, path: &[&str]) -> Option<&str> {
        let mut v = &self.doc;
        for key in path {
            v = v.get(*key)?;
        }
        v.as_str()
    }

    fn kind(&self) -> &str {
        self.str(&["kind"]).unwrap_or("")
    }

    fn name(&self) -> &str {
        self.str(&["metadata", "name"]).unwrap_or("")
    }

    fn namespace(&self) -> Option<&str> {
        self.str(&["metadata", "namespace"])
    }

    fn spec(&self) -> &Yaml {
        self.doc.get("spec").unwrap_or(&Yaml::Null)
    }
}

fn manifest_files() -> Vec<PathBuf> {
    let dir = repo().join("manifests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML in {}", dir.display());
    files
}

fn manifests() -> Vec<Manifest> {
    let mut all = Vec::new();
    for path in manifest_files() {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        for (index, document) in serde_yaml_ng::Deserializer::from_str(&read(&path)).enumerate() {
            let doc =
                Yaml::deserialize(document).unwrap_or_else(|e| panic!("manifests/{file} document {}: {e}", index + 1));
            all.push(Manifest { file: file.clone(), index, doc });
        }
    }
    all
}

/// The kinds these add-ons use, with whether they are namespaced (as the API server has them).
fn namespaced(kind: &str) -> bool {
    match kind {
        "Namespace" | "StorageClass" => false,
        "ResourceQuota" | "LimitRange" | "NetworkPolicy" => true,
        other => panic!("kind {other} is new to the manifests: add it to namespaced() in tests/seeds.rs"),
    }
}

fn namespaces(all: &[Manifest]) -> BTreeSet<&str> {
    all.iter().filter(|m| m.kind() == "Namespace").map(Manifest::name).collect()
}

/// RFC 1123 label (namespace names) or subdomain (most object names), lowercase.
fn is_dns_name(s: &str, dots: bool) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    s.len() <= 253 && if dots { s.split('.').all(label_ok) } else { label_ok(s) }
}

#[test]
fn every_manifest_document_has_api_version_kind_and_name() {
    let all = manifests();
    for m in &all {
        assert!(m.doc.is_mapping(), "{}: not a mapping (an empty document?)", m.at());
        let api = m.str(&["apiVersion"]).unwrap_or_else(|| panic!("{}: no apiVersion", m.at()));
        assert!(!api.is_empty(), "{}", m.at());
        assert!(!m.kind().is_empty(), "{}: no kind", m.at());
        assert!(is_dns_name(m.name(), m.kind() != "Namespace"), "{}: metadata.name {:?}", m.at(), m.name());
        if namespaced(m.kind()) {
            let ns = m.namespace().unwrap_or_else(|| panic!("{}: {} needs metadata.namespace", m.at(), m.kind()));
            assert!(is_dns_name(ns, false), "{}: namespace {ns:?}", m.at());
        } else {
            assert_eq!(m.namespace(), None, "{}: {} is cluster-scoped", m.at(), m.kind());
        }
    }
}

#[test]
fn no_object_is_declared_twice() {
    let mut seen: BTreeMap<(String, String, String), String> = BTreeMap::new();
    for m in &manifests() {
        let api = m.str(&["apiVersion"]).unwrap_or("");
        let group = api.rsplit_once('/').map_or("", |(g, _)| g);
        let key = (format!("{}.{group}", m.kind()), m.namespace().unwrap_or("").to_string(), m.name().to_string());
        if let Some(first) = seen.insert(key.clone(), m.at()) {
            panic!("{key:?} is declared twice: {first} and {}", m.at());
        }
    }
}

#[test]
fn namespaced_objects_live_in_namespaces_the_manifests_create() {
    let all = manifests();
    let created = namespaces(&all);
    for m in all.iter().filter(|m| namespaced(m.kind())) {
        let ns = m.namespace().unwrap_or("");
        assert!(created.contains(ns), "{}: namespace {ns} is not in 00-namespaces.yaml", m.at());
        // k3s applies files in sorted order: a namespace's objects come after the namespace.
        assert!(m.file.as_str() > "00-namespaces.yaml", "{}: sorts before the namespaces", m.at());
    }
}

/// Runs kubectl's offline decoder over the manifests: (kind, namespace, name) of what it read.
fn kubectl_objects() -> Vec<(String, String, String)> {
    let kubectl = tool("kubectl", "kubernetes-client");
    let scratch = tempfile::tempdir().unwrap();
    let out = run(Command::new(kubectl)
        .args(["label", "--local", "-o", "json", "-f"])
        .arg(repo().join("manifests"))
        .arg("k3node.io/checked=offline")
        // No cluster: kubectl must not find one in the environment either.
        .env("KUBECONFIG", scratch.path().join("no-kubeconfig")));
    assert!(out.status.success(), "kubectl rejects the manifests:\n{}", text(&out.stderr));
    // kubectl 1.20 prints one JSON object per document, newer ones a List.
    let mut objects = Vec::new();
    for value in serde_json::Deserializer::from_slice(&out.stdout).into_iter::<Json>() {
        let value = value.unwrap_or_else(|e| panic!("kubectl output is not JSON ({e}): {}", text(&out.stdout)));
        let items =
            if value["kind"] == "List" { value["items"].as_array().cloned().unwrap_or_default() } else { vec![value] };
        for item in items {
            assert_eq!(item["metadata"]["labels"]["k3node.io/checked"], "offline", "kubectl did not decode {item}");
            let field = |v: &Json| v.as_str().unwrap_or("").to_string();
            objects.push((
                field(&item["kind"]),
                field(&item["metadata"]["namespace"]),
                field(&item["metadata"]["name"]),
            ));
        }
    }
    objects
}

#[test]
fn kubectl_decodes_every_manifest_offline_into_the_same_objects() {
    let ours: Vec<(String, String, String)> = manifests()
        .iter()
        .map(|m| (m.kind().to_string(), m.namespace().unwrap_or("").to_string(), m.name().to_string()))
        .collect();
    let theirs = kubectl_objects();
    assert_eq!(theirs, ours, "kubectl reads the manifests differently from YAML 1.2 (a YAML 1.1 scalar?)");
}

#[test]
fn manifest_file_names_are_k3s_addon_names_of_their_own() {
    // k3s's packaged add-ons (k3s-io/k3s, manifests/): k3s rewrites these at start and deletes
    // them when disabled, so a user file with one of these names would be lost.
    const PACKAGED: &[&str] = &[
        "ccm",
        "coredns",
        "local-storage",
        "metrics-server",
        "aggregated-metrics-reader",
        "auth-delegator",
        "auth-reader",
        "metrics-apiservice",
        "metrics-server-deployment",
        "metrics-server-service",
        "resource-reader",
        "rolebindings",
        "runtimes",
        "traefik",
        "traefik-crd",
    ];
    let mut addons = BTreeSet::new();
    for path in manifest_files() {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        // k3s names the Addon after the file name up to its first '.'.
        let addon = file.split('.').next().unwrap().to_string();
        assert!(is_dns_name(&addon, true), "{file}: Addon name {addon:?} is not a valid object name");
        assert!(!PACKAGED.contains(&addon.as_str()), "{file}: clashes with k3s's packaged add-on {addon}");
        assert!(addons.insert(addon.clone()), "{file}: Addon name {addon} twice");
    }
    let others: Vec<String> = std::fs::read_dir(repo().join("manifests"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".yaml") && n != "README.md")
        .collect();
    assert!(others.is_empty(), "unexpected files in manifests/ (k3s would apply .yml and .json too): {others:?}");
}

fn list<'a>(v: &'a Yaml, key: &str) -> &'a [Yaml] {
    v.get(key).and_then(Yaml::as_sequence).map_or(&[], Vec::as_slice)
}

fn policy_types(m: &Manifest) -> Vec<&str> {
    list(m.spec(), "policyTypes").iter().filter_map(Yaml::as_str).collect()
}

fn selects_all_pods(m: &Manifest) -> bool {
    m.spec().get("podSelector").and_then(Yaml::as_mapping).is_some_and(|s| s.is_empty())
}

/// Does this egress rule reach CoreDNS (kube-system, k8s-app=kube-dns) on `protocol` port 53?
fn reaches_dns(rule: &Yaml, protocol: &str) -> bool {
    let port_ok = list(rule, "ports").iter().any(|p| {
        p.get("protocol").and_then(Yaml::as_str).unwrap_or("TCP") == protocol
            && p.get("port").and_then(Yaml::as_u64) == Some(53)
    });
    let peer_ok = list(rule, "to").iter().any(|peer| {
        let ns = peer
            .get("namespaceSelector")
            .and_then(|s| s.get("matchLabels"))
            .and_then(|l| l.get("kubernetes.io/metadata.name"));
        let pod = peer.get("podSelector").and_then(|s| s.get("matchLabels")).and_then(|l| l.get("k8s-app"));
        ns.and_then(Yaml::as_str) == Some("kube-system") && pod.and_then(Yaml::as_str) == Some("kube-dns")
    });
    port_ok && peer_ok
}

#[test]
fn every_namespace_that_denies_egress_can_still_resolve_names() {
    let all = manifests();
    let policies: Vec<&Manifest> = all.iter().filter(|m| m.kind() == "NetworkPolicy").collect();
    let denying: BTreeSet<&str> = policies
        .iter()
        .filter(|m| selects_all_pods(m) && policy_types(m).contains(&"Egress") && list(m.spec(), "egress").is_empty())
        .filter_map(|m| m.namespace())
        .collect();
    assert!(denying.len() >= 3, "seeds 000, 002 and 004 each deny by default: {denying:?}");
    for ns in &denying {
        for protocol in ["UDP", "TCP"] {
            let ok = policies.iter().filter(|m| m.namespace() == Some(ns) && selects_all_pods(m)).any(|m| {
                policy_types(m).contains(&"Egress") && list(m.spec(), "egress").iter().any(|r| reaches_dns(r, protocol))
            });
            assert!(ok, "{ns} denies egress but no policy lets its pods reach CoreDNS on {protocol} 53");
        }
    }
}

#[test]
fn network_policies_select_namespaces_that_exist_by_their_automatic_label() {
    let all = manifests();
    let mut known = namespaces(&all);
    known.insert("kube-system");
    for m in all.iter().filter(|m| m.kind() == "NetworkPolicy") {
        let rules = list(m.spec(), "ingress")
            .iter()
            .flat_map(|r| list(r, "from"))
            .chain(list(m.spec(), "egress").iter().flat_map(|r| list(r, "to")));
        for peer in rules {
            let Some(selector) = peer.get("namespaceSelector") else { continue };
            let labels = selector
                .get("matchLabels")
                .and_then(Yaml::as_mapping)
                .unwrap_or_else(|| panic!("{}: {selector:?}", m.at()));
            let keys: Vec<&str> = labels.keys().filter_map(Yaml::as_str).collect();
            // Only the label the API server sets on every namespace is certain to be there.
            assert_eq!(keys, ["kubernetes.io/metadata.name"], "{}: namespaceSelector {keys:?}", m.at());
            let ns = labels.values().next().and_then(Yaml::as_str).unwrap_or("");
            assert!(known.contains(ns), "{}: selects namespace {ns}, which does not exist", m.at());
        }
    }
}

#[test]
fn every_namespace_with_a_compute_quota_gives_containers_defaults() {
    let all = manifests();
    for quota in all.iter().filter(|m| m.kind() == "ResourceQuota") {
        let hard = quota
            .spec()
            .get("hard")
            .and_then(Yaml::as_mapping)
            .unwrap_or_else(|| panic!("{}: no spec.hard", quota.at()));
        let compute: Vec<&str> = hard
            .keys()
            .filter_map(Yaml::as_str)
            .filter(|k| k.starts_with("requests.") || k.starts_with("limits."))
            .collect();
        if compute.is_empty() {
            continue;
        }
        let ns = quota.namespace();
        let range = all
            .iter()
            .find(|m| m.kind() == "LimitRange" && m.namespace() == ns)
            .unwrap_or_else(|| panic!("{}: quota on {compute:?} but no LimitRange in {ns:?}", quota.at()));
        let container = list(range.spec(), "limits")
            .iter()
            .find(|l| l.get("type").and_then(Yaml::as_str) == Some("Container"))
            .unwrap_or_else(|| panic!("{}: no Container limits", range.at()));
        for key in compute {
            let (section, resource) = key.split_once('.').unwrap();
            let defaults = if section == "requests" { "defaultRequest" } else { "default" };
            assert!(
                container.get(defaults).and_then(|d| d.get(resource)).is_some(),
                "{}: the quota counts {key}, but {} gives no {defaults}.{resource}",
                quota.at(),
                range.at()
            );
        }
    }
}

#[test]
fn every_namespace_enforces_a_real_pod_security_level() {
    const LEVELS: [&str; 3] = ["privileged", "baseline", "restricted"];
    for ns in manifests().iter().filter(|m| m.kind() == "Namespace") {
        let labels = ns.doc.get("metadata").and_then(|m| m.get("labels")).and_then(Yaml::as_mapping);
        let labels = labels.unwrap_or_else(|| panic!("{}: no labels", ns.at()));
        let level = |mode: &str| labels.get(format!("pod-security.kubernetes.io/{mode}")).and_then(Yaml::as_str);
        for mode in ["enforce", "audit", "warn"] {
            let value = level(mode).unwrap_or_else(|| panic!("{}: no pod-security {mode} label", ns.at()));
            assert!(LEVELS.contains(&value), "{}: {mode}: {value} is not a Pod Security level", ns.at());
        }
        for key in labels.keys().filter_map(Yaml::as_str).filter(|k| k.starts_with("pod-security.kubernetes.io/")) {
            let mode = key.trim_start_matches("pod-security.kubernetes.io/");
            assert!(["enforce", "audit", "warn"].contains(&mode), "{}: unknown pod-security label {key}", ns.at());
        }
    }
    // Seed 002 runs production at restricted.
    let prod = manifests()
        .into_iter()
        .find(|m| m.kind() == "Namespace" && m.name() == "dictamesh-prod")
        .expect("dictamesh-prod");
    assert_eq!(prod.str(&["metadata", "labels", "pod-security.kubernetes.io/enforce"]), Some("restricted"));
}

#[test]
fn the_retaining_storage_class_keeps_data_and_is_not_the_default() {
    let all = manifests();
    let class =
        all.iter().find(|m| m.kind() == "StorageClass" && m.name() == "local-path-retain").expect("local-path-retain");
    assert_eq!(class.str(&["provisioner"]), Some("rancher.io/local-path"), "k3s's local-path provisioner");
    assert_eq!(class.str(&["reclaimPolicy"]), Some("Retain"));
    assert_eq!(
        class.str(&["volumeBindingMode"]),
        Some("WaitForFirstConsumer"),
        "local volumes bind where the pod runs"
    );
    let default = class.str(&["metadata", "annotations", "storageclass.kubernetes.io/is-default-class"]);
    assert_ne!(default, Some("true"), "k3s's local-path stays the default class");
}

#[test]
fn manifests_readme_describes_every_file() {
    let readme = read(&repo().join("manifests/README.md"));
    for path in manifest_files() {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(readme.contains(&format!("`{file}`")), "manifests/README.md does not describe {file}");
    }
}

// ---------------------------------------------------------------- provision/

#[test]
fn bootstrap_script_is_posix_sh_and_shellcheck_clean() {
    let shellcheck = tool("shellcheck", "shellcheck");
    let script = repo().join("provision/bootstrap.sh");
    assert!(read(&script).starts_with("#!/bin/sh\n"), "bootstrap.sh must be a POSIX sh script");
    let out = run(Command::new(shellcheck).args(["--shell=sh", "--severity=style", "--format=gcc"]).arg(&script));
    assert!(out.status.success(), "shellcheck:\n{}{}", text(&out.stdout), text(&out.stderr));
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&script).unwrap().permissions());
    assert!(mode & 0o100 != 0, "bootstrap.sh should be executable (mode {mode:o})");
}

#[test]
fn cloud_init_user_data_parses_and_runs_the_bootstrap_script_verbatim() {
    let text = read(&repo().join("provision/cloud-init.yaml"));
    assert!(text.starts_with("#cloud-config\n"), "cloud-init only reads user-data that starts with #cloud-config");
    let data: Yaml = serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("provision/cloud-init.yaml: {e}"));
    let files = list(&data, "write_files");
    assert_eq!(files.len(), 1, "{files:?}");
    let file = &files[0];
    let path = file.get("path").and_then(Yaml::as_str).unwrap_or_default();
    assert_eq!(path, "/usr/local/sbin/k3node-bootstrap");
    assert_eq!(
        file.get("permissions").and_then(Yaml::as_str),
        Some("0700"),
        "quoted octal: unquoted YAML reads a number"
    );
    assert_eq!(file.get("owner").and_then(Yaml::as_str), Some("root:root"));
    let script = read(&repo().join("provision/bootstrap.sh"));
    assert!(
        file.get("content").and_then(Yaml::as_str) == Some(script.as_str()),
        "the script in cloud-init.yaml differs from provision/bootstrap.sh; regenerate it with \
         sed 's/^\\(.\\)/      \\1/' provision/bootstrap.sh (see the comment in cloud-init.yaml)"
    );
    let runcmd = list(&data, "runcmd");
    assert_eq!(runcmd.len(), 1, "{runcmd:?}");
    let argv: Vec<&str> =
        runcmd[0].as_sequence().map(|a| a.iter().filter_map(Yaml::as_str).collect()).unwrap_or_default();
    assert_eq!(argv[..4], [path, "--user", "k3node", "--key"], "{argv:?}");
    assert_eq!(argv.len(), 5, "one key argument: {argv:?}");
}
