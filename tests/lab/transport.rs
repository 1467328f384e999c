//! SSH transport against real sshd: auth methods, host keys, sudo, exit status, uploads, faults.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use k3node::digest::sha256_async as sha256_hex;
use k3node::transport::{HostKeyPolicy, Keyring, Privilege, TransportError};
use libtest_mimic::Trial;
use tokio::io::{AsyncRead, ReadBuf};

use crate::common::{ensure, Operator, Outcome};
use crate::support::Lab;

pub fn trials(lab: &Arc<Lab>) -> Vec<Trial> {
    let t = |name: &str, f: fn(&Arc<Lab>) -> Outcome| {
        let lab = lab.clone();
        crate::common::timed(format!("transport::{name}"), move || f(&lab))
    };
    vec![
        t("key_auth_and_exit_status_from_the_channel", key_auth_and_exit_status),
        t("ssh_agent_auth", ssh_agent_auth),
        t("jump_host", jump_host),
        t("unknown_host_key_refused_then_trusted_on_opt_in", unknown_host_key),
        t("changed_host_key_refused_with_both_fingerprints", changed_host_key),
        t("passwordless_sudo_user_runs_as_root", passwordless_sudo),
        t("sudo_asking_for_password_is_a_clear_error", sudo_needs_password),
        t("upload_verified_and_corruption_detected", upload_and_corruption),
        t("a_wrong_key_or_user_reports_the_methods_tried_and_the_setting_to_check", wrong_key),
        t("connection_refused_and_unreachable_are_told_apart", refused_and_unreachable),
    ]
}

fn key_auth_and_exit_status(lab: &Arc<Lab>) -> Outcome {
    let op = Operator::new(lab, "key-auth");
    let h1 = lab.host("h1");
    op.trust(&[h1]);
    let results =
        op.with_session(op.endpoint(h1, "root"), op.options(HostKeyPolicy::Strict), op.keyring(), async |s| {
            let s = s.expect("connect as root with a key file");
            let whoami = s.exec_checked(&["id", "-u"]).await.unwrap();
            let three = s.exec(&["sh", "-c", "echo out; echo err >&2; exit 3"], &mut tokio::io::empty()).await.unwrap();
            // A command killed by a signal gets no exit status: that must never read as success.
            let killed = s.exec(&["sh", "-c", "kill -9 $$"], &mut tokio::io::empty()).await;
            let echoed = s.exec(&["cat"], &mut &b"stdin reaches the command"[..]).await.unwrap();
            (s.privilege(), whoami, three, killed.map(|o| o.status), echoed)
        });
    let (privilege, whoami, three, killed, echoed) = results;
    ensure(privilege == Privilege::Root, || format!("privilege {privilege:?}"))?;
    ensure(String::from_utf8_lossy(&whoami.stdout).trim() == "0", || format!("id -u: {whoami:?}"))?;
    ensure(three.status == 3 && three.stdout == b"out\n" && three.stderr == b"err\n", || format!("{three:?}"))?;
    ensure(matches!(killed, Err(TransportError::NoExitStatus { .. })), || format!("killed command gave {killed:?}"))?;
    ensure(echoed.stdout == b"stdin reaches the command", || format!("{echoed:?}"))
}

fn ssh_agent_auth(lab: &Arc<Lab>) -> Outcome {
    let op = Operator::new(lab, "agent-auth");
    let h2 = lab.host("h2");
    op.trust(&[h2]);
    let sock = op.home.join("agent.sock");
    let agent = std::process::Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("ssh-agent");
    let _kill = KillOnDrop(agent);
    for _ in 0..50 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let add = std::process::Command::new("ssh-add").arg(lab.client_key()).env("SSH_AUTH_SOCK", &sock).output().unwrap();
    ensure(add.status.success(), || format!("ssh-add: {}", String::from_utf8_lossy(&add.stderr)))?;

    // No key file at all: only the agent can authenticate us.
    let mut endpoint = op.endpoint(h2, "root");
    endpoint.identity_files = vec![op.home.join("no-such-key")];
    let mut options = op.options(HostKeyPolicy::Strict);
    options.use_agent = true;
    // SAFETY of set_var: lab trials run one at a time (test_threads = 1).
    unsafe { std::env::set_var("SSH_AUTH_SOCK", &sock) };
    let result = op.with_session(endpoint.clone(), options.clone(), Keyring::default(), async |s| match s {
        Ok(s) => Ok(String::from_utf8_lossy(&s.exec_checked(&["hostname"]).await.unwrap().stdout).trim().to_string()),
        Err(e) => Err(e.to_string()),
    });
    let remove = std::process::Command::new("ssh-add").arg("-D").env("SSH_AUTH_SOCK", &sock).output().unwrap();
    let without_key = op.with_session(endpoint, options, Keyring::default(), async |s| s.err().map(|e| e.to_string()));
    unsafe { std::env::remove_var("SSH_AUTH_SOCK") };
    ensure(result.as_deref() == Ok("h2"), || format!("agent auth: {result:?}"))?;
    ensure(remove.status.success(), || "ssh-add -D failed".into())?;
    let msg = without_key.unwrap_or_default();
    ensure(msg.contains("authentication as root failed") && msg.contains("ssh-agent"), || format!("empty agent: {msg}"))
}

struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn jump_host(lab: &Arc<Lab>) -> Outcome {
    let op = Operator::new(lab, "jump");
    let (h1, h3) = (lab.host("h1"), lab.host("h3"));
    op.trust(&[h1, h3]);
    // h3 accepts the lab key for user ops only from h1's address, so success proves the path.
    let key = std::fs::read_to_string(lab.client_key().with_extension("pub")).unwrap();
    crate::common::sh(
        h3,
        &format!("printf 'from=\"{}\" {}' > /home/ops/.ssh/authorized_keys", h1.address, key.trim()),
    )?;
    let direct = op.with_session(op.endpoint(h3, "ops"), op.options(HostKeyPolicy::Strict), op.keyring(), async |s| {
        s.err().map(|e| e.kind())
    });
    let mut via = op.endpoint(h3, "ops");
    via.jump = Some(Box::new(op.endpoint(h1, "root")));
    let seen = op.with_session(via, op.options(HostKeyPolicy::Strict), op.keyring(), async |s| match s {
        // sudo resets the environment, so the peer of our sshd connection is read from the socket table.
        Ok(s) => Ok((
            s.privilege(),
            String::from_utf8_lossy(
                &s.exec_checked(&["ss", "-Htn", "state", "established", "( sport = :22 )"]).await.unwrap().stdout,
            )
            .into_owned(),
        )),
        Err(e) => Err(e.to_string()),
    });
    crate::common::sh(h3, &format!("printf '%s\\n' '{}' > /home/ops/.ssh/authorized_keys", key.trim()))?;
    ensure(direct == Some("auth-failed"), || format!("direct login should be refused, got {direct:?}"))?;
    let (privilege, conn) = seen.map_err(|e| format!("through the jump host: {e}"))?;
    ensure(privilege == Privilege::Sudo, || format!("ops should get root by sudo, got {privilege:?}"))?;
    let from_h1 = format!("{}:", h1.address);
    ensure(!conn.trim().is_empty() && conn.lines().all(|l| l.contains(&from_h1)), || {
        format!("ssh peers on h3: {conn:?}, expected only {}", h1.address)
    })
}

fn unknown_host_key(lab: &Arc<Lab>) -> Outcome {
    let op = Operator::new(lab, "tofu");
    let h4 = lab.host("h4");
    let file = op.cluster_file("", &[(h4, "server", "")]);
    let file = file.to_str().unwrap();
    // A second host key type: the refusal names it too, with the line that checks it.
    crate::common::sh(
        h4,
        "ssh-keygen -q -t ecdsa -N '' -f /etc/ssh/ssh_host_ecdsa_key \
         && echo 'HostKey /etc/ssh/ssh_host_ecdsa_key' > /etc/ssh/sshd_config.d/zz-ecdsa.conf",
    )?;
    h4.restart_sshd().map_err(|e| format!("{e:#}"))?;
    let ecdsa_public = crate::common::sh(h4, "cat /etc/ssh/ssh_host_ecdsa_key.pub")?;
    let refused = op.k3node(&["preflight", "-c", file, "-o", "json"]);
    crate::common::sh(h4, "rm -f /etc/ssh/sshd_config.d/zz-ecdsa.conf /etc/ssh/ssh_host_ecdsa_key*")?;
    h4.restart_sshd().map_err(|e| format!("{e:#}"))?;
    let (code, json, _) = {
        let stdout: serde_json::Value = serde_json::from_slice(&refused.stdout).unwrap_or_default();
        (refused.status.code(), stdout, ())
    };
    let entry = crate::common::host_entry(&json, "h4").cloned().unwrap_or_default();
    let message = entry["error"]["message"].as_str().unwrap_or_default().to_string();
    let expected_fp = fingerprint_of(&h4.public_host_key());
    ensure(code == Some(1), || format!("exit {code:?}"))?;
    ensure(entry["error"]["kind"] == "host-key-unknown", || format!("{entry}"))?;
    ensure(message.contains(&expected_fp) && message.contains("--trust-new-host-keys"), || {
        format!("message: {message}, fingerprint {expected_fp}")
    })?;
    let ecdsa_fp = fingerprint_of(&ecdsa_public);
    ensure(
        message.contains(&format!("it also offers ecdsa-sha2-nistp256 {ecdsa_fp}"))
            && message.contains(&format!("ssh-keyscan -t ecdsa {}", h4.address)),
        || format!("the other key type is not named: {message} (ecdsa {ecdsa_fp})"),
    )?;
    ensure(!op.known_hosts().exists() || std::fs::read_to_string(op.known_hosts()).unwrap().is_empty(), || {
        "strict mode wrote known_hosts".into()
    })?;
    ensure(
        crate::common::sh(h4, "test -e /usr/local/bin/k3node && echo present || echo absent")?.trim() == "absent",
        || "agent installed despite refusal".into(),
    )?;

    let (_, json, stderr) = op.k3node_json(&["preflight", "-c", file, "-o", "json", "--trust-new-host-keys"]);
    ensure(crate::common::host_entry(&json, "h4").is_some_and(|h| h.get("checks").is_some()), || {
        format!("{json}\n{stderr}")
    })?;
    let recorded = std::fs::read_to_string(op.known_hosts()).unwrap();
    ensure(recorded.contains(h4.public_host_key().split_whitespace().nth(1).unwrap()), || {
        format!("known_hosts: {recorded}")
    })?;
    // Now recorded: strict mode connects.
    let (_, json, stderr) = op.k3node_json(&["preflight", "-c", file, "-o", "json"]);
    ensure(crate::common::host_entry(&json, "h4").is_some_and(|h| h.get("checks").is_some()), || {
        format!("{json}\n{stderr}")
    })
}

fn fingerprint_of(public_key: &str) -> String {
    k3node::transport::host_keys::fingerprint(&russh::keys::PublicKey::from_openssh(public_key.trim()).unwrap())
}

fn changed_host_key(lab: &Arc<Lab>) -> Outcome {
    let op = Operator::new(lab, "changed-key");
    let h5 = lab.host("h5");
    op.trust(&[h5]);
    let old = fingerprint_of(&h5.public_host_key());
    let new_key = h5.rotate_host_key()?;
    let new = fingerprint_of(&new_key);
    for policy in [HostKeyPolicy::Strict, HostKeyPolicy::AcceptNew] {
        let err = op.with_session(op.endpoint(h5, "root"), op.options(policy), op.keyring(), async |s| {
            s.err().map(|e| e.to_string())
        });
        let msg = err.unwrap_or_else(|| "connected".into());
        ensure(msg.contains("HAS CHANGED") && msg.contains(&old) && msg.contains(&new), || {
            format!("{policy:?}: {msg}")
        })?;
    }
    Ok(())
}

fn passwordless_sudo(lab: &Arc<Lab>) -> Outcome {
    let op = Operator::new(lab, "sudo-ok");
    let h2 = lab.host("h2");
    op.trust(&[h2]);
    let file = op.cluster_file("", &[(h2, "server", "      ssh:\n        user: ops\n")]);
    // --fix changes the host, so the helper is installed (a plain check would run a temporary one).
    let (code, json, stderr) = op.k3node_json(&["preflight", "-c", file.to_str().unwrap(), "-o", "json", "--fix"]);
    let entry = crate::common::host_entry(&json, "h2").cloned().unwrap_or_default();
    ensure(entry.get("checks").is_some(), || format!("exit {code}: {json}\n{stderr}"))?;
    ensure(crate::common::status(&json, "h2", "privileges") == "pass", || format!("{}", entry))?;
    let owner = crate::common::sh(h2, "stat -c %U:%a /usr/local/bin/k3node")?;
    ensure(owner.trim() == "root:755", || format!("agent file {owner}"))
}

fn sudo_needs_password(lab: &Arc<Lab>) -> Outcome {
    let op = Operator::new(lab, "sudo-pw");
    let h2 = lab.host("h2");
    op.trust(&[h2]);
    let err =
        op.with_session(op.endpoint(h2, "pw"), op.options(HostKeyPolicy::Strict), op.keyring(), async |s| s.err());
    let err = err.ok_or("connected as pw although sudo needs a password")?;
    ensure(matches!(err, TransportError::SudoNeedsPassword { .. }), || format!("{err}"))?;
    ensure(err.to_string().contains("NOPASSWD"), || format!("{err}"))
}

/// Flips one byte in the middle of what it relays, as a faulty path would.
struct Corrupting<R> {
    inner: R,
    seen: usize,
    at: usize,
}

impl<R: AsyncRead + Unpin> AsyncRead for Corrupting<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let got = buf.filled().len() - before;
        let (seen, at) = (self.seen, self.at);
        if at >= seen && at < seen + got {
            buf.filled_mut()[before + at - seen] ^= 0x20;
        }
        self.seen += got;
        poll
    }
}

fn upload_and_corruption(lab: &Arc<Lab>) -> Outcome {
    let op = Operator::new(lab, "upload");
    let h1 = lab.host("h1");
    op.trust(&[h1]);
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let result =
        op.with_session(op.endpoint(h1, "root"), op.options(HostKeyPolicy::Strict), op.keyring(), async move |s| {
            let s = s.unwrap();
            let sha = sha256_hex(&mut payload.as_slice()).await.unwrap();
            s.upload(&mut payload.as_slice(), &sha, "/opt/k3node-test/blob", 0o640).await.unwrap();
            let good = s
                .exec_checked(&["sh", "-c", "sha256sum /opt/k3node-test/blob; stat -c %a /opt/k3node-test/blob"])
                .await
                .unwrap();
            let mut bad_stream = Corrupting { inner: payload.as_slice(), seen: 0, at: 1_500_000 };
            let bad = s.upload(&mut bad_stream, &sha, "/opt/k3node-test/other", 0o640).await;
            let after = s.exec_checked(&["ls", "-A", "/opt/k3node-test"]).await.unwrap();
            (
                sha,
                String::from_utf8_lossy(&good.stdout).into_owned(),
                bad,
                String::from_utf8_lossy(&after.stdout).into_owned(),
            )
        });
    let (sha, good, bad, listing) = result;
    ensure(good.starts_with(&sha) && good.trim_end().ends_with("640"), || format!("uploaded file: {good}"))?;
    ensure(matches!(bad, Err(TransportError::ChecksumMismatch { .. })), || format!("corrupted upload gave {bad:?}"))?;
    ensure(listing.trim() == "blob", || format!("after the corrupted upload the directory holds {listing:?}"))
}

fn wrong_key(lab: &Arc<Lab>) -> Outcome {
    let op = Operator::new(lab, "wrong-key");
    let h1 = lab.host("h1");
    op.trust(&[h1]);
    let other = op.home.join("other_key");
    let gen = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .output()
        .unwrap();
    ensure(gen.status.success(), || "ssh-keygen".into())?;
    let mut endpoint = op.endpoint(h1, "root");
    endpoint.identity_files = vec![other.clone()];
    let keyring = Keyring::load(std::slice::from_ref(&other), &[]).unwrap();
    let err =
        op.with_session(endpoint, op.options(HostKeyPolicy::Strict), keyring, async |s| s.err().map(|e| e.to_string()));
    let msg = err.unwrap_or_default();
    ensure(msg.contains("authentication as root failed") && msg.contains(other.to_str().unwrap()), || msg.clone())?;
    // The right key for an account that does not exist there: the hint names the setting to check.
    let wrong_user =
        op.with_session(op.endpoint(h1, "deploy"), op.options(HostKeyPolicy::Strict), op.keyring(), async |s| {
            s.err().map(|e| (e.kind(), e.to_string()))
        });
    let (kind, msg) = wrong_user.unwrap_or_default();
    ensure(kind == "auth-failed", || format!("a wrong user: {kind} {msg}"))?;
    ensure(msg.contains("authentication as deploy failed") && msg.contains("spec.ssh.user"), || msg.clone())
}

fn refused_and_unreachable(lab: &Arc<Lab>) -> Outcome {
    let op = Operator::new(lab, "refused");
    let h1 = lab.host("h1");
    op.trust(&[h1]);
    let mut closed_port = op.endpoint(h1, "root");
    closed_port.port = 2;
    let refused = op.with_session(closed_port, op.options(HostKeyPolicy::Strict), op.keyring(), async |s| {
        s.err().map(|e| e.kind())
    });
    ensure(refused == Some("refused"), || format!("closed port gave {refused:?}"))?;
    let mut nowhere = op.endpoint(h1, "root");
    nowhere.address = "172.30.77.250".into();
    let mut options = op.options(HostKeyPolicy::Strict);
    options.connect_timeout = std::time::Duration::from_secs(2);
    let started = std::time::Instant::now();
    let unreachable = op.with_session(nowhere, options, op.keyring(), async |s| s.err().map(|e| e.kind()));
    let took = started.elapsed();
    ensure(unreachable == Some("unreachable"), || format!("absent host gave {unreachable:?}"))?;
    ensure(took < std::time::Duration::from_secs(6), || format!("took {took:?}"))
}
