//! The helper's code called in this process: local mode (over the real machine) and tests (over
//! a fake one). The exchange is the same bytes as over SSH, through in-memory pipes, so that
//! everything but the transport is exercised.

use std::io::BufReader;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::io::SyncIoBridge;

use super::{Exchange, HostLink, LinkError};
use crate::host::system::HostSystem;

/// Pipe buffers between the caller and the helper's code.
const PIPE: usize = 1 << 16;

pub struct InProcessLink {
    name: String,
    system: Arc<dyn HostSystem>,
}

impl InProcessLink {
    pub fn new(name: impl Into<String>, system: Arc<dyn HostSystem>) -> InProcessLink {
        InProcessLink { name: name.into(), system }
    }
}

#[async_trait]
impl HostLink for InProcessLink {
    fn host(&self) -> &str {
        &self.name
    }

    fn compresses_uploads(&self) -> bool {
        false
    }

    async fn exchange(
        &self,
        operation: &str,
        input: &mut (dyn AsyncRead + Unpin + Send),
        output: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<Exchange, LinkError> {
        let (mut to_helper, helper_in) = tokio::io::duplex(PIPE);
        let (helper_out, from_helper) = tokio::io::duplex(PIPE);
        let (system, op) = (self.system.clone(), operation.to_string());
        let helper = tokio::task::spawn_blocking(move || {
            let mut stdin = BufReader::new(SyncIoBridge::new(helper_in));
            let mut stdout = SyncIoBridge::new(helper_out);
            let status = crate::host::serve(&op, system.as_ref(), &mut stdin, &mut stdout);
            use std::io::Write;
            let _ = stdout.flush();
            status
        });
        let feed = async {
            // The helper may stop reading early (a refused request); that is its answer, not an error.
            let _ = tokio::io::copy(input, &mut to_helper).await;
            let _ = to_helper.shutdown().await;
            drop(to_helper);
        };
        let collect = async {
            // Owned here, so that a failed sink drops it and the helper's next write fails
            // instead of waiting forever on a full pipe.
            let mut from_helper = from_helper;
            let copied = tokio::io::copy(&mut from_helper, output).await;
            match copied {
                Ok(_) => output.flush().await,
                Err(e) => Err(e),
            }
        };
        // Once the helper is done (and its output collected) nothing more is fed: a helper that
        // refused its request early must not wait for an input that never ends (a lock's).
        let mut feed = Box::pin(feed);
        let mut work = Box::pin(async { tokio::join!(collect, helper) });
        let mut fed = false;
        let (collected, status) = loop {
            tokio::select! {
                _ = &mut feed, if !fed => fed = true,
                done = &mut work => break done,
            }
        };
        drop(feed);
        let status = status.map_err(|e| LinkError::Protocol {
            host: self.name.clone(),
            detail: format!("the helper's code panicked: {e}"),
            stderr: String::new(),
        })?;
        collected.map_err(|source| LinkError::Local {
            host: self.name.clone(),
            what: format!("receiving the answer of {operation}"),
            source,
        })?;
        Ok(Exchange { status: status as u32, stderr: String::new() })
    }

    async fn close(&self) {}
}
