//! shm-channel: typed IPC at memory speed.
//!
//! Between processes on one machine a message never crosses the kernel: the
//! sender writes it once into a page-mapped ring that both processes map, and
//! the receiver reads it in place. This crate is the runtime that generated
//! IDL stubs stand on. Today it holds:
//!
//! - [`ring`]: one direction of a channel. Many writers (threads or
//!   processes) reserve space under a spinlock in the ring's header, write
//!   their message in place, and publish it; one reader borrows messages in
//!   place. The capacity starts at one page and doubles on demand up to the
//!   maximum without moving unread data. A writer killed mid-operation does
//!   not wedge the ring, and nothing a broken peer writes makes the reader
//!   read out of bounds or panic.
//! - [`wire`]: the value codec generated stubs use to encode arguments into
//!   ring objects and decode them back as borrowed views (`&str`, `&[u8]`,
//!   [`wire::VecView`]) without copies.
//! - [`rpc`]: what generated stubs call: request ids, replies matched to calls, typed
//!   call errors, events, cancel, and a server loop that survives panicking handlers.
//! - [`service`], [`channel`], [`event_loop`]: services by name, channels between processes,
//!   an event loop over a service and its channels;
//! - [`activation`] and [`control`]: services started on demand by an activator and held to
//!   the uid of their service file; asking a live service about itself (what `shmctl` shows).
//! - [`layout`]: the byte layout of headers, messages and objects (the
//!   `shm-layout` crate, shared with the IDL tools).
//!
//! All `unsafe` code lives in `sys/` (raw syscalls), `region` (the mapped
//! memory) and `ring`; each block says why it is sound.
//!
//! # Example
//!
//! ```
//! use shm_channel::{Kind, Ring, RingConfig};
//! use std::time::Duration;
//!
//! // A ring in a sealed memfd; `ring.fd()` is what a peer process opens.
//! let ring = Ring::create_memfd("example", &RingConfig::new("Example", 1 << 20))?;
//! let writer = ring.writer();
//! let mut reader = ring.reader()?;
//!
//! // Reserve, write in place, publish.
//! let size = shm_channel::layout::object_size(11).unwrap();
//! let mut slot = writer.try_allocate_for_send(size, 1, 1, false)?;
//! slot.set_kind(Kind::OneWay);
//! slot.object_mut(0, 11)?.copy_from_slice(b"hello world");
//! slot.send()?;
//!
//! // Or copy objects in with one call.
//! writer.send_objects(2, Kind::OneWay, &[(0, b"second")], Duration::from_secs(1))?;
//!
//! let first = reader.try_receive()?.expect("published");
//! assert_eq!((first.message_id(), first.object(0)), (1, Some(&b"hello world"[..])));
//! drop(first); // frees its space
//! let second = reader.receive_timeout(Duration::from_secs(1))?;
//! assert_eq!(second.object(0), Some(&b"second"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod activation;
#[cfg(feature = "tokio")]
pub mod async_channel;
pub mod channel;
pub mod control;
pub mod event_loop;
mod handshake;
#[cfg(feature = "net")]
pub mod net;
pub(crate) mod region;
pub mod ring;
pub mod rpc;
pub mod service;
pub(crate) mod sys;
pub mod wire;

pub use channel::{Channel, ChannelId, PeerCredentials};
pub use event_loop::{Event, EventLoop};
pub use service::{ClientConfig, CredentialPolicy, Service, ServiceConfig, connect};

pub use region::RegionError;
pub use ring::{Kind, Ring, RingConfig, RingReader, RingWriter};
/// The byte layout of rings, messages and objects (the `shm-layout` crate).
pub use shm_layout as layout;

/// Expands an IDL file into typed Rust at the call site (default feature
/// `macros`): `shm_channel::include_idl!("idl/display.idl");` with the path
/// relative to the crate's root. The generated code calls only this crate.
#[cfg(feature = "macros")]
pub use idl_macros::include_idl;
