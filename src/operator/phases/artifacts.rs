//! `artifacts`: the k3s release resolved (channel -> version), downloaded once on this side (or
//! taken from the cache or the airgap dir), and verified against the release's checksums.

use async_trait::async_trait;

use crate::artifacts::{self, ArtifactOptions, DownloadProgress, K3sBinary};
use crate::operator::engine::{Phase, PhaseRun, RunContext};

pub struct Artifacts {
    pub options: ArtifactOptions,
    pub progress: Box<dyn DownloadProgress>,
}

/// The verified k3s binary of this run.
pub struct Release(pub K3sBinary);

#[async_trait]
impl Phase for Artifacts {
    fn name(&self) -> &'static str {
        "artifacts"
    }

    fn applies(&self, _: &RunContext) -> bool {
        true
    }

    fn dry_run(&self, _: &RunContext) -> Option<String> {
        // A dry run resolves and verifies too: it shows the version it would install.
        None
    }

    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        let cluster = run.cluster.clone();
        let version = match artifacts::resolve_version(&cluster.k3s, &self.options).await {
            Ok(v) => v,
            Err(e) => return PhaseRun::Failed(e.to_string()),
        };
        let arch = crate::protocol::debian_arch(std::env::consts::ARCH).unwrap_or(std::env::consts::ARCH);
        match artifacts::fetch_k3s(&cluster.k3s, &version, arch, &self.options, self.progress.as_ref()).await {
            Ok(binary) => {
                let message = format!("k3s {} ({}), sha256 {}", binary.version, binary.arch, &binary.sha256[..16]);
                run.report.version = Some(binary.version.clone());
                run.slots.put(Release(binary));
                PhaseRun::Done(message)
            }
            Err(e) => PhaseRun::Failed(e.to_string()),
        }
    }
}
