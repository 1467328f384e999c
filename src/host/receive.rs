//! `receive-file`: a file streamed from the operator, verified before it replaces anything.

use std::fs::{self, Permissions};
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::protocol::{AgentErrorKind, Compression, ReceiveFile};

/// Writes the stream into a temp file beside the destination while hashing it; renames it into
/// place only when size and sha256 match what the operator announced. A mismatch leaves the
/// destination as it was and no temp file behind.
pub fn receive(request: &ReceiveFile, input: &mut dyn BufRead) -> Result<String, (AgentErrorKind, String)> {
    let failed = |what: &str, e: io::Error| (AgentErrorKind::Failed, format!("{what} {}: {e}", request.path));
    let dest = Path::new(&request.path);
    let dir = crate::fsutil::parent_dir(dest);
    fs::create_dir_all(dir).map_err(|e| failed("cannot create the directory of", e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".k3node-receive.")
        .tempfile_in(dir)
        .map_err(|e| failed("cannot create a temp file for", e))?;

    let mut reader: Box<dyn Read + '_> = match request.compression {
        Compression::None => Box::new(input.take(request.size)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(input).map_err(|e| failed("cannot decompress", e))?)
        }
    };
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    let mut buf = vec![0u8; 1 << 17];
    loop {
        let n = reader.read(&mut buf).map_err(|e| failed("stream broken while receiving", e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n]).map_err(|e| failed("cannot write", e))?;
        written += n as u64;
    }
    let actual = hex::encode(hasher.finalize());
    if written != request.size || actual != request.sha256 {
        return Err((
            AgentErrorKind::ChecksumMismatch,
            format!("{}: received {written} bytes with sha256 {actual}, expected {} bytes with sha256 {}; nothing was replaced", request.path, request.size, request.sha256),
        ));
    }
    tmp.as_file()
        .set_permissions(Permissions::from_mode(request.mode))
        .map_err(|e| failed("cannot set the mode of", e))?;
    tmp.as_file().sync_all().map_err(|e| failed("cannot flush", e))?;
    tmp.persist(dest).map_err(|e| failed("cannot rename into place", e.error))?;
    crate::fsutil::sync_dir(dir).map_err(|e| failed("cannot flush the directory of", e))?;
    Ok(actual)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &Path, data: &[u8], compression: Compression) -> ReceiveFile {
        ReceiveFile {
            path: path.display().to_string(),
            size: data.len() as u64,
            sha256: hex::encode(Sha256::digest(data)),
            mode: 0o750,
            compression,
        }
    }

    #[test]
    fn compressed_stream_lands_verified_with_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("bin/k3s");
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let packed = zstd::encode_all(&data[..], 3).unwrap();
        receive(&request(&dest, &data, Compression::Zstd), &mut &packed[..]).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), data);
        assert_eq!(fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o750);
    }

    #[test]
    fn corrupted_stream_replaces_nothing_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("k3s");
        fs::write(&dest, b"old binary").unwrap();
        let data = vec![7u8; 100_000];
        let mut corrupt = data.clone();
        corrupt[50_000] ^= 1;
        let (kind, message) = receive(&request(&dest, &data, Compression::None), &mut &corrupt[..]).unwrap_err();
        assert_eq!(kind, AgentErrorKind::ChecksumMismatch);
        assert!(message.contains("nothing was replaced"), "{message}");
        assert_eq!(fs::read(&dest).unwrap(), b"old binary");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
