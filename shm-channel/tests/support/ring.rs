//! The checked messages of the ring tests: three objects, 0: (producer,
//! seq) as two little-endian words, 1: the payload, 2: the FNV-1a checksum
//! of the payload; the message id is the producer. And the generator that
//! makes their payloads.

use shm_channel::Kind;
use shm_channel::layout::object_size;
use shm_channel::ring::{Message, Slot};

use super::checksum;

/// A tiny deterministic generator (xorshift64*), so failures reproduce.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Bytes the objects of a checked message with `payload_len` bytes of
/// payload take.
pub fn checked_size(payload_len: usize) -> u64 {
    object_size(16).unwrap() + object_size(payload_len as u64).unwrap() + object_size(8).unwrap()
}

/// Writes the objects of a checked message into `slot`, a `OneWay` message
/// (the caller sends it).
pub fn write_checked(slot: &mut Slot<'_>, producer: u64, seq: u64, payload: &[u8]) {
    slot.set_kind(Kind::OneWay);
    let head = slot.object_mut(0, 16).unwrap();
    head[..8].copy_from_slice(&producer.to_le_bytes());
    head[8..].copy_from_slice(&seq.to_le_bytes());
    slot.push_object(1, payload).unwrap();
    slot.push_object(2, &checksum(payload).to_le_bytes())
        .unwrap();
}

/// Checks a received checked message (three objects, the producer as its
/// id, `OneWay`, the payload intact); returns (producer, seq, payload).
pub fn check_checked<'m>(m: &'m Message<'_>) -> (u64, u64, &'m [u8]) {
    let objs: Vec<_> = m.objects().map(|o| o.unwrap()).collect();
    assert_eq!(objs.len(), 3);
    let producer = u64::from_le_bytes(objs[0].data[..8].try_into().unwrap());
    let seq = u64::from_le_bytes(objs[0].data[8..].try_into().unwrap());
    assert_eq!(m.message_id(), producer);
    assert_eq!(m.kind(), Kind::OneWay);
    let sum = u64::from_le_bytes(objs[2].data.try_into().unwrap());
    assert_eq!(
        checksum(objs[1].data),
        sum,
        "payload of {producer}/{seq} damaged"
    );
    (producer, seq, objs[1].data)
}
