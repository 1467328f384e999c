//! `k3node images`: archives built here without Docker (umoci and skopeo, Debian's packages, and
//! the tar crate for what they cannot write), sent to 1 server + 3 agents running the k3s
//! stand-in, whose containerd is a real one; what each node holds is read back with `k3s ctr`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use libtest_mimic::Trial;

use crate::common::{ensure, sh, Operator, Outcome};
use crate::mirror;
use crate::support::{Lab, LabHost};

const NODES: [&str; 4] = ["h1", "h2", "h3", "h4"];

pub fn trials(lab: &Arc<Lab>) -> Vec<Trial> {
    let lab = lab.clone();
    vec![crate::common::timed(
        "images::staged_with_the_airgap_bundle_then_imported_re_run_selected_refused_and_cut_off_nodes_converge",
        move || scenario(&lab),
    )]
}

/// A tool of Debian's the scenario builds archives with: missing, the test fails naming the package.
fn tool(name: &str, package: &str) -> Result<(), libtest_mimic::Failed> {
    let found = Command::new("sh").args(["-c", &format!("command -v {name}")]).output().map(|o| o.status.success());
    ensure(found.unwrap_or(false), || format!("{name} is missing: apt-get install {package}"))
}

fn run(cmd: &mut Command) -> Result<String, libtest_mimic::Failed> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    ensure(out.status.success(), || format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An OCI layout `dir:tag` made with umoci: `files` (name, bytes) in one layer on an empty base.
fn umoci_image(dir: &Path, tag: &str, files: &[(&str, Vec<u8>)]) -> Outcome {
    if !dir.join("index.json").exists() {
        run(Command::new("umoci").arg("init").arg("--layout").arg(dir))?;
    }
    let image = format!("{}:{tag}", dir.display());
    run(Command::new("umoci").args(["new", "--image", &image]))?;
    let bundle = dir.with_extension(format!("bundle-{tag}"));
    let _ = std::fs::remove_dir_all(&bundle);
    run(Command::new("umoci").args(["unpack", "--rootless", "--image", &image]).arg(&bundle))?;
    for (name, bytes) in files {
        std::fs::write(bundle.join("rootfs").join(name), bytes).map_err(|e| e.to_string())?;
    }
    run(Command::new("umoci").args(["repack", "--image", &image]).arg(&bundle))?;
    let _ = std::fs::remove_dir_all(&bundle);
    Ok(())
}

fn skopeo(from: &str, to: &str) -> Outcome {
    run(Command::new("skopeo").args(["copy", "--quiet", from, to])).map(|_| ())
}

/// The manifest digest skopeo computes for an archive's image.
fn digest_of(reference: &str, scratch: &Path) -> Result<String, libtest_mimic::Failed> {
    let raw = run(Command::new("skopeo").args(["inspect", "--raw", reference]))?;
    let file = scratch.join("raw-manifest.json");
    std::fs::write(&file, raw).map_err(|e| e.to_string())?;
    Ok(run(Command::new("skopeo").arg("manifest-digest").arg(&file))?.trim().to_string())
}

fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `k3s ctr -n k8s.io images ls` on a node, as the operator would check by hand.
fn images_on(host: &LabHost) -> Result<String, libtest_mimic::Failed> {
    sh(host, "k3s ctr -n k8s.io images ls")
}

/// Whether `name` is on the node at `digest` with both pin labels.
fn holds(listing: &str, name: &str, digest: &str) -> bool {
    listing.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3
            && f[0] == name
            && f[2] == digest
            && l.contains("io.cattle.k3s.pinned=pinned")
            && l.contains("io.cri-containerd.pinned=pinned")
    })
}

fn k3node_stdin(op: &Operator, args: &[&str], stdin: &Path) -> (i32, serde_json::Value, String) {
    let mut cmd = op.lab.command_in_netns(Path::new(crate::common::K3NODE));
    cmd.args(args).env("HOME", &op.home).env_remove("SSH_AUTH_SOCK");
    cmd.stdin(Stdio::from(std::fs::File::open(stdin).unwrap()));
    let out = cmd.output().expect("run k3node");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), json, stderr)
}

fn node<'a>(json: &'a serde_json::Value, host: &str) -> &'a serde_json::Value {
    json["images"].as_array().and_then(|a| a.iter().find(|n| n["host"] == host)).unwrap_or(&serde_json::Value::Null)
}

fn scenario(lab: &Arc<Lab>) -> Outcome {
    tool("umoci", "umoci")?;
    tool("skopeo", "skopeo")?;
    let world = crate::up::world(lab);
    let op = Operator::new(lab, "images");
    op.trust(&NODES.iter().map(|n| lab.host(n)).collect::<Vec<_>>());
    let work = op.home.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let hosts: Vec<(&LabHost, &str, &str)> =
        NODES.iter().map(|n| (lab.host(n), if *n == "h1" { "server" } else { "agent" }, "")).collect();
    let file = op.cluster_file("", &hosts);
    let mut yaml = std::fs::read_to_string(&file).unwrap();
    yaml.push_str(&format!(
        "  k3s:\n    version: {}\n    airgapImages: true\n    source:\n      mirror: {}\n",
        mirror::VERSION,
        world.mirror.url()
    ));
    std::fs::write(&file, &yaml).unwrap();
    let c = file.to_str().unwrap();
    let out = op.k3node(&["reset", "-c", c, "--yes"]);
    ensure(out.status.success(), || String::from_utf8_lossy(&out.stderr).into_owned())?;

    // The archives: an OCI layout and a docker-archive of one image, a multi-image archive.
    let layout = work.join("layout");
    umoci_image(&layout, "app", &[("hello.txt", b"hello from k3node".to_vec()), ("noise.bin", random(3 << 20, 7))])?;
    umoci_image(&layout, "tool", &[("tool.txt", b"a tool".to_vec())])?;
    umoci_image(&layout, "preload", &[("preload.txt", b"staged before k3s".to_vec())])?;
    let oci = work.join("app-oci.tar");
    let docker = work.join("app-docker.tar");
    let multi = work.join("multi.tar");
    let preload = work.join("preload.tar");
    skopeo(&format!("oci:{}:app", layout.display()), &format!("oci-archive:{}:registry.lab/app:1", oci.display()))?;
    skopeo(
        &format!("oci:{}:app", layout.display()),
        &format!("docker-archive:{}:registry.lab/app-docker:1", docker.display()),
    )?;
    skopeo(
        &format!("oci:{}:preload", layout.display()),
        &format!("oci-archive:{}:registry.lab/preload:1", preload.display()),
    )?;
    let multi_dir = work.join("multi");
    skopeo(&format!("oci:{}:tool", layout.display()), &format!("oci:{}:registry.lab/tool:1", multi_dir.display()))?;
    skopeo(&format!("oci:{}:app", layout.display()), &format!("oci:{}:registry.lab/app:2", multi_dir.display()))?;
    run(Command::new("tar").arg("-C").arg(&multi_dir).arg("-cf").arg(&multi).arg("."))?;
    let app_digest = digest_of(&format!("oci-archive:{}", oci.display()), &work)?;
    let preload_digest = digest_of(&format!("oci-archive:{}", preload.display()), &work)?;
    umoci_image(&layout, "spec", &[("spec.txt", b"from spec.images".to_vec())])?;
    let spec_archive = work.join("spec-images.tar.gz");
    let spec_tar = work.join("spec-images.tar");
    skopeo(
        &format!("oci:{}:spec", layout.display()),
        &format!("oci-archive:{}:registry.lab/spec:1", spec_tar.display()),
    )?;
    run(Command::new("sh").arg("-c").arg(format!("gzip -c {} > {}", spec_tar.display(), spec_archive.display())))?;
    let spec_digest = digest_of(&format!("oci-archive:{}", spec_tar.display()), &work)?;
    // The release's airgap images bundle (spec.k3s.airgapImages): a zstd tar on the mirror, in
    // its checksum file, fetched and verified by `up` and staged on every node before k3s starts.
    umoci_image(&layout, "bundled", &[("bundled.txt", b"from the k3s airgap images bundle".to_vec())])?;
    let bundle_tar = work.join("bundle.tar");
    skopeo(
        &format!("oci:{}:bundled", layout.display()),
        &format!("oci-archive:{}:registry.lab/bundled:1", bundle_tar.display()),
    )?;
    let bundled_digest = digest_of(&format!("oci-archive:{}", bundle_tar.display()), &work)?;
    let bundle = zstd::encode_all(std::fs::File::open(&bundle_tar).unwrap(), 3).unwrap();
    mirror::publish_airgap_images(&world.mirror.root, mirror::VERSION, &bundle);

    // Staged before k3s is installed: the stand-in imports it at its start, pinned.
    let (code, json, stderr) = k3node_stdin(
        &op,
        &["images", "stage", "-c", c, "-o", "json", preload.to_str().unwrap()],
        Path::new("/dev/null"),
    );
    ensure(code == 0, || format!("stage: {json}\n{stderr}"))?;
    let staged =
        sh(lab.host("h3"), "ls /var/lib/rancher/k3s/agent/images/ /var/lib/rancher/k3s/agent/.k3node-staging/")?;
    ensure(staged.contains("k3node-preload.tar.zst"), || format!("h3 images dir: {staged}"))?;
    // And spec.images: `up` stages it on every node before k3s starts there.
    yaml.push_str(&format!("  images:\n    - {}\n", spec_archive.display()));
    std::fs::write(&file, &yaml).unwrap();
    let out = op.k3node(&["up", "-c", c, "-o", "json", "--ready-timeout", "120"]);
    ensure(out.status.success(), || format!("up: {}", String::from_utf8_lossy(&out.stderr)))?;
    for n in NODES {
        let listing = images_on(lab.host(n))?;
        ensure(holds(&listing, "registry.lab/preload:1", &preload_digest), || format!("{n} after start: {listing}"))?;
        ensure(holds(&listing, "registry.lab/spec:1", &spec_digest), || format!("{n} spec.images: {listing}"))?;
        ensure(holds(&listing, "registry.lab/bundled:1", &bundled_digest), || format!("{n} airgap: {listing}"))?;
        let staged = sh(lab.host(n), "sha256sum /var/lib/rancher/k3s/agent/images/k3s-airgap-images-amd64.tar.zst")?;
        ensure(staged.starts_with(&mirror::sha256_hex(&bundle)), || format!("{n} airgap bundle: {staged}"))?;
    }
    // A second `up` finds the spec.images archive staged with the same bytes: nothing is sent.
    let (code, json, stderr) = op.k3node_json(&["up", "-c", c, "-o", "json"]);
    let preload_phase =
        json["phases"].as_array().and_then(|p| p.iter().find(|p| p["name"] == "preload images")).cloned();
    ensure(
        code == 0
            && preload_phase
                .as_ref()
                .is_some_and(|p| p["message"].as_str().is_some_and(|m| m.contains("0 images staged"))),
        || format!("second up: {preload_phase:?}\n{stderr}"),
    )?;
    let (_, again, _) = k3node_stdin(
        &op,
        &["images", "stage", "-c", c, "-o", "json", preload.to_str().unwrap()],
        Path::new("/dev/null"),
    );
    ensure(node(&again, "h2")["sent_bytes"] == 0, || format!("re-staging sent bytes: {again}"))?;
    // spec.images emptied: `up` removes what its preload staged from every node's images dir,
    // and leaves the archive staged with `k3node images stage`.
    let without = yaml.replace(&format!("  images:\n    - {}\n", spec_archive.display()), "");
    std::fs::write(&file, &without).unwrap();
    let (code, json, stderr) = op.k3node_json(&["up", "-c", c, "-o", "json"]);
    ensure(code == 0, || format!("up without spec.images: {json}\n{stderr}"))?;
    for n in NODES {
        let staged = sh(lab.host(n), "ls /var/lib/rancher/k3s/agent/images/")?;
        ensure(!staged.contains("k3node-spec-images") && staged.contains("k3node-preload.tar.zst"), || {
            format!("{n} images dir after spec.images was emptied: {staged}")
        })?;
        let host = json["hosts"].as_array().and_then(|h| h.iter().find(|h| h["host"] == n)).cloned();
        ensure(host.as_ref().is_some_and(|h| h["state"] == "changed"), || format!("{n}: {host:?}"))?;
    }
    std::fs::write(&file, &yaml).unwrap();

    // Import from files: every node holds every image at its digest, pinned.
    let (code, json, stderr) = k3node_stdin(
        &op,
        &["images", "import", "-c", c, "-o", "json", oci.to_str().unwrap(), multi.to_str().unwrap()],
        Path::new("/dev/null"),
    );
    ensure(code == 0, || format!("import: {json}\n{stderr}"))?;
    for n in NODES {
        let listing = images_on(lab.host(n))?;
        ensure(holds(&listing, "registry.lab/app:1", &app_digest), || format!("{n}: {listing}"))?;
        ensure(listing.contains("registry.lab/tool:1") && listing.contains("registry.lab/app:2"), || {
            format!("{n}: {listing}")
        })?;
        ensure(node(&json, n)["sent_bytes"].as_u64().unwrap_or(0) > 0, || format!("{n} sent nothing: {json}"))?;
    }
    // A re-run sends no image byte.
    let (code, json, _) = k3node_stdin(
        &op,
        &["images", "import", "-c", c, "-o", "json", oci.to_str().unwrap(), multi.to_str().unwrap()],
        Path::new("/dev/null"),
    );
    for n in NODES {
        let entry = node(&json, n);
        ensure(code == 0 && entry["sent_bytes"] == 0, || format!("re-run on {n}: {entry}"))?;
        ensure(entry["images"].as_array().is_some_and(|i| i.iter().all(|r| r["state"] == "already-present")), || {
            format!("{entry}")
        })?;
    }

    // From stdin, to the selected node only.
    let (code, json, stderr) =
        k3node_stdin(&op, &["images", "import", "-c", c, "-o", "json", "--hosts", "h2", "-"], &docker);
    ensure(code == 0, || format!("stdin import: {json}\n{stderr}"))?;
    let docker_digest = node(&json, "h2")["images"][0]["digest"].as_str().unwrap_or_default().to_string();
    ensure(holds(&images_on(lab.host("h2"))?, "registry.lab/app-docker:1", &docker_digest), || format!("h2: {json}"))?;
    ensure(!images_on(lab.host("h3"))?.contains("app-docker"), || "--hosts h2 reached h3".into())?;

    // An index listing two platforms, holding one (built with the tar crate).
    let partial = work.join("partial.tar");
    partial_platform_archive(&multi_dir, &partial)?;
    let (code, json, stderr) = k3node_stdin(
        &op,
        &["images", "import", "-c", c, "-o", "json", "--hosts", "h1", partial.to_str().unwrap()],
        Path::new("/dev/null"),
    );
    ensure(code == 0, || format!("partial platforms: {json}\n{stderr}"))?;
    ensure(images_on(lab.host("h1"))?.contains("registry.lab/partial:1"), || "partial image missing on h1".into())?;

    // Bad inputs: refused before any node is touched, exit 2, nothing imported.
    let whole = std::fs::read(&oci).unwrap();
    let mut bad: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not-a-tar.tar", b"hello, I am text\n".to_vec(), "not a tar archive"),
        ("truncated.tar", whole[..whole.len() * 2 / 3].to_vec(), "app-oci"),
        ("bzip2.tar.bz2", b"BZh91AY&SY\x01\x02\x03".to_vec(), "bzip2"),
    ];
    let mut corrupt = whole.clone();
    let at = find(&corrupt, b"noise.bin").map(|i| i + 2048).unwrap_or(whole.len() / 2);
    corrupt[at] ^= 0x55;
    bad.push(("corrupt-layer.tar", corrupt, "corrupt"));
    for (name, bytes, _) in &bad {
        std::fs::write(work.join(name), bytes).unwrap();
    }
    missing_blob_archive(&multi_dir, &work.join("missing-blob.tar"))?;
    bad.push(("missing-blob.tar", Vec::new(), "does not hold"));
    for (name, _, words) in &bad {
        let path = work.join(name);
        let out = op.k3node(&["images", "import", "-c", c, path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure(out.status.code() == Some(2), || format!("{name}: exit {:?}: {stderr}", out.status.code()))?;
        ensure(stderr.contains(name) && (stderr.contains(words) || *words == "app-oci"), || {
            format!("{name}: {stderr}")
        })?;
    }

    // A node where k3s is not running fails alone, with the reason; the others go on.
    sh(lab.host("h4"), "systemctl stop k3s-agent")?;
    let (code, json, _) = k3node_stdin(
        &op,
        &["images", "import", "-c", c, "-o", "json", docker.to_str().unwrap()],
        Path::new("/dev/null"),
    );
    let h4 = crate::common::host_entry(&json, "h4").cloned().unwrap_or_default();
    ensure(code == 1 && h4["error"]["message"].as_str().is_some_and(|m| m.contains("k3s is not running")), || {
        format!("{json}")
    })?;
    ensure(holds(&images_on(lab.host("h3"))?, "registry.lab/app-docker:1", &docker_digest), || {
        "h3 did not go on".into()
    })?;
    sh(lab.host("h4"), "systemctl start k3s-agent")?;

    // A node cut off mid-import fails alone, holds no half-imported image, and converges.
    let big = work.join("big.tar");
    umoci_image(&layout, "big", &[("big.bin", random(96 << 20, 11))])?;
    skopeo(&format!("oci:{}:big", layout.display()), &format!("docker-archive:{}:registry.lab/big:1", big.display()))?;
    let h3 = lab.host("h3");
    let child = {
        let mut cmd = op.lab.command_in_netns(Path::new(crate::common::K3NODE));
        cmd.args(["images", "import", "-c", c, "-o", "json", "--hosts", "h2,h3", big.to_str().unwrap()])
            .env("HOME", &op.home)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().map_err(|e| e.to_string())?
    };
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(60) {
        if sh(h3, "pgrep -f 'images import' >/dev/null && echo yes || true").unwrap_or_default().contains("yes") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    h3.disconnect().map_err(|e| format!("{e:#}"))?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    h3.reconnect().map_err(|e| format!("{e:#}"))?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    ensure(out.status.code() == Some(1), || format!("cut-off run: {json}\n{}", String::from_utf8_lossy(&out.stderr)))?;
    ensure(node(&json, "h2")["error"].is_null(), || format!("h2 failed too: {json}"))?;
    // The helper on h3 sees its stdin end once the connection drops: give it a moment.
    std::thread::sleep(std::time::Duration::from_secs(3));
    ensure(!images_on(h3)?.contains("registry.lab/big:1"), || "h3 holds a half-imported image".into())?;
    let (code, json, stderr) = k3node_stdin(
        &op,
        &["images", "import", "-c", c, "-o", "json", "--hosts", "h2,h3", big.to_str().unwrap()],
        Path::new("/dev/null"),
    );
    ensure(code == 0 && node(&json, "h2")["sent_bytes"] == 0, || format!("re-run after the cut: {json}\n{stderr}"))?;
    ensure(images_on(h3)?.contains("registry.lab/big:1"), || "h3 did not converge".into())?;
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Tars an OCI layout dir with one file of it replaced or left out.
fn tar_layout(dir: &Path, out: &Path, edit: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>) -> Outcome {
    let mut builder = tar::Builder::new(std::fs::File::create(out).map_err(|e| e.to_string())?);
    let mut files: Vec<PathBuf> = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| e.to_string())? {
            let p = e.map_err(|e| e.to_string())?.path();
            if p.is_dir() {
                stack.push(p)
            } else {
                files.push(p)
            }
        }
    }
    files.sort();
    // index.json after the blobs, as any order must work.
    files.sort_by_key(|p| p.ends_with("index.json"));
    for path in files {
        let rel = path.strip_prefix(dir).unwrap().to_string_lossy().to_string();
        let Some(bytes) = edit(&rel, std::fs::read(&path).map_err(|e| e.to_string())?) else { continue };
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, &rel, &bytes[..]).map_err(|e| e.to_string())?;
    }
    builder.finish().map_err(|e| e.to_string())?;
    Ok(())
}

fn index_entries(dir: &Path) -> Vec<serde_json::Value> {
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    index["manifests"].as_array().cloned().unwrap_or_default()
}

/// The multi-image layout with one layer's blob left out.
fn missing_blob_archive(dir: &Path, out: &Path) -> Outcome {
    let first = &index_entries(dir)[0];
    let manifest_hex = first["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("blobs/sha256").join(&manifest_hex)).unwrap()).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    tar_layout(dir, out, |rel, bytes| (!rel.ends_with(&layer)).then_some(bytes))
}

/// The multi-image layout whose index.json names one image: an index listing the first image's
/// manifest as linux/amd64 and a manifest the archive does not hold as linux/arm64.
fn partial_platform_archive(dir: &Path, out: &Path) -> Outcome {
    let first = index_entries(dir)[0].clone();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": first["mediaType"], "digest": first["digest"], "size": first["size"], "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": first["mediaType"], "digest": format!("sha256:{}", "cd".repeat(32)), "size": 500, "platform": {"os": "linux", "architecture": "arm64"}}
        ]
    }))
    .unwrap();
    let hex = k3node::digest::sha256_hex(&index);
    let top = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": format!("sha256:{hex}"), "size": index.len(),
        "annotations": {"org.opencontainers.image.ref.name": "registry.lab/partial:1"}
    }]}))
    .unwrap();
    let extra = dir.join("blobs/sha256").join(&hex);
    std::fs::write(&extra, &index).map_err(|e| e.to_string())?;
    let result = tar_layout(dir, out, |rel, bytes| Some(if rel == "index.json" { top.clone() } else { bytes }));
    let _ = std::fs::remove_file(extra);
    result
}
