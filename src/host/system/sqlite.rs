//! SQLite files as the host system reads and copies them: the online backup and the integrity
//! check, on real paths (the real system's, or a temp dir where the fake puts its bytes).
//!
//! Invariants:
//! - The source database is opened read-only and never created: a missing file is an error, and
//!   its owner's writers go on while the copy is taken (WAL readers block no writer).
//! - A backup is one step of SQLite's backup API (`sqlite3_backup_step(-1)`): the copy is the
//!   database as of one read transaction. A backup in small steps restarts whenever another
//!   process writes, and k3s writes every few seconds, so it might never end.
//! - SQLite's result codes become the errno a caller expects: a full disk is ENOSPC, a busy
//!   database past the deadline is a timeout, a file that is no database is invalid data.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

/// How long a backup or a check waits for a lock held by the database's writer (a checkpoint
/// in progress): k3s's transactions are short.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
const BUSY_RETRY: Duration = Duration::from_millis(50);

/// Copies the database at `db` into the new file `dest` (consistent as of one read transaction).
pub fn backup(db: &Path, dest: &Path) -> io::Result<()> {
    let source = open_existing(db)?;
    let mut copy = Connection::open_with_flags(
        dest,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| to_io(e, dest))?;
    {
        let backup = Backup::new(&source, &mut copy).map_err(|e| to_io(e, dest))?;
        let deadline = Instant::now() + BUSY_TIMEOUT;
        loop {
            match backup.step(-1).map_err(|e| to_io(e, dest))? {
                StepResult::Done => break,
                // -1 copies every page at once; More cannot come, but would mean "go on".
                StepResult::More => continue,
                StepResult::Busy | StepResult::Locked if Instant::now() < deadline => std::thread::sleep(BUSY_RETRY),
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("{} stayed locked for {} s", db.display(), BUSY_TIMEOUT.as_secs()),
                    ))
                }
            }
        }
    }
    // Closing the copy's only connection checkpoints and removes its own -wal: one file remains.
    copy.close().map_err(|(_, e)| to_io(e, dest))
}

/// `PRAGMA integrity_check`: empty when the database is sound, else the problems SQLite lists.
pub fn integrity_check(db: &Path) -> io::Result<Vec<String>> {
    let conn = open_existing(db)?;
    let mut statement = conn.prepare("PRAGMA integrity_check").map_err(|e| to_io(e, db))?;
    let rows = statement.query_map([], |row| row.get::<_, String>(0)).map_err(|e| to_io(e, db))?;
    let mut problems = Vec::new();
    for row in rows {
        let line = row.map_err(|e| to_io(e, db))?;
        if line != "ok" {
            problems.push(line);
        }
    }
    Ok(problems)
}

fn open_existing(db: &Path) -> io::Result<Connection> {
    // SQLite would report a missing file as "unable to open database file": say ENOENT instead.
    std::fs::metadata(db)?;
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| to_io(e, db))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| to_io(e, db))?;
    Ok(conn)
}

fn to_io(error: rusqlite::Error, path: &Path) -> io::Error {
    use rusqlite::ErrorCode;
    let code = error.sqlite_error_code();
    let message = format!("SQLite on {}: {error}", path.display());
    match code {
        Some(ErrorCode::DiskFull) => io::Error::from_raw_os_error(nix::libc::ENOSPC),
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => {
            io::Error::new(io::ErrorKind::TimedOut, message)
        }
        Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => {
            io::Error::new(io::ErrorKind::InvalidData, message)
        }
        Some(ErrorCode::PermissionDenied) | Some(ErrorCode::ReadOnly) => {
            io::Error::new(io::ErrorKind::PermissionDenied, message)
        }
        _ => io::Error::other(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kine_like(path: &Path, rows: u32) -> Connection {
        let conn = Connection::open(path).unwrap();
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        conn.execute_batch("CREATE TABLE kine (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, value BLOB)").unwrap();
        for i in 0..rows {
            conn.execute("INSERT INTO kine (name, value) VALUES (?1, ?2)", (format!("/registry/k{i}"), vec![7u8; 512]))
                .unwrap();
        }
        conn
    }

    #[test]
    fn a_backup_holds_what_was_committed_including_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        // The writer stays open: its last commits are in state.db-wal only.
        let writer = kine_like(&db, 300);
        assert!(dir.path().join("state.db-wal").exists());
        backup(&db, &dir.path().join("copy.db")).unwrap();
        drop(writer);
        assert!(!dir.path().join("copy.db-wal").exists(), "the copy is one file");
        let copy = Connection::open(dir.path().join("copy.db")).unwrap();
        let n: u32 = copy.query_row("SELECT count(*) FROM kine", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 300);
        assert!(integrity_check(&dir.path().join("copy.db")).unwrap().is_empty());
    }

    #[test]
    fn a_backup_onto_a_full_disk_is_enospc_and_the_source_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let writer = kine_like(&db, 4000); // about 2.5 MB
        let full = dir.path().join("full");
        let _tmpfs = crate::host::snapshot::testutil::Tmpfs::mount(&full, 512 << 10);
        let err = backup(&db, &full.join("copy.db")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::libc::ENOSPC), "{err}");
        writer.execute("INSERT INTO kine (name, value) VALUES ('/registry/after', x'00')", []).unwrap();
        assert!(integrity_check(&db).unwrap().is_empty());
    }

    #[test]
    fn missing_and_foreign_files_are_errors_with_an_errno_or_kind() {
        let dir = tempfile::tempdir().unwrap();
        let missing = backup(&dir.path().join("nope.db"), &dir.path().join("copy.db")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        assert!(!dir.path().join("nope.db").exists(), "never created");
        std::fs::write(dir.path().join("text.db"), "not a database, just text that is long enough".repeat(50)).unwrap();
        let foreign = integrity_check(&dir.path().join("text.db")).unwrap_err();
        assert_eq!(foreign.kind(), io::ErrorKind::InvalidData, "{foreign}");
    }

    #[test]
    fn a_damaged_page_is_reported_by_the_integrity_check() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        {
            let conn = kine_like(&db, 2000);
            conn.execute_batch("CREATE INDEX kine_name ON kine (name)").unwrap();
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
        }
        let mut bytes = std::fs::read(&db).unwrap();
        // Scribble over the middle of the file, past the header and the schema page.
        let middle = bytes.len() / 2;
        for b in &mut bytes[middle..middle + 3000] {
            *b = 0x5a;
        }
        std::fs::write(&db, bytes).unwrap();
        match integrity_check(&db) {
            Ok(problems) => assert!(!problems.is_empty(), "a damaged file passed the check"),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}"),
        }
    }
}
