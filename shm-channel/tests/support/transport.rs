//! The transport the network scenarios of `tests/net.rs` run over: TCP there, QUIC when
//! `tests/net_quic.rs` includes the same file (one suite, two transports). The choice
//! follows the test crate being compiled, so the scenario bodies stay the same. Tests that
//! run both transports in one crate (`tests/net_crash.rs`) name one with [`Net`].

#![allow(dead_code, reason = "each test file uses a subset")]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use shm_channel::net::quic::PrivateKeyDer;
use shm_channel::net::{
    ClientConfig, Identity, NetClient, NetServer, QuicClientTls, QuicServerTls, Served,
    ServerConfig,
};
use shm_channel::rpc::TransportError;

/// Whether this test crate runs the suite over QUIC.
pub fn is_quic() -> bool {
    env!("CARGO_CRATE_NAME") == "net_quic"
}

/// A network transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    /// `NetServer::bind` / `NetClient::new`.
    Tcp,
    /// `NetServer::bind_quic` / `NetClient::new_quic`, with the test certificate.
    Quic,
}

impl Net {
    /// This test crate's transport (see [`is_quic`]).
    pub fn current() -> Net {
        if is_quic() { Net::Quic } else { Net::Tcp }
    }

    /// Its name, as handed to a child process and read back by [`Net::parse`].
    pub fn name(self) -> &'static str {
        match self {
            Net::Tcp => "tcp",
            Net::Quic => "quic",
        }
    }

    /// The transport named `name`.
    pub fn parse(name: &str) -> Option<Net> {
        match name {
            "tcp" => Some(Net::Tcp),
            "quic" => Some(Net::Quic),
            _ => None,
        }
    }

    /// A server on `addr`.
    pub fn bind(
        self,
        addr: SocketAddr,
        config: ServerConfig,
        served: Vec<Served>,
    ) -> std::io::Result<NetServer> {
        match self {
            Net::Quic => NetServer::bind_quic(addr, config, served, &tls().server),
            Net::Tcp => NetServer::bind(addr, config, served),
        }
    }

    /// A client of `addrs`.
    pub fn client(
        self,
        addrs: Vec<SocketAddr>,
        config: ClientConfig,
    ) -> std::io::Result<NetClient> {
        match self {
            Net::Quic => NetClient::new_quic(addrs, config, &tls().client),
            Net::Tcp => NetClient::new(addrs, config),
        }
    }

    /// A client with its first connection up.
    pub fn connect(
        self,
        addrs: Vec<SocketAddr>,
        config: ClientConfig,
        timeout: Duration,
    ) -> Result<NetClient, TransportError> {
        match self {
            Net::Quic => NetClient::connect_quic(addrs, config, &tls().client, timeout),
            Net::Tcp => NetClient::connect(addrs, config, timeout),
        }
    }
}

/// A self-signed certificate for `localhost`, made once per test process (rcgen), or
/// taken from [`TLS_ENV`] in a child process, so that parent and child trust each other.
pub struct TestTls {
    /// The server's side.
    pub server: QuicServerTls,
    /// A client trusting it.
    pub client: QuicClientTls,
    /// The certificate and key (DER), to hand a child.
    der: (Vec<u8>, Vec<u8>),
}

/// The environment variable that hands a child process the test certificate and key
/// (hex DER, `cert:key`).
pub const TLS_ENV: &str = "SHM_CHANNEL_TEST_TLS";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The test certificate.
pub fn tls() -> &'static TestTls {
    static TLS: OnceLock<TestTls> = OnceLock::new();
    TLS.get_or_init(|| {
        let inherited = std::env::var(TLS_ENV).ok().and_then(|v| {
            let (cert, key) = v.split_once(':')?;
            Some((unhex(cert)?, unhex(key)?))
        });
        let (cert, key) = inherited.unwrap_or_else(|| {
            let rcgen::CertifiedKey { cert, signing_key } =
                rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
            (cert.der().to_vec(), signing_key.serialize_der())
        });
        let der = shm_channel::net::quic::CertificateDer::from(cert.clone());
        let private = PrivateKeyDer::Pkcs8(key.clone().into());
        TestTls {
            server: QuicServerTls::new(Identity::new(vec![der.clone()], private)),
            client: QuicClientTls::new("localhost", vec![der]),
            der: (cert, key),
        }
    })
}

/// The `env` entry of a child process that must share this process's test certificate.
pub fn tls_env() -> (&'static str, String) {
    let (cert, key) = &tls().der;
    (TLS_ENV, format!("{}:{}", hex(cert), hex(key)))
}

/// A server on `addr`, over this crate's transport.
pub fn bind(
    addr: SocketAddr,
    config: ServerConfig,
    served: Vec<Served>,
) -> std::io::Result<NetServer> {
    Net::current().bind(addr, config, served)
}

/// A client of `addrs`, over this crate's transport.
pub fn client(addrs: Vec<SocketAddr>, config: ClientConfig) -> std::io::Result<NetClient> {
    Net::current().client(addrs, config)
}

/// A client with its first connection up, over this crate's transport.
pub fn connect(
    addrs: Vec<SocketAddr>,
    config: ClientConfig,
    timeout: Duration,
) -> Result<NetClient, TransportError> {
    Net::current().connect(addrs, config, timeout)
}
