//! The commented starter file `k3node init` writes.

/// A cluster file for one server and one agent (the Vagrant lab's 192.168.56.10/.11 layout),
/// with the optional settings shown, commented out, at their defaults. It parses as valid, so
/// `k3node up` can run on it once the addresses fit.
pub fn starter_file() -> String {
    STARTER.to_string()
}

const STARTER: &str = r#"# k3node cluster file. Reference: the "cluster.yaml reference" section of k3node's README.
# Check it with `k3node up --dry-run`; nothing touches a host while this file has errors.
apiVersion: k3node.io/v1alpha1
kind: Cluster
metadata:
  name: lab                       # DNS-1123 label; also the kubeconfig context name
spec:
  ssh:                            # defaults for every host
    user: root
    port: 22
    # keyPath: ~/.ssh/id_ed25519  # default: ssh-agent and ~/.ssh/config; relative paths start at this file's dir
    # knownHosts: ~/.ssh/known_hosts
    # configFile: ~/.ssh/config   # OpenSSH client config (used when it exists)
    # hostKeyCheck: strict        # strict | accept-new (trust on first use; changed keys are always refused)
    # bastion:                    # jump host
    #   address: 203.0.113.10
    #   user: jump
  hosts:
    - name: server-1              # Kubernetes node name
      address: 192.168.56.10      # IP address or DNS name
      role: server                # server | agent
    - name: agent-1
      address: 192.168.56.11
      role: agent
      # ssh: { user: vagrant, port: 22, keyPath: ./keys/agent-1 }   # per-host overrides
      # labels: { tier: db }
      # taints: ["dedicated=db:NoSchedule"]
      # k3s: { extraConfig: { flannel-iface: enp0s8 } }              # config.yaml keys for this host
      # env: { HTTPS_PROXY: http://other-proxy.example:3128 }        # env file variables for this host
  k3s:
    channel: stable               # or an exact version: `version: v1.31.4+k3s1` (not both)
    # source:                     # at most one of:
    #   releaseUrl: https://github.com/k3s-io/k3s/releases/download   # the default
    #   mirror: https://mirror.example/k3s                            # same layout as the releases
    #   airgapDir: ./airgap                                           # k3s binary + sha256sum-<arch>.txt
    # airgapImages: true          # stage k3s-airgap-images-<arch>.tar.zst on every node before k3s starts
    config:                       # keys of /etc/rancher/k3s/config.yaml, validated
      cluster-cidr: 10.42.0.0/16
      service-cidr: 10.43.0.0/16
      cluster-dns: 10.43.0.10
      write-kubeconfig-mode: "0600"   # quoted: unquoted YAML reads it as a number
      # disable: [traefik]
      # tls-san: [k3s.example]
    # extraConfig:                # keys of a newer k3s than k3node knows: passed unchecked, with a warning
    #   secrets-encryption-provider: secretbox
    # env:                        # the k3s unit's env file (values are never printed)
    #   HTTPS_PROXY: http://proxy.example:3128   # NO_PROXY then defaults as the k3s docs advise
"#;

#[cfg(test)]
mod tests {
    #[test]
    fn starter_parses() {
        let f = crate::cluster::parse("cluster.yaml", std::path::Path::new("/srv/lab"), &super::starter_file());
        let f = f.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f.hosts.len(), 2);
        assert_eq!(f.k3s.channel.as_deref(), Some("stable"));
    }

    #[test]
    fn the_commented_escape_hatches_are_valid_when_uncommented() {
        let uncommented: String = super::starter_file()
            .lines()
            .map(|l| {
                let t = l.trim_start();
                let hatch = ["# extraConfig:", "#   secrets-", "# env:", "#   HTTPS_PROXY", "# k3s: {", "# env: {"]
                    .iter()
                    .any(|p| t.starts_with(p));
                if hatch {
                    l.replacen("# ", "", 1)
                } else {
                    l.to_string()
                }
            })
            .map(|l| l + "\n")
            .collect();
        assert!(uncommented.contains("\n    extraConfig: ") && uncommented.contains("\n      env: {"), "{uncommented}");
        let f = crate::cluster::parse("cluster.yaml", std::path::Path::new("/srv/lab"), &uncommented)
            .unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        assert_eq!(f.k3s.extra_config["secrets-encryption-provider"], serde_json::json!("secretbox"));
        assert_eq!(f.host("agent-1").map(|h| h.extra_config.len()), Some(1));
        assert_eq!(f.warnings.len(), 1, "{}", f.warnings);
    }
}
