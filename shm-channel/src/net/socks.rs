//! SOCKS5 (RFC 1928, with RFC 1929's username and password): a client may reach its
//! destination through a proxy. The proxy's handshake runs on the TCP connection first;
//! what follows (TLS when configured, then our own handshake) goes through the tunnel
//! unchanged, so a TLS server still authenticates end to end.

use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio_socks::tcp::Socks5Stream;

/// A SOCKS5 proxy a client connects through (set in
/// [`ClientConfig::socks5`](super::ClientConfig::socks5)).
#[derive(Clone, PartialEq, Eq)]
pub struct Socks5Proxy {
    /// The proxy's address, `host:port`.
    pub proxy: String,
    /// A username and password (RFC 1929), for proxies that ask for them.
    pub auth: Option<(String, String)>,
}

impl std::fmt::Debug for Socks5Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password stays out of logs.
        f.debug_struct("Socks5Proxy")
            .field("proxy", &self.proxy)
            .field("user", &self.auth.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl Socks5Proxy {
    /// The proxy at `proxy` (`host:port`), without authentication.
    pub fn new(proxy: impl Into<String>) -> Self {
        Socks5Proxy {
            proxy: proxy.into(),
            auth: None,
        }
    }

    /// Authenticates with `user` and `password`.
    pub fn with_password(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Some((user.into(), password.into()));
        self
    }

    /// A TCP connection to `target` through the proxy, its SOCKS5 handshake done. The
    /// destination is sent as the address the client resolved (not a name).
    pub(super) async fn connect(&self, target: SocketAddr) -> Result<TcpStream, String> {
        let proxy = self.proxy.as_str();
        let r = match &self.auth {
            None => Socks5Stream::connect(proxy, target).await,
            Some((user, password)) => {
                Socks5Stream::connect_with_password(proxy, target, user, password).await
            }
        };
        r.map(Socks5Stream::into_inner)
            .map_err(|e| format!("connecting to {target} through the SOCKS5 proxy {proxy}: {e}"))
    }
}
