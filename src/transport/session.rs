//! One SSH connection to one host, reused for every operation of a run.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use russh::client::{self, Handle};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::ChannelMsg;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::host_keys::{self, HostKeyPolicy};
use super::keys::{default_identity_files, Keyring};
use super::{Endpoint, TransportError};

#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub known_hosts: std::path::PathBuf,
    pub host_key_policy: HostKeyPolicy,
    /// Bounds the TCP connect, the SSH handshake and authentication, each.
    pub connect_timeout: Duration,
    /// Try the keys of a running ssh-agent (SSH_AUTH_SOCK).
    pub use_agent: bool,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            known_hosts: host_keys::default_known_hosts(),
            host_key_policy: HostKeyPolicy::Strict,
            connect_timeout: Duration::from_secs(10),
            use_agent: true,
        }
    }
}

/// How commands get root on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    Root,
    Sudo,
}

/// Output of a command run to completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub status: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// How a streamed command ended: its exit status and (the start of) its stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    pub status: u32,
    pub stderr: Vec<u8>,
}

impl ExitInfo {
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }
}

impl ExecOutput {
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }
}

pub struct Session {
    host: String,
    user: String,
    privilege: Privilege,
    /// SHA256 fingerprint of the host key the host presented (and known_hosts vouched for).
    host_key: String,
    handle: Handle<HostKeyChecker>,
    // The jump connection carries ours; it must live as long as we do.
    _jump: Option<Box<Session>>,
}

impl Session {
    /// Connects (through the jump host when there is one), verifies the host key, authenticates
    /// and finds out how to become root.
    pub async fn connect(
        endpoint: &Endpoint,
        options: &ConnectOptions,
        keys: &Keyring,
    ) -> Result<Session, TransportError> {
        let mut session = Box::pin(Self::connect_unprivileged(endpoint, options, keys)).await?;
        session.privilege = session.detect_privilege().await?;
        Ok(session)
    }

    async fn connect_unprivileged(
        endpoint: &Endpoint,
        options: &ConnectOptions,
        keys: &Keyring,
    ) -> Result<Session, TransportError> {
        let host = endpoint.host.as_str();
        let address = format!("{}:{}", endpoint.address, endpoint.port);
        let verdict = Arc::new(Mutex::new(None));
        let accepted = Arc::new(Mutex::new(None));
        let checker = HostKeyChecker {
            accepted: accepted.clone(),
            host: host.to_string(),
            address: endpoint.address.clone(),
            port: endpoint.port,
            known_hosts: options.known_hosts.clone(),
            policy: options.host_key_policy,
            verdict: verdict.clone(),
        };
        let config = Arc::new(client_config());
        let timeout = options.connect_timeout;

        let (handle, jump) = match &endpoint.jump {
            None => {
                let stream = match tokio::time::timeout(timeout, TcpStream::connect(&address)).await {
                    Err(_) => {
                        return Err(TransportError::Unreachable {
                            host: host.into(),
                            address,
                            detail: format!("no answer within {timeout:?}"),
                        })
                    }
                    Ok(Err(e)) => return Err(classify_connect_error(host, &address, e)),
                    Ok(Ok(s)) => s,
                };
                let _ = stream.set_nodelay(true);
                let handshake = client::connect_stream(config, stream, checker);
                match finish_handshake(host, &address, timeout, handshake, &verdict).await {
                    Ok(handle) => (handle, None),
                    Err(TransportError::HostKeyUnknown {
                        host,
                        address: shown,
                        key_type,
                        fingerprint,
                        known_hosts,
                        ..
                    }) => {
                        let others = other_host_keys(&address, &key_type, timeout).await;
                        return Err(TransportError::HostKeyUnknown {
                            host,
                            address: shown,
                            key_type,
                            fingerprint,
                            known_hosts,
                            others,
                        });
                    }
                    Err(e) => return Err(e),
                }
            }
            Some(jump_endpoint) => {
                let jump = Box::pin(Self::connect_unprivileged(jump_endpoint, options, keys)).await?;
                let channel = jump
                    .handle
                    .channel_open_direct_tcpip(endpoint.address.clone(), endpoint.port as u32, "127.0.0.1", 0)
                    .await
                    .map_err(|e| TransportError::Unreachable {
                        host: host.into(),
                        address: address.clone(),
                        detail: format!("jump host {} could not open a connection to it: {e}", jump_endpoint.address),
                    })?;
                let handshake = client::connect_stream(config, channel.into_stream(), checker);
                (finish_handshake(host, &address, timeout, handshake, &verdict).await?, Some(Box::new(jump)))
            }
        };

        let host_key = accepted.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default();
        let mut session = Session {
            host: host.to_string(),
            user: endpoint.user.clone(),
            privilege: Privilege::Root,
            host_key,
            handle,
            _jump: jump,
        };
        match tokio::time::timeout(timeout, session.authenticate(endpoint, options, keys)).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(TransportError::Timeout {
                    host: host.into(),
                    address,
                    stage: "authenticating",
                    after: timeout,
                })
            }
        }
        tracing::debug!(host, user = %endpoint.user, "authenticated");
        Ok(session)
    }

    async fn authenticate(
        &mut self,
        endpoint: &Endpoint,
        options: &ConnectOptions,
        keys: &Keyring,
    ) -> Result<(), TransportError> {
        let host = self.host.clone();
        let user = endpoint.user.clone();
        let mut tried = Vec::new();

        if options.use_agent && std::env::var_os("SSH_AUTH_SOCK").is_some() {
            match russh::keys::agent::client::AgentClient::connect_env().await {
                Ok(mut agent) => {
                    let identities = agent.request_identities().await.unwrap_or_default();
                    for identity in identities {
                        let russh::keys::agent::AgentIdentity::PublicKey { key, comment } = identity else { continue };
                        let hash = self.rsa_hash(&key).await?;
                        match self.handle.authenticate_publickey_with(user.clone(), key, hash, &mut agent).await {
                            Ok(r) if r.success() => return Ok(()),
                            Ok(_) => tried.push(format!("ssh-agent key {comment}")),
                            Err(e) => tried.push(format!("ssh-agent key {comment} ({e})")),
                        }
                    }
                    if tried.is_empty() {
                        tried.push("ssh-agent (it holds no keys)".to_string());
                    }
                }
                Err(e) => tried.push(format!("ssh-agent (unusable: {e})")),
            }
        }

        let files =
            if endpoint.identity_files.is_empty() { default_identity_files() } else { endpoint.identity_files.clone() };
        for path in files {
            let Some(key) = keys.get(&path) else { continue };
            let hash = self.rsa_hash(key.public_key()).await?;
            let result = self
                .handle
                .authenticate_publickey(user.clone(), PrivateKeyWithHashAlg::new(key, hash))
                .await
                .map_err(|e| TransportError::ssh(&host, e))?;
            if result.success() {
                return Ok(());
            }
            tried.push(format!("key {}", path.display()));
        }
        if tried.is_empty() {
            tried.push("no key: none configured, none in ~/.ssh, no ssh-agent".to_string());
        }
        Err(TransportError::AuthFailed { host, user, tried })
    }

    async fn rsa_hash(&self, key: &russh::keys::PublicKey) -> Result<Option<russh::keys::HashAlg>, TransportError> {
        if !key.algorithm().is_rsa() {
            return Ok(None);
        }
        let best = self.handle.best_supported_rsa_hash().await.map_err(|e| TransportError::ssh(&self.host, e))?;
        Ok(best.flatten())
    }

    async fn detect_privilege(&self) -> Result<Privilege, TransportError> {
        if self.user == "root" {
            return Ok(Privilege::Root);
        }
        let out = self.exec_as_user(&["sudo", "-n", "true"], &mut tokio::io::empty()).await?;
        if out.status == 0 {
            return Ok(Privilege::Sudo);
        }
        let stderr = out.stderr_text();
        if stderr.contains("password is required") || stderr.contains("a terminal is required") {
            Err(TransportError::SudoNeedsPassword { host: self.host.clone(), user: self.user.clone() })
        } else {
            Err(TransportError::SudoFailed { host: self.host.clone(), user: self.user.clone(), detail: stderr })
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn privilege(&self) -> Privilege {
        self.privilege
    }

    /// The SHA256 fingerprint of the host's key, as verified at connection.
    pub fn host_key(&self) -> &str {
        &self.host_key
    }

    /// Runs `argv` as root (through `sudo -n` when needed), feeding it `stdin`; collects its output.
    pub async fn exec(
        &self,
        argv: &[&str],
        stdin: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<ExecOutput, TransportError> {
        let mut stdout = Vec::new();
        let exit = self.exec_io(argv, stdin, &mut stdout).await?;
        Ok(ExecOutput { status: exit.status, stdout, stderr: exit.stderr })
    }

    /// Runs `argv` as root, streaming `stdin` to it and its stdout into `stdout` as it arrives
    /// (with backpressure: nothing is buffered beyond the SSH window). If `stdout` fails, the
    /// channel is closed and that error returned.
    pub async fn exec_io(
        &self,
        argv: &[&str],
        stdin: &mut (dyn AsyncRead + Unpin + Send),
        stdout: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<ExitInfo, TransportError> {
        let mut full: Vec<&str> = Vec::with_capacity(argv.len() + 2);
        if self.privilege == Privilege::Sudo {
            full.extend(["sudo", "-n"]);
        }
        full.extend_from_slice(argv);
        self.run(&full, stdin, stdout).await
    }

    async fn exec_as_user(
        &self,
        argv: &[&str],
        stdin: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<ExecOutput, TransportError> {
        let mut stdout = Vec::new();
        let exit = self.run(argv, stdin, &mut stdout).await?;
        Ok(ExecOutput { status: exit.status, stdout, stderr: exit.stderr })
    }

    async fn run(
        &self,
        argv: &[&str],
        stdin: &mut (dyn AsyncRead + Unpin + Send),
        stdout: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<ExitInfo, TransportError> {
        let host = self.host.as_str();
        let command = shlex::try_join(argv.iter().copied()).map_err(|e| TransportError::Io {
            host: host.into(),
            context: "quoting a command".into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
        })?;
        tracing::debug!(host, %command, "exec");
        let channel = self.handle.channel_open_session().await.map_err(|e| TransportError::ssh(host, e))?;
        channel.exec(true, command.as_bytes()).await.map_err(|e| TransportError::ssh(host, e))?;
        let (mut reader, writer) = channel.split();

        let feed = async {
            // Owned chunks go out as full-size SSH packets; russh's AsyncRead path would cut
            // the stream into 8 KiB packets, a cost that shows on every upload.
            // A chunk is what is available now (up to STDIN_CHUNK), never a wait for more: an
            // input that stays open (the host lock's) must still get its request line through.
            loop {
                let mut chunk = vec![0u8; STDIN_CHUNK];
                let mut filled = stdin.read(&mut chunk).await?;
                if filled == 0 {
                    break;
                }
                let mut ended = false;
                while filled < STDIN_CHUNK {
                    match stdin.read(&mut chunk[filled..]).now_or_never() {
                        Some(Ok(0)) => {
                            ended = true;
                            break;
                        }
                        Some(Ok(n)) => filled += n,
                        Some(Err(e)) => return Err(e.into()),
                        None => break,
                    }
                }
                chunk.truncate(filled);
                writer.data_bytes(chunk).await?;
                if ended {
                    break;
                }
            }
            writer.eof().await
        };
        let collect = async {
            let mut stderr = Vec::new();
            let mut status = None;
            let mut signal = None;
            let mut sink_error = None;
            while let Some(msg) = reader.wait().await {
                match msg {
                    ChannelMsg::Data { data } => {
                        if let Err(e) = stdout.write_all(&data).await {
                            sink_error = Some(e);
                            break;
                        }
                    }
                    ChannelMsg::ExtendedData { data, ext: 1 } => {
                        // Bounded: a chatty command must not grow the operator's memory.
                        let room = MAX_STDERR.saturating_sub(stderr.len());
                        stderr.extend_from_slice(&data[..data.len().min(room)]);
                    }
                    ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                    ChannelMsg::ExitSignal { signal_name, .. } => signal = Some(format!("{signal_name:?}")),
                    ChannelMsg::Failure => stderr.extend_from_slice(b"the host refused to run the command"),
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
            if sink_error.is_none() {
                if let Err(e) = stdout.flush().await {
                    sink_error = Some(e);
                }
            }
            (status, signal, stderr, sink_error)
        };
        // The command may finish without reading all of stdin; a failed feed is then not the error
        // to report. Once the output ends (the channel closed, or the sink failed) the feed stops.
        let mut feed = Box::pin(feed);
        let mut collect = Box::pin(collect);
        let mut fed = None;
        let (status, signal, mut stderr, sink_error) = loop {
            tokio::select! {
                result = &mut feed, if fed.is_none() => fed = Some(result),
                collected = &mut collect => break collected,
            }
        };
        drop(feed);
        if let Some(source) = sink_error {
            // The command learns it from the closed channel (EPIPE on its stdout).
            let _ = writer.close().await;
            return Err(TransportError::Io {
                host: host.into(),
                context: format!("receiving the output of {command}"),
                source,
            });
        }
        match status {
            Some(status) => Ok(ExitInfo { status, stderr }),
            None => {
                if let Some(signal) = signal {
                    stderr.extend_from_slice(format!(" (killed by signal {signal})").as_bytes());
                }
                if let Some(Err(e)) = fed {
                    tracing::debug!(host, "stdin feed ended with {e}");
                }
                Err(TransportError::NoExitStatus { host: host.into(), command })
            }
        }
    }

    /// Runs `argv` as root and fails unless it exits 0.
    pub async fn exec_checked(&self, argv: &[&str]) -> Result<ExecOutput, TransportError> {
        let out = self.exec(argv, &mut tokio::io::empty()).await?;
        if out.status != 0 {
            return Err(TransportError::CommandFailed {
                host: self.host.clone(),
                command: argv.join(" "),
                status: out.status,
                stderr: out.stderr_text(),
            });
        }
        Ok(out)
    }

    /// Streams `content` into a temp file beside `dest` on the host (as root), compares its sha256
    /// there with `expected_sha256` and only then sets the mode and renames it over `dest`. On a
    /// mismatch the temp file is removed and `dest` is untouched.
    ///
    /// This needs only coreutils on the host, so it also installs the agent itself.
    pub async fn upload(
        &self,
        content: &mut (dyn AsyncRead + Unpin + Send),
        expected_sha256: &str,
        dest: &str,
        mode: u32,
    ) -> Result<(), TransportError> {
        let (dir, name) = dest.rsplit_once('/').filter(|(d, _)| !d.is_empty()).unwrap_or(("/", dest));
        let temp = format!("{dir}/.{name}.k3node-upload-{:08x}", rand::random::<u32>());
        let result = async {
            self.exec_checked(&["mkdir", "-p", dir]).await?;
            // An upload cut off before (the operator killed mid-transfer) left its temp file.
            let stale = format!("{dir}/.{name}.k3node-upload-");
            self.exec_checked(&["sh", "-c", "rm -f -- \"$1\"*", "sh", &stale]).await?;
            let out = self.exec(&["dd", &format!("of={temp}"), "bs=1M", "conv=fsync", "status=none"], content).await?;
            if out.status != 0 {
                return Err(TransportError::CommandFailed {
                    host: self.host.clone(),
                    command: format!("dd of={temp}"),
                    status: out.status,
                    stderr: out.stderr_text(),
                });
            }
            let out = self.exec_checked(&["sha256sum", &temp]).await?;
            let actual = String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string();
            if actual != expected_sha256 {
                return Err(TransportError::ChecksumMismatch {
                    host: self.host.clone(),
                    path: dest.to_string(),
                    expected: expected_sha256.to_string(),
                    actual,
                });
            }
            self.exec_checked(&["chmod", &format!("{mode:o}"), &temp]).await?;
            self.exec_checked(&["mv", "-f", &temp, dest]).await?;
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = self.exec(&["rm", "-f", &temp], &mut tokio::io::empty()).await;
        }
        result
    }

    /// Ends the connection; the session can be shared (an `Arc`) while this is called.
    pub async fn close_ref(&self) {
        let _ = self.handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
    }

    pub async fn close(self) {
        let _ = self.handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
    }
}

/// How much of a command's stdin is read before it is handed to the SSH channel.
const STDIN_CHUNK: usize = 1 << 20;
/// stderr kept from a command: enough for any diagnosis.
const MAX_STDERR: usize = 1 << 20;

/// AES-GCM first: with AES-NI it moves bulk data (k3s binaries, images) several times faster
/// than ChaCha20-Poly1305 in software; every cipher here is one OpenSSH itself offers.
const CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_256_GCM,
    russh::cipher::AES_128_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_128_CTR,
];

fn client_config() -> client::Config {
    client::Config {
        preferred: russh::Preferred { cipher: std::borrow::Cow::Borrowed(CIPHERS), ..Default::default() },
        // A larger window keeps uploads streaming instead of waiting on window adjustments.
        window_size: 16 * 1024 * 1024,
        // Downloads come in packets of at most this: twice russh's default, half the messages to
        // decrypt and hand over per byte (russh refuses more than 65535).
        maximum_packet_size: 65535,
        // Long operations (image imports, waits) must not be cut by idleness; dead peers are found by keepalives.
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 4,
        nodelay: true,
        ..Default::default()
    }
}

async fn finish_handshake<F>(
    host: &str,
    address: &str,
    timeout: Duration,
    handshake: F,
    verdict: &Mutex<Option<TransportError>>,
) -> Result<Handle<HostKeyChecker>, TransportError>
where
    F: std::future::Future<Output = Result<Handle<HostKeyChecker>, russh::Error>>,
{
    match tokio::time::timeout(timeout, handshake).await {
        Err(_) => Err(TransportError::Timeout {
            host: host.into(),
            address: address.into(),
            stage: "in the SSH handshake",
            after: timeout,
        }),
        Ok(Ok(handle)) => Ok(handle),
        Ok(Err(e)) => {
            if let Some(rejection) = verdict.lock().unwrap_or_else(|p| p.into_inner()).take() {
                return Err(rejection);
            }
            Err(TransportError::ssh(host, e))
        }
    }
}

/// The host keys `address` offers besides the one of type `presented`, as (type, fingerprint):
/// one handshake per other key type, ended once the key is seen. Only an unknown host key costs
/// them, so that its error can name every key to check out of band, not just the negotiated one.
async fn other_host_keys(address: &str, presented: &str, timeout: Duration) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = Vec::new();
    for algorithm in russh::Preferred::DEFAULT.key.iter() {
        let short = host_keys::short_type(algorithm.as_str());
        if short == host_keys::short_type(presented) || found.iter().any(|(t, _)| host_keys::short_type(t) == short) {
            continue;
        }
        let seen = Arc::new(Mutex::new(None));
        let config = client::Config {
            preferred: russh::Preferred {
                key: std::borrow::Cow::Owned(vec![algorithm.clone()]),
                ..client_config().preferred
            },
            ..client_config()
        };
        let Ok(Ok(stream)) = tokio::time::timeout(timeout, TcpStream::connect(address)).await else { break };
        let handshake = client::connect_stream(Arc::new(config), stream, KeyCollector { seen: seen.clone() });
        // Refused by design once the key is seen (or no such key there): the error is expected.
        let _ = tokio::time::timeout(timeout, handshake).await;
        let key = seen.lock().unwrap_or_else(|p| p.into_inner()).take();
        found.extend(key);
    }
    found
}

/// Records the host key presented and refuses it.
struct KeyCollector {
    seen: Arc<Mutex<Option<(String, String)>>>,
}

impl client::Handler for KeyCollector {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        if let PublicKeyOrCertificate::PublicKey { key, .. } = key {
            *self.seen.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((key.algorithm().as_str().to_string(), host_keys::fingerprint(key)));
        }
        Ok(false)
    }
}

fn classify_connect_error(host: &str, address: &str, e: std::io::Error) -> TransportError {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused => TransportError::Refused { host: host.into(), address: address.into() },
        ErrorKind::TimedOut
        | ErrorKind::HostUnreachable
        | ErrorKind::NetworkUnreachable
        | ErrorKind::AddrNotAvailable => {
            TransportError::Unreachable { host: host.into(), address: address.into(), detail: e.to_string() }
        }
        _ => TransportError::Unreachable { host: host.into(), address: address.into(), detail: e.to_string() },
    }
}

/// The russh handler: checks the server's host key; the reason for a rejection is kept for the error.
pub struct HostKeyChecker {
    /// The fingerprint of the key the host presented, once verified.
    accepted: Arc<Mutex<Option<String>>>,
    host: String,
    address: String,
    port: u16,
    known_hosts: std::path::PathBuf,
    policy: HostKeyPolicy,
    verdict: Arc<Mutex<Option<TransportError>>>,
}

impl client::Handler for HostKeyChecker {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            *self.verdict.lock().unwrap_or_else(|p| p.into_inner()) = Some(TransportError::KnownHosts {
                host: self.host.clone(),
                path: self.known_hosts.clone(),
                detail: "the host presented a certificate; only plain host keys are supported".into(),
            });
            return Ok(false);
        };
        match host_keys::verify(&self.host, &self.address, self.port, key, &self.known_hosts, self.policy) {
            Ok(()) => {
                *self.accepted.lock().unwrap_or_else(|p| p.into_inner()) = Some(host_keys::fingerprint(key));
                Ok(true)
            }
            Err(rejection) => {
                *self.verdict.lock().unwrap_or_else(|p| p.into_inner()) = Some(rejection);
                Ok(false)
            }
        }
    }
}
