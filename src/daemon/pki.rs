//! The per-cluster hub CA and the node certificates it signs, and the TLS configurations built
//! from them (rustls, ring), for both ends of the daemon-hub link.
//!
//! Trust model:
//! - One CA per cluster (ECDSA P-256, 10 years), made by `up` the first time and kept on the
//!   servers only (`ca.key`, 0600), from where later runs read it back: the operator keeps no state.
//! - Each node makes its own key (0600) and sends only a certificate request; `up` signs a
//!   certificate (1 year) naming the node: CN and a DNS name = the node name, plus its address,
//!   and on servers 127.0.0.1 (the helper asks the local hub over loopback). A certificate is
//!   re-issued only when it is not signed by the CA, is for another key or other names, or has
//!   less than [`RENEW_BEFORE_DAYS`] left, so that a re-run of `up` changes nothing.
//! - The hub requires a client certificate signed by the CA (an unknown client never gets past
//!   the TLS handshake) and takes the reporting node's name from it ([`node_name`]).

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

use crate::protocol::node::Role;
use crate::protocol::Secret;

/// A node certificate with less time left than this is re-issued by `up`.
pub const RENEW_BEFORE_DAYS: i64 = 30;
const NODE_CERT_DAYS: i64 = 365;
const CA_DAYS: i64 = 3650;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{what}: {message}")]
    Bad { what: &'static str, message: String },
}

fn bad(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |e| PkiError::Bad { what, message: e.to_string() }
}

/// A new CA for `cluster`: (certificate PEM, key PEM).
pub fn generate_ca(cluster: &str, now: OffsetDateTime) -> Result<(String, Secret), PkiError> {
    let key = KeyPair::generate().map_err(bad("cannot make the hub CA's key"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("k3node hub CA ({cluster})"));
    dn.push(DnType::OrganizationName, "k3node");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(CA_DAYS);
    let cert = params.self_signed(&key).map_err(bad("cannot sign the hub CA"))?;
    Ok((cert.pem(), Secret::new(key.serialize_pem())))
}

/// A new node key (PEM).
pub fn generate_node_key() -> Result<Secret, PkiError> {
    Ok(Secret::new(KeyPair::generate().map_err(bad("cannot make the node's key"))?.serialize_pem()))
}

/// A certificate request for `key_pem` (the names are the signer's to choose).
pub fn certificate_request(key_pem: &str) -> Result<String, PkiError> {
    let key = KeyPair::from_pem(key_pem).map_err(bad("the node's key is not a readable PEM key"))?;
    let csr = CertificateParams::default().serialize_request(&key).map_err(bad("cannot make a certificate request"))?;
    csr.pem().map_err(bad("cannot encode the certificate request"))
}

/// The names a node's certificate carries: its name, its address, and on servers loopback.
pub fn node_names(node: &str, address: &str, role: Role) -> Vec<String> {
    let mut names = vec![node.to_string()];
    if address != node {
        names.push(address.to_string());
    }
    if role == Role::Server && !names.iter().any(|n| n == "127.0.0.1") {
        names.push("127.0.0.1".to_string());
    }
    names
}

fn san(name: &str) -> Result<SanType, PkiError> {
    match name.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(SanType::IpAddress(ip)),
        Err(_) => Ok(SanType::DnsName(
            name.to_string()
                .try_into()
                .map_err(|e: rcgen::Error| PkiError::Bad { what: "bad name", message: e.to_string() })?,
        )),
    }
}

/// Signs the node's request with the CA: CN = node, the given names, client and server use.
pub fn sign_node(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    csr_pem: &str,
    node: &str,
    role: Role,
    names: &[String],
    now: OffsetDateTime,
) -> Result<String, PkiError> {
    let uses = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    sign(ca_cert_pem, ca_key_pem, csr_pem, node, role.as_str(), names, uses, now)
}

/// What a reader's certificate says where a node's says its role.
pub const READER_UNIT: &str = "reader";

/// Signs a reader's request with the CA: CN = `name`, OU = [`READER_UNIT`], client use only. A
/// reader (Prometheus, a dashboard) reads every hub's fleet view and metrics; the hub refuses
/// its reports, whatever node it names.
pub fn sign_reader(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    csr_pem: &str,
    name: &str,
    now: OffsetDateTime,
) -> Result<String, PkiError> {
    let uses = vec![ExtendedKeyUsagePurpose::ClientAuth];
    sign(ca_cert_pem, ca_key_pem, csr_pem, name, READER_UNIT, &[], uses, now)
}

#[allow(clippy::too_many_arguments)]
fn sign(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    csr_pem: &str,
    name: &str,
    unit: &str,
    names: &[String],
    uses: Vec<ExtendedKeyUsagePurpose>,
    now: OffsetDateTime,
) -> Result<String, PkiError> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(bad("the hub CA's key is not readable"))?;
    let issuer =
        Issuer::from_ca_cert_pem(ca_cert_pem, ca_key).map_err(bad("the hub CA's certificate is not readable"))?;
    let mut csr =
        CertificateSigningRequestParams::from_pem(csr_pem).map_err(bad("the certificate request is not valid"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, "k3node");
    dn.push(DnType::OrganizationalUnitName, unit);
    params.distinguished_name = dn;
    params.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_, _>>()?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = uses;
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(NODE_CERT_DAYS);
    params.use_authority_key_identifier_extension = true;
    csr.params = params;
    Ok(csr.signed_by(&issuer).map_err(bad("cannot sign the certificate"))?.pem())
}

/// The end of the validity of `cert_pem`'s first certificate.
pub fn not_after(cert_pem: &str) -> Option<OffsetDateTime> {
    let der = first_der(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp()).ok()
}

fn first_der(pem: &str) -> Option<Vec<u8>> {
    CertificateDer::pem_slice_iter(pem.as_bytes()).next()?.ok().map(|c| c.to_vec())
}

/// Why `cert_pem` does not do for `node` (None: it does): not signed by the CA, another key than
/// the request's, other names, or less than [`RENEW_BEFORE_DAYS`] left.
pub fn reissue_reason(
    cert_pem: &str,
    ca_cert_pem: &str,
    csr_pem: &str,
    node: &str,
    names: &[String],
    now: OffsetDateTime,
) -> Option<String> {
    use x509_parser::prelude::*;
    let Some(der) = first_der(cert_pem) else { return Some("no readable certificate".into()) };
    let Ok((_, cert)) = X509Certificate::from_der(&der) else { return Some("no readable certificate".into()) };
    let ca_der = first_der(ca_cert_pem)?;
    let Ok((_, ca)) = X509Certificate::from_der(&ca_der) else { return Some("no readable CA".into()) };
    if cert.verify_signature(Some(ca.public_key())).is_err() {
        return Some("signed by another CA".into());
    }
    let csr_der = pem::parse_x509_pem(csr_pem.as_bytes()).ok()?.1.contents;
    let Ok((_, csr)) = x509_parser::certification_request::X509CertificationRequest::from_der(&csr_der) else {
        return Some("unreadable certificate request".into());
    };
    if csr.certification_request_info.subject_pki.raw != cert.public_key().raw {
        return Some("made for another key".into());
    }
    if node_name(&der).as_deref() != Some(node) {
        return Some("names another node".into());
    }
    let mut have: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    GeneralName::IPAddress(b) => ip_of(b).map(|ip| ip.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let mut want = names.to_vec();
    have.sort();
    want.sort();
    if have != want {
        return Some(format!("names {} instead of {}", have.join(", "), want.join(", ")));
    }
    let left_days = (cert.validity().not_after.timestamp() - now.unix_timestamp()) / 86400;
    if left_days < RENEW_BEFORE_DAYS {
        return Some(format!("expires in {left_days} days"));
    }
    None
}

fn ip_of(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

/// The node a certificate (DER) names: its subject's common name.
pub fn node_name(der: &[u8]) -> Option<String> {
    Some(peer(der)?.name)
}

/// Who a client certificate (DER) of the cluster is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its subject's common name: a node's name, or a reader's.
    pub name: String,
    /// A reader's certificate ([`sign_reader`]): it reads, it never reports.
    pub reader: bool,
}

pub fn peer(der: &[u8]) -> Option<Peer> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    let reader = cert.subject().iter_organizational_unit().any(|u| u.as_str() == Ok(READER_UNIT));
    Some(Peer { name, reader })
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    Material { path: &'static str, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The node's identity and the cluster's CA, as read from /etc/k3node/tls.
pub struct TlsMaterial {
    pub ca_cert_pem: String,
    pub node_cert_pem: String,
    pub node_key_pem: Secret,
}

impl TlsMaterial {
    fn roots(&self) -> Result<rustls::RootCertStore, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_cert_pem.as_bytes()) {
            let cert =
                cert.map_err(|e| TlsError::Material { path: super::settings::CA_CERT, message: e.to_string() })?;
            roots
                .add(cert)
                .map_err(|e| TlsError::Material { path: super::settings::CA_CERT, message: e.to_string() })?;
        }
        if roots.is_empty() {
            return Err(TlsError::Material { path: super::settings::CA_CERT, message: "holds no certificate".into() });
        }
        Ok(roots)
    }

    fn chain_and_key(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(self.node_cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Material { path: super::settings::NODE_CERT, message: e.to_string() })?;
        if chain.is_empty() {
            return Err(TlsError::Material {
                path: super::settings::NODE_CERT,
                message: "holds no certificate".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(self.node_key_pem.expose().as_bytes()).map_err(|_| {
            TlsError::Material { path: super::settings::NODE_KEY, message: "holds no readable key".into() }
        })?;
        Ok((chain, key))
    }

    /// The hub's side: only clients with a certificate of the cluster's CA get through.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), provider.clone())
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
        let (chain, key) = self.chain_and_key()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// The daemon's side: trusts only the cluster's CA, presents the node's certificate.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (chain, key) = self.chain_and_key()?;
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsError::Config(e.to_string()))
    }
}

/// A node's TLS material signed by `ca` now, for tests that run a hub and its clients.
#[cfg(test)]
pub(crate) fn test_material(ca: &str, ca_key: &str, node: &str, address: &str, role: Role) -> TlsMaterial {
    let key = generate_node_key().unwrap();
    let csr = certificate_request(key.expose()).unwrap();
    let names = node_names(node, address, role);
    let cert = sign_node(ca, ca_key, &csr, node, role, &names, OffsetDateTime::now_utc()).unwrap();
    TlsMaterial { ca_cert_pem: ca.to_string(), node_cert_pem: cert, node_key_pem: key }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    #[test]
    fn a_signed_node_certificate_names_the_node_and_is_current_until_it_must_be_renewed() {
        let (ca, ca_key) = generate_ca("lab", now()).unwrap();
        let key = generate_node_key().unwrap();
        let csr = certificate_request(key.expose()).unwrap();
        let names = node_names("n1", "10.0.0.5", Role::Server);
        assert_eq!(names, ["n1", "10.0.0.5", "127.0.0.1"]);
        let cert = sign_node(&ca, ca_key.expose(), &csr, "n1", Role::Server, &names, now()).unwrap();
        assert_eq!(node_name(&first_der(&cert).unwrap()).as_deref(), Some("n1"));
        assert_eq!(reissue_reason(&cert, &ca, &csr, "n1", &names, now()), None);
        // Eleven months later it is due.
        let later = now() + Duration::days(340);
        assert!(reissue_reason(&cert, &ca, &csr, "n1", &names, later).unwrap().starts_with("expires in"));
        // Another address, another node, another key, another CA: each is a reason.
        let moved = node_names("n1", "10.0.0.6", Role::Server);
        assert!(reissue_reason(&cert, &ca, &csr, "n1", &moved, now()).unwrap().starts_with("names"));
        assert_eq!(reissue_reason(&cert, &ca, &csr, "n2", &names, now()).as_deref(), Some("names another node"));
        let other_csr = certificate_request(generate_node_key().unwrap().expose()).unwrap();
        assert_eq!(
            reissue_reason(&cert, &ca, &other_csr, "n1", &names, now()).as_deref(),
            Some("made for another key")
        );
        let (other_ca, _) = generate_ca("lab", now()).unwrap();
        assert_eq!(
            reissue_reason(&cert, &other_ca, &csr, "n1", &names, now()).as_deref(),
            Some("signed by another CA")
        );
    }

    #[test]
    fn a_readers_certificate_says_so_and_a_nodes_does_not() {
        let (ca, ca_key) = generate_ca("lab", now()).unwrap();
        let csr = certificate_request(generate_node_key().unwrap().expose()).unwrap();
        let reader = sign_reader(&ca, ca_key.expose(), &csr, "prometheus", now()).unwrap();
        let names = node_names("n1", "10.0.0.5", Role::Agent);
        let node = sign_node(&ca, ca_key.expose(), &csr, "n1", Role::Agent, &names, now()).unwrap();
        assert_eq!(peer(&first_der(&reader).unwrap()), Some(Peer { name: "prometheus".into(), reader: true }));
        assert_eq!(peer(&first_der(&node).unwrap()), Some(Peer { name: "n1".into(), reader: false }));
        assert_eq!(not_after(&reader), Some(now() + Duration::days(NODE_CERT_DAYS)));
    }

    #[test]
    fn tls_configurations_build_from_the_material() {
        let (ca, ca_key) = generate_ca("lab", OffsetDateTime::now_utc()).unwrap();
        let key = generate_node_key().unwrap();
        let csr = certificate_request(key.expose()).unwrap();
        let names = node_names("n1", "127.0.0.1", Role::Server);
        let cert =
            sign_node(&ca, ca_key.expose(), &csr, "n1", Role::Server, &names, OffsetDateTime::now_utc()).unwrap();
        let material = TlsMaterial { ca_cert_pem: ca, node_cert_pem: cert, node_key_pem: key };
        material.server_config().unwrap();
        material.client_config().unwrap();
        let broken = TlsMaterial { node_key_pem: Secret::new("nope"), ..material };
        let e = broken.client_config().unwrap_err().to_string();
        assert!(e.contains("node.key") && !e.contains("nope"), "{e}");
    }
}
