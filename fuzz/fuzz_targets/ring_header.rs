//! `RingHeader::decode` (what a process opening a peer's memfd reads first)
//! and the packed positions. The first 8 bytes choose the mapping limit; a
//! header that decodes must encode again and decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shm_layout::{RING_HEADER_SIZE, RING_INITIALIZED, RingHeader, RingPos};

fuzz_target!(|input: &[u8]| {
    let (limit, bytes) = match input.split_first_chunk::<8>() {
        Some((limit, rest)) => (u64::from_le_bytes(*limit), rest),
        None => (u64::MAX, input),
    };
    if let Ok(header) = RingHeader::decode(bytes, limit) {
        let mut out = vec![0u8; RING_HEADER_SIZE as usize];
        header.encode(&mut out, 4096).expect("a decoded header encodes");
        out[..8].copy_from_slice(&RING_INITIALIZED.to_le_bytes());
        let again = RingHeader::decode(&out, limit).expect("an encoded header decodes");
        assert_eq!(again, header);
    }
    for word in bytes.chunks_exact(8).take(64) {
        let word = u64::from_le_bytes(word.try_into().unwrap());
        let _ = RingPos::unpack(word, limit);
        let _ = RingPos::unpack(word, 16 * 1024);
    }
});
