//! Per-buffer compression: pluggable through [`Compressor`]. The handshake picks one
//! algorithm both sides offer (the client's preference first); each frame is compressed on
//! its own, and sent as it is when compression does not make it smaller.
//!
//! Two implementations: [`Lz4`] (id 1) and [`Snappy`] (id 2). Both decoders treat their
//! input as hostile: a wrong length or corrupt data is an error, never a panic.

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

/// Appends at most `max` bytes that `f` writes into `out`; `false` (nothing appended) when
/// it fails.
fn append_with<E>(
    out: &mut Vec<u8>,
    max: usize,
    f: impl FnOnce(&mut [u8]) -> Result<usize, E>,
) -> bool {
    let at = out.len();
    out.resize(at + max, 0);
    match f(&mut out[at..]) {
        Ok(n) => {
            out.truncate(at + n.min(max));
            true
        }
        Err(_) => {
            out.truncate(at);
            false
        }
    }
}

/// Appends exactly `raw_len` bytes that `f` decompresses into `out`, or nothing and an
/// error.
fn decompress_exact<E: std::fmt::Display>(
    out: &mut Vec<u8>,
    raw_len: usize,
    f: impl FnOnce(&mut [u8]) -> Result<usize, E>,
) -> Result<(), String> {
    let at = out.len();
    out.resize(at + raw_len, 0);
    let r = match f(&mut out[at..]) {
        Ok(n) if n == raw_len => return Ok(()),
        Ok(n) => format!("{n} bytes where {raw_len} were announced"),
        Err(e) => e.to_string(),
    };
    out.truncate(at);
    Err(r)
}

/// LZ4 (block format, `lz4_flex`: pure safe Rust). Fast; a fair ratio.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lz4;

impl Compressor for Lz4 {
    fn id(&self) -> u8 {
        1
    }

    fn compress(&self, input: &[u8], out: &mut Vec<u8>) -> bool {
        let max = lz4_flex::block::get_maximum_output_size(input.len());
        append_with(out, max, |buf| lz4_flex::block::compress_into(input, buf))
    }

    fn decompress(&self, input: &[u8], raw_len: usize, out: &mut Vec<u8>) -> Result<(), String> {
        decompress_exact(out, raw_len, |buf| {
            lz4_flex::block::decompress_into(input, buf)
        })
    }
}

/// Snappy (raw format, `snap`), the seed's choice.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snappy;

impl Compressor for Snappy {
    fn id(&self) -> u8 {
        2
    }

    fn compress(&self, input: &[u8], out: &mut Vec<u8>) -> bool {
        let max = snap::raw::max_compress_len(input.len());
        append_with(out, max, |buf| {
            snap::raw::Encoder::new().compress(input, buf)
        })
    }

    fn decompress(&self, input: &[u8], raw_len: usize, out: &mut Vec<u8>) -> Result<(), String> {
        // The length the input claims is checked before anything is allocated for it.
        let claimed = snap::raw::decompress_len(input).map_err(|e| e.to_string())?;
        if claimed != raw_len {
            return Err(format!("{claimed} bytes where {raw_len} were announced"));
        }
        decompress_exact(out, raw_len, |buf| {
            snap::raw::Decoder::new().decompress(input, buf)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compressors() -> Vec<Box<dyn Compressor>> {
        vec![Box::new(Lz4), Box::new(Snappy)]
    }

    #[test]
    fn buffers_round_trip() {
        let text: Vec<u8> = b"the same words again and again, "
            .iter()
            .copied()
            .cycle()
            .take(4000)
            .collect();
        for c in compressors() {
            let mut packed = vec![9u8; 3];
            assert!(c.compress(&text, &mut packed), "{c:?}");
            assert_eq!(&packed[..3], &[9, 9, 9], "appends");
            assert!(packed.len() - 3 < text.len() / 4, "{c:?} shrinks text");
            let mut back = Vec::new();
            c.decompress(&packed[3..], text.len(), &mut back).unwrap();
            assert_eq!(back, text);
        }
    }

    #[test]
    fn hostile_input_is_an_error() {
        let text = vec![7u8; 4000];
        for c in compressors() {
            let mut packed = Vec::new();
            assert!(c.compress(&text, &mut packed));
            let mut back = Vec::new();
            assert!(
                c.decompress(&packed, text.len() + 1, &mut back).is_err(),
                "{c:?} wrong length"
            );
            assert!(back.is_empty());
            let garbage: Vec<u8> = (0..200u32).map(|i| (i * 97) as u8).collect();
            let _ = c.decompress(&garbage, 4000, &mut back);
            for cut in 0..packed.len() {
                let mut out = Vec::new();
                let r = c.decompress(&packed[..cut], text.len(), &mut out);
                assert!(r.is_err() || out == text, "{c:?} cut at {cut}");
            }
        }
    }
}
