//! The kubelet's health endpoint: `GET /healthz` on 127.0.0.1:10248 (kubelet's defaults
//! `healthz-bind-address` and `healthz-port`, loopback only: contract section 5) answers `ok`.
//! k3s runs the kubelet inside its own process, so the endpoint lives exactly as long as the
//! node's k3s does. A port already taken is logged and tried again every 5 s, as the kubelet
//! does; the process goes on without it.

use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

pub const HEALTHZ_ADDRESS: &str = "127.0.0.1:10248";

/// Binds the endpoint (so that it answers once this returns, if the port was free) and serves
/// it in the background.
pub async fn start_healthz() {
    let first = tokio::net::TcpListener::bind(HEALTHZ_ADDRESS).await;
    tokio::spawn(async move {
        let mut bound = first;
        let listener = loop {
            match bound {
                Ok(listener) => break listener,
                Err(e) => {
                    crate::error!("Failed to start healthz server: listen tcp {HEALTHZ_ADDRESS}: {e}");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    bound = tokio::net::TcpListener::bind(HEALTHZ_ADDRESS).await;
                }
            }
        };
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    Ok::<_, std::convert::Infallible>(answer(req.uri().path()))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    });
}

/// `/healthz` (and its sub-checks, which the kubelet serves too) is `ok`; anything else 404.
fn answer(path: &str) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/healthz" | "/healthz/ping" | "/healthz/syncloop" => (StatusCode::OK, "ok"),
        _ => (StatusCode::NOT_FOUND, "404 page not found\n"),
    };
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("a valid response")
}
