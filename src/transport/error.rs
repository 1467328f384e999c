use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong between the operator and one host, each variant worded so that
/// the operator knows what happened and what to do. Variants name the host as the cluster file does.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{host}: {address} is unreachable ({detail}); check that the host is up and routed from here")]
    Unreachable { host: String, address: String, detail: String },

    #[error("{host}: connection to {address} refused; is sshd running and listening on that port?")]
    Refused { host: String, address: String },

    #[error(
        "{host}: no answer from {address} within {after:?} while {stage}; check the address, firewalls and the bastion"
    )]
    Timeout { host: String, address: String, stage: &'static str, after: Duration },

    #[error("{host}: authentication as {user} failed; tried: {}. Check that {user} is the account meant (spec.ssh.user, or the host's ssh.user) and that its ~/.ssh/authorized_keys on the host holds the public key, or set spec.ssh.keyPath / spec.hosts[].ssh.keyPath", tried.join(", "))]
    AuthFailed { host: String, user: String, tried: Vec<String> },

    #[error("{host}: host key of {address} is not in {}: it presents {key_type} {fingerprint}{}. Verify it out of band (on the host: `ssh-keygen -lf /etc/ssh/ssh_host_{short}_key.pub`; from here: `{keyscan} | ssh-keygen -lf -`), then re-run with --trust-new-host-keys or set spec.ssh.hostKeyCheck: accept-new to record it", known_hosts.display(), super::host_keys::also_offered(address, others), short = super::host_keys::short_type(key_type), keyscan = super::host_keys::keyscan_line(address, key_type))]
    HostKeyUnknown {
        host: String,
        address: String,
        key_type: String,
        fingerprint: String,
        known_hosts: PathBuf,
        /// The host's keys of other types, (type, fingerprint), when they could be asked for.
        others: Vec<(String, String)>,
    },

    #[error("{host}: HOST KEY OF {address} HAS CHANGED: {} line {line} records {expected}, the host presents {actual}. Someone may be intercepting the connection, or the host was reinstalled; if you are sure, remove the old key with `ssh-keygen -R {address} -f {}` and re-run", known_hosts.display(), known_hosts.display())]
    HostKeyChanged {
        host: String,
        address: String,
        expected: String,
        actual: String,
        known_hosts: PathBuf,
        line: usize,
    },

    #[error("{host}: cannot use known hosts file {}: {detail}", path.display())]
    KnownHosts { host: String, path: PathBuf, detail: String },

    #[error("{host}: sudo asks {user} for a password; k3node needs root or passwordless sudo (add `{user} ALL=(ALL) NOPASSWD:ALL` under /etc/sudoers.d/ on the host, or connect as root)")]
    SudoNeedsPassword { host: String, user: String },

    #[error("{host}: {user} cannot become root: sudo failed: {detail}")]
    SudoFailed { host: String, user: String, detail: String },

    #[error("cannot use SSH key {}: {detail}", path.display())]
    Key { path: PathBuf, detail: String },

    #[error("{host}: `{command}` ended without an exit status (the channel closed early); the host may have dropped the connection")]
    NoExitStatus { host: String, command: String },

    #[error(
        "{host}: upload to {path} was corrupted: sent sha256 {expected}, the host has {actual}; nothing was installed"
    )]
    ChecksumMismatch { host: String, path: String, expected: String, actual: String },

    #[error("{host}: `{command}` failed with exit status {status}: {stderr}")]
    CommandFailed { host: String, command: String, status: u32, stderr: String },

    #[error("{host}: SSH error: {source}")]
    Ssh {
        host: String,
        #[source]
        source: russh::Error,
    },

    #[error("{host}: {context}: {source}")]
    Io {
        host: String,
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl TransportError {
    pub(crate) fn ssh(host: &str, source: russh::Error) -> Self {
        TransportError::Ssh { host: host.to_string(), source }
    }

    /// A short category for summaries and JSON output.
    pub fn kind(&self) -> &'static str {
        match self {
            TransportError::Unreachable { .. } => "unreachable",
            TransportError::Refused { .. } => "refused",
            TransportError::Timeout { .. } => "timeout",
            TransportError::AuthFailed { .. } => "auth-failed",
            TransportError::HostKeyUnknown { .. } => "host-key-unknown",
            TransportError::HostKeyChanged { .. } => "host-key-changed",
            TransportError::KnownHosts { .. } => "known-hosts",
            TransportError::SudoNeedsPassword { .. } => "sudo-needs-password",
            TransportError::SudoFailed { .. } => "sudo-failed",
            TransportError::Key { .. } => "key",
            TransportError::NoExitStatus { .. } => "no-exit-status",
            TransportError::ChecksumMismatch { .. } => "checksum-mismatch",
            TransportError::CommandFailed { .. } => "command-failed",
            TransportError::Ssh { .. } => "ssh",
            TransportError::Io { .. } => "io",
        }
    }
}
