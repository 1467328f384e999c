//! `artifacts`: the k3s release resolved (channel -> version), downloaded once on this side (or
//! taken from the cache or the airgap dir), and verified against the release's checksums: the
//! binary, and the airgap images bundle when the cluster wants it (staged by `preload images`).

use async_trait::async_trait;

use crate::artifacts::{self, ArtifactOptions, DownloadProgress, ReleaseFile};
use crate::operator::engine::{Phase, PhaseRun, RunContext};
use crate::operator::phases::images::AirgapBundle;

pub struct Artifacts {
    pub options: ArtifactOptions,
    pub progress: Box<dyn DownloadProgress>,
}

/// The verified k3s binary of this run.
pub struct Release(pub ReleaseFile);

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
        let binary =
            match artifacts::fetch_k3s(&cluster.k3s, &version, arch, &self.options, self.progress.as_ref()).await {
                Ok(binary) => binary,
                Err(e) => return PhaseRun::Failed(e.to_string()),
            };
        let mut message = format!("k3s {} ({}), sha256 {}", binary.version, binary.arch, &binary.sha256[..16]);
        let bundle =
            artifacts::fetch_airgap_images(&cluster.k3s, &version, arch, &self.options, self.progress.as_ref()).await;
        match bundle {
            Ok(Some(bundle)) => {
                message.push_str(&format!(
                    "; airgap images {}, sha256 {}",
                    bundle.path.display(),
                    &bundle.sha256[..16]
                ));
                run.slots.put(AirgapBundle(bundle));
            }
            Ok(None) => {}
            Err(e) => return PhaseRun::Failed(e.to_string()),
        }
        run.report.version = Some(binary.version.clone());
        run.slots.put(Release(binary));
        PhaseRun::Done(message)
    }
}
