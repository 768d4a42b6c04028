//! Per-buffer compression: pluggable through [`Compressor`]. The handshake picks one
//! algorithm both sides offer (the client's preference first); each frame is compressed on
//! its own, and sent as it is when compression does not make it smaller.

use std::fmt::Debug;

/// A compression algorithm for single buffers.
pub trait Compressor: Send + Sync + Debug {
    /// The id both sides name it by in the handshake (never 0, which means "none").
    fn id(&self) -> u8;
    /// Appends `input`, compressed, to `out`; `false` (and anything appended is ignored)
    /// when it cannot compress this buffer.
    fn compress(&self, input: &[u8], out: &mut Vec<u8>) -> bool;
    /// Appends the decompression of `input` to `out`, which must come to exactly `raw_len`
    /// bytes; an error for input that is not valid (the peer's bytes are untrusted).
    fn decompress(&self, input: &[u8], raw_len: usize, out: &mut Vec<u8>) -> Result<(), String>;
}
