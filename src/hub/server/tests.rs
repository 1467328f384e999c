//! The hub over real TLS on loopback: mutual TLS, who may report for whom, bad and oversize
//! bodies, and that nothing is stored for any refusal.

use std::collections::BTreeMap;

use super::*;
use crate::daemon::pki::{self, TlsMaterial};
use crate::daemon::settings::Settings;
use crate::protocol::health::{FleetView, Report};
use crate::protocol::node::Role;
use crate::protocol::Secret;

struct Pki {
    ca: String,
    ca_key: Secret,
}

impl Pki {
    fn new() -> Pki {
        let (ca, ca_key) = pki::generate_ca("test", time::OffsetDateTime::now_utc()).unwrap();
        Pki { ca, ca_key }
    }

    fn material(&self, node: &str, role: Role) -> TlsMaterial {
        self.material_at(node, "127.0.0.1", role)
    }

    fn material_at(&self, node: &str, address: &str, role: Role) -> TlsMaterial {
        pki::test_material(&self.ca, self.ca_key.expose(), node, address, role)
    }
}

fn client(material: &TlsMaterial) -> reqwest::Client {
    reqwest::Client::builder().use_preconfigured_tls(material.client_config().unwrap()).build().unwrap()
}

async fn start_hub(pki: &Pki, dir: &std::path::Path) -> (Arc<Hub>, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (hub, port) = start_hub_on(listener, pki.material("s1", Role::Server), dir);
    (hub, format!("https://127.0.0.1:{port}"))
}

fn start_hub_on(listener: TcpListener, material: TlsMaterial, dir: &std::path::Path) -> (Arc<Hub>, u16) {
    let settings = Settings::new("s1", Role::Server, &["127.0.0.1"]);
    let open = || crate::hub::Store::open(&dir.join("hub.db"), 100).unwrap();
    let hub = Hub::new(settings, open(), open());
    let port = listener.local_addr().unwrap().port();
    let tls = Arc::new(material.server_config().unwrap());
    tokio::spawn(serve(hub.clone(), listener, tls));
    (hub, port)
}

fn batch(node: &str, seqs: &[u64]) -> ReportBatch {
    ReportBatch {
        protocol: HEALTH_PROTOCOL,
        node: node.into(),
        stream: "s".into(),
        dropped_total: 0,
        reports: seqs
            .iter()
            .map(|s| Report {
                seq: *s,
                at_ms: 0,
                interval_secs: 10,
                role: Role::Agent,
                k3s_version: None,
                checks: vec![],
                gauges: BTreeMap::new(),
            })
            .collect(),
    }
}

async fn parse<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> T {
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

fn stored(hub: &Hub) -> usize {
    hub.store.lock().unwrap().nodes().unwrap().len()
}

#[tokio::test]
async fn a_node_reports_for_itself_and_reads_the_fleet() {
    let (pki, dir) = (Pki::new(), tempfile::tempdir().unwrap());
    let (hub, url) = start_hub(&pki, dir.path()).await;
    let a1 = client(&pki.material("a1", Role::Agent));
    let response = a1
        .post(format!("{url}{REPORTS_PATH}"))
        .body(serde_json::to_vec(&batch("a1", &[1, 2])).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: BatchAnswer = parse(response).await;
    assert_eq!(answer.accepted_through, 2);
    assert!((answer.hub_time_ms - now_ms()).abs() < 5000);
    let view: FleetView = parse(a1.get(format!("{url}{FLEET_PATH}")).send().await.unwrap()).await;
    assert_eq!(view.nodes.iter().map(|n| (n.node.as_str(), n.last_seq)).collect::<Vec<_>>(), [("a1", 2)]);
    assert_eq!(stored(&hub), 1);
}

#[tokio::test]
async fn the_hub_takes_reports_over_ipv6_and_ipv4_alike() {
    let (pki, dir) = (Pki::new(), tempfile::tempdir().unwrap());
    // The daemon's own listener, on a free port: a server may be listed by either kind of address.
    let listener = crate::daemon::hub_listener(0).unwrap();
    let (hub, port) = start_hub_on(listener, pki.material_at("s1", "::1", Role::Server), dir.path());
    let a1 = client(&pki.material("a1", Role::Agent));
    for (url, seq) in [(format!("https://[::1]:{port}"), 1), (format!("https://127.0.0.1:{port}"), 2)] {
        let response = a1
            .post(format!("{url}{REPORTS_PATH}"))
            .body(serde_json::to_vec(&batch("a1", &[seq])).unwrap())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e:?}"));
        assert_eq!(response.status(), 200, "{url}");
    }
    let view: FleetView = parse(a1.get(format!("https://[::1]:{port}{FLEET_PATH}")).send().await.unwrap()).await;
    assert_eq!(view.nodes.iter().map(|n| (n.node.as_str(), n.last_seq)).collect::<Vec<_>>(), [("a1", 2)]);
    assert_eq!(stored(&hub), 1);
}

#[tokio::test]
async fn a_certificate_of_another_node_is_forbidden_and_nothing_is_stored() {
    let (pki, dir) = (Pki::new(), tempfile::tempdir().unwrap());
    let (hub, url) = start_hub(&pki, dir.path()).await;
    let a1 = client(&pki.material("a1", Role::Agent));
    let response = a1
        .post(format!("{url}{REPORTS_PATH}"))
        .body(serde_json::to_vec(&batch("a2", &[1])).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let refusal: HubRefusal = parse(response).await;
    assert!(refusal.error.contains("a node reports only for itself"), "{}", refusal.error);
    assert_eq!(stored(&hub), 0);
}

#[tokio::test]
async fn bad_and_oversize_bodies_are_refused_and_nothing_is_stored() {
    let (pki, dir) = (Pki::new(), tempfile::tempdir().unwrap());
    let (hub, url) = start_hub(&pki, dir.path()).await;
    let a1 = client(&pki.material("a1", Role::Agent));
    let post = |body: Vec<u8>| a1.post(format!("{url}{REPORTS_PATH}")).body(body).send();
    let not_json = post(b"{not json".to_vec()).await.unwrap();
    assert_eq!(not_json.status(), 400);
    let newer =
        post(br#"{"protocol":99,"node":"a1","stream":"s","dropped_total":0,"reports":[]}"#.to_vec()).await.unwrap();
    assert_eq!(newer.status(), 400);
    let refusal: HubRefusal = parse(newer).await;
    assert!(refusal.error.contains("protocol 99 is not read by this hub"), "{}", refusal.error);
    assert_eq!(refusal.protocols, (MIN_HEALTH_PROTOCOL, HEALTH_PROTOCOL));
    let out_of_order = post(serde_json::to_vec(&batch("a1", &[2, 1])).unwrap()).await.unwrap();
    assert_eq!(out_of_order.status(), 400);
    let huge = post(vec![b' '; MAX_BATCH_BYTES + 1]).await.unwrap();
    assert_eq!(huge.status(), 413);
    // Without a Content-Length (chunked), the limit still holds as the body grows.
    let stream = futures::stream::iter((0..40).map(|_| Ok::<_, std::io::Error>(vec![b' '; 32 * 1024])));
    let chunked =
        a1.post(format!("{url}{REPORTS_PATH}")).body(reqwest::Body::wrap_stream(stream)).send().await.unwrap();
    assert_eq!(chunked.status(), 413);
    assert_eq!(stored(&hub), 0);
}

#[tokio::test]
async fn a_client_without_a_certificate_of_the_cluster_is_refused_in_the_handshake() {
    let (pki, dir) = (Pki::new(), tempfile::tempdir().unwrap());
    let (hub, url) = start_hub(&pki, dir.path()).await;
    // Same names, another CA: the hub's verifier refuses it before any HTTP.
    let stranger = Pki::new().material("a1", Role::Agent);
    let mixed = TlsMaterial { ca_cert_pem: pki.ca.clone(), ..stranger };
    let err = client(&mixed)
        .post(format!("{url}{REPORTS_PATH}"))
        .body(serde_json::to_vec(&batch("a1", &[1])).unwrap())
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");
    // No client certificate at all.
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(pki.ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let anonymous = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let anonymous = reqwest::Client::builder().use_preconfigured_tls(anonymous).build().unwrap();
    assert!(anonymous.get(format!("{url}{FLEET_PATH}")).send().await.is_err());
    assert_eq!(stored(&hub), 0);
    let refused = hub.counters.requests.with_label_values(&[REPORTS_PATH, "200"]).get();
    assert_eq!(refused, 0, "no request reached HTTP");
}

use rustls::pki_types::pem::PemObject;

#[tokio::test]
async fn a_readers_certificate_reads_the_fleet_and_the_metrics_and_its_reports_are_forbidden() {
    let (pki, dir) = (Pki::new(), tempfile::tempdir().unwrap());
    let (hub, url) = start_hub(&pki, dir.path()).await;
    let key = pki::generate_node_key().unwrap();
    let csr = pki::certificate_request(key.expose()).unwrap();
    let now = time::OffsetDateTime::now_utc();
    // Named like a node, to show that the name is not what refuses it.
    let cert = pki::sign_reader(&pki.ca, pki.ca_key.expose(), &csr, "a1", now).unwrap();
    let reader = client(&TlsMaterial { ca_cert_pem: pki.ca.clone(), node_cert_pem: cert, node_key_pem: key });
    let a1 = client(&pki.material("a1", Role::Agent));
    let body = serde_json::to_vec(&batch("a1", &[1])).unwrap();
    assert_eq!(a1.post(format!("{url}{REPORTS_PATH}")).body(body.clone()).send().await.unwrap().status(), 200);

    let refused = reader.post(format!("{url}{REPORTS_PATH}")).body(body).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("reader"));
    let view: FleetView = parse(reader.get(format!("{url}{FLEET_PATH}")).send().await.unwrap()).await;
    assert_eq!(view.nodes.iter().map(|n| (n.node.as_str(), n.last_seq)).collect::<Vec<_>>(), [("a1", 1)]);
    let metrics = reader.get(format!("{url}{METRICS_PATH}")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.unwrap().contains("k3node_node_reports_received_total{node=\"a1\"} 1"));
    assert_eq!(hub.store.lock().unwrap().history_seqs("a1").unwrap(), vec![1]);
}
