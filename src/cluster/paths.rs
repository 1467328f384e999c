//! Paths written in the cluster file: `~` is the operator's home, and a relative path is relative
//! to the cluster file's directory (not to wherever k3node happens to be run from), so that a
//! cluster directory can be moved or checked out anywhere.

use std::path::{Component, Path, PathBuf};

pub(crate) use crate::home::home_dir;

/// Resolves `text` against `base_dir` and `home`, or says why it cannot.
pub(crate) fn resolve(text: &str, base_dir: &Path, home: Option<&Path>) -> Result<PathBuf, String> {
    if text.starts_with('$') {
        return Err(format!(
            "{text:?}: environment variables are not expanded in paths; use ~/ for the home directory or an absolute path"
        ));
    }
    let path = if text == "~" || text.starts_with("~/") {
        let Some(home) = home else {
            return Err(format!("{text:?}: cannot expand ~, the home directory is unknown (HOME is not set)"));
        };
        match text.strip_prefix("~/") {
            Some(rest) => home.join(rest),
            None => home.to_path_buf(),
        }
    } else if text.starts_with('~') {
        return Err(format!("{text:?}: only ~/ (your own home) is expanded; write the full path"));
    } else {
        base_dir.join(text)
    };
    Ok(normalize(&path))
}

/// Drops `.` components (`/dir/./keys/id` reads badly in messages). `..` is kept: resolving it
/// lexically would be wrong across symlinks.
fn normalize(path: &Path) -> PathBuf {
    path.components().filter(|c| !matches!(c, Component::CurDir)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_home_relative_and_absolute() {
        let base = Path::new("/srv/lab");
        let home = Some(Path::new("/home/op"));
        assert_eq!(resolve("~/.ssh/id", base, home).unwrap(), PathBuf::from("/home/op/.ssh/id"));
        assert_eq!(resolve("~", base, home).unwrap(), PathBuf::from("/home/op"));
        assert_eq!(resolve("./keys/id", base, home).unwrap(), PathBuf::from("/srv/lab/keys/id"));
        assert_eq!(resolve("../keys/id", base, home).unwrap(), PathBuf::from("/srv/lab/../keys/id"));
        assert_eq!(resolve("/etc/key", base, home).unwrap(), PathBuf::from("/etc/key"));
        assert!(resolve("~bob/key", base, home).is_err());
        assert!(resolve("$HOME/key", base, home).is_err());
        assert!(resolve("~/key", base, None).is_err());
    }
}
