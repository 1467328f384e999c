//! Files streamed between the operator and the host, verified at the far end.
//!
//! - `receive-file`: the upload goes into a temp file beside the destination while it is hashed;
//!   it replaces the destination only when size and sha256 match what the operator announced.
//!   A mismatch or a cut stream leaves the destination as it was and no temp file behind.
//! - `send-file`: the file goes out as a framed download; the operator checks the end frame.
//! - `file-digest`: a file's sha256 and size, or that it does not exist.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::error::{describe_io, Failure, HostError};
use super::serve::{Context, HostOperation};
use super::system::sha256_file;
use crate::digest::{copy_seeing, CopyError, Running};
use crate::protocol::files::{Compression, DigestAnswer, FileDigest, FileReceived, FileSent, ReceiveFile, SendFile};
use crate::protocol::frame::FrameError;
use crate::protocol::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: received {received} bytes with sha256 {actual}, expected {size} bytes with sha256 {sha256}; nothing was replaced")]
    Mismatch { path: PathBuf, received: u64, actual: String, size: u64, sha256: String },
    #[error("{}: {}; nothing was replaced", path.display(), source)]
    Stream { path: PathBuf, source: FrameError },
    #[error("{what} {}: {}", path.display(), describe_io(source))]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error("{} does not exist", .0.display())]
    Missing(PathBuf),
    #[error("{}: not an absolute path", .0.display())]
    Relative(PathBuf),
    #[error("{0:?} is not a sha256 (64 hexadecimal digits)")]
    NotSha256(String),
}

impl Failure for FileError {
    fn kind(&self) -> ErrorKind {
        match self {
            FileError::Mismatch { .. } => ErrorKind::ChecksumMismatch,
            FileError::Stream { source: FrameError::Truncated { .. }, .. } => ErrorKind::Unavailable,
            FileError::Stream { .. } => ErrorKind::ChecksumMismatch,
            FileError::Io { source, .. } => ErrorKind::of_io(source),
            FileError::Missing(_) => ErrorKind::NotInstalled,
            FileError::Relative(_) | FileError::NotSha256(_) => ErrorKind::BadRequest,
        }
    }
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileError + 'a {
    move |source| match FrameError::of(&source) {
        Some(frame) => FileError::Stream { path: path.to_path_buf(), source: frame.clone() },
        None => FileError::Io { what, path: path.to_path_buf(), source },
    }
}

fn absolute(path: &str) -> Result<PathBuf, FileError> {
    let path = PathBuf::from(path);
    if !path.is_absolute() {
        return Err(FileError::Relative(path));
    }
    Ok(path)
}

impl HostOperation for ReceiveFile {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<FileReceived, HostError> {
        let sys = ctx.sys;
        let dest = absolute(&self.path)?;
        sweep_stale_temps(sys, &dest);
        let mut file = sys.create_atomic(&dest, self.mode).map_err(io_error("cannot create a temp file for", &dest))?;
        let mut upload = ctx.upload();
        let mut reader: Box<dyn Read + '_> = match self.compression {
            Compression::None => Box::new(&mut upload),
            Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::new(&mut upload).map_err(io_error("cannot decompress", &dest))?)
            }
        };
        // Uncompressed, the stream is the file: the frames' own sha256 (checked against their end
        // frame) is the file's, and hashing every byte a second time would only cost CPU.
        let mut running = (self.compression != Compression::None).then(Running::default);
        let written = copy_seeing(&mut reader, &mut file, 1 << 17, &mut |bytes| {
            if let Some(r) = running.as_mut() {
                r.update(bytes)
            }
        })
        .map_err(|e| match e {
            CopyError::Read(e) => io_error("stream broken while receiving", &dest)(e),
            CopyError::Write(e) => io_error("cannot write", &dest)(e),
        })?;
        drop(reader);
        // A zstd stream can end before the frames do; the frames' end must still be checked.
        io::copy(&mut upload, &mut io::sink()).map_err(io_error("stream broken while receiving", &dest))?;
        let actual = match running {
            Some(r) => r.finish().0,
            None => upload.verified().map(|(_, sha)| sha).unwrap_or_default(),
        };
        if written != self.size || actual != self.sha256 {
            return Err(FileError::Mismatch {
                path: dest,
                received: written,
                actual,
                size: self.size,
                sha256: self.sha256,
            }
            .into());
        }
        file.commit().map_err(io_error("cannot put in place", &dest))?;
        Ok(FileReceived { path: self.path, sha256: actual })
    }
}

/// Temp files of earlier writes of `dest` that were cut off (their writer killed): under the host
/// lock nobody else writes `dest` now, so they are leftovers.
fn sweep_stale_temps(sys: &dyn crate::host::system::HostSystem, dest: &Path) {
    let (Some(dir), Some(name)) = (dest.parent(), dest.file_name()) else { return };
    let prefix = format!(".{}.", name.to_string_lossy());
    for entry in sys.read_dir_names(dir).unwrap_or_default() {
        if entry.starts_with(&prefix) && entry.ends_with(".k3node-tmp") {
            let _ = sys.remove_file(&dir.join(entry));
        }
    }
}

impl HostOperation for SendFile {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<FileSent, HostError> {
        let sys = ctx.sys;
        let path = absolute(&self.path)?;
        let file = sys.open_read(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => FileError::Missing(path.clone()),
            _ => FileError::Io { what: "cannot open", path: path.clone(), source: e },
        })?;
        let mut download = match &self.sha256 {
            Some(sha256) if crate::digest::is_sha256_hex(sha256) => ctx.download_verified(sha256),
            Some(other) => return Err(FileError::NotSha256(other.chars().take(80).collect()).into()),
            None => ctx.download(),
        };
        // Read a frame's worth at a time: io::copy's own buffer is 8 KiB, a syscall per 8 KiB.
        let mut file = io::BufReader::with_capacity(crate::protocol::frame::CHUNK, file);
        io::copy(&mut file, &mut download).map_err(io_error("cannot send", &path))?;
        let (size, sha256) = download.finish().map_err(io_error("cannot send", &path))?;
        Ok(FileSent { size, sha256 })
    }
}

impl HostOperation for FileDigest {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<DigestAnswer, HostError> {
        let path = absolute(&self.path)?;
        match sha256_file(ctx.sys, &path) {
            Ok(sha256) => {
                let size = ctx.sys.file_size(&path).map_err(io_error("cannot stat", &path))?;
                Ok(DigestAnswer { sha256: Some(sha256), size: Some(size) })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(DigestAnswer { sha256: None, size: None }),
            Err(e) => Err(FileError::Io { what: "cannot read", path, source: e }.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::host::system::fake::FakeSystem;
    use crate::host::system::HostSystem;
    use crate::protocol::files::{Compression, ReceiveFile, SendFile};
    use crate::protocol::frame::{FrameError, FrameReader, FrameWriter};
    use crate::protocol::{encode_request, AnswerLine, ErrorKind};
    use std::io::{Read, Write};
    use std::path::Path;

    fn request(path: &str, data: &[u8], compression: Compression) -> ReceiveFile {
        ReceiveFile {
            path: path.into(),
            size: data.len() as u64,
            sha256: crate::digest::sha256_hex(data),
            mode: 0o750,
            compression,
        }
    }

    fn upload(sys: &FakeSystem, req: &ReceiveFile, wire: &[u8]) -> Vec<AnswerLine> {
        let mut input = encode_request(req, None);
        let mut w = FrameWriter::new(&mut input);
        w.write_all(wire).unwrap();
        w.finish().unwrap();
        let mut out = Vec::new();
        crate::host::serve("receive-file", sys, &mut input.as_slice(), &mut out);
        String::from_utf8_lossy(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn a_compressed_upload_lands_verified_with_its_mode() {
        let sys = FakeSystem::new();
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let packed = zstd::encode_all(&data[..], 3).unwrap();
        let got = upload(&sys, &request("/opt/bin/k3s", &data, Compression::Zstd), &packed);
        assert!(matches!(&got[..], [AnswerLine::Result { .. }]), "{got:?}");
        assert_eq!(sys.bytes("/opt/bin/k3s").unwrap(), data);
        assert_eq!(sys.file_mode(Path::new("/opt/bin/k3s")).unwrap(), 0o750);
    }

    #[test]
    fn a_corrupted_upload_replaces_nothing() {
        let sys = FakeSystem::new().file("/opt/k3s", "old binary");
        let data = vec![7u8; 100_000];
        let mut corrupt = data.clone();
        corrupt[50_000] ^= 1;
        let got = upload(&sys, &request("/opt/k3s", &data, Compression::None), &corrupt);
        let [AnswerLine::Error(e)] = &got[..] else { panic!("{got:?}") };
        assert_eq!(e.kind, ErrorKind::ChecksumMismatch);
        assert!(e.message.contains("nothing was replaced"), "{}", e.message);
        assert_eq!(sys.contents("/opt/k3s").unwrap(), "old binary");
    }

    #[test]
    fn a_receive_removes_the_temp_files_an_interrupted_one_left() {
        let sys = FakeSystem::new()
            .file("/opt/bin/.k3s.aB3x9Q.k3node-tmp", "half of an old upload")
            .file("/opt/bin/.k3s-other.aB3x9Q.k3node-tmp", "someone else's")
            .file("/opt/bin/kubectl", "x");
        let data = b"new k3s".to_vec();
        let got = upload(&sys, &request("/opt/bin/k3s", &data, Compression::None), &data);
        assert!(matches!(&got[..], [AnswerLine::Result { .. }]), "{got:?}");
        let mut names = sys.read_dir_names(Path::new("/opt/bin")).unwrap();
        names.sort();
        assert_eq!(names, vec![".k3s-other.aB3x9Q.k3node-tmp", "k3s", "kubectl"]);
    }

    #[test]
    fn a_cut_upload_is_an_error_not_a_short_file() {
        let sys = FakeSystem::new();
        let data = vec![1u8; 10_000];
        let req = request("/opt/f", &data, Compression::None);
        let mut input = encode_request(&req, None);
        let mut w = FrameWriter::new(&mut input);
        w.write_all(&data).unwrap();
        w.finish().unwrap();
        input.truncate(input.len() - 120);
        let mut out = Vec::new();
        assert_eq!(crate::host::serve("receive-file", &sys, &mut input.as_slice(), &mut out), 1);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("cut off") && text.contains("\"unavailable\""), "{text}");
        assert!(!sys.exists(Path::new("/opt/f")));
    }

    #[test]
    fn a_sent_file_arrives_framed_between_answer_lines() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 241) as u8).collect();
        let sys = FakeSystem::new().file_bytes("/var/lib/snap.tar.zst", &data);
        let input = encode_request(&SendFile { path: "/var/lib/snap.tar.zst".into(), sha256: None }, None);
        let mut out = Vec::new();
        assert_eq!(crate::host::serve("send-file", &sys, &mut input.as_slice(), &mut out), 0);
        // The frames come first, then the result line.
        let marker = b"{\"type\":\"result\"";
        let end = out.windows(marker.len()).rposition(|w| w == marker).unwrap();
        let result: AnswerLine = serde_json::from_slice(out[end..].trim_ascii_end()).unwrap();
        let AnswerLine::Result { value } = result else { panic!("{result:?}") };
        assert_eq!(value["size"], data.len());
        let mut back = Vec::new();
        FrameReader::new(&out[..end]).read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn a_file_sent_with_its_known_sha256_is_checked_by_the_receiver_and_a_malformed_one_is_refused() {
        let data: Vec<u8> = (0..1_500_000u32).map(|i| (i % 239) as u8).collect();
        let sys = FakeSystem::new().file_bytes("/var/lib/snap.tar.zst", &data);
        let send = |sha256: &str| {
            let request = SendFile { path: "/var/lib/snap.tar.zst".into(), sha256: Some(sha256.into()) };
            let mut out = Vec::new();
            let status =
                crate::host::serve("send-file", &sys, &mut encode_request(&request, None).as_slice(), &mut out);
            (status, out)
        };
        let read_back = |out: &[u8]| {
            let marker = b"{\"type\":\"result\"";
            let end = out.windows(marker.len()).rposition(|w| w == marker).unwrap();
            let mut back = Vec::new();
            FrameReader::new(&out[..end]).read_to_end(&mut back).map(|_| back)
        };
        let (status, out) = send(&crate::digest::sha256_hex(&data));
        assert_eq!(status, 0);
        assert_eq!(read_back(&out).unwrap(), data);

        // A file that changed since its sha256 was recorded: the receiver refuses it.
        let (status, out) = send(&"0".repeat(64));
        assert_eq!(status, 0, "the host does not hash it");
        let err = read_back(&out).unwrap_err();
        assert!(matches!(FrameError::of(&err), Some(FrameError::Mismatch { .. })), "{err}");

        let (status, out) = send("abc\n{\"op\":\"reset\"}");
        assert_eq!(status, 1);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("not a sha256") && text.contains("bad-request"), "{text}");
    }
}
