//! Any bytes as a cluster file: reading and validating them (what `k3node validate -c FILE` does
//! after reading the file) must never panic, overflow the stack or take more than linear time,
//! and a file that is accepted must render every host's config.yaml and env file.

use std::path::Path;

use k3node::cluster;
use k3node::operator::node_config;

pub fn run(data: &[u8]) {
    match cluster::parse_bytes("fuzz.yaml", Path::new("/srv/lab"), data) {
        Ok(file) => {
            // Accepted files reach the hosts: their rendering must hold too.
            let _ = file.warnings.to_string();
            for host in &file.hosts {
                let _ = node_config::config_yaml(&file, host, Some("10.0.0.1"));
                let _ = node_config::env(&file, host, None);
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}
