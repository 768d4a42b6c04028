//! Helpers shared by the criterion benches in `benches/benches/`.
#![forbid(unsafe_code)]

pub mod echo;
pub mod percentiles;
