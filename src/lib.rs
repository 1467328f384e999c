//! k3node: takes Linux hosts reachable over SSH to a verified k3s cluster and keeps them healthy.
//!
//! Layout, by side:
//! - [`cluster`]: the declarative cluster file (`cluster.yaml`), parsed and validated.
//! - [`transport`]: operator side, SSH to hosts (russh): auth, host keys, exec, upload.
//! - [`operator`]: operator side, phases run across hosts (agent bootstrap, preflight).
//! - [`host`]: host side, the agent's native operations (`k3node host <operation>`).
//! - [`daemon`]: the node daemon (`k3node agent`) on every node; [`hub`]: its part on servers.
//! - [`images`]: operator side, container image archives read and checked before they are sent.
//! - [`protocol`]: what the operator and the host agent say to each other.

// Errors carry the host, the address and what to do: they are large, and only ever on the cold path.
#![allow(clippy::result_large_err)]

pub mod artifacts;
pub mod chunks;
pub mod cluster;
pub mod daemon;
pub mod digest;
pub mod fsutil;
pub mod home;
pub mod host;
pub mod hub;
pub mod images;
pub mod operator;
pub mod protocol;
pub mod transport;
pub mod words;
