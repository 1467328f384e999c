//! `hello`: which build answers, with which protocol and capabilities.

use super::error::HostError;
use super::serve::{Context, HostOperation};
use crate::protocol::{debian_arch, ErrorKind, Hello, HelloAnswer, CAPABILITIES, PROTOCOL_VERSION};

impl HostOperation for Hello {
    fn run(self, _ctx: &mut Context<'_, '_>) -> Result<HelloAnswer, HostError> {
        // Our own executable, whatever system the operation works on: the operator compares it
        // with the binary it would upload.
        let (binary_sha256, _) = crate::digest::sha256_file(std::path::Path::new("/proc/self/exe"))
            .map_err(|e| HostError::new(ErrorKind::Failed, format!("cannot hash my own executable: {e}")))?;
        let machine =
            nix::sys::utsname::uname().map(|u| u.machine().to_string_lossy().into_owned()).unwrap_or_default();
        Ok(HelloAnswer {
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: PROTOCOL_VERSION,
            binary_sha256,
            arch: debian_arch(&machine).unwrap_or(&machine).to_string(),
            capabilities: CAPABILITIES.iter().map(|c| c.to_string()).collect(),
        })
    }
}
