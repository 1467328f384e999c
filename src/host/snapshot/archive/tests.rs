//! Bad archives, each built with the tar crate byte by byte (names and link targets written
//! raw, so that what k3node's writer never makes can be made): every one is refused while it is
//! read, with the kind the operator acts on, naming the entry, and a restore of it leaves the
//! host as it was.

use std::io::Write as _;
use std::path::Path;

use super::*;
use crate::host::snapshot::testutil::{self, fake_target, sqlite_db, SNAPSHOTS};
use crate::host::system::fake::FakeSystem;
use crate::protocol::snapshot::RestoreSnapshot;
use crate::protocol::ErrorKind;

const DB: &str = "var/lib/rancher/k3s/server/db/state.db";

#[derive(Clone)]
enum Body {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    HardLink(String),
    Char,
    Fifo,
    /// Format 2's entry after the datastore: the sha256 of the entry named [`DB`] among the same
    /// entries, as they are when the tar is written.
    DatabaseSum,
}

/// One tar entry as written, and whether the manifest lists it (as it is).
#[derive(Clone)]
struct Raw {
    name: String,
    body: Body,
    mode: u32,
    listed: bool,
}

fn raw(name: &str, body: Body, mode: u32) -> Raw {
    Raw { name: name.into(), body, mode, listed: true }
}

/// A small snapshot a restore accepts: the server's dirs, its token, the database, config.yaml.
fn good() -> Vec<Raw> {
    vec![
        raw("var/lib/rancher/k3s/server", Body::Dir, 0o700),
        raw("var/lib/rancher/k3s/server/token", Body::File(testutil::token_text().into_bytes()), 0o600),
        raw("var/lib/rancher/k3s/server/tls", Body::Dir, 0o700),
        raw("var/lib/rancher/k3s/server/tls/server-ca.crt", Body::File(b"ca".to_vec()), 0o644),
        raw("var/lib/rancher/k3s/server/tls/current-ca.crt", Body::Symlink("server-ca.crt".into()), 0o777),
        raw("var/lib/rancher/k3s/server/db", Body::Dir, 0o700),
        raw(DB, Body::File(sqlite_db(20)), 0o600),
        unlisted(DATABASE_SUM_PATH, Body::DatabaseSum, 0o600),
        raw("etc/rancher/k3s", Body::Dir, 0o755),
        raw("etc/rancher/k3s/config.yaml", Body::File(b"node-name: server1\n".to_vec()), 0o600),
    ]
}

fn entry_of(r: &Raw) -> Entry {
    let (kind, size, sha256, target) = match &r.body {
        Body::File(bytes) => (EntryKind::File, bytes.len() as u64, Some(crate::digest::sha256_hex(bytes)), None),
        Body::Dir => (EntryKind::Dir, 0, None, None),
        Body::Symlink(t) | Body::HardLink(t) => (EntryKind::Symlink, 0, None, Some(t.clone())),
        Body::Char | Body::Fifo | Body::DatabaseSum => (EntryKind::File, 0, Some(crate::digest::sha256_hex(b"")), None),
    };
    Entry { path: r.name.clone(), kind, size, mode: r.mode, uid: 0, gid: 0, sha256, target }
}

/// The manifest of format 2 (what k3node writes): the datastore's sha256 is not listed.
fn manifest_of(raws: &[Raw]) -> Manifest {
    let mut manifest = manifest_1_of(raws);
    manifest.format = FORMAT.into();
    for entry in manifest.entries.iter_mut().filter(|e| e.path == DB) {
        entry.sha256 = None;
    }
    manifest
}

/// The manifest of format 1: every file's sha256 listed, the datastore's too.
fn manifest_1_of(raws: &[Raw]) -> Manifest {
    Manifest {
        format: FORMAT_1.into(),
        cluster: "lab".into(),
        node: "server1".into(),
        datastore: Datastore::Sqlite,
        k3s_version: testutil::VERSION.into(),
        k3node_version: "0.1.0".into(),
        created: "2025-01-02T03:04:05Z".into(),
        data_dir: "/var/lib/rancher/k3s".into(),
        database: DB.into(),
        entries: raws.iter().filter(|r| r.listed).map(entry_of).collect(),
    }
}

fn append(tar: &mut tar::Builder<Vec<u8>>, name: &[u8], body: &Body, mode: u32, raws: &[Raw]) {
    let mut header = tar::Header::new_gnu();
    header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    let sum;
    let (kind, data): (tar::EntryType, &[u8]) = match body {
        Body::File(bytes) => (tar::EntryType::Regular, bytes),
        Body::DatabaseSum => {
            let database = raws.iter().find(|r| r.name == DB).map(|r| &r.body);
            let Some(Body::File(bytes)) = database else { panic!("no database among the entries") };
            sum = sidecar_text(&crate::digest::sha256_hex(bytes), DB);
            (tar::EntryType::Regular, sum.as_bytes())
        }
        Body::Dir => (tar::EntryType::Directory, &[]),
        Body::Symlink(t) => {
            header.set_link_name_literal(t.as_bytes()).unwrap();
            (tar::EntryType::Symlink, &[])
        }
        Body::HardLink(t) => {
            header.set_link_name_literal(t.as_bytes()).unwrap();
            (tar::EntryType::Link, &[])
        }
        Body::Char => (tar::EntryType::Char, &[]),
        Body::Fifo => (tar::EntryType::Fifo, &[]),
    };
    header.set_entry_type(kind);
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_735_787_045);
    header.set_cksum();
    tar.append(&header, data).unwrap();
}

/// The tar stream: the manifest's JSON first (unless `manifest` is None), then the entries.
fn tar_of(manifest: Option<&[u8]>, raws: &[Raw]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    if let Some(json) = manifest {
        append(&mut tar, MANIFEST_PATH.as_bytes(), &Body::File(json.to_vec()), 0o600, raws);
    }
    for r in raws {
        append(&mut tar, r.name.as_bytes(), &r.body, r.mode, raws);
    }
    tar.into_inner().unwrap()
}

fn zstd_of(tar: &[u8]) -> Vec<u8> {
    zstd::encode_all(tar, 3).unwrap()
}

fn json(manifest: &Manifest) -> Vec<u8> {
    serde_json::to_vec(manifest).unwrap()
}

const ARCHIVE: &str = "/var/lib/rancher/k3node/snapshots/bad.tar.zst";

/// The archive with its own sha256 in its sidecar (`sidecar_of`: the bytes the sidecar describes).
fn place(sys: &FakeSystem, bytes: &[u8], sidecar_of: &[u8]) {
    sys.write_atomic(Path::new(ARCHIVE), bytes, 0o600).unwrap();
    let text = sidecar_text(&crate::digest::sha256_hex(sidecar_of), "bad.tar.zst");
    sys.write_atomic(&sidecar_path(Path::new(ARCHIVE)), text.as_bytes(), 0o600).unwrap();
}

fn walk_of(bytes: &[u8], sidecar_of: &[u8]) -> Result<Walked, ArchiveError> {
    let sys = FakeSystem::new();
    place(&sys, bytes, sidecar_of);
    walk(&sys, Path::new(ARCHIVE), &mut CheckOnly)
}

/// A well-formed archive of these entries and manifest.
fn archive_of(manifest: &Manifest, raws: &[Raw]) -> Vec<u8> {
    zstd_of(&tar_of(Some(&json(manifest)), raws))
}

fn with(mut raws: Vec<Raw>, change: impl FnOnce(&mut Vec<Raw>)) -> Vec<Raw> {
    change(&mut raws);
    raws
}

/// What a case is: a name, the archive's bytes, the bytes its sidecar describes.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    sidecar_of: Vec<u8>,
    kind: ErrorKind,
    words: &'static str,
}

fn case(name: &'static str, bytes: Vec<u8>, kind: ErrorKind, words: &'static str) -> Case {
    Case { name, sidecar_of: bytes.clone(), bytes, kind, words }
}

fn unlisted(name: &str, body: Body, mode: u32) -> Raw {
    Raw { listed: false, ..raw(name, body, mode) }
}

fn cases() -> Vec<Case> {
    use ErrorKind::*;
    let good_bytes = archive_of(&manifest_of(&good()), &good());
    let mut flipped = good_bytes.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x08;
    let half = good_bytes[..good_bytes.len() / 2].to_vec();
    let listed = |raws: Vec<Raw>| archive_of(&manifest_of(&raws), &raws);
    // The tar holds one thing, the manifest lists another.
    let lying = |tar_raws: Vec<Raw>, manifest_raws: Vec<Raw>| archive_of(&manifest_of(&manifest_raws), &tar_raws);

    let mut wrong_content = good();
    wrong_content[1].body = Body::File(b"K10forged::server:x\n".to_vec());
    let mut extra_zeros_then_data = tar_of(Some(&json(&manifest_of(&good()))), &good());
    extra_zeros_then_data.extend_from_slice(b"appended after the end of the tar");
    let manifest_second = {
        let mut tar = tar::Builder::new(Vec::new());
        append(&mut tar, b"var/lib/rancher/k3s/server", &Body::Dir, 0o700, &[]);
        append(&mut tar, MANIFEST_PATH.as_bytes(), &Body::File(json(&manifest_of(&good()))), 0o600, &[]);
        zstd_of(&tar.into_inner().unwrap())
    };
    let mut bad_format = manifest_of(&good());
    bad_format.format = "k3node-snapshot/9".into();
    let mut format_2_listing_the_database = manifest_1_of(&good());
    format_2_listing_the_database.format = FORMAT.into();
    let mut absolute_data_dir = manifest_of(&good());
    absolute_data_dir.data_dir = "var/lib/rancher/k3s".into();

    vec![
        Case { name: "a flipped byte", bytes: flipped, sidecar_of: good_bytes.clone(), kind: ChecksumMismatch, words: "its sha256 is" },
        Case { name: "a truncated archive", bytes: half.clone(), sidecar_of: good_bytes.clone(), kind: ChecksumMismatch, words: "its sha256 is" },
        case("a truncated archive with its own sidecar", half, ChecksumMismatch, "does not decode"),
        case("a file whose bytes are not the manifest's", lying(wrong_content, good()), ChecksumMismatch, "entry \"var/lib/rancher/k3s/server/token\" has 20 bytes"),
        case("an entry the tar lacks", lying(good()[..9].to_vec(), good()), BadRequest, "the tar lacks 1 of the manifest's entries, the first \"etc/rancher/k3s/config.yaml\""),
        case(
            "an entry the manifest lacks",
            listed(with(good(), |r| r.push(unlisted("var/lib/rancher/k3s/server/tls/extra.key", Body::File(b"k".to_vec()), 0o600)))),
            BadRequest,
            "entry \"var/lib/rancher/k3s/server/tls/extra.key\" is not in the manifest",
        ),
        case(
            "an absolute path in the tar",
            listed(with(good(), |r| r.push(unlisted("/etc/passwd", Body::File(b"root::0:0\n".to_vec()), 0o644)))),
            BadRequest,
            "entry \"/etc/passwd\" is an absolute path",
        ),
        case(
            "`..` in the tar",
            listed(with(good(), |r| r.push(unlisted("var/lib/rancher/k3s/server/../../../../../etc/cron.d/x", Body::File(b"* * * * * root sh\n".to_vec()), 0o644)))),
            BadRequest,
            "entry \"var/lib/rancher/k3s/server/../../../../../etc/cron.d/x\" contains `..`",
        ),
        case(
            "an absolute path in the manifest",
            listed(with(good(), |r| r.push(raw("/etc/passwd", Body::File(b"x".to_vec()), 0o644)))),
            BadRequest,
            "entry \"/etc/passwd\" is an absolute path",
        ),
        case(
            "`..` in the manifest",
            listed(with(good(), |r| r.push(raw("var/lib/rancher/k3s/server/tls/../../../../../../etc/passwd", Body::File(b"x".to_vec()), 0o644)))),
            BadRequest,
            "contains `..`",
        ),
        case(
            "a link out by absolute path",
            listed(with(good(), |r| r.push(raw("var/lib/rancher/k3s/server/tls/evil", Body::Symlink("/etc/shadow".into()), 0o777)))),
            BadRequest,
            "entry \"var/lib/rancher/k3s/server/tls/evil\" links to \"/etc/shadow\", which is outside what a snapshot holds",
        ),
        case(
            "a link out by `..`",
            listed(with(good(), |r| r.push(raw("var/lib/rancher/k3s/server/manifests/up", Body::Symlink("../../../../../../root/.ssh".into()), 0o777)))),
            BadRequest,
            "links to \"../../../../../../root/.ssh\"",
        ),
        case(
            "an entry written through a link",
            listed(with(good(), |r| {
                r.push(raw("var/lib/rancher/k3s/server/manifests", Body::Dir, 0o700));
                r.push(raw("var/lib/rancher/k3s/server/manifests/tls", Body::Symlink("../tls".into()), 0o777));
                r.push(raw("var/lib/rancher/k3s/server/manifests/tls/server-ca.key", Body::File(b"k".to_vec()), 0o600));
            })),
            BadRequest,
            "lies below the symlink",
        ),
        case(
            "a hard link",
            listed(with(good(), |r| r.push(unlisted("var/lib/rancher/k3s/server/tls/hard", Body::HardLink("/etc/shadow".into()), 0o644)))),
            BadRequest,
            "entry \"var/lib/rancher/k3s/server/tls/hard\" is a hard link",
        ),
        case(
            "a device file",
            listed(with(good(), |r| r.push(unlisted("var/lib/rancher/k3s/server/tls/sda", Body::Char, 0o600)))),
            BadRequest,
            "entry \"var/lib/rancher/k3s/server/tls/sda\" is a device file",
        ),
        case(
            "a fifo",
            listed(with(good(), |r| r.push(unlisted("var/lib/rancher/k3s/server/cred/pipe", Body::Fifo, 0o600)))),
            BadRequest,
            "is a fifo",
        ),
        case(
            "a file outside what a snapshot holds",
            listed(with(good(), |r| r.push(raw("etc/sudoers.d/k3node", Body::File(b"ALL ALL=(ALL) NOPASSWD: ALL\n".to_vec()), 0o440)))),
            BadRequest,
            "entry \"etc/sudoers.d/k3node\" (a file) is not among what a snapshot holds",
        ),
        case(
            "k3s's own data outside the server's part",
            listed(with(good(), |r| r.push(raw("var/lib/rancher/k3s/agent/etc/containerd/config.toml", Body::File(b"x".to_vec()), 0o600)))),
            BadRequest,
            "is not among what a snapshot holds",
        ),
        case(
            "a setuid file",
            listed(with(good(), |r| r.push(raw("var/lib/rancher/k3s/server/tls/sh", Body::File(b"#!".to_vec()), 0o4755)))),
            BadRequest,
            "has mode 4755",
        ),
        case("data after the tar's end", zstd_of(&extra_zeros_then_data), BadRequest, "data follows the end of the tar archive"),
        case("the manifest not first", manifest_second, BadRequest, "its first entry is \"var/lib/rancher/k3s/server\""),
        case(
            "a mode the manifest does not list",
            lying(with(good(), |r| r[1].mode = 0o644), good()),
            BadRequest,
            "entry \"var/lib/rancher/k3s/server/token\" has mode 0644 and owner 0:0 in the tar, 0600 and 0:0 in the manifest",
        ),
        case("an entry twice", lying(with(good(), |r| r.push(good()[1].clone())), good()), BadRequest, "appears twice"),
        case(
            "a link the manifest lists elsewhere",
            lying(with(good(), |r| r[4].body = Body::Symlink("server-ca.key".into())), good()),
            BadRequest,
            "links to \"server-ca.key\" in the tar, to \"server-ca.crt\" in the manifest",
        ),
        case("a manifest that is not JSON", zstd_of(&tar_of(Some(b"{not json"), &good())), BadRequest, "its manifest is not valid"),
        case("another format", archive_of(&bad_format, &good()), BadRequest, "format is \"k3node-snapshot/9\""),
        case("a relative data dir", archive_of(&absolute_data_dir, &good()), BadRequest, "data dir \"var/lib/rancher/k3s\" is not an absolute path"),
        case("no zstd at all", b"plain text".to_vec(), ChecksumMismatch, "does not decode"),
        case(
            "format 2 without the datastore's sha256 entry",
            listed(with(good(), |r| drop(r.remove(7)))),
            BadRequest,
            "entry \"var/lib/rancher/k3s/server/db/state.db\" is not followed by its sha256 (k3node-snapshot.database.sha256)",
        ),
        case(
            "the datastore's sha256 entry away from the datastore",
            listed(with(good(), |r| {
                let sum = r.remove(7);
                r.push(sum);
            })),
            BadRequest,
            "is not followed by its sha256",
        ),
        case(
            "a datastore sha256 that is not its bytes'",
            listed(with(good(), |r| r[7].body = Body::File(sidecar_text(&"0".repeat(64), DB).into_bytes()))),
            ChecksumMismatch,
            "the manifest and the sha256 entry after it say",
        ),
        case(
            "a datastore sha256 entry naming another entry",
            listed(with(good(), |r| r[7].body = Body::File(sidecar_text(&"0".repeat(64), "var/lib/rancher/k3s/server/token").into_bytes()))),
            BadRequest,
            "its k3node-snapshot.database.sha256 is not `<sha256>  var/lib/rancher/k3s/server/db/state.db`",
        ),
        case("format 2 listing the datastore's sha256", archive_of(&format_2_listing_the_database, &good()), BadRequest, "lists a sha256: in k3node-snapshot/2"),
        case(
            "format 1 with a datastore sha256 entry",
            archive_of(&manifest_1_of(&good()), &good()),
            BadRequest,
            "entry \"k3node-snapshot.database.sha256\" is not in the manifest",
        ),
        case(
            "a database that is no database",
            listed(with(good(), |r| r[6].body = Body::File(b"SQLite format 3\0 but nothing after it".repeat(200)))),
            ChecksumMismatch,
            "its database var/lib/rancher/k3s/server/db/state.db",
        ),
    ]
}

#[test]
fn a_well_formed_snapshot_passes_every_check() {
    let raws = good();
    let bytes = archive_of(&manifest_of(&raws), &raws);
    let walked = walk_of(&bytes, &bytes).unwrap();
    assert_eq!(walked.manifest.entries.len(), raws.len() - 1, "all but the datastore's sha256 are listed");
    assert_eq!(walked.sha256, crate::digest::sha256_hex(&bytes));
    assert_eq!(walked.database_sha256, crate::digest::sha256_hex(&sqlite_db(20)));
}

#[test]
fn an_archive_of_format_1_is_still_read_and_verified() {
    let raws = with(good(), |r| drop(r.remove(7)));
    let bytes = archive_of(&manifest_1_of(&raws), &raws);
    let walked = walk_of(&bytes, &bytes).unwrap();
    assert_eq!(walked.manifest.format, FORMAT_1);
    assert_eq!(Some(walked.database_sha256.as_str()), walked.manifest.database_entry().unwrap().sha256.as_deref());
    let sys = FakeSystem::new();
    place(&sys, &bytes, &bytes);
    let (walked, checker) = crate::host::snapshot::verify::verify(&sys, Path::new(ARCHIVE)).unwrap();
    assert_eq!(checker.database_check(&walked), "PRAGMA integrity_check: ok");
}

/// A case's refusal as the operator meets it: from the walk (or, for the database's own check,
/// from verify), with its kind and words.
fn refusal(c: &Case) -> (ErrorKind, String) {
    let sys = FakeSystem::new();
    place(&sys, &c.bytes, &c.sidecar_of);
    let err = crate::host::snapshot::verify::verify(&sys, Path::new(ARCHIVE))
        .err()
        .unwrap_or_else(|| panic!("{}: accepted", c.name));
    (crate::host::error::Failure::kind(&err), err.to_string())
}

#[test]
fn every_bad_archive_is_refused_while_it_is_read_naming_what_is_wrong() {
    for c in cases() {
        let (kind, message) = refusal(&c);
        assert_eq!(kind, c.kind, "{}: {message}", c.name);
        assert!(message.contains(c.words), "{}: {message}", c.name);
        assert!(message.contains(ARCHIVE), "{}: the archive is named: {message}", c.name);
    }
    // The walk alone (no database check) refuses all but the one about the database's contents.
    for c in cases().into_iter().filter(|c| !c.name.starts_with("a database")) {
        assert!(walk_of(&c.bytes, &c.sidecar_of).is_err(), "{}", c.name);
    }
}

#[test]
fn a_restore_or_its_check_of_any_bad_archive_leaves_the_host_untouched() {
    for (c, stage_only) in cases().into_iter().map(|c| (c, false)).chain(cases().into_iter().map(|c| (c, true))) {
        let target = fake_target();
        let path = format!("{SNAPSHOTS}/bad.tar.zst");
        target.write_atomic(Path::new(&path), &c.bytes, 0o600).unwrap();
        let text = sidecar_text(&crate::digest::sha256_hex(&c.sidecar_of), "bad.tar.zst");
        target.write_atomic(&sidecar_path(Path::new(&path)), text.as_bytes(), 0o600).unwrap();
        let before = target.listing();
        let req = RestoreSnapshot {
            path,
            node_name: "server1".into(),
            allow_version_mismatch: false,
            ready_timeout_secs: 60,
            dry_run: false,
            config_yaml: None,
            stage_only,
            sha256: None,
        };
        let err = crate::host::snapshot::restore::restore(&target, &req, &mut |_| {}).unwrap_err();
        assert_eq!(crate::host::error::Failure::kind(&err), c.kind, "{}: {err}", c.name);
        // What was staged before the damage showed is gone again.
        assert_eq!(target.listing(), before, "{}", c.name);
        assert!(!target.runs().iter().any(|(p, _)| p.ends_with("systemctl")), "{}: k3s was touched", c.name);
        assert_eq!(target.contents("/var/lib/rancher/k3s/server/token").unwrap(), "K10other::server:other\n");
    }
}

#[test]
fn a_manifest_lists_modes_in_octal_and_refuses_anything_else() {
    let entry = entry_of(&good()[1]);
    let text = serde_json::to_string(&entry).unwrap();
    assert!(text.contains("\"mode\":\"0600\""), "{text}");
    let decimal = text.replace("\"0600\"", "384");
    assert!(serde_json::from_str::<Entry>(&decimal).is_err());
    let long = text.replace("\"0600\"", "\"10600\"");
    assert!(serde_json::from_str::<Entry>(&long).unwrap_err().to_string().contains("four octal digits"));
    let mut buf = Vec::new();
    buf.write_all(text.as_bytes()).unwrap();
    assert_eq!(serde_json::from_slice::<Entry>(&buf).unwrap(), entry);
}

#[test]
fn links_resolve_as_the_kernel_does_without_touching_a_file() {
    let link = Path::new("/var/lib/rancher/k3s/server/tls/a");
    assert_eq!(resolve_link(link, "b").unwrap(), Path::new("/var/lib/rancher/k3s/server/tls/b"));
    assert_eq!(resolve_link(link, "../token").unwrap(), Path::new("/var/lib/rancher/k3s/server/token"));
    assert_eq!(resolve_link(link, "../../../../../../../../etc").unwrap(), Path::new("/etc"));
    assert_eq!(resolve_link(link, "/etc/./shadow").unwrap(), Path::new("/etc/shadow"));
    assert_eq!(resolve_link(link, ""), None);
}

#[test]
fn the_fuzzers_seeds_are_archives_of_both_formats_that_pass_every_check() {
    let seeds: [(&[u8], &str); 3] = [
        (include_bytes!("../../../../tests/fuzz/corpus/snapshot_archive/seed-sqlite"), FORMAT_1),
        (include_bytes!("../../../../tests/fuzz/corpus/snapshot_archive/seed-etcd"), FORMAT_1),
        (include_bytes!("../../../../tests/fuzz/corpus/snapshot_archive/seed-sqlite-2"), FORMAT),
    ];
    for (tar, format) in seeds {
        let bytes = zstd_of(tar);
        let walked = walk_of(&bytes, &bytes).unwrap();
        assert_eq!(walked.manifest.format, format);
    }
}
