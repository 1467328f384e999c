//! Getting the cluster file's bytes and turning them into text the YAML reader can trust.
//!
//! Invariants, each a finding of fuzzing `k3node validate -c FILE`:
//! - Only a regular file (or stdin, for `-c -`) is read, and never more than [`MAX_FILE_SIZE`]
//!   bytes: a FIFO without a writer would block forever, /dev/zero would be read until memory
//!   runs out. The file is opened non-blocking so that even opening a FIFO returns at once.
//! - The text is UTF-8; anything else is bad input with a position (the encoding named from its
//!   byte-order mark or NUL pattern, or the offset of the first invalid byte).
//! - Characters YAML does not allow in a stream (C0/C1 controls other than tab and line breaks,
//!   U+FFFE, U+FFFF) are refused with their position: the YAML scanner takes NUL for the end of the
//!   input, so what follows a NUL would be silently ignored.
//! - Line breaks are normalized to LF: CR LF, a bare CR and LF are the same break for YAML, and
//!   every later step (document detection, positions) then sees one kind.

use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::diagnostic::{Pos, Sink};

/// The largest cluster file k3node reads. A real one is a few kilobytes; the cap keeps a wrong
/// path (a disk image, a device) from being read into memory.
pub const MAX_FILE_SIZE: u64 = 1024 * 1024;

/// The `-c` value that means "read the cluster file from stdin".
pub const STDIN_PATH: &str = "-";

/// How diagnostics name a cluster file read from stdin.
pub const STDIN_NAME: &str = "<stdin>";

/// Why the bytes could not be read at all.
#[derive(Debug)]
pub(crate) enum ReadFailure {
    Io(io::Error),
    /// Not a regular file; the kind, as a noun phrase ("a directory").
    NotRegular(&'static str),
    TooLarge(u64),
}

/// The bytes of `path`, or of stdin for [`STDIN_PATH`].
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, ReadFailure> {
    if path.as_os_str() == STDIN_PATH {
        return read_capped(io::stdin().lock());
    }
    // O_NONBLOCK: opening a FIFO without a writer would otherwise block in open(2) itself. It has
    // no effect on reading a regular file, and anything else is refused before the first read.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .map_err(ReadFailure::Io)?;
    // The type of what was opened, not of what the path named a moment before: no race.
    let meta = file.metadata().map_err(ReadFailure::Io)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a named pipe (FIFO)"
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(ReadFailure::NotRegular(what));
    }
    if meta.len() > MAX_FILE_SIZE {
        return Err(ReadFailure::TooLarge(meta.len()));
    }
    read_capped(file)
}

/// Reads at most one byte more than the cap, so that a larger input is told from one that fits.
fn read_capped(source: impl Read) -> Result<Vec<u8>, ReadFailure> {
    let mut bytes = Vec::new();
    source.take(MAX_FILE_SIZE + 1).read_to_end(&mut bytes).map_err(ReadFailure::Io)?;
    if bytes.len() as u64 > MAX_FILE_SIZE {
        return Err(ReadFailure::TooLarge(bytes.len() as u64));
    }
    Ok(bytes)
}

/// The directory relative paths in the cluster file start from: the file's own directory, or the
/// current directory for stdin.
pub(crate) fn base_dir(path: &Path) -> PathBuf {
    if path.as_os_str() == STDIN_PATH {
        return std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// How diagnostics name `path`.
pub(crate) fn display_name(path: &Path) -> String {
    if path.as_os_str() == STDIN_PATH {
        STDIN_NAME.to_string()
    } else {
        path.display().to_string()
    }
}

/// A file name as it may be printed on one line of a terminal: control characters (a newline in
/// the name would split the `file:line:col:` prefix; an escape sequence could rewrite the screen)
/// are shown escaped, as Rust escapes them (`\n`, `\u{1b}`).
pub fn escape_file_name(name: &str) -> String {
    if !name.chars().any(char::is_control) {
        return name.to_string();
    }
    name.chars().map(|c| if c.is_control() { c.escape_debug().to_string() } else { c.to_string() }).collect()
}

/// The bytes as YAML-ready text, or `None` with the problem reported.
pub(crate) fn decode(sink: &mut Sink, bytes: &[u8]) -> Option<String> {
    if let Some(encoding) = foreign_encoding(bytes) {
        sink.error(Pos::START, "", format!("the file is {encoding}, but a cluster file must be UTF-8"))
            .hint("convert it, e.g. `iconv -f UTF-16 -t UTF-8 cluster.yaml > cluster.utf8.yaml` (most editors can also save as UTF-8)");
        return None;
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let offset = e.valid_up_to();
            let at = position_of(&bytes[..offset]);
            sink.error(
                at,
                "",
                format!(
                    "not valid UTF-8: byte 0x{:02X} at offset {offset} (line {}, column {})",
                    bytes[offset], at.line, at.column
                ),
            )
            .hint("a cluster file is UTF-8 text; binary data (such as !!binary values) cannot be part of it");
            return None;
        }
    };
    if !printable(sink, text) {
        return None;
    }
    Some(normalize_line_breaks(text))
}

/// UTF-16 and UTF-32, recognized by their byte-order mark or, without one, by the NUL bytes an
/// ASCII first character leaves (YAML 1.2 section 5.2 detects encodings the same way).
fn foreign_encoding(bytes: &[u8]) -> Option<&'static str> {
    match bytes {
        [0, 0, 0xFE, 0xFF, ..] => Some("UTF-32 (big-endian, with a byte-order mark)"),
        [0xFF, 0xFE, 0, 0, ..] => Some("UTF-32 (little-endian, with a byte-order mark)"),
        [0xFE, 0xFF, ..] => Some("UTF-16 (big-endian, with a byte-order mark)"),
        [0xFF, 0xFE, ..] => Some("UTF-16 (little-endian, with a byte-order mark)"),
        [0, 0, 0, b, ..] if *b != 0 => Some("UTF-32 (big-endian)"),
        [b, 0, 0, 0, ..] if *b != 0 => Some("UTF-32 (little-endian)"),
        [0, b, ..] if *b != 0 => Some("UTF-16 (big-endian)"),
        [b, 0, ..] if *b != 0 => Some("UTF-16 (little-endian)"),
        _ => None,
    }
}

/// YAML's c-printable (YAML 1.2 section 5.1): tab, line breaks, printable ASCII, NEL, and
/// everything from U+00A0 up except U+FFFE and U+FFFF (surrogates cannot occur in a `str`).
fn yaml_printable(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | ' '..='~' | '\u{85}') || (c >= '\u{A0}' && c != '\u{FFFE}' && c != '\u{FFFF}')
}

/// Whether every character is one YAML allows; the first that is not is reported (one position
/// is enough to find the culprit).
fn printable(sink: &mut Sink, text: &str) -> bool {
    let Some((offset, c)) = text.char_indices().find(|(_, c)| !yaml_printable(*c)) else {
        return true;
    };
    let at = position_of(&text.as_bytes()[..offset]);
    let shown = if c == '\0' { "NUL".to_string() } else { format!("U+{:04X}", c as u32) };
    sink.error(at, "", format!("control character {shown} at offset {offset}; YAML does not allow it in a file"))
        .hint("remove it; if the file was produced by a program, check that it wrote text");
    false
}

/// CR LF and bare CR become LF.
fn normalize_line_breaks(text: &str) -> String {
    if !text.contains('\r') {
        return text.to_string();
    }
    text.replace("\r\n", "\n").replace('\r', "\n")
}

/// The 1-based line and column (in characters) right after `prefix`, counting CR LF, CR and LF
/// as one line break each, as YAML does. `prefix` is valid UTF-8 up to its end.
fn position_of(prefix: &[u8]) -> Pos {
    let text = String::from_utf8_lossy(prefix);
    let mut line = 1;
    let mut column = 1;
    let mut after_cr = false;
    for c in text.chars() {
        match c {
            '\n' if after_cr => {}
            '\n' | '\r' => {
                line += 1;
                column = 1;
            }
            _ => column += 1,
        }
        after_cr = c == '\r';
    }
    Pos { line, column }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(bytes: &[u8]) -> Result<String, String> {
        let mut sink = Sink::new("f.yaml");
        decode(&mut sink, bytes).ok_or_else(|| sink.finish().to_string())
    }

    #[test]
    fn line_breaks_of_every_kind_become_lf() {
        assert_eq!(decoded(b"a: 1\r\nb: 2\rc: 3\n").unwrap(), "a: 1\nb: 2\nc: 3\n");
    }

    #[test]
    fn foreign_encodings_are_named() {
        assert!(decoded(b"\xFF\xFEa\x00").unwrap_err().contains("UTF-16 (little-endian, with a byte-order mark)"));
        assert!(decoded(b"\xFE\xFF\x00a").unwrap_err().contains("UTF-16 (big-endian"));
        assert!(decoded(b"\xFF\xFE\x00\x00a\x00\x00\x00").unwrap_err().contains("UTF-32 (little-endian"));
        assert!(decoded(b"\x00\x00\xFE\xFF").unwrap_err().contains("UTF-32 (big-endian"));
        assert!(decoded(b"a\x00p\x00").unwrap_err().contains("f.yaml:1:1: the file is UTF-16 (little-endian)"));
        // A UTF-8 byte-order mark is fine: the reader drops it.
        assert!(decoded(b"\xEF\xBB\xBFa: 1\n").is_ok());
    }

    #[test]
    fn invalid_utf8_is_located_by_offset_line_and_column() {
        let err = decoded(b"a: 1\r\nb: \xC3\x28\n").unwrap_err();
        assert!(err.starts_with("f.yaml:2:4: not valid UTF-8: byte 0xC3 at offset 9 (line 2, column 4)"), "{err}");
    }

    #[test]
    fn control_characters_are_refused_with_their_position() {
        let err = decoded("a: 1\nb: x\0y\n".as_bytes()).unwrap_err();
        assert!(err.starts_with("f.yaml:2:5: control character NUL at offset 9"), "{err}");
        assert!(decoded("a: \u{1b}[2J\n".as_bytes()).unwrap_err().contains("U+001B"));
        assert!(decoded("a: \"caf\u{e9}\"\tb\n".as_bytes()).is_ok());
    }

    #[test]
    fn file_names_with_control_characters_print_on_one_line() {
        assert_eq!(escape_file_name("lab/cluster.yaml"), "lab/cluster.yaml");
        assert_eq!(escape_file_name("a\nb.yaml"), "a\\nb.yaml");
        assert_eq!(escape_file_name("\u{1b}[31mx"), "\\u{1b}[31mx");
    }
}
