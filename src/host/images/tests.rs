//! The image operations on the fake host: what reaches `k3s ctr`, and what a broken upload,
//! a stopped k3s or a full disk do (nothing imported, the reason named).

use std::io::Write;
use std::path::Path;

use crate::host::system::fake::FakeSystem;
use crate::host::system::HostSystem;
use crate::protocol::files::Compression;
use crate::protocol::frame::FrameWriter;
use crate::protocol::images::{ImportImages, NodeImage, PruneStaged, StageImages};
use crate::protocol::{encode_request, AnswerLine, ErrorKind, Operation};

const K3S: &str = "/usr/local/bin/k3s";
const DIGEST: &str = "sha256:07e7bfefaeca07d6473b3bb89eddc51539264c2d75e1bf4c0d5db8785cc43ad2";

fn ctr(rest: &[&str]) -> Vec<String> {
    let mut args: Vec<String> =
        ["ctr", "--address", super::SOCKET, "--namespace", "k8s.io"].iter().map(|s| s.to_string()).collect();
    args.extend(rest.iter().map(|s| s.to_string()));
    args
}

fn listing(pinned: bool) -> String {
    let labels = if pinned { "io.cattle.k3s.pinned=pinned,io.cri-containerd.pinned=pinned" } else { "-" };
    format!("REF TYPE DIGEST SIZE PLATFORMS LABELS\ndocker.io/library/app:1 application/vnd.oci.image.manifest.v1+json {DIGEST} 3.0 MiB linux/amd64 {labels}\n")
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn node() -> FakeSystem {
    node_with_socket(true)
}

fn node_with_socket(running: bool) -> FakeSystem {
    let sys = FakeSystem::new().file(K3S, "k3s");
    let sys = if running { sys.file(super::SOCKET, "") } else { sys };
    let import = ctr(&["images", "import", "--no-unpack", "-"]);
    let label = ctr(&[
        "images",
        "label",
        "docker.io/library/app:1",
        "io.cattle.k3s.pinned=pinned",
        "io.cri-containerd.pinned=pinned",
    ]);
    let ls = ctr(&["images", "ls"]);
    sys.disk("/var/lib/rancher", 50 << 30, 100 << 30)
        .output(K3S, &strs(&import), 0, "", "")
        .output(K3S, &strs(&label), 0, "", "")
        .output(K3S, &strs(&ls), 0, &listing(true), "")
}

fn serve<O: Operation>(sys: &FakeSystem, request: &O, upload: Option<&[u8]>, cut: usize) -> Vec<AnswerLine> {
    let mut input = encode_request(request, None);
    if let Some(bytes) = upload {
        let mut w = FrameWriter::new(&mut input);
        w.write_all(bytes).unwrap();
        w.finish().unwrap();
        input.truncate(input.len() - cut);
    }
    let mut out = Vec::new();
    crate::host::serve(O::NAME, sys, &mut input.as_slice(), &mut out);
    String::from_utf8_lossy(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn import_request(compression: Compression) -> ImportImages {
    ImportImages {
        images: vec![NodeImage { name: "docker.io/library/app:1".into(), digest: DIGEST.into() }],
        image_bytes: 1000,
        compression,
    }
}

#[test]
fn an_upload_is_streamed_decompressed_into_k3s_ctr_then_pinned_and_checked() {
    let sys = node();
    let tar = b"the archive's tar bytes".repeat(1000);
    let got = serve(&sys, &import_request(Compression::Zstd), Some(&zstd::encode_all(&tar[..], 1).unwrap()), 0);
    let Some(AnswerLine::Result { value }) = got.last() else { panic!("{got:?}") };
    assert_eq!(value["images"][0]["digest"], DIGEST);
    assert_eq!(value["images"][0]["pinned"], true);
    let state = sys.state();
    assert_eq!(state.streamed.len(), 1);
    assert_eq!(state.streamed[0].1, ctr(&["images", "import", "--no-unpack", "-"]));
    assert_eq!(state.streamed[0].2, tar, "containerd got the tar itself, decompressed");
    assert!(state.runs.iter().any(|(_, a)| a.contains(&"label".to_string())));
}

#[test]
fn a_cut_upload_names_no_image_and_pins_nothing() {
    let sys = node();
    let got = serve(&sys, &import_request(Compression::None), Some(&vec![7u8; 50_000]), 2_000);
    let [.., AnswerLine::Error(e)] = &got[..] else { panic!("{got:?}") };
    assert_eq!(e.kind, ErrorKind::Unavailable, "{}", e.message);
    assert!(e.message.contains("broke off") && e.message.contains("nothing was imported"), "{}", e.message);
    assert!(!sys.state().runs.iter().any(|(_, a)| a.contains(&"label".to_string())), "nothing pinned");
}

#[test]
fn a_node_without_running_k3s_or_without_room_says_so_before_reading_the_upload() {
    let stopped = node_with_socket(false);
    let got = serve(&stopped, &import_request(Compression::None), Some(b"x"), 0);
    let [.., AnswerLine::Error(e)] = &got[..] else { panic!("{got:?}") };
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert!(e.message.starts_with("k3s is not running on this node"), "{}", e.message);
    assert!(stopped.state().streamed.is_empty());

    let full = node().disk("/var/lib/rancher", 100 << 20, 100 << 30);
    let got = serve(&full, &import_request(Compression::None), Some(b"x"), 0);
    let [.., AnswerLine::Error(e)] = &got[..] else { panic!("{got:?}") };
    assert_eq!(e.kind, ErrorKind::NoSpace);
    assert!(e.message.contains("not enough disk space") && e.message.contains("100.0 MiB free"), "{}", e.message);
    assert!(full.state().streamed.is_empty());
}

#[test]
fn an_image_not_pinned_after_the_import_is_a_failure() {
    let ls = ctr(&["images", "ls"]);
    let args: Vec<&str> = ls.iter().map(String::as_str).collect();
    let sys = node().output(K3S, &args, 0, &listing(false), "");
    let got = serve(&sys, &import_request(Compression::None), Some(b"tar"), 0);
    let [.., AnswerLine::Error(e)] = &got[..] else { panic!("{got:?}") };
    assert!(e.message.contains("docker.io/library/app:1 is not pinned"), "{}", e.message);
}

#[test]
fn a_staged_archive_arrives_whole_in_the_images_dir_and_a_cut_one_leaves_it_as_it_was() {
    let sys = FakeSystem::new().dir("/var/lib/rancher/k3s/agent/images");
    let bytes = vec![3u8; 10_000];
    let request = StageImages {
        file_name: "app.tar.zst".into(),
        size: bytes.len() as u64,
        sha256: crate::digest::sha256_hex(&bytes),
    };
    let got = serve(&sys, &request, Some(&bytes), 0);
    assert!(matches!(got.last(), Some(AnswerLine::Result { .. })), "{got:?}");
    assert_eq!(sys.bytes("/var/lib/rancher/k3s/agent/images/app.tar.zst").unwrap(), bytes);
    assert!(sys.read_dir_names(Path::new("/var/lib/rancher/k3s/agent/.k3node-staging")).unwrap().is_empty());

    let other = StageImages { file_name: "other.tar.zst".into(), ..request.clone() };
    let got = serve(&sys, &other, Some(&bytes), 64);
    assert!(matches!(got.last(), Some(AnswerLine::Error(_))), "{got:?}");
    assert!(!sys.exists(Path::new("/var/lib/rancher/k3s/agent/images/other.tar.zst")));
    let bad = StageImages { file_name: "../etc/passwd".into(), ..request };
    let got = serve(&sys, &bad, Some(&bytes), 0);
    let [.., AnswerLine::Error(e)] = &got[..] else { panic!("{got:?}") };
    assert_eq!(e.kind, ErrorKind::BadRequest);
}

#[test]
fn pruning_removes_only_what_an_earlier_preload_recorded_and_refuses_a_damaged_record() {
    let dir = "/var/lib/rancher/k3s/agent/images";
    let record = "/var/lib/rancher/k3s/agent/.k3node-preloaded";
    let sys = FakeSystem::new()
        .file(&format!("{dir}/k3node-old.tar.zst"), "dropped from spec.images")
        .file(&format!("{dir}/k3node-kept.tar.zst"), "still in spec.images")
        .file(&format!("{dir}/by-hand.tar"), "staged by hand")
        .file("/etc/passwd", "root:x:0:0")
        .file(record, r#"["k3node-old.tar.zst","k3node-kept.tar.zst","../../../../etc/passwd"]"#);
    let request = PruneStaged { keep: vec!["k3node-kept.tar.zst".into()], dry_run: true };
    let got = serve(&sys, &request, None, 0);
    let [.., AnswerLine::Result { value, .. }] = &got[..] else { panic!("{got:?}") };
    assert_eq!(value["removed"], serde_json::json!(["k3node-old.tar.zst"]), "a dry run names it");
    assert!(sys.exists(Path::new(&format!("{dir}/k3node-old.tar.zst"))), "and leaves it");

    let got = serve(&sys, &PruneStaged { dry_run: false, ..request }, None, 0);
    assert!(matches!(got.last(), Some(AnswerLine::Result { .. })), "{got:?}");
    assert!(!sys.exists(Path::new(&format!("{dir}/k3node-old.tar.zst"))));
    for kept in [format!("{dir}/k3node-kept.tar.zst"), format!("{dir}/by-hand.tar"), "/etc/passwd".into()] {
        assert!(sys.exists(Path::new(&kept)), "{kept}");
    }
    assert_eq!(sys.contents(record).unwrap(), r#"["k3node-kept.tar.zst"]"#);

    // A record that is not k3node's list: refused, nothing removed.
    let sys = sys.file(record, "{not json");
    let got = serve(&sys, &PruneStaged { keep: vec![], dry_run: false }, None, 0);
    let [.., AnswerLine::Error(e)] = &got[..] else { panic!("{got:?}") };
    assert_eq!(e.kind, ErrorKind::BadRequest);
    assert!(e.message.contains(".k3node-preloaded") && e.message.contains("remove it"), "{}", e.message);
    assert!(sys.exists(Path::new(&format!("{dir}/k3node-kept.tar.zst"))));

    // dry_run is required: a request without it is refused before anything is read.
    let mut out = Vec::new();
    let status = crate::host::serve(
        "prune-staged",
        &sys,
        &mut &b"{\"op\":\"prune-staged\",\"args\":{\"keep\":[]}}\n"[..],
        &mut out,
    );
    assert_ne!(status, 0, "{}", String::from_utf8_lossy(&out));
    assert!(String::from_utf8_lossy(&out).contains("dry_run"), "{}", String::from_utf8_lossy(&out));
}
