//! The byte layout of shm-channel: ring headers, messages and objects.
//!
//! This crate is the **single source of truth** for every offset, size and
//! magic number that crosses a process boundary. It is safe code over byte
//! slices, with no dependency on the runtime, so that both sides of the
//! workspace can use it without a cycle:
//!
//! ```text
//! idl-macros -> idl-codegen -> idl-parser ---> shm-layout
//!                                               ^
//! shm-channel (runtime, re-exports it as `shm_channel::layout`)
//! ```
//!
//! `shm-channel` re-exports `include_idl!` (from `idl-macros`), so the IDL crates
//! cannot depend on `shm-channel`; they depend on this crate instead, and the
//! ring sizes that `idlc sizes` prints are computed with the very functions the
//! ring uses ([`record_size`], [`ring_size_for`]).
//!
//! The layout is documented field by field in `docs/LAYOUT.md`.
//!
//! # Example
//!
//! Encode a message with two objects, then validate it as a reader would:
//!
//! ```
//! use shm_layout::{MessageHeader, MessageWriter, MessageView, Kind, record_size};
//!
//! let objects: [&[u8]; 2] = [b"hello", &42u64.to_le_bytes()];
//! let size = record_size(objects.iter().map(|o| o.len() as u64)).unwrap();
//! let mut buf = vec![0u8; size as usize];
//! let mut w = MessageWriter::new(&mut buf, MessageHeader::new(7, Kind::Request, 2, 99))
//!     .unwrap();
//! for (id, data) in objects.iter().enumerate() {
//!     w.push_object(id as u64, data).unwrap();
//! }
//! let len = w.finish().unwrap();
//!
//! let view = MessageView::parse(&buf[..len]).unwrap();
//! assert_eq!(view.header().message_id, 7);
//! assert_eq!(view.header().request_id, 99);
//! let objs: Vec<_> = view.objects().map(|o| o.unwrap()).collect();
//! assert_eq!(objs[0].data, b"hello");
//! assert_eq!(objs[1].id, 1);
//! ```
#![forbid(unsafe_code)]

mod message;
pub mod ring;

pub use message::{
    Kind, MessageHeader, MessageView, MessageWriter, Object, ObjectIter, flags, message_len,
    object_size, record_size,
};
pub use ring::{RingHeader, RingPos, ring_size_for};

use thiserror::Error;

/// Magic number at the start of every message: `0xc0ca_c01a_1115_b357`.
pub const MESSAGE_MAGIC: u64 = 0xc0ca_c01a_1115_b357;
/// Value of the ring header's `ChannelInitialized` word once the creator has
/// initialised every other field.
pub const RING_INITIALIZED: u64 = 0x1337_1337_1337_1337;
/// Version of this byte layout, stored in each ring header; a reader refuses
/// a ring whose layout version it does not know.
pub const LAYOUT_VERSION: u64 = 1;

/// Size of a message header in bytes (six `u64` words).
pub const MESSAGE_HEADER_SIZE: u64 = 48;
/// Size of an object header in bytes (object id, length).
pub const OBJECT_HEADER_SIZE: u64 = 16;
/// Object data is padded with zeros to this alignment.
pub const OBJECT_ALIGN: u64 = 8;
/// Every message starts on a multiple of this in the ring, so that two
/// messages never share a cache line (a writer filling message `n + 1` does
/// not invalidate the line the reader is reading message `n` from).
pub const RECORD_ALIGN: u64 = 64;
/// Size of the ring header; the message area starts right after it.
pub const RING_HEADER_SIZE: u64 = 512;
/// The unit ring sizes are rounded to. A platform with larger pages rounds
/// the mapping up again at runtime.
pub const PAGE_SIZE: u64 = 4096;
/// Ring maximum when the IDL bounds nothing (an unbounded `string`, `bytes`
/// or `vec` is involved) and no `@buffer` is given.
pub const DEFAULT_RING_MAX: u64 = 1 << 20;
/// Maximum length of a protocol name in the ring header, in bytes.
pub const PROTOCOL_NAME_MAX: usize = 64;

/// Why bytes are not a valid message, object or ring header.
///
/// Every variant names what was wrong and where, so that a `Corrupt` error
/// on a channel says what the broken peer wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// The magic number is not [`MESSAGE_MAGIC`].
    #[error("bad message magic {found:#018x} (expected {MESSAGE_MAGIC:#018x})")]
    BadMagic {
        /// The value found.
        found: u64,
    },
    /// Fewer bytes than a header needs.
    #[error("truncated: {needed} bytes needed, {available} available")]
    Truncated {
        /// Bytes the structure needs.
        needed: u64,
        /// Bytes there are.
        available: u64,
    },
    /// The message length is below the header size or beyond the space given.
    #[error("message length {length} outside {min}..={max}")]
    BadLength {
        /// The length field.
        length: u64,
        /// The header size.
        min: u64,
        /// The space available.
        max: u64,
    },
    /// An object's length runs past the end of its message.
    #[error("object {index} of length {length} at offset {offset} runs past the message end {end}")]
    ObjectOverrun {
        /// Index of the object in the message.
        index: u64,
        /// Offset of the object header within the message.
        offset: u64,
        /// The object's length field.
        length: u64,
        /// The message length.
        end: u64,
    },
    /// The object count disagrees with the bytes the message holds.
    #[error(
        "object count {count} does not match the message: {found} objects fill its {length} bytes"
    )]
    ObjectCount {
        /// The count field.
        count: u64,
        /// Objects actually found before the end.
        found: u64,
        /// The message length.
        length: u64,
    },
    /// Padding after object data is not zero.
    #[error("non-zero padding after object {index}")]
    NonZeroPadding {
        /// Index of the object.
        index: u64,
    },
    /// Flag bits outside the defined set, or a kind that does not exist.
    #[error("invalid flags {flags:#x}")]
    BadFlags {
        /// The flags word.
        flags: u64,
    },
    /// A size computation overflowed `u64`.
    #[error("size overflow")]
    Overflow,
    /// The writer was given more objects or bytes than it reserved.
    #[error("message space exhausted: {needed} bytes needed, {available} left")]
    NoSpace {
        /// Bytes needed for the object.
        needed: u64,
        /// Bytes left in the message.
        available: u64,
    },
    /// A ring header is invalid (see the message).
    #[error("ring header: {0}")]
    BadRingHeader(&'static str),
}

/// Rounds `value` up to a multiple of `align` (a power of two), or `None` on
/// overflow.
#[inline]
pub const fn align_up(value: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    match value.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

/// Reads a little-endian `u64` at `offset`, or `None` when out of bounds.
#[inline]
pub(crate) fn read_u64(bytes: &[u8], offset: usize) -> Option<u64> {
    let end = offset.checked_add(8)?;
    let chunk: [u8; 8] = bytes.get(offset..end)?.try_into().ok()?;
    Some(u64::from_le_bytes(chunk))
}

/// Writes a little-endian `u64` at `offset`; `false` when out of bounds.
#[inline]
pub(crate) fn write_u64(bytes: &mut [u8], offset: usize, value: u64) -> bool {
    let Some(end) = offset.checked_add(8) else {
        return false;
    };
    match bytes.get_mut(offset..end) {
        Some(dst) => {
            dst.copy_from_slice(&value.to_le_bytes());
            true
        }
        None => false,
    }
}
