//! The hub's HTTPS endpoint, mutual TLS only.
//!
//! - A client without a certificate of the cluster's CA is refused during the TLS handshake:
//!   it never reaches HTTP, and nothing about it is stored.
//! - `POST /v1/reports`: a [`ReportBatch`] of the node the client certificate names. Another
//!   node's name is 403, a body over [`MAX_BATCH_BYTES`] is 413 (refused from its
//!   Content-Length before it is read, or as soon as it grows past the limit), anything that is
//!   not a well-formed batch of a protocol the hub reads is 400. In every one of these cases
//!   nothing is stored. A stored batch is answered with [`BatchAnswer`].
//! - `GET /v1/fleet`: the [`FleetView`] as JSON; `GET /metrics`: Prometheus text. Any node of
//!   the cluster may read them (the cluster's client certificate is the credential), and so may
//!   a reader (`k3node metrics-cert`: a certificate of the CA marked as a reader's), whose
//!   reports are refused (403) whatever node they name.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::{now_ms, Hub};
use crate::daemon::pki::{self, Peer};
use crate::protocol::health::{
    BatchAnswer, HubRefusal, ReportBatch, FLEET_PATH, HEALTH_PROTOCOL, MAX_BATCH_BYTES, MAX_BATCH_REPORTS,
    METRICS_PATH, MIN_HEALTH_PROTOCOL, REPORTS_PATH,
};

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

type Answer = Response<Full<Bytes>>;

/// Accepts connections until the listener fails; each connection is served on its own task.
pub async fn serve(hub: Arc<Hub>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!("hub: accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, hub) = (acceptor.clone(), hub.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::info!("hub: TLS handshake with {peer} refused: {e}");
                    return;
                }
                Err(_) => return,
            };
            let Some(client) =
                tls.get_ref().1.peer_certificates().and_then(|chain| chain.first()).and_then(|cert| pki::peer(cert))
            else {
                tracing::info!("hub: {peer}'s certificate names no node");
                return;
            };
            let client = Arc::new(client);
            let service = hyper::service::service_fn(move |request| {
                let (hub, client) = (hub.clone(), client.clone());
                async move { Ok::<_, Infallible>(handle(&hub, &client, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

async fn handle(hub: &Arc<Hub>, client: &Peer, request: Request<Incoming>) -> Answer {
    let path = request.uri().path().to_string();
    let answer = match (request.method(), path.as_str()) {
        (&Method::POST, REPORTS_PATH) if client.reader => {
            tracing::warn!("hub: the reader {:?} tried to report: refused", client.name);
            refuse(
                StatusCode::FORBIDDEN,
                &format!("{:?} holds a reader's certificate: it reads, it does not report", client.name),
            )
        }
        (&Method::POST, REPORTS_PATH) => reports(hub, &client.name, request).await,
        (&Method::GET, FLEET_PATH) => fleet(hub).await,
        (&Method::GET, METRICS_PATH) => metrics(hub).await,
        (_, REPORTS_PATH | FLEET_PATH | METRICS_PATH) => refuse(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => refuse(StatusCode::NOT_FOUND, &format!("no such path: {path}")),
    };
    let shown = if [REPORTS_PATH, FLEET_PATH, METRICS_PATH].contains(&path.as_str()) { path.as_str() } else { "other" };
    hub.counters.requests.with_label_values(&[shown, answer.status().as_str()]).inc();
    answer
}

fn json(status: StatusCode, body: Vec<u8>) -> Answer {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

fn refuse(status: StatusCode, error: &str) -> Answer {
    let body = HubRefusal { error: error.to_string(), protocols: (MIN_HEALTH_PROTOCOL, HEALTH_PROTOCOL) };
    json(status, serde_json::to_vec(&body).expect("serializes"))
}

async fn reports(hub: &Arc<Hub>, node: &str, request: Request<Incoming>) -> Answer {
    let arrived = std::time::Instant::now();
    let declared = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > MAX_BATCH_BYTES) {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, &format!("a batch is at most {MAX_BATCH_BYTES} bytes"));
    }
    let body = match Limited::new(request.into_body(), MAX_BATCH_BYTES).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return refuse(StatusCode::PAYLOAD_TOO_LARGE, &format!("a batch is at most {MAX_BATCH_BYTES} bytes"));
        }
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &format!("cannot read the body: {e}")),
    };
    let batch = match parse_batch(&body) {
        Ok(batch) => batch,
        Err(message) => return refuse(StatusCode::BAD_REQUEST, &message),
    };
    if batch.node != node {
        tracing::warn!("hub: {node} tried to report as {:?}: refused", batch.node);
        return refuse(
            StatusCode::FORBIDDEN,
            &format!("this certificate is {node}'s: a node reports only for itself, not for {:?}", batch.node),
        );
    }
    match hub.store_batch(batch, now_ms(), body.len()).await {
        Ok(stored) => {
            let answer = BatchAnswer {
                protocol: HEALTH_PROTOCOL,
                accepted_through: stored.accepted_through,
                hub_time_ms: now_ms(),
            };
            let answer = json(StatusCode::OK, serde_json::to_vec(&answer).expect("serializes"));
            hub.counters.ingest.observe(arrived.elapsed().as_secs_f64());
            answer
        }
        Err(super::Refused::Busy) => {
            refuse(StatusCode::SERVICE_UNAVAILABLE, "the hub is busy: the node keeps its reports and sends them again")
        }
        Err(super::Refused::Store(e)) => {
            tracing::error!("hub: {e}");
            refuse(StatusCode::SERVICE_UNAVAILABLE, "the hub cannot store reports right now")
        }
    }
}

/// A batch the hub can store: a protocol it reads, a node name, reports in increasing order.
pub fn parse_batch(body: &[u8]) -> Result<ReportBatch, String> {
    // The version first, so that a newer node hears "protocol", not "unknown field".
    let raw: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let protocol = raw.get("protocol").and_then(|p| p.as_u64()).ok_or("the batch has no protocol version")?;
    if !(MIN_HEALTH_PROTOCOL as u64..=HEALTH_PROTOCOL as u64).contains(&protocol) {
        return Err(format!(
            "health protocol {protocol} is not read by this hub (it reads {MIN_HEALTH_PROTOCOL} to {HEALTH_PROTOCOL}): \
             the node keeps its reports until its hub is upgraded"
        ));
    }
    let batch: ReportBatch = serde_json::from_value(raw).map_err(|e| format!("not a valid batch: {e}"))?;
    if batch.node.is_empty() || batch.stream.is_empty() {
        return Err("a batch names its node and its stream".into());
    }
    if batch.reports.len() > MAX_BATCH_REPORTS {
        return Err(format!("a batch holds at most {MAX_BATCH_REPORTS} reports"));
    }
    if batch.reports.windows(2).any(|w| w[1].seq <= w[0].seq) || batch.reports.first().is_some_and(|r| r.seq == 0) {
        return Err("the reports of a batch have increasing sequence numbers from 1".into());
    }
    Ok(batch)
}

async fn fleet(hub: &Arc<Hub>) -> Answer {
    let hub = hub.clone();
    match tokio::task::spawn_blocking(move || hub.view(now_ms())).await {
        Ok(Ok((view, _))) => json(StatusCode::OK, serde_json::to_vec(&view).expect("serializes")),
        Ok(Err(e)) => refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        Err(_) => refuse(StatusCode::INTERNAL_SERVER_ERROR, "the hub's store task failed"),
    }
}

async fn metrics(hub: &Arc<Hub>) -> Answer {
    let hub = hub.clone();
    let text = tokio::task::spawn_blocking(move || {
        hub.view(now_ms()).map(|(view, gauges)| super::metrics::render(&view, &gauges, &hub.counters))
    })
    .await;
    match text {
        Ok(Ok(text)) => Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
            .body(Full::new(Bytes::from(text)))
            .expect("a valid response"),
        Ok(Err(e)) => refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        Err(_) => refuse(StatusCode::INTERNAL_SERVER_ERROR, "the hub's store task failed"),
    }
}

#[cfg(test)]
mod tests;
