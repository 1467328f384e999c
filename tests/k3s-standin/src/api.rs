//! The HTTPS listener of a server (k3s's supervisor and apiserver share port 6443):
//! /cacerts, /ping, /readyz, /version, the k3s supervisor paths under /v1-k3s/, and the part of
//! the Kubernetes API k3node uses (nodes, node leases).
//!
//! Authentication: the admin client certificate (signed by client-ca), or the token's
//! credentials: basic `server:<password>` / `node:<agent password>`, or a bearer token.
//! HA servers (embedded etcd) also serve `/db/info` (the etcd members, for servers that join)
//! and `/db/snapshot` (what `k3s etcd-snapshot` asks for), with the server credentials.

use crate::datastore::Datastore;
use crate::node;
use crate::nodepass;
use crate::store::ApiError;
use crate::token::Bootstrap;
use crate::{error, info};
use base64::Engine;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub type Resp = Response<Full<Bytes>>;

pub struct State {
    pub kine: Arc<Datastore>,
    pub cacerts: Vec<u8>,
    pub server_password: String,
    pub agent_password: String,
    pub bootstrap: Bootstrap,
    /// Values that must be equal on every server (contract section 3).
    pub critical: BTreeMap<String, String>,
    /// The embedded etcd member of an HA server (cluster-init or joined): other servers may
    /// join this one, and snapshots can be taken. None for a SQLite server.
    pub etcd: Option<Arc<crate::etcd::Node>>,
    pub cluster_cidr: String,
    pub agent_config: Value,
}

#[derive(Clone, Copy)]
struct ConnInfo {
    peer: SocketAddr,
    client_cert: bool,
}

#[derive(PartialEq, Eq, Debug)]
enum Who {
    Admin,
    Server,
    Node,
    Anonymous,
    Bad,
}

fn bytes_resp(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Resp {
    Response::builder().status(status).header("content-type", ctype).body(Full::new(body.into())).expect("response")
}

fn json_resp(status: StatusCode, v: &Value) -> Resp {
    bytes_resp(status, "application/json", serde_json::to_vec(v).unwrap_or_default())
}

fn text(status: StatusCode, s: &str) -> Resp {
    bytes_resp(status, "text/plain; charset=utf-8", s.to_string())
}

pub fn status_json(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn not_found(kind: &str, name: &str) -> Resp {
    let mut v = status_json(404, "NotFound", &format!("{kind} \"{name}\" not found"));
    v["details"] = json!({"name": name, "kind": kind});
    json_resp(StatusCode::NOT_FOUND, &v)
}

fn unauthorized() -> Resp {
    json_resp(StatusCode::UNAUTHORIZED, &status_json(401, "Unauthorized", "Unauthorized"))
}

fn forbidden(msg: &str) -> Resp {
    json_resp(StatusCode::FORBIDDEN, &status_json(403, "Forbidden", msg))
}

fn authenticate(s: &State, conn: &ConnInfo, headers: &hyper::HeaderMap) -> Who {
    if conn.client_cert {
        return Who::Admin;
    }
    let Some(h) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return Who::Anonymous;
    };
    if let Some(b64) = h.strip_prefix("Basic ") {
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
            return Who::Bad;
        };
        let raw = String::from_utf8_lossy(&raw).to_string();
        let Some((user, pass)) = raw.split_once(':') else {
            return Who::Bad;
        };
        return match user {
            "server" if pass == s.server_password => Who::Server,
            "node" if pass == s.agent_password || pass == s.server_password => Who::Node,
            _ => Who::Bad,
        };
    }
    if let Some(tok) = h.strip_prefix("Bearer ") {
        return match crate::token::parse(tok) {
            Ok(t) if t.password == s.server_password => Who::Server,
            _ => Who::Bad,
        };
    }
    Who::Bad
}

fn log_bad(conn: &ConnInfo) {
    error!("Failed to authenticate request from {}: invalid username/password combination", conn.peer);
}

pub fn tls_config(
    serving_cert_pem: &str,
    serving_key_pem: &str,
    client_ca_pem: &str,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(serving_cert_pem.as_bytes()).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(serving_key_pem.as_bytes())?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Accepts TLS connections forever.
pub async fn serve(listener: tokio::net::TcpListener, tls: Arc<rustls::ServerConfig>, state: Arc<State>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                error!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    crate::debug!("http: TLS handshake error from {peer}: {e}");
                    return;
                }
                Err(_) => return,
            };
            let client_cert = stream.get_ref().1.peer_certificates().map(|c| !c.is_empty()).unwrap_or(false);
            let conn = ConnInfo { peer, client_cert };
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(state, conn, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

async fn handle(s: Arc<State>, conn: ConnInfo, req: Request<Incoming>) -> Resp {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let path_q = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| path.clone());
    let headers = req.headers().clone();
    let body = match Limited::new(req.into_body(), 4 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
    };
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let who = authenticate(&s, &conn, &headers);
    if who == Who::Bad {
        log_bad(&conn);
        return unauthorized();
    }
    let m = &method;
    match segs.as_slice() {
        ["cacerts"] if m == Method::GET => bytes_resp(StatusCode::OK, "text/plain", s.cacerts.clone()),
        ["ping"] if m == Method::GET => text(StatusCode::OK, "pong"),
        ["readyz"] | ["livez"] | ["healthz"] | ["v1-k3s", "readyz"] if m == Method::GET => text(StatusCode::OK, "ok"),
        ["version"] if m == Method::GET => json_resp(StatusCode::OK, &version_json()),
        ["v1-k3s", rest @ ..] => supervisor(&s, &conn, who, m, rest, body, &headers).await,
        ["db", "info"] if m == Method::GET => {
            if who != Who::Server {
                return unauthorized();
            }
            db_info(&s).await
        }
        ["db", "snapshot"] => {
            if who != Who::Server && who != Who::Admin {
                return unauthorized();
            }
            db_snapshot(&s, &conn, m, body).await
        }
        ["api", ..] | ["apis", ..] | ["openapi", ..] => {
            if who == Who::Anonymous {
                return unauthorized();
            }
            if who == Who::Node {
                return forbidden("node credentials may not use the Kubernetes API of the stand-in");
            }
            kube_api(&s, m, &path, &path_q, body, &headers).await
        }
        _ => json_resp(
            StatusCode::NOT_FOUND,
            &status_json(404, "NotFound", "the server could not find the requested resource"),
        ),
    }
}

pub fn version_json() -> Value {
    let (major, minor) = crate::version::major_minor();
    json!({
        "major": major, "minor": minor,
        "gitVersion": crate::version::version(),
        "gitCommit": crate::version::commit(),
        "gitTreeState": "clean",
        "buildDate": "2024-12-12T21:41:05Z",
        "goVersion": crate::version::GO_VERSION,
        "compiler": "gc",
        "platform": format!("linux/{}", if cfg!(target_arch = "aarch64") { "arm64" } else { "amd64" }),
    })
}

/// The node's name and password from a registration or certificate request (k3s's headers).
fn node_credentials(headers: &hyper::HeaderMap) -> Result<(String, String), ApiError> {
    let get = |h: &str| headers.get(h).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty());
    match (get(nodepass::NAME_HEADER), get(nodepass::PASSWORD_HEADER)) {
        (Some(n), Some(p)) => Ok((n.to_lowercase(), p.to_string())),
        (None, _) => Err(ApiError::bad_request("node name not set")),
        (_, None) => Err(ApiError::bad_request("node password not set")),
    }
}

/// Checks the node password (creating its secret at first use); on refusal logs as k3s's
/// supervisor does and answers 403.
fn check_node_password(s: &State, conn: &ConnInfo, headers: &hyper::HeaderMap) -> Result<String, ApiError> {
    let (name, password) = node_credentials(headers)?;
    nodepass::ensure_secret(&s.kine, &name, &password).map(|()| name).inspect_err(|e| {
        error!("Sending HTTP/1.1 {} response to {}: {}", e.code, conn.peer, e.message);
    })
}

fn api_error(e: &ApiError) -> Resp {
    json_resp(StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &e.status())
}

/// The etcd members (k3s's `/db/info`): what a joining server needs to add itself.
async fn db_info(s: &State) -> Resp {
    let Some(node) = s.etcd.clone() else {
        return json_resp(StatusCode::NOT_FOUND, &status_json(404, "NotFound", "etcd datastore disabled"));
    };
    let members = tokio::task::spawn_blocking(move || match node.client.member_list() {
        Ok(m) => m,
        // As k3s: when the member list cannot be read, this member alone.
        Err(_) => vec![crate::etcd::MemberInfo {
            id: 0,
            name: node.member.name.clone(),
            peer_urls: vec![node.member.peer_url()],
            client_urls: vec![node.member.client_url()],
            is_learner: false,
        }],
    })
    .await
    .unwrap_or_default();
    json_resp(StatusCode::OK, &json!({"members": members}))
}

/// `k3s etcd-snapshot`'s requests. Errors are logged here and answered with their message, which
/// the CLI shows after "see server log for details".
async fn db_snapshot(s: &State, conn: &ConnInfo, m: &Method, body: Bytes) -> Resp {
    let fail = |code: u16, msg: String| {
        error!("Sending HTTP/1.1 {code} response to {}: {msg}", conn.peer);
        json_resp(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &status_json(code, "InternalError", &msg),
        )
    };
    if m != Method::POST {
        return fail(405, format!("{m} is not supported on /db/snapshot"));
    }
    let Some(node) = s.etcd.clone() else {
        return fail(500, "etcd datastore disabled".into());
    };
    match tokio::task::spawn_blocking(move || crate::snapshot::handle(&node, &body)).await {
        Ok(Ok(v)) => json_resp(StatusCode::OK, &v),
        Ok(Err(e)) => fail(500, format!("{e:#}")),
        Err(e) => fail(500, e.to_string()),
    }
}

async fn supervisor(
    s: &State,
    conn: &ConnInfo,
    who: Who,
    m: &Method,
    rest: &[&str],
    body: Bytes,
    headers: &hyper::HeaderMap,
) -> Resp {
    let node_ok = matches!(who, Who::Node | Who::Server | Who::Admin);
    match rest {
        ["config"] if m == Method::GET => {
            if !node_ok {
                return unauthorized();
            }
            json_resp(StatusCode::OK, &s.agent_config)
        }
        ["server-bootstrap"] if m == Method::GET => {
            if who != Who::Server {
                if who == Who::Node {
                    error!("Failed to authenticate request from {}: agent token may not join servers", conn.peer);
                }
                return unauthorized();
            }
            if s.etcd.is_none() {
                return json_resp(
                    StatusCode::BAD_REQUEST,
                    &status_json(400, "BadRequest", "this server does not use embedded etcd: start the first server with cluster-init to join servers"),
                );
            }
            json_resp(
                StatusCode::OK,
                &json!({"bootstrap": s.bootstrap, "critical": s.critical, "agentPassword": s.agent_password}),
            )
        }
        // The kubelet certificates of a node: k3s checks the node password here, so a node whose
        // password does not match never gets its configuration.
        [cert @ ("serving-kubelet.crt" | "client-kubelet.crt")] if m == Method::GET => {
            if !node_ok {
                return unauthorized();
            }
            let name = match check_node_password(s, conn, headers) {
                Ok(n) => n,
                Err(e) => return api_error(&e),
            };
            let b = &s.bootstrap;
            let leaf = if *cert == "serving-kubelet.crt" {
                let mut sans = vec![name.clone(), "localhost".to_string()];
                let ips = headers.get("k3s-Node-IP").and_then(|v| v.to_str().ok()).unwrap_or_default();
                sans.extend(ips.split(',').map(|i| i.trim().to_string()).filter(|i| !i.is_empty()));
                crate::pki::Ca { cert_pem: b.server_ca_crt.clone(), key_pem: b.server_ca_key.clone() }
                    .sign_server(&name, &sans)
            } else {
                crate::pki::Ca { cert_pem: b.client_ca_crt.clone(), key_pem: b.client_ca_key.clone() }
                    .sign_client(&format!("system:node:{name}"), Some("system:nodes"))
            };
            match leaf {
                Ok(l) => bytes_resp(StatusCode::OK, "text/plain", format!("{}{}", l.cert_pem, l.key_pem)),
                Err(e) => {
                    json_resp(StatusCode::INTERNAL_SERVER_ERROR, &status_json(500, "InternalError", &e.to_string()))
                }
            }
        }
        ["nodes"] if m == Method::POST => {
            if !node_ok {
                return unauthorized();
            }
            let reg: node::Registration = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => return json_resp(StatusCode::BAD_REQUEST, &status_json(400, "BadRequest", &e.to_string())),
            };
            match check_node_password(s, conn, headers) {
                Ok(n) if n == reg.name => {}
                Ok(n) => {
                    let msg = format!("header node name {n} does not match the registration of {}", reg.name);
                    return json_resp(StatusCode::BAD_REQUEST, &status_json(400, "BadRequest", &msg));
                }
                Err(e) => return api_error(&e),
            }
            match node::register(&s.kine, &reg, &s.cluster_cidr) {
                Ok(n) => {
                    nodepass::adopt(&s.kine, &reg.name, n["metadata"]["uid"].as_str().unwrap_or_default());
                    info!("Node {} registered from {}", reg.name, conn.peer);
                    json_resp(StatusCode::OK, &n)
                }
                Err(e) => {
                    json_resp(StatusCode::INTERNAL_SERVER_ERROR, &status_json(500, "InternalError", &e.to_string()))
                }
            }
        }
        ["nodes", name, "heartbeat"] if m == Method::PUT => {
            if !node_ok {
                return unauthorized();
            }
            match node::renew_lease(&s.kine, name) {
                Ok(true) => json_resp(StatusCode::OK, &json!({"renewed": name})),
                Ok(false) => not_found("nodes", name),
                Err(e) => {
                    json_resp(StatusCode::INTERNAL_SERVER_ERROR, &status_json(500, "InternalError", &e.to_string()))
                }
            }
        }
        _ => json_resp(
            StatusCode::NOT_FOUND,
            &status_json(404, "NotFound", "the server could not find the requested resource"),
        ),
    }
}

/// The Kubernetes API, answered from this server's datastore (its SQLite, or the etcd every HA
/// server shares).
async fn kube_api(s: &State, m: &Method, path: &str, path_q: &str, body: Bytes, headers: &hyper::HeaderMap) -> Resp {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let query = path_q.split_once('?').map(|(_, q)| q).unwrap_or_default().to_string();
    let (kine, method, path) = (s.kine.clone(), m.as_str().to_string(), path.to_string());
    let (accept, ctype, host) = (h("accept"), h("content-type"), h("host"));
    // SQLite and scrypt block: keep them off the async workers.
    let answer = tokio::task::spawn_blocking(move || {
        let req = crate::kubeapi::Request {
            method: &method,
            path: &path,
            query: &query,
            accept: &accept,
            content_type: &ctype,
            body: &body,
            host: &host,
        };
        crate::kubeapi::handle(&kine, &req)
    })
    .await;
    match answer {
        Ok(a) => bytes_resp(
            StatusCode::from_u16(a.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            a.content_type,
            a.body,
        ),
        Err(e) => json_resp(StatusCode::INTERNAL_SERVER_ERROR, &status_json(500, "InternalError", &e.to_string())),
    }
}
