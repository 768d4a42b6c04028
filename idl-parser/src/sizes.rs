//! Sizes from the IDL: the largest encoding of every message, and each
//! ring's maximum size with the message that decided it.
//!
//! # Where the layout numbers come from
//!
//! Header sizes, alignments and page rounding are not repeated here: they come
//! from the `shm-layout` crate ([`shm_layout::record_size`],
//! [`shm_layout::ring_size_for`], [`shm_layout::DEFAULT_RING_MAX`], ...), which
//! the runtime (`shm-channel`) uses too. `shm-layout` depends on nothing of
//! ours, so the IDL crates can use it without depending on the runtime, and
//! `shm-channel` can re-export `include_idl!` without a dependency cycle.
//!
//! # The message encoding
//!
//! - A **request** carries one object per parameter; object `i` holds
//!   parameter `i` (from 0).
//! - A **reply** carries one object (id 0) holding the return value; the
//!   empty completion of a `@sync` method carries no object.
//! - An **event** carries one object per parameter, as a request does.
//!
//! Inside an object, a value is encoded compactly, little-endian, without
//! padding:
//!
//! | type | bytes | largest |
//! |---|---|---|
//! | `bool`, `u8`, `i8` | 1 | 1 |
//! | `u16`, `i16` | 2 | 2 |
//! | `u32`, `i32`, `f32` | 4 | 4 |
//! | `u64`, `i64`, `f64` | 8 | 8 |
//! | `string<N>`, `bytes<N>` | `u32` length + the bytes | 4 + N |
//! | `[T; N]` | N values of T | N × max(T) |
//! | `vec<T, N>` | `u32` count + the elements | 4 + N × max(T) |
//! | `option<T>` | `u8` tag (0 none, 1 some) + T if some | 1 + max(T) |
//! | struct | the fields in order | Σ max(field) |
//! | enum | `u32` discriminant + the variant's payload, if any | 4 + max(payload) |
//! | `result<T, E>` | `u8` tag (0 ok, 1 err) + T or E | 1 + max(max(T), max(E)) |
//! | `()` | nothing | 0 |
//!
//! `string`, `bytes` and `vec<T>` (and any type containing one, or a type
//! that contains itself through `option` or `vec`) have no largest encoding:
//! they are *unbounded*.
//!
//! A message occupies [`shm_layout::record_size`] bytes of the ring: the
//! message header, each object (header + data padded to 8), the whole rounded
//! up to [`shm_layout::RECORD_ALIGN`].
//!
//! # Ring maxima
//!
//! With `margin(x) = ⌈110% × x⌉`, in integers `⌈11x / 10⌉`:
//!
//! - client to server: `ring_size_for(margin(max over fns of record × queue))`
//!   where `queue` is `N` for a one-way fn with `@queue(N)`, else 1; decided by
//!   the fn that gave the maximum.
//! - server to client: `ring_size_for(margin(largest reply record) + Σ over
//!   events margin(record × queue))`, `queue` defaulting to 1; decided by the
//!   largest term (the reply's fn, or an event).
//! - `@buffer(SIZE)` replaces both (rounded up to whole pages); decided by
//!   `@buffer`.
//! - otherwise, when any message travelling in a ring is unbounded, that ring
//!   is [`shm_layout::DEFAULT_RING_MAX`]; decided by `default`.
//! - a ring no message travels in gets one page (`ring_size_for(0)`).
//!
//! All arithmetic is checked: an overflow is a diagnostic (E0034), never a
//! wrap or a panic.

use std::fmt;

use shm_layout::{DEFAULT_RING_MAX, PAGE_SIZE, record_size, ring_size_for};

/// The maximum sizes of a protocol's two rings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingSizes {
    /// Requests travel this way.
    pub client_to_server: RingSize,
    /// Replies and events travel this way.
    pub server_to_client: RingSize,
}

/// One ring's maximum size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingSize {
    /// Maximum bytes of the ring, header included (a multiple of the page).
    pub max_bytes: u64,
    /// What decided it.
    pub decided_by: DecidedBy,
}

/// What decided a ring's maximum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecidedBy {
    /// This method (request or reply) or event.
    Message(String),
    /// The protocol's `@buffer(SIZE)`.
    Buffer,
    /// [`shm_layout::DEFAULT_RING_MAX`], because a message is unbounded.
    Default,
    /// No message travels in this ring: one page.
    Empty,
}

impl fmt::Display for DecidedBy {
    /// As `idlc sizes` prints it: the message name, `@buffer`, `default`, or
    /// `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecidedBy::Message(m) => f.write_str(m),
            DecidedBy::Buffer => f.write_str("@buffer"),
            DecidedBy::Default => f.write_str("default"),
            DecidedBy::Empty => f.write_str("none"),
        }
    }
}

/// The largest encoding of a value, or why there is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Max {
    /// At most this many bytes.
    Bytes(u64),
    /// No bound.
    Unbounded,
    /// The bound does not fit in 64 bits.
    Overflow,
}

impl Max {
    /// `Some(bytes)` when bounded.
    pub fn bytes(self) -> Option<u64> {
        match self {
            Max::Bytes(b) => Some(b),
            _ => None,
        }
    }

    fn then(self, f: impl FnOnce(u64) -> Option<u64>) -> Max {
        match self {
            Max::Bytes(b) => f(b).map_or(Max::Overflow, Max::Bytes),
            other => other,
        }
    }

    /// Combines two sizes with `f`; overflow wins over unbounded, so that it
    /// is reported.
    fn zip(self, other: Max, f: impl FnOnce(u64, u64) -> Option<u64>) -> Max {
        match (self, other) {
            (Max::Overflow, _) | (_, Max::Overflow) => Max::Overflow,
            (Max::Unbounded, _) | (_, Max::Unbounded) => Max::Unbounded,
            (Max::Bytes(a), Max::Bytes(b)) => f(a, b).map_or(Max::Overflow, Max::Bytes),
        }
    }
}

pub(crate) fn add(a: Max, b: Max) -> Max {
    a.zip(b, u64::checked_add)
}

pub(crate) fn max(a: Max, b: Max) -> Max {
    a.zip(b, |x, y| Some(x.max(y)))
}

/// `prefix + count × elem`, for `string<N>`, `bytes<N>`, `vec<T, N>`, `[T; N]`.
pub(crate) fn repeat(prefix: u64, count: u64, elem: Max) -> Max {
    elem.then(|e| e.checked_mul(count)?.checked_add(prefix))
}

pub(crate) fn plus(a: Max, n: u64) -> Max {
    a.then(|x| x.checked_add(n))
}

/// The record a message with these objects occupies in the ring.
pub(crate) fn record(objects: impl IntoIterator<Item = Max>) -> Max {
    let mut lens = Vec::new();
    let mut unbounded = false;
    for o in objects {
        match o {
            Max::Bytes(b) => lens.push(b),
            Max::Unbounded => unbounded = true,
            Max::Overflow => return Max::Overflow,
        }
    }
    if unbounded {
        return Max::Unbounded;
    }
    record_size(lens).map_or(Max::Overflow, Max::Bytes)
}

/// The sizes that decide a protocol's rings.
pub(crate) struct Traffic<'a> {
    /// `@buffer(SIZE)`.
    pub(crate) buffer: Option<u64>,
    /// Each fn: name, request record, queue factor.
    pub(crate) requests: Vec<(&'a str, Max, u64)>,
    /// Each two-way fn: name, reply record.
    pub(crate) replies: Vec<(&'a str, Max)>,
    /// Each event: name, record, queue factor.
    pub(crate) events: Vec<(&'a str, Max, u64)>,
}

/// Why ring sizes could not be computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Overflow {
    /// The message (or `@buffer`) whose arithmetic overflowed.
    pub(crate) culprit: String,
}

fn margin(x: u64) -> Option<u64> {
    Some(x.checked_mul(11)?.div_ceil(10))
}

/// Applies the ring rule (see the module docs).
pub(crate) fn ring_sizes(t: &Traffic<'_>) -> Result<RingSizes, Overflow> {
    let overflow = |culprit: &str| Overflow {
        culprit: culprit.to_string(),
    };
    if let Some(buffer) = t.buffer {
        let bytes = buffer
            .div_ceil(PAGE_SIZE)
            .checked_mul(PAGE_SIZE)
            .ok_or_else(|| overflow("@buffer"))?;
        let ring = RingSize {
            max_bytes: bytes,
            decided_by: DecidedBy::Buffer,
        };
        return Ok(RingSizes {
            client_to_server: ring.clone(),
            server_to_client: ring,
        });
    }

    let c2s = {
        let mut best: Option<(&str, u64)> = None;
        let mut unbounded = false;
        for (name, rec, queue) in &t.requests {
            match rec {
                Max::Bytes(b) => {
                    let total = b.checked_mul(*queue).ok_or_else(|| overflow(name))?;
                    if best.is_none_or(|(_, m)| total > m) {
                        best = Some((name, total));
                    }
                }
                Max::Unbounded => unbounded = true,
                Max::Overflow => return Err(overflow(name)),
            }
        }
        finish(unbounded, best.map(|(n, b)| (n, margin(b))), &overflow)?
    };

    let s2c = {
        let mut unbounded = false;
        let mut terms: Vec<(&str, u64)> = Vec::new();
        let mut reply: Option<(&str, u64)> = None;
        for (name, rec) in &t.replies {
            match rec {
                Max::Bytes(b) => {
                    if reply.is_none_or(|(_, m)| *b > m) {
                        reply = Some((name, *b));
                    }
                }
                Max::Unbounded => unbounded = true,
                Max::Overflow => return Err(overflow(name)),
            }
        }
        if let Some((name, b)) = reply {
            terms.push((name, margin(b).ok_or_else(|| overflow(name))?));
        }
        for (name, rec, queue) in &t.events {
            match rec {
                Max::Bytes(b) => {
                    let term = b
                        .checked_mul(*queue)
                        .and_then(margin)
                        .ok_or_else(|| overflow(name))?;
                    terms.push((name, term));
                }
                Max::Unbounded => unbounded = true,
                Max::Overflow => return Err(overflow(name)),
            }
        }
        let mut sum = 0u64;
        let mut best: Option<(&str, u64)> = None;
        for (name, term) in &terms {
            sum = sum.checked_add(*term).ok_or_else(|| overflow(name))?;
            if best.is_none_or(|(_, m)| *term > m) {
                best = Some((name, *term));
            }
        }
        finish(unbounded, best.map(|(n, _)| (n, Some(sum))), &overflow)?
    };

    Ok(RingSizes {
        client_to_server: c2s,
        server_to_client: s2c,
    })
}

fn finish(
    unbounded: bool,
    body: Option<(&str, Option<u64>)>,
    overflow: &dyn Fn(&str) -> Overflow,
) -> Result<RingSize, Overflow> {
    if unbounded {
        return Ok(RingSize {
            max_bytes: DEFAULT_RING_MAX,
            decided_by: DecidedBy::Default,
        });
    }
    match body {
        None => Ok(RingSize {
            max_bytes: ring_size_for(0).ok_or_else(|| overflow("ring"))?,
            decided_by: DecidedBy::Empty,
        }),
        Some((name, bytes)) => {
            let max_bytes = bytes
                .and_then(ring_size_for)
                .ok_or_else(|| overflow(name))?;
            Ok(RingSize {
                max_bytes,
                decided_by: DecidedBy::Message(name.to_string()),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_rounds_up() {
        assert_eq!(margin(10), Some(11));
        assert_eq!(margin(128), Some(141)); // 140.8
        assert_eq!(margin(0), Some(0));
        assert_eq!(margin(u64::MAX / 10), None);
    }

    #[test]
    fn combinators_propagate_unbounded_and_overflow() {
        assert_eq!(add(Max::Bytes(1), Max::Unbounded), Max::Unbounded);
        assert_eq!(add(Max::Overflow, Max::Unbounded), Max::Overflow);
        assert_eq!(add(Max::Bytes(u64::MAX), Max::Bytes(1)), Max::Overflow);
        assert_eq!(repeat(4, 3, Max::Bytes(2)), Max::Bytes(10));
        assert_eq!(repeat(0, u64::MAX, Max::Bytes(2)), Max::Overflow);
        assert_eq!(record([Max::Bytes(1), Max::Unbounded]), Max::Unbounded);
        // 48 + (16 + 8) = 72 -> 128
        assert_eq!(record([Max::Bytes(1)]), Max::Bytes(128));
    }

    #[test]
    fn overflowing_rings_are_errors() {
        let t = Traffic {
            buffer: None,
            requests: vec![("big", Max::Bytes(u64::MAX / 2), 4)],
            replies: vec![],
            events: vec![],
        };
        assert_eq!(
            ring_sizes(&t),
            Err(Overflow {
                culprit: "big".into()
            })
        );
        let t = Traffic {
            buffer: Some(u64::MAX),
            requests: vec![],
            replies: vec![],
            events: vec![],
        };
        assert_eq!(
            ring_sizes(&t),
            Err(Overflow {
                culprit: "@buffer".into()
            })
        );
    }

    #[test]
    fn decided_by_prints_as_idlc_does() {
        assert_eq!(DecidedBy::Message("blit".into()).to_string(), "blit");
        assert_eq!(DecidedBy::Buffer.to_string(), "@buffer");
        assert_eq!(DecidedBy::Default.to_string(), "default");
        assert_eq!(DecidedBy::Empty.to_string(), "none");
    }
}
