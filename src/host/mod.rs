//! Host side: the agent that runs on each host as root, invoked as `k3node host <operation>`.

pub mod k3s;
pub mod preflight;
mod receive;
mod serve;
pub mod system;

pub use serve::serve;
