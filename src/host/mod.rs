//! Host side: the helper that runs on each host as root, invoked as `k3node host <operation>`
//! (or called in-process in local mode and in tests), doing the work natively through
//! [`system::HostSystem`].
//!
//! - [`serve`]: the protocol boundary (strict requests, the host lock, secrets removed).
//! - [`lock`]: the host lock that keeps two runs apart.
//! - [`files`], [`hello`]: streamed files, and who answers.
//! - [`preflight`], [`k3s`]: checks, and installing/inspecting/removing k3s.
//! - [`images`]: container images in k3s's containerd, and archives staged for k3s to import.
//! - [`snapshot`]: snapshots of a server, their archives, and restoring them.

pub mod error;
pub mod files;
mod hello;
pub mod images;
pub mod k3s;
pub mod lock;
pub mod manifests;
pub mod preflight;
mod serve;
pub mod snapshot;
pub mod system;

pub use error::{describe_io, HostError};
pub use serve::{serve, Context, HostOperation};
