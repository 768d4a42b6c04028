//! TLS for the network connectors, shared by TCP (`tls://`, tokio-rustls) and QUIC
//! (quinn): rustls 0.23 on the ring backend, TLS 1.3 only (both ends are ours).
//!
//! - [`ClientTls`]: whom a client trusts, the name the server's certificate must carry,
//!   and the client's own certificate for servers that ask for one. Verification is
//!   always on: there is no "accept anything" mode.
//! - [`ServerTls`]: a server's certificate, and optionally the CAs a client certificate
//!   must be issued by (**mutual TLS**): without one, a client is refused during the TLS
//!   handshake, before any message is read.
//! - [`PeerIdentity`]: the verified certificate a client presented, as the server sees
//!   it: in [`ServerEvent::Accepted`](super::ServerEvent::Accepted) and, inside a request
//!   handler, through [`current_client`](super::current_client). This is what a
//!   server's policy keys on ("which services, to whom").

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
pub use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The ALPN protocol both sides name in the TLS handshake (TCP and QUIC).
pub const ALPN: &[u8] = b"shm-channel/1";

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct Identity {
    /// The chain, leaf first (DER).
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key (DER).
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// The identity `chain` (leaf first) with `key`.
    pub fn new(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Self {
        Identity { chain, key }
    }

    /// The identity in PEM: a certificate chain (leaf first) and a private key (PKCS#8,
    /// PKCS#1 or SEC1).
    pub fn from_pem(chain: &[u8], key: &[u8]) -> std::io::Result<Identity> {
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| pem_err("the key", e))?;
        Ok(Identity::new(certificates_from_pem(chain)?, key))
    }

    /// [`from_pem`](Self::from_pem) of two files.
    pub fn from_pem_files(
        chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> std::io::Result<Identity> {
        let read = |p: &Path| {
            std::fs::read(p)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
        };
        let (chain, key) = (chain.as_ref(), key.as_ref());
        Identity::from_pem(&read(chain)?, &read(key)?)
            .map_err(|e| io_err(format!("{} / {}: {e}", chain.display(), key.display())))
    }
}

fn pem_err(what: &str, e: rustls::pki_types::pem::Error) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{what}: {e}"))
}

/// Every certificate of a PEM text (CA roots, or a chain), in order; an error if there is
/// none.
pub fn certificates_from_pem(pem: &[u8]) -> std::io::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err("a certificate", e))?;
    if certs.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "no PEM certificate found",
        ));
    }
    Ok(certs)
}

/// [`certificates_from_pem`] of a file (e.g. the CAs of [`ClientTls::roots`]).
pub fn certificates_from_pem_file(
    path: impl AsRef<Path>,
) -> std::io::Result<Vec<CertificateDer<'static>>> {
    let path = path.as_ref();
    let pem = std::fs::read(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    certificates_from_pem(&pem).map_err(|e| io_err(format!("{}: {e}", path.display())))
}

/// TLS of a client: whom it trusts, the name it expects, and its own certificate when
/// the server asks for one.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The name the server's certificate must carry (a DNS name or an IP address).
    pub server_name: String,
    /// The certificates (CAs, or the server's own self-signed one) trusted.
    pub roots: Vec<CertificateDer<'static>>,
    /// A client certificate, for servers that require one (mutual TLS).
    pub identity: Option<Identity>,
}

/// TLS of a server: its certificate, and whom it accepts.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The server's certificate and key.
    pub identity: Identity,
    /// When set (mutual TLS), only clients with a certificate issued by one of these are
    /// accepted; the others fail the TLS handshake.
    pub client_roots: Option<Vec<CertificateDer<'static>>>,
}

pub(super) fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn root_store(certs: &[CertificateDer<'static>]) -> std::io::Result<rustls::RootCertStore> {
    let mut store = rustls::RootCertStore::empty();
    for c in certs {
        store.add(c.clone()).map_err(io_err)?;
    }
    Ok(store)
}

impl ClientTls {
    /// Trusts `roots` and expects `server_name` in the server's certificate.
    pub fn new(server_name: impl Into<String>, roots: Vec<CertificateDer<'static>>) -> Self {
        ClientTls {
            server_name: server_name.into(),
            roots,
            identity: None,
        }
    }

    /// Presents `identity` to servers that ask for a client certificate.
    pub fn with_identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// The rustls configuration (TLS 1.3, ring, our ALPN).
    pub fn rustls_config(&self) -> std::io::Result<rustls::ClientConfig> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(io_err)?
            .with_root_certificates(root_store(&self.roots)?);
        let mut tls = match &self.identity {
            Some(id) => builder
                .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
                .map_err(io_err)?,
            None => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = vec![ALPN.to_vec()];
        Ok(tls)
    }

    /// The server name as rustls checks it.
    pub(super) fn name(&self) -> std::io::Result<rustls::pki_types::ServerName<'static>> {
        rustls::pki_types::ServerName::try_from(self.server_name.clone()).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("bad TLS server name {:?}: {e}", self.server_name),
            )
        })
    }
}

impl ServerTls {
    /// Serves with `identity`, accepting any client.
    pub fn new(identity: Identity) -> Self {
        ServerTls {
            identity,
            client_roots: None,
        }
    }

    /// Mutual TLS: accepts only clients whose certificate was issued by one of `roots`.
    pub fn require_client_cert(mut self, roots: Vec<CertificateDer<'static>>) -> Self {
        self.client_roots = Some(roots);
        self
    }

    /// The rustls configuration (TLS 1.3, ring, our ALPN).
    pub fn rustls_config(&self) -> std::io::Result<rustls::ServerConfig> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(io_err)?;
        let builder = match &self.client_roots {
            None => builder.with_no_client_auth(),
            Some(roots) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(root_store(roots)?),
                    provider(),
                )
                .build()
                .map_err(io_err)?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut tls = builder
            .with_single_cert(self.identity.chain.clone(), self.identity.key.clone_key())
            .map_err(io_err)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        Ok(tls)
    }
}

/// The verified certificate a client presented (mutual TLS), as its server sees it.
///
/// Only a certificate that passed verification against
/// [`ServerTls::client_roots`] ever becomes a `PeerIdentity`: a server keys its policy
/// on [`subject`](Self::subject), [`common_name`](Self::common_name) or
/// [`names`](Self::names) (see [`matches`](Self::matches)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    subject: String,
    common_name: Option<String>,
    names: Vec<String>,
    chain: Vec<CertificateDer<'static>>,
}

impl PeerIdentity {
    /// The identity of a verified `chain` (leaf first); `None` when there is no leaf or
    /// it does not parse (rustls verified it, so that does not happen in practice).
    pub fn from_chain(chain: &[CertificateDer<'static>]) -> Option<PeerIdentity> {
        use x509_parser::extensions::GeneralName;
        let leaf = chain.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
        let subject = cert.subject().to_string();
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                        names.push((*s).to_string())
                    }
                    GeneralName::IPAddress(b) => {
                        let ip = match b.len() {
                            4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                            16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                            _ => None,
                        };
                        names.extend(ip.map(|ip| ip.to_string()));
                    }
                    _ => {}
                }
            }
        }
        Some(PeerIdentity {
            subject,
            common_name,
            names,
            chain: chain.to_vec(),
        })
    }

    /// The certificate's subject, as an RFC 4514-like string (`CN=client-a, O=Example`).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The subject's common name (`CN`), if any.
    pub fn common_name(&self) -> Option<&str> {
        self.common_name.as_deref()
    }

    /// The subject alternative names: DNS names, e-mail addresses, URIs and IP
    /// addresses, as strings.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether `name` is the common name or one of the subject alternative names.
    pub fn matches(&self, name: &str) -> bool {
        self.common_name() == Some(name) || self.names.iter().any(|n| n == name)
    }

    /// The verified chain as presented, leaf first (DER).
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }
}
