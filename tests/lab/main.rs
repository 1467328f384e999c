//! Lab tests: real hosts (systemd + sshd in nspawn containers, each in its own network namespace)
//! built once for the whole run, then scenarios one at a time. See ../shared/lab.md.

mod common;
mod daemon;
mod harness_selftest;
mod images;
mod mirror;
mod portable;
mod preflight;
mod provision;
mod scripts;
mod snapshot;
mod support;
mod transport;
mod up;

use std::sync::Arc;

use libtest_mimic::Arguments;
use support::{Lab, LabSpec};

fn main() {
    let mut args = Arguments::from_args();
    // The hosts are shared; scenarios must not interleave.
    args.test_threads = Some(1);
    let lab = match Lab::start(LabSpec {
        hosts: (1..=5).map(|i| format!("h{i}")).chain([portable::HOST.to_string()]).collect(),
        bullseye: vec![portable::HOST.to_string()],
        own_disk: vec![harness_selftest::OWN_DISK.into()],
    }) {
        Ok(lab) => Arc::new(lab),
        Err(e) => {
            // Never a silent skip: without a lab these tests have proven nothing.
            eprintln!("lab tests: cannot build the lab: {e:#}");
            std::process::exit(1);
        }
    };
    portable::prebuild(&args);
    let mut trials = harness_selftest::trials(&lab);
    trials.extend(transport::trials(&lab));
    trials.extend(preflight::trials(&lab));
    trials.extend(scripts::trials(&lab));
    trials.extend(up::trials(&lab));
    trials.extend(provision::trials(&lab));
    trials.extend(daemon::trials(&lab));
    trials.extend(images::trials(&lab));
    // After the scenarios that use h1: its disaster recovery powers h1 off for good (the lab
    // cannot boot a host again).
    trials.extend(snapshot::trials(&lab));
    // Last: the static builds it needs run in the background from the start (on a fresh checkout,
    // minutes of CPU), and the old host it uses is its own.
    trials.extend(portable::trials(&lab));
    let conclusion = libtest_mimic::run(&args, trials);
    up::finish();
    match Arc::try_unwrap(lab) {
        Ok(lab) => drop(lab),
        Err(_) => eprintln!("lab tests: a trial still holds the lab; tearing down through cleanup_leftovers"),
    }
    let _ = support::cleanup_leftovers();
    conclusion.exit();
}
