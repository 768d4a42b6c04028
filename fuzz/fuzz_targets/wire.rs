//! The value codec over peer bytes: `decode_exact` of owned values, borrowed
//! views, and iteration of a `SeqView` (which decodes again from the bytes).
//! The first byte picks the type so each input exercises one decoder deeply.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shm_channel::wire::{self, SeqView, VecView};

fuzz_target!(|input: &[u8]| {
    let Some((&which, bytes)) = input.split_first() else {
        return;
    };
    match which % 10 {
        0 => {
            let _ = wire::decode_exact::<String>(bytes);
        }
        1 => {
            let _ = wire::decode_exact::<Vec<u64>>(bytes);
        }
        2 => {
            let _ = wire::decode_exact::<Option<Vec<String>>>(bytes);
        }
        3 => {
            if let Ok(v) = wire::decode_exact::<VecView<'_, u32>>(bytes) {
                let n = v.iter().count();
                assert_eq!(n, v.len());
                let _ = v.get(v.len());
                let _ = v.to_vec();
            }
        }
        4 => {
            if let Ok(v) = wire::decode_exact::<VecView<'_, f64>>(bytes) {
                let _ = v.iter().map(|x| x.to_bits()).fold(0u64, u64::wrapping_add);
            }
        }
        5 => {
            if let Ok(seq) = wire::decode_exact::<SeqView<'_, String>>(bytes) {
                let items: Vec<_> = seq.iter().collect();
                assert_eq!(items.len(), seq.len());
                assert!(items.iter().all(|i| i.is_ok()), "a decoded SeqView iterates");
            }
        }
        6 => {
            if let Ok(seq) = wire::decode_exact::<SeqView<'_, SeqView<'_, u16>>>(bytes) {
                for inner in seq.iter().flatten() {
                    let _ = inner.to_vec();
                }
            }
        }
        7 => {
            let _ = wire::decode_exact::<Vec<Option<&str>>>(bytes);
        }
        8 => {
            let _ = wire::decode_exact::<Result<Vec<&[u8]>, String>>(bytes);
        }
        _ => {
            let _ = wire::decode_exact::<Vec<Vec<Vec<Box<Option<u64>>>>>>(bytes);
        }
    }
});
