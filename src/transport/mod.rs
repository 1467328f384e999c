//! SSH transport.
