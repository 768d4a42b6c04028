//! The network connectors over QUIC: the TCP scenario suite of `tests/net.rs` run again
//! with QUIC servers and clients (the same file, through `support/transport.rs`), then
//! what only QUIC has: a lossy UDP relay, hostile datagrams and streams.

#![cfg(feature = "quic")]

#[path = "net.rs"]
mod suite;
