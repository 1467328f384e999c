//! `sync-manifests`: the cluster file's add-on manifests in a server's auto-deploy directory
//! (`<data-dir>/server/manifests/`), where k3s applies every file it finds (contract section 3;
//! k3s's deploy controller). k3node's files are named `k3node-<name>` so that they never clash
//! with k3s's packaged manifests (ccm.yaml, coredns.yaml, ...), which are never touched. Each file
//! is written atomically and only when its content changed; a `k3node-` file no longer listed is
//! removed (k3s then leaves the objects it applied: removing objects is kubectl's job).

use std::io;
use std::path::{Path, PathBuf};

use super::error::{describe_io, Failure, HostError};
use super::k3s::layout::DEFAULT_DATA_DIR;
use super::serve::{Context, HostOperation};
use super::system::HostSystem;
use crate::protocol::k3s::{FileAction, FileChange};
use crate::protocol::manifests::{ManifestsSynced, SyncManifests};
use crate::protocol::ErrorKind;

/// The prefix of every file k3node puts in the auto-deploy directory.
pub const PREFIX: &str = "k3node-";
const MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{name:?} is not a plain file name (no `/`, no leading `.`, .yaml/.yml/.json)")]
    BadName { name: String },
    #[error("{what} {}: {}", path.display(), describe_io(source))]
    Io { what: &'static str, path: PathBuf, source: io::Error },
}

impl Failure for ManifestError {
    fn kind(&self) -> ErrorKind {
        match self {
            ManifestError::BadName { .. } => ErrorKind::BadRequest,
            ManifestError::Io { source, .. } => ErrorKind::of_io(source),
        }
    }
}

impl HostOperation for SyncManifests {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<ManifestsSynced, HostError> {
        let sys = ctx.sys;
        Ok(sync(sys, &self, &mut |m| ctx.progress(m))?)
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('/')
        && !name.starts_with('.')
        && [".yaml", ".yml", ".json"].iter().any(|ext| name.ends_with(ext))
}

pub fn sync(
    sys: &dyn HostSystem,
    req: &SyncManifests,
    progress: &mut dyn FnMut(&str),
) -> Result<ManifestsSynced, ManifestError> {
    for f in &req.files {
        if !valid_name(&f.name) {
            return Err(ManifestError::BadName { name: f.name.clone() });
        }
    }
    // The server's data dir as k3s reads it (config.yaml may move it).
    let data_dir = super::k3s::data_dir(sys).unwrap_or_else(|_| PathBuf::from(DEFAULT_DATA_DIR));
    let dir = data_dir.join("server/manifests");
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| ManifestError::Io { what, path, source }
    };
    let mut changes = Vec::new();
    for f in &req.files {
        let path = dir.join(format!("{PREFIX}{}", f.name));
        let current = match sys.read_to_string(&path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io("cannot read", &path)(e)),
        };
        let action = match &current {
            None => FileAction::Created,
            Some(old) if *old != f.content => FileAction::Updated,
            Some(_) => FileAction::Unchanged,
        };
        let diff = (action != FileAction::Unchanged)
            .then(|| super::k3s::diff_text(&path, current.as_deref().unwrap_or(""), &f.content));
        if action != FileAction::Unchanged && !req.dry_run {
            progress(&format!("writing {}", path.display()));
            sys.write_atomic(&path, f.content.as_bytes(), MODE).map_err(io("cannot write", &path))?;
        }
        changes.push(FileChange { path: path.display().to_string(), action, diff });
    }
    let mut present: Vec<String> = sys.read_dir_names(&dir).unwrap_or_default();
    present.sort();
    for name in present {
        let Some(ours) = name.strip_prefix(PREFIX) else { continue };
        if req.files.iter().any(|f| f.name == ours) || !valid_name(ours) {
            continue;
        }
        let path = dir.join(&name);
        if !req.dry_run {
            progress(&format!("removing {}", path.display()));
            sys.remove_file(&path).map_err(io("cannot remove", &path))?;
        }
        changes.push(FileChange {
            path: path.display().to_string(),
            action: FileAction::Removed,
            diff: Some("no longer in spec.manifests (the objects it created stay in the cluster)".into()),
        });
    }
    Ok(ManifestsSynced { changes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::system::fake::FakeSystem;
    use crate::protocol::manifests::ManifestFile;

    const DIR: &str = "/var/lib/rancher/k3s/server/manifests";

    fn request(files: &[(&str, &str)], dry_run: bool) -> SyncManifests {
        SyncManifests {
            files: files.iter().map(|(n, c)| ManifestFile { name: n.to_string(), content: c.to_string() }).collect(),
            dry_run,
        }
    }

    fn actions(report: &ManifestsSynced) -> Vec<(String, FileAction)> {
        report.changes.iter().map(|c| (c.path.rsplit('/').next().unwrap().to_string(), c.action)).collect()
    }

    #[test]
    fn files_are_written_once_removed_when_unlisted_and_k3s_packaged_ones_are_left_alone() {
        let sys = FakeSystem::new()
            .file(&format!("{DIR}/coredns.yaml"), "packaged by k3s")
            .file(&format!("{DIR}/k3node-old.yaml"), "kind: Namespace");
        let first = sync(&sys, &request(&[("ns.yaml", "kind: Namespace\n")], false), &mut |_| {}).unwrap();
        assert_eq!(
            actions(&first),
            vec![("k3node-ns.yaml".into(), FileAction::Created), ("k3node-old.yaml".into(), FileAction::Removed)]
        );
        assert_eq!(sys.contents(&format!("{DIR}/k3node-ns.yaml")).as_deref(), Some("kind: Namespace\n"));
        assert_eq!(sys.contents(&format!("{DIR}/coredns.yaml")).as_deref(), Some("packaged by k3s"));
        let writes = sys.writes().len();
        let again = sync(&sys, &request(&[("ns.yaml", "kind: Namespace\n")], false), &mut |_| {}).unwrap();
        assert_eq!(actions(&again), vec![("k3node-ns.yaml".into(), FileAction::Unchanged)]);
        assert_eq!(sys.writes().len(), writes, "an unchanged file is not rewritten");
    }

    #[test]
    fn a_dry_run_shows_the_diff_and_writes_nothing() {
        let sys = FakeSystem::new().file(&format!("{DIR}/k3node-ns.yaml"), "a: 1\n");
        let report = sync(&sys, &request(&[("ns.yaml", "a: 2\n")], true), &mut |_| {}).unwrap();
        assert!(report.changes[0].diff.as_deref().unwrap().contains("-a: 1\n+a: 2\n"));
        assert!(sys.writes().is_empty());
    }

    #[test]
    fn names_that_could_escape_the_directory_are_refused() {
        for bad in ["../x.yaml", "a/b.yaml", ".hidden.yaml", "notes.txt", ""] {
            let err = sync(&FakeSystem::new(), &request(&[(bad, "x")], false), &mut |_| {}).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::BadRequest, "{bad}");
        }
    }
}
