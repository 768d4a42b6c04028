//! The service handshake: every decoder a server applies to a client's hello
//! (with the default and a small configured maximum) and a client applies to
//! a server's welcome or refusal, and the control and activation frames
//! (query, status, pong, activate, outcome).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shm_channel::service::fuzzing;

fuzz_target!(|bytes: &[u8]| {
    let _ = fuzzing::server_decodes(bytes, 4096);
    let _ = fuzzing::server_decodes(bytes, 64);
    let _ = fuzzing::client_decodes(bytes);
});
