//! Preflight checks run on the host.
