//! The transport the network scenarios of `tests/net.rs` run over: TCP there, QUIC when
//! `tests/net_quic.rs` includes the same file (one suite, two transports). The choice
//! follows the test crate being compiled, so the scenario bodies stay the same.

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

/// A self-signed certificate for `localhost`, made once per test process (rcgen).
pub struct TestTls {
    /// The server's side.
    pub server: QuicServerTls,
    /// A client trusting it.
    pub client: QuicClientTls,
}

/// The test certificate.
pub fn tls() -> &'static TestTls {
    static TLS: OnceLock<TestTls> = OnceLock::new();
    TLS.get_or_init(|| {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let der = cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(signing_key.serialize_der().into());
        TestTls {
            server: QuicServerTls::new(Identity::new(vec![der.clone()], key)),
            client: QuicClientTls::new("localhost", vec![der]),
        }
    })
}

/// A server on `addr`, over this crate's transport.
pub fn bind(
    addr: SocketAddr,
    config: ServerConfig,
    served: Vec<Served>,
) -> std::io::Result<NetServer> {
    if is_quic() {
        NetServer::bind_quic(addr, config, served, &tls().server)
    } else {
        NetServer::bind(addr, config, served)
    }
}

/// A client of `addrs`, over this crate's transport.
pub fn client(addrs: Vec<SocketAddr>, config: ClientConfig) -> std::io::Result<NetClient> {
    if is_quic() {
        NetClient::new_quic(addrs, config, &tls().client)
    } else {
        NetClient::new(addrs, config)
    }
}

/// A client with its first connection up, over this crate's transport.
pub fn connect(
    addrs: Vec<SocketAddr>,
    config: ClientConfig,
    timeout: Duration,
) -> Result<NetClient, TransportError> {
    if is_quic() {
        NetClient::connect_quic(addrs, config, &tls().client, timeout)
    } else {
        NetClient::connect(addrs, config, timeout)
    }
}
