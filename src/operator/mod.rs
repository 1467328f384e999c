//! Operator side: runs commands as lists of phases across the hosts of a cluster file.
//!
//! - [`engine`]: the phase runner, the run context, the per-phase and per-host results.
//! - [`phases`]: one phase per file (connect, lock, preflight, artifacts, install, ready...).
//! - [`actions`]: each command as a list of phases (up, reset, preflight).
//! - [`link`]: how a host's helper is reached (SSH, in-process), typed calls, streams, the lock.
//! - [`bootstrap`]: this binary put on a host as its helper; [`connect`]: SSH settings; [`fleet`]:
//!   the hosts of a run with their links.
//! - [`cross_host`], [`kubeconfig`], [`node_config`], [`payload`]: what phases compute.

pub mod actions;
pub mod bootstrap;
pub mod connect;
pub mod cross_host;
pub mod engine;
pub mod fleet;
pub mod kubeconfig;
pub mod link;
pub mod node_config;
pub mod payload;
pub mod phases;
pub mod progress;
