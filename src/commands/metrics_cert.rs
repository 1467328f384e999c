//! `k3node metrics-cert`: a reader's certificate for the hubs' `/metrics` and fleet view, for
//! Prometheus or any other scraper. The key is made here and never leaves this machine; the
//! certificate is signed with the cluster's hub CA, read from a server through SSH as `up`
//! reads it. The hubs let a reader read and refuse its reports (see `hub::server`).
//!
//! Bad input (a name that is not one, files already there) is refused before any host is
//! reached (exit 2); no server keeping a CA (before `up`) is exit 1.

use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;

use k3node::daemon::pki;
use k3node::operator::bootstrap::Placement;
use k3node::operator::fleet::Fleet;
use k3node::operator::node_config::authority;
use k3node::operator::phases::daemon::tuning;
use k3node::operator::progress::{Observer, Silent};
use k3node::protocol::health::{DaemonIdentity, IdentityAnswer};
use k3node::protocol::Secret;

use super::BadInput;

#[derive(Debug, clap::Args)]
pub struct MetricsCertArgs {
    #[arg(short = 'c', long = "config")]
    pub config: Option<PathBuf>,
    /// Who reads: the certificate's common name (letters, digits, '.', '-').
    #[arg(long, default_value = "prometheus")]
    pub name: String,
    /// Where to write ca.crt, NAME.crt and NAME.key (0600); made 0700 when missing.
    #[arg(long, default_value = "k3node-metrics")]
    pub out: PathBuf,
    #[command(flatten)]
    pub connect: super::ConnectArgs,
}

/// The three files a reader needs, where they go.
struct Files {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn files(args: &MetricsCertArgs) -> anyhow::Result<Files> {
    let valid = !args.name.is_empty()
        && args.name.len() <= 64
        && args.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && !args.name.starts_with(['.', '-']);
    if !valid {
        return Err(BadInput(format!(
            "--name {:?}: a reader's name is 1 to 64 letters, digits, '.' or '-', not starting with '.' or '-'",
            args.name
        ))
        .into());
    }
    let dir = std::path::absolute(&args.out)?;
    let files = Files {
        ca: dir.join("ca.crt"),
        cert: dir.join(format!("{}.crt", args.name)),
        key: dir.join(format!("{}.key", args.name)),
    };
    if let Some(there) = [&files.ca, &files.cert, &files.key].into_iter().find(|p| p.exists()) {
        return Err(BadInput(format!(
            "{} exists: a new certificate comes with a new key, so nothing is overwritten; remove the old files or give another --out or --name",
            there.display()
        ))
        .into());
    }
    Ok(files)
}

pub async fn run(args: &MetricsCertArgs) -> anyhow::Result<bool> {
    let config = super::cluster_file(args.config.as_deref(), false)?;
    let files = files(args)?;
    let prepared = args.connect.prepare(&config).await?;
    let cluster = prepared.cluster.clone();
    let servers = prepared.server_hosts();
    let observer: Arc<dyn Observer> = Arc::new(Silent);
    // Reading needs no installed helper: a temporary one leaves the server as it was.
    let fleet = prepared.connect(&servers, Placement::Temporary, args.connect.concurrency, &observer).await;
    let ca = hub_ca(&fleet).await;
    fleet.close().await;
    let (ca_cert, ca_key) = ca.map_err(|why| {
        anyhow::anyhow!("no server keeps the cluster's hub CA (it is made by `k3node up`):\n  {}", why.join("\n  "))
    })?;

    let key = pki::generate_node_key()?;
    let csr = pki::certificate_request(key.expose())?;
    let cert = pki::sign_reader(&ca_cert, ca_key.expose(), &csr, &args.name, time::OffsetDateTime::now_utc())?;
    let dir = files.key.parent().expect("a file in --out");
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    k3node::fsutil::write_atomic(&files.key, key.expose().as_bytes(), 0o600)?;
    k3node::fsutil::write_atomic(&files.cert, cert.as_bytes(), 0o644)?;
    k3node::fsutil::write_atomic(&files.ca, ca_cert.as_bytes(), 0o644)?;

    let until = pki::not_after(&cert).map(|t| t.date().to_string()).unwrap_or_else(|| "?".into());
    let port = tuning(&cluster).hub_port;
    let targets: Vec<String> = cluster.servers().map(|s| format!("'{}'", authority(s, port))).collect();
    println!(
        "wrote {}, {} and its key {} (0600): a reader's certificate for cluster {}, valid until {until}",
        files.ca.display(),
        files.cert.display(),
        files.key.display(),
        cluster.name
    );
    println!("It reads /metrics and /v1/fleet on every hub; the hubs refuse its reports.");
    println!("For Prometheus (scrape_configs):\n{}", scrape_config(&cluster.name, &files, &targets));
    Ok(true)
}

/// The CA of the first server that keeps one; otherwise why each server did not give it.
async fn hub_ca(fleet: &Fleet) -> Result<(String, Secret), Vec<String>> {
    let mut why = Vec::new();
    for member in &fleet.members {
        let answer = match &member.link {
            Ok(link) => link.call(&DaemonIdentity { dry_run: true }).send().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match answer {
            Ok(IdentityAnswer { ca_cert_pem: Some(cert), ca_key: Some(key), .. }) => return Ok((cert, key)),
            Ok(_) => why.push(format!("{}: keeps no hub CA", member.host.name)),
            Err(e) => why.push(format!("{}: {e}", member.host.name)),
        }
    }
    Err(why)
}

fn scrape_config(cluster: &str, files: &Files, targets: &[String]) -> String {
    format!(
        "  - job_name: k3node-{cluster}\n    scheme: https\n    tls_config:\n      ca_file: {}\n      cert_file: {}\n      key_file: {}\n    static_configs:\n      - targets: [{}]",
        files.ca.display(),
        files.cert.display(),
        files.key.display(),
        targets.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn args(name: &str, out: &Path) -> MetricsCertArgs {
        MetricsCertArgs {
            config: None,
            name: name.into(),
            out: out.to_path_buf(),
            connect: super::super::ConnectArgs { concurrency: 1, trust_new_host_keys: false, connect_timeout: 1 },
        }
    }

    #[test]
    fn a_name_that_is_not_one_and_files_already_there_are_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["", "-x", "a b", "../x", &"a".repeat(65)] {
            let e = files(&args(name, dir.path())).err().unwrap();
            assert!(e.downcast_ref::<BadInput>().is_some() && e.to_string().contains("--name"), "{name}: {e}");
        }
        let f = files(&args("prometheus", dir.path())).unwrap();
        assert_eq!(f.key, dir.path().join("prometheus.key"));
        std::fs::write(&f.cert, "old").unwrap();
        let e = files(&args("prometheus", dir.path())).err().unwrap();
        assert!(e.downcast_ref::<BadInput>().is_some() && e.to_string().contains("prometheus.crt exists"), "{e}");
    }

    #[test]
    fn the_scrape_config_lists_every_hub_with_the_readers_files() {
        let f = Files { ca: "/d/ca.crt".into(), cert: "/d/p.crt".into(), key: "/d/p.key".into() };
        let targets = ["'10.0.0.1:10270'".to_string(), "'[fd00::1]:10270'".to_string()];
        let text = scrape_config("lab", &f, &targets);
        assert!(text.contains("job_name: k3node-lab") && text.contains("key_file: /d/p.key"), "{text}");
        assert!(text.contains("targets: ['10.0.0.1:10270', '[fd00::1]:10270']"), "{text}");
    }
}
