use std::os::fd::AsFd;

/// `k3node host <operation>`: the host helper's entry point; the operator side runs it over SSH.
#[derive(Debug, clap::Args)]
pub struct HostArgs {
    /// The operation (hello, preflight, install-k3s...); its parameters come as one JSON line on stdin.
    pub operation: String,
}

pub fn run(args: &HostArgs) -> std::process::ExitCode {
    widen_pipes();
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let system = k3node::host::system::RealSystem::host();
    let status = k3node::host::serve(&args.operation, &system, &mut stdin.lock(), &mut stdout.lock());
    std::process::ExitCode::from(status as u8)
}

/// sshd talks to the helper through pipes of 64 KiB: a bulk upload or download then costs a
/// context switch per 64 KiB on each side. 1 MiB pipes (the size any user may set) cut that
/// sixteenfold. Best effort: stdin and stdout may be something else than pipes (tests, a tty).
fn widen_pipes() {
    use nix::fcntl::{fcntl, FcntlArg};
    const PIPE_SIZE: i32 = 1 << 20;
    for fd in [std::io::stdin().as_fd(), std::io::stdout().as_fd()] {
        let _ = fcntl(fd, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
    }
}
