//! Where [`Connection::poll_transmit`](super::conn::Connection::poll_transmit) puts the
//! frames it gives: one contiguous buffer (`Vec<u8>`, what the tests and the QUIC driver
//! use), or a [`Transmit`], which keeps each message payload as a shared slice of the
//! message ([`Bytes`]) next to the frame headers, for one vectored write. A message's bytes
//! are then written once, by its sender, and copied only by the kernel.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};

/// A sink for frames (see the module docs).
pub trait TransmitBuf {
    /// The bytes held.
    fn len(&self) -> usize;
    /// Whether nothing is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Appends a copy of `bytes` (headers, control frames, compressed payloads).
    fn put_slice(&mut self, bytes: &[u8]);
    /// Appends `bytes`; a [`Transmit`] keeps them as they are, without a copy.
    fn put_bytes(&mut self, bytes: Bytes) {
        self.put_slice(&bytes);
    }
}

impl TransmitBuf for Vec<u8> {
    fn len(&self) -> usize {
        Vec::len(self)
    }

    fn put_slice(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Frames as a sequence of pieces: copied bytes (headers, small frames) gathered in one
/// buffer between the shared payload slices. Written with [`io_slices`](Self::io_slices)
/// and [`advance`](Self::advance).
#[derive(Debug, Default)]
pub struct Transmit {
    parts: VecDeque<Bytes>,
    /// Copied bytes after the last part, not yet cut into a part.
    tail: BytesMut,
    len: usize,
}

/// The most pieces handed to one vectored write (Linux takes up to 1024).
const MAX_SLICES: usize = 256;

impl Transmit {
    /// An empty one.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cuts the copied tail into a part, so that the parts hold everything in order.
    fn seal(&mut self) {
        if !self.tail.is_empty() {
            let t = self.tail.split().freeze();
            self.parts.push_back(t);
        }
    }

    /// The pieces to write next, in order (at most a few hundred: pass them to one
    /// vectored write, then [`advance`](Self::advance) by what it took).
    pub fn io_slices(&mut self) -> Vec<IoSlice<'_>> {
        self.seal();
        self.parts
            .iter()
            .take(MAX_SLICES)
            .map(|p| IoSlice::new(p))
            .collect()
    }

    /// Drops the first `n` bytes (written).
    pub fn advance(&mut self, mut n: usize) {
        self.seal();
        self.len -= n.min(self.len);
        while n > 0 {
            let Some(front) = self.parts.front_mut() else {
                break;
            };
            if n < front.len() {
                front.advance(n);
                break;
            }
            n -= front.len();
            self.parts.pop_front();
        }
    }

    /// Moves everything into one contiguous buffer (for a stream without vectored writes,
    /// such as TLS, where each write would make its own record) and empties this.
    pub fn flatten_into(&mut self, out: &mut Vec<u8>) {
        self.seal();
        out.reserve(self.len);
        for p in self.parts.drain(..) {
            out.extend_from_slice(&p);
        }
        self.len = 0;
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.parts.clear();
        self.tail.clear();
        self.len = 0;
    }
}

impl TransmitBuf for Transmit {
    fn len(&self) -> usize {
        self.len
    }

    fn put_slice(&mut self, bytes: &[u8]) {
        self.tail.extend_from_slice(bytes);
        self.len += bytes.len();
    }

    fn put_bytes(&mut self, bytes: Bytes) {
        // Small pieces are cheaper copied than written as their own slice.
        if bytes.len() < 512 {
            self.put_slice(&bytes);
            return;
        }
        self.seal();
        self.len += bytes.len();
        self.parts.push_back(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_come_out_in_order_and_advance_across_them() {
        let mut t = Transmit::new();
        t.put_slice(b"head");
        let big = Bytes::from(vec![7u8; 1000]);
        t.put_bytes(big.clone());
        t.put_slice(b"tail");
        t.put_bytes(Bytes::from_static(b"small"));
        assert_eq!(t.len(), 4 + 1000 + 4 + 5);
        let joined: Vec<u8> = t.io_slices().iter().flat_map(|s| s.to_vec()).collect();
        let mut want = b"head".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"tailsmall");
        assert_eq!(joined, want);
        // The payload went in as it was, not copied: the same memory.
        assert_eq!(t.parts[1].as_ptr(), big.as_ptr());
        t.advance(2);
        t.advance(500);
        assert_eq!(t.len(), want.len() - 502);
        let mut flat = Vec::new();
        t.flatten_into(&mut flat);
        assert_eq!(flat, want[502..]);
        assert!(t.is_empty());
    }
}
