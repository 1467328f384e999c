/// `k3node host <operation>`: the host helper's entry point; the operator side runs it over SSH.
#[derive(Debug, clap::Args)]
pub struct HostArgs {
    /// The operation (hello, preflight, install-k3s...); its parameters come as one JSON line on stdin.
    pub operation: String,
}

pub fn run(args: &HostArgs) -> std::process::ExitCode {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let system = k3node::host::system::RealSystem::host();
    let status = k3node::host::serve(&args.operation, &system, &mut stdin.lock(), &mut stdout.lock());
    std::process::ExitCode::from(status as u8)
}
