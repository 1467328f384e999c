//! k3s's containerd through `k3s ctr` (contract section 7): always with k3s's own socket and the
//! `k8s.io` namespace spelled out, so that nothing lands in a system containerd or in another
//! namespace the kubelet does not see, whatever the environment says.

use std::path::Path;
use std::time::Duration;

use super::ImagesError;
use crate::host::k3s::layout::K3S_BIN;
use crate::host::system::{CommandOutput, HostSystem};
use crate::protocol::images::{StoredImage, PIN_LABELS, PIN_VALUE};

/// k3s's containerd socket.
pub const SOCKET: &str = "/run/k3s/containerd/containerd.sock";
/// The namespace the kubelet (CRI) uses.
pub const NAMESPACE: &str = "k8s.io";
/// An import streams as fast as the network brings it; an hour covers gigabytes on a slow link.
pub const IMPORT_TIMEOUT: Duration = Duration::from_secs(3600);

/// `k3s ctr` bound to k3s's containerd.
pub struct Ctr<'a> {
    sys: &'a dyn HostSystem,
}

impl<'a> Ctr<'a> {
    /// Ready to talk to k3s's containerd: k3s installed and its containerd's socket present.
    pub fn new(sys: &'a dyn HostSystem) -> Result<Ctr<'a>, ImagesError> {
        if !sys.exists(Path::new(K3S_BIN)) {
            return Err(ImagesError::NotInstalled);
        }
        if !sys.exists(Path::new(SOCKET)) {
            return Err(ImagesError::NotRunning { detail: format!("its containerd socket {SOCKET} does not exist") });
        }
        Ok(Ctr { sys })
    }

    fn args<'b>(rest: &[&'b str]) -> Vec<&'b str> {
        let mut args = vec!["ctr", "--address", SOCKET, "--namespace", NAMESPACE];
        args.extend_from_slice(rest);
        args
    }

    fn check(&self, what: &str, out: std::io::Result<CommandOutput>) -> Result<CommandOutput, ImagesError> {
        let out = out.map_err(|e| ImagesError::Ctr { what: what.into(), detail: e.to_string() })?;
        if out.success() {
            return Ok(out);
        }
        let detail = out.failure_summary();
        if detail.contains("connection refused")
            || detail.contains("no such file or directory") && detail.contains(SOCKET)
        {
            return Err(ImagesError::NotRunning { detail: format!("its containerd does not answer ({detail})") });
        }
        Err(ImagesError::Ctr { what: what.into(), detail })
    }

    /// The named images of `k8s.io` (containerd's own `sha256:` references of the CRI left out).
    pub fn list(&self) -> Result<Vec<StoredImage>, ImagesError> {
        let out = self.check("images ls", self.sys.run(Path::new(K3S_BIN), &Self::args(&["images", "ls"])))?;
        Ok(parse_list(&out.stdout))
    }

    /// Streams an image archive (a tar) into containerd, without unpacking (as k3s imports its
    /// preloaded images: the CRI unpacks what a container needs when it starts).
    pub fn import(&self, tar: &mut dyn std::io::Read) -> Result<String, ImagesError> {
        let args = Self::args(&["images", "import", "--no-unpack", "-"]);
        let out = match self.sys.run_streaming(Path::new(K3S_BIN), &args, tar, IMPORT_TIMEOUT) {
            Err(e) => return Err(ImagesError::from_stream(e)),
            Ok(out) => out,
        };
        Ok(self.check("images import", Ok(out))?.stdout)
    }

    /// Sets the pin labels on `name`.
    pub fn pin(&self, name: &str) -> Result<(), ImagesError> {
        let labels: Vec<String> = PIN_LABELS.iter().map(|l| format!("{l}={PIN_VALUE}")).collect();
        let mut rest = vec!["images", "label", name];
        rest.extend(labels.iter().map(String::as_str));
        self.check("images label", self.sys.run(Path::new(K3S_BIN), &Self::args(&rest)))?;
        Ok(())
    }
}

/// Reads `ctr images ls`: `REF TYPE DIGEST SIZE PLATFORMS LABELS`, whitespace-aligned, where SIZE
/// holds a space (`3.0 MiB`) and LABELS is `-` or `key=value,...` (never with spaces).
pub fn parse_list(text: &str) -> Vec<StoredImage> {
    let mut images = Vec::new();
    for line in text.lines().skip_while(|l| l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 4 || fields[0] == "REF" || fields[0].starts_with("sha256:") {
            continue;
        }
        let labels = fields[fields.len() - 1];
        let pinned = PIN_LABELS.iter().all(|l| labels.split(',').any(|kv| kv == format!("{l}={PIN_VALUE}")));
        images.push(StoredImage { name: fields[0].to_string(), digest: fields[2].to_string(), pinned });
    }
    images
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctr_listings_are_read_with_their_digests_and_pins_and_cri_ids_left_out() {
        // As containerd 1.6's ctr prints it (columns padded with spaces).
        let text = "REF                       TYPE                                    DIGEST                                                                  SIZE    PLATFORMS               LABELS                          \n\
docker.io/library/multi:1 application/vnd.oci.image.index.v1+json sha256:de7d1d94b58fe63c28fb0080f419074f88d6b83993f43487ccde1ab5baa635a5 1.2 KiB linux/amd64,linux/arm64 io.cattle.k3s.pinned=pinned,io.cri-containerd.image=managed,io.cri-containerd.pinned=pinned \n\
docker.io/library/app:1   application/vnd.oci.image.manifest.v1+json sha256:07e7bfefaeca07d6473b3bb89eddc51539264c2d75e1bf4c0d5db8785cc43ad2 3.0 MiB linux/amd64 - \n\
sha256:da79ae0c86cf9cc91efb37668a26ba0b42aa627b699b397e4a00f9b326debb21 application/vnd.oci.image.index.v1+json sha256:de7d1d94b58fe63c28fb0080f419074f88d6b83993f43487ccde1ab5baa635a5 1.2 KiB linux/amd64,linux/arm64 io.cri-containerd.image=managed \n";
        let images = parse_list(text);
        assert_eq!(images.len(), 2, "{images:?}");
        assert_eq!(images[0].name, "docker.io/library/multi:1");
        assert_eq!(images[0].digest, "sha256:de7d1d94b58fe63c28fb0080f419074f88d6b83993f43487ccde1ab5baa635a5");
        assert!(images[0].pinned);
        assert!(!images[1].pinned);
    }
}
