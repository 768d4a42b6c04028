//! The ring facing a hostile writer (quinn `fuzz/fuzz_targets/streams.rs`
//! style): a sequence of operations mixing legitimate sends and receives with
//! arbitrary writes of bytes into the shared memfd. The reader and the writers
//! must only ever return messages or errors: no panic, no hang, no access
//! outside the mapping.
//!
//! While nobody has scribbled on the ring, it must also behave: every message
//! sent arrives once, in order, with the same id, kind and objects.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shm_channel::{Kind, Ring, RingConfig};
use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Maximum ring size: the header page and three pages of records.
const MAX: u64 = 16 * 1024;
/// Operations per input.
const MAX_OPS: usize = 64;
/// Longest object a legitimate send writes (a few exceed a small ring).
const MAX_OBJECT: usize = 6000;

#[derive(Arbitrary, Debug)]
enum Op {
    /// A legitimate send of objects (id, length, fill byte) from one of the
    /// writers (the creator's mapping or the opener's).
    Send {
        writer: bool,
        message_id: u64,
        raw_kind: bool,
        objects: Vec<(u8, u16, u8)>,
    },
    /// Reserve room and drop the slot unsent (the reader skips it).
    Abandon { writer: bool, size: u16 },
    /// The reader takes up to `count` messages.
    Receive { count: u8 },
    /// The hostile writer writes `bytes` at `at` (modulo the maximum size).
    Write { at: u16, bytes: Vec<u8> },
    /// The hostile writer writes one aligned 64-bit word (header fields,
    /// positions, record flags and lengths are all such words).
    WriteWord { index: u16, value: u64 },
    /// The reader's process maps the ring again and takes a new reader.
    Reopen,
}

#[derive(Arbitrary, Debug)]
struct Input {
    ops: Vec<Op>,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn open(file: &File) -> Option<Ring> {
    let fd: OwnedFd = file.try_clone().ok()?.into();
    Ring::open_memfd(fd, MAX, Duration::ZERO).ok()
}

fuzz_target!(|input: Input| {
    let name = format!("fuzz-{}", COUNTER.fetch_add(1, Ordering::Relaxed));
    let creator = Ring::create_memfd(&name, &RingConfig::new("Fuzz", MAX)).expect("memfd ring");
    let file = File::from(creator.fd().unwrap().try_clone_to_owned().unwrap());
    let mut opened = open(&file).expect("a fresh ring opens");
    let mut reader = opened.reader().ok();
    // Messages sent and not yet received while nobody scribbled: (id, kind, objects).
    let mut expected: VecDeque<(u64, Kind, Vec<(u64, Vec<u8>)>)> = VecDeque::new();
    let mut clean = true;

    for op in input.ops.into_iter().take(MAX_OPS) {
        match op {
            Op::Send { writer, message_id, raw_kind, objects } => {
                let objects: Vec<(u64, Vec<u8>)> = objects
                    .into_iter()
                    .take(8)
                    .map(|(id, len, fill)| (id as u64, vec![fill; len as usize % MAX_OBJECT]))
                    .collect();
                let refs: Vec<(u64, &[u8])> =
                    objects.iter().map(|(id, d)| (*id, d.as_slice())).collect();
                let kind = if raw_kind { Kind::Raw } else { Kind::Event };
                let w = if writer { opened.writer() } else { creator.writer() };
                if w.send_objects(message_id, kind, &refs, Duration::ZERO).is_ok() && clean {
                    expected.push_back((message_id, kind, objects));
                }
            }
            Op::Abandon { writer, size } => {
                let w = if writer { opened.writer() } else { creator.writer() };
                let _ = w.try_allocate_for_send(size as u64 % MAX, 0, 1, false);
            }
            Op::Receive { count } => {
                let Some(r) = reader.as_mut() else { continue };
                for _ in 0..count % 16 {
                    match r.try_receive() {
                        Ok(Some(m)) => {
                            // Single-threaded: nobody rewrites between the
                            // reader's validation and this check.
                            let view = shm_layout::MessageView::parse(m.bytes())
                                .expect("a received message validates");
                            let objects: Vec<(u64, Vec<u8>)> = view
                                .objects()
                                .map(|o| o.map(|o| (o.id, o.data.to_vec())))
                                .collect::<Result<_, _>>()
                                .expect("a received message's objects decode");
                            if clean {
                                let (id, kind, sent) =
                                    expected.pop_front().expect("a message nobody sent");
                                assert_eq!(m.message_id(), id);
                                assert_eq!(m.kind(), kind);
                                assert_eq!(objects, sent);
                            }
                        }
                        Ok(None) => {
                            if clean {
                                assert!(expected.is_empty(), "a sent message is missing");
                            }
                            break;
                        }
                        Err(e) => {
                            assert!(!clean, "error on a clean ring: {e}");
                            break;
                        }
                    }
                }
            }
            Op::Write { at, bytes } => {
                clean = false;
                let at = at as u64 % MAX;
                let len = bytes.len().min((MAX - at) as usize);
                let _ = file.write_at(&bytes[..len], at);
            }
            Op::WriteWord { index, value } => {
                clean = false;
                let at = (index as u64 * 8) % MAX;
                let _ = file.write_at(&value.to_le_bytes(), at);
            }
            Op::Reopen => {
                clean = false;
                reader = None;
                if let Some(ring) = open(&file) {
                    opened = ring;
                    reader = opened.reader().ok();
                }
            }
        }
    }
});
