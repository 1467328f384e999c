//! Cluster add-on manifests delivered to a server's auto-deploy directory.

use serde::{Deserialize, Serialize};

use super::Operation;

/// Makes `<data-dir>/server/manifests/` hold exactly these k3node files (named `k3node-<name>`),
/// written atomically and only when changed; k3node files no longer listed are removed. k3s's
/// own packaged manifests (other names) are never touched.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SyncManifests {
    pub files: Vec<ManifestFile>,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// The file name without the `k3node-` prefix (`00-namespaces.yaml`).
    pub name: String,
    pub content: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestsSynced {
    /// Each file created, updated or removed (or in a dry run that would be), with a diff.
    pub changes: Vec<super::k3s::FileChange>,
}

impl Operation for SyncManifests {
    const NAME: &'static str = "sync-manifests";
    const UPLOAD: bool = false;
    const DOWNLOAD: bool = false;
    type Answer = ManifestsSynced;
    fn mutates(&self) -> bool {
        !self.dry_run
    }
}
