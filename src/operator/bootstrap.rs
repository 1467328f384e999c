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

/// The running k3node executable, hashed once per run.
#[derive(Debug, Clone)]
pub struct SelfBinary {
    pub path: PathBuf,
    pub sha256: String,
    pub arch: String,
}

impl SelfBinary {
    pub async fn current() -> Result<SelfBinary, LinkError> {
        let path = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
        let (sha256, _) = crate::digest::sha256_file_async(&path)
            .await
            .map_err(|source| LinkError::SelfBinary { path: path.clone(), source })?;
        Ok(SelfBinary {
            path,
            sha256,
            arch: debian_arch(std::env::consts::ARCH).unwrap_or(std::env::consts::ARCH).to_string(),
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

/// Makes sure the host runs exactly this build as its helper, then links to it.
pub async fn connect_helper(
    session: Session,
    me: &SelfBinary,
    placement: Placement,
) -> Result<(SshLink, HelperState), LinkError> {
    let state = match hello(&session, HELPER_PATH).await {
        Ok(h) if h.protocol == PROTOCOL_VERSION && h.binary_sha256 == me.sha256 => {
            return Ok((SshLink::new(session, HELPER_PATH.into(), None), HelperState::UpToDate));
        }
        Ok(h) => {
            tracing::info!(host = session.host(), version = %h.version, "the helper is another build");
            check_arch(&session, &h.arch, me)?;
            HelperState::Replaced
        }
        Err(LinkError::Transport(e)) => return Err(LinkError::Transport(e)),
        Err(_) => {
            let out = session.exec_checked(&["uname", "-m"]).await?;
            let machine = String::from_utf8_lossy(&out.stdout).trim().to_string();
            check_arch(&session, debian_arch(&machine).unwrap_or(&machine), me)?;
            HelperState::Installed
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
    let hello = hello(session, path).await?;
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

fn check_arch(session: &Session, host_arch: &str, me: &SelfBinary) -> Result<(), LinkError> {
    if host_arch != me.arch {
        return Err(LinkError::ArchMismatch {
            host: session.host().into(),
            host_arch: host_arch.into(),
            ours: me.arch.clone(),
        });
    }
    Ok(())
}
