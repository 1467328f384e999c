//! SQLite files as the host system reads them: a consistent image of a live database and the
//! integrity check, on real paths (the real system's, or a temp dir where the fake puts its bytes).
//!
//! Invariants:
//! - The source database is opened read-only and never created: a missing file is an error, and
//!   its owner's writers go on while the image is read (WAL readers block no writer).
//! - An image is the database's pages as of one read transaction, held from [`image`] until the
//!   image is dropped: its size, its integrity check and every read of its bytes see the same
//!   database, whatever k3s commits meanwhile. The pages come through SQLite's pager (the
//!   `sqlite_dbpage` table, as the SQLite project's `sqlite3_rsync` reads a live database), so
//!   they include what the -wal holds; nothing is copied to disk. The table is compiled in by the
//!   build (`.cargo/config.toml`); a build without it says so instead of reading anything.
//! - SQLite's result codes become the errno a caller expects: a busy database past the deadline is
//!   a timeout, a file that is no database is invalid data.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// How long a read waits for a lock held by the database's writer (a checkpoint or a WAL reset
/// in progress): k3s's transactions are short.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// One page of the image, by its number (1 to the page count).
const PAGE: &str = "SELECT data FROM sqlite_dbpage WHERE pgno = ?1";

/// A live database's pages as of one read transaction (see the module's invariants).
pub trait DatabaseImage {
    /// Bytes of the image: the page count times the page size, fixed for the transaction.
    fn size(&self) -> u64;
    /// `PRAGMA integrity_check` within the image's transaction: empty when it is sound.
    fn check(&self) -> io::Result<Vec<String>>;
    /// The image's bytes, page after page; read as often as needed, always the same bytes.
    fn bytes(&self) -> io::Result<Box<dyn Read + '_>>;
}

/// Opens the database at `db` and starts the read transaction its image is taken in.
/// `keep` lives as long as the image (the fake's temp dir holding the file).
pub fn image(db: &Path, keep: Option<tempfile::TempDir>) -> io::Result<Box<dyn DatabaseImage>> {
    let conn = open_existing(db)?;
    let err = |e| to_io(e, db);
    // The first read starts the transaction; every statement after it sees the same database.
    conn.execute_batch("BEGIN; SELECT count(*) FROM sqlite_schema;").map_err(err)?;
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).map_err(err)?;
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0)).map_err(err)?;
    let (page_size, pages) = (page_size as u64, pages as u64);
    // Prepared once here (and cached for every read) so that a build without the table says so now.
    match conn.prepare_cached(PAGE) {
        Ok(_) => {}
        Err(e) if e.to_string().contains("no such table") => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this build of k3node has SQLite without its sqlite_dbpage table (SQLITE_ENABLE_DBPAGE_VTAB, set in .cargo/config.toml): build it from the repository",
            ))
        }
        Err(e) => return Err(err(e)),
    }
    Ok(Box::new(Image { conn, path: db.to_path_buf(), page_size, pages, _keep: keep }))
}

struct Image {
    conn: Connection,
    path: PathBuf,
    page_size: u64,
    pages: u64,
    _keep: Option<tempfile::TempDir>,
}

impl DatabaseImage for Image {
    fn size(&self) -> u64 {
        self.page_size * self.pages
    }

    fn check(&self) -> io::Result<Vec<String>> {
        check_on(&self.conn, &self.path)
    }

    fn bytes(&self) -> io::Result<Box<dyn Read + '_>> {
        let page = self.conn.prepare_cached(PAGE).map_err(|e| to_io(e, &self.path))?;
        Ok(Box::new(Pages { image: self, page, next: 1, buf: Vec::new(), at: 0 }))
    }
}

/// The image's pages as one stream: each page fetched by its number, as the reader gets to it.
struct Pages<'a> {
    image: &'a Image,
    page: rusqlite::CachedStatement<'a>,
    next: u64,
    buf: Vec<u8>,
    at: usize,
}

impl Read for Pages<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.at == self.buf.len() {
            if self.next > self.image.pages {
                return Ok(0);
            }
            let path = &self.image.path;
            // Copied from SQLite's own buffer into ours, which is reused: a new allocation per
            // page took about half of the time this read costs.
            let buf = &mut self.buf;
            let size = self
                .page
                .query_row([self.next as i64], |r| {
                    let data = r.get_ref(0)?.as_blob()?;
                    buf.clear();
                    buf.extend_from_slice(data);
                    Ok(data.len())
                })
                .map_err(|e| to_io(e, path))?;
            if size as u64 != self.image.page_size {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "SQLite on {}: page {} has {size} bytes, not {}",
                        path.display(),
                        self.next,
                        self.image.page_size
                    ),
                ));
            }
            self.at = 0;
            self.next += 1;
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// `PRAGMA integrity_check`: empty when the database is sound, else the problems SQLite lists.
pub fn integrity_check(db: &Path) -> io::Result<Vec<String>> {
    check_on(&open_existing(db)?, db)
}

fn check_on(conn: &Connection, db: &Path) -> io::Result<Vec<String>> {
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

    fn read_all(image: &dyn DatabaseImage) -> Vec<u8> {
        let mut bytes = Vec::new();
        image.bytes().unwrap().read_to_end(&mut bytes).unwrap();
        bytes
    }

    fn rows_in(bytes: &[u8]) -> u32 {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("copy.db"), bytes).unwrap();
        assert!(integrity_check(&dir.path().join("copy.db")).unwrap().is_empty(), "the image is a sound database");
        let copy = Connection::open(dir.path().join("copy.db")).unwrap();
        copy.query_row("SELECT count(*) FROM kine", [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn an_image_holds_what_was_committed_including_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        // The writer stays open: its last commits are in state.db-wal only.
        let writer = kine_like(&db, 300);
        assert!(std::fs::metadata(dir.path().join("state.db-wal")).unwrap().len() > 0);
        let image = image(&db, None).unwrap();
        assert!(image.check().unwrap().is_empty());
        let bytes = read_all(&*image);
        assert_eq!(bytes.len() as u64, image.size());
        drop(writer);
        assert_eq!(rows_in(&bytes), 300);
    }

    #[test]
    fn an_image_stays_as_of_its_transaction_while_the_writer_commits_and_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let writer = kine_like(&db, 300);
        let image = image(&db, None).unwrap();
        let first = read_all(&*image);
        for i in 0..500 {
            writer
                .execute(
                    "INSERT INTO kine (name, value) VALUES (?1, ?2)",
                    (format!("/registry/after{i}"), vec![9u8; 700]),
                )
                .unwrap();
        }
        // A checkpoint copies what it can into the file; the reader keeps its pages.
        writer.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())).unwrap();
        assert!(image.check().unwrap().is_empty());
        let second = read_all(&*image);
        assert_eq!(first, second, "every read of one image gives the same bytes");
        assert_eq!(second.len() as u64, image.size());
        assert_eq!(rows_in(&second), 300, "nothing committed after the image began");
        drop(image);
        writer.execute("INSERT INTO kine (name, value) VALUES ('/registry/last', x'00')", []).unwrap();
        assert_eq!(rows_in(&read_all(&*super::image(&db, None).unwrap())), 801, "a new image sees every commit");
    }

    #[test]
    fn missing_and_foreign_files_are_errors_with_an_errno_or_kind() {
        let dir = tempfile::tempdir().unwrap();
        let missing = image(&dir.path().join("nope.db"), None).err().unwrap();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        assert!(!dir.path().join("nope.db").exists(), "never created");
        std::fs::write(dir.path().join("text.db"), "not a database, just text that is long enough".repeat(50)).unwrap();
        let foreign = integrity_check(&dir.path().join("text.db")).unwrap_err();
        assert_eq!(foreign.kind(), io::ErrorKind::InvalidData, "{foreign}");
        let foreign = image(&dir.path().join("text.db"), None).err().unwrap();
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
