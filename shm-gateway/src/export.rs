//! Exports: a local service reached by remote clients.
//!
//! Each remote connection that names an exported protocol gets **its own shm channel** to
//! the local service. Why one channel per connection rather than one shared channel with
//! rewritten request ids: a service keeps state per channel (a display's surfaces, a
//! subscription) and sends events to the channel they concern; sharing one channel would
//! mix the remote clients' state and broadcast every client's events to all of them. With
//! one channel per connection request ids, events and state stay the remote client's own,
//! a client that goes away ends exactly its channel (the service sees it leave), and the
//! service's own limits (channels per uid, ring memory) apply per remote client.
//!
//! Two threads per connection: one writes what arrives from the network into the ring (it
//! may wait for room, which the connection's I/O tasks must never do), the other reads
//! the ring and hands each message to the connection.
//!
//! Toward a remote client that reads slowly the gateway holds at most the export's
//! `max_queued` messages per connection (queued or being written): at the bound the ring
//! reader stops reading the service's ring until the connection sent some
//! (backpressure). The service then sees a slow client: its ring fills and its sends wait,
//! as they would for a local client that reads slowly (an RPC server drops a client
//! whose ring stays full for its `reply_timeout`, 5 s by default).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use shm_channel::net::{ConnError, Forward, Link, NetMessage, PeerIdentity};
use shm_channel::ring::{RecvError, SendError};
use shm_channel::rpc::IncomingMessage;
use tracing::{debug, info, info_span, warn};

use crate::config::Export;
use crate::relay::{Shape, fault_bytes, ring_to_wire, write_to_ring};
use crate::stats::Counters;

/// How long a message from the network may wait for room in the service's ring before
/// the connection is given up (the service is stuck).
const RING_WAIT: Duration = Duration::from_secs(10);
/// How often the ring reader looks at whether its connection ended.
const POLL: Duration = Duration::from_millis(100);
/// How often a stalled ring reader (its client reads slowly) looks whether there is room.
const STALL_POLL: Duration = Duration::from_millis(1);

/// The names a client certificate carries for the policy: its subject alternative names
/// (DNS names first), then its subject's common name.
pub fn identity_names(id: &PeerIdentity) -> Vec<String> {
    let mut names = id.names().to_vec();
    if let Some(cn) = id.common_name()
        && !names.iter().any(|n| n == cn)
    {
        names.push(cn.to_owned());
    }
    names
}

/// Whether a client presenting a certificate with `names` (`None`: no certificate) may
/// use a service exported with `allow` and `anonymous`. `Ok` names who it is (for logs).
pub fn check_policy(
    allow: &[String],
    anonymous: bool,
    names: Option<&[String]>,
) -> Result<String, String> {
    let Some(names) = names else {
        return if anonymous {
            Ok("anonymous".into())
        } else {
            Err("a client certificate is required".into())
        };
    };
    if allow.iter().any(|a| a == "*") {
        return Ok(names.first().cloned().unwrap_or_else(|| "*".into()));
    }
    match names.iter().find(|n| allow.contains(n)) {
        Some(n) => Ok(n.clone()),
        None => Err(format!(
            "certificate {} is not allowed",
            if names.is_empty() {
                "without a name".to_owned()
            } else {
                names.join(", ")
            }
        )),
    }
}

/// What every connection of one export shares.
pub(crate) struct ExportShared {
    pub(crate) config: Export,
    pub(crate) counters: Arc<Counters>,
    /// Remote connections open now, all exports together, and their limit.
    pub(crate) total_open: Arc<AtomicU64>,
    pub(crate) max_total: u64,
    pub(crate) max_message: u64,
    pub(crate) runtime_dir: Option<PathBuf>,
    /// Per connection: the queue of its ring writer.
    links: Mutex<HashMap<u64, mpsc::Sender<NetMessage>>>,
}

impl ExportShared {
    pub(crate) fn new(
        config: Export,
        total_open: Arc<AtomicU64>,
        max_total: u64,
        listen_max_message: u64,
        runtime_dir: Option<PathBuf>,
    ) -> Arc<Self> {
        let max_message = config.max_message.unwrap_or(listen_max_message);
        Arc::new(ExportShared {
            config,
            counters: Arc::new(Counters::default()),
            total_open,
            max_total,
            max_message,
            runtime_dir,
            links: Mutex::new(HashMap::new()),
        })
    }

    fn links(&self) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::Sender<NetMessage>>> {
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn shm_config(&self) -> shm_channel::ClientConfig {
        let c = &self.config;
        let [up, down] = c.ring_sizes.unwrap_or([256 << 20, 256 << 20]);
        let config =
            shm_channel::ClientConfig::new(c.protocol.clone(), c.versions[0]..=c.versions[1])
                .ring_sizes(up, down)
                .timeout(Duration::from_secs(5));
        match &self.runtime_dir {
            Some(d) => config.runtime_dir(d),
            None => config,
        }
    }
}

/// The [`Forward`] of one export.
pub(crate) struct ExportForward(pub(crate) Arc<ExportShared>);

impl Forward for ExportForward {
    fn opened(&self, link: &Link) -> Result<(), String> {
        let s = &self.0;
        let service = &s.config.service;
        let refuse = |why: String| {
            Counters::bump(&s.counters.refused);
            warn!(service = %service, peer = %link.peer_addr(), "refused: {why}");
            Err(format!("gateway: service {service:?}: {why}"))
        };
        let allow = s.config.allow.as_deref().unwrap_or_default();
        let names = link.peer_identity().map(identity_names);
        let who = match check_policy(allow, s.config.anonymous, names.as_deref()) {
            Ok(who) => who,
            Err(why) => return refuse(why),
        };
        if s.counters.open.load(Ordering::Relaxed) >= s.config.max_connections as u64 {
            return refuse(format!(
                "its limit of {} connections is reached",
                s.config.max_connections
            ));
        }
        if s.total_open.fetch_add(1, Ordering::Relaxed) >= s.max_total {
            s.total_open.fetch_sub(1, Ordering::Relaxed);
            return refuse(format!(
                "the gateway's limit of {} connections is reached",
                s.max_total
            ));
        }
        Counters::bump(&s.counters.open);
        Counters::bump(&s.counters.accepted);
        let (tx, rx) = mpsc::channel();
        let link_id = link.id();
        s.links().insert(link_id, tx);
        let shared = Arc::clone(s);
        let link = link.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("gw-export-{}", link.id()))
            .spawn(move || {
                let span = info_span!("export", service = %shared.config.service, link = link.id(), peer = %link.peer_addr(), who = %who);
                let _enter = span.enter();
                run_link(&shared, &link, rx);
                shared.links().remove(&link.id());
                Counters::drop_one(&shared.counters.open);
                shared.total_open.fetch_sub(1, Ordering::Relaxed);
            });
        if let Err(e) = spawned {
            s.links().remove(&link_id);
            Counters::drop_one(&s.counters.open);
            s.total_open.fetch_sub(1, Ordering::Relaxed);
            return Err(format!("gateway: cannot start a thread: {e}"));
        }
        Ok(())
    }

    fn message(&self, link: &Link, message: NetMessage) {
        let s = &self.0;
        Counters::bump(&s.counters.received);
        let len = message.bytes().len() as u64;
        if len > s.max_message {
            Counters::bump(&s.counters.drops);
            link.close(format!(
                "gateway: a message of {len} bytes exceeds service {:?}'s limit of {} bytes",
                s.config.service, s.max_message
            ));
            return;
        }
        if let Some(tx) = s.links().get(&link.id()) {
            let _ = tx.send(message);
        }
    }

    fn closed(&self, link: &Link, error: &ConnError) {
        debug!(service = %self.0.config.service, link = link.id(), "connection closed: {error}");
        // Ends the ring writer, which ends the link.
        self.0.links().remove(&link.id());
    }
}

/// One remote connection's channel to the service, until either side ends.
fn run_link(s: &ExportShared, link: &Link, rx: mpsc::Receiver<NetMessage>) {
    let service = &s.config.service;
    let mut channel = match shm_channel::connect(service, &s.shm_config()) {
        Ok(c) => c,
        Err(e) => {
            Counters::bump(&s.counters.refused);
            warn!("the local service is not reachable: {e}");
            link.close(format!(
                "gateway: service {service:?} is not reachable: {e}"
            ));
            return;
        }
    };
    info!(
        version = channel.version(),
        "connected to the local service"
    );
    let writer = channel.tx().clone();
    let done = Arc::new(AtomicBool::new(false));
    std::thread::scope(|scope| {
        let done2 = Arc::clone(&done);
        // Ring -> network.
        let max_queued = s.config.max_queued;
        scope.spawn(move || {
            let counters = &s.counters;
            loop {
                if done2.load(Ordering::Relaxed) {
                    break;
                }
                // Backpressure: while the remote client has `max_queued` messages not
                // yet sent to it, the service's messages stay in its ring, and the
                // service waits for room as it would for a slow local client. Nothing
                // piles up here, nothing is dropped.
                if link.unsent() >= max_queued {
                    Counters::bump(&counters.stalls);
                    debug!(
                        max_queued,
                        "the remote client is slow: not reading the ring"
                    );
                    while link.unsent() >= max_queued
                        && !done2.load(Ordering::Relaxed)
                        && !link.is_closed()
                    {
                        std::thread::sleep(STALL_POLL);
                    }
                    continue;
                }
                match channel.recv_timeout(POLL) {
                    Ok(m) => {
                        let bytes = ring_to_wire(&m);
                        drop(m);
                        let n = bytes.len() as u64;
                        if link.send_message(bytes).is_err() {
                            break;
                        }
                        Counters::bump(&counters.messages_out);
                        Counters::add(&counters.bytes_out, n);
                    }
                    Err(RecvError::Timeout) => {}
                    Err(RecvError::PeerDied) => {
                        info!("the local service closed the channel");
                        link.close(format!("gateway: service {service:?} went away"));
                        break;
                    }
                    Err(e) => {
                        warn!("reading the service's ring: {e}");
                        link.close(format!("gateway: service {service:?}: {e}"));
                        break;
                    }
                }
            }
            // Dropping the channel tells the service this client left.
        });
        // Network -> ring, until the connection closes.
        for m in rx.iter() {
            let n = m.bytes().len() as u64;
            match write_to_ring(&writer, m.bytes(), m.flags(), RING_WAIT) {
                Ok(()) => {
                    Counters::bump(&s.counters.messages_in);
                    Counters::add(&s.counters.bytes_in, n);
                }
                Err(SendError::Dropped) => Counters::bump(&s.counters.drops),
                Err(SendError::TooLarge { size, max }) => {
                    Counters::bump(&s.counters.drops);
                    // The caller learns why instead of waiting for a reply that never comes.
                    if let Some(shape) = Shape::of(m.bytes())
                        && shape.awaits_reply()
                    {
                        Counters::bump(&s.counters.failed_calls);
                        let reason = format!(
                            "gateway: a message of {size} bytes exceeds service {service:?}'s ring limit of {max} bytes"
                        );
                        let _ = link.send_message(fault_bytes(
                            shape.message_id,
                            shape.request_id,
                            &reason,
                        ));
                    }
                }
                Err(e) => {
                    warn!("writing into the service's ring: {e}");
                    link.close(format!("gateway: service {service:?}: {e}"));
                    break;
                }
            }
        }
        done.store(true, Ordering::Relaxed);
    });
    info!("link ended");
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    #[test]
    fn the_policy_matches_names_wildcards_and_anonymous() {
        let made = crate::pki::make_certs("ca", &["a.example".into()]).unwrap();
        let chain: Vec<_> = CertificateDer::pem_slice_iter(made.leaves[0].1.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        let names = identity_names(&PeerIdentity::from_chain(&chain).unwrap());
        assert_eq!(names, vec!["a.example"]);
        let names = Some(&names[..]);
        let allow = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            check_policy(&allow(&["a.example"]), false, names),
            Ok("a.example".into())
        );
        assert_eq!(
            check_policy(&allow(&["*"]), false, names),
            Ok("a.example".into())
        );
        let e = check_policy(&allow(&["b.example"]), false, names).unwrap_err();
        assert_eq!(e, "certificate a.example is not allowed");
        let e = check_policy(&allow(&["*"]), false, None).unwrap_err();
        assert_eq!(e, "a client certificate is required");
        assert_eq!(
            check_policy(&allow(&[]), true, None),
            Ok("anonymous".into())
        );
    }
}
