//! Running helper programs (`ip`, `mount`, `ssh-keygen`, ...) with errors that say what failed.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

/// `program arg arg ...` as a human would type it, for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        s.push(' ');
        if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
            s.push('\'');
            s.push_str(&arg.replace('\'', "'\\''"));
            s.push('\'');
        } else {
            s.push_str(&arg);
        }
    }
    s
}

/// Runs `cmd` to completion (stdin: /dev/null); Ok(stdout) on exit 0, otherwise an error naming the
/// command, its exit status and its stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let desc = describe(cmd);
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("cannot start `{desc}`"))?;
    check(&desc, &out)
}

pub(crate) fn check(desc: &str, out: &Output) -> Result<String> {
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut msg = format!("`{desc}` failed ({})", out.status);
    if !stderr.trim().is_empty() {
        msg.push_str(&format!("; stderr: {}", stderr.trim_end()));
    }
    if !stdout.trim().is_empty() {
        msg.push_str(&format!("; stdout: {}", tail(&stdout, 20).trim_end()));
    }
    bail!(msg)
}

/// `ip ARGS...`
pub(crate) fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The last `lines` lines of a log file, or a note saying why it cannot be read.
pub(crate) fn file_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => tail(&String::from_utf8_lossy(&bytes), lines),
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Fails unless every program is on PATH.
pub(crate) fn require_programs(programs: &[(&str, &str)]) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut missing = Vec::new();
    for (program, package) in programs {
        let found = std::env::split_paths(&path).any(|dir| dir.join(program).is_file());
        if !found {
            missing.push(format!("{program} (apt-get install {package})"));
        }
    }
    if !missing.is_empty() {
        bail!("the lab needs programs that are not on PATH: {}", missing.join(", "));
    }
    Ok(())
}
