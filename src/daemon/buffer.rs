//! The daemon's bounded on-disk buffer: every report is written here first (one file per report,
//! atomically: temp file, fsync, rename) and stays until every hub has stored it. Each hub has a
//! cursor (the last sequence number it confirmed), so a hub that was away gets, when it is back,
//! everything it missed, in order, while the others go on.
//!
//! Invariants:
//! - Sequence numbers increase by one per report, across restarts (`state.json`), within one
//!   `stream` (random, made with the buffer): the hub tells duplicates from gaps with them.
//! - At most `max_reports` reports are kept. Beyond that the oldest goes; for every hub that had
//!   not confirmed it, it is counted in that hub's `dropped` (persisted, and sent with every
//!   batch), so that what falls out is reported, never silently lost.
//! - A report is removed only once every hub of the settings confirmed it (or it was dropped).
//! - Only the sequence numbers live in memory; the reports are read from disk when sent.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::host::system::HostSystem;
use crate::protocol::health::Report;

const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("report buffer {}: {what}: {}", path.display(), crate::host::describe_io(source))]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error("report buffer {}: {message}", path.display())]
    Corrupt { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct State {
    stream: String,
    next_seq: u64,
}

/// What one hub has confirmed, and what fell out before it could.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cursor {
    pub delivered_through: u64,
    pub dropped: u64,
}

pub struct Buffer<'a> {
    sys: &'a dyn HostSystem,
    dir: PathBuf,
    max_reports: usize,
    state: State,
    /// Sequence numbers on disk, oldest first.
    seqs: VecDeque<u64>,
    cursors: BTreeMap<String, Cursor>,
}

impl<'a> Buffer<'a> {
    /// Opens (or creates) the buffer in `dir` for `hubs`; cursors of hubs no longer listed are
    /// forgotten, new hubs start from the oldest report kept.
    pub fn open(
        sys: &'a dyn HostSystem,
        dir: &Path,
        hubs: &[String],
        max_reports: usize,
    ) -> Result<Buffer<'a>, BufferError> {
        fn io<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> BufferError + 'p {
            move |source| BufferError::Io { what, path: path.to_path_buf(), source }
        }
        sys.create_dir_all(&dir.join("reports"), DIR_MODE).map_err(io("cannot create", dir))?;
        let state_path = dir.join("state.json");
        let state = match sys.read_to_string(&state_path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| BufferError::Corrupt { path: state_path.clone(), message: e.to_string() })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let state = State { stream: new_stream(), next_seq: 1 };
                write_json(sys, &state_path, &state)?;
                state
            }
            Err(e) => return Err(io("cannot read", &state_path)(e)),
        };
        let mut seqs: Vec<u64> = sys
            .read_dir_names(&dir.join("reports"))
            .map_err(io("cannot list", dir))?
            .iter()
            .filter_map(|n| n.strip_suffix(".json")?.parse().ok())
            .collect();
        seqs.sort_unstable();
        let mut cursors = BTreeMap::new();
        for hub in hubs {
            let path = cursor_path(dir, hub);
            let cursor = match sys.read_to_string(&path) {
                Ok(text) => serde_json::from_str(&text).unwrap_or_default(),
                Err(_) => {
                    Cursor { delivered_through: seqs.first().map(|s| s - 1).unwrap_or(state.next_seq - 1), dropped: 0 }
                }
            };
            cursors.insert(hub.clone(), cursor);
        }
        for name in sys.read_dir_names(dir).unwrap_or_default() {
            if name.starts_with("cursor-") && !hubs.iter().any(|h| cursor_file_name(h) == name) {
                let _ = sys.remove_file(&dir.join(name));
            }
        }
        let mut buffer =
            Buffer { sys, dir: dir.to_path_buf(), max_reports: max_reports.max(1), state, seqs: seqs.into(), cursors };
        buffer.collect_garbage()?;
        Ok(buffer)
    }

    pub fn stream(&self) -> &str {
        &self.state.stream
    }

    /// The sequence number the next report gets.
    pub fn next_seq(&self) -> u64 {
        self.state.next_seq
    }

    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    pub fn cursor(&self, hub: &str) -> Option<&Cursor> {
        self.cursors.get(hub)
    }

    /// Stores `report` under the next sequence number (set here), then drops the oldest beyond
    /// the bound, counting them for every hub that had not confirmed them.
    pub fn append(&mut self, mut report: Report) -> Result<u64, BufferError> {
        let seq = self.state.next_seq;
        report.seq = seq;
        let path = self.report_path(seq);
        write_json(self.sys, &path, &report)?;
        self.state.next_seq = seq + 1;
        write_json(self.sys, &self.dir.join("state.json"), &self.state)?;
        self.seqs.push_back(seq);
        while self.seqs.len() > self.max_reports {
            let oldest = self.seqs.pop_front().expect("longer than the bound");
            let mut changed = Vec::new();
            for (hub, cursor) in self.cursors.iter_mut() {
                if cursor.delivered_through < oldest {
                    cursor.dropped += 1;
                    cursor.delivered_through = oldest;
                    changed.push((hub.clone(), cursor.clone()));
                }
            }
            for (hub, cursor) in changed {
                write_json(self.sys, &cursor_path(&self.dir, &hub), &cursor)?;
            }
            self.remove_report(oldest)?;
        }
        Ok(seq)
    }

    /// Up to `limit` reports `hub` has not confirmed, oldest first.
    pub fn pending(&self, hub: &str, limit: usize) -> Result<Vec<Report>, BufferError> {
        let after = self.cursors.get(hub).map(|c| c.delivered_through).unwrap_or(0);
        let mut out = Vec::new();
        for seq in self.seqs.iter().filter(|s| **s > after).take(limit) {
            let path = self.report_path(*seq);
            let text = self.sys.read_to_string(&path).map_err(|source| BufferError::Io {
                what: "cannot read",
                path: path.clone(),
                source,
            })?;
            out.push(serde_json::from_str(&text).map_err(|e| BufferError::Corrupt { path, message: e.to_string() })?);
        }
        Ok(out)
    }

    /// How many reports `hub` has not confirmed.
    pub fn backlog(&self, hub: &str) -> usize {
        let after = self.cursors.get(hub).map(|c| c.delivered_through).unwrap_or(0);
        self.seqs.iter().filter(|s| **s > after).count()
    }

    /// `hub` stored everything up to `through`: its cursor moves, and reports every hub has
    /// now go.
    pub fn confirm(&mut self, hub: &str, through: u64) -> Result<(), BufferError> {
        let Some(cursor) = self.cursors.get_mut(hub) else { return Ok(()) };
        if through <= cursor.delivered_through {
            return Ok(());
        }
        cursor.delivered_through = through.min(self.state.next_seq - 1);
        let cursor = cursor.clone();
        write_json(self.sys, &cursor_path(&self.dir, hub), &cursor)?;
        self.collect_garbage()
    }

    fn collect_garbage(&mut self) -> Result<(), BufferError> {
        let everywhere = self.cursors.values().map(|c| c.delivered_through).min().unwrap_or(u64::MAX);
        while let Some(&oldest) = self.seqs.front() {
            if oldest > everywhere {
                break;
            }
            self.seqs.pop_front();
            self.remove_report(oldest)?;
        }
        Ok(())
    }

    fn report_path(&self, seq: u64) -> PathBuf {
        self.dir.join("reports").join(format!("{seq:020}.json"))
    }

    fn remove_report(&self, seq: u64) -> Result<(), BufferError> {
        let path = self.report_path(seq);
        match self.sys.remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(BufferError::Io { what: "cannot remove", path, source: e })
            }
            _ => Ok(()),
        }
    }
}

fn cursor_file_name(hub: &str) -> String {
    let safe: String =
        hub.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect();
    format!("cursor-{safe}.json")
}

fn cursor_path(dir: &Path, hub: &str) -> PathBuf {
    dir.join(cursor_file_name(hub))
}

fn write_json<T: Serialize>(sys: &dyn HostSystem, path: &Path, value: &T) -> Result<(), BufferError> {
    let text = serde_json::to_vec(value).expect("buffer records always serialize");
    sys.write_atomic(path, &text, FILE_MODE).map_err(|source| BufferError::Io {
        what: "cannot write",
        path: path.to_path_buf(),
        source,
    })
}

fn new_stream() -> String {
    let bytes: [u8; 8] = rand::random();
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::host::system::fake::FakeSystem;
    use crate::protocol::node::Role;

    fn report(n: i64) -> Report {
        Report {
            seq: 0,
            at_ms: n,
            interval_secs: 10,
            role: Role::Agent,
            k3s_version: None,
            checks: vec![],
            gauges: BTreeMap::new(),
        }
    }

    fn hubs() -> Vec<String> {
        vec!["10.0.0.1".to_string(), "10.0.0.2".to_string()]
    }

    #[test]
    fn reports_wait_for_every_hub_and_go_once_all_have_them() {
        let sys = FakeSystem::new();
        let dir = Path::new("/var/lib/k3node/buffer");
        let mut b = Buffer::open(&sys, dir, &hubs(), 100).unwrap();
        for i in 0..5 {
            assert_eq!(b.append(report(i)).unwrap(), i as u64 + 1);
        }
        let pending = b.pending("10.0.0.1", 3).unwrap();
        assert_eq!(pending.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        b.confirm("10.0.0.1", 5).unwrap();
        assert_eq!(b.len(), 5, "the second hub has none of them yet");
        assert_eq!(b.backlog("10.0.0.2"), 5);
        b.confirm("10.0.0.2", 2).unwrap();
        assert_eq!(b.len(), 3);
        assert!(sys.contents("/var/lib/k3node/buffer/reports/00000000000000000002.json").is_none());
        assert!(sys.contents("/var/lib/k3node/buffer/reports/00000000000000000003.json").is_some());
    }

    #[test]
    fn sequence_numbers_stream_and_cursors_survive_a_restart() {
        let sys = FakeSystem::new();
        let dir = Path::new("/b");
        let stream = {
            let mut b = Buffer::open(&sys, dir, &hubs(), 100).unwrap();
            b.append(report(1)).unwrap();
            b.append(report(2)).unwrap();
            b.confirm("10.0.0.1", 1).unwrap();
            b.stream().to_string()
        };
        let mut b = Buffer::open(&sys, dir, &hubs(), 100).unwrap();
        assert_eq!(b.stream(), stream);
        assert_eq!(b.append(report(3)).unwrap(), 3);
        assert_eq!(b.pending("10.0.0.1", 10).unwrap().iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(b.pending("10.0.0.2", 10).unwrap().iter().map(|r| r.at_ms).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn what_falls_out_of_the_bound_is_counted_for_the_hubs_that_missed_it() {
        let sys = FakeSystem::new();
        let dir = Path::new("/b");
        let mut b = Buffer::open(&sys, dir, &hubs(), 3).unwrap();
        for i in 0..5 {
            b.append(report(i)).unwrap();
            // The first hub is there all along; the second is away.
            let through = b.next_seq() - 1;
            b.confirm("10.0.0.1", through).unwrap();
        }
        assert_eq!(b.len(), 3);
        assert_eq!(b.cursor("10.0.0.1").unwrap().dropped, 0);
        assert_eq!(b.cursor("10.0.0.2").unwrap(), &Cursor { delivered_through: 2, dropped: 2 });
        assert_eq!(b.pending("10.0.0.2", 10).unwrap().iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        // Persisted: a restart still knows what was dropped.
        let b = Buffer::open(&sys, dir, &hubs(), 3).unwrap();
        assert_eq!(b.cursor("10.0.0.2").unwrap().dropped, 2);
    }

    #[test]
    fn a_hub_no_longer_listed_holds_nothing_back() {
        let sys = FakeSystem::new();
        let dir = Path::new("/b");
        let mut b = Buffer::open(&sys, dir, &hubs(), 10).unwrap();
        b.append(report(1)).unwrap();
        b.confirm("10.0.0.1", 1).unwrap();
        drop(b);
        let b = Buffer::open(&sys, dir, &["10.0.0.1".to_string()], 10).unwrap();
        assert!(b.is_empty(), "only the removed hub was still waiting for it");
        assert!(sys.contents("/b/cursor-10.0.0.2.json").is_none());
    }

    #[test]
    fn every_write_is_atomic_and_private() {
        let sys = FakeSystem::new();
        let mut b = Buffer::open(&sys, Path::new("/b"), &hubs(), 10).unwrap();
        b.append(report(1)).unwrap();
        let files: Vec<(PathBuf, u32)> = sys
            .writes()
            .into_iter()
            .filter_map(|w| match w {
                crate::host::system::fake::Write::Atomic { path, mode, .. } => Some((path, mode)),
                _ => None,
            })
            .collect();
        assert_eq!(files.len(), 3, "state at open, the report, state again: {files:?}");
        assert!(files.iter().all(|(_, mode)| *mode == FILE_MODE), "{files:?}");
    }
}
