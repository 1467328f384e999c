//! Cluster CAs and certificates, with k3s's file names under server/tls.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::path::Path;
use time::{Duration, OffsetDateTime};

pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
}

pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp-standin");
    {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

impl Ca {
    pub fn generate(cn_prefix: &str) -> Result<Ca> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{cn_prefix}@{}", crate::timefmt::now_secs()));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        let cert = params.self_signed(&key)?;
        Ok(Ca { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// `<dir>/<name>.crt` + `.key`; created when absent.
    pub fn load_or_create(dir: &Path, name: &str, cn_prefix: &str) -> Result<Ca> {
        if let Some(ca) = Self::load(dir, name)? {
            return Ok(ca);
        }
        let ca = Self::generate(cn_prefix)?;
        ca.save(dir, name)?;
        Ok(ca)
    }

    pub fn load(dir: &Path, name: &str) -> Result<Option<Ca>> {
        let crt = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        if crt.exists() && key.exists() {
            return Ok(Some(Ca { cert_pem: std::fs::read_to_string(&crt)?, key_pem: std::fs::read_to_string(&key)? }));
        }
        Ok(None)
    }

    pub fn save(&self, dir: &Path, name: &str) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        write_private(&dir.join(format!("{name}.key")), self.key_pem.as_bytes())?;
        let crt = dir.join(format!("{name}.crt"));
        write_private(&crt, self.cert_pem.as_bytes())?;
        set_mode(&crt, 0o644)?;
        Ok(())
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>> {
        let key = KeyPair::from_pem(&self.key_pem).context("CA key")?;
        Issuer::from_ca_cert_pem(&self.cert_pem, key).context("CA certificate")
    }

    fn sign(&self, mut params: CertificateParams) -> Result<Leaf> {
        let key = KeyPair::generate()?;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(365);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Serving certificate: SANs are DNS names or IP addresses.
    pub fn sign_server(&self, cn: &str, sans: &[String]) -> Result<Leaf> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        dn.push(DnType::OrganizationName, "k3s");
        params.distinguished_name = dn;
        params.subject_alt_names = san_list(sans);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A certificate for both ends of a connection (etcd's serving and peer certificates: a
    /// member is a server to its clients and peers, and a client of its peers).
    pub fn sign_server_client(&self, cn: &str, sans: &[String]) -> Result<Leaf> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.subject_alt_names = san_list(sans);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    pub fn sign_client(&self, cn: &str, org: Option<&str>) -> Result<Leaf> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        if let Some(o) = org {
            dn.push(DnType::OrganizationName, o);
        }
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// True if `cert_pem` was issued by this CA (same issuer name and a valid signature chain is
    /// assumed: the stand-in only ever writes certificates it signed itself).
    pub fn issued(&self, cert_pem: &str) -> bool {
        let subject = match first_der(&self.cert_pem) {
            Some(d) => d,
            None => return false,
        };
        let leaf = match first_der(cert_pem) {
            Some(d) => d,
            None => return false,
        };
        let (Ok((_, ca)), Ok((_, cert))) =
            (x509_parser::parse_x509_certificate(&subject), x509_parser::parse_x509_certificate(&leaf))
        else {
            return false;
        };
        if cert.validity().not_after.timestamp() < crate::timefmt::now_secs() + 86_400 {
            return false;
        }
        ca.subject().as_raw() == cert.issuer().as_raw() && cert.verify_signature(Some(ca.public_key())).is_ok()
    }
}

/// SANs from names and addresses, without duplicates; what is neither is left out.
fn san_list(sans: &[String]) -> Vec<SanType> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = vec![];
    for s in sans {
        if s.is_empty() || !seen.insert(s.clone()) {
            continue;
        }
        let san = match s.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => match s.clone().try_into() {
                Ok(n) => SanType::DnsName(n),
                Err(_) => continue,
            },
        };
        out.push(san);
    }
    out
}

pub fn first_der(pem_text: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    CertificateDer::pem_slice_iter(pem_text.as_bytes()).next()?.ok().map(|c| c.to_vec())
}

pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Writes a leaf (`.crt` 0644 with the CA appended, as k3s bundles them; `.key` 0600).
pub fn save_leaf(dir: &Path, name: &str, leaf: &Leaf, ca: &Ca) -> Result<()> {
    write_private(&dir.join(format!("{name}.key")), leaf.key_pem.as_bytes())?;
    let crt = dir.join(format!("{name}.crt"));
    write_private(&crt, format!("{}{}", leaf.cert_pem, ca.cert_pem).as_bytes())?;
    set_mode(&crt, 0o644)?;
    Ok(())
}

pub fn load_leaf(dir: &Path, name: &str) -> Option<Leaf> {
    let cert_pem = std::fs::read_to_string(dir.join(format!("{name}.crt"))).ok()?;
    let key_pem = std::fs::read_to_string(dir.join(format!("{name}.key"))).ok()?;
    Some(Leaf { cert_pem, key_pem })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_signs_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path(), "client-ca", "k3s-client-ca").unwrap();
        let again = Ca::load_or_create(dir.path(), "client-ca", "k3s-client-ca").unwrap();
        assert_eq!(ca.cert_pem, again.cert_pem);
        let leaf = again.sign_client("system:admin", Some("system:masters")).unwrap();
        assert!(ca.issued(&leaf.cert_pem));
        let other = Ca::generate("other").unwrap();
        assert!(!other.issued(&leaf.cert_pem));
        let srv = ca.sign_server("k3s", &["127.0.0.1".into(), "localhost".into(), "localhost".into()]).unwrap();
        assert!(ca.issued(&srv.cert_pem));
    }
}
