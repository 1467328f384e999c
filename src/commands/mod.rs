//! One file per command: each parses its arguments and delegates to the library. Terminal
//! rendering lives here and nowhere else.

pub mod host;
pub mod init;
pub mod preflight;
pub mod render;
pub mod validate;

use std::path::Path;
use std::process::ExitCode;

use k3node::cluster::{self, ClusterFile};

/// Exit status for bad input (invalid cluster file, bad arguments), distinct from a failed run.
pub const EXIT_BAD_INPUT: u8 = 2;

/// An error caused by what the user gave us, not by a host.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

pub fn exit_code_for(error: &anyhow::Error) -> ExitCode {
    let bad_input = error.downcast_ref::<BadInput>().is_some()
        || matches!(error.downcast_ref::<cluster::LoadError>(), Some(cluster::LoadError::Invalid(_)));
    ExitCode::from(if bad_input { EXIT_BAD_INPUT } else { 1 })
}

/// Loads and validates the cluster file: every command does this before touching any host.
pub fn load_cluster(path: &Path) -> anyhow::Result<ClusterFile> {
    Ok(cluster::load(path)?)
}
