//! The value codec: how IDL values become the bytes of a ring object, and how
//! the receiver reads them back as borrowed views without copying.
//!
//! This implements the encoding pinned in `docs/IDL.md` ("How messages are
//! encoded", the same table as idl-parser's `sizes` module): compact,
//! little-endian, no padding and no alignment inside an object.
//!
//! | IDL type | bytes | Rust on send ([`Encode`]) | Rust on receive ([`Decode`]) |
//! |---|---|---|---|
//! | `bool` | 1 (0 or 1, anything else is refused) | `bool` | `bool` |
//! | `u8`, `i8` / `u16`, `i16` / `u32`, `i32`, `f32` / `u64`, `i64`, `f64` | 1 / 2 / 4 / 8 | value | value |
//! | `string<N>`, `string` | `u32` length + UTF-8 | `str`, `String` | `&'a str`, or `String` |
//! | `bytes<N>`, `bytes` | `u32` length + the bytes | `[u8]`, `Vec<u8>` | `&'a [u8]`, or `Vec<u8>` |
//! | `[T; N]` | N × T | `[T; N]` | `[T; N]`, or [`ArrayView`] (plain numbers) |
//! | `vec<T, N>`, `vec<T>` | `u32` count + the elements | `[T]`, `Vec<T>` | [`VecView`] (plain numbers), [`SeqView`] (anything), or `Vec<T>` |
//! | `option<T>` | `u8` tag (0 none, 1 some) + T if some | `Option<T>` | `Option<T>` |
//! | `result<T, E>` | `u8` tag (0 ok, 1 err) + T or E | `Result<T, E>` | `Result<T, E>` |
//! | `()` | nothing | `()` | `()` |
//! | struct | the fields in order | generated | generated |
//! | enum | `u32` discriminant + the variant's payload, if any | generated | generated |
//!
//! Each method parameter is one ring object (object id = parameter index) and
//! a reply is one object (id 0); the object headers and their padding to 8
//! bytes are the ring's business. The codec only fills the `&mut [u8]` that
//! `Slot::object_mut(id, len)` hands out: size it with
//! [`Encode::encoded_len`], fill it with [`encode_to`], read it back with
//! [`decode_exact`].
//!
//! # Example
//!
//! A struct-like sequence of values — what a generated `impl Encode` /
//! `impl Decode` does field by field — encoded into a caller's buffer (in real
//! use, the ring slot) and decoded back with the strings and bytes borrowed
//! from that buffer:
//!
//! ```
//! use shm_channel::wire::{Decode, Encode, Reader, WireError, Writer, decode_exact, encode_to};
//!
//! /// What a code generator would emit for `struct Blit { surface: u64,
//! /// title: string<64>, pixels: bytes, gamma: option<u16> }` on the receive
//! /// side: a view borrowing from the ring.
//! #[derive(Debug, PartialEq)]
//! struct BlitView<'a> {
//!     surface: u64,
//!     title: &'a str,
//!     pixels: &'a [u8],
//!     gamma: Option<u16>,
//! }
//!
//! impl Encode for BlitView<'_> {
//!     fn encoded_len(&self) -> usize {
//!         self.surface.encoded_len()
//!             + self.title.encoded_len()
//!             + self.pixels.encoded_len()
//!             + self.gamma.encoded_len()
//!     }
//!     fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
//!         self.surface.encode(w)?;
//!         shm_channel::wire::encode_bounded(self.title, 64, w)?;
//!         self.pixels.encode(w)?;
//!         self.gamma.encode(w)
//!     }
//! }
//!
//! impl<'a> Decode<'a> for BlitView<'a> {
//!     const MIN_ENCODED_LEN: usize = u64::MIN_ENCODED_LEN
//!         + <&str>::MIN_ENCODED_LEN
//!         + <&[u8]>::MIN_ENCODED_LEN
//!         + <Option<u16>>::MIN_ENCODED_LEN;
//!     fn decode(r: &mut Reader<'a>) -> Result<Self, WireError> {
//!         Ok(BlitView {
//!             surface: r.decode()?,
//!             title: shm_channel::wire::decode_bounded(r, 64)?,
//!             pixels: r.decode()?,
//!             gamma: r.decode()?,
//!         })
//!     }
//! }
//!
//! let sent = BlitView { surface: 7, title: "hi", pixels: &[1, 2, 3], gamma: Some(5) };
//! let mut slot = vec![0u8; sent.encoded_len()]; // in real use: the ring's object
//! assert_eq!(encode_to(&sent, &mut slot)?, slot.len());
//! assert_eq!(
//!     slot,
//!     [7, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, b'h', b'i', 3, 0, 0, 0, 1, 2, 3, 1, 5, 0]
//! );
//!
//! let got: BlitView<'_> = decode_exact(&slot)?;
//! assert_eq!(got, sent);
//! // Borrowed, not copied: the title points into the buffer.
//! assert!(slot.as_ptr_range().contains(&got.title.as_ptr()));
//! # Ok::<(), WireError>(())
//! ```
//!
//! # For code generators
//!
//! - **Struct** `S { a: A, b: B }`: `impl Encode` sums the fields'
//!   `encoded_len` and encodes them in order; `impl Decode<'a>` decodes them
//!   in order (`r.decode()?`) and sets `MIN_ENCODED_LEN` to the sum of the
//!   fields' `MIN_ENCODED_LEN` (a constant expression). A struct with a
//!   `string`, `bytes` or `vec` gets a receive-side view with a lifetime
//!   (`&'a str`, `&'a [u8]`, [`VecView`] / [`SeqView`]) next to the owned type
//!   that sends.
//! - **Enum**: `put_u32(discriminant)` then the payload, if any;
//!   `encoded_len` is 4 + the payload's; decode matches on `r.u32()?` and
//!   returns [`WireError::UnknownDiscriminant`] for anything else;
//!   `MIN_ENCODED_LEN` is 4 + the smallest variant payload's minimum (0 for
//!   a unit variant; 4 alone is always safe).
//! - **Bounds** (`string<N>`, `bytes<N>`, `vec<T, N>`): call
//!   [`encode_bounded`] / [`decode_bounded`] on the field, or type it
//!   [`Bounded<T, N>`] where bounds nest (`option<string<N>>`,
//!   `vec<string<M>, N>`).
//! - **Recursion** goes through `Box` (`option<Node>` is
//!   `Option<Box<Node>>`) or `Vec`; both decode through [`Reader::nested`].
//! - **Objects**: parameter `i` is one object; size it with `encoded_len`,
//!   encode it with [`encode_to`] into the `&mut [u8]` the transport hands
//!   out, and decode it with [`decode_exact`], which also refuses trailing
//!   bytes. A large `bytes` argument can be filled in place with
//!   [`Writer::put_bytes_with`].
//!
//! # Peer bytes
//!
//! Decoding never panics, never reads out of bounds and never allocates more
//! than the input justifies: every length and count is read once into a local,
//! checked against the bytes that remain (a count against the remaining bytes
//! divided by the element's [`Decode::MIN_ENCODED_LEN`]) before anything is
//! allocated or looped over, and then only the checked local is used. Nesting
//! through `Box` and `Vec` is limited to [`MAX_DEPTH`] levels so that a
//! hostile recursive value cannot overflow the stack.
//!
//! A `&str` is validated as UTF-8 once, on the very bytes it then borrows.
//! Those bytes live in shared memory: a peer that rewrites a message after
//! publishing it is outside the model, exactly as `docs/LAYOUT.md`
//! ("Validation") says for messages. Such a peer can change what the reader
//! sees, never where the reader reads: every access stays inside the
//! validated buffer.

#![forbid(unsafe_code)]

use std::fmt;
use std::iter::FusedIterator;
use std::marker::PhantomData;

use thiserror::Error;

/// How deeply `Box` and `Vec` values may nest inside one decoded value.
///
/// Only recursive IDL types (a struct reaching itself through `option` or
/// `vec`) can nest without limit; this bound keeps a hostile peer from
/// overflowing the reader's stack with one.
pub const MAX_DEPTH: u32 = 100;

/// Why a value could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WireError {
    /// The input ended inside a value.
    #[error("truncated value: the next field needs {needed} bytes, {available} remain")]
    Truncated {
        /// Bytes the next field needs.
        needed: usize,
        /// Bytes left in the input.
        available: usize,
    },
    /// A value decoded completely but bytes remain after it.
    #[error("{count} unexpected bytes after the value")]
    TrailingBytes {
        /// How many bytes were left over.
        count: usize,
    },
    /// A `bool` byte was neither 0 nor 1.
    #[error("invalid bool byte {0} (expected 0 or 1)")]
    InvalidBool(u8),
    /// An `option` or `result` tag byte was neither 0 nor 1.
    #[error("invalid option/result tag {0} (expected 0 or 1)")]
    InvalidTag(u8),
    /// A string's bytes are not UTF-8.
    #[error("string is not valid UTF-8 (valid up to byte {valid_up_to})")]
    InvalidUtf8 {
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
    /// An enum discriminant names no variant.
    #[error("unknown enum discriminant {0}")]
    UnknownDiscriminant(u32),
    /// A length or count exceeds the IDL bound (`string<N>`, `bytes<N>`,
    /// `vec<T, N>`), or exceeds `u32::MAX` and cannot be encoded at all.
    #[error("length {len} exceeds the bound {max}")]
    TooLong {
        /// The actual length (bytes) or count (elements).
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A sequence's count cannot fit in the bytes that remain, even at the
    /// element type's smallest encoding.
    #[error(
        "sequence of {count} elements (at least {min_element_len} bytes each) \
         cannot fit in the {available} bytes that remain"
    )]
    CountTooLarge {
        /// The count read from the input.
        count: usize,
        /// The smallest encoding of one element.
        min_element_len: usize,
        /// Bytes left in the input.
        available: usize,
    },
    /// The output buffer is too small for the value being encoded.
    #[error("output buffer too small: {needed} bytes needed, {available} available")]
    BufferTooSmall {
        /// Bytes the encoding needs (at least).
        needed: usize,
        /// Bytes left in the buffer.
        available: usize,
    },
    /// `Box`/`Vec` values nest deeper than [`MAX_DEPTH`].
    #[error("value nests deeper than {max} levels")]
    TooDeep {
        /// The limit, [`MAX_DEPTH`].
        max: u32,
    },
}

/// Encodes `value` at the start of `out` and returns the bytes written
/// ([`Encode::encoded_len`]); nothing is written when `out` is too small.
pub fn encode_to<T: Encode + ?Sized>(value: &T, out: &mut [u8]) -> Result<usize, WireError> {
    let needed = value.encoded_len();
    if needed > out.len() {
        return Err(WireError::BufferTooSmall {
            needed,
            available: out.len(),
        });
    }
    let mut w = Writer::new(out);
    value.encode(&mut w)?;
    Ok(w.position())
}

/// Encodes `value` into a new `Vec` of exactly [`Encode::encoded_len`] bytes
/// (for tests and for transports that do not write in place).
pub fn encode_to_vec<T: Encode + ?Sized>(value: &T) -> Result<Vec<u8>, WireError> {
    let mut out = vec![0; value.encoded_len()];
    let written = encode_to(value, &mut out)?;
    out.truncate(written);
    Ok(out)
}

/// Decodes one `T` that must fill `bytes` exactly (an object's data); bytes
/// left after it are [`WireError::TrailingBytes`].
pub fn decode_exact<'a, T: Decode<'a>>(bytes: &'a [u8]) -> Result<T, WireError> {
    let mut r = Reader::new(bytes);
    let value = T::decode(&mut r)?;
    r.finish()?;
    Ok(value)
}

/// Fails with [`WireError::TooLong`] when `len` exceeds `max`.
pub fn check_bound(len: usize, max: usize) -> Result<(), WireError> {
    if len > max {
        Err(WireError::TooLong { len, max })
    } else {
        Ok(())
    }
}

/// Encodes a bounded `string<N>`, `bytes<N>` or `vec<T, N>`, refusing one
/// longer than `max` (bytes for strings and bytes, elements for vecs).
pub fn encode_bounded<T: Encode + LengthPrefixed + ?Sized>(
    value: &T,
    max: usize,
    w: &mut Writer<'_>,
) -> Result<(), WireError> {
    check_bound(value.prefix_len(), max)?;
    value.encode(w)
}

/// Decodes a bounded `string<N>`, `bytes<N>` or `vec<T, N>`, refusing a
/// length prefix above `max` before reading anything behind it.
pub fn decode_bounded<'a, T: Decode<'a> + LengthPrefixed>(
    r: &mut Reader<'a>,
    max: usize,
) -> Result<T, WireError> {
    check_bound(r.peek_length()?, max)?;
    T::decode(r)
}

/// A `string<N>`, `bytes<N>` or `vec<T, N>` whose bound travels in its
/// type, so that bounds nest: `option<string<256>>` is
/// `Option<Bounded<&str, 256>>`, `vec<string<16>, 8>` is
/// `Bounded<Vec<Bounded<String, 16>>, 8>`.
///
/// Encoding refuses a value over the bound and decoding refuses a length
/// prefix over it before reading behind it, both with
/// [`WireError::TooLong`]. The field is public for cheap wrapping and
/// unwrapping; [`Bounded::new`] checks the bound early.
///
/// ```
/// use shm_channel::wire::{Bounded, WireError, decode_exact, encode_to_vec};
///
/// let bytes = encode_to_vec(&Some(Bounded::<_, 4>("abc")))?;
/// let back: Option<Bounded<&str, 4>> = decode_exact(&bytes)?;
/// assert_eq!(back.as_deref(), Some(&"abc"));
/// assert_eq!(
///     decode_exact::<Option<Bounded<&str, 2>>>(&bytes),
///     Err(WireError::TooLong { len: 3, max: 2 })
/// );
/// # Ok::<(), WireError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Bounded<T, const N: usize>(pub T);

impl<T: LengthPrefixed, const N: usize> Bounded<T, N> {
    /// Wraps `value`, refusing one longer than `N`.
    pub fn new(value: T) -> Result<Self, WireError> {
        check_bound(value.prefix_len(), N)?;
        Ok(Self(value))
    }
}

impl<T, const N: usize> Bounded<T, N> {
    /// The wrapped value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T, const N: usize> std::ops::Deref for Bounded<T, N> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Encode + LengthPrefixed, const N: usize> Encode for Bounded<T, N> {
    fn encoded_len(&self) -> usize {
        self.0.encoded_len()
    }

    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        encode_bounded(&self.0, N, w)
    }
}

impl<'a, T: Decode<'a> + LengthPrefixed, const N: usize> Decode<'a> for Bounded<T, N> {
    const MIN_ENCODED_LEN: usize = T::MIN_ENCODED_LEN;

    fn decode(r: &mut Reader<'a>) -> Result<Self, WireError> {
        decode_bounded(r, N).map(Self)
    }

    fn skip(r: &mut Reader<'a>) -> Result<(), WireError> {
        check_bound(r.peek_length()?, N)?;
        T::skip(r)
    }
}

impl<T: LengthPrefixed, const N: usize> LengthPrefixed for Bounded<T, N> {
    fn prefix_len(&self) -> usize {
        self.0.prefix_len()
    }
}

/// A value that can be written in the wire encoding.
///
/// Implemented here for every built-in IDL type; generated code implements it
/// for structs (each field in order) and enums (`put_u32(discriminant)` then
/// the payload). [`encoded_len`](Encode::encoded_len) must be exact: the ring
/// object is sized from it before [`encode`](Encode::encode) fills it.
pub trait Encode {
    /// The exact number of bytes [`encode`](Encode::encode) writes.
    fn encoded_len(&self) -> usize;

    /// Writes the value at the writer's position.
    ///
    /// Fails with [`WireError::BufferTooSmall`] when the buffer ends first,
    /// or [`WireError::TooLong`] for a string, bytes or vec of more than
    /// `u32::MAX` items.
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError>;

    /// [`encoded_len`](Encode::encoded_len) of all `items`, without a count.
    /// The default sums; plain numbers override it with a multiplication.
    fn slice_encoded_len(items: &[Self]) -> usize
    where
        Self: Sized,
    {
        items.iter().map(Self::encoded_len).sum()
    }

    /// Encodes all `items` back to back, without a count (the body of a
    /// `vec` or an array). The default loops; plain numbers override it with
    /// one bounds check for the whole slice.
    fn encode_slice(items: &[Self], w: &mut Writer<'_>) -> Result<(), WireError>
    where
        Self: Sized,
    {
        items.iter().try_for_each(|item| item.encode(w))
    }
}

/// A value that can be read from the wire encoding, possibly borrowing from
/// the input for `'a`.
///
/// Implemented here for every built-in IDL type (borrowed: `&'a str`,
/// `&'a [u8]`, [`VecView`], [`SeqView`]; owned copies: `String`, `Vec<T>`);
/// generated code implements it for structs and enums and their views.
pub trait Decode<'a>: Sized {
    /// The fewest bytes any value of this type encodes to: 1 for `bool`, the
    /// size for numbers, 4 for strings, bytes and vecs, 1 for `option` and
    /// `result` (plus the smaller of `T`, `E` for `result`), N × T for
    /// arrays, the sum of the fields for a struct, 4 for an enum.
    ///
    /// A count read from peer bytes is refused when its elements could not
    /// fit in the remaining input at this size, so an implementation must
    /// never claim more than the truth (claiming less only weakens that
    /// check). An element type of size 0 is counted as 1 byte, so a `vec` of
    /// zero-sized values may hold at most as many elements as bytes remain
    /// after its count: the price of never looping on a hostile count.
    const MIN_ENCODED_LEN: usize;

    /// Reads one value at the reader's position.
    fn decode(r: &mut Reader<'a>) -> Result<Self, WireError>;

    /// Validates one value and moves past it (what [`SeqView`] does for each
    /// element up front). The default decodes and drops; types that can
    /// validate without building the value override it.
    fn skip(r: &mut Reader<'a>) -> Result<(), WireError> {
        Self::decode(r).map(drop)
    }

    /// Reads `count` values into a `Vec`. Callers check `count` first
    /// ([`Reader::count`]); plain numbers override this with one bounds
    /// check and a bulk conversion.
    fn decode_vec(r: &mut Reader<'a>, count: usize) -> Result<Vec<Self>, WireError> {
        // Values that take no bytes (`()`, empty structs) are zero-sized in
        // Rust too, so their `Vec` allocates nothing; a `vec` count of them is
        // bounded by `Reader::count`, an array's by its type.
        if Self::MIN_ENCODED_LEN > 0 {
            r.check_count(count, Self::MIN_ENCODED_LEN)?;
        }
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push(Self::decode(r)?);
        }
        Ok(items)
    }

    /// Reads `N` values into an array. The default goes through a `Vec` (no
    /// `unsafe`, no `Default` needed); plain numbers and `bool` override it
    /// without allocating.
    fn decode_array<const N: usize>(r: &mut Reader<'a>) -> Result<[Self; N], WireError> {
        let items = Self::decode_vec(r, N)?;
        let got = items.len();
        // `decode_vec` returns exactly N items or an error, so this cannot
        // fail; it is still mapped to an error rather than unwrapped.
        items.try_into().map_err(|_| WireError::Truncated {
            needed: N,
            available: got,
        })
    }
}

/// Types whose encoding starts with a `u32` length or count: strings, bytes,
/// vecs and their views. [`encode_bounded`] and [`decode_bounded`] enforce an
/// IDL bound on them.
pub trait LengthPrefixed {
    /// The length that goes into the prefix: bytes for strings and bytes,
    /// elements for vecs.
    fn prefix_len(&self) -> usize;
}

/// A write cursor over a caller's buffer (the ring object being filled).
///
/// Every `put_*` checks the space left and fails with
/// [`WireError::BufferTooSmall`] rather than panicking; nothing allocates.
#[derive(Debug)]
pub struct Writer<'b> {
    buf: &'b mut [u8],
    pos: usize,
}

macro_rules! writer_put {
    ($($(#[$doc:meta])* $name:ident: $t:ty;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(&mut self, value: $t) -> Result<(), WireError> {
                self.put_raw(&value.to_le_bytes())
            }
        )*
    };
}

impl<'b> Writer<'b> {
    /// A writer at the start of `buf`.
    pub fn new(buf: &'b mut [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes written so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes still free.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next `n` bytes, to be filled by the caller; the position moves past
    /// them. Not zeroed: the caller must write every byte (sender code zeroes
    /// nothing else, the encoding has no padding).
    pub fn reserve(&mut self, n: usize) -> Result<&mut [u8], WireError> {
        let available = self.remaining();
        let start = self.pos;
        let end = start
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or(WireError::BufferTooSmall {
                needed: n,
                available,
            })?;
        self.pos = end;
        Ok(&mut self.buf[start..end])
    }

    /// Copies `bytes` as they are (no length prefix).
    pub fn put_raw(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        self.reserve(bytes.len())?.copy_from_slice(bytes);
        Ok(())
    }

    writer_put! {
        /// Writes a `u8`.
        put_u8: u8;
        /// Writes an `i8`.
        put_i8: i8;
        /// Writes a little-endian `u16`.
        put_u16: u16;
        /// Writes a little-endian `i16`.
        put_i16: i16;
        /// Writes a little-endian `u32`.
        put_u32: u32;
        /// Writes a little-endian `i32`.
        put_i32: i32;
        /// Writes a little-endian `u64`.
        put_u64: u64;
        /// Writes a little-endian `i64`.
        put_i64: i64;
        /// Writes a little-endian IEEE 754 `f32` (NaN payloads kept).
        put_f32: f32;
        /// Writes a little-endian IEEE 754 `f64` (NaN payloads kept).
        put_f64: f64;
    }

    /// Writes a `bool` as 0 or 1.
    pub fn put_bool(&mut self, value: bool) -> Result<(), WireError> {
        self.put_u8(u8::from(value))
    }

    /// Writes an `option`/`result` tag: 0 (none / ok) or 1 (some / err).
    pub fn put_tag(&mut self, set: bool) -> Result<(), WireError> {
        self.put_u8(u8::from(set))
    }

    /// Writes a `u32` length or count prefix; fails with
    /// [`WireError::TooLong`] above `u32::MAX`.
    pub fn put_len(&mut self, len: usize) -> Result<(), WireError> {
        let len = u32::try_from(len).map_err(|_| WireError::TooLong {
            len,
            max: u32::MAX as usize,
        })?;
        self.put_u32(len)
    }

    /// Writes `bytes` with its `u32` length prefix (an IDL `bytes`).
    pub fn put_bytes(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        self.put_len(bytes.len())?;
        self.put_raw(bytes)
    }

    /// Writes an IDL `bytes` of `len` bytes in place: the length prefix, then
    /// `fill` writes the bytes straight into the buffer (the ring), with no
    /// intermediate copy. `fill` must write all `len` bytes.
    pub fn put_bytes_with<R>(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<R, WireError> {
        let needed = len.saturating_add(4);
        if needed > self.remaining() {
            return Err(WireError::BufferTooSmall {
                needed,
                available: self.remaining(),
            });
        }
        self.put_len(len)?;
        Ok(fill(self.reserve(len)?))
    }
}

/// A read cursor over received bytes (a ring object), handing out values
/// that borrow from them for `'a`.
///
/// Every read checks the bytes left and fails with [`WireError::Truncated`]
/// rather than panicking.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    depth: u32,
}

macro_rules! reader_get {
    ($($(#[$doc:meta])* $name:ident: $t:ty;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(&mut self) -> Result<$t, WireError> {
                Ok(<$t>::from_le_bytes(self.array()?))
            }
        )*
    };
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            depth: 0,
        }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The bytes not yet consumed.
    pub fn rest(&self) -> &'a [u8] {
        let buf: &'a [u8] = self.buf;
        buf.get(self.pos..).unwrap_or_default()
    }

    /// Fails with [`WireError::TrailingBytes`] unless every byte was consumed.
    pub fn finish(&self) -> Result<(), WireError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(WireError::TrailingBytes { count }),
        }
    }

    /// Decodes a `T` (so generated code can write `field: r.decode()?`).
    pub fn decode<T: Decode<'a>>(&mut self) -> Result<T, WireError> {
        T::decode(self)
    }

    /// The next `n` bytes, borrowed; the position moves past them.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let buf: &'a [u8] = self.buf;
        let start = self.pos;
        let bytes = start
            .checked_add(n)
            .and_then(|end| buf.get(start..end))
            .ok_or(WireError::Truncated {
                needed: n,
                available: self.remaining(),
            })?;
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    reader_get! {
        /// Reads a `u8`.
        u8: u8;
        /// Reads an `i8`.
        i8: i8;
        /// Reads a little-endian `u16`.
        u16: u16;
        /// Reads a little-endian `i16`.
        i16: i16;
        /// Reads a little-endian `u32` (also an enum discriminant).
        u32: u32;
        /// Reads a little-endian `i32`.
        i32: i32;
        /// Reads a little-endian `u64`.
        u64: u64;
        /// Reads a little-endian `i64`.
        i64: i64;
        /// Reads a little-endian IEEE 754 `f32`.
        f32: f32;
        /// Reads a little-endian IEEE 754 `f64`.
        f64: f64;
    }

    /// Reads a `bool`; a byte other than 0 or 1 is [`WireError::InvalidBool`].
    pub fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(WireError::InvalidBool(other)),
        }
    }

    /// Reads an `option`/`result` tag: `false` for 0 (none / ok), `true` for
    /// 1 (some / err), [`WireError::InvalidTag`] otherwise.
    pub fn tag(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(WireError::InvalidTag(other)),
        }
    }

    /// Reads a `u32` length prefix (of a string or bytes). Not checked
    /// against the input: [`take`](Reader::take) does that.
    pub fn length(&mut self) -> Result<usize, WireError> {
        // u32 -> usize is lossless on every target this crate builds for
        // (Linux, 32 and 64 bit); on a 16-bit target the saturated length
        // would simply fail as truncated.
        Ok(usize::try_from(self.u32()?).unwrap_or(usize::MAX))
    }

    /// The next `u32` length prefix, without consuming it (for
    /// [`decode_bounded`]).
    pub fn peek_length(&self) -> Result<usize, WireError> {
        self.clone().length()
    }

    /// Reads a `u32` element count and checks that that many elements of at
    /// least `min_element_len` bytes each fit in what remains
    /// ([`WireError::CountTooLarge`] otherwise), so the caller may allocate
    /// and loop over it.
    pub fn count(&mut self, min_element_len: usize) -> Result<usize, WireError> {
        let count = self.length()?;
        self.check_count(count, min_element_len)?;
        Ok(count)
    }

    /// Checks that `count` elements of at least `min_element_len` bytes each
    /// (at least 1, see [`Decode::MIN_ENCODED_LEN`]) fit in what remains.
    pub fn check_count(&self, count: usize, min_element_len: usize) -> Result<(), WireError> {
        let available = self.remaining();
        if count > available / min_element_len.max(1) {
            return Err(WireError::CountTooLarge {
                count,
                min_element_len,
                available,
            });
        }
        Ok(())
    }

    /// Runs `f` one nesting level deeper, failing with [`WireError::TooDeep`]
    /// beyond [`MAX_DEPTH`]. `Box<T>` and `Vec<T>` decode through this; a
    /// generated view that recurses some other way should too.
    pub fn nested<R>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<R, WireError>,
    ) -> Result<R, WireError> {
        if self.depth >= MAX_DEPTH {
            return Err(WireError::TooDeep { max: MAX_DEPTH });
        }
        self.depth += 1;
        let out = f(self);
        self.depth -= 1;
        out
    }
}

mod sealed {
    pub trait Sealed {}
}

/// Plain numbers: the element types a [`VecView`] reads straight from the
/// input (`u8`..`u64`, `i8`..`i64`, `f32`, `f64`; not `bool`, whose bytes need
/// checking). Sealed.
pub trait Plain: Copy + sealed::Sealed + 'static {
    /// Encoded size in bytes.
    const SIZE: usize;

    /// The encoding of one value: `[u8; SIZE]` (alignment 1).
    type Bytes: Copy + fmt::Debug + 'static;

    /// `bytes` as whole encoded values, at any alignment; a partial value at
    /// the end is left out.
    fn as_le_chunks(bytes: &[u8]) -> &[Self::Bytes];

    /// Reads one value from its little-endian encoding.
    fn from_le(bytes: &Self::Bytes) -> Self;

    /// Reads all whole values in `bytes` into a `Vec` (one bulk conversion).
    fn read_le(bytes: &[u8]) -> Vec<Self>;

    /// Writes `items` little-endian into `out`, which should be
    /// `items.len() * SIZE` bytes (extra items or bytes are left alone).
    fn write_le(items: &[Self], out: &mut [u8]);
}

// Each plain number with the bulk conversions of its slices; `u8` copies
// whole slices, the others convert element by element (no alignment or
// endianness assumption, no `unsafe`).
macro_rules! plain {
    ($t:ty) => {
        plain!(
            $t,
            |items: &[$t], out: &mut [u8]| {
                let (chunks, _) = out.as_chunks_mut::<{ size_of::<$t>() }>();
                for (chunk, item) in chunks.iter_mut().zip(items) {
                    *chunk = item.to_le_bytes();
                }
            },
            |bytes: &[u8]| -> Vec<$t> {
                let (chunks, _) = bytes.as_chunks::<{ size_of::<$t>() }>();
                chunks
                    .iter()
                    .map(|chunk| <$t>::from_le_bytes(*chunk))
                    .collect()
            }
        );
    };
    ($t:ty, $write_le:expr, $read_le:expr) => {
        impl sealed::Sealed for $t {}

        impl Plain for $t {
            const SIZE: usize = size_of::<$t>();

            type Bytes = [u8; size_of::<$t>()];

            fn as_le_chunks(bytes: &[u8]) -> &[Self::Bytes] {
                bytes.as_chunks().0
            }

            fn from_le(bytes: &Self::Bytes) -> Self {
                <$t>::from_le_bytes(*bytes)
            }

            fn read_le(bytes: &[u8]) -> Vec<Self> {
                ($read_le)(bytes)
            }

            fn write_le(items: &[Self], out: &mut [u8]) {
                ($write_le)(items, out)
            }
        }

        impl Encode for $t {
            fn encoded_len(&self) -> usize {
                size_of::<$t>()
            }

            fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
                w.put_raw(&self.to_le_bytes())
            }

            fn slice_encoded_len(items: &[Self]) -> usize {
                items.len() * size_of::<$t>()
            }

            fn encode_slice(items: &[Self], w: &mut Writer<'_>) -> Result<(), WireError> {
                // `reserve` returns exactly `items.len() * SIZE` bytes.
                ($write_le)(items, w.reserve(items.len() * size_of::<$t>())?);
                Ok(())
            }
        }

        impl<'a> Decode<'a> for $t {
            const MIN_ENCODED_LEN: usize = size_of::<$t>();

            fn decode(r: &mut Reader<'a>) -> Result<Self, WireError> {
                Ok(<$t>::from_le_bytes(r.array()?))
            }

            fn skip(r: &mut Reader<'a>) -> Result<(), WireError> {
                r.take(size_of::<$t>()).map(drop)
            }

            fn decode_vec(r: &mut Reader<'a>, count: usize) -> Result<Vec<Self>, WireError> {
                r.check_count(count, size_of::<$t>())?;
                Ok(($read_le)(r.take(count * size_of::<$t>())?))
            }

            fn decode_array<const N: usize>(r: &mut Reader<'a>) -> Result<[Self; N], WireError> {
                r.check_count(N, size_of::<$t>())?;
                let bytes = r.take(N * size_of::<$t>())?;
                let mut out = [<$t>::default(); N];
                for (item, chunk) in out.iter_mut().zip(<$t>::as_le_chunks(bytes)) {
                    *item = <$t>::from_le_bytes(*chunk);
                }
                Ok(out)
            }
        }
    };
}

plain!(
    u8,
    |items: &[u8], out: &mut [u8]| {
        let n = items.len().min(out.len());
        out[..n].copy_from_slice(&items[..n]);
    },
    |bytes: &[u8]| bytes.to_vec()
);
plain!(i8);
plain!(u16);
plain!(i16);
plain!(u32);
plain!(i32);
plain!(u64);
plain!(i64);
plain!(f32);
plain!(f64);

impl Encode for bool {
    fn encoded_len(&self) -> usize {
        1
    }

    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put_bool(*self)
    }
}

impl<'a> Decode<'a> for bool {
    const MIN_ENCODED_LEN: usize = 1;

    fn decode(r: &mut Reader<'a>) -> Result<Self, WireError> {
        r.bool()
    }

    fn decode_array<const N: usize>(r: &mut Reader<'a>) -> Result<[Self; N], WireError> {
        r.check_count(N, 1)?;
        let mut out = [false; N];
        for item in &mut out {
            *item = r.bool()?;
        }
        Ok(out)
    }
}

impl Encode for () {
    fn encoded_len(&self) -> usize {
        0
    }

    fn encode(&self, _: &mut Writer<'_>) -> Result<(), WireError> {
        Ok(())
    }
}

impl<'a> Decode<'a> for () {
    const MIN_ENCODED_LEN: usize = 0;

    fn decode(_: &mut Reader<'a>) -> Result<Self, WireError> {
        Ok(())
    }
}

impl Encode for str {
    fn encoded_len(&self) -> usize {
        4 + self.len()
    }

    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put_bytes(self.as_bytes())
    }
}

impl LengthPrefixed for str {
    fn prefix_len(&self) -> usize {
        self.len()
    }
}

impl Encode for String {
    fn encoded_len(&self) -> usize {
        self.as_str().encoded_len()
    }

    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        self.as_str().encode(w)
    }
}

impl LengthPrefixed for String {
    fn prefix_len(&self) -> usize {
        self.len()
    }
}

impl<'a> Decode<'a> for &'a str {
    const MIN_ENCODED_LEN: usize = 4;

    fn decode(r: &mut Reader<'a>) -> Result<Self, WireError> {
        let len = r.length()?;
        // Validated once, on exactly the bytes that are then borrowed.
        std::str::from_utf8(r.take(len)?).map_err(|e| WireError::InvalidUtf8 {
            valid_up_to: e.valid_up_to(),
        })
    }
}

impl<'a> Decode<'a> for String {
    const MIN_ENCODED_LEN: usize = 4;

    fn decode(r: &mut Reader<'a>) -> Result<Self, WireError> {
        <&str>::decode(r).map(str::to_owned)
    }

    fn skip(r: &mut Reader<'a>) -> Result<(), WireError> {
        <&str>::decode(r).map(drop)
    }
}

/// An IDL `bytes` (and, identically encoded, `vec<u8>`).
impl<'a> Decode<'a> for &'a [u8] {
    const MIN_ENCODED_LEN: usize = 4;

    fn decode(r: &mut Reader<'a>) -> Result<Self, WireError> {
        let len = r.length()?;
        r.take(len)
    }
}

/// An IDL `vec<T>`; with `T = u8`, an IDL `bytes` (same encoding).
impl<T: Encode> Encode for [T] {
    fn encoded_len(&self) -> usize {
        4 + T::slice_encoded_len(self)
    }

    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put_len(self.len())?;
        T::encode_slice(self, w)
    }
}

impl<T> LengthPrefixed for [T] {
    fn prefix_len(&self) -> usize {
        self.len()
    }
}

impl<T: Encode> Encode for Vec<T> {
    fn encoded_len(&self) -> usize {
        self.as_slice().encoded_len()
    }

    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        self.as_slice().encode(w)
    }
}

impl<T> LengthPrefixed for Vec<T> {
    fn prefix_len(&self) -> usize {
        self.len()
    }
}

/// An owned copy of a `vec<T>` (or `bytes`, for `Vec<u8>`); allocates at
/// most one element per [`Decode::MIN_ENCODED_LEN`] bytes of input.
impl<'a, T: Decode<'a>> Decode<'a> for Vec<T> {
    const MIN_ENCODED_LEN: usize = 4;

    fn decode(r: &mut Reader<'a>) -> Result<Self, WireError> {
        let count = r.count(T::MIN_ENCODED_LEN)?;
        r.nested(|r| T::decode_vec(r, count))
    }

    fn skip(r: &mut Reader<'a>) -> Result<(), WireError> {
        let count = r.count(T::MIN_ENCODED_LEN)?;
        r.nested(|r| (0..count).try_for_each(|_| T::skip(r)))
    }
}

impl<T: Encode + ?Sized> Encode for &T {
    fn encoded_len(&self) -> usize {
        (**self).encoded_len()
    }

    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        (**self).encode(w)
    }
}

impl<T: LengthPrefixed + ?Sized> LengthPrefixed for &T {
    fn prefix_len(&self) -> usize {
        (**self).prefix_len()
    }
}

/// The indirection recursive IDL types need; encodes as the `T` inside.
impl<T: Encode + ?Sized> Encode for Box<T> {
    fn encoded_len(&self) -> usize {
        (**self).encoded_len()
    }

    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        (**self).encode(w)
    }
}

/// Decodes one nesting level deeper (see [`MAX_DEPTH`]).
impl<'a, T: Decode<'a>> Decode<'a> for Box<T> {
    const MIN_ENCODED_LEN: usize = T::MIN_ENCODED_LEN;

    fn decode(r: &mut Reader<'a>) -> Result<Self, WireError> {
        r.nested(T::decode).map(Box::new)
    }

    fn skip(r: &mut Reader<'a>) -> Result<(), WireError> {
        r.nested(T::skip)
    }
}

/// An IDL `[T; N]`: N values, no count.
impl<T: Encode, const N: usize> Encode for [T; N] {
    fn encoded_len(&self) -> usize {
        T::slice_encoded_len(self)
    }

    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        T::encode_slice(self, w)
    }
}

impl<'a, T: Decode<'a>, const N: usize> Decode<'a> for [T; N] {
    const MIN_ENCODED_LEN: usize = N.saturating_mul(T::MIN_ENCODED_LEN);

    fn decode(r: &mut Reader<'a>) -> Result<Self, WireError> {
        T::decode_array(r)
    }

    fn skip(r: &mut Reader<'a>) -> Result<(), WireError> {
        if T::MIN_ENCODED_LEN > 0 {
            r.check_count(N, T::MIN_ENCODED_LEN)?;
        }
        (0..N).try_for_each(|_| T::skip(r))
    }
}

impl<T: Encode> Encode for Option<T> {
    fn encoded_len(&self) -> usize {
        1 + self.as_ref().map_or(0, T::encoded_len)
    }

    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put_tag(self.is_some())?;
        match self {
            Some(value) => value.encode(w),
            None => Ok(()),
        }
    }
}

impl<'a, T: Decode<'a>> Decode<'a> for Option<T> {
    const MIN_ENCODED_LEN: usize = 1;

    fn decode(r: &mut Reader<'a>) -> Result<Self, WireError> {
        if r.tag()? {
            T::decode(r).map(Some)
        } else {
            Ok(None)
        }
    }

    fn skip(r: &mut Reader<'a>) -> Result<(), WireError> {
        if r.tag()? { T::skip(r) } else { Ok(()) }
    }
}

impl<T: Encode, E: Encode> Encode for Result<T, E> {
    fn encoded_len(&self) -> usize {
        1 + match self {
            Ok(value) => value.encoded_len(),
            Err(error) => error.encoded_len(),
        }
    }

    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put_tag(self.is_err())?;
        match self {
            Ok(value) => value.encode(w),
            Err(error) => error.encode(w),
        }
    }
}

impl<'a, T: Decode<'a>, E: Decode<'a>> Decode<'a> for Result<T, E> {
    const MIN_ENCODED_LEN: usize = if T::MIN_ENCODED_LEN < E::MIN_ENCODED_LEN {
        T::MIN_ENCODED_LEN
    } else {
        E::MIN_ENCODED_LEN
    }
    .saturating_add(1);

    fn decode(r: &mut Reader<'a>) -> Result<Self, WireError> {
        if r.tag()? {
            E::decode(r).map(Err)
        } else {
            T::decode(r).map(Ok)
        }
    }

    fn skip(r: &mut Reader<'a>) -> Result<(), WireError> {
        if r.tag()? { E::skip(r) } else { T::skip(r) }
    }
}

/// A received `vec<T>` of plain numbers, borrowed from the input: no copy,
/// no allocation, no alignment assumption (each element is read with
/// `from_le_bytes` when asked for).
pub struct VecView<'a, T: Plain> {
    bytes: &'a [u8],
    _element: PhantomData<T>,
}

impl<'a, T: Plain> VecView<'a, T> {
    /// A view over `bytes`, the elements without their count; `None` unless
    /// the length is a whole number of elements.
    pub fn new(bytes: &'a [u8]) -> Option<Self> {
        bytes.len().is_multiple_of(T::SIZE).then_some(Self {
            bytes,
            _element: PhantomData,
        })
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.bytes.len() / T::SIZE
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Element `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<T> {
        T::as_le_chunks(self.bytes).get(i).map(T::from_le)
    }

    /// The elements, in order.
    pub fn iter(&self) -> VecViewIter<'a, T> {
        VecViewIter {
            chunks: T::as_le_chunks(self.bytes).iter(),
        }
    }

    /// An owned copy of the elements.
    pub fn to_vec(&self) -> Vec<T> {
        T::read_le(self.bytes)
    }

    /// The elements' encoded bytes (little-endian, without the count).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

impl<T: Plain> Clone for VecView<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: Plain> Copy for VecView<'_, T> {}

impl<T: Plain + fmt::Debug> fmt::Debug for VecView<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a, T: Plain> IntoIterator for VecView<'a, T> {
    type Item = T;
    type IntoIter = VecViewIter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<'a, T: Plain> IntoIterator for &VecView<'a, T> {
    type Item = T;
    type IntoIter = VecViewIter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The iterator of a [`VecView`]: reads each element as it goes.
pub struct VecViewIter<'a, T: Plain> {
    chunks: std::slice::Iter<'a, T::Bytes>,
}

impl<T: Plain> Iterator for VecViewIter<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.chunks.next().map(T::from_le)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }

    fn nth(&mut self, n: usize) -> Option<T> {
        self.chunks.nth(n).map(T::from_le)
    }

    fn fold<B, F: FnMut(B, T) -> B>(self, init: B, mut f: F) -> B {
        self.chunks
            .fold(init, |acc, bytes| f(acc, T::from_le(bytes)))
    }
}

impl<T: Plain> DoubleEndedIterator for VecViewIter<'_, T> {
    fn next_back(&mut self) -> Option<T> {
        self.chunks.next_back().map(T::from_le)
    }
}

impl<T: Plain> ExactSizeIterator for VecViewIter<'_, T> {}

impl<T: Plain> FusedIterator for VecViewIter<'_, T> {}

impl<T: Plain> Clone for VecViewIter<'_, T> {
    fn clone(&self) -> Self {
        Self {
            chunks: self.chunks.clone(),
        }
    }
}

impl<T: Plain> fmt::Debug for VecViewIter<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VecViewIter")
            .field("left", &self.chunks.len())
            .finish()
    }
}

impl<'a, T: Plain> Decode<'a> for VecView<'a, T> {
    const MIN_ENCODED_LEN: usize = 4;

    fn decode(r: &mut Reader<'a>) -> Result<Self, WireError> {
        let count = r.count(T::SIZE)?;
        Ok(Self {
            bytes: r.take(count * T::SIZE)?,
            _element: PhantomData,
        })
    }
}

/// Re-sends a received view as it came, one copy of its bytes.
impl<T: Plain> Encode for VecView<'_, T> {
    fn encoded_len(&self) -> usize {
        4 + self.bytes.len()
    }

    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put_len(self.len())?;
        w.put_raw(self.bytes)
    }
}

impl<T: Plain> LengthPrefixed for VecView<'_, T> {
    fn prefix_len(&self) -> usize {
        self.len()
    }
}

/// A received `[T; N]` of plain numbers, borrowed from the input: the
/// array counterpart of [`VecView`] (which it derefs to), for arrays too big
/// to copy onto the stack (`[u8; 1 MiB]`) or read only in part.
pub struct ArrayView<'a, T: Plain, const N: usize>(VecView<'a, T>);

impl<'a, T: Plain, const N: usize> ArrayView<'a, T, N> {
    /// An owned copy of the elements.
    pub fn to_array(&self) -> [T; N]
    where
        T: Default,
    {
        let mut out = [T::default(); N];
        for (item, value) in out.iter_mut().zip(self.0.iter()) {
            *item = value;
        }
        out
    }
}

impl<'a, T: Plain, const N: usize> std::ops::Deref for ArrayView<'a, T, N> {
    type Target = VecView<'a, T>;

    fn deref(&self) -> &VecView<'a, T> {
        &self.0
    }
}

impl<T: Plain, const N: usize> Clone for ArrayView<'_, T, N> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: Plain, const N: usize> Copy for ArrayView<'_, T, N> {}

impl<T: Plain + fmt::Debug, const N: usize> fmt::Debug for ArrayView<'_, T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'a, T: Plain, const N: usize> Decode<'a> for ArrayView<'a, T, N> {
    const MIN_ENCODED_LEN: usize = N.saturating_mul(T::SIZE);

    fn decode(r: &mut Reader<'a>) -> Result<Self, WireError> {
        r.check_count(N, T::SIZE)?;
        Ok(Self(VecView {
            bytes: r.take(N * T::SIZE)?,
            _element: PhantomData,
        }))
    }
}

/// Re-sends a received view as it came (N values, no count).
impl<T: Plain, const N: usize> Encode for ArrayView<'_, T, N> {
    fn encoded_len(&self) -> usize {
        self.0.bytes.len()
    }

    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put_raw(self.0.bytes)
    }
}

/// A received `vec<T>` of any element type, borrowed from the input and
/// decoded lazily, one element per iteration step.
///
/// Decoding the view checks the count against the remaining bytes, then
/// validates every element once (with [`Decode::skip`]) to find where the
/// sequence ends, so a view that decoded is a valid sequence; iterating
/// decodes each element again from the borrowed bytes. The items are
/// `Result`s only because the bytes live in shared memory (see the module
/// docs): for a message nobody rewrote they are all `Ok`.
///
/// For `vec<string>` this validates each string's UTF-8 twice (up front and
/// when iterated); decode a `Vec<&'a str>` instead to validate once at the
/// cost of one allocation.
pub struct SeqView<'a, T> {
    bytes: &'a [u8],
    count: usize,
    depth: u32,
    _element: PhantomData<fn() -> T>,
}

impl<'a, T: Decode<'a>> SeqView<'a, T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The elements, decoded one by one.
    pub fn iter(&self) -> SeqIter<'a, T> {
        SeqIter {
            reader: Reader {
                buf: self.bytes,
                pos: 0,
                depth: self.depth,
            },
            left: self.count,
            _element: PhantomData,
        }
    }

    /// All elements decoded into a `Vec`.
    pub fn to_vec(&self) -> Result<Vec<T>, WireError> {
        self.iter().collect()
    }

    /// The elements' encoded bytes (without the count).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

impl<T> Clone for SeqView<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SeqView<'_, T> {}

impl<'a, T: Decode<'a> + fmt::Debug> fmt::Debug for SeqView<'a, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a, T: Decode<'a>> IntoIterator for SeqView<'a, T> {
    type Item = Result<T, WireError>;
    type IntoIter = SeqIter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<'a, T: Decode<'a>> IntoIterator for &SeqView<'a, T> {
    type Item = Result<T, WireError>;
    type IntoIter = SeqIter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<'a, T: Decode<'a>> Decode<'a> for SeqView<'a, T> {
    const MIN_ENCODED_LEN: usize = 4;

    fn decode(r: &mut Reader<'a>) -> Result<Self, WireError> {
        let count = r.count(T::MIN_ENCODED_LEN)?;
        let start = r.rest();
        let depth = r.nested(|r| {
            (0..count).try_for_each(|_| T::skip(r))?;
            Ok(r.depth)
        })?;
        let used = start.len() - r.remaining();
        Ok(Self {
            bytes: start.get(..used).unwrap_or_default(),
            count,
            depth,
            _element: PhantomData,
        })
    }
}

/// Re-sends a received view as it came, one copy of its bytes.
impl<T> Encode for SeqView<'_, T> {
    fn encoded_len(&self) -> usize {
        4 + self.bytes.len()
    }

    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put_len(self.count)?;
        w.put_raw(self.bytes)
    }
}

impl<T> LengthPrefixed for SeqView<'_, T> {
    fn prefix_len(&self) -> usize {
        self.count
    }
}

/// The iterator of a [`SeqView`]: decodes the next element on each step and
/// stops after the first error.
pub struct SeqIter<'a, T> {
    reader: Reader<'a>,
    left: usize,
    _element: PhantomData<fn() -> T>,
}

impl<'a, T: Decode<'a>> Iterator for SeqIter<'a, T> {
    type Item = Result<T, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let item = T::decode(&mut self.reader);
        if item.is_err() {
            self.left = 0;
        }
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left.min(1), Some(self.left))
    }
}

impl<'a, T: Decode<'a>> FusedIterator for SeqIter<'a, T> {}

impl<T> fmt::Debug for SeqIter<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeqIter").field("left", &self.left).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Encodes into a buffer larger than needed and checks that exactly
    /// `encoded_len` bytes were written and nothing after them.
    fn encoded<T: Encode + ?Sized>(value: &T) -> Vec<u8> {
        let len = value.encoded_len();
        let mut buf = vec![0xAA; len + 16];
        let written = encode_to(value, &mut buf).expect("buffer is large enough");
        assert_eq!(written, len, "encoded_len must equal the bytes written");
        assert!(
            buf[len..].iter().all(|&b| b == 0xAA),
            "wrote past encoded_len"
        );
        buf.truncate(len);
        // An exact-size buffer is enough, and one byte less is refused cleanly.
        assert_eq!(encode_to(value, &mut vec![0; len]), Ok(len));
        if len > 0 {
            assert!(matches!(
                encode_to(value, &mut vec![0; len - 1]),
                Err(WireError::BufferTooSmall { .. })
            ));
        }
        buf
    }

    // What a code generator would emit -------------------------------------

    /// `struct Msg { id: u64, name: string<16>, data: bytes, flags: vec<u16, 8>,
    /// tags: vec<string>, note: option<string> }`, receive-side view.
    #[derive(Debug, PartialEq)]
    struct MsgView<'a> {
        id: u64,
        name: &'a str,
        data: &'a [u8],
        flags: VecView<'a, u16>,
        tags: SeqView<'a, &'a str>,
        note: Option<&'a str>,
    }

    impl PartialEq for VecView<'_, u16> {
        fn eq(&self, other: &Self) -> bool {
            self.as_bytes() == other.as_bytes()
        }
    }

    impl<'a> PartialEq for SeqView<'a, &'a str> {
        fn eq(&self, other: &Self) -> bool {
            self.count == other.count && self.bytes == other.bytes
        }
    }

    /// The send side of the same struct.
    #[derive(Debug, Clone, PartialEq)]
    struct Msg {
        id: u64,
        name: String,
        data: Vec<u8>,
        flags: Vec<u16>,
        tags: Vec<String>,
        note: Option<String>,
    }

    impl Encode for Msg {
        fn encoded_len(&self) -> usize {
            self.id.encoded_len()
                + self.name.encoded_len()
                + self.data.encoded_len()
                + self.flags.encoded_len()
                + self.tags.encoded_len()
                + self.note.encoded_len()
        }

        fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
            self.id.encode(w)?;
            encode_bounded(&self.name, 16, w)?;
            self.data.encode(w)?;
            encode_bounded(&self.flags, 8, w)?;
            self.tags.encode(w)?;
            self.note.encode(w)
        }
    }

    impl<'a> Decode<'a> for MsgView<'a> {
        const MIN_ENCODED_LEN: usize = 8 + 4 + 4 + 4 + 4 + 1;

        fn decode(r: &mut Reader<'a>) -> Result<Self, WireError> {
            Ok(Self {
                id: r.decode()?,
                name: decode_bounded(r, 16)?,
                data: r.decode()?,
                flags: decode_bounded(r, 8)?,
                tags: r.decode()?,
                note: r.decode()?,
            })
        }
    }

    /// `enum Shape { Empty, Circle(u32) = 5, Label(string) }`.
    #[derive(Debug, Clone, PartialEq)]
    enum Shape {
        Empty,
        Circle(u32),
        Label(String),
    }

    impl Encode for Shape {
        fn encoded_len(&self) -> usize {
            4 + match self {
                Shape::Empty => 0,
                Shape::Circle(r) => r.encoded_len(),
                Shape::Label(s) => s.encoded_len(),
            }
        }

        fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
            match self {
                Shape::Empty => w.put_u32(0),
                Shape::Circle(r) => {
                    w.put_u32(5)?;
                    r.encode(w)
                }
                Shape::Label(s) => {
                    w.put_u32(6)?;
                    s.encode(w)
                }
            }
        }
    }

    impl<'a> Decode<'a> for Shape {
        const MIN_ENCODED_LEN: usize = 4;

        fn decode(r: &mut Reader<'a>) -> Result<Self, WireError> {
            match r.u32()? {
                0 => Ok(Shape::Empty),
                5 => r.decode().map(Shape::Circle),
                6 => r.decode().map(Shape::Label),
                other => Err(WireError::UnknownDiscriminant(other)),
            }
        }
    }

    /// A recursive type: `struct Node { value: u8, next: option<Node> }`.
    #[derive(Debug, Clone, PartialEq)]
    struct Node {
        value: u8,
        next: Option<Box<Node>>,
    }

    impl Encode for Node {
        fn encoded_len(&self) -> usize {
            self.value.encoded_len() + self.next.encoded_len()
        }

        fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
            self.value.encode(w)?;
            self.next.encode(w)
        }
    }

    impl<'a> Decode<'a> for Node {
        const MIN_ENCODED_LEN: usize = 2;

        fn decode(r: &mut Reader<'a>) -> Result<Self, WireError> {
            Ok(Node {
                value: r.decode()?,
                next: r.decode()?,
            })
        }
    }

    /// Recursive through a vec: `struct Tree { kids: vec<Tree> }`.
    #[derive(Debug, Clone, PartialEq)]
    struct Tree {
        kids: Vec<Tree>,
    }

    impl Encode for Tree {
        fn encoded_len(&self) -> usize {
            self.kids.encoded_len()
        }

        fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
            self.kids.encode(w)
        }
    }

    impl<'a> Decode<'a> for Tree {
        const MIN_ENCODED_LEN: usize = 4;

        fn decode(r: &mut Reader<'a>) -> Result<Self, WireError> {
            Ok(Tree { kids: r.decode()? })
        }
    }

    fn chain(depth: usize) -> Node {
        let mut node = Node {
            value: 0,
            next: None,
        };
        for i in 1..depth {
            node = Node {
                value: i as u8,
                next: Some(Box::new(node)),
            };
        }
        node
    }

    // Exact bytes ----------------------------------------------------------

    #[test]
    fn scalars_exact_bytes() {
        assert_eq!(encoded(&true), [1]);
        assert_eq!(encoded(&false), [0]);
        assert_eq!(encoded(&0xABu8), [0xAB]);
        assert_eq!(encoded(&-2i8), [0xFE]);
        assert_eq!(encoded(&0x0102u16), [2, 1]);
        assert_eq!(encoded(&-2i16), [0xFE, 0xFF]);
        assert_eq!(encoded(&0x0102_0304u32), [4, 3, 2, 1]);
        assert_eq!(encoded(&-1i32), [0xFF; 4]);
        assert_eq!(encoded(&0x0102_0304_0506_0708u64), [8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(encoded(&i64::MIN), [0, 0, 0, 0, 0, 0, 0, 0x80]);
        assert_eq!(encoded(&1.0f32), [0, 0, 0x80, 0x3F]);
        assert_eq!(encoded(&-2.0f64), [0, 0, 0, 0, 0, 0, 0, 0xC0]);
        assert_eq!(encoded(&()), [0u8; 0]);

        assert_eq!(decode_exact::<u16>(&[2, 1]), Ok(0x0102));
        assert_eq!(decode_exact::<i32>(&[0xFF; 4]), Ok(-1));
        assert_eq!(decode_exact::<f32>(&[0, 0, 0x80, 0x3F]), Ok(1.0));
        assert_eq!(decode_exact::<bool>(&[1]), Ok(true));
        assert_eq!(decode_exact::<()>(&[]), Ok(()));
    }

    #[test]
    fn strings_bytes_exact_bytes() {
        assert_eq!(encoded("hi"), [2, 0, 0, 0, b'h', b'i']);
        assert_eq!(encoded(&String::from("hi")), [2, 0, 0, 0, b'h', b'i']);
        assert_eq!(encoded(""), [0, 0, 0, 0]);
        assert_eq!(encoded(&b"\x01\x02\x03"[..]), [3, 0, 0, 0, 1, 2, 3]);
        assert_eq!(encoded(&vec![9u8]), [1, 0, 0, 0, 9]);

        let bytes = [2, 0, 0, 0, b'h', b'i'];
        let s: &str = decode_exact(&bytes).unwrap();
        assert_eq!(s, "hi");
        assert_eq!(s.as_ptr(), bytes[4..].as_ptr(), "borrowed, not copied");
        let b: &[u8] = decode_exact(&bytes).unwrap();
        assert_eq!(b, b"hi");
        assert_eq!(b.as_ptr(), bytes[4..].as_ptr());
        assert_eq!(decode_exact::<String>(&bytes).unwrap(), "hi");
        assert_eq!(decode_exact::<Vec<u8>>(&bytes).unwrap(), b"hi");
    }

    #[test]
    fn option_result_exact_bytes() {
        assert_eq!(encoded(&Some(5u16)), [1, 5, 0]);
        assert_eq!(encoded(&None::<u16>), [0]);
        assert_eq!(encoded(&Some("a")), [1, 1, 0, 0, 0, b'a']);
        assert_eq!(encoded(&Ok::<u32, u8>(7)), [0, 7, 0, 0, 0]);
        assert_eq!(encoded(&Err::<u32, u8>(3)), [1, 3]);
        assert_eq!(encoded(&Ok::<(), u8>(())), [0]);
        assert_eq!(encoded(&Some(Some(true))), [1, 1, 1]);

        assert_eq!(decode_exact::<Option<u16>>(&[1, 5, 0]), Ok(Some(5)));
        assert_eq!(decode_exact::<Option<u16>>(&[0]), Ok(None));
        assert_eq!(decode_exact::<Result<(), u8>>(&[0]), Ok(Ok(())));
        assert_eq!(decode_exact::<Result<u32, u8>>(&[1, 3]), Ok(Err(3)));
    }

    #[test]
    fn vec_and_array_exact_bytes() {
        assert_eq!(encoded(&vec![1u16, 2]), [2, 0, 0, 0, 1, 0, 2, 0]);
        assert_eq!(encoded(&[1u16, 2][..]), [2, 0, 0, 0, 1, 0, 2, 0]);
        assert_eq!(encoded(&Vec::<u64>::new()), [0, 0, 0, 0]);
        assert_eq!(
            encoded(&vec!["a", "bc"]),
            [2, 0, 0, 0, 1, 0, 0, 0, b'a', 2, 0, 0, 0, b'b', b'c']
        );
        assert_eq!(encoded(&vec![true, false]), [2, 0, 0, 0, 1, 0]);
        // Arrays carry no count.
        assert_eq!(encoded(&[1u16, 2]), [1, 0, 2, 0]);
        assert_eq!(encoded(&[Some(1u8), None]), [1, 1, 0]);
        assert_eq!(encoded(&[0u32; 0]), [0u8; 0]);

        let bytes = [3, 0, 0, 0, 1, 0, 0xFF, 0xFF, 3, 0];
        let view: VecView<'_, i16> = decode_exact(&bytes).unwrap();
        assert_eq!(view.len(), 3);
        assert_eq!(view.get(1), Some(-1));
        assert_eq!(view.get(3), None);
        assert_eq!(view.get(usize::MAX), None);
        assert_eq!(view.to_vec(), [1, -1, 3]);
        assert_eq!(view.iter().rev().collect::<Vec<_>>(), [3, -1, 1]);
        assert_eq!(view.as_bytes().as_ptr(), bytes[4..].as_ptr());
        assert_eq!(encoded(&view), bytes);
        assert_eq!(decode_exact::<Vec<i16>>(&bytes).unwrap(), [1, -1, 3]);
        assert_eq!(decode_exact::<[u16; 2]>(&[1, 0, 2, 0]), Ok([1, 2]));
        assert_eq!(decode_exact::<[bool; 2]>(&[1, 0]), Ok([true, false]));

        let bytes = [2, 0, 0, 0, 1, 0, 0, 0, b'a', 2, 0, 0, 0, b'b', b'c', 7];
        let mut r = Reader::new(&bytes);
        let seq: SeqView<'_, &str> = r.decode().unwrap();
        assert_eq!(r.u8(), Ok(7), "the view ends where the sequence ends");
        r.finish().unwrap();
        assert_eq!(seq.len(), 2);
        assert_eq!(seq.to_vec().unwrap(), ["a", "bc"]);
        assert_eq!(encoded(&seq), bytes[..15]);
    }

    #[test]
    fn array_view() {
        let bytes = encoded(&[1u32, 2, 3]);
        let view: ArrayView<'_, u32, 3> = decode_exact(&bytes).unwrap();
        assert_eq!((view.len(), view.get(2)), (3, Some(3)));
        assert_eq!(view.to_array(), [1, 2, 3]);
        assert_eq!(encoded(&view), bytes);
        assert_eq!(
            decode_exact::<ArrayView<'_, u32, 4>>(&bytes).map(|v| v.len()),
            Err(WireError::CountTooLarge {
                count: 4,
                min_element_len: 4,
                available: 12
            })
        );
        // Far too big for the stack as an array, free as a view.
        let big = vec![7u8; 1 << 24];
        let view: ArrayView<'_, u8, { 1 << 24 }> = decode_exact(&big).unwrap();
        assert_eq!(view.as_bytes().as_ptr(), big.as_ptr());
    }

    #[test]
    fn views_are_unaligned() {
        // A u64 view starting at an odd address reads correctly.
        let mut bytes = vec![0u8];
        bytes.extend(encoded(&vec![u64::MAX - 1, 42]));
        let mut r = Reader::new(&bytes);
        r.u8().unwrap();
        let view: VecView<'_, u64> = r.decode().unwrap();
        assert_eq!(view.to_vec(), [u64::MAX - 1, 42]);
    }

    #[test]
    fn generated_style_struct_and_enum() {
        let msg = Msg {
            id: 1,
            name: "n".into(),
            data: vec![1, 2],
            flags: vec![3],
            tags: vec!["x".into()],
            note: None,
        };
        let bytes = encoded(&msg);
        assert_eq!(
            bytes,
            [
                1, 0, 0, 0, 0, 0, 0, 0, // id
                1, 0, 0, 0, b'n', // name
                2, 0, 0, 0, 1, 2, // data
                1, 0, 0, 0, 3, 0, // flags
                1, 0, 0, 0, 1, 0, 0, 0, b'x', // tags
                0,    // note
            ]
        );
        let view: MsgView<'_> = decode_exact(&bytes).unwrap();
        assert_eq!((view.id, view.name, view.data), (1, "n", &[1u8, 2][..]));
        assert_eq!(view.flags.to_vec(), [3]);
        assert_eq!(view.tags.to_vec().unwrap(), ["x"]);
        assert_eq!(view.note, None);

        assert_eq!(encoded(&Shape::Empty), [0, 0, 0, 0]);
        assert_eq!(encoded(&Shape::Circle(9)), [5, 0, 0, 0, 9, 0, 0, 0]);
        assert_eq!(
            decode_exact::<Shape>(&[5, 0, 0, 0, 9, 0, 0, 0]),
            Ok(Shape::Circle(9))
        );
        assert_eq!(
            decode_exact::<Shape>(&[1, 0, 0, 0]),
            Err(WireError::UnknownDiscriminant(1))
        );
    }

    // Errors ---------------------------------------------------------------

    #[test]
    fn decode_errors() {
        assert_eq!(decode_exact::<bool>(&[2]), Err(WireError::InvalidBool(2)));
        assert_eq!(
            decode_exact::<[bool; 2]>(&[0, 2]),
            Err(WireError::InvalidBool(2))
        );
        assert_eq!(
            decode_exact::<Option<u8>>(&[2, 0]),
            Err(WireError::InvalidTag(2))
        );
        assert_eq!(
            decode_exact::<Result<u8, u8>>(&[9, 0]),
            Err(WireError::InvalidTag(9))
        );
        assert_eq!(
            decode_exact::<&str>(&[2, 0, 0, 0, b'a', 0xFF]),
            Err(WireError::InvalidUtf8 { valid_up_to: 1 })
        );
        assert_eq!(
            decode_exact::<u32>(&[1, 2]),
            Err(WireError::Truncated {
                needed: 4,
                available: 2
            })
        );
        assert_eq!(
            decode_exact::<&[u8]>(&[5, 0, 0, 0, 1]),
            Err(WireError::Truncated {
                needed: 5,
                available: 1
            })
        );
        assert_eq!(
            decode_exact::<u8>(&[1, 2, 3]),
            Err(WireError::TrailingBytes { count: 2 })
        );
        assert_eq!(
            decode_exact::<Vec<u32>>(&[2, 0, 0, 0, 1, 0, 0, 0]),
            Err(WireError::CountTooLarge {
                count: 2,
                min_element_len: 4,
                available: 4
            })
        );
        let msg = WireError::TooLong { len: 300, max: 256 }.to_string();
        assert!(msg.contains("300") && msg.contains("256"), "{msg}");
    }

    #[test]
    fn hostile_counts_fail_fast() {
        let hostile = [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0];
        let too_large = |e: WireError| matches!(e, WireError::CountTooLarge { count, .. } if count == u32::MAX as usize);
        assert!(too_large(decode_exact::<Vec<u64>>(&hostile).unwrap_err()));
        assert!(too_large(decode_exact::<Vec<u8>>(&hostile).unwrap_err()));
        assert!(too_large(
            decode_exact::<Vec<String>>(&hostile).unwrap_err()
        ));
        assert!(too_large(
            decode_exact::<Vec<Vec<u8>>>(&hostile).unwrap_err()
        ));
        assert!(too_large(decode_exact::<Vec<()>>(&hostile).unwrap_err()));
        assert!(too_large(
            decode_exact::<VecView<'_, u32>>(&hostile).unwrap_err()
        ));
        assert!(too_large(
            decode_exact::<SeqView<'_, ()>>(&hostile).unwrap_err()
        ));
        assert!(too_large(
            decode_exact::<SeqView<'_, Shape>>(&hostile).unwrap_err()
        ));
        // A hostile string length is simply truncated: nothing is allocated.
        assert!(matches!(
            decode_exact::<String>(&hostile),
            Err(WireError::Truncated { .. })
        ));
        // Zero-sized elements: at most one per remaining byte.
        assert_eq!(
            decode_exact::<Vec<()>>(&[4, 0, 0, 0, 0, 0, 0, 0]).map(|v| v.len()),
            Err(WireError::TrailingBytes { count: 4 })
        );
        assert_eq!(
            decode_exact::<Vec<()>>(&[2, 0, 0, 0, 9, 9]).map(|v| v.len()),
            Err(WireError::TrailingBytes { count: 2 })
        );
        // Arrays of zero-byte values need no bytes at all.
        assert_eq!(decode_exact::<[(); 3]>(&[]), Ok([(); 3]));
        // ...but a vec of them is counted at one byte each (the documented
        // price of never looping on a hostile count).
        assert!(matches!(
            decode_exact::<SeqView<'_, [(); 3]>>(&[1, 0, 0, 0]),
            Err(WireError::CountTooLarge { count: 1, .. })
        ));
        // A huge array type checks before allocating too.
        assert!(matches!(
            decode_exact::<[String; 4096]>(&[0; 16]),
            Err(WireError::CountTooLarge { .. })
        ));
    }

    #[test]
    fn nesting_is_limited() {
        // `chain(n)` holds n - 1 boxes: MAX_DEPTH of them decode, one more does not.
        let ok = chain(MAX_DEPTH as usize + 1);
        let bytes = encoded(&ok);
        assert_eq!(decode_exact::<Node>(&bytes), Ok(ok));
        let deep = encoded(&chain(MAX_DEPTH as usize + 2));
        assert_eq!(
            decode_exact::<Node>(&deep),
            Err(WireError::TooDeep { max: MAX_DEPTH })
        );
        // Hostile: a megabyte of "some" tags, far deeper than any stack.
        let mut hostile = Vec::new();
        for _ in 0..(1 << 19) {
            hostile.extend([7, 1]);
        }
        assert_eq!(
            decode_exact::<Node>(&hostile),
            Err(WireError::TooDeep { max: MAX_DEPTH })
        );
        // Through vecs too: `struct Tree { kids: vec<Tree> }`.
        let mut nested = Vec::new();
        for _ in 0..=MAX_DEPTH {
            nested.extend([1, 0, 0, 0]);
        }
        nested.extend([0, 0, 0, 0]);
        assert_eq!(
            decode_exact::<Tree>(&nested),
            Err(WireError::TooDeep { max: MAX_DEPTH })
        );
        assert_eq!(
            decode_exact::<SeqView<'_, Tree>>(&nested).map(|v| v.len()),
            Err(WireError::TooDeep { max: MAX_DEPTH })
        );
        let ok = &nested[8..];
        let tree = decode_exact::<Tree>(ok).unwrap();
        assert_eq!(encoded(&tree), ok);
    }

    #[test]
    fn bounds() {
        let mut buf = [0u8; 64];
        let mut w = Writer::new(&mut buf);
        assert_eq!(encode_bounded("abc", 3, &mut w), Ok(()));
        assert_eq!(
            encode_bounded("abcd", 3, &mut w),
            Err(WireError::TooLong { len: 4, max: 3 })
        );
        assert_eq!(
            encode_bounded(&vec![1u64, 2], 1, &mut w),
            Err(WireError::TooLong { len: 2, max: 1 })
        );
        assert_eq!(w.position(), 7, "a refused value writes nothing");

        let bytes = encoded("abcd");
        let mut r = Reader::new(&bytes);
        assert_eq!(
            decode_bounded::<&str>(&mut r, 3),
            Err(WireError::TooLong { len: 4, max: 3 })
        );
        assert_eq!(decode_bounded::<&str>(&mut r, 4), Ok("abcd"));
        let bytes = encoded(&vec![1u16, 2, 3]);
        assert_eq!(
            decode_bounded::<VecView<'_, u16>>(&mut Reader::new(&bytes), 2).map(|v| v.len()),
            Err(WireError::TooLong { len: 3, max: 2 })
        );
        assert_eq!(
            decode_bounded::<Vec<u16>>(&mut Reader::new(&bytes), 3),
            Ok(vec![1, 2, 3])
        );
        // The bound is checked before the (hostile) body is looked at.
        assert_eq!(
            decode_bounded::<Vec<u64>>(&mut Reader::new(&[0xFF; 4]), 1024),
            Err(WireError::TooLong {
                len: u32::MAX as usize,
                max: 1024
            })
        );
    }

    #[test]
    fn bounded_wrapper_nests() {
        // `vec<string<2>, 3>`
        type Tags<'a> = Bounded<Vec<Bounded<&'a str, 2>>, 3>;
        let ok = encoded(&Bounded::<_, 3>(vec![Bounded::<_, 2>("ab"), Bounded("c")]));
        assert_eq!(ok, [2, 0, 0, 0, 2, 0, 0, 0, b'a', b'b', 1, 0, 0, 0, b'c']);
        let tags: Tags<'_> = decode_exact(&ok).unwrap();
        assert_eq!(tags.iter().map(|t| t.0).collect::<Vec<_>>(), ["ab", "c"]);

        let long_item = encoded(&vec!["abc"]);
        assert_eq!(
            decode_exact::<Tags<'_>>(&long_item),
            Err(WireError::TooLong { len: 3, max: 2 })
        );
        assert_eq!(
            decode_exact::<SeqView<'_, Bounded<&str, 2>>>(&long_item).map(|v| v.len()),
            Err(WireError::TooLong { len: 3, max: 2 }),
            "a view validates bounds up front too"
        );
        let too_many = encoded(&vec!["a", "b", "c", "d"]);
        assert_eq!(
            decode_exact::<Tags<'_>>(&too_many),
            Err(WireError::TooLong { len: 4, max: 3 })
        );
        assert_eq!(
            encode_to_vec(&Bounded::<_, 1>(vec![Bounded::<_, 2>("abc")])),
            Err(WireError::TooLong { len: 3, max: 2 })
        );
        assert_eq!(
            Bounded::<_, 1>::new("ab"),
            Err(WireError::TooLong { len: 2, max: 1 })
        );
        assert_eq!(
            Bounded::<_, 2>::new("ab").map(Bounded::into_inner),
            Ok("ab")
        );
    }

    #[test]
    fn writer_in_place_bytes() {
        let mut buf = [0u8; 10];
        let mut w = Writer::new(&mut buf);
        let filled = w.put_bytes_with(3, |out| {
            out.copy_from_slice(b"xyz");
            out.len()
        });
        assert_eq!(filled, Ok(3));
        assert_eq!(
            w.put_bytes_with(4, |_| ()),
            Err(WireError::BufferTooSmall {
                needed: 8,
                available: 3
            })
        );
        assert_eq!(w.position(), 7);
        assert_eq!(&buf[..7], [3, 0, 0, 0, b'x', b'y', b'z']);
    }

    // Properties -----------------------------------------------------------

    macro_rules! round_trip_owned {
        ($($name:ident: $t:ty = $strategy:expr;)*) => {$(
            proptest! {
                #[test]
                fn $name(value in $strategy) {
                    let value: $t = value;
                    let bytes = encoded(&value);
                    prop_assert_eq!(decode_exact::<$t>(&bytes), Ok(value));
                }
            }
        )*};
    }

    round_trip_owned! {
        rt_bool: bool = any::<bool>();
        rt_u8: u8 = any::<u8>();
        rt_i8: i8 = any::<i8>();
        rt_u16: u16 = any::<u16>();
        rt_i16: i16 = any::<i16>();
        rt_u32: u32 = any::<u32>();
        rt_i32: i32 = any::<i32>();
        rt_u64: u64 = any::<u64>();
        rt_i64: i64 = any::<i64>();
        rt_string: String = any::<String>();
        rt_bytes: Vec<u8> = proptest::collection::vec(any::<u8>(), 0..300);
        rt_vec_u32: Vec<u32> = proptest::collection::vec(any::<u32>(), 0..100);
        rt_vec_bool: Vec<bool> = proptest::collection::vec(any::<bool>(), 0..100);
        rt_array_u16: [u16; 4] = any::<[u16; 4]>();
        rt_array_bool: [bool; 5] = any::<[bool; 5]>();
        rt_array_string: [String; 3] = any::<[String; 3]>();
        rt_option_u64: Option<u64> = any::<Option<u64>>();
        rt_result: Result<u32, String> = any::<Result<u32, String>>();
        rt_result_unit: Result<(), i16> = any::<Result<(), i16>>();
        rt_option_vec_string: Option<Vec<String>> =
            proptest::option::of(proptest::collection::vec(any::<String>(), 0..8));
        rt_nested: Vec<Option<Result<u64, Vec<String>>>> = proptest::collection::vec(
            proptest::option::of(proptest::result::maybe_ok(
                any::<u64>(),
                proptest::collection::vec(any::<String>(), 0..4),
            )),
            0..8,
        );
        rt_array_of_vecs: [Vec<i64>; 2] = any::<[Vec<i64>; 2]>();
        rt_box: Box<Option<u8>> = any::<Option<u8>>().prop_map(Box::new);
        rt_shape: Shape = prop_oneof![
            Just(Shape::Empty),
            any::<u32>().prop_map(Shape::Circle),
            any::<String>().prop_map(Shape::Label),
        ];
        rt_shapes: Vec<Shape> = proptest::collection::vec(
            prop_oneof![Just(Shape::Empty), any::<u32>().prop_map(Shape::Circle)],
            0..10,
        );
        rt_node: Node = (1usize..50).prop_map(chain);
    }

    proptest! {
        #[test]
        fn rt_floats(a in any::<f32>(), b in any::<f64>(), v in proptest::collection::vec(any::<f64>(), 0..20)) {
            prop_assert_eq!(decode_exact::<f32>(&encoded(&a))?.to_bits(), a.to_bits());
            prop_assert_eq!(decode_exact::<f64>(&encoded(&b))?.to_bits(), b.to_bits());
            let bytes = encoded(&v);
            let view: VecView<'_, f64> = decode_exact(&bytes)?;
            let bits = |x: &[f64]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&view.to_vec()), bits(&v));
            prop_assert_eq!(bits(&decode_exact::<Vec<f64>>(&bytes)?), bits(&v));
        }

        #[test]
        fn rt_borrowed(s in any::<String>(), b in proptest::collection::vec(any::<u8>(), 0..100),
                       o in any::<Option<String>>()) {
            let bytes = encoded(s.as_str());
            prop_assert_eq!(decode_exact::<&str>(&bytes)?, s.as_str());
            let bytes = encoded(b.as_slice());
            prop_assert_eq!(decode_exact::<&[u8]>(&bytes)?, b.as_slice());
            let view: VecView<'_, u8> = decode_exact(&bytes)?;
            prop_assert_eq!(view.as_bytes(), b.as_slice());
            let bytes = encoded(&o);
            prop_assert_eq!(decode_exact::<Option<&str>>(&bytes)?, o.as_deref());
            let r: Result<&str, u8> = o.as_deref().ok_or(3);
            let bytes = encoded(&r);
            prop_assert_eq!(decode_exact::<Result<&str, u8>>(&bytes)?, r);
        }

        #[test]
        fn rt_views(v in proptest::collection::vec(any::<i32>(), 0..50),
                    s in proptest::collection::vec(any::<String>(), 0..10),
                    n in proptest::collection::vec(proptest::collection::vec(any::<u16>(), 0..5), 0..5)) {
            let bytes = encoded(&v);
            let view: VecView<'_, i32> = decode_exact(&bytes)?;
            prop_assert_eq!(view.len(), v.len());
            prop_assert_eq!(view.iter().collect::<Vec<_>>(), v.clone());
            for (i, x) in v.iter().enumerate() {
                prop_assert_eq!(view.get(i), Some(*x));
            }
            prop_assert_eq!(encoded(&view), bytes);

            let bytes = encoded(&s);
            let seq: SeqView<'_, &str> = decode_exact(&bytes)?;
            prop_assert_eq!(seq.len(), s.len());
            prop_assert_eq!(seq.to_vec()?, s.iter().map(String::as_str).collect::<Vec<_>>());
            prop_assert_eq!(decode_exact::<Vec<&str>>(&bytes)?, s.iter().map(String::as_str).collect::<Vec<_>>());
            prop_assert_eq!(encoded(&seq), bytes);

            let bytes = encoded(&n);
            let seq: SeqView<'_, VecView<'_, u16>> = decode_exact(&bytes)?;
            let back: Vec<Vec<u16>> = seq.iter().map(|v| v.map(|v| v.to_vec())).collect::<Result<_, _>>()?;
            prop_assert_eq!(back, n);
        }

        #[test]
        fn rt_generated_struct(id in any::<u64>(), name in "[a-z]{0,16}",
                               data in proptest::collection::vec(any::<u8>(), 0..64),
                               flags in proptest::collection::vec(any::<u16>(), 0..=8),
                               tags in proptest::collection::vec(any::<String>(), 0..4),
                               note in any::<Option<String>>()) {
            let msg = Msg { id, name, data, flags, tags, note };
            let bytes = encoded(&msg);
            let view: MsgView<'_> = decode_exact(&bytes)?;
            prop_assert_eq!(view.id, msg.id);
            prop_assert_eq!(view.name, msg.name.as_str());
            prop_assert_eq!(view.data, msg.data.as_slice());
            prop_assert_eq!(view.flags.to_vec(), msg.flags.clone());
            prop_assert_eq!(view.tags.to_vec()?, msg.tags.iter().map(String::as_str).collect::<Vec<_>>());
            prop_assert_eq!(view.note, msg.note.as_deref());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_exact::<bool>(&bytes);
            let _ = decode_exact::<u64>(&bytes);
            let _ = decode_exact::<&str>(&bytes);
            let _ = decode_exact::<String>(&bytes);
            let _ = decode_exact::<&[u8]>(&bytes);
            let _ = decode_exact::<Vec<u32>>(&bytes);
            let _ = decode_exact::<Vec<()>>(&bytes);
            let _ = decode_exact::<[bool; 3]>(&bytes);
            let _ = decode_exact::<[&str; 2]>(&bytes);
            let _ = decode_exact::<Option<Vec<String>>>(&bytes);
            let _ = decode_exact::<Result<u8, Vec<Option<&str>>>>(&bytes);
            let _ = decode_exact::<Shape>(&bytes);
            let _ = decode_exact::<Node>(&bytes);
            let _ = decode_exact::<MsgView<'_>>(&bytes);
            if let Ok(view) = decode_exact::<VecView<'_, u64>>(&bytes) {
                let _ = view.to_vec();
            }
            if let Ok(seq) = decode_exact::<SeqView<'_, Option<&str>>>(&bytes) {
                for item in &seq {
                    prop_assert!(item.is_ok(), "a validated view decodes again");
                }
            }
            // A prefix reader never panics either, whatever it reads.
            let mut r = Reader::new(&bytes);
            while r.remaining() > 0 {
                if r.decode::<Option<&str>>().is_err() {
                    break;
                }
            }
        }

        #[test]
        fn corrupted_messages_never_panic(
            tags in proptest::collection::vec(any::<String>(), 0..4),
            flags in proptest::collection::vec(any::<u16>(), 0..=8),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        ) {
            // Valid messages with a few bytes rewritten by a hostile peer:
            // counts, lengths, tags and UTF-8 all land on garbage.
            let msg = Msg { id: 1, name: "name".into(), data: vec![1; 5], flags, tags, note: Some("n".into()) };
            let mut bytes = encoded(&msg);
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            if let Ok(view) = decode_exact::<MsgView<'_>>(&bytes) {
                prop_assert!(view.name.len() <= 16 && view.flags.len() <= 8);
                for tag in &view.tags {
                    prop_assert!(tag.is_ok());
                }
            }
            let _ = decode_exact::<Vec<Option<Result<u64, Vec<String>>>>>(&bytes);
            let _ = decode_exact::<SeqView<'_, SeqView<'_, Shape>>>(&bytes);
            let _ = decode_exact::<Tree>(&bytes);
        }

        #[test]
        fn decode_ok_means_reencode_identical(bytes in proptest::collection::vec(0u8..3, 0..64)) {
            // Any accepted input is canonical: re-encoding gives the same bytes.
            if let Ok(v) = decode_exact::<Vec<Option<bool>>>(&bytes) {
                prop_assert_eq!(encoded(&v), bytes.clone());
            }
            if let Ok(v) = decode_exact::<Option<Result<bool, u8>>>(&bytes) {
                prop_assert_eq!(encoded(&v), bytes);
            }
        }
    }
}
