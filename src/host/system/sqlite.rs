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
//! - The image's connection lives on a thread of its own, which reads ahead of the caller (a few
//!   MiB at most) and serves one request at a time; dropping the image ends that thread, and with
//!   it the transaction, before the drop returns.
//! - SQLite's result codes become the errno a caller expects: a busy database past the deadline is
//!   a timeout, a file that is no database is invalid data.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::chunks::ChunkReader;

/// How long a read waits for a lock held by the database's writer (a checkpoint or a WAL reset
/// in progress): k3s's transactions are short.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// Every page of the image in page order, in one statement (1 GiB here: 0.6-0.8 s, against
/// 0.9-1.1 s with a statement per page).
const PAGES: &str = "SELECT pgno, data FROM sqlite_dbpage";
/// Bytes of pages handed to the reader at a time, and how many such chunks may wait for it.
const CHUNK: usize = 1 << 18;
const CHUNKS_AHEAD: usize = 8;

/// A live database's pages as of one read transaction (see the module's invariants).
pub trait DatabaseImage {
    /// Bytes of the image: the page count times the page size, fixed for the transaction.
    fn size(&self) -> u64;
    /// `PRAGMA integrity_check` within the image's transaction: empty when it is sound.
    fn check(&self) -> io::Result<Vec<String>>;
    /// The image's bytes, page after page; read as often as needed, always the same bytes. One
    /// reader at a time: a second reader, or a check, waits until the first is read to its end
    /// or dropped.
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
    match conn.prepare_cached(PAGES) {
        Ok(_) => {}
        Err(e) if e.to_string().contains("no such table") => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this build of k3node has SQLite without its sqlite_dbpage table (SQLITE_ENABLE_DBPAGE_VTAB, set in .cargo/config.toml): build it from the repository",
            ))
        }
        Err(e) => return Err(err(e)),
    }
    let shape = Shape { path: db.to_path_buf(), page_size, pages };
    // The connection moves to a thread of its own, which reads the pages while the caller
    // compresses and hashes those it already has; the transaction ends when that thread does.
    let (requests, inbox) = mpsc::channel();
    let worker = {
        let shape = shape.clone();
        std::thread::Builder::new().name("sqlite-image".into()).spawn(move || serve(conn, &shape, inbox))?
    };
    Ok(Box::new(Image { shape, requests: Some(requests), worker: Some(worker), _keep: keep }))
}

#[derive(Clone)]
struct Shape {
    path: PathBuf,
    page_size: u64,
    pages: u64,
}

struct Image {
    shape: Shape,
    requests: Option<mpsc::Sender<Request>>,
    worker: Option<JoinHandle<()>>,
    _keep: Option<tempfile::TempDir>,
}

/// What the image's thread is asked for, with where its answer goes.
enum Request {
    Check(SyncSender<io::Result<Vec<String>>>),
    Pages(SyncSender<io::Result<Vec<u8>>>),
}

impl Image {
    fn ask(&self, request: Request) -> io::Result<()> {
        let gone =
            || io::Error::other(format!("SQLite on {}: the image's reader has stopped", self.shape.path.display()));
        self.requests.as_ref().ok_or_else(gone)?.send(request).map_err(|_| gone())
    }
}

impl DatabaseImage for Image {
    fn size(&self) -> u64 {
        self.shape.page_size * self.shape.pages
    }

    fn check(&self) -> io::Result<Vec<String>> {
        let (answer, answered) = mpsc::sync_channel(1);
        self.ask(Request::Check(answer))?;
        answered.recv().map_err(|_| {
            io::Error::other(format!(
                "SQLite on {}: the image's reader stopped while checking",
                self.shape.path.display()
            ))
        })?
    }

    fn bytes(&self) -> io::Result<Box<dyn Read + '_>> {
        let (chunks, received) = mpsc::sync_channel(CHUNKS_AHEAD);
        self.ask(Request::Pages(chunks))?;
        Ok(Box::new(ChunkReader::new(received, None)))
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        // The transaction ends before the image is gone: k3s's checkpoints need not wait for it.
        self.requests.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// The image's thread: answers each request in turn, within the one transaction.
fn serve(conn: Connection, shape: &Shape, inbox: Receiver<Request>) {
    for request in inbox {
        match request {
            Request::Check(answer) => {
                let _ = answer.send(check_on(&conn, &shape.path));
            }
            Request::Pages(chunks) => {
                if let Err(e) = send_pages(&conn, shape, &chunks) {
                    let _ = chunks.send(Err(e));
                }
            }
        }
    }
}

/// Every page in order, in chunks; stops early, without an error, when the reader is dropped.
fn send_pages(conn: &Connection, shape: &Shape, chunks: &SyncSender<io::Result<Vec<u8>>>) -> io::Result<()> {
    let path = &shape.path;
    let err = |e| to_io(e, path);
    let mut statement = conn.prepare_cached(PAGES).map_err(err)?;
    let mut rows = statement.query([]).map_err(err)?;
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut sent = 0u64;
    while let Some(row) = rows.next().map_err(err)? {
        let number: i64 = row.get(0).map_err(err)?;
        let data = row.get_ref(1).and_then(|v| Ok(v.as_blob()?)).map_err(err)?;
        if number as u64 != sent + 1 || data.len() as u64 != shape.page_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "SQLite on {}: page {number} has {} bytes where page {} of {} bytes was due",
                    path.display(),
                    data.len(),
                    sent + 1,
                    shape.page_size
                ),
            ));
        }
        chunk.extend_from_slice(data);
        sent += 1;
        if chunk.len() >= CHUNK && chunks.send(Ok(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)))).is_err() {
            return Ok(());
        }
    }
    if sent != shape.pages {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("SQLite on {}: {sent} pages read, the transaction has {}", path.display(), shape.pages),
        ));
    }
    if !chunk.is_empty() {
        let _ = chunks.send(Ok(chunk));
    }
    Ok(())
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
    fn a_reader_dropped_halfway_leaves_the_image_whole_for_the_next_read_and_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        // Several chunks' worth, so that the image's thread is still sending when the reader goes.
        let writer = kine_like(&db, 10);
        writer.execute_batch("BEGIN").unwrap();
        for i in 0..6000 {
            writer
                .execute("INSERT INTO kine (name, value) VALUES (?1, ?2)", (format!("/registry/m{i}"), vec![3u8; 700]))
                .unwrap();
        }
        writer.execute_batch("COMMIT").unwrap();
        let image = image(&db, None).unwrap();
        assert!(image.size() > (CHUNK * (CHUNKS_AHEAD + 2)) as u64, "{} bytes", image.size());
        let mut head = vec![0u8; CHUNK + 10];
        image.bytes().unwrap().read_exact(&mut head).unwrap();
        assert!(image.check().unwrap().is_empty());
        let bytes = read_all(&*image);
        assert_eq!(bytes.len() as u64, image.size());
        assert_eq!(&bytes[..head.len()], &head[..]);
        drop(image);
        drop(writer);
        assert_eq!(rows_in(&bytes), 6010);
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
