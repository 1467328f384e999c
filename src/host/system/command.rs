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
