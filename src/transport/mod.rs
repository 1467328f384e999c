//! Operator side: SSH to the hosts (russh). Key files, ssh-agent, the user's SSH config, jump hosts,
//! strict host keys, sudo, exec with exit status, verified uploads.

mod endpoint;
mod error;
pub mod host_keys;
pub mod keys;
mod session;

pub use endpoint::{expand_tilde, ClientConfig, Endpoint, EndpointRequest, SshConfigError};
pub use error::TransportError;
pub use host_keys::HostKeyPolicy;
pub use keys::Keyring;
pub use session::{ConnectOptions, ExecOutput, ExitInfo, Privilege, Session};
