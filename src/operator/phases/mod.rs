//! The phases runs are made of, one file each. A command is a list of them
//! (see [`super::actions`]); a new capability adds a phase here and a line to an action.

pub mod artifacts;
pub mod connect;
pub mod daemon;
pub mod images;
pub mod install;
pub mod kubeconfig;
pub mod lock;
pub mod manifests;
pub mod preflight;
pub mod ready;
pub mod reset;
pub mod restore;
pub mod schedule;
pub mod snapshot;
