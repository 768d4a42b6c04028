//! What a [`NetClient`](super::NetClient) or a [`NetServer`](super::NetServer) did so
//! far, for the user to read ([`NetStats`]), and the logging of its connections' lives.
//!
//! The counters are relaxed atomics bumped where the driver already handles the event
//! (a connect, a close, a refused send), plus the per-connection [`ConnStats`] that the
//! sans-io core keeps under the lock it is driven with: nothing on the message path takes
//! a lock or a cache line it did not take already.
//!
//! Logging goes through `tracing`: a span per connection (`net_conn{side, transport,
//! peer, conn, protocol}`), events at `info`/`warn` for what happens to connections and
//! at `debug`/`trace` for what happens to single messages. Without a subscriber each
//! macro is one relaxed load of tracing's global level filter.

use std::sync::atomic::{AtomicU64, Ordering};

use super::conn::{ConnError, ConnStats};
use super::frame::CloseCode;

/// Defines [`NetStats`] (every field a `u64`) and the atomics of the counters kept as
/// events happen; the other fields are filled from [`ConnStats`] and the pool.
macro_rules! net_stats {
    (
        counted { $( $(#[doc = $cdoc:literal])* $counted:ident, )* }
        derived { $( $(#[doc = $ddoc:literal])* $derived:ident, )* }
    ) => {
        /// Counters of a [`NetClient`](super::NetClient) or a [`NetServer`](super::NetServer)
        /// (over TCP, TLS and QUIC alike), since it was made: read them with `stats()`.
        /// They only grow. Some are one side's only (a server never reconnects); see
        /// `docs/NETWORK.md`, "Observability", for the table.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct NetStats {
            $( $(#[doc = $cdoc])* pub $counted: u64, )*
            $( $(#[doc = $ddoc])* pub $derived: u64, )*
        }

        /// The counters bumped as events happen (see [`NetStats`] for each).
        #[derive(Debug, Default)]
        pub(super) struct Counters {
            $( pub(super) $counted: AtomicU64, )*
        }

        impl Counters {
            /// The counted fields now (the derived ones zero).
            fn load(&self) -> NetStats {
                NetStats {
                    $( $counted: self.$counted.load(Ordering::Relaxed), )*
                    ..NetStats::default()
                }
            }
        }

        impl NetStats {
            /// Every counter as `(name, value)`, in the order of the fields.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![
                    $( (stringify!($counted), self.$counted), )*
                    $( (stringify!($derived), self.$derived), )*
                ]
            }
        }
    };
}

net_stats! {
    counted {
        /// Connections whose handshake succeeded (client: connected; server: accepted).
        connections_opened,
        /// Of those, the ones that closed since, for any reason.
        connections_closed,
        /// Server: connections refused at its limit (`ServerConfig::max_connections`):
        /// answered and closed, or (past as many again at once) dropped unanswered.
        connections_refused,
        /// Client: connection attempts that never opened (the TCP or QUIC connect, the TLS
        /// handshake or ours failed or timed out; a connection closed before its handshake
        /// finished).
        connects_failed,
        /// TLS or protocol handshakes that failed, were refused or timed out (a server
        /// also counts clients that broke or never finished their hello).
        handshakes_failed,
        /// Messages that failed in transit: their connection was lost (they were not
        /// idempotent), the peer restarted while their reply was awaited, a one-shot
        /// message found no connection, the pool closed under them, a server's reply found
        /// its client gone.
        messages_failed,
        /// Messages sent with `no_queue` that no connection could take at once: dropped.
        dropped_no_queue,
        /// Messages refused because the send queue stayed full past their timeout.
        dropped_queue_full,
        /// Messages the peer would not take: larger than its limit, a streamed message it
        /// refused, a message sent to a closing pool.
        dropped_refused,
        /// Connects and handshakes (TLS or ours) that did not finish in time.
        timeouts,
        /// Connections closed because the peer stayed silent past the inactivity timeout
        /// (a client's keep-alives went unanswered; a server's client went quiet) or sent
        /// too many keep-alives.
        keepalive_failures,
        /// Connections closed because the peer broke the wire format (garbage, a malformed
        /// or oversized frame or record, a frame on the wrong QUIC stream).
        hostile_frames,
    }
    derived {
        /// Client: connects made after a failed connect or a dropped connection (the
        /// retries, each after its backoff).
        reconnects,
        /// Client: idempotent messages sent again because their connection dropped after
        /// they started (or while their reply was awaited).
        resends,
        /// Messages sent whole (their last frame handed to the socket).
        messages_sent,
        /// Messages received whole (a streamed one counts when it starts).
        messages_received,
        /// Message bytes sent (headers and objects, before compression).
        raw_bytes_sent,
        /// Bytes sent on the wire: the handshake record and every frame, after
        /// compression (not what TLS or QUIC add).
        wire_bytes_sent,
        /// Message bytes received (after decompression).
        raw_bytes_received,
        /// Bytes received on the wire: the handshake record and every frame (not what TLS
        /// or QUIC add).
        wire_bytes_received,
        /// Data frames sent.
        frames_sent,
        /// Of those, sent compressed.
        frames_compressed,
    }
}

impl std::fmt::Display for NetStats {
    /// One `name value` line per counter.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (name, value) in self.fields() {
            writeln!(f, "{name:<20} {value}")?;
        }
        Ok(())
    }
}

impl NetStats {
    /// These counters with the connections' traffic counters in.
    pub(super) fn with_traffic(mut self, t: ConnStats) -> Self {
        self.messages_sent = t.messages_sent;
        self.messages_received = t.messages_received;
        self.raw_bytes_sent = t.raw_bytes_sent;
        self.wire_bytes_sent = t.wire_bytes_sent;
        self.raw_bytes_received = t.raw_bytes_received;
        self.wire_bytes_received = t.wire_bytes_received;
        self.frames_sent = t.frames_sent;
        self.frames_compressed = t.frames_compressed;
        self
    }
}

/// One more.
pub(super) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    /// The counters now, with the connections' traffic `t`.
    pub(super) fn snapshot(&self, t: ConnStats) -> NetStats {
        self.load().with_traffic(t)
    }

    /// Counts and logs the close of a connection (`opened`: its handshake had finished),
    /// inside its span. `client`: a close before the handshake is also a failed connect.
    pub(super) fn closed(&self, error: &ConnError, opened: bool, client: bool) {
        match error {
            ConnError::Frame(e) => {
                bump(&self.hostile_frames);
                tracing::warn!(error = %e, "hostile frame rejected: closing the connection");
            }
            ConnError::InactivityTimeout | ConnError::TooManyKeepalives => {
                bump(&self.keepalive_failures);
                tracing::warn!(reason = %error, "keep-alive failed: closing the connection");
            }
            ConnError::HandshakeTimeout => bump(&self.timeouts),
            _ => {}
        }
        if opened {
            bump(&self.connections_closed);
            match error {
                // Ends that say nothing is wrong: ours, the peer's, an idle client let go.
                ConnError::Local
                | ConnError::PeerGone
                | ConnError::ClosedByPeer {
                    code: CloseCode::Normal | CloseCode::InactivityTimeout,
                    ..
                } => tracing::info!(reason = %error, "connection closed"),
                _ => tracing::warn!(reason = %error, "connection closed"),
            }
        } else if *error != ConnError::Local {
            // (A connection closed here before its handshake, by a closing pool, did not
            // fail.)
            bump(&self.handshakes_failed);
            if client {
                bump(&self.connects_failed);
            }
            tracing::warn!(reason = %error, "handshake failed");
        }
    }
}
