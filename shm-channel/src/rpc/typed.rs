//! What generated stubs call between the RPC core and the value codec: each parameter is
//! one object (object id = parameter index), encoded in place in the ring; a reply is one
//! object (id 0); an error reply carries the method's error in object
//! [`ERROR_OBJECT`](super::ERROR_OBJECT).
//!
//! Every failure here is an error value, never a panic: a malformed argument fails the call
//! with a fault for its client, a malformed reply is [`CallError::Protocol`].

use thiserror::Error;

use super::ServeOptions;
use super::client::{CallError, RawError};
use super::server::{EventHub, HandlerError, HandlerResult, RequestView, Responder, ServeEnd};
use super::transport::{IncomingMessage, ObjectSink, TransportError};
use crate::event_loop::{EventLoop, EventLoopError};
use crate::service::{BindError, Service, ServiceConfig};
use crate::wire::{self, Decode, Encode, LengthPrefixed, Reader};

/// The data length of object `value`: what to announce before [`encode_arg`] fills it.
pub fn arg_len<T: Encode + ?Sized>(value: &T) -> u64 {
    value.encoded_len() as u64
}

/// The data length of a `bytes` object of `len` bytes (its `u32` length prefix included),
/// for [`fill_bytes_arg`].
pub fn bytes_arg_len(len: usize) -> u64 {
    (len as u64).saturating_add(4)
}

fn encode_err(what: &str, e: wire::WireError) -> TransportError {
    TransportError::Encode(format!("{what}: {e}"))
}

/// Writes `value` as object `id`, in place. `bound` is the IDL bound of a `string<N>`,
/// `bytes<N>` or `vec<T, N>` (elements), checked before anything is written.
pub fn encode_arg<T: Encode + ?Sized>(
    sink: &mut dyn ObjectSink,
    id: u64,
    value: &T,
) -> Result<(), TransportError> {
    let buf = sink.object(id, arg_len(value))?;
    wire::encode_to(value, buf).map_err(|e| encode_err(&format!("object {id}"), e))?;
    Ok(())
}

/// [`encode_arg`] for a bounded `string<N>`, `bytes<N>` or `vec<T, N>`: a value over the
/// bound fails with [`TransportError::Encode`] and nothing is sent.
pub fn encode_arg_bounded<T: Encode + LengthPrefixed + ?Sized>(
    sink: &mut dyn ObjectSink,
    id: u64,
    value: &T,
    bound: usize,
) -> Result<(), TransportError> {
    check_arg_bound(id, value, bound)?;
    encode_arg(sink, id, value)
}

/// Checks, before anything is reserved, that argument `id` (a `string<N>`, `bytes<N>` or
/// `vec<T, N>`) respects its bound.
pub fn check_arg_bound<T: LengthPrefixed + ?Sized>(
    id: u64,
    value: &T,
    bound: usize,
) -> Result<(), TransportError> {
    wire::check_bound(value.prefix_len(), bound).map_err(|e| encode_err(&format!("object {id}"), e))
}

/// Checks, before anything is reserved, that a `bytes` argument of `len` bytes filled in
/// place respects its bound and the `u32` length prefix.
pub fn check_bytes_len(len: usize, bound: Option<usize>) -> Result<(), TransportError> {
    let max = bound.unwrap_or(u32::MAX as usize).min(u32::MAX as usize);
    wire::check_bound(len, max).map_err(|e| encode_err("bytes argument", e))
}

/// Writes a `bytes` object `id` of `len` bytes whose content `fill` writes in place (zero
/// copy: over shm, `fill` writes straight into the ring).
pub fn fill_bytes_arg(
    sink: &mut dyn ObjectSink,
    id: u64,
    len: usize,
    bound: Option<usize>,
    fill: impl FnOnce(&mut [u8]),
) -> Result<(), TransportError> {
    check_bytes_len(len, bound)?;
    let buf = sink.object(id, bytes_arg_len(len))?;
    let mut w = wire::Writer::new(buf);
    w.put_bytes_with(len, fill)
        .map_err(|e| encode_err(&format!("object {id}"), e))
}

/// Decodes the value of a reply (object 0; a reply with no object reads as empty, which only
/// `()` accepts).
pub fn decode_reply<'m, T: Decode<'m>>(msg: &'m dyn IncomingMessage) -> Result<T, String> {
    let bytes = msg.object(0).unwrap_or_default();
    wire::decode_exact(bytes).map_err(|e| format!("reply: {e}"))
}

/// [`decode_reply`] of a bounded `string<N>`, `bytes<N>` or `vec<T, N>`.
pub fn decode_reply_bounded<'m, T: Decode<'m> + LengthPrefixed>(
    msg: &'m dyn IncomingMessage,
    bound: usize,
) -> Result<T, String> {
    let bytes = msg.object(0).unwrap_or_default();
    decode_bounded_exact(bytes, bound).map_err(|e| format!("reply: {e}"))
}

fn decode_bounded_exact<'a, T: Decode<'a> + LengthPrefixed>(
    bytes: &'a [u8],
    bound: usize,
) -> Result<T, wire::WireError> {
    let mut r = Reader::new(bytes);
    let value = wire::decode_bounded(&mut r, bound)?;
    r.finish()?;
    Ok(value)
}

/// Decodes the method's error of an error reply (for [`CallError::try_map_remote`]).
pub fn decode_remote<E: for<'a> Decode<'a>>(raw: RawError) -> Result<E, String> {
    wire::decode_exact(&raw.0).map_err(|e| format!("error reply: {e}"))
}

/// A call's result with the method's error decoded: `CallError::Remote(E)`.
pub fn with_remote<T, E: for<'a> Decode<'a>>(
    result: Result<T, CallError>,
) -> Result<T, CallError<E>> {
    result.map_err(|e| e.try_map_remote(decode_remote))
}

/// Decodes field `index` of a received message (an event), for `what` (named in errors).
pub fn decode_field<'m, T: Decode<'m>>(
    msg: &'m dyn IncomingMessage,
    index: u64,
    what: &str,
) -> Result<T, String> {
    let bytes = msg
        .object(index)
        .ok_or_else(|| format!("{what}: object {index} is missing"))?;
    wire::decode_exact(bytes).map_err(|e| format!("{what}: {e}"))
}

/// [`decode_field`] of a bounded `string<N>`, `bytes<N>` or `vec<T, N>`.
pub fn decode_field_bounded<'m, T: Decode<'m> + LengthPrefixed>(
    msg: &'m dyn IncomingMessage,
    index: u64,
    what: &str,
    bound: usize,
) -> Result<T, String> {
    let bytes = msg
        .object(index)
        .ok_or_else(|| format!("{what}: object {index} is missing"))?;
    decode_bounded_exact(bytes, bound).map_err(|e| format!("{what}: {e}"))
}

/// Decodes argument `index` of a request, borrowed from it. A missing or malformed argument
/// fails the call with a fault naming it (`what`: "method `x`, argument `y`").
pub fn decode_arg<'a, T: Decode<'a>>(
    req: &RequestView<'a>,
    index: u64,
    what: &str,
) -> Result<T, HandlerError> {
    decode_field(req.message(), index, what)
        .map_err(|e| HandlerError::Failed(format!("malformed request: {e}")))
}

/// [`decode_arg`] of a bounded `string<N>`, `bytes<N>` or `vec<T, N>`.
pub fn decode_arg_bounded<'a, T: Decode<'a> + LengthPrefixed>(
    req: &RequestView<'a>,
    index: u64,
    what: &str,
    bound: usize,
) -> Result<T, HandlerError> {
    decode_field_bounded(req.message(), index, what, bound)
        .map_err(|e| HandlerError::Failed(format!("malformed request: {e}")))
}

/// Replies with `value` as object 0, encoded in place. A value the codec refuses (over a
/// bound) fails the call with a fault instead.
pub fn reply_value<T: Encode + ?Sized>(resp: Responder<'_>, value: &T) -> HandlerResult {
    resp.reply_with(&[arg_len(value)], |sink| encode_arg(sink, 0, value))
}

/// [`reply_value`] of a bounded `string<N>`, `bytes<N>` or `vec<T, N>`.
pub fn reply_value_bounded<T: Encode + LengthPrefixed + ?Sized>(
    resp: Responder<'_>,
    value: &T,
    bound: usize,
) -> HandlerResult {
    resp.reply_with(&[arg_len(value)], |sink| {
        encode_arg_bounded(sink, 0, value, bound)
    })
}

/// The method's error `e` as the handler's error: an error reply whose object
/// [`ERROR_OBJECT`](super::ERROR_OBJECT) the caller decodes into `CallError::Remote(e)`.
pub fn remote_error<E: Encode + ?Sized>(e: &E) -> HandlerError {
    match wire::encode_to_vec(e) {
        Ok(bytes) => HandlerError::Remote(bytes),
        Err(e) => HandlerError::Failed(format!("the error could not be encoded: {e}")),
    }
}

/// Encodes the fields of an event (or any message) into owned objects `(index, bytes)`, to
/// send the same bytes to one client or many.
pub fn encode_object<T: Encode + ?Sized>(value: &T) -> Result<Vec<u8>, TransportError> {
    wire::encode_to_vec(value).map_err(|e| encode_err("event field", e))
}

/// [`encode_object`] of a bounded field.
pub fn encode_object_bounded<T: Encode + LengthPrefixed + ?Sized>(
    value: &T,
    bound: usize,
) -> Result<Vec<u8>, TransportError> {
    wire::check_bound(value.prefix_len(), bound).map_err(|e| encode_err("event field", e))?;
    encode_object(value)
}

/// Why [`serve`] returned with an error.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The service could not be bound (name taken, invalid, ...).
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The event loop failed.
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
}

/// Binds the service `name` with `config` and serves every client with `handler`
/// ([`serve_service`](super::serve_service)) until `opts.stop` is set; `hub` learns of every
/// client, for events.
pub fn serve<H>(
    name: &str,
    config: ServiceConfig,
    hub: &EventHub,
    handler: H,
    opts: &ServeOptions,
) -> Result<ServeEnd, ServeError>
where
    H: FnMut(&RequestView<'_>, Responder<'_>) -> HandlerResult,
{
    let service = Service::bind(name, config)?;
    let mut event_loop = EventLoop::new(service)?;
    Ok(super::serve_service(&mut event_loop, hub, handler, opts)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::OwnedMessage;
    use shm_layout::Kind;

    fn msg(objects: Vec<(u64, Vec<u8>)>) -> OwnedMessage {
        OwnedMessage {
            message_id: 3,
            kind: Kind::Reply,
            request_id: 1,
            flags: 0,
            objects,
        }
    }

    #[test]
    fn replies_decode_and_refuse_bad_bytes() {
        let m = msg(vec![(0, 7u64.to_le_bytes().to_vec())]);
        assert_eq!(decode_reply::<u64>(&m), Ok(7));
        assert!(decode_reply::<u32>(&m).unwrap_err().contains("reply"));
        assert_eq!(decode_reply::<()>(&msg(vec![])), Ok(()));
        let s = msg(vec![(0, wire::encode_to_vec("hello").unwrap())]);
        assert_eq!(decode_reply_bounded::<&str>(&s, 5), Ok("hello"));
        assert!(decode_reply_bounded::<&str>(&s, 4).is_err());
    }

    #[test]
    fn remote_errors_round_trip() {
        let HandlerError::Remote(bytes) = remote_error(&42u32) else {
            panic!("not a remote error")
        };
        let r: Result<(), CallError<u32>> = with_remote(Err(CallError::Remote(RawError(bytes))));
        assert_eq!(r, Err(CallError::Remote(42)));
        let r: Result<(), CallError<u32>> = with_remote(Err(CallError::Remote(RawError(vec![1]))));
        assert!(matches!(r, Err(CallError::Protocol(_))));
    }

    #[test]
    fn fields_name_what_is_wrong() {
        let m = msg(vec![(0, vec![1, 2])]);
        let e = decode_field::<u64>(&m, 0, "event `tick`, field `n`").unwrap_err();
        assert!(e.contains("tick") && e.contains("`n`"), "{e}");
        let e = decode_field::<u64>(&m, 1, "event `tick`, field `m`").unwrap_err();
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn bytes_arguments_respect_their_bound() {
        assert!(check_bytes_len(16, Some(16)).is_ok());
        assert!(matches!(
            check_bytes_len(17, Some(16)),
            Err(TransportError::Encode(_))
        ));
        assert!(check_bytes_len(u32::MAX as usize + 1, None).is_err());
        assert_eq!(bytes_arg_len(10), 14);
        assert!(encode_object_bounded("abc", 2).is_err());
        assert_eq!(encode_object_bounded("ab", 2).unwrap(), b"\x02\0\0\0ab");
    }
}
