//! shm-channel: typed IPC at memory speed.

pub(crate) mod region;
pub(crate) mod sys;

pub use region::RegionError;
