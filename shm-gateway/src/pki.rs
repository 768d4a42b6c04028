//! Certificates: reading PEM files, and `make-certs` (a CA and certificates it signs, with rcgen).

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use shm_channel::net::Identity;
use shm_channel::net::quic::{CertificateDer, PrivateKeyDer};

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct PkiError {
    path: String,
    reason: String,
}

fn pki_err(path: &Path, reason: impl std::fmt::Display) -> PkiError {
    PkiError {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pki_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pki_err(path, e))?;
    if certs.is_empty() {
        return Err(pki_err(path, "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pki_err(path, e))
}

/// A certificate chain and its key, from PEM files.
pub fn load_identity(cert: &Path, key: &Path) -> Result<Identity, PkiError> {
    Ok(Identity::new(load_certs(cert)?, load_key(key)?))
}

/// What `make-certs` writes.
#[derive(Debug)]
pub struct MadeCerts {
    /// The CA certificate (PEM).
    pub ca_pem: String,
    /// Per name: its certificate (PEM) and private key (PEM, PKCS#8).
    pub leaves: Vec<(String, String, String)>,
}

/// A new CA named `ca_name` and, for each of `names`, a certificate it signs for that
/// DNS name (usable by servers and clients: both key usages).
pub fn make_certs(ca_name: &str, names: &[String]) -> Result<MadeCerts, rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let mut leaves = Vec::new();
    for name in names {
        let mut p = CertificateParams::new(vec![name.clone()])?;
        p.distinguished_name.push(DnType::CommonName, name.as_str());
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &issuer)?;
        leaves.push((name.clone(), cert.pem(), key.serialize_pem()));
    }
    Ok(MadeCerts {
        ca_pem: ca_cert.pem(),
        leaves,
    })
}

impl MadeCerts {
    /// Writes `ca.pem`, and `<name>.pem` + `<name>.key` per name, into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("ca.pem"), &self.ca_pem)?;
        for (name, cert, key) in &self.leaves {
            std::fs::write(dir.join(format!("{name}.pem")), cert)?;
            write_private(&dir.join(format!("{name}.key")), key)?;
        }
        Ok(())
    }
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_certificates_load_and_carry_their_names() {
        let made = make_certs("test CA", &["a.example".into()]).unwrap();
        let dir = std::env::temp_dir().join(format!("shm-gateway-pki-{}", std::process::id()));
        made.write(&dir).unwrap();
        let id = load_identity(&dir.join("a.example.pem"), &dir.join("a.example.key")).unwrap();
        assert_eq!(id.chain.len(), 1);
        assert_eq!(load_certs(&dir.join("ca.pem")).unwrap().len(), 1);
        let e = load_certs(&dir.join("a.example.key"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no CERTIFICATE"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
