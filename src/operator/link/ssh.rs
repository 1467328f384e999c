//! The helper over a host's SSH session: `<helper> host <operation>` on an exec channel, as root
//! (through `sudo -n` when the SSH user is not root).

use std::sync::Arc;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Exchange, HostLink, LinkError};
use crate::transport::Session;

pub struct SshLink {
    session: Arc<Session>,
    /// Where the helper runs from: the installed one, or a temporary copy (dry runs, preflight).
    helper: String,
    /// A temporary helper's directory, removed when the link closes.
    temporary_dir: Option<String>,
}

impl SshLink {
    pub fn new(session: Session, helper: String, temporary_dir: Option<String>) -> SshLink {
        SshLink { session: Arc::new(session), helper, temporary_dir }
    }

    pub fn session(&self) -> &Session {
        &self.session
    }
}

#[async_trait]
impl HostLink for SshLink {
    fn host(&self) -> &str {
        self.session.host()
    }

    fn compresses_uploads(&self) -> bool {
        true
    }

    async fn exchange(
        &self,
        operation: &str,
        input: &mut (dyn AsyncRead + Unpin + Send),
        output: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<Exchange, LinkError> {
        let exit = self.session.exec_io(&[&self.helper, "host", operation], input, output).await?;
        Ok(Exchange { status: exit.status, stderr: exit.stderr_text() })
    }

    async fn close(&self) {
        if let Some(dir) = &self.temporary_dir {
            // Dry runs and preflight leave nothing lasting on the host.
            let _ = self.session.exec(&["rm", "-rf", "--", dir], &mut tokio::io::empty()).await;
        }
        self.session.close_ref().await;
    }
}
