//! Helpers shared by the lab scenarios: a scratch operator home, cluster files, running k3node.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use k3node::transport::{ConnectOptions, Endpoint, HostKeyPolicy, Keyring, Session, TransportError};

use crate::support::{Lab, LabHost};

pub const K3NODE: &str = env!("CARGO_BIN_EXE_k3node");

pub type Outcome = Result<(), libtest_mimic::Failed>;

/// A scenario as a trial whose line in the log ends with the time it took ("... (41.3 s) ok"):
/// CI's log is where the lab's share of the run is read, scenario by scenario.
pub fn timed(name: impl Into<String>, run: impl FnOnce() -> Outcome + Send + 'static) -> libtest_mimic::Trial {
    libtest_mimic::Trial::test(name, move || {
        let started = std::time::Instant::now();
        let outcome = run();
        eprint!("({:.1} s) ", started.elapsed().as_secs_f64());
        outcome
    })
}

/// A fresh operator-side home: its own known_hosts, cluster file, no ssh-agent, no ~/.ssh/config.
pub struct Operator {
    pub home: PathBuf,
    pub lab: Arc<Lab>,
}

impl Operator {
    pub fn new(lab: &Arc<Lab>, name: &str) -> Operator {
        let home = lab.dir().join("operators").join(name);
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        Operator { home, lab: lab.clone() }
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.home.join(".ssh/known_hosts")
    }

    /// Records the real host keys of `hosts` in this operator's known_hosts.
    pub fn trust(&self, hosts: &[&LabHost]) {
        let mut text = std::fs::read_to_string(self.known_hosts()).unwrap_or_default();
        for h in hosts {
            text.push_str(&self.lab.known_hosts_line(h));
            text.push('\n');
        }
        std::fs::write(self.known_hosts(), text).unwrap();
    }

    /// Writes a cluster file; `hosts` are (host, role, extra YAML lines indented under the host).
    pub fn cluster_file(&self, ssh_extra: &str, hosts: &[(&LabHost, &str, &str)]) -> PathBuf {
        let mut yaml = format!(
            "apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: lab\nspec:\n  ssh:\n    user: root\n    keyPath: {}\n    knownHosts: {}\n{ssh_extra}  hosts:\n",
            self.lab.client_key().display(),
            self.known_hosts().display()
        );
        for (h, role, extra) in hosts {
            yaml.push_str(&format!(
                "    - name: {}\n      address: {}\n      role: {role}\n{extra}",
                h.name, h.address
            ));
        }
        let path = self.home.join("cluster.yaml");
        std::fs::write(&path, yaml).unwrap();
        path
    }

    /// Runs k3node as the operator would, from inside the lab network.
    pub fn k3node(&self, args: &[&str]) -> Output {
        self.k3node_command(args).output().expect("run k3node")
    }

    /// k3node in the lab's network as this operator, to be spawned (`ip netns exec` execs it:
    /// the child's pid is k3node's own, so signals reach it).
    pub fn k3node_command(&self, args: &[&str]) -> Command {
        let mut cmd = self.lab.command_in_netns(Path::new(K3NODE));
        cmd.args(args).env("HOME", &self.home).env_remove("SSH_AUTH_SOCK").env_remove("K3NODE_LOG");
        cmd
    }

    /// k3node with `-o json` whose stdout must be JSON.
    pub fn k3node_json(&self, args: &[&str]) -> (i32, serde_json::Value, String) {
        let out = self.k3node(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("stdout is not JSON ({e}): {}\nstderr: {stderr}", String::from_utf8_lossy(&out.stdout))
        });
        (out.status.code().unwrap_or(-1), json, stderr)
    }

    pub fn endpoint(&self, host: &LabHost, user: &str) -> Endpoint {
        Endpoint {
            host: host.name.clone(),
            address: host.address.to_string(),
            port: 22,
            user: user.into(),
            identity_files: vec![self.lab.client_key().to_path_buf()],
            jump: None,
        }
    }

    pub fn options(&self, policy: HostKeyPolicy) -> ConnectOptions {
        ConnectOptions {
            known_hosts: self.known_hosts(),
            host_key_policy: policy,
            use_agent: false,
            ..Default::default()
        }
    }

    pub fn keyring(&self) -> Keyring {
        Keyring::load(&[self.lab.client_key().to_path_buf()], &[]).unwrap()
    }

    /// Connects from inside the lab network and hands the session to `f`.
    pub fn with_session<T: Send + 'static>(
        &self,
        endpoint: Endpoint,
        options: ConnectOptions,
        keyring: Keyring,
        f: impl AsyncFnOnce(Result<Session, TransportError>) -> T + Send + 'static,
    ) -> T {
        self.lab.in_netns(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let session = Session::connect(&endpoint, &options, &keyring).await;
                f(session).await
            })
        })
    }
}

/// Fails the trial with a message unless `cond` holds.
pub fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Outcome {
    if cond {
        Ok(())
    } else {
        Err(msg().into())
    }
}

/// The check `id` of `host` in a `preflight -o json` answer.
pub fn check<'a>(json: &'a serde_json::Value, host: &str, id: &str) -> Option<&'a serde_json::Value> {
    host_entry(json, host)?["checks"].as_array()?.iter().find(|c| c["id"] == id)
}

pub fn host_entry<'a>(json: &'a serde_json::Value, host: &str) -> Option<&'a serde_json::Value> {
    json["hosts"].as_array()?.iter().find(|h| h["host"] == host)
}

pub fn status<'a>(json: &'a serde_json::Value, host: &str, id: &str) -> &'a str {
    check(json, host, id).and_then(|c| c["status"].as_str()).unwrap_or("missing")
}

/// Runs a command on a lab host; the error keeps the whole chain (command, stderr, host).
pub fn sh(host: &crate::support::LabHost, cmd: &str) -> Result<String, libtest_mimic::Failed> {
    host.sh(cmd).map_err(|e| format!("{e:#}").into())
}

/// Polls `check` until it is Ok or `timeout` passes; the last error otherwise.
pub fn wait_for<T>(timeout: std::time::Duration, mut check: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(e) if std::time::Instant::now() >= deadline => return Err(format!("after {timeout:?}: {e}")),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(500)),
        }
    }
}
