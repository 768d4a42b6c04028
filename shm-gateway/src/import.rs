//! Imports: a remote service under a local name.
//!
//! The gateway binds a local service under the import's name (the protocol, versions and
//! ring sizes come from the configuration: the shm handshake happens before the remote is
//! asked anything). Each local client's channel gets **its own network client** (a pool
//! of one connection) to the remote gateway, which in turn gives that connection its own
//! channel to the real service: the local client, the two gateways and the service form
//! one chain per client, so its calls, replies, events and state stay its own.
//!
//! When the remote is lost:
//! - calls awaiting their reply fail at once: `ConnectionLost` if they had left,
//!   `NotConnected` if they were still queued; `@idempotent` calls stay with the pool,
//!   which sends them again once it reconnects;
//! - while the remote is down, calls fail at once with `NotConnected` (`@idempotent` ones
//!   wait in the pool) and one-way messages are dropped (counted);
//! - the pool reconnects with its jittered backoff; after a reconnect calls work again, on
//!   a new remote session (state the remote service kept for this client is gone, as with
//!   any reconnecting network client).
//!
//! Toward a remote that reads slowly the gateway holds at most `max_queued` messages per
//! local client (plus the few handed to the connection): at the bound it stops reading
//! the client's ring until there is room (backpressure: the client's sends wait for ring
//! room, nothing is lost); a message that finds no room for 10 s fails (a call gets
//! `CallError::Transport(Other)` naming the bound), a `@no_queue` one is dropped at once.
//!
//! The local client sees these as the `CallError`s a direct network client gets, because
//! the gateway writes them as the transport's own failure replies (`LOCAL`).

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use shm_channel::net::{
    Address, ClientConfig as NetConfig, ClientEvent, NetClient, ProtocolSpec, QuicClientTls,
};
use shm_channel::ring::RecvError;
use shm_channel::rpc::{IncomingMessage, LocalFailure, Transport, TransportError};
use shm_channel::service::{Service, ServiceConfig};
use shm_channel::{Channel, Kind, RingWriter};
use tracing::{debug, info, info_span, warn};

use crate::config::Import;
use crate::relay::{Shape, fail_locally, ring_to_wire, write_to_ring};
use crate::stats::Counters;

/// How long a reply or event may wait for room in the local client's ring.
const RING_WAIT: Duration = Duration::from_secs(10);
/// How long a message from a local client may wait for room in the queue toward the
/// remote (`max_queued`) before it fails.
const QUEUE_WAIT: Duration = Duration::from_secs(10);
/// How often the loops look at whether they must stop.
const POLL: Duration = Duration::from_millis(50);

/// What is known of the remote, per link and for the import as a whole.
const CONNECTING: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// One running import.
pub(crate) struct ImportRunner {
    pub(crate) counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct ImportShared {
    config: Import,
    address: Address,
    tls: Option<QuicClientTls>,
    counters: Arc<Counters>,
    /// The remote's state as the last link saw it.
    remote: AtomicU8,
    stop: Arc<AtomicBool>,
}

impl ImportRunner {
    /// Binds the local name and starts accepting local clients.
    pub(crate) fn start(
        config: Import,
        tls: Option<QuicClientTls>,
        runtime_dir: Option<PathBuf>,
    ) -> Result<ImportRunner, String> {
        let address = config.address()?;
        let service_config = ServiceConfig::new(
            config.protocol.clone(),
            config.versions[0]..=config.versions[1],
        )
        .ring_sizes(config.ring_sizes[0], config.ring_sizes[1])
        .max_channels(config.max_clients);
        let service_config = match &runtime_dir {
            Some(d) => service_config.runtime_dir(d),
            None => service_config,
        };
        let service = Service::bind(&config.name, service_config)
            .map_err(|e| format!("import {:?}: {e}", config.name))?;
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(ImportShared {
            config,
            address,
            tls,
            counters: Arc::clone(&counters),
            remote: AtomicU8::new(CONNECTING),
            stop: Arc::clone(&stop),
        });
        info!(name = %shared.config.name, remote = %shared.config.remote, "import bound locally");
        let thread = std::thread::Builder::new()
            .name(format!("gw-import-{}", shared.config.name))
            .spawn(move || accept_loop(service, &shared))
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        Ok(ImportRunner {
            counters,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ImportRunner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(mut service: Service, s: &Arc<ImportShared>) {
    let mut links: Vec<JoinHandle<()>> = Vec::new();
    let mut next = 0u64;
    while !s.stop.load(Ordering::Relaxed) {
        for r in service.take_refused() {
            Counters::bump(&s.counters.refused);
            warn!(name = %s.config.name, "local client refused: {}", r.reason);
        }
        match service.accept_timeout(Duration::from_millis(200)) {
            Ok(channel) => {
                next += 1;
                Counters::bump(&s.counters.accepted);
                Counters::bump(&s.counters.open);
                let s2 = Arc::clone(s);
                let id = next;
                match std::thread::Builder::new()
                    .name(format!("gw-import-{}-{id}", s.config.name))
                    .spawn(move || {
                        let span = info_span!("import", name = %s2.config.name, client = id, pid = channel.peer().pid);
                        let _enter = span.enter();
                        run_link(&s2, channel);
                        Counters::drop_one(&s2.counters.open);
                    }) {
                    Ok(h) => links.push(h),
                    Err(e) => {
                        Counters::drop_one(&s.counters.open);
                        warn!("cannot start a thread: {e}");
                    }
                }
                links.retain(|h| !h.is_finished());
            }
            Err(shm_channel::service::AcceptError::Timeout) => {}
            Err(e) => {
                warn!(name = %s.config.name, "accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    for h in links {
        let _ = h.join();
    }
}

/// The calls of one local client that await their reply: request id -> (method,
/// idempotent).
type Outstanding = Mutex<HashMap<u64, (u64, bool)>>;

fn outstanding(o: &Outstanding) -> std::sync::MutexGuard<'_, HashMap<u64, (u64, bool)>> {
    o.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A network client of the remote, for one local client.
fn net_client(s: &ImportShared) -> Result<NetClient, String> {
    let c = &s.config;
    let (Address::Quic(dest) | Address::Tcp(dest) | Address::Tls(dest)) = &s.address else {
        return Err(format!("{} is not a network address", c.remote));
    };
    let addrs: Vec<SocketAddr> = dest
        .to_socket_addrs()
        .map_err(|e| format!("resolving {dest}: {e}"))?
        .collect();
    let mut spec = ProtocolSpec::new(c.remote_protocol(), c.versions[1]);
    spec.min_version = c.versions[0];
    let mut config = NetConfig::new(spec);
    config.connect_timeout = c.connect_timeout();
    config.conn.max_message = c.max_message;
    config.conn.handshake_timeout = c.connect_timeout();
    config.conn.keepalive_idle = true;
    // Replies and events reach the local client in the order the service sent them, as
    // its ring would have them.
    config.conn.in_order = true;
    config.conn.keepalive_interval = Duration::from_millis(c.keepalive_ms);
    config.conn.inactivity_timeout = Duration::from_millis(c.inactivity_timeout_ms);
    config.pool.max_connections = 1;
    config.pool.max_queued = c.max_queued;
    config.pool.backoff_min = Duration::from_millis(c.backoff_min_ms);
    config.pool.backoff_max = Duration::from_millis(c.backoff_max_ms);
    let client = match (&s.address, &s.tls) {
        (Address::Quic(_), Some(tls)) => NetClient::new_quic(addrs, config, tls),
        (Address::Quic(_), None) => return Err("quic:// needs [tls]".into()),
        // With [tls]: mutual TLS over TCP.
        (_, tls) => {
            config.tls = tls.clone();
            NetClient::new(addrs, config)
        }
    }
    .map_err(|e| e.to_string())?;
    client.wake_up();
    Ok(client)
}

/// One local client, until it leaves or the gateway stops.
fn run_link(s: &ImportShared, mut channel: Channel) {
    let mut net = match net_client(s) {
        Ok(n) => n,
        Err(e) => {
            warn!("cannot make a client of the remote: {e}");
            return;
        }
    };
    info!(version = channel.version(), "local client connected");
    // A new link starts as the import last saw the remote: when it is down, calls fail at
    // once instead of waiting for a connect that will probably time out.
    let initial = match s.remote.load(Ordering::Relaxed) {
        DOWN => DOWN,
        _ => CONNECTING,
    };
    let state = AtomicU8::new(initial);
    let last_error = Mutex::new(String::from("not connected yet"));
    let pending: Outstanding = Mutex::new(HashMap::new());
    let done = AtomicBool::new(false);
    let writer = channel.tx().clone();
    let sender = net.sender();
    std::thread::scope(|scope| {
        // Network -> ring, and the remote's state.
        scope.spawn(|| {
            down_loop(s, &mut net, &writer, &state, &last_error, &pending, &done);
        });
        up_loop(s, &mut channel, &sender, &state, &last_error, &pending);
        done.store(true, Ordering::Relaxed);
    });
    net.close(true);
    info!("local client left");
}

/// Local client -> network.
fn up_loop(
    s: &ImportShared,
    channel: &mut Channel,
    sender: &shm_channel::net::NetSender,
    state: &AtomicU8,
    last_error: &Mutex<String>,
    pending: &Outstanding,
) {
    let c = &s.counters;
    while !s.stop.load(Ordering::Relaxed) {
        let m = match channel.recv_timeout(POLL) {
            Ok(m) => m,
            Err(RecvError::Timeout) => continue,
            Err(RecvError::PeerDied) => return,
            Err(e) => {
                warn!("reading the local client's ring: {e}");
                return;
            }
        };
        let bytes = ring_to_wire(&m);
        drop(m);
        let Some(shape) = Shape::of(&bytes) else {
            continue;
        };
        let fail = |code: LocalFailure, reason: &str| {
            Counters::bump(&c.failed_calls);
            if shape.awaits_reply() {
                let _ = fail_locally(
                    channel.tx(),
                    shape.message_id,
                    shape.request_id,
                    code,
                    reason,
                    RING_WAIT,
                );
            } else {
                Counters::bump(&c.drops);
            }
        };
        if state.load(Ordering::Relaxed) == DOWN && !shape.idempotent() && !shape.is_cancel() {
            let why = last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            debug!(message = shape.message_id, "remote down: failed at once");
            fail(
                LocalFailure::NotConnected,
                &format!("gateway: {} is unreachable: {why}", s.config.remote),
            );
            continue;
        }
        if shape.awaits_reply() {
            outstanding(pending).insert(shape.request_id, (shape.message_id, shape.idempotent()));
        }
        let n = bytes.len() as u64;
        // Backpressure: with `max_queued` messages waiting for the remote, this thread
        // waits for room and the client's ring is not read meanwhile (its sends wait, as
        // for a slow local service). After `QUEUE_WAIT` without room the message fails;
        // a `@no_queue` one is dropped at once.
        let wait = if shape.flags & shm_channel::layout::flags::NO_QUEUE != 0 {
            Duration::ZERO
        } else {
            QUEUE_WAIT
        };
        if !sender.has_room() {
            Counters::bump(&c.stalls);
            debug!(
                max_queued = s.config.max_queued,
                "the remote is slow: waiting for room"
            );
        }
        match sender.send_message_timeout(bytes, wait) {
            Ok(()) => {
                Counters::bump(&c.messages_out);
                Counters::add(&c.bytes_out, n);
            }
            Err(e) => {
                outstanding(pending).remove(&shape.request_id);
                let (code, why) = match e {
                    TransportError::NotConnected => {
                        (LocalFailure::NotConnected, format!("gateway: {e}"))
                    }
                    TransportError::Timeout => (
                        LocalFailure::Other,
                        format!(
                            "gateway: {} took none of the {} messages queued for it in {QUEUE_WAIT:?}",
                            s.config.remote, s.config.max_queued
                        ),
                    ),
                    _ => (LocalFailure::Other, format!("gateway: {e}")),
                };
                fail(code, &why);
            }
        }
    }
}

/// Network -> local client, and what happens to the connection.
fn down_loop(
    s: &ImportShared,
    net: &mut NetClient,
    writer: &RingWriter,
    state: &AtomicU8,
    last_error: &Mutex<String>,
    pending: &Outstanding,
    done: &AtomicBool,
) {
    let c = &s.counters;
    while !done.load(Ordering::Relaxed) {
        for e in net.take_events() {
            match e {
                ClientEvent::Connected { instance } => {
                    Counters::bump(&c.connects);
                    state.store(UP, Ordering::Relaxed);
                    s.remote.store(UP, Ordering::Relaxed);
                    info!(instance = %format!("{instance:032x}"), "connected to the remote");
                }
                ClientEvent::ConnectFailed(why) => {
                    Counters::bump(&c.retries);
                    if state.swap(DOWN, Ordering::Relaxed) != DOWN {
                        warn!("remote unreachable: {why}");
                    } else {
                        debug!("remote still unreachable: {why}");
                    }
                    s.remote.store(DOWN, Ordering::Relaxed);
                    *last_error.lock().unwrap_or_else(PoisonError::into_inner) = why;
                    lost(s, net, writer, pending, LocalFailure::NotConnected);
                    net.wake_up();
                }
                ClientEvent::Closed(why) => {
                    warn!("connection to the remote lost: {why}");
                    state.store(DOWN, Ordering::Relaxed);
                    s.remote.store(DOWN, Ordering::Relaxed);
                    *last_error.lock().unwrap_or_else(PoisonError::into_inner) = why.to_string();
                    lost(s, net, writer, pending, LocalFailure::ConnectionLost);
                    net.wake_up();
                }
                _ => {}
            }
        }
        let m = match net.recv_timeout(POLL) {
            Ok(m) => m,
            Err(TransportError::Timeout) => continue,
            Err(_) => return,
        };
        if m.kind() == Kind::Reply && outstanding(pending).remove(&m.request_id()).is_none() {
            // The late reply of a call already failed here (or made up by the pool for
            // one): the caller was told once.
            continue;
        }
        let n = m.bytes().len() as u64;
        match write_to_ring(writer, m.bytes(), m.flags(), RING_WAIT) {
            Ok(()) => {
                Counters::bump(&c.messages_in);
                Counters::add(&c.bytes_in, n);
            }
            Err(shm_channel::ring::SendError::PeerDied) => return,
            Err(e) => {
                Counters::bump(&c.drops);
                warn!("writing into the local client's ring: {e}");
            }
        }
    }
}

/// The remote was lost: every call awaiting its reply that may not be resent fails now
/// (`ConnectionLost` if it had left; `NotConnected` if it was still queued).
fn lost(
    s: &ImportShared,
    net: &NetClient,
    writer: &RingWriter,
    pending: &Outstanding,
    default: LocalFailure,
) {
    let failed: Vec<(u64, u64)> = {
        let mut p = outstanding(pending);
        let ids: Vec<(u64, u64)> = p
            .iter()
            .filter(|(_, (_, idempotent))| !idempotent)
            .map(|(id, (method, _))| (*id, *method))
            .collect();
        for (id, _) in &ids {
            p.remove(id);
        }
        ids
    };
    for (id, method) in failed {
        let code = match net.cancel(id) {
            shm_channel::net::Canceled::Dropped => LocalFailure::NotConnected,
            _ => default,
        };
        let reason = match code {
            LocalFailure::NotConnected => format!("gateway: {} is unreachable", s.config.remote),
            _ => format!("gateway: the connection to {} was lost", s.config.remote),
        };
        Counters::bump(&s.counters.failed_calls);
        let _ = fail_locally(writer, method, id, code, &reason, RING_WAIT);
    }
}
