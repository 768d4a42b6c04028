//! The ring header: field offsets, the static part's encoding, positions.
//!
//! The header is [`RING_HEADER_SIZE`] bytes, in four 128-byte blocks so that
//! words written by different parties never share a cache line (nor the
//! adjacent line that x86 prefetches in pairs):
//!
//! | block | bytes | written by |
//! |---|---|---|
//! | static | 0..128 | the creator, once, before `INITIALIZED` |
//! | producer | 128..256 | writers, under the spinlock |
//! | consumer | 256..384 | the reader |
//! | doorbells | 384..512 | parkers and wakers |
//!
//! The seed's fields are all here with their meaning kept; their order
//! changed to fit the blocks, and `WriteOffset`/`ReadOffset` carry a lap
//! counter in their high bits (see [`RingPos`]).

use crate::{
    LAYOUT_VERSION, LayoutError, PAGE_SIZE, PROTOCOL_NAME_MAX, RECORD_ALIGN, RING_HEADER_SIZE,
    RING_INITIALIZED, align_up, read_u64, write_u64,
};

/// `ChannelInitialized`: [`RING_INITIALIZED`] once the creator is done.
pub const INITIALIZED: usize = 0;
/// Layout version ([`LAYOUT_VERSION`]).
pub const LAYOUT: usize = 8;
/// `ProtocolVersion`.
pub const PROTOCOL_VERSION: usize = 16;
/// `ProtocolNameLength` in bytes.
pub const PROTOCOL_NAME_LEN: usize = 24;
/// The ring's maximum capacity in bytes (header included); fixed at creation.
pub const MAX_SIZE: usize = 32;
/// `ProtocolName`: up to 64 bytes of UTF-8, zero filled.
pub const PROTOCOL_NAME: usize = 64;

/// `AtomicSpinlockFlag`: 0 when free, else `pid << 32 | thread tag` of the
/// holder, so that a holder that died is detected and the lock recovered.
pub const SPINLOCK: usize = 128;
/// `WriteOffset`: the [`RingPos`] where the next reservation goes.
pub const WRITE_POS: usize = 136;
/// `BufferSizeInBytes`: current capacity (header included), a multiple of
/// [`PAGE_SIZE`], doubling on demand up to `MAX_SIZE`.
pub const BUFFER_SIZE: usize = 144;
/// `MessageCount`: messages reserved since creation. The seed's "messages in
/// the buffer" is `MESSAGE_COUNT - CONSUMED_COUNT`; splitting it keeps the
/// writer and the reader off each other's cache line.
pub const MESSAGE_COUNT: usize = 152;
/// Offset where the data of the previous lap ends: the reader jumps back to
/// the first record when it reaches it. This is the "padding record" of the
/// design kept in the header, because a large message wrapping around an
/// empty ring may overwrite the skipped tail itself.
pub const WRAP_OFFSET: usize = 160;
/// The writers' shared lower bound of `ReadOffset`: the value a writer last
/// loaded from the reader's line, so writers only touch that line when this
/// says "full". Shared (not per process) so that every writer's bound is at
/// most one lap behind `WriteOffset`.
pub const READ_CACHE: usize = 168;

/// `ReadOffset`: the [`RingPos`] of the next message to read.
pub const READ_POS: usize = 256;
/// Messages consumed since creation.
pub const CONSUMED_COUNT: usize = 264;

/// Futex word (u32): the reader's doorbell; non-zero while the reader is
/// parked or about to park, so a writer makes a wake syscall only then.
pub const READER_DOORBELL: usize = 384;
/// Futex word (u32): the writers' doorbell; non-zero while a writer waits
/// for space.
pub const WRITER_DOORBELL: usize = 448;

/// Bits of a [`RingPos`] that hold the byte offset.
pub const POS_OFFSET_BITS: u32 = 40;

/// A position in the ring: a byte offset from the ring's start and a lap
/// counter (wrapping at 2^24) that tells "reader and writer in the same lap"
/// from "writer one lap ahead" without ever comparing offsets alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RingPos {
    /// Lap number, modulo 2^24.
    pub lap: u32,
    /// Byte offset from the start of the ring (header included).
    pub offset: u64,
}

impl RingPos {
    /// The first record of lap 0.
    pub const START: RingPos = RingPos {
        lap: 0,
        offset: RING_HEADER_SIZE,
    };
    const OFFSET_MASK: u64 = (1 << POS_OFFSET_BITS) - 1;
    const LAP_MASK: u32 = (1 << (64 - POS_OFFSET_BITS)) - 1;

    /// Packs into a header word.
    pub const fn pack(self) -> u64 {
        ((self.lap as u64) << POS_OFFSET_BITS) | (self.offset & Self::OFFSET_MASK)
    }

    /// Unpacks a header word; `None` where the offset is not a record
    /// boundary inside `capacity` (hostile or corrupt contents).
    pub const fn unpack(word: u64, capacity: u64) -> Option<RingPos> {
        let offset = word & Self::OFFSET_MASK;
        if offset < RING_HEADER_SIZE || offset > capacity || !offset.is_multiple_of(RECORD_ALIGN) {
            return None;
        }
        Some(RingPos {
            lap: (word >> POS_OFFSET_BITS) as u32,
            offset,
        })
    }

    /// The start of the next lap.
    pub const fn next_lap(self) -> RingPos {
        RingPos {
            lap: self.lap.wrapping_add(1) & Self::LAP_MASK,
            offset: RING_HEADER_SIZE,
        }
    }

    /// Whether `other` is exactly one lap ahead of `self`.
    pub const fn is_lap_before(self, other: RingPos) -> bool {
        self.lap.wrapping_add(1) & Self::LAP_MASK == other.lap
    }
}

/// Ring capacity (header included) for a message area of `body_bytes`,
/// rounded up to whole pages; `None` on overflow.
pub const fn ring_size_for(body_bytes: u64) -> Option<u64> {
    match RING_HEADER_SIZE.checked_add(body_bytes) {
        Some(total) => align_up(total, PAGE_SIZE),
        None => None,
    }
}

/// The static part of a ring header: what the creator writes once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingHeader {
    /// Version of the protocol the channel speaks.
    pub protocol_version: u64,
    /// Protocol name, at most [`PROTOCOL_NAME_MAX`] bytes.
    pub protocol_name: String,
    /// The ring's maximum capacity in bytes.
    pub max_size: u64,
}

impl RingHeader {
    /// Writes the static fields, the initial capacity and positions into
    /// `out` (at least [`RING_HEADER_SIZE`] bytes). `ChannelInitialized` is
    /// left alone: the creator publishes it last, with release ordering.
    pub fn encode(&self, out: &mut [u8], capacity: u64) -> Result<(), LayoutError> {
        self.check(capacity)?;
        if (out.len() as u64) < RING_HEADER_SIZE {
            return Err(LayoutError::Truncated {
                needed: RING_HEADER_SIZE,
                available: out.len() as u64,
            });
        }
        out[..RING_HEADER_SIZE as usize].fill(0);
        write_u64(out, LAYOUT, LAYOUT_VERSION);
        write_u64(out, PROTOCOL_VERSION, self.protocol_version);
        write_u64(out, PROTOCOL_NAME_LEN, self.protocol_name.len() as u64);
        write_u64(out, MAX_SIZE, self.max_size);
        out[PROTOCOL_NAME..PROTOCOL_NAME + self.protocol_name.len()]
            .copy_from_slice(self.protocol_name.as_bytes());
        write_u64(out, BUFFER_SIZE, capacity);
        write_u64(out, WRITE_POS, RingPos::START.pack());
        write_u64(out, WRAP_OFFSET, RING_HEADER_SIZE);
        write_u64(out, READ_CACHE, RingPos::START.pack());
        write_u64(out, READ_POS, RingPos::START.pack());
        Ok(())
    }

    /// Reads and validates the static fields (each read once): initialised
    /// marker, layout version, name length and UTF-8, a maximum that is a
    /// whole number of pages, at least one page, at most `mapping_limit`.
    pub fn decode(bytes: &[u8], mapping_limit: u64) -> Result<RingHeader, LayoutError> {
        let field = |at| {
            read_u64(bytes, at).ok_or(LayoutError::Truncated {
                needed: RING_HEADER_SIZE,
                available: bytes.len() as u64,
            })
        };
        if field(INITIALIZED)? != RING_INITIALIZED {
            return Err(LayoutError::BadRingHeader("not initialised"));
        }
        if field(LAYOUT)? != LAYOUT_VERSION {
            return Err(LayoutError::BadRingHeader("unknown layout version"));
        }
        let protocol_version = field(PROTOCOL_VERSION)?;
        let name_len = field(PROTOCOL_NAME_LEN)?;
        let max_size = field(MAX_SIZE)?;
        if name_len > PROTOCOL_NAME_MAX as u64 {
            return Err(LayoutError::BadRingHeader(
                "protocol name longer than 64 bytes",
            ));
        }
        let name = bytes
            .get(PROTOCOL_NAME..PROTOCOL_NAME + name_len as usize)
            .ok_or(LayoutError::BadRingHeader("truncated protocol name"))?;
        let protocol_name = std::str::from_utf8(name)
            .map_err(|_| LayoutError::BadRingHeader("protocol name is not UTF-8"))?
            .to_owned();
        if max_size > mapping_limit {
            return Err(LayoutError::BadRingHeader(
                "maximum larger than the mapping",
            ));
        }
        let header = RingHeader {
            protocol_version,
            protocol_name,
            max_size,
        };
        header.check(PAGE_SIZE)?;
        Ok(header)
    }

    fn check(&self, capacity: u64) -> Result<(), LayoutError> {
        if self.protocol_name.len() > PROTOCOL_NAME_MAX {
            return Err(LayoutError::BadRingHeader(
                "protocol name longer than 64 bytes",
            ));
        }
        if self.max_size < PAGE_SIZE || !self.max_size.is_multiple_of(PAGE_SIZE) {
            return Err(LayoutError::BadRingHeader(
                "maximum is not a whole number of pages",
            ));
        }
        if self.max_size >= 1 << POS_OFFSET_BITS {
            return Err(LayoutError::BadRingHeader("maximum beyond 1 TiB"));
        }
        if capacity < PAGE_SIZE || capacity > self.max_size || !capacity.is_multiple_of(PAGE_SIZE) {
            return Err(LayoutError::BadRingHeader(
                "capacity outside one page..=maximum",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn offsets_keep_writers_apart() {
        // Producer, consumer and doorbell words each in their own 128 bytes.
        for producer in [
            SPINLOCK,
            WRITE_POS,
            BUFFER_SIZE,
            MESSAGE_COUNT,
            WRAP_OFFSET,
            READ_CACHE,
        ] {
            assert_eq!(producer / 128, 1);
        }
        for consumer in [READ_POS, CONSUMED_COUNT] {
            assert_eq!(consumer / 128, 2);
        }
        assert_eq!(READER_DOORBELL / 64, 6);
        assert_eq!(WRITER_DOORBELL / 64, 7);
        assert_eq!(PROTOCOL_NAME + PROTOCOL_NAME_MAX, 128);
        assert_eq!(RING_HEADER_SIZE, 512);
    }

    #[test]
    fn header_round_trip_and_rejects() {
        let h = RingHeader {
            protocol_version: 3,
            protocol_name: "Display".into(),
            max_size: 1 << 20,
        };
        let mut buf = vec![0xffu8; 512];
        h.encode(&mut buf, 4096).unwrap();
        assert!(
            RingHeader::decode(&buf, 1 << 20).is_err(),
            "not initialised yet"
        );
        write_u64(&mut buf, INITIALIZED, RING_INITIALIZED);
        assert_eq!(RingHeader::decode(&buf, 1 << 20).unwrap(), h);
        assert!(RingHeader::decode(&buf, 1 << 19).is_err());
        let mut bad = buf.clone();
        write_u64(&mut bad, PROTOCOL_NAME_LEN, 65);
        assert!(RingHeader::decode(&bad, 1 << 20).is_err());
        let mut bad = buf.clone();
        bad[PROTOCOL_NAME] = 0xff;
        assert!(RingHeader::decode(&bad, 1 << 20).is_err());
        let mut bad = buf.clone();
        write_u64(&mut bad, MAX_SIZE, 4097);
        assert!(RingHeader::decode(&bad, 1 << 20).is_err());
        let long = RingHeader {
            protocol_name: "x".repeat(65),
            ..h
        };
        assert!(long.encode(&mut buf, 4096).is_err());
    }

    #[test]
    fn ring_sizes() {
        assert_eq!(ring_size_for(0), Some(4096));
        assert_eq!(ring_size_for(4096 - 512), Some(4096));
        assert_eq!(ring_size_for(4096 - 511), Some(8192));
        assert_eq!(ring_size_for(u64::MAX), None);
    }

    proptest! {
        #[test]
        fn pos_round_trip(lap in 0u32..(1 << 24), slot in 8u64..(1 << 30)) {
            let p = RingPos { lap, offset: slot * 64 };
            prop_assert_eq!(RingPos::unpack(p.pack(), 1 << 40), Some(p));
            prop_assert!(p.is_lap_before(p.next_lap()));
            prop_assert!(!p.is_lap_before(p));
        }

        #[test]
        fn pos_rejects_bad_offsets(word in any::<u64>(), capacity in 4096u64..(1 << 30)) {
            if let Some(p) = RingPos::unpack(word, capacity) {
                prop_assert!(p.offset >= RING_HEADER_SIZE && p.offset <= capacity && p.offset % 64 == 0);
            }
        }
    }
}
