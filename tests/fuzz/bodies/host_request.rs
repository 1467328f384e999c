//! Any bytes on the helper's stdin, for each of its operations, over an in-memory host: the
//! helper must never panic, and must always answer with well-formed lines ending in exactly one
//! result or error (the protocol's promise to the operator, whatever arrives).

use k3node::host::system::fake::FakeSystem;
use k3node::protocol::AnswerLine;

const OPERATIONS: &[&str] = &[
    "hello",
    "lock",
    "preflight",
    "install-k3s",
    "read-token",
    "kubeconfig",
    "nodes",
    "delete-nodes",
    "reset",
    "receive-file",
    "send-file",
    "file-digest",
    "sync-manifests",
    "image-inventory",
    "import-images",
    "pin-images",
    "stage-images",
    "staged-digest",
    "prune-staged",
    "snapshot-create",
    "snapshot-list",
    "snapshot-verify",
    "snapshot-prune",
    "snapshot-restore",
    "snapshot-receive",
    "snapshot-peer",
    "snapshot-scheduled",
    "snapshot-schedule",
    "snapshot-rollback",
    "daemon-identity",
    "install-daemon",
    "health-status",
    "no-such-operation",
];

pub fn run(data: &[u8]) {
    let Some((&selector, input)) = data.split_first() else { return };
    let operation = OPERATIONS[selector as usize % OPERATIONS.len()];
    let sys = FakeSystem::new().file("/srv/file", "content").now(1_700_000_000_000);
    let mut output = Vec::new();
    let status = k3node::host::serve(operation, &sys, &mut &input[..], &mut output);
    // Downloads put raw frames between lines; only what follows the last frame is checked here.
    if operation == "send-file" && status == 0 {
        return;
    }
    let text = String::from_utf8(output).expect("answer lines are UTF-8");
    let lines: Vec<AnswerLine> =
        text.lines().map(|l| serde_json::from_str(l).expect("every line is an answer line")).collect();
    let finals = lines.iter().filter(|l| matches!(l, AnswerLine::Result { .. } | AnswerLine::Error(_))).count();
    assert_eq!(finals, 1, "exactly one result or error: {text}");
    assert!(matches!(lines.last(), Some(AnswerLine::Result { .. } | AnswerLine::Error(_))), "{text}");
    assert_eq!(status == 0, matches!(lines.last(), Some(AnswerLine::Result { .. })));
}
