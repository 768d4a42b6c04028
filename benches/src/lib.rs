//! Helpers shared by the criterion benches in `benches/benches/`.
#![forbid(unsafe_code)]

pub mod chart;
pub mod echo;
pub mod gateway_peer;
pub mod gateway_report;
mod iox_peer;
mod ipc_peer;
pub mod net_peer;
pub mod net_report;
pub mod percentiles;
pub mod report;
pub mod settings;
mod stubs_peer;
