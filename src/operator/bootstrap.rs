//! Puts this very binary on a host as its helper, and opens the [`SshLink`] to it.
//!
//! A hello answers with the helper's protocol, hash and capabilities; anything else (absent,
//! older, another build) is replaced by an upload that the host verifies before it renames the
//! file into place. Only coreutils are used for that (dd, sha256sum, chmod, mv), since there is
//! no helper yet to do it natively.
//!
//! A real run installs the helper at [`HELPER_PATH`]. A dry run or a preflight leaves nothing
//! lasting: when the installed helper is not this build, a copy runs from a private temporary
//! directory (under /run, or /var/tmp where /run is mounted noexec) that is removed when the
//! link closes.

use std::path::PathBuf;

use super::link::{AnswerDecoder, LinkError, SshLink};
use crate::protocol::{debian_arch, encode_request, Hello, HelloAnswer, Operation, HELPER_PATH, PROTOCOL_VERSION};
use crate::transport::Session;

/// One build of k3node that can serve as a host's helper, hashed once per run.
#[derive(Debug, Clone)]
pub struct SelfBinary {
    pub path: PathBuf,
    pub sha256: String,
    pub arch: String,
}

impl SelfBinary {
    /// The running executable.
    pub async fn current() -> Result<SelfBinary, LinkError> {
        let path = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
        let arch = debian_arch(std::env::consts::ARCH).unwrap_or(std::env::consts::ARCH).to_string();
        SelfBinary::at(path, arch).await
    }

    pub async fn at(path: PathBuf, arch: String) -> Result<SelfBinary, LinkError> {
        let (sha256, _) = crate::digest::sha256_file_async(&path)
            .await
            .map_err(|source| LinkError::SelfBinary { path: path.clone(), source })?;
        Ok(SelfBinary { path, sha256, arch })
    }
}

/// The architectures k3s ships for, by Debian's names.
pub const ARCHITECTURES: [&str; 4] = ["amd64", "arm64", "armhf", "s390x"];

/// The helper builds of a run, one per host architecture: `K3NODE_HELPER_<ARCH>` (e.g.
/// `K3NODE_HELPER_ARM64=/path/to/k3node`), else a `k3node-<arch>` file beside the running
/// executable, else (for its own architecture) the running executable itself.
#[derive(Debug, Clone)]
pub struct Helpers {
    builds: Vec<SelfBinary>,
    own_arch: String,
}

impl Helpers {
    pub async fn discover() -> Result<Helpers, LinkError> {
        let me = SelfBinary::current().await?;
        let dir = me.path.parent().map(PathBuf::from).unwrap_or_default();
        let mut builds = Vec::new();
        for arch in ARCHITECTURES {
            let from_env = std::env::var_os(format!("K3NODE_HELPER_{}", arch.to_ascii_uppercase())).map(PathBuf::from);
            let beside = dir.join(format!("k3node-{arch}"));
            let path = match from_env {
                Some(path) => Some(path),
                None if beside.is_file() => Some(beside),
                None => None,
            };
            match path {
                Some(path) => builds.push(SelfBinary::at(path, arch.to_string()).await?),
                None if arch == me.arch => builds.push(me.clone()),
                None => {}
            }
        }
        Ok(Helpers { builds, own_arch: me.arch })
    }

    /// Only `binary`, for its architecture (tests, benchmarks).
    pub fn only(binary: SelfBinary) -> Helpers {
        Helpers { own_arch: binary.arch.clone(), builds: vec![binary] }
    }

    /// The build for a host of `arch`, or an error naming the build to provide.
    pub fn for_arch(&self, host: &str, arch: &str) -> Result<&SelfBinary, LinkError> {
        self.builds.iter().find(|b| b.arch == arch).ok_or_else(|| LinkError::ArchMismatch {
            host: host.to_string(),
            host_arch: arch.to_string(),
            ours: self.own_arch.clone(),
        })
    }
}

/// Where the helper of a run lives on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Installed at [`HELPER_PATH`] (real runs).
    Installed,
    /// Installed one is used if current, else a temporary copy removed afterwards.
    Temporary,
}

/// What [`connect_helper`] had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HelperState {
    UpToDate,
    Installed,
    Replaced,
    /// A temporary copy runs for this run only.
    Temporary,
}

/// Makes sure the host runs exactly the build of `helpers` for its architecture as its helper,
/// then links to it.
pub async fn connect_helper(
    session: Session,
    helpers: &Helpers,
    placement: Placement,
) -> Result<(SshLink, HelperState), LinkError> {
    let (me, state) = match hello(&session, HELPER_PATH).await {
        Ok(h) => {
            let me = helpers.for_arch(session.host(), &h.arch)?;
            if h.protocol == PROTOCOL_VERSION && h.binary_sha256 == me.sha256 {
                return Ok((SshLink::new(session, HELPER_PATH.into(), None), HelperState::UpToDate));
            }
            tracing::info!(host = session.host(), version = %h.version, "the helper is another build");
            (me, HelperState::Replaced)
        }
        Err(LinkError::Transport(e)) => return Err(LinkError::Transport(e)),
        Err(_) => {
            let out = session.exec_checked(&["uname", "-m"]).await?;
            let machine = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (helpers.for_arch(session.host(), debian_arch(&machine).unwrap_or(&machine))?, HelperState::Installed)
        }
    };
    match placement {
        Placement::Installed => {
            upload_self(&session, me, HELPER_PATH).await?;
            verify(&session, me, HELPER_PATH).await?;
            Ok((SshLink::new(session, HELPER_PATH.into(), None), state))
        }
        Placement::Temporary => {
            let dir = temporary_dir(&session).await?;
            let path = format!("{dir}/k3node");
            let result = async {
                upload_self(&session, me, &path).await?;
                verify(&session, me, &path).await
            }
            .await;
            if let Err(e) = result {
                let _ = session.exec(&["rm", "-rf", "--", &dir], &mut tokio::io::empty()).await;
                return Err(e);
            }
            Ok((SshLink::new(session, path, Some(dir)), HelperState::Temporary))
        }
    }
}

/// A private directory for a temporary helper: /run where it allows executing, else /var/tmp.
async fn temporary_dir(session: &Session) -> Result<String, LinkError> {
    let mut last = None;
    for base in ["/run", "/var/tmp"] {
        let out = session.exec_checked(&["mktemp", "-d", &format!("{base}/k3node-helper.XXXXXXXX")]).await?;
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        // noexec mounts refuse to run anything: try a shell script there first.
        let probe = format!("{dir}/probe");
        let ok = session
            .exec(
                &["sh", "-c", &format!("printf '#!/bin/sh\\n' > {probe} && chmod 700 {probe} && {probe}")],
                &mut tokio::io::empty(),
            )
            .await?;
        if ok.status == 0 {
            let _ = session.exec(&["rm", "-f", &probe], &mut tokio::io::empty()).await;
            return Ok(dir);
        }
        last = Some(ok.stderr_text());
        let _ = session.exec(&["rm", "-rf", "--", &dir], &mut tokio::io::empty()).await;
    }
    Err(LinkError::Protocol {
        host: session.host().into(),
        detail: "no temporary directory allows running the helper (/run and /var/tmp are noexec)".into(),
        stderr: last.unwrap_or_default(),
    })
}

async fn upload_self(session: &Session, me: &SelfBinary, path: &str) -> Result<(), LinkError> {
    let mut file = tokio::fs::File::open(&me.path)
        .await
        .map_err(|source| LinkError::SelfBinary { path: me.path.clone(), source })?;
    session.upload(&mut file, &me.sha256, path, 0o755).await?;
    Ok(())
}

async fn verify(session: &Session, me: &SelfBinary, path: &str) -> Result<(), LinkError> {
    let hello = match hello(session, path).await {
        Ok(hello) => hello,
        // A build linked against a newer glibc than the host's cannot even start there.
        Err(LinkError::Protocol { stderr, .. }) if stderr.contains("GLIBC_") || stderr.contains("ld-linux") => {
            return Err(LinkError::HelperCannotRun {
                host: session.host().into(),
                path: me.path.clone(),
                detail: stderr,
            })
        }
        Err(e) => return Err(e),
    };
    if hello.binary_sha256 != me.sha256 {
        return Err(LinkError::Protocol {
            host: session.host().into(),
            detail: format!("after the upload the helper still reports sha256 {}", hello.binary_sha256),
            stderr: String::new(),
        });
    }
    Ok(())
}

/// `hello` straight over the session (there is no link before the helper is known good).
async fn hello(session: &Session, helper: &str) -> Result<HelloAnswer, LinkError> {
    let line = encode_request(&Hello {}, None);
    let mut decoder = AnswerDecoder::new(Box::new(|_| {}), None);
    let exit = session.exec_io(&[helper, "host", Hello::NAME], &mut line.as_slice(), &mut decoder).await?;
    decoder.finish(session.host(), exit.status, exit.stderr_text(), false)
}
