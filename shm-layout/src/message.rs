//! Messages and objects: encoding, sizes and validation.
//!
//! A message is a 48-byte header followed by its objects; each object is a
//! 16-byte header, its data, and zero padding to 8 bytes. In a ring a message
//! occupies [`record_size`] bytes: its length rounded up to
//! [`RECORD_ALIGN`](crate::RECORD_ALIGN).

use crate::{
    LayoutError, MESSAGE_HEADER_SIZE, MESSAGE_MAGIC, OBJECT_ALIGN, OBJECT_HEADER_SIZE,
    RECORD_ALIGN, align_up, read_u64, write_u64,
};

/// Byte offsets of the message header fields.
pub(crate) mod offset {
    pub(crate) const MAGIC: usize = 0;
    pub(crate) const MESSAGE_ID: usize = 8;
    pub(crate) const FLAGS: usize = 16;
    pub(crate) const LENGTH: usize = 24;
    pub(crate) const OBJECT_COUNT: usize = 32;
    pub(crate) const REQUEST_ID: usize = 40;
}

/// The message `flags` word.
///
/// The low 32 bits hold state bits and the kind; the high 32 bits hold the
/// pid of the process that reserved the message while it is
/// [`ALLOCATED`](flags::ALLOCATED), so that a reader stuck on a reservation
/// can tell whether its writer is still alive.
pub mod flags {
    /// Reserved: the writer is filling it in. The reader waits.
    pub const ALLOCATED: u64 = 1 << 0;
    /// Complete: the reader may read it (published with release ordering).
    pub const WRITTEN: u64 = 1 << 1;
    /// Read: the space is reclaimable.
    pub const CONSUMED: u64 = 1 << 2;
    /// Never wait, never grow the ring: fail or drop at once.
    pub const NO_QUEUE: u64 = 1 << 3;
    /// Abandoned by its writer before it was sent (the slot was dropped):
    /// published so the reader skips it instead of waiting forever.
    pub const SKIP: u64 = 1 << 4;
    /// Mask of the state bits above.
    pub const STATE_MASK: u64 = 0x1f;
    /// Shift of the 4-bit kind field ([`Kind`](crate::Kind)).
    pub const KIND_SHIFT: u32 = 8;
    /// Mask of the kind field.
    pub const KIND_MASK: u64 = 0xf << KIND_SHIFT;
    /// Bits 16..32 belong to the RPC layer (error replies, cancellation...);
    /// the layout neither sets nor checks them.
    pub const APP_MASK: u64 = 0xffff << 16;
    /// Shift of the writer pid kept in the high half while allocated.
    pub const PID_SHIFT: u32 = 32;
    /// Every bit that may be set in the low half.
    pub const KNOWN_LOW: u64 = STATE_MASK | KIND_MASK | APP_MASK;
}

/// What a message is, as seen by the RPC layer (flag bits 8..12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// No RPC meaning: raw ring traffic.
    Raw = 0,
    /// A two-way call; a reply with the same request id follows.
    Request = 1,
    /// The answer to a request.
    Reply = 2,
    /// A one-way call.
    OneWay = 3,
    /// A server-to-client event.
    Event = 4,
    /// Control traffic of the channel itself (cancel, version, goodbye).
    Control = 5,
}

impl Kind {
    /// The kind encoded in a flags word, or `None` for an undefined value.
    pub const fn from_flags(flags: u64) -> Option<Kind> {
        match (flags & flags::KIND_MASK) >> flags::KIND_SHIFT {
            0 => Some(Kind::Raw),
            1 => Some(Kind::Request),
            2 => Some(Kind::Reply),
            3 => Some(Kind::OneWay),
            4 => Some(Kind::Event),
            5 => Some(Kind::Control),
            _ => None,
        }
    }

    /// This kind as flag bits.
    pub const fn to_flags(self) -> u64 {
        (self as u64) << flags::KIND_SHIFT
    }
}

/// Bytes one object takes in a message: header, data, zero padding to 8.
/// `None` on overflow.
pub const fn object_size(data_len: u64) -> Option<u64> {
    match align_up(data_len, OBJECT_ALIGN) {
        Some(padded) => padded.checked_add(OBJECT_HEADER_SIZE),
        None => None,
    }
}

/// Length of a message (header plus objects) with objects of these data
/// lengths; `None` on overflow.
pub fn message_len(object_data_lens: impl IntoIterator<Item = u64>) -> Option<u64> {
    object_data_lens
        .into_iter()
        .try_fold(MESSAGE_HEADER_SIZE, |acc, len| {
            acc.checked_add(object_size(len)?)
        })
}

/// Bytes a message with objects of these data lengths occupies in a ring:
/// its length rounded up to [`RECORD_ALIGN`]. `None` on overflow.
///
/// The IDL's ring-size rule and the ring's reservation both use this.
pub fn record_size(object_data_lens: impl IntoIterator<Item = u64>) -> Option<u64> {
    align_up(message_len(object_data_lens)?, RECORD_ALIGN)
}

/// The decoded header of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageHeader {
    /// Which method or event (the IDL's message id).
    pub message_id: u64,
    /// The flags word (see [`flags`]).
    pub flags: u64,
    /// Bytes of header plus objects (not counting record padding).
    pub length: u64,
    /// Number of objects that follow the header.
    pub object_count: u64,
    /// Matches a reply to its request; 0 where there is none.
    pub request_id: u64,
}

impl MessageHeader {
    /// A header for a message of `kind` with `object_count` objects; the
    /// length is filled in by [`MessageWriter::finish`].
    pub const fn new(message_id: u64, kind: Kind, object_count: u64, request_id: u64) -> Self {
        MessageHeader {
            message_id,
            flags: kind.to_flags(),
            length: MESSAGE_HEADER_SIZE,
            object_count,
            request_id,
        }
    }

    /// The kind in the flags, if valid.
    pub const fn kind(&self) -> Option<Kind> {
        Kind::from_flags(self.flags)
    }

    /// Encodes the header (with the magic) into the first 48 bytes of `out`.
    pub fn encode(&self, out: &mut [u8]) -> Result<(), LayoutError> {
        if out.len() < MESSAGE_HEADER_SIZE as usize {
            return Err(LayoutError::Truncated {
                needed: MESSAGE_HEADER_SIZE,
                available: out.len() as u64,
            });
        }
        write_u64(out, offset::MAGIC, MESSAGE_MAGIC);
        write_u64(out, offset::MESSAGE_ID, self.message_id);
        write_u64(out, offset::FLAGS, self.flags);
        write_u64(out, offset::LENGTH, self.length);
        write_u64(out, offset::OBJECT_COUNT, self.object_count);
        write_u64(out, offset::REQUEST_ID, self.request_id);
        Ok(())
    }

    /// Decodes and checks a header: magic, flags, and a length between the
    /// header size and `bytes.len()`. Each field is read exactly once.
    pub fn decode(bytes: &[u8]) -> Result<MessageHeader, LayoutError> {
        let truncated = || LayoutError::Truncated {
            needed: MESSAGE_HEADER_SIZE,
            available: bytes.len() as u64,
        };
        let field = |at| read_u64(bytes, at).ok_or_else(truncated);
        let magic = field(offset::MAGIC)?;
        if magic != MESSAGE_MAGIC {
            return Err(LayoutError::BadMagic { found: magic });
        }
        let header = MessageHeader {
            message_id: field(offset::MESSAGE_ID)?,
            flags: field(offset::FLAGS)?,
            length: field(offset::LENGTH)?,
            object_count: field(offset::OBJECT_COUNT)?,
            request_id: field(offset::REQUEST_ID)?,
        };
        check_flags(header.flags)?;
        if header.length < MESSAGE_HEADER_SIZE || header.length > bytes.len() as u64 {
            return Err(LayoutError::BadLength {
                length: header.length,
                min: MESSAGE_HEADER_SIZE,
                max: bytes.len() as u64,
            });
        }
        Ok(header)
    }
}

/// Checks that only defined bits are set and the kind exists.
pub(crate) fn check_flags(word: u64) -> Result<(), LayoutError> {
    let low = word & 0xffff_ffff;
    if low & !flags::KNOWN_LOW != 0 || Kind::from_flags(word).is_none() {
        return Err(LayoutError::BadFlags { flags: word });
    }
    Ok(())
}

/// One object of a message, borrowed from the message bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Object<'a> {
    /// The object id (a parameter index for generated code).
    pub id: u64,
    /// The object's data, without padding.
    pub data: &'a [u8],
}

/// A validated message borrowed in place.
///
/// [`MessageView::parse`] reads every header and object length once and
/// checks them (magic, flags, length against the space, each object against
/// the message end, object count, zero padding). The bytes are borrowed, so
/// a hostile writer that changes them afterwards can change what
/// [`objects`](MessageView::objects) returns but never make it read outside
/// the message: every later read is a bounds-checked slice access.
#[derive(Debug, Clone, Copy)]
pub struct MessageView<'a> {
    header: MessageHeader,
    bytes: &'a [u8],
}

impl<'a> MessageView<'a> {
    /// Validates the message at the start of `bytes` (which may extend past
    /// it: the header's length decides where it ends).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, LayoutError> {
        let header = MessageHeader::decode(bytes)?;
        // decode() checked length <= bytes.len().
        let bytes = &bytes[..header.length as usize];
        let mut found = 0u64;
        let mut at = MESSAGE_HEADER_SIZE;
        while at < header.length {
            // Each object is at least 16 bytes, so this runs at most
            // length / 16 times whatever the count field says.
            let (next, object) = object_at(bytes, at, found)?;
            let data_end = at + OBJECT_HEADER_SIZE + object.data.len() as u64;
            if bytes[data_end as usize..next as usize]
                .iter()
                .any(|&b| b != 0)
            {
                return Err(LayoutError::NonZeroPadding { index: found });
            }
            found += 1;
            at = next;
        }
        if found != header.object_count || at != header.length {
            return Err(LayoutError::ObjectCount {
                count: header.object_count,
                found,
                length: header.length,
            });
        }
        Ok(MessageView { header, bytes })
    }

    /// A view of bytes that [`parse`](Self::parse) already validated into
    /// `header` (a reader that keeps the header and re-borrows the bytes
    /// later). Nothing unsafe follows from wrong arguments: every access
    /// through the view stays bounds-checked inside `bytes`.
    pub fn from_validated(header: MessageHeader, bytes: &'a [u8]) -> Self {
        let end = (header.length as usize).min(bytes.len());
        MessageView {
            header,
            bytes: &bytes[..end],
        }
    }

    /// The header as validated.
    pub fn header(&self) -> &MessageHeader {
        &self.header
    }

    /// The whole message, header included.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The objects, in order.
    pub fn objects(&self) -> ObjectIter<'a> {
        ObjectIter {
            bytes: self.bytes,
            at: MESSAGE_HEADER_SIZE,
            index: 0,
            remaining: self.header.object_count,
        }
    }

    /// The first object with this id.
    pub fn object(&self, id: u64) -> Option<&'a [u8]> {
        self.objects()
            .flatten()
            .find(|o| o.id == id)
            .map(|o| o.data)
    }
}

/// Iterator over a message's objects; yields an error (then stops) where an
/// object no longer fits, which only a writer changing the bytes after
/// validation can cause.
#[derive(Debug, Clone)]
pub struct ObjectIter<'a> {
    bytes: &'a [u8],
    at: u64,
    index: u64,
    remaining: u64,
}

impl<'a> Iterator for ObjectIter<'a> {
    type Item = Result<Object<'a>, LayoutError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        match object_at(self.bytes, self.at, self.index) {
            Ok((next, object)) => {
                self.at = next;
                self.index += 1;
                self.remaining -= 1;
                Some(Ok(object))
            }
            Err(e) => {
                self.remaining = 0;
                Some(Err(e))
            }
        }
    }
}

/// Reads the object at `at`: returns the offset after it (padding included)
/// and the object. Reads id and length once.
fn object_at(bytes: &[u8], at: u64, index: u64) -> Result<(u64, Object<'_>), LayoutError> {
    let end = bytes.len() as u64;
    let overrun = |length| LayoutError::ObjectOverrun {
        index,
        offset: at,
        length,
        end,
    };
    let header_end = at
        .checked_add(OBJECT_HEADER_SIZE)
        .ok_or(LayoutError::Overflow)?;
    if header_end > end {
        return Err(overrun(0));
    }
    // In bounds: at + 16 <= end <= usize::MAX.
    let id = read_u64(bytes, at as usize).ok_or(overrun(0))?;
    let length = read_u64(bytes, at as usize + 8).ok_or(overrun(0))?;
    let data_end = header_end
        .checked_add(length)
        .ok_or_else(|| overrun(length))?;
    let next = align_up(data_end, OBJECT_ALIGN).ok_or_else(|| overrun(length))?;
    if next > end {
        return Err(overrun(length));
    }
    let data = &bytes[header_end as usize..data_end as usize];
    Ok((next, Object { id, data }))
}

/// Writes a message in place: header first, then objects one by one.
///
/// The buffer must be at least the message's length; padding is zeroed as
/// objects are written, so a sender never leaks stale bytes.
#[derive(Debug)]
pub struct MessageWriter<'a> {
    buf: &'a mut [u8],
    header: MessageHeader,
    at: u64,
    written: u64,
}

impl<'a> MessageWriter<'a> {
    /// Starts a message in `buf`.
    pub fn new(buf: &'a mut [u8], header: MessageHeader) -> Result<Self, LayoutError> {
        header.encode(buf)?;
        Ok(MessageWriter {
            buf,
            header,
            at: MESSAGE_HEADER_SIZE,
            written: 0,
        })
    }

    /// Appends an object, copying `data`.
    pub fn push_object(&mut self, id: u64, data: &[u8]) -> Result<(), LayoutError> {
        self.object_mut(id, data.len() as u64)?
            .copy_from_slice(data);
        Ok(())
    }

    /// Appends an object of `len` bytes and returns its data to fill in
    /// place (zeroed padding already written).
    pub fn object_mut(&mut self, id: u64, len: u64) -> Result<&mut [u8], LayoutError> {
        let size = object_size(len).ok_or(LayoutError::Overflow)?;
        let available = (self.buf.len() as u64).saturating_sub(self.at);
        if size > available {
            return Err(LayoutError::NoSpace {
                needed: size,
                available,
            });
        }
        let at = self.at as usize;
        write_u64(self.buf, at, id);
        write_u64(self.buf, at + 8, len);
        let data_start = at + OBJECT_HEADER_SIZE as usize;
        let data_end = data_start + len as usize;
        let next = at + size as usize;
        self.buf[data_end..next].fill(0);
        self.at += size;
        self.written += 1;
        Ok(&mut self.buf[data_start..data_end])
    }

    /// Bytes written so far (header included).
    pub fn len(&self) -> u64 {
        self.at
    }

    /// Whether no object was written yet.
    pub fn is_empty(&self) -> bool {
        self.written == 0
    }

    /// Fixes the length and object count in the header; returns the length.
    /// Fails when fewer or more objects were written than the header said.
    pub fn finish(self) -> Result<usize, LayoutError> {
        if self.written != self.header.object_count {
            return Err(LayoutError::ObjectCount {
                count: self.header.object_count,
                found: self.written,
                length: self.at,
            });
        }
        write_u64(self.buf, offset::LENGTH, self.at);
        Ok(self.at as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(id: u64, kind: Kind, req: u64, objects: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let size = record_size(objects.iter().map(|(_, d)| d.len() as u64)).unwrap();
        let mut buf = vec![0xAAu8; size as usize];
        let mut w = MessageWriter::new(
            &mut buf,
            MessageHeader::new(id, kind, objects.len() as u64, req),
        )
        .unwrap();
        for (oid, data) in objects {
            w.push_object(*oid, data).unwrap();
        }
        let len = w.finish().unwrap();
        buf.truncate(len);
        buf
    }

    #[test]
    fn sizes() {
        assert_eq!(object_size(0), Some(16));
        assert_eq!(object_size(1), Some(24));
        assert_eq!(object_size(8), Some(24));
        assert_eq!(object_size(9), Some(32));
        assert_eq!(object_size(u64::MAX), None);
        assert_eq!(message_len([]), Some(48));
        assert_eq!(record_size([]), Some(64));
        // 48 + (16 + 8) + (16 + 64) = 152 -> 192
        assert_eq!(record_size([5, 64]), Some(192));
        assert_eq!(record_size([u64::MAX - 3]), None);
    }

    #[test]
    fn rejects_bad_magic_flags_length() {
        let good = encode(1, Kind::OneWay, 0, &[(0, b"abc".to_vec())]);
        assert!(MessageView::parse(&good).is_ok());

        let mut bad = good.clone();
        bad[0] ^= 1;
        assert!(matches!(
            MessageView::parse(&bad),
            Err(LayoutError::BadMagic { .. })
        ));

        let mut bad = good.clone();
        write_u64(&mut bad, offset::FLAGS, 0xf << flags::KIND_SHIFT);
        assert!(matches!(
            MessageView::parse(&bad),
            Err(LayoutError::BadFlags { .. })
        ));
        let mut bad = good.clone();
        write_u64(&mut bad, offset::FLAGS, 1 << 7);
        assert!(matches!(
            MessageView::parse(&bad),
            Err(LayoutError::BadFlags { .. })
        ));

        for len in [0, 47, good.len() as u64 + 1, u64::MAX] {
            let mut bad = good.clone();
            write_u64(&mut bad, offset::LENGTH, len);
            assert!(
                matches!(MessageView::parse(&bad), Err(LayoutError::BadLength { .. })),
                "{len}"
            );
        }
        assert!(matches!(
            MessageView::parse(&good[..40]),
            Err(LayoutError::Truncated { .. })
        ));
    }

    #[test]
    fn rejects_bad_objects() {
        let good = encode(
            1,
            Kind::Request,
            3,
            &[(0, b"abc".to_vec()), (1, vec![7; 8])],
        );
        // object count too high and too low
        for count in [0, 1, 3, u64::MAX] {
            let mut bad = good.clone();
            write_u64(&mut bad, offset::OBJECT_COUNT, count);
            assert!(
                matches!(
                    MessageView::parse(&bad),
                    Err(LayoutError::ObjectCount { .. })
                ),
                "{count}"
            );
        }
        // object length past the end, and overflowing
        for len in [100, u64::MAX, u64::MAX - 20] {
            let mut bad = good.clone();
            write_u64(&mut bad, 48 + 8, len);
            assert!(
                matches!(
                    MessageView::parse(&bad),
                    Err(LayoutError::ObjectOverrun { .. }) | Err(LayoutError::Overflow)
                ),
                "{len}"
            );
        }
        // non-zero padding after "abc"
        let mut bad = good.clone();
        bad[48 + 16 + 4] = 1;
        assert_eq!(
            MessageView::parse(&bad).unwrap_err(),
            LayoutError::NonZeroPadding { index: 0 }
        );
    }

    #[test]
    fn writer_refuses_overflow_and_wrong_count() {
        // 48 + 24 = 72 bytes needed, 64 given.
        let mut buf = vec![0u8; 64];
        let mut w = MessageWriter::new(&mut buf, MessageHeader::new(1, Kind::Raw, 1, 0)).unwrap();
        assert_eq!(
            w.object_mut(0, 1).unwrap_err(),
            LayoutError::NoSpace {
                needed: 24,
                available: 16
            }
        );
        let mut buf = vec![0u8; 128];
        let w = MessageWriter::new(&mut buf, MessageHeader::new(1, Kind::Raw, 1, 0)).unwrap();
        assert!(matches!(w.finish(), Err(LayoutError::ObjectCount { .. })));
    }

    proptest! {
        #[test]
        fn round_trip(
            id in any::<u64>(),
            req in any::<u64>(),
            kind in 0u8..6,
            objects in proptest::collection::vec((any::<u64>(), proptest::collection::vec(any::<u8>(), 0..100)), 0..8),
        ) {
            let kind = Kind::from_flags((kind as u64) << flags::KIND_SHIFT).unwrap();
            let buf = encode(id, kind, req, &objects);
            prop_assert_eq!(buf.len() as u64, message_len(objects.iter().map(|(_, d)| d.len() as u64)).unwrap());
            let view = MessageView::parse(&buf).unwrap();
            prop_assert_eq!(view.header().message_id, id);
            prop_assert_eq!(view.header().request_id, req);
            prop_assert_eq!(view.header().kind(), Some(kind));
            let got: Vec<(u64, Vec<u8>)> = view.objects().map(|o| { let o = o.unwrap(); (o.id, o.data.to_vec()) }).collect();
            prop_assert_eq!(got, objects);
        }

        #[test]
        fn corrupted_never_panics(
            objects in proptest::collection::vec((any::<u64>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..4),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let mut buf = encode(5, Kind::Event, 0, &objects);
            for (at, byte) in flips {
                let i = at.index(buf.len());
                buf[i] = byte;
            }
            if let Ok(view) = MessageView::parse(&buf) {
                // A message that still validates is internally consistent.
                let n = view.objects().filter(|o| o.is_ok()).count() as u64;
                prop_assert_eq!(n, view.header().object_count);
            }
        }
    }
}
