//! shm-channel: typed IPC at memory speed.

pub(crate) mod region;
pub mod ring;
pub(crate) mod sys;

pub use region::RegionError;
pub use ring::{Kind, Ring, RingConfig, RingReader, RingWriter};
/// The byte layout of rings, messages and objects (the `shm-layout` crate).
pub use shm_layout as layout;
