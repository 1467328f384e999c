//! Operator side: runs phases across the hosts of a cluster file.

pub mod agent;
pub mod connect;
pub mod cross_host;
pub mod fleet;
pub mod kubeconfig;
pub mod node_config;
pub mod preflight;
pub mod progress;
pub mod reset;
pub mod target;
pub mod up;
