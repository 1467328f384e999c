//! `snapshot-peer`: what a restore does on the cluster's other hosts (k3s-contract.md section 6).
//!
//! - `stop`: before the datastore is replaced, this host's k3s (a server) or k3s-agent stops, so
//!   that nothing writes to, or votes on, a datastore that is changing. The operator starts it
//!   again afterwards through `install-k3s` (a stopped service is started), with its env file
//!   pointing at the restored server.
//! - `rejoin`: after an etcd restore (`--cluster-reset`) on the first server, another server's
//!   `server/db` goes aside (`<path>.k3node-restore-<UTC time>`; never deleted), so that at its
//!   next start it joins the restored cluster as a new member instead of its old one.
//!
//! Both are idempotent: a re-run after an interruption finds the service stopped and the db
//! already aside, and does nothing more.

use std::path::{Path, PathBuf};

use super::{k3s, stamp, SnapshotError};
use crate::host::k3s::{unit_path, SERVER_DIR};
use crate::protocol::snapshot::{MovedAside, PeerReport, PeerStep, RestorePeer};

use crate::host::system::HostSystem;

const AGENT_SERVICE: &str = "k3s-agent";

pub fn run(
    sys: &dyn HostSystem,
    req: &RestorePeer,
    progress: &mut dyn FnMut(&str),
) -> Result<PeerReport, SnapshotError> {
    let service = [k3s::SERVICE, AGENT_SERVICE].into_iter().find(|s| sys.metadata(&unit_path(s)).is_ok());
    let mut report = PeerReport { service: service.map(str::to_string), actions: Vec::new(), moved_aside: Vec::new() };
    let Some(service) = service else {
        report.actions.push("nothing to do: neither k3s nor k3s-agent is installed".into());
        return Ok(report);
    };
    let db = match req.step {
        PeerStep::Stop => None,
        PeerStep::Rejoin if service == k3s::SERVICE => {
            let settings = k3s::on_host(sys)?;
            Some(settings.data_dir.join(SERVER_DIR).join("db"))
        }
        PeerStep::Rejoin => {
            return Err(SnapshotError::Conflict(format!(
                "{service} is installed here: only a server rejoins a restored etcd cluster"
            )))
        }
    };
    report.actions.push(format!("stop {service}"));
    let aside = db.filter(|db| sys.metadata(db).is_ok()).map(|db| {
        let to = aside_path(sys, &db);
        MovedAside { from: db.display().to_string(), to: to.display().to_string() }
    });
    if let Some(m) = &aside {
        report.actions.push(format!("move {} aside to {}", m.from, m.to));
        report.moved_aside.push(m.clone());
    }
    if req.dry_run {
        return Ok(report);
    }
    progress(&format!("stopping {service}"));
    k3s::run_systemctl(
        sys,
        &["stop", service],
        crate::host::system::COMMAND_TIMEOUT.max(std::time::Duration::from_secs(120)),
    )?;
    if let Some(m) = aside {
        progress(&format!("moving {} aside to {}", m.from, m.to));
        sys.rename(Path::new(&m.from), Path::new(&m.to)).map_err(|source| SnapshotError::Io {
            what: "cannot move",
            path: PathBuf::from(&m.from),
            source,
        })?;
    }
    Ok(report)
}

/// `<db>.k3node-restore-<stamp>`, `-2`, `-3`... when taken.
fn aside_path(sys: &dyn HostSystem, db: &Path) -> PathBuf {
    let base = format!("{}.k3node-restore-{}", db.display(), stamp(sys.now_unix_ms()));
    let mut candidate = PathBuf::from(&base);
    let mut n = 2;
    while sys.metadata(&candidate).is_ok() {
        candidate = PathBuf::from(format!("{base}-{n}"));
        n += 1;
    }
    candidate
}
