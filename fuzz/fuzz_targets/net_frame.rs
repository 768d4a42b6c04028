//! The network connectors' decoders over peer bytes (issue 9): the frame
//! header (`FrameHeader::decode` at the smallest, default and largest buffer
//! sizes) and the handshake (`split_record`, then `Hello::decode` and
//! `Welcome::decode` of the record's body and of the raw bytes). A decoded
//! `Hello` or `Welcome` must encode to a record that decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shm_channel::net::frame::{
    self, DEFAULT_BUFFER, FrameHeader, Hello, MAX_BUFFER, MIN_BUFFER, Welcome,
};

fuzz_target!(|bytes: &[u8]| {
    for size in [MIN_BUFFER, DEFAULT_BUFFER, MAX_BUFFER] {
        let _ = FrameHeader::decode(bytes, size);
    }
    let body = match frame::split_record(bytes) {
        Ok(Some((body, used))) => {
            assert!(used <= bytes.len() && body.len() <= used);
            body
        }
        _ => bytes,
    };
    for input in [body, bytes] {
        if let Ok(hello) = Hello::decode(input) {
            let mut out = Vec::new();
            hello.encode(&mut out);
            let (again, _) = frame::split_record(&out)
                .expect("an encoded hello splits")
                .expect("an encoded hello is whole");
            assert_eq!(Hello::decode(again).expect("re-decodes"), hello);
        }
        if let Ok(welcome) = Welcome::decode(input) {
            let mut out = Vec::new();
            welcome.encode(&mut out);
            let (again, _) = frame::split_record(&out)
                .expect("an encoded welcome splits")
                .expect("an encoded welcome is whole");
            assert_eq!(Welcome::decode(again).expect("re-decodes"), welcome);
        }
    }
});
