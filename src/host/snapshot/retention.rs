//! `snapshot-list` and `snapshot-prune`: the archives of a directory, and a retention policy.
//!
//! Listing reads each archive's manifest only (the first entry: the start of the file) and its
//! sidecar; an archive that cannot be read is listed with the reason, never hidden. Pruning keeps
//! the `keep_last` newest and those created at or after `keep_newer_than`, and always the newest
//! one: a policy (a count of 0, a time in the future, a clock gone wrong) never empties the
//! directory; deleting the last snapshot is a deliberate `rm`, not retention. Archives whose
//! manifest cannot be read are left alone. An archive and its sidecar go together, the archive
//! first, so that a sidecar without an archive (swept by the next create) is all an
//! interruption can leave.

use std::io;
use std::path::Path;

use super::archive::{self, Manifest};
use super::{archive_name, check_name_part, parse_rfc3339, snapshot_dir, SnapshotError};
use crate::host::system::{FileKind, HostSystem};
use crate::protocol::snapshot::{ListSnapshots, PruneSnapshots, SnapshotList, SnapshotSummary, SnapshotsPruned};

/// One archive of the directory, with its manifest when it can be read.
struct Found {
    summary: SnapshotSummary,
    manifest: Option<Manifest>,
}

fn scan(sys: &dyn HostSystem, dir: &Path) -> Result<Vec<Found>, SnapshotError> {
    let names = match sys.read_dir_names(dir) {
        Ok(names) => names,
        // No directory yet: no snapshot yet.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(SnapshotError::Io { what: "cannot list", path: dir.to_path_buf(), source }),
    };
    let mut found = Vec::new();
    for name in names.into_iter().filter(|n| n.ends_with(archive::EXTENSION) && !n.starts_with('.')) {
        let path = dir.join(&name);
        let Ok(meta) = sys.metadata(&path) else { continue };
        if meta.kind != FileKind::File {
            continue;
        }
        let mut problems = Vec::new();
        let sha256 = match archive::read_sidecar(sys, &path) {
            Ok(sha) => Some(sha),
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        };
        let manifest = match archive::read_manifest(sys, &path) {
            Ok(m) => Some(m),
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        };
        found.push(Found {
            summary: SnapshotSummary {
                name: archive_name(&path),
                path: path.display().to_string(),
                size: meta.size,
                sha256,
                manifest: manifest.as_ref().map(Manifest::summary),
                problem: (!problems.is_empty()).then(|| problems.join("; ")),
            },
            manifest,
        });
    }
    // Newest first; unreadable ones last, by name.
    found.sort_by(|a, b| {
        let created = |f: &Found| f.manifest.as_ref().and_then(|m| parse_rfc3339(&m.created).ok());
        created(b).cmp(&created(a)).then_with(|| b.summary.name.cmp(&a.summary.name))
    });
    Ok(found)
}

pub fn list(sys: &dyn HostSystem, req: &ListSnapshots) -> Result<SnapshotList, SnapshotError> {
    let dir = snapshot_dir(req.dir.as_deref())?;
    let snapshots = scan(sys, &dir)?.into_iter().map(|f| f.summary).collect();
    Ok(SnapshotList { dir: dir.display().to_string(), snapshots })
}

pub fn prune(
    sys: &dyn HostSystem,
    req: &PruneSnapshots,
    progress: &mut dyn FnMut(&str),
) -> Result<SnapshotsPruned, SnapshotError> {
    let dir = snapshot_dir(req.dir.as_deref())?;
    if req.keep_last.is_none() && req.keep_newer_than.is_none() {
        return Err(SnapshotError::BadRequest(
            "a prune needs keep_last, keep_newer_than or both: without either nothing says what to keep".into(),
        ));
    }
    if let Some(prefix) = &req.name_prefix {
        check_name_part(prefix, "the name prefix")?;
    }
    let cutoff = req.keep_newer_than.as_deref().map(parse_rfc3339).transpose().map_err(SnapshotError::BadRequest)?;
    let keep_last = req.keep_last.unwrap_or(0) as usize;

    let mut answer = SnapshotsPruned { deleted: Vec::new(), kept: Vec::new(), skipped: Vec::new() };
    let mut candidates = Vec::new();
    for found in scan(sys, &dir)? {
        let name = found.summary.name.clone();
        if req.name_prefix.as_ref().is_some_and(|p| !name.starts_with(p.as_str())) {
            continue;
        }
        match found.manifest.as_ref().and_then(|m| parse_rfc3339(&m.created).ok()) {
            Some(created) => candidates.push((name, created)),
            None => answer
                .skipped
                .push(format!("{name}: {}", found.summary.problem.unwrap_or_else(|| "no creation time".to_string()))),
        }
    }
    // `scan` sorted them newest first.
    for (index, (name, created)) in candidates.into_iter().enumerate() {
        let keep = index == 0 || index < keep_last || cutoff.is_some_and(|c| created >= c);
        if keep {
            answer.kept.push(name);
        } else {
            answer.deleted.push(name);
        }
    }
    answer.deleted.reverse();
    if req.dry_run {
        return Ok(answer);
    }
    for name in &answer.deleted {
        let path = dir.join(format!("{name}{}", archive::EXTENSION));
        progress(&format!("deleting {}", path.display()));
        sys.remove_file(&path).map_err(|source| SnapshotError::Io {
            what: "cannot delete",
            path: path.clone(),
            source,
        })?;
        let sidecar = archive::sidecar_path(&path);
        match sys.remove_file(&sidecar) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(SnapshotError::Io { what: "cannot delete", path: sidecar, source: e })
            }
            _ => {}
        }
    }
    Ok(answer)
}
