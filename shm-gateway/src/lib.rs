//! shm-gateway: shm-channel services across machines.
//!
//! A gateway does two things, from one TOML file (see [`config`]):
//!
//! - **export**: local services become reachable from other machines. Remote clients
//!   connect over QUIC or TCP (mutual TLS when `[tls]` is set) and name the service's
//!   protocol in their handshake; each connection gets its own shm channel to the local
//!   service, and messages go back and forth **byte for byte**: the network message is
//!   the ring message (48-byte header and objects), copied, never decoded or re-encoded.
//!   Replies and events travel back the same way.
//! - **import**: a remote service under a local name. The gateway binds a local service,
//!   so a local client's `connect("display")` over shared memory reaches the service on
//!   the other machine through the two gateways.
//!
//! Policy: an export names who may use it by the names in their TLS client certificates
//! (signed by the configured CA), with limits on connections and message size.
//! Restarts: an import's connection to the remote reconnects with the pool's backoff;
//! calls fail or are resent by their kinds (see [`import`]).
//! Observability: `tracing` spans per export connection and import client, and
//! [`Stats`] counters, in process ([`Gateway::stats`]) or through the control socket
//! (`shm-gateway stats`).
//!
//! ```no_run
//! let config = shm_gateway::config::Config::load("gateway.toml".as_ref())?;
//! let gateway = shm_gateway::Gateway::start(config)?;
//! println!("{}", gateway.stats());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The two-machine walk-through is in `docs/NETWORK.md` ("Gateway").
#![forbid(unsafe_code)]

pub mod config;
pub mod control;
pub mod export;
pub mod import;
pub mod pki;
pub mod relay;
pub mod stats;
pub mod testbed;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use shm_channel::net::{
    NetServer, ProtocolSpec, QuicClientTls, QuicServerTls, Served, ServerConfig,
};
use tracing::info;

pub use config::{Config, ConfigError};
pub use stats::{Counters, Snapshot, Stats};

use export::{ExportForward, ExportShared};
use import::ImportRunner;

/// Why a gateway did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A certificate or key file.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// A listener or a local name could not be bound.
    #[error("{0}")]
    Bind(String),
}

/// A running gateway: its listeners and imports. Dropping it stops everything.
pub struct Gateway {
    name: String,
    exports: Vec<Arc<ExportShared>>,
    imports: Vec<(String, ImportRunner)>,
    servers: Vec<(&'static str, NetServer)>,
    _control: Option<control::ControlServer>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Starts what `config` describes.
    pub fn start(config: Config) -> Result<Gateway, StartError> {
        let name = config
            .gateway
            .name
            .clone()
            .unwrap_or_else(|| "gateway".into());
        let runtime_dir = config.gateway.runtime_dir.clone();
        let (server_tls, client_tls) = match &config.tls {
            Some(t) => {
                let identity = pki::load_identity(&t.cert, &t.key)?;
                let ca = pki::load_certs(&t.ca)?;
                let server = QuicServerTls {
                    identity: identity.clone(),
                    client_roots: Some(ca.clone()),
                };
                (Some(server), Some((identity, ca)))
            }
            None => (None, None),
        };
        let mut exports = Vec::new();
        let mut servers = Vec::new();
        if let Some(listen) = &config.listen {
            let total = Arc::new(AtomicU64::new(0));
            let mut served = Vec::new();
            for e in &config.export {
                let shared = ExportShared::new(
                    e.clone(),
                    Arc::clone(&total),
                    listen.max_connections as u64,
                    listen.max_message,
                    runtime_dir.clone(),
                );
                let mut spec = ProtocolSpec::new(e.net_name(), e.versions[1]);
                spec.min_version = e.versions[0];
                served.push(Served::forward(
                    spec,
                    Arc::new(ExportForward(Arc::clone(&shared))),
                ));
                exports.push(shared);
            }
            let mut server_config = ServerConfig::default();
            // A remote client's messages reach the service in the order it sent them,
            // as a ring keeps them (the network completes a small message sent after a
            // large one first).
            server_config.conn.in_order = true;
            // The exports' own limits refuse first, with the service in the reason; the
            // server's (per transport) only bounds what connections that never finish
            // their handshake, or are being refused, hold.
            server_config.max_connections = listen.max_connections.saturating_mul(2);
            server_config.conn.max_message = exports
                .iter()
                .map(|e| e.max_message)
                .max()
                .unwrap_or(listen.max_message);
            let bind_err = |what: &str, addr: SocketAddr, e: std::io::Error| {
                StartError::Bind(format!("listening for {what} on {addr}: {e}"))
            };
            if let (Some(addr), Some(tls)) = (listen.quic, &server_tls) {
                let server = NetServer::bind_quic(addr, server_config.clone(), served.clone(), tls)
                    .map_err(|e| bind_err("QUIC", addr, e))?;
                info!(gateway = %name, addr = %server.local_addr(), "listening (QUIC)");
                servers.push(("quic", server));
            }
            if let Some(addr) = listen.tcp {
                // With [tls]: mutual TLS over TCP, the same certificates and policy as QUIC.
                let mut tcp_config = server_config;
                tcp_config.tls = server_tls.clone();
                let tls = if tcp_config.tls.is_some() {
                    "TLS"
                } else {
                    "plaintext"
                };
                let server = NetServer::bind(addr, tcp_config, served)
                    .map_err(|e| bind_err("TCP", addr, e))?;
                info!(gateway = %name, addr = %server.local_addr(), "listening (TCP, {tls})");
                servers.push(("tcp", server));
            }
        }
        let mut imports = Vec::new();
        for i in &config.import {
            let tls = client_tls.as_ref().map(|(identity, ca)| {
                let host = i
                    .address()
                    .ok()
                    .map(|a| host_of(&a.to_string()))
                    .unwrap_or_default();
                let mut t = QuicClientTls::new(i.server_name.clone().unwrap_or(host), ca.clone());
                t.identity = Some(identity.clone());
                t
            });
            let runner = ImportRunner::start(i.clone(), tls, runtime_dir.clone())
                .map_err(StartError::Bind)?;
            imports.push((i.name.clone(), runner));
        }
        let mut gateway = Gateway {
            name,
            exports,
            imports,
            servers,
            _control: None,
        };
        if let Some(path) = &config.gateway.control {
            gateway._control = Some(
                control::ControlServer::start(path, gateway.stats_source())
                    .map_err(|e| StartError::Bind(format!("{}: {e}", path.display())))?,
            );
        }
        Ok(gateway)
    }

    /// The address a listener is bound to: `"quic"` or `"tcp"` (to learn a port chosen by
    /// the system for port 0).
    pub fn local_addr(&self, transport: &str) -> Option<SocketAddr> {
        self.servers
            .iter()
            .find(|(t, _)| *t == transport)
            .map(|(_, s)| s.local_addr())
    }

    /// The counters now.
    pub fn stats(&self) -> Stats {
        (self.stats_source())()
    }

    /// A function that reads the counters (for the control socket's thread).
    fn stats_source(&self) -> Arc<dyn Fn() -> Stats + Send + Sync> {
        let exports: Vec<(String, Arc<Counters>)> = self
            .exports
            .iter()
            .map(|e| (e.config.service.clone(), Arc::clone(&e.counters)))
            .collect();
        let imports: Vec<(String, Arc<Counters>)> = self
            .imports
            .iter()
            .map(|(n, r)| (n.clone(), Arc::clone(&r.counters)))
            .collect();
        Arc::new(move || Stats {
            exports: exports
                .iter()
                .map(|(n, c)| (n.clone(), c.snapshot()))
                .collect(),
            imports: imports
                .iter()
                .map(|(n, c)| (n.clone(), c.snapshot()))
                .collect(),
        })
    }
}

/// The host part of `scheme://host:port`.
fn host_of(address: &str) -> String {
    let rest = address.split_once("://").map_or(address, |(_, r)| r);
    let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_of_takes_the_host() {
        assert_eq!(super::host_of("quic://b.example:7000"), "b.example");
        assert_eq!(super::host_of("quic://[::1]:7000"), "::1");
    }
}
