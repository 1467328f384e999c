//! Runs programs for the helper: directly (never a shell), in the C locale, bounded in time.

use std::io::{self, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use super::CommandOutput;

pub(super) fn run_with_timeout(program: &Path, args: &[&str], timeout: Duration) -> io::Result<CommandOutput> {
    run_with_input(program, args, None, timeout)
}

pub(super) fn run_with_input(
    program: &Path,
    args: &[&str],
    input: Option<&[u8]>,
    timeout: Duration,
) -> io::Result<CommandOutput> {
    // Input goes through an unnamed temp file rather than a pipe: a program that exits before
    // reading it all cannot raise SIGPIPE in the agent (whose SIGPIPE disposition is the default).
    let stdin = match input {
        None => Stdio::null(),
        Some(bytes) => {
            use std::io::{Seek, Write};
            let mut file = tempfile::tempfile()?;
            file.write_all(bytes)?;
            file.rewind()?;
            Stdio::from(file)
        }
    };
    let mut child = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().map(|s| thread::spawn(move || drain(s)));
    let stderr = child.stderr.take().map(|s| thread::spawn(move || drain(s)));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match rx.recv_timeout(timeout) {
        Ok(status) => status?,
        Err(_) => {
            // Unless the child exited in the instant since the timeout, the waiter has not reaped
            // it yet, so the pid still names it and cannot have been reused.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} did not finish within {} s and was killed", program.display(), timeout.as_secs_f32()),
            ));
        }
    };
    let join = |h: Option<thread::JoinHandle<Vec<u8>>>| {
        let bytes = h.and_then(|h| h.join().ok()).unwrap_or_default();
        String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    };
    Ok(CommandOutput { status: status.code(), stdout: join(stdout), stderr: join(stderr) })
}

fn drain(mut r: impl Read) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = r.read_to_end(&mut buf);
    buf
}

/// Runs `program` with `input` streamed to its stdin (see `HostSystem::run_streaming`).
pub(super) fn run_streaming(
    program: &Path,
    args: &[&str],
    input: &mut dyn Read,
    timeout: Duration,
) -> io::Result<CommandOutput> {
    use std::io::Write;
    // A program that exits before reading everything must end the copy with EPIPE, not kill the
    // helper with SIGPIPE (whose disposition is the default). Children get the default back
    // (std restores SIGPIPE in the child before exec).
    // SAFETY: setting a signal disposition to SIG_IGN is async-signal-safe and affects no memory.
    let _ =
        unsafe { nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigIgn) };
    let mut child = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().map(|s| thread::spawn(move || drain(s)));
    let stderr = child.stderr.take().map(|s| thread::spawn(move || drain(s)));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut pipe = child.stdin.take().expect("stdin is piped");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let deadline = std::time::Instant::now() + timeout;
    let kill = || {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    };
    let mut buf = vec![0u8; 1 << 17];
    let mut read_error = None;
    loop {
        if std::time::Instant::now() > deadline {
            kill();
            read_error = Some(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} did not finish within {} s and was killed", program.display(), timeout.as_secs()),
            ));
            break;
        }
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Killed before its stdin closes: it never sees the end of a cut stream.
                kill();
                read_error = Some(e);
                break;
            }
        };
        if pipe.write_all(&buf[..n]).is_err() {
            // It stopped reading (exited or closed its input): its status says why.
            break;
        }
    }
    drop(pipe);
    let remaining = deadline.saturating_duration_since(std::time::Instant::now()).max(Duration::from_secs(1));
    let status = match rx.recv_timeout(remaining) {
        Ok(status) => status?,
        Err(_) => {
            kill();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} did not finish within {} s and was killed", program.display(), timeout.as_secs()),
            ));
        }
    };
    if let Some(e) = read_error {
        return Err(e);
    }
    let join = |h: Option<thread::JoinHandle<Vec<u8>>>| {
        let bytes = h.and_then(|h| h.join().ok()).unwrap_or_default();
        String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    };
    Ok(CommandOutput { status: status.code(), stdout: join(stdout), stderr: join(stderr) })
}
