//! Network connectors: the same messages as the rings, over TCP (plain or TLS, directly
//! or through a SOCKS5 proxy) and QUIC.
//!
//! Two layers, after quinn:
//! - a **sans-io core** ([`frame`], [`conn`], [`pool`], [`compress`]): the wire format,
//!   one connection and the pool of connections to one destination as pure state machines
//!   that take `now` and bytes (`handle_*`) and give bytes, timers and events back
//!   (`poll_*`), with no socket, runtime or clock inside; they are tested in memory with a
//!   simulated clock;
//! - a **tokio driver** (`tcp`) that runs them over sockets, and one over QUIC (`quic`,
//!   feature `quic`); both take their TLS configuration from `tls`, and a TCP client
//!   may dial through a SOCKS5 proxy (`socks`).
//!
//! See `docs/NETWORK.md` for the wire format, the message kinds and the pool's behaviour.

pub mod addr;
pub mod compress;
pub mod conn;
pub mod endpoint;
pub mod frame;
pub mod pool;
#[cfg(feature = "quic")]
pub mod quic;
pub mod socks;
pub mod stats;
pub mod stream;
pub mod tcp;
pub mod tls;
pub mod transmit;

pub use addr::{Address, AddressError};
pub use compress::{Compressor, Lz4, Snappy};
pub use conn::{
    BytesSource, ConnConfig, ConnError, ConnEvent, ConnStats, Connection, Delivery, MessageSource,
    OutMessage, PeerInfo, Side,
};
pub use endpoint::{
    AsyncEndpoint, ConnectOptions, Endpoint, EndpointError, EndpointMessage, EndpointSender,
    ServeOptions, bind_url,
};
pub use frame::{CloseCode, FrameError, ProtocolSpec};
pub use pool::{Canceled, ConnId, Failure, Pool, PoolAction, PoolConfig, PoolEvent};
pub use socks::Socks5Proxy;
pub use stats::NetStats;
pub use stream::{NetStream, ReaderSource, StreamError};
pub use tcp::{
    ClientConfig, ClientEvent, ClientInfo, Forward, Link, NET_CHANNEL_IDS, NetClient, NetMessage,
    NetSender, NetServer, Sending, Served, ServerConfig, ServerEvent, StreamHandler,
    current_client, process_instance,
};
pub use tls::{ClientTls, Identity, PeerIdentity, ServerTls};
pub use transmit::{Transmit, TransmitBuf};

#[cfg(feature = "quic")]
pub use quic::{QuicClientTls, QuicServerTls};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod window_tests;
