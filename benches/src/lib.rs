//! Helpers shared by the criterion benches in `benches/benches/`.
#![forbid(unsafe_code)]

pub mod echo;
mod iox_peer;
mod ipc_peer;
pub mod percentiles;
pub mod settings;
mod stubs_peer;
