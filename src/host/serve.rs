//! `k3node host <operation>`: reads one request line, does the work natively, answers in JSON lines.

use std::io::{BufRead, Write};

use serde::Serialize;

use crate::protocol::{debian_arch, AgentErrorKind, AgentLine, FileReceived, Hello, Request, PROTOCOL_VERSION};

use super::system::RealSystem;

/// Serves one operation; returns the process exit status (0 when a result was written).
pub fn serve(operation: &str, input: &mut dyn BufRead, output: &mut dyn Write) -> i32 {
    let answer = match read_request(operation, input) {
        Ok(request) => handle(request, input, output),
        Err(message) => Err((AgentErrorKind::BadRequest, message)),
    };
    let (line, status) = match answer {
        Ok(value) => (AgentLine::Result { value }, 0),
        Err((kind, message)) => (AgentLine::Error { kind, message }, 1),
    };
    write_line(output, &line);
    status
}

fn read_request(operation: &str, input: &mut dyn BufRead) -> Result<Request, String> {
    let mut line = String::new();
    input.read_line(&mut line).map_err(|e| format!("cannot read the request from stdin: {e}"))?;
    let request: Request = serde_json::from_str(line.trim_end())
        .map_err(|e| format!("request line is not a valid {operation} request: {e}"))?;
    if request.operation() != operation {
        return Err(format!("command line says {operation} but the request is {}", request.operation()));
    }
    Ok(request)
}

fn handle(
    request: Request,
    input: &mut dyn BufRead,
    output: &mut dyn Write,
) -> Result<serde_json::Value, (AgentErrorKind, String)> {
    match request {
        Request::Hello => to_value(&hello()?),
        Request::Preflight(req) => {
            if req.fix {
                progress(output, "applying safe fixes (modules, sysctls)");
            }
            to_value(&super::preflight::run(&RealSystem, &req))
        }
        Request::InstallK3s(req) => {
            let result = super::k3s::install(&RealSystem, &req, &mut |message| progress(output, message));
            to_value(&result.map_err(failed)?)
        }
        Request::ReadToken => to_value(&super::k3s::read_token(&RealSystem).map_err(failed)?),
        Request::Kubeconfig => to_value(&super::k3s::kubeconfig(&RealSystem).map_err(failed)?),
        Request::Nodes => to_value(&super::k3s::nodes(&RealSystem).map_err(failed)?),
        Request::Reset(req) => {
            let result = super::k3s::reset(&RealSystem, &req, &mut |message| progress(output, message));
            to_value(&result.map_err(failed)?)
        }
        Request::ReceiveFile(req) => {
            to_value(&FileReceived { path: req.path.clone(), sha256: super::receive::receive(&req, input)? })
        }
    }
}

fn failed(message: String) -> (AgentErrorKind, String) {
    (AgentErrorKind::Failed, message)
}

fn hello() -> Result<Hello, (AgentErrorKind, String)> {
    let failed = |e: std::io::Error| (AgentErrorKind::Failed, format!("cannot hash my own executable: {e}"));
    let mut exe = std::fs::File::open("/proc/self/exe").map_err(failed)?;
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    std::io::copy(&mut exe, &mut hasher).map_err(failed)?;
    let machine = nix::sys::utsname::uname().map(|u| u.machine().to_string_lossy().into_owned()).unwrap_or_default();
    Ok(Hello {
        version: env!("CARGO_PKG_VERSION").to_string(),
        protocol: PROTOCOL_VERSION,
        binary_sha256: hex::encode(sha2::Digest::finalize(hasher)),
        arch: debian_arch(&machine).unwrap_or(&machine).to_string(),
    })
}

fn progress(output: &mut dyn Write, message: &str) {
    write_line(output, &AgentLine::Progress { message: message.to_string() });
}

fn write_line(output: &mut dyn Write, line: &AgentLine) {
    // If stdout is gone the operator has gone too; there is nobody left to tell.
    if let Ok(text) = serde_json::to_string(line) {
        let _ = writeln!(output, "{text}");
        let _ = output.flush();
    }
}

fn to_value<T: Serialize>(value: &T) -> Result<serde_json::Value, (AgentErrorKind, String)> {
    serde_json::to_value(value).map_err(|e| (AgentErrorKind::Failed, format!("cannot encode the answer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(out: &[u8]) -> Vec<AgentLine> {
        String::from_utf8_lossy(out).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn hello_reports_protocol_and_own_hash() {
        let mut out = Vec::new();
        let status = serve("hello", &mut "{\"op\":\"hello\"}\n".as_bytes(), &mut out);
        assert_eq!(status, 0);
        let [AgentLine::Result { value }] = &lines(&out)[..] else { panic!("{:?}", lines(&out)) };
        let hello: Hello = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(hello.protocol, PROTOCOL_VERSION);
        assert_eq!(hello.binary_sha256.len(), 64);
    }

    #[test]
    fn garbage_and_mismatched_requests_are_refused_with_one_error_line() {
        for (op, input) in [("hello", "not json\n"), ("preflight", "{\"op\":\"hello\"}\n"), ("hello", "")] {
            let mut out = Vec::new();
            assert_eq!(serve(op, &mut input.as_bytes(), &mut out), 1);
            let got = lines(&out);
            assert!(matches!(&got[..], [AgentLine::Error { kind: AgentErrorKind::BadRequest, .. }]), "{got:?}");
        }
    }
}
