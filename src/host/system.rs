//! The host system boundary.
