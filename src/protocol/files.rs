//! Files moved between the operator and a host, streamed in frames both ways.

use serde::{Deserialize, Serialize};

use super::Operation;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Zstd,
}

/// A file streamed to the host: written to a temp file beside `path`, checked against `size` and
/// `sha256` (of the uncompressed bytes), then renamed into place with `mode`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReceiveFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub mode: u32,
    pub compression: Compression,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileReceived {
    pub path: String,
    /// sha256 of what was written, as the host computed it.
    pub sha256: String,
}

impl Operation for ReceiveFile {
    const NAME: &'static str = "receive-file";
    const UPLOAD: bool = true;
    const DOWNLOAD: bool = false;
    type Answer = FileReceived;
    fn mutates(&self) -> bool {
        true
    }
}

/// A file of the host streamed to the operator (a snapshot pull, a restore relay).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SendFile {
    pub path: String,
    /// The sha256 the file is known to have (a snapshot's sha256 file): the host sends it as the
    /// end frame's without hashing the file again, and the operator, which hashes every download,
    /// refuses a file that is not that. `None`: the host hashes what it sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileSent {
    pub size: u64,
    pub sha256: String,
}

impl Operation for SendFile {
    const NAME: &'static str = "send-file";
    const UPLOAD: bool = false;
    const DOWNLOAD: bool = true;
    type Answer = FileSent;
    fn mutates(&self) -> bool {
        false
    }
}

/// The sha256 and size of a file on the host; `None` when it does not exist.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DigestAnswer {
    pub sha256: Option<String>,
    pub size: Option<u64>,
}

impl Operation for FileDigest {
    const NAME: &'static str = "file-digest";
    const UPLOAD: bool = false;
    const DOWNLOAD: bool = false;
    type Answer = DigestAnswer;
    fn mutates(&self) -> bool {
        false
    }
}
