//! Checks that need every host's answer: unique identities, clocks that agree.

use std::collections::BTreeMap;

use crate::protocol::preflight::{Check, HostFacts, Status};

/// k0sctl's limit: further than this from the median clock fails.
pub const MAX_CLOCK_SKEW_MS: i64 = 30_000;

/// What one host answered, with the operator's estimate of its clock offset (host clock minus
/// the operator's, at the midpoint of the request).
pub struct HostAnswer<'a> {
    pub host: &'a str,
    pub address: &'a str,
    pub facts: &'a HostFacts,
    pub clock_offset_ms: i64,
    /// The fingerprint of the SSH host key it presented (None in-process).
    pub host_key: Option<&'a str>,
}

/// Returns the cross-host checks for each host, in input order.
pub fn cross_host_checks(answers: &[HostAnswer<'_>]) -> Vec<Vec<Check>> {
    let hostnames = group(answers, |a| vec![a.facts.hostname.clone()]);
    let machine_ids = group(answers, |a| vec![a.facts.machine_id.clone()]);
    // Only the address the cluster file uses must be unique: cloned VMs legitimately share a NAT
    // address (Vagrant's 10.0.2.15) that k3s never uses.
    let addresses = group(answers, |a| {
        let mut all = a.facts.addresses.clone();
        all.push(a.address.to_string());
        all.sort();
        all.dedup();
        all
    });
    let median = median(answers.iter().map(|a| a.clock_offset_ms).collect());
    let host_keys = group(answers, |a| a.host_key.map(str::to_string).into_iter().collect());

    answers
        .iter()
        .map(|a| {
            let mut checks = vec![
                uniqueness(
                    "unique-hostname",
                    "hostname",
                    std::slice::from_ref(&a.facts.hostname),
                    a.host,
                    &hostnames,
                    "give every host its own hostname (hostnamectl set-hostname NAME): k3s names nodes after it",
                ),
                uniqueness(
                    "unique-machine-id",
                    "machine-id",
                    std::slice::from_ref(&a.facts.machine_id),
                    a.host,
                    &machine_ids,
                    "regenerate it on cloned hosts: rm /etc/machine-id && systemd-machine-id-setup",
                ),
                uniqueness(
                    "unique-address",
                    "address",
                    &[a.address.to_string()],
                    a.host,
                    &addresses,
                    "give every host its own address; cloned VMs often share one",
                ),
            ];
            checks.push(clock(a.clock_offset_ms, median.unwrap_or(0)));
            if let Some(key) = a.host_key {
                let mut check = uniqueness(
                    "unique-host-key",
                    "SSH host key",
                    &[key.to_string()],
                    a.host,
                    &host_keys,
                    "cloned images share host keys: on the clones, remove /etc/ssh/ssh_host_* and run ssh-keygen -A, then update known_hosts",
                );
                // Not fatal to k3s, but a man in the middle of one clone can pose as the others.
                if check.status == Status::Fail {
                    check.status = Status::Warn;
                }
                checks.push(check);
            }
            checks
        })
        .collect()
}

fn group<'a>(
    answers: &[HostAnswer<'a>],
    values: impl Fn(&HostAnswer<'a>) -> Vec<String>,
) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in answers {
        for v in values(a) {
            if !v.is_empty() {
                map.entry(v).or_default().push(a.host.to_string());
            }
        }
    }
    map
}

fn uniqueness(
    id: &str,
    what: &str,
    values: &[String],
    host: &str,
    groups: &BTreeMap<String, Vec<String>>,
    fix: &str,
) -> Check {
    let clashes: Vec<String> = values
        .iter()
        .filter_map(|v| {
            let others: Vec<&str> = groups.get(v)?.iter().map(String::as_str).filter(|h| *h != host).collect();
            (!others.is_empty()).then(|| format!("{what} {v} is also on {}", others.join(", ")))
        })
        .collect();
    if clashes.is_empty() {
        Check { id: id.into(), status: Status::Pass, reason: format!("{what} is unique"), fix: None }
    } else {
        Check { id: id.into(), status: Status::Fail, reason: clashes.join("; "), fix: Some(fix.into()) }
    }
}

fn clock(offset: i64, median: i64) -> Check {
    let skew = offset - median;
    let reason = format!("clock is {:+.1} s from the median of the hosts", skew as f64 / 1000.0);
    if skew.abs() > MAX_CLOCK_SKEW_MS {
        Check {
            id: "clock-skew".into(),
            status: Status::Fail,
            reason,
            fix: Some("enable time sync on every host (timedatectl set-ntp true, or chrony); etcd and TLS need clocks that agree".into()),
        }
    } else {
        Check { id: "clock-skew".into(), status: Status::Pass, reason, fix: None }
    }
}

fn median(mut values: Vec<i64>) -> Option<i64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 0 { (values[mid - 1] + values[mid]) / 2 } else { values[mid] })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(hostname: &str, machine_id: &str, address: &str) -> HostFacts {
        HostFacts {
            hostname: hostname.into(),
            machine_id: machine_id.into(),
            addresses: vec![address.into()],
            clock_unix_ms: 0,
        }
    }

    fn status_of(checks: &[Check], id: &str) -> Status {
        checks.iter().find(|c| c.id == id).unwrap().status
    }

    #[test]
    fn one_clock_far_from_the_median_fails_only_that_host() {
        let f: Vec<HostFacts> =
            (1..=4).map(|i| facts(&format!("h{i}"), &format!("m{i}"), &format!("10.0.0.{i}"))).collect();
        let offsets = [120, -300, 45_000, 800];
        let answers: Vec<HostAnswer> = (0..4)
            .map(|i| HostAnswer {
                host: ["h1", "h2", "h3", "h4"][i],
                address: &f[i].addresses[0],
                facts: &f[i],
                clock_offset_ms: offsets[i],
                host_key: None,
            })
            .collect();
        let result = cross_host_checks(&answers);
        let statuses: Vec<Status> = result.iter().map(|c| status_of(c, "clock-skew")).collect();
        assert_eq!(statuses, [Status::Pass, Status::Pass, Status::Fail, Status::Pass]);
        assert!(result[2].iter().find(|c| c.id == "clock-skew").unwrap().reason.contains("+44.5 s"));
    }

    #[test]
    fn duplicate_hostname_and_machine_id_fail_on_both_hosts_naming_the_other() {
        let a = facts("node", "same", "10.0.0.1");
        let b = facts("node", "same", "10.0.0.2");
        let mut c = facts("other", "unique", "10.0.0.3");
        c.addresses.push("10.0.2.15".into());
        let mut a = a;
        a.addresses.push("10.0.2.15".into());
        let answers = [
            HostAnswer { host: "a", address: "10.0.0.1", facts: &a, clock_offset_ms: 0, host_key: Some("SHA256:one") },
            HostAnswer { host: "b", address: "10.0.0.2", facts: &b, clock_offset_ms: 0, host_key: Some("SHA256:two") },
            HostAnswer { host: "c", address: "10.0.0.3", facts: &c, clock_offset_ms: 0, host_key: Some("SHA256:two") },
        ];
        let result = cross_host_checks(&answers);
        assert_eq!(status_of(&result[0], "unique-hostname"), Status::Fail);
        assert!(result[0].iter().find(|c| c.id == "unique-hostname").unwrap().reason.contains("also on b"));
        assert_eq!(status_of(&result[1], "unique-machine-id"), Status::Fail);
        assert_eq!(status_of(&result[2], "unique-hostname"), Status::Pass);
        assert_eq!(status_of(&result[2], "unique-address"), Status::Pass);
        // Cloned images sharing a host key: a warning on both, naming the other.
        assert_eq!(status_of(&result[0], "unique-host-key"), Status::Pass);
        assert_eq!(status_of(&result[1], "unique-host-key"), Status::Warn);
        let c_key = result[2].iter().find(|c| c.id == "unique-host-key").unwrap();
        assert!(
            c_key.status == Status::Warn && c_key.reason.contains("SSH host key SHA256:two is also on b"),
            "{c_key:?}"
        );
    }
}
