//! How the operator side tells whoever drives it (a terminal, a test) what is going on, without
//! knowing anything about terminals.

/// Receives per-host progress while hosts are worked on in parallel. Calls come from many tasks.
pub trait Observer: Send + Sync {
    /// `host` entered `phase` (connecting, installing agent, checking...).
    fn phase(&self, host: &str, phase: &str);
    /// A progress line from the host's agent.
    fn message(&self, host: &str, message: &str) {
        self.phase(host, message)
    }
    /// The host is finished; `ok` is false when it failed or a check failed.
    fn done(&self, host: &str, ok: bool, summary: &str);
}

/// For callers that want no progress.
pub struct Silent;

impl Observer for Silent {
    fn phase(&self, _: &str, _: &str) {}
    fn done(&self, _: &str, _: bool, _: &str) {}
}
