//! Host side: the agent that runs on each host as root, invoked as `k3node host <operation>`.

pub mod k3s;
pub mod preflight;
mod receive;
mod serve;
pub mod system;

pub use serve::serve;

/// An I/O error in a message: the system's words ("Permission denied"), without "(os error 13)".
pub(crate) fn describe_io(err: &std::io::Error) -> String {
    let s = err.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}
