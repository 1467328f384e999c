//! `k3node host <operation>`: reads one request line, does the work natively through the
//! [`HostSystem`] it is given, answers in JSON lines.
//!
//! This is the boundary where the protocol's invariants are enforced on the host side:
//! - the request is decoded strictly ([`crate::protocol::decode_request`]), and nothing may follow
//!   it on stdin unless the operation declares an upload;
//! - an operation that changes the host runs under the host lock ([`super::lock`]);
//! - every line written back (progress, result, error) has the request's secrets removed, once,
//!   here; download frames are the file's bytes and pass untouched.

use std::io::{BufRead, Write};

use crate::protocol::files::{FileDigest, ReceiveFile, SendFile};
use crate::protocol::frame::{FrameReader, FrameWriter};
use crate::protocol::health::{DaemonIdentity, HealthStatus, InstallDaemon};
use crate::protocol::images::{ImageInventory, ImportImages, PinImages, PruneStaged, StageImages, StagedDigest};
use crate::protocol::k3s::{DeleteNodes, InstallRequest, ListNodes, ReadKubeconfig, ReadToken, ResetRequest};
use crate::protocol::manifests::SyncManifests;
use crate::protocol::preflight::PreflightRequest;
use crate::protocol::snapshot::{
    CreateSnapshot, InstallSchedule, ListSnapshots, PruneSnapshots, ReceiveSnapshot, RestorePeer, RestoreSnapshot,
    RollbackRestore, ScheduledSnapshot, VerifySnapshot,
};
use crate::protocol::{decode_request, AnswerLine, Hello, HoldLock, Operation, Scrubber};

use super::error::HostError;
use super::system::HostSystem;

/// An operation as the host carries it out.
pub trait HostOperation: Operation {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<Self::Answer, HostError>;
}

/// Serves one operation; returns the process exit status (0 when a result was written).
pub fn serve(operation: &str, sys: &dyn HostSystem, input: &mut dyn BufRead, output: &mut dyn Write) -> i32 {
    match operation {
        Hello::NAME => run::<Hello>(sys, input, output),
        HoldLock::NAME => run::<HoldLock>(sys, input, output),
        PreflightRequest::NAME => run::<PreflightRequest>(sys, input, output),
        InstallRequest::NAME => run::<InstallRequest>(sys, input, output),
        ReadToken::NAME => run::<ReadToken>(sys, input, output),
        ReadKubeconfig::NAME => run::<ReadKubeconfig>(sys, input, output),
        ListNodes::NAME => run::<ListNodes>(sys, input, output),
        DeleteNodes::NAME => run::<DeleteNodes>(sys, input, output),
        ResetRequest::NAME => run::<ResetRequest>(sys, input, output),
        ReceiveFile::NAME => run::<ReceiveFile>(sys, input, output),
        SendFile::NAME => run::<SendFile>(sys, input, output),
        FileDigest::NAME => run::<FileDigest>(sys, input, output),
        SyncManifests::NAME => run::<SyncManifests>(sys, input, output),
        ImageInventory::NAME => run::<ImageInventory>(sys, input, output),
        ImportImages::NAME => run::<ImportImages>(sys, input, output),
        PinImages::NAME => run::<PinImages>(sys, input, output),
        StageImages::NAME => run::<StageImages>(sys, input, output),
        StagedDigest::NAME => run::<StagedDigest>(sys, input, output),
        PruneStaged::NAME => run::<PruneStaged>(sys, input, output),
        CreateSnapshot::NAME => run::<CreateSnapshot>(sys, input, output),
        ListSnapshots::NAME => run::<ListSnapshots>(sys, input, output),
        VerifySnapshot::NAME => run::<VerifySnapshot>(sys, input, output),
        PruneSnapshots::NAME => run::<PruneSnapshots>(sys, input, output),
        RestoreSnapshot::NAME => run::<RestoreSnapshot>(sys, input, output),
        RollbackRestore::NAME => run::<RollbackRestore>(sys, input, output),
        RestorePeer::NAME => run::<RestorePeer>(sys, input, output),
        ReceiveSnapshot::NAME => run::<ReceiveSnapshot>(sys, input, output),
        ScheduledSnapshot::NAME => run::<ScheduledSnapshot>(sys, input, output),
        InstallSchedule::NAME => run::<InstallSchedule>(sys, input, output),
        DaemonIdentity::NAME => run::<DaemonIdentity>(sys, input, output),
        InstallDaemon::NAME => run::<InstallDaemon>(sys, input, output),
        HealthStatus::NAME => run::<HealthStatus>(sys, input, output),
        other => {
            let mut answers = Answers { output, scrubber: Scrubber::default() };
            answers.line(&AnswerLine::Error(
                HostError::bad_request(format!(
                    "unknown operation {other:?} (this helper is k3node {})",
                    env!("CARGO_PKG_VERSION")
                ))
                .into_wire(),
            ));
            1
        }
    }
}

fn run<O: HostOperation>(sys: &dyn HostSystem, input: &mut dyn BufRead, output: &mut dyn Write) -> i32 {
    let mut line = String::new();
    let request = match input.read_line(&mut line) {
        Ok(_) => decode_request::<O>(&line).map_err(HostError::bad_request),
        Err(e) => Err(HostError::bad_request(format!("cannot read the request from stdin: {e}"))),
    };
    let scrubber = request.as_ref().map(|r| Scrubber::new(r.args.secrets())).unwrap_or_default();
    let mut answers = Answers { output, scrubber };
    let answer = match request {
        Ok(envelope) => carry_out(envelope, sys, &mut answers, input),
        Err(e) => Err(e),
    };
    match answer {
        Ok(value) => {
            answers.line(&AnswerLine::Result { value });
            0
        }
        Err(e) => {
            answers.line(&AnswerLine::Error(e.into_wire()));
            1
        }
    }
}

fn carry_out<O: HostOperation>(
    envelope: crate::protocol::Envelope<O>,
    sys: &dyn HostSystem,
    answers: &mut Answers<'_>,
    input: &mut dyn BufRead,
) -> Result<serde_json::Value, HostError> {
    if !O::UPLOAD && O::NAME != HoldLock::NAME {
        nothing_follows(input)?;
    }
    let _lock = if envelope.args.mutates() { super::lock::enter(sys, envelope.lock.as_deref())? } else { None };
    let mut ctx = Context { sys, answers, input };
    let answer = envelope.args.run(&mut ctx)?;
    serde_json::to_value(&answer)
        .map_err(|e| HostError::new(crate::protocol::ErrorKind::Failed, format!("cannot encode the answer: {e}")))
}

/// A request without an upload is the whole of stdin: anything after it is refused, not ignored.
fn nothing_follows(input: &mut dyn BufRead) -> Result<(), HostError> {
    let mut byte = [0u8; 1];
    match input.read(&mut byte) {
        Ok(0) => Ok(()),
        Ok(_) => Err(HostError::bad_request("data follows the request line, and this operation takes none")),
        Err(e) => Err(HostError::bad_request(format!("cannot read stdin after the request: {e}"))),
    }
}

/// Writes answer lines, each with the request's secrets removed.
pub struct Answers<'a> {
    output: &'a mut dyn Write,
    scrubber: Scrubber,
}

impl Answers<'_> {
    pub fn line(&mut self, line: &AnswerLine) {
        // If stdout is gone the operator has gone too; there is nobody left to tell.
        if let Ok(text) = serde_json::to_string(line) {
            let text = if self.scrubber.is_empty() { text } else { self.scrubber.scrub(&text) };
            let _ = writeln!(self.output, "{text}");
            let _ = self.output.flush();
        }
    }
}

/// Raw bytes (download frames) go out as they are.
impl Write for Answers<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.output.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.output.flush()
    }
}

/// What an operation has to work with: the system, a way to report progress, and its streams.
pub struct Context<'a, 'b> {
    pub sys: &'a dyn HostSystem,
    answers: &'a mut Answers<'b>,
    input: &'a mut dyn BufRead,
}

impl<'a, 'b> Context<'a, 'b> {
    pub fn progress(&mut self, message: &str) {
        self.answers.line(&AnswerLine::Progress { message: message.to_string() });
    }

    /// Tells the operator a long-lived operation is in place.
    pub fn ready(&mut self) {
        self.answers.line(&AnswerLine::Ready);
    }

    /// The upload that follows the request (operations with [`Operation::UPLOAD`]).
    pub fn upload(&mut self) -> FrameReader<&mut dyn BufRead> {
        FrameReader::new(&mut *self.input)
    }

    /// The rest of stdin, raw: read to its end by long-lived operations to learn that the
    /// operator is gone.
    pub fn wait_for_end_of_input(&mut self) {
        let mut sink = [0u8; 4096];
        while matches!(self.input.read(&mut sink), Ok(n) if n > 0) {}
    }

    /// A download written among the answer lines (operations with [`Operation::DOWNLOAD`]).
    pub fn download(&mut self) -> FrameWriter<&mut Answers<'b>> {
        FrameWriter::new(&mut *self.answers)
    }

    /// As [`Context::download`], for a source known to have `sha256`: not hashed here, checked
    /// by the operator.
    pub fn download_verified(&mut self, sha256: &str) -> FrameWriter<&mut Answers<'b>> {
        FrameWriter::verified(&mut *self.answers, sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::system::fake::FakeSystem;
    use crate::protocol::{ErrorKind, HelloAnswer, WireError, PROTOCOL_VERSION};

    fn lines(out: &[u8]) -> Vec<AnswerLine> {
        String::from_utf8_lossy(out).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    fn serve_text(sys: &dyn HostSystem, operation: &str, input: &str) -> (i32, Vec<AnswerLine>) {
        let mut out = Vec::new();
        let status = serve(operation, sys, &mut input.as_bytes(), &mut out);
        (status, lines(&out))
    }

    #[test]
    fn hello_reports_protocol_capabilities_and_own_hash() {
        let (status, got) = serve_text(&FakeSystem::new(), "hello", "{\"op\":\"hello\",\"args\":{}}\n");
        assert_eq!(status, 0);
        let [AnswerLine::Result { value }] = &got[..] else { panic!("{got:?}") };
        let hello: HelloAnswer = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(hello.protocol, PROTOCOL_VERSION);
        assert_eq!(hello.binary_sha256.len(), 64);
        assert!(hello.capabilities.iter().any(|c| c == "framed-download"), "{hello:?}");
    }

    #[test]
    fn garbage_mismatched_and_trailing_requests_are_refused_with_one_error_line() {
        let cases = [
            ("hello", "not json\n"),
            ("preflight", "{\"op\":\"hello\",\"args\":{}}\n"),
            ("hello", ""),
            ("hello", "[\"hello\"]\n"),
            ("hello", "{\"op\":\"hello\",\"args\":{}}\n{\"op\":\"reset\"}\n"),
            ("no-such-op", "{}\n"),
        ];
        for (op, input) in cases {
            let (status, got) = serve_text(&FakeSystem::new(), op, input);
            assert_eq!(status, 1, "{op} {input:?}");
            assert!(
                matches!(
                    &got[..],
                    [AnswerLine::Error(WireError { kind: ErrorKind::BadRequest, retryable: false, .. })]
                ),
                "{op} {input:?}: {got:?}"
            );
        }
    }

    #[test]
    fn a_mutating_request_of_another_run_is_refused_while_the_lock_is_held() {
        let sys = FakeSystem::new();
        let holder = crate::protocol::LockHolder {
            token: "run-a".into(),
            operation: "up".into(),
            from: "alice@laptop".into(),
            started_at: "2026-12-01T10:00:00Z".into(),
            pid: 0,
        };
        let guard = crate::host::lock::take(&sys, &holder).unwrap();
        let reset =
            |lock: &str| format!("{{\"op\":\"reset\",{lock}\"args\":{{\"dry_run\":false,\"keep_helper\":true}}}}\n");
        let (status, got) = serve_text(&sys, "reset", &reset("\"lock\":\"run-b\","));
        assert_eq!(status, 1);
        let [AnswerLine::Error(e)] = &got[..] else { panic!("{got:?}") };
        assert_eq!((e.kind, e.retryable), (ErrorKind::Conflict, true));
        assert!(e.message.contains("`up` from alice@laptop, started at 2026-12-01T10:00:00Z"), "{}", e.message);
        // The holder's own run passes; a dry run needs no lock at all.
        let (status, got) = serve_text(&sys, "reset", &reset("\"lock\":\"run-a\","));
        assert_eq!(status, 0, "{got:?}");
        drop(guard);
        let (status, got) = serve_text(&sys, "reset", &reset(""));
        assert_eq!(status, 0, "a free lock is taken for the operation alone: {got:?}");
    }
}
