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
