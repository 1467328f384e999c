//! Delivery of the buffer to the hubs: for each hub, what it has not confirmed, oldest first, in
//! batches of at most [`MAX_BATCH_REPORTS`], over HTTPS with the node's certificate. A hub that
//! does not answer (or refuses) keeps its backlog; the others go on. The clock offset is measured
//! on the first hub that answers: hub time minus the midpoint of the request on the node's clock.

use std::time::Duration;

use super::buffer::Buffer;
use super::pki::{TlsError, TlsMaterial};
use super::probes::describe_reqwest;
use super::settings::Settings;
use crate::protocol::health::{BatchAnswer, HubRefusal, ReportBatch, HEALTH_PROTOCOL, MAX_BATCH_REPORTS, REPORTS_PATH};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// At most this many batches per hub at one interval, so that a long backlog does not hold the
/// next collection back for long.
const BATCHES_PER_ROUND: usize = 50;

pub struct HubClient {
    http: reqwest::Client,
    node: String,
    hubs: Vec<(String, String)>,
}

/// What one delivery round did.
#[derive(Debug, Default)]
pub struct Delivery {
    pub clock_offset_ms: Option<f64>,
    pub delivered: u64,
}

impl HubClient {
    pub fn new(settings: &Settings, tls: &TlsMaterial) -> Result<HubClient, TlsError> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls.client_config()?)
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_max_idle_per_host(1)
            .no_proxy()
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let port = settings.tuning.hub_port;
        let hubs = settings.hubs.iter().map(|h| (h.clone(), hub_url(h, port))).collect();
        Ok(HubClient { http, node: settings.node.clone(), hubs })
    }

    /// Sends every hub its backlog (bounded per round); confirms what each stored.
    pub async fn deliver(&self, buffer: &mut Buffer<'_>) -> Delivery {
        let mut out = Delivery::default();
        for (hub, url) in &self.hubs {
            for _ in 0..BATCHES_PER_ROUND {
                let reports = match buffer.pending(hub, MAX_BATCH_REPORTS) {
                    Ok(r) if r.is_empty() => break,
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!("{e}");
                        break;
                    }
                };
                let dropped_total = buffer.cursor(hub).map(|c| c.dropped).unwrap_or(0);
                let batch = ReportBatch {
                    protocol: HEALTH_PROTOCOL,
                    node: self.node.clone(),
                    stream: buffer.stream().to_string(),
                    dropped_total,
                    reports,
                };
                let sent_ms = crate::hub::now_ms();
                match self.post(url, &batch).await {
                    Ok(answer) => {
                        let back_ms = crate::hub::now_ms();
                        if out.clock_offset_ms.is_none() {
                            out.clock_offset_ms = Some(answer.hub_time_ms as f64 - (sent_ms + back_ms) as f64 / 2.0);
                        }
                        let before = buffer.backlog(hub);
                        if let Err(e) = buffer.confirm(hub, answer.accepted_through) {
                            tracing::error!("{e}");
                            break;
                        }
                        let confirmed = before.saturating_sub(buffer.backlog(hub));
                        out.delivered += confirmed as u64;
                        if confirmed == 0 {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!("hub {hub}: {e}; {} reports wait in the buffer", buffer.backlog(hub));
                        break;
                    }
                }
            }
        }
        out
    }

    async fn post(&self, url: &str, batch: &ReportBatch) -> Result<BatchAnswer, String> {
        let body = serde_json::to_vec(batch).expect("batches always serialize");
        let response = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| describe_reqwest(&e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| describe_reqwest(&e))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| format!("the hub's answer is not understood: {e}"));
        }
        let why = serde_json::from_slice::<HubRefusal>(&bytes)
            .map(|r| r.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(200).collect());
        Err(format!("refused ({status}): {why}"))
    }
}

/// `https://<address>:<port>/v1/reports` (IPv6 addresses in brackets).
pub fn hub_url(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("https://[{address}]:{port}{REPORTS_PATH}")
    } else {
        format!("https://{address}:{port}{REPORTS_PATH}")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Arc;

    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use hyper_util::rt::TokioIo;

    use super::*;
    use crate::daemon::pki;
    use crate::daemon::settings::Tuning;
    use crate::host::system::fake::FakeSystem;
    use crate::protocol::health::Report;
    use crate::protocol::node::Role;

    const AHEAD_MS: i64 = 3_600_000;

    /// A hub of the cluster (mTLS, the health protocol) whose clock is an hour ahead of ours:
    /// it stores every report it gets and answers with its own time.
    async fn hub_an_hour_ahead(tls: rustls::ServerConfig) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(stream) = acceptor.accept(tcp).await else { continue };
                let service = hyper::service::service_fn(|request: hyper::Request<hyper::body::Incoming>| async move {
                    let body = request.into_body().collect().await.unwrap().to_bytes();
                    let batch: ReportBatch = serde_json::from_slice(&body).unwrap();
                    let answer = BatchAnswer {
                        protocol: HEALTH_PROTOCOL,
                        accepted_through: batch.reports.last().map(|r| r.seq).unwrap_or(0),
                        hub_time_ms: crate::hub::now_ms() + AHEAD_MS,
                    };
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                        serde_json::to_vec(&answer).unwrap(),
                    ))))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        port
    }

    #[tokio::test]
    async fn the_clock_offset_is_the_hubs_time_minus_the_requests_midpoint_and_fails_the_clock_check() {
        let (ca, ca_key) = pki::generate_ca("lab", time::OffsetDateTime::now_utc()).unwrap();
        let hub_tls =
            pki::test_material(&ca, ca_key.expose(), "s1", "127.0.0.1", Role::Server).server_config().unwrap();
        let port = hub_an_hour_ahead(hub_tls).await;
        let settings = Settings {
            tuning: Tuning { hub_port: port, ..Tuning::default() },
            ..Settings::new("a1", Role::Agent, &["127.0.0.1"])
        };
        let client =
            HubClient::new(&settings, &pki::test_material(&ca, ca_key.expose(), "a1", "127.0.0.1", Role::Agent))
                .unwrap();
        let sys = FakeSystem::new();
        let mut buffer = Buffer::open(&sys, Path::new("/var/lib/k3node/buffer"), &settings.hubs, 100).unwrap();
        let report = Report {
            seq: 0,
            at_ms: crate::hub::now_ms(),
            interval_secs: 10,
            role: Role::Agent,
            k3s_version: None,
            checks: vec![],
            gauges: BTreeMap::new(),
        };
        buffer.append(report).unwrap();

        let delivery = client.deliver(&mut buffer).await;
        assert_eq!(delivery.delivered, 1);
        let offset = delivery.clock_offset_ms.expect("measured on the hub's answer");
        // The hub's clock is ahead: a positive offset (hub - node), within a loopback round trip.
        assert!((offset - AHEAD_MS as f64).abs() < 2_000.0, "{offset}");
        assert_eq!(buffer.backlog("127.0.0.1"), 0);
        // What the next report then says.
        let mut state = crate::daemon::probes::ProbeState::default();
        state.clock_offset_ms = Some(offset);
        let collected = crate::daemon::probes::collect_local(&sys, &settings, &mut state);
        let clock = collected.checks.iter().find(|c| c.name == "clock").expect("a clock check");
        assert_eq!(clock.state, crate::protocol::health::CheckState::Fail, "{clock:?}");
        // The reason carries the measured offset, signed; the hub's answer may fall before or after
        // the request's midpoint on a loaded machine, so the figure is compared, not its digits.
        let shown = clock.reason.strip_suffix(" ms against the hub's clock").expect("the reason's wording");
        assert!(shown.starts_with('+'), "{clock:?}");
        let shown: f64 = shown.parse().expect("a number of milliseconds");
        assert!((shown - offset).abs() <= 1.0, "{clock:?} for {offset}");
    }
}
