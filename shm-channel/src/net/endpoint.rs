//! One way to reach a service wherever it runs: [`Endpoint`] is a transport that is either
//! a shm [`Channel`] or a network [`NetClient`], chosen by a URL (`shm://display`, a plain
//! `display`, `tcp://host:port`, `tls://host:port`, `quic://host:port`); [`bind_url`] is the
//! server's side.
//!
//! The generated clients' `connect_url` and the generated `serve_url` are written on these,
//! so a program moves a service to another machine by changing only the URL.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use thiserror::Error;

use super::addr::{Address, AddressError};
use super::frame::ProtocolSpec;
use super::tcp::{ClientConfig, NetClient, NetMessage, NetSender, NetServer, Served, ServerConfig};
use super::tls::{ClientTls, ServerTls};
use crate::channel::Channel;
use crate::ring::{Message, RingWriter};
use crate::rpc::{
    IncomingMessage, ObjectSink, Outgoing, Transport, TransportError, TransportSender,
};
use shm_layout::Kind;

/// How [`Endpoint::connect`] reaches a service, whatever the URL's scheme.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// For `shm://` (and plain names): the channel's configuration (the generated
    /// `client_config()` carries the protocol's name, versions and ring sizes).
    pub shm: crate::ClientConfig,
    /// For network URLs: the pool's configuration (protocol, connections, backoff).
    pub net: ClientConfig,
    /// For network URLs: wait up to this long for the first connection's handshake, and
    /// fail if there is none (default 5 s); `None` connects lazily, in the background: calls
    /// made meanwhile wait in the queue (or fail at once, for `@one_shot` methods).
    pub wait: Option<Duration>,
    /// For `tls://` and `quic://`: whom the client trusts (the URL decides whether TLS
    /// runs: `tcp://` is plain TCP whatever this says).
    pub tls: Option<ClientTls>,
}

impl ConnectOptions {
    /// Options for protocol `name` in versions `1..=version`, with `shm` for local services
    /// (what the generated `connect_options()` builds from the IDL).
    pub fn new(shm: crate::ClientConfig, name: &str, version: u32) -> Self {
        ConnectOptions {
            shm,
            net: ClientConfig::new(ProtocolSpec::new(name, version)),
            wait: Some(Duration::from_secs(5)),
            tls: None,
        }
    }

    /// Accepts messages (replies, events) of at most `bytes` over the network; the server
    /// learns it in the handshake and refuses to send larger ones. The generated
    /// `connect_options()` sets the IDL's server-to-client ring maximum, so that the
    /// network carries what the rings carry.
    #[must_use]
    pub fn max_receive(mut self, bytes: u64) -> Self {
        self.net.conn.max_message = bytes;
        self
    }

    /// Connects lazily over the network (see [`wait`](Self::wait)).
    #[must_use]
    pub fn lazy(mut self) -> Self {
        self.wait = None;
        self
    }

    /// Waits up to `timeout` for the first network connection.
    #[must_use]
    pub fn wait_for(mut self, timeout: Duration) -> Self {
        self.wait = Some(timeout);
        self
    }

    /// Trusts what `tls` says for `tls://` and `quic://` URLs.
    #[must_use]
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// Why a URL could not be connected to or served.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// The URL does not parse.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// A local service could not be connected to.
    #[error(transparent)]
    Shm(#[from] crate::service::ConnectError),
    /// The host name did not resolve.
    #[error("cannot resolve {addr}: {error}")]
    Resolve {
        /// The `host:port`.
        addr: String,
        /// Why.
        error: String,
    },
    /// No connection (or no listener) could be made.
    #[error("{url}: {error}")]
    Net {
        /// The URL.
        url: String,
        /// Why.
        error: TransportError,
    },
    /// `tls://` or `quic://` without TLS settings ([`ConnectOptions::tls`],
    /// [`ServeOptions::tls`]).
    #[error("{0}: TLS settings are needed (roots to trust, or the server's certificate)")]
    NeedsTls(String),
    /// This scheme is not available here (a cargo feature of shm-channel is off, or a
    /// server cannot listen on it).
    #[error("{0}: {1}")]
    Unsupported(String, &'static str),
}

/// Resolves `host:port`.
fn resolve(host_port: &str) -> Result<Vec<SocketAddr>, EndpointError> {
    let resolved = host_port
        .to_socket_addrs()
        .map_err(|e| EndpointError::Resolve {
            addr: host_port.to_string(),
            error: e.to_string(),
        })?;
    let addrs: Vec<SocketAddr> = resolved.collect();
    if addrs.is_empty() {
        return Err(EndpointError::Resolve {
            addr: host_port.to_string(),
            error: "no address".into(),
        });
    }
    Ok(addrs)
}

/// A network client of `address` (not connected yet), or `None` for `shm://`.
fn net_client(address: &Address, opts: &ConnectOptions) -> Result<NetClient, EndpointError> {
    let url = address.to_string();
    let io = |e: std::io::Error| EndpointError::Net {
        url: url.clone(),
        error: TransportError::Io(e.to_string()),
    };
    let tls = || {
        opts.tls
            .clone()
            .ok_or_else(|| EndpointError::NeedsTls(url.clone()))
    };
    let mut config = opts.net.clone();
    match address {
        Address::Tcp(host_port) => {
            config.tls = None;
            NetClient::new(resolve(host_port)?, config).map_err(io)
        }
        Address::Tls(host_port) => {
            config.tls = Some(tls()?);
            NetClient::new(resolve(host_port)?, config).map_err(io)
        }
        #[cfg(feature = "quic")]
        Address::Quic(host_port) => {
            config.tls = None;
            NetClient::new_quic(resolve(host_port)?, config, &tls()?).map_err(io)
        }
        // A scheme added to `Address` (or compiled out) is one arm above.
        #[allow(unreachable_patterns)]
        other => Err(EndpointError::Unsupported(
            other.to_string(),
            "no connector for this scheme in this build",
        )),
    }
}

/// A transport to a local service or a network one: what `connect_url` gives a generated
/// blocking client.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Endpoint {
    /// A shm channel.
    Shm(Channel),
    /// A network connection pool.
    Net(NetClient),
}

impl Endpoint {
    /// Connects to `url` (see the module docs for the schemes) with `opts`.
    pub fn connect(url: &str, opts: &ConnectOptions) -> Result<Endpoint, EndpointError> {
        let address = Address::from_target(url)?;
        if let Address::Shm(name) = &address {
            return Ok(Endpoint::Shm(crate::connect(name, &opts.shm)?));
        }
        let client = net_client(&address, opts)?;
        let client = match opts.wait {
            Some(timeout) => {
                client
                    .first_connection(timeout)
                    .map_err(|error| EndpointError::Net {
                        url: address.to_string(),
                        error,
                    })?
            }
            None => client,
        };
        Ok(Endpoint::Net(client))
    }

    /// The network pool, if this is one (cancel, close, events, stats).
    pub fn net(&self) -> Option<&NetClient> {
        match self {
            Endpoint::Net(n) => Some(n),
            Endpoint::Shm(_) => None,
        }
    }

    /// The shm channel, if this is one (rings, credentials).
    pub fn shm(&self) -> Option<&Channel> {
        match self {
            Endpoint::Shm(c) => Some(c),
            Endpoint::Net(_) => None,
        }
    }
}

/// The sending half of an [`Endpoint`] (or an [`AsyncEndpoint`]).
#[derive(Debug, Clone)]
pub enum EndpointSender {
    /// A shm ring's writer.
    Shm(RingWriter),
    /// A network pool's sender.
    Net(NetSender),
}

impl TransportSender for EndpointSender {
    fn send_with(
        &self,
        out: &Outgoing,
        object_lens: &[u64],
        fill: &mut dyn FnMut(&mut dyn ObjectSink) -> Result<(), TransportError>,
        timeout: Duration,
    ) -> Result<(), TransportError> {
        match self {
            EndpointSender::Shm(s) => s.send_with(out, object_lens, fill, timeout),
            EndpointSender::Net(s) => s.send_with(out, object_lens, fill, timeout),
        }
    }

    fn max_message(&self) -> u64 {
        match self {
            EndpointSender::Shm(s) => TransportSender::max_message(s),
            EndpointSender::Net(s) => s.max_message(),
        }
    }
}

/// A message received on an [`Endpoint`]: borrowed from the ring, or owned from the network.
#[derive(Debug)]
pub enum EndpointMessage<'a> {
    /// From a shm ring (its space is freed when dropped).
    Shm(Message<'a>),
    /// From a network connection.
    Net(NetMessage),
}

impl EndpointMessage<'_> {
    fn inner(&self) -> &dyn IncomingMessage {
        match self {
            EndpointMessage::Shm(m) => m,
            EndpointMessage::Net(m) => m,
        }
    }
}

impl IncomingMessage for EndpointMessage<'_> {
    fn message_id(&self) -> u64 {
        self.inner().message_id()
    }

    fn kind(&self) -> Kind {
        self.inner().kind()
    }

    fn request_id(&self) -> u64 {
        self.inner().request_id()
    }

    fn flags(&self) -> u64 {
        self.inner().flags()
    }

    fn object(&self, id: u64) -> Option<&[u8]> {
        self.inner().object(id)
    }

    fn object_at(&self, index: usize) -> Option<(u64, &[u8])> {
        self.inner().object_at(index)
    }

    fn object_count(&self) -> usize {
        self.inner().object_count()
    }

    fn for_each_object(&self, f: &mut dyn FnMut(u64, &[u8])) {
        self.inner().for_each_object(f);
    }
}

impl Transport for Endpoint {
    type Sender = EndpointSender;
    type Message<'a> = EndpointMessage<'a>;

    fn sender(&self) -> EndpointSender {
        match self {
            Endpoint::Shm(c) => EndpointSender::Shm(Transport::sender(c)),
            Endpoint::Net(n) => EndpointSender::Net(Transport::sender(n)),
        }
    }

    fn recv_timeout(&mut self, timeout: Duration) -> Result<EndpointMessage<'_>, TransportError> {
        match self {
            Endpoint::Shm(c) => Transport::recv_timeout(c, timeout).map(EndpointMessage::Shm),
            Endpoint::Net(n) => n.recv_timeout(timeout).map(EndpointMessage::Net),
        }
    }

    fn try_recv(&mut self) -> Result<Option<EndpointMessage<'_>>, TransportError> {
        match self {
            Endpoint::Shm(c) => Ok(Transport::try_recv(c)?.map(EndpointMessage::Shm)),
            Endpoint::Net(n) => Ok(n.try_recv()?.map(EndpointMessage::Net)),
        }
    }

    fn peer_alive(&self) -> bool {
        match self {
            Endpoint::Shm(c) => Transport::peer_alive(c),
            Endpoint::Net(n) => n.peer_alive(),
        }
    }

    fn version(&self) -> u32 {
        match self {
            Endpoint::Shm(c) => Transport::version(c),
            Endpoint::Net(n) => Transport::version(n),
        }
    }
}

/// The async form of [`Endpoint`]: what `connect_url` gives a generated async client.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum AsyncEndpoint {
    /// A shm channel on tokio.
    Shm(crate::async_channel::AsyncChannel),
    /// A network connection pool.
    Net(NetClient),
}

impl AsyncEndpoint {
    /// Connects to `url` with `opts` (see [`Endpoint::connect`]); call it on a tokio
    /// runtime, whose tasks then drive the network connections.
    pub async fn connect(url: &str, opts: &ConnectOptions) -> Result<AsyncEndpoint, EndpointError> {
        let address = Address::from_target(url)?;
        if let Address::Shm(name) = &address {
            let channel = crate::async_channel::connect(name, &opts.shm).await?;
            return Ok(AsyncEndpoint::Shm(channel));
        }
        let client = net_client(&address, opts)?;
        let Some(timeout) = opts.wait else {
            return Ok(AsyncEndpoint::Net(client));
        };
        // The first handshake is waited for on a blocking thread, not on the runtime's.
        let waited = tokio::task::spawn_blocking(move || client.first_connection(timeout))
            .await
            .map_err(|e| TransportError::Io(e.to_string()))
            .and_then(|r| r);
        match waited {
            Ok(client) => Ok(AsyncEndpoint::Net(client)),
            Err(error) => Err(EndpointError::Net {
                url: address.to_string(),
                error,
            }),
        }
    }

    /// The network pool, if this is one.
    pub fn net(&self) -> Option<&NetClient> {
        match self {
            AsyncEndpoint::Net(n) => Some(n),
            AsyncEndpoint::Shm(_) => None,
        }
    }
}

impl crate::rpc::AsyncTransport for AsyncEndpoint {
    type Sender = EndpointSender;
    type Message<'a> = EndpointMessage<'a>;

    fn sender(&self) -> EndpointSender {
        use crate::rpc::AsyncTransport as A;
        match self {
            AsyncEndpoint::Shm(c) => EndpointSender::Shm(A::sender(c)),
            AsyncEndpoint::Net(n) => EndpointSender::Net(Transport::sender(n)),
        }
    }

    fn version(&self) -> u32 {
        match self {
            AsyncEndpoint::Shm(c) => crate::rpc::AsyncTransport::version(c),
            AsyncEndpoint::Net(n) => Transport::version(n),
        }
    }

    async fn recv(&mut self) -> Result<EndpointMessage<'_>, TransportError> {
        match self {
            AsyncEndpoint::Shm(c) => crate::rpc::AsyncTransport::recv(c)
                .await
                .map(EndpointMessage::Shm),
            AsyncEndpoint::Net(n) => crate::rpc::AsyncTransport::recv(n)
                .await
                .map(EndpointMessage::Net),
        }
    }

    fn reads_inline(&self) -> bool {
        match self {
            AsyncEndpoint::Shm(c) => crate::rpc::AsyncTransport::reads_inline(c),
            AsyncEndpoint::Net(n) => crate::rpc::AsyncTransport::reads_inline(n),
        }
    }

    fn recv_now(&mut self) -> Result<Option<EndpointMessage<'_>>, TransportError> {
        Ok(match self {
            AsyncEndpoint::Shm(c) => {
                crate::rpc::AsyncTransport::recv_now(c)?.map(EndpointMessage::Shm)
            }
            AsyncEndpoint::Net(n) => {
                crate::rpc::AsyncTransport::recv_now(n)?.map(EndpointMessage::Net)
            }
        })
    }
}

/// How [`bind_url`] listens.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// The server's behaviour (connections, reply timeout, instance id).
    pub config: ServerConfig,
    /// For `tls://` and `quic://`: the server's certificate (the URL decides whether TLS
    /// runs).
    pub tls: Option<ServerTls>,
}

impl ServeOptions {
    /// With this server configuration.
    #[must_use]
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// Accepts requests of at most `bytes`; clients learn it in the handshake and refuse
    /// to send larger ones (`TooLarge`). The generated `serve_options()` sets the IDL's
    /// client-to-server ring maximum.
    #[must_use]
    pub fn max_receive(mut self, bytes: u64) -> Self {
        self.config.conn.max_message = bytes;
        self
    }

    /// With this certificate for `tls://` and `quic://`.
    #[must_use]
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// Listens at `url` (`tcp://host:port`, `tls://host:port`, `quic://host:port`; port 0 picks a free one, see
/// [`NetServer::local_addr`]) and serves `protocols` in the background until the returned
/// server is dropped. A `shm://` URL is refused: a local service is served on the
/// caller's thread (the generated `serve`).
pub fn bind_url(
    url: &str,
    opts: &ServeOptions,
    protocols: Vec<Served>,
) -> Result<NetServer, EndpointError> {
    let address = Address::from_target(url)?;
    let io = |e: std::io::Error| EndpointError::Net {
        url: url.to_string(),
        error: TransportError::Io(e.to_string()),
    };
    let first = |host_port: &str| -> Result<SocketAddr, EndpointError> {
        // A server listens on one address: the first the name resolves to.
        Ok(resolve(host_port)?[0])
    };
    let tls = || {
        opts.tls
            .clone()
            .ok_or_else(|| EndpointError::NeedsTls(url.to_string()))
    };
    let mut config = opts.config.clone();
    match &address {
        Address::Tcp(host_port) => {
            config.tls = None;
            NetServer::bind(first(host_port)?, config, protocols).map_err(io)
        }
        Address::Tls(host_port) => {
            config.tls = Some(tls()?);
            NetServer::bind(first(host_port)?, config, protocols).map_err(io)
        }
        #[cfg(feature = "quic")]
        Address::Quic(host_port) => {
            config.tls = None;
            NetServer::bind_quic(first(host_port)?, config, protocols, &tls()?).map_err(io)
        }
        Address::Shm(_) => Err(EndpointError::Unsupported(
            url.to_string(),
            "a local service is served with `serve` on the caller's thread, not in the background",
        )),
        #[allow(unreachable_patterns)]
        other => Err(EndpointError::Unsupported(
            other.to_string(),
            "no listener for this scheme in this build",
        )),
    }
}
