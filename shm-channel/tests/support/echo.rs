//! The checked messages of the echo tests between processes: three objects,
//! 0: the sequence number, 1: the data, 2: the FNV-1a checksum of the data.

use shm_channel::ring::Message;

use super::checksum;

/// Payload `seq` of stream `stream`: 1 B .. `max_len` bytes from a
/// per-stream xorshift generator.
pub fn stream_payload(stream: u64, seq: u64, max_len: u64) -> Vec<u8> {
    let mut x = (stream << 32 | seq).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let len = 1 + (next() % max_len) as usize;
    (0..len).map(|_| next() as u8).collect()
}

/// The objects of a checked message, ready for `send_objects`.
pub struct Checked<'a> {
    seq: [u8; 8],
    data: &'a [u8],
    sum: [u8; 8],
}

impl<'a> Checked<'a> {
    pub fn new(seq: u64, data: &'a [u8]) -> Self {
        Checked {
            seq: seq.to_le_bytes(),
            data,
            sum: checksum(data).to_le_bytes(),
        }
    }

    pub fn objects(&self) -> [(u64, &[u8]); 3] {
        [(0, &self.seq), (1, self.data), (2, &self.sum)]
    }
}

/// Checks that the data of a checked message matches its checksum; returns
/// its seq and data.
pub fn check<'m>(msg: &'m Message<'_>) -> (u64, &'m [u8]) {
    let seq = u64::from_le_bytes(msg.object(0).expect("seq").try_into().expect("8 bytes"));
    let data = msg.object(1).expect("data");
    let sum = u64::from_le_bytes(msg.object(2).expect("sum").try_into().expect("8 bytes"));
    assert_eq!(checksum(data), sum, "message {seq} corrupted");
    (seq, data)
}

/// The objects of `msg`, copied out of the ring (to echo them once the
/// message is released).
pub fn owned_objects(msg: &Message<'_>) -> Vec<(u64, Vec<u8>)> {
    msg.objects()
        .map(|o| o.map(|o| (o.id, o.data.to_vec())).expect("valid object"))
        .collect()
}

/// `objects` as `send_objects` takes them.
pub fn borrowed(objects: &[(u64, Vec<u8>)]) -> Vec<(u64, &[u8])> {
    objects.iter().map(|(i, d)| (*i, &d[..])).collect()
}
