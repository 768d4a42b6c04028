//! Counters a user can read: per export and per import, from [`Gateway::stats`](crate::Gateway::stats)
//! in process, or `shm-gateway stats` through the control socket.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters of one export or import (relaxed atomics: each is exact, a
        /// snapshot of several is not atomic).
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// The counters at one moment.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct Snapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Counters {
            /// Their values now.
            pub fn snapshot(&self) -> Snapshot {
                Snapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl fmt::Display for Snapshot {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut first = true;
                $(
                    if !first { f.write_str(" ")?; }
                    first = false;
                    write!(f, "{}={}", stringify!($name), self.$name)?;
                )*
                let _ = first;
                Ok(())
            }
        }

        impl Snapshot {
            /// The value of the counter named `name`.
            pub fn get(&self, name: &str) -> Option<u64> {
                match name {
                    $(stringify!($name) => Some(self.$name),)*
                    _ => None,
                }
            }

            /// Sets the counter named `name` (false: no such counter).
            pub fn set(&mut self, name: &str, value: u64) -> bool {
                match name {
                    $(stringify!($name) => { self.$name = value; true })*
                    _ => false,
                }
            }
        }
    };
}

counters! {
    /// Connections open now (exports: remote clients; imports: local clients).
    open,
    /// Connections accepted so far.
    accepted,
    /// Connections refused (policy, limits, the local service unreachable).
    refused,
    /// Messages from the network to the local side (written into its ring).
    messages_in,
    /// Exports: messages that arrived from the network, written into the ring or not
    /// yet. While the connections last, `received - messages_in - drops` wait in the
    /// gateway for room in the service's ring (each for at most 10 s, then the
    /// connection closes); those a closing connection left behind are not counted
    /// anywhere else.
    received,
    /// Messages from the local side to the network.
    messages_out,
    /// Bytes of `messages_in`.
    bytes_in,
    /// Bytes of `messages_out`.
    bytes_out,
    /// Connects to the remote that failed and were retried (imports).
    retries,
    /// Connections to the remote that came up (imports; the first one included).
    connects,
    /// Messages dropped (a full ring for `@no_queue`, a one-way while the remote is down).
    drops,
    /// Calls the gateway failed itself (remote down, connection lost, too large).
    failed_calls,
    /// Times the gateway stopped reading a ring because the peer on the other side of
    /// the network was not taking messages (`max_queued` reached): backpressure.
    stalls,
}

impl Counters {
    /// Adds one to `c`.
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to `c`.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Subtracts one from `c` (a gauge).
    pub fn drop_one(c: &AtomicU64) {
        c.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The counters of every export and import.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Per export: the local service's name, its counters.
    pub exports: Vec<(String, Snapshot)>,
    /// Per import: the local name, whether its remote is reachable now, its counters.
    pub imports: Vec<(String, Snapshot)>,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, s) in &self.exports {
            writeln!(f, "export {name} {s}")?;
        }
        for (name, s) in &self.imports {
            writeln!(f, "import {name} {s}")?;
        }
        Ok(())
    }
}

impl Stats {
    /// Parses what [`Display`](fmt::Display) printed (what `shm-gateway stats` reads):
    /// lines of `export|import NAME key=value...`.
    pub fn parse(text: &str) -> Result<Stats, String> {
        let mut stats = Stats::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut words = line.split_whitespace();
            let (Some(kind), Some(name)) = (words.next(), words.next()) else {
                return Err(format!("bad stats line {line:?}"));
            };
            let mut s = Snapshot::default();
            for kv in words {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| format!("bad stats field {kv:?}"))?;
                let v: u64 = v.parse().map_err(|_| format!("bad stats value {kv:?}"))?;
                // Unknown names (from a newer gateway) are skipped.
                s.set(k, v);
            }
            match kind {
                "export" => stats.exports.push((name.to_owned(), s)),
                "import" => stats.imports.push((name.to_owned(), s)),
                _ => return Err(format!("bad stats line {line:?}")),
            }
        }
        Ok(stats)
    }

    /// The counters of export `name`.
    pub fn export(&self, name: &str) -> Option<&Snapshot> {
        self.exports.iter().find(|(n, _)| n == name).map(|(_, s)| s)
    }

    /// The counters of import `name`.
    pub fn import(&self, name: &str) -> Option<&Snapshot> {
        self.imports.iter().find(|(n, _)| n == name).map(|(_, s)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_print_and_parse_back() {
        let c = Counters::default();
        Counters::add(&c.bytes_in, 4096);
        Counters::bump(&c.messages_in);
        Counters::bump(&c.retries);
        let stats = Stats {
            exports: vec![("display".into(), c.snapshot())],
            imports: vec![("kv".into(), Snapshot::default())],
        };
        let text = stats.to_string();
        assert!(
            text.starts_with("export display open=0 accepted=0"),
            "{text}"
        );
        assert_eq!(Stats::parse(&text).unwrap(), stats);
        assert_eq!(stats.export("display").unwrap().get("bytes_in"), Some(4096));
        assert!(Stats::parse("what is this").is_err());
    }
}
