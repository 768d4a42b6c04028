//! Review tests of the ring: adversarial interleavings on tiny rings, sizes
//! at and near the whole body, slots dropped unsent, messages held while
//! writers hammer, growth under concurrency read from a second mapping, an
//! exhaustive walk of start offsets and sizes, a random model check, and the
//! states a writer killed inside its critical section can leave.
//!
//! Under Miri only the heap-backed tests run, with fewer iterations. Run them
//! with `-Zmiri-tree-borrows`: under Stacked Borrows the concurrent tests
//! stop at the reader's first look at a message a writer published from
//! inside a function that took the `Slot` by value (the slot's
//! `&mut [u8]` field is still protected there): a finding of the review,
//! not a bug of these tests.

mod support;

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use shm_channel::layout::{self, MessageHeader, flags, object_size, ring as off};
use shm_channel::ring::{RecvError, SendError, Slot, TrySendError};
use shm_channel::{Kind, Ring, RingConfig, RingReader};
use support::ring::{Rng, check_checked, checked_size, write_checked};
use support::{checksum, dead_pid, unique_name, with_watchdog};

const LONG: Duration = Duration::from_secs(60);

/// Iterations scaled down under Miri.
fn n(native: u64, miri: u64) -> u64 {
    if cfg!(miri) { miri } else { native }
}

fn heap(max: u64) -> Ring {
    Ring::create_heap(&RingConfig::new("Review", max)).unwrap()
}

fn memfd(max: u64) -> Ring {
    Ring::create_memfd(&unique_name("review"), &RingConfig::new("Review", max)).unwrap()
}

/// The largest payload of a checked message that the ring can hold.
fn max_checked_payload(ring_max_message: u64) -> usize {
    // 48 header + 32 (producer, seq) + 16 payload header + 24 checksum.
    ((ring_max_message - 120) & !7) as usize
}

/// A checked message whose request id is its seq.
fn fill_checked(mut slot: Slot<'_>, producer: u64, seq: u64, payload: &[u8]) {
    slot.set_request_id(seq);
    write_checked(&mut slot, producer, seq, payload);
    slot.send().unwrap();
}

/// Checks a received checked message (its request id too); returns
/// (producer, seq, payload len, checksum of the whole message).
fn check(m: &shm_channel::ring::Message<'_>) -> (u64, u64, usize, u64) {
    let (producer, seq, payload) = check_checked(m);
    assert_eq!(m.request_id(), seq);
    (producer, seq, payload.len(), checksum(m.bytes()))
}

/// A payload length: mostly small, often near the largest the ring holds.
fn pick_len(rng: &mut Rng, max_payload: usize) -> usize {
    match rng.below(8) {
        0 => max_payload - 8 * rng.below(4) as usize,
        1 => max_payload / 2 + rng.below(64) as usize,
        2 => rng.below(max_payload as u64 + 1) as usize,
        _ => rng.below(200) as usize,
    }
}

mod suite {
    use super::*;

    /// Many producers on a one-page ring; sizes up to the whole body; now
    /// and then a slot dropped unsent; the reader sometimes holds a message
    /// while the producers go on. Per-producer FIFO, no loss, no damage, no
    /// hang (a message as large as the body must get through eventually).
    pub fn many_threads_tiny_ring_sizes_near_the_body(make: fn(u64) -> Ring) {
        let producers: u64 = if cfg!(miri) { 2 } else { 6 };
        let per = n(3000, 15);
        let ring = make(4096);
        let max_payload = max_checked_payload(ring.max_message());
        let mut reader = ring.reader().unwrap();
        let threads: Vec<_> = (0..producers)
            .map(|p| {
                let w = ring.writer();
                std::thread::spawn(move || {
                    let mut rng = Rng(p * 7919 + 1);
                    let mut payload = vec![0u8; max_payload];
                    let mut seq = 0;
                    let mut dropped = 0;
                    while seq < per {
                        let len = pick_len(&mut rng, max_payload);
                        rng.fill(&mut payload[..len]);
                        let slot = w
                            .allocate_for_send_timeout(checked_size(len), p, 3, false, LONG)
                            .unwrap_or_else(|e| panic!("producer {p} seq {seq} len {len}: {e}"));
                        if rng.below(16) == 0 {
                            drop(slot); // published as skipped
                            dropped += 1;
                            continue;
                        }
                        fill_checked(slot, p, seq, &payload[..len]);
                        seq += 1;
                    }
                    dropped
                })
            })
            .collect();
        with_watchdog(Duration::from_secs(120), move || {
            let mut next = vec![0u64; producers as usize];
            let mut rng = Rng(99);
            for _ in 0..per * producers {
                let m = reader.receive_timeout(LONG).unwrap();
                let (p, seq, _, _) = check(&m);
                assert_eq!(seq, next[p as usize], "producer {p}: lost or reordered");
                next[p as usize] += 1;
                if rng.below(64) == 0 {
                    // Hold the message while the producers run into it.
                    let before = checksum(m.bytes());
                    std::thread::sleep(Duration::from_micros(200));
                    assert_eq!(checksum(m.bytes()), before, "a held message changed");
                }
            }
            assert!(reader.try_receive().unwrap().is_none());
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(next, vec![per; producers as usize]);
        });
    }

    /// A held message is never overwritten, however hard the writers push:
    /// fill the ring until `Full` around a held message, many times.
    pub fn a_held_message_is_never_overwritten(make: fn(u64) -> Ring) {
        let ring = make(8192);
        let w = ring.writer();
        let mut r = ring.reader().unwrap();
        let max_payload = max_checked_payload(ring.max_message());
        let mut rng = Rng(5);
        let mut payload = vec![0u8; max_payload];
        let (mut sent, mut received) = (0u64, 0u64);
        for _ in 0..n(3000, 20) {
            // Fill until full (no_queue sometimes, so growth is tried too).
            loop {
                let len = pick_len(&mut rng, max_payload);
                rng.fill(&mut payload[..len]);
                match w.try_allocate_for_send(checked_size(len), 0, 3, rng.below(2) == 0) {
                    Ok(slot) => {
                        fill_checked(slot, 0, sent, &payload[..len]);
                        sent += 1;
                    }
                    Err(TrySendError::Full) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            // Hold the head, fill again, check it did not change.
            let skip = rng.below(3);
            for _ in 0..skip.min(sent - received) {
                let m = r.try_receive().unwrap().unwrap();
                assert_eq!(check(&m).1, received);
                received += 1;
            }
            if sent == received {
                continue;
            }
            // Dropped at the end of this block, not with `drop(m)`: see the
            // review report (Miri flags a by-value drop of a `Message`).
            let m = r.try_receive().unwrap().unwrap();
            let (_, seq, _, before) = check(&m);
            assert_eq!(seq, received);
            for _ in 0..4 {
                let len = pick_len(&mut rng, max_payload);
                match w.try_allocate_for_send(checked_size(len), 0, 3, false) {
                    Ok(slot) => {
                        fill_checked(slot, 0, sent, &payload[..len]);
                        sent += 1;
                    }
                    Err(TrySendError::Full) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            assert_eq!(check(&m).3, before, "held message {seq} was overwritten");
            received += 1;
        }
        while received < sent {
            let m = r.try_receive().unwrap().unwrap();
            assert_eq!(check(&m).1, received);
            received += 1;
        }
        assert!(r.try_receive().unwrap().is_none());
        assert!(ring.capacity() <= 8192);
    }

    /// Random operations against a queue model. Besides FIFO and contents:
    /// an empty ring takes a message of any size up to `max_message`
    /// (no size can deadlock), and `no_queue` never grows the ring.
    pub fn random_ops_against_a_model(make: fn(u64) -> Ring) {
        let ring = make(16 * 1024);
        let w = ring.writer();
        let mut r = ring.reader().unwrap();
        let max_payload = max_checked_payload(ring.max_message());
        let mut model: VecDeque<(u64, u64)> = VecDeque::new(); // (seq, payload checksum)
        let mut rng = Rng(0x5eed);
        let mut payload = vec![0u8; max_payload];
        let mut seq = 0u64;
        for _ in 0..n(200_000, 300) {
            match rng.below(10) {
                0..=4 => {
                    let len = pick_len(&mut rng, max_payload);
                    rng.fill(&mut payload[..len]);
                    let no_queue = rng.below(4) == 0;
                    let cap_before = ring.capacity();
                    let empty = model.is_empty();
                    match w.try_allocate_for_send(checked_size(len), 0, 3, no_queue) {
                        Ok(slot) => {
                            if rng.below(20) == 0 {
                                drop(slot);
                            } else {
                                fill_checked(slot, 0, seq, &payload[..len]);
                                model.push_back((seq, checksum(&payload[..len])));
                                seq += 1;
                            }
                        }
                        Err(TrySendError::Full) if empty && !no_queue => {
                            // Only records dropped unsent may hold the space:
                            // the reader passes them on its next look.
                            assert!(r.try_receive().unwrap().is_none());
                            let slot = w
                                .try_allocate_for_send(checked_size(len), 0, 3, false)
                                .unwrap_or_else(|e| {
                                    panic!("an empty ring refused {len} bytes (capacity {cap_before}): {e}")
                                });
                            fill_checked(slot, 0, seq, &payload[..len]);
                            model.push_back((seq, checksum(&payload[..len])));
                            seq += 1;
                        }
                        Err(TrySendError::Full) => {}
                        Err(e) => panic!("{e}"),
                    }
                    if no_queue {
                        assert_eq!(ring.capacity(), cap_before, "no_queue grew the ring");
                    }
                }
                5..=8 => match r.try_receive().unwrap() {
                    Some(m) => {
                        let (_, s, _, _) = check(&m);
                        let (want, sum) = model.pop_front().expect("message out of nowhere");
                        assert_eq!(s, want);
                        let data = m.object(1).unwrap();
                        assert_eq!(checksum(data), sum);
                    }
                    None => assert!(model.is_empty(), "{} messages not delivered", model.len()),
                },
                _ => {
                    // Drain, then the largest message must fit at once.
                    while let Some(m) = r.try_receive().unwrap() {
                        assert_eq!(check(&m).1, model.pop_front().unwrap().0);
                    }
                    assert!(model.is_empty());
                    let len = max_payload;
                    rng.fill(&mut payload[..len]);
                    let slot = w
                        .try_allocate_for_send(checked_size(len), 0, 3, false)
                        .unwrap_or_else(|e| panic!("empty ring refused the largest message: {e}"));
                    fill_checked(slot, 0, seq, &payload[..len]);
                    model.push_back((seq, checksum(&payload[..len])));
                    seq += 1;
                }
            }
        }
        assert!(ring.capacity() <= 16 * 1024);
    }
}

macro_rules! both {
    ($($test:ident),* $(,)?) => {
        mod over_heap {
            $( #[test] fn $test() { super::suite::$test(super::heap) } )*
        }
        mod over_memfd {
            $( #[test] #[cfg_attr(miri, ignore = "memfd: syscalls")] fn $test() { super::suite::$test(super::memfd) } )*
        }
    };
}

both!(
    many_threads_tiny_ring_sizes_near_the_body,
    a_held_message_is_never_overwritten,
    random_ops_against_a_model,
);

/// Every start offset of a one-page ring times every pair of record sizes,
/// against the placement rule (fit after the write position, else wrap to
/// the front if the freed front holds it, else full): the decisions at
/// `write + record == capacity` and `512 + record == read` are exact, and
/// the whole-body message lands from every offset.
#[test]
#[cfg_attr(miri, ignore = "too many iterations for Miri")]
fn every_start_offset_and_size_pair() {
    const SLOTS: u64 = (4096 - 512) / 64;
    // A message of `k` 64-byte records: 48-byte header + one object.
    let len_for = |k: u64| (k * 64 - 48 - 16) as usize;
    // Where a `k`-record message goes into an empty ring whose position is `p`.
    let after = |p: u64, k: u64| if p + k <= SLOTS { p + k } else { k };
    let ring = heap(4096);
    let w = ring.writer();
    let mut r = ring.reader().unwrap();
    let mut data = vec![0u8; 4096];
    let mut send = |k: u64, id: u64| -> Result<(), TrySendError> {
        let len = len_for(k);
        data[..len].fill(id as u8);
        let mut slot = w.try_allocate_for_send(object_size(len as u64).unwrap(), id, 1, false)?;
        slot.push_object(0, &data[..len]).unwrap();
        slot.send().unwrap();
        Ok(())
    };
    let recv = |r: &mut RingReader, id: u64, k: u64| {
        let m = r.try_receive().unwrap().expect("message");
        assert_eq!(m.message_id(), id);
        let o = m.object(0).unwrap();
        assert_eq!(o.len(), len_for(k));
        assert!(o.iter().all(|&b| b == id as u8));
    };
    let mut id = 0u64;
    let mut p = 0u64; // write == read position, in records from 512
    // Position 0 (offset 512 with nothing written) only exists before the
    // first message; every later wrap puts a record at 512.
    for start in 1..=SLOTS {
        for a in 1..=SLOTS {
            for b in 1..=SLOTS {
                while p != start {
                    send(1, id).unwrap();
                    recv(&mut r, id, 1);
                    id += 1;
                    p = after(p, 1);
                }
                send(a, id).unwrap();
                let first = id;
                id += 1;
                let wrapped = p + a > SLOTS;
                let end_a = after(p, a);
                let fits = if wrapped {
                    a + b <= SLOTS
                } else {
                    end_a + b <= SLOTS || b <= p
                };
                let got = send(b, id);
                assert_eq!(got.is_ok(), fits, "p={p} a={a} b={b}: {got:?}");
                recv(&mut r, first, a);
                if fits {
                    recv(&mut r, id, b);
                }
                id += 1;
                assert!(r.try_receive().unwrap().is_none());
                // The whole body, now that the ring is empty.
                send(SLOTS, id).unwrap();
                recv(&mut r, id, SLOTS);
                id += 1;
                p = SLOTS;
            }
        }
    }
}

/// Growth while four writers race, read from a second mapping of the same
/// memfd (as the peer process would), with sizes from tiny to a third of the
/// maximum.
#[test]
#[cfg_attr(miri, ignore = "memfd: syscalls")]
fn growth_under_concurrency_read_from_a_second_mapping() {
    const MAX: u64 = 4 << 20;
    let ring = memfd(MAX);
    let peer =
        Ring::open_memfd(ring.fd().unwrap().try_clone_to_owned().unwrap(), MAX, LONG).unwrap();
    let mut reader = peer.reader().unwrap();
    let per = 1500u64;
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4u64)
        .map(|p| {
            let w = ring.writer();
            std::thread::spawn(move || {
                let mut rng = Rng(p + 31);
                let mut payload = vec![0u8; (MAX / 3) as usize];
                for seq in 0..per {
                    let len = match rng.below(50) {
                        0 => rng.below(MAX / 3) as usize,
                        1..=5 => rng.below(64 * 1024) as usize,
                        _ => rng.below(512) as usize,
                    };
                    rng.fill(&mut payload[..len]);
                    let slot = w
                        .allocate_for_send_timeout(checked_size(len), p, 3, false, LONG)
                        .unwrap_or_else(|e| panic!("{p}/{seq}: {e}"));
                    fill_checked(slot, p, seq, &payload[..len]);
                }
            })
        })
        .collect();
    let watcher = {
        let stop = Arc::clone(&stop);
        let ring = ring.clone();
        std::thread::spawn(move || {
            let mut last = ring.capacity();
            while !stop.load(Ordering::Relaxed) {
                let cap = ring.capacity();
                assert!(cap >= last, "capacity shrank {last} -> {cap}");
                assert!(cap <= MAX && cap.is_multiple_of(4096));
                last = cap;
                std::thread::yield_now();
            }
            last
        })
    };
    with_watchdog(Duration::from_secs(240), move || {
        let mut next = [0u64; 4];
        for _ in 0..4 * per {
            let m = reader.receive_timeout(LONG).unwrap();
            let (p, seq, _, _) = check(&m);
            assert_eq!(seq, next[p as usize]);
            next[p as usize] += 1;
        }
        assert!(reader.try_receive().unwrap().is_none());
        for t in writers {
            t.join().unwrap();
        }
    });
    stop.store(true, Ordering::Relaxed);
    let cap = watcher.join().unwrap();
    eprintln!("grew to {cap} bytes (max {MAX})");
    assert!(cap > 4096);
}

// ---- a writer killed inside its critical section, state by state ----

fn word(file: &File, at: usize) -> u64 {
    let mut b = [0u8; 8];
    file.read_exact_at(&mut b, at as u64).unwrap();
    u64::from_le_bytes(b)
}

fn set_word(file: &File, at: usize, v: u64) {
    file.write_all_at(&v.to_le_bytes(), at as u64).unwrap();
}

/// What a writer killed at each step of `try_allocate_for_send` leaves
/// (written through the file, as the dead process would have): the lock
/// word names it, and then, step by step, a grown capacity, a header
/// written past `WriteOffset`, the message count bumped, a reservation
/// published `ALLOCATED`. Each time the live writers take the lock over, the reader
/// reports the dead reservation at most once, and traffic goes on in order.
#[test]
#[cfg_attr(miri, ignore = "memfd and processes")]
fn writer_killed_at_each_step_of_the_critical_section() {
    let dead = dead_pid();
    for step in 0..5 {
        let ring = memfd(1 << 16);
        let file = File::from(ring.fd().unwrap().try_clone_to_owned().unwrap());
        let w = ring.writer();
        let mut r = ring.reader().unwrap();
        // Some traffic first, to start from the middle of a lap.
        for i in 0..(step * 3 + 1) {
            w.send_objects(i, Kind::Raw, &[(0, &[i as u8; 300])], LONG)
                .unwrap();
            assert_eq!(r.try_receive().unwrap().unwrap().message_id(), i);
        }
        let write = layout::RingPos::unpack(word(&file, off::WRITE_POS), ring.capacity()).unwrap();
        // Step 0: the lock, nothing else.
        set_word(&file, off::SPINLOCK, (u64::from(dead) << 32) | 1);
        if step >= 1 {
            // Growth done, capacity stored (the file already holds the maximum).
            let cap = ring.capacity() * 2;
            set_word(&file, off::BUFFER_SIZE, cap);
        }
        if step >= 2 {
            // Header bytes written past WriteOffset (not yet published).
            let mut h = [0u8; 48];
            MessageHeader {
                message_id: 666,
                flags: flags::ALLOCATED | (u64::from(dead) << flags::PID_SHIFT),
                length: 48,
                object_count: 0,
                request_id: 0,
            }
            .encode(&mut h)
            .unwrap();
            file.write_all_at(&h, write.offset).unwrap();
        }
        if step >= 3 {
            // Message count bumped. (A writer that dies after storing the
            // wrap offset of a wrap it did not publish is not covered here:
            // see the review report.)
            set_word(
                &file,
                off::MESSAGE_COUNT,
                word(&file, off::MESSAGE_COUNT) + 1,
            );
        }
        if step >= 4 {
            // The reservation published: WriteOffset moved past it.
            let next = layout::RingPos {
                lap: write.lap,
                offset: write.offset + 64,
            };
            set_word(&file, off::WRITE_POS, next.pack());
        }
        // The live writer and the reader run together: a writer that
        // wrapped waits for the reader rather than grow (by design).
        let w2 = w.clone();
        let sender = std::thread::spawn(move || {
            for i in 0..50u64 {
                w2.send_objects(1000 + i, Kind::Raw, &[(0, &[i as u8; 700])], LONG)
                    .unwrap();
            }
        });
        with_watchdog(Duration::from_secs(30), move || {
            let (mut died, mut got) = (0, 0u64);
            while got < 50 {
                match r.receive_timeout(LONG) {
                    Ok(m) => {
                        assert_eq!(m.message_id(), 1000 + got);
                        assert_eq!(m.object(0).unwrap(), &[got as u8; 700][..]);
                        got += 1;
                    }
                    Err(RecvError::WriterDied { pid, message_id }) => {
                        assert_eq!((pid, message_id), (dead, 666));
                        died += 1;
                    }
                    Err(e) => panic!("step {step}: {e}"),
                }
            }
            assert_eq!(died, usize::from(step >= 4), "step {step}");
            assert!(r.try_receive().unwrap().is_none());
            sender.join().unwrap();
        });
        assert_eq!(word(&file, off::SPINLOCK), 0, "lock left held");
    }
}

/// A blocking send of a message that can never fit is refused at once,
/// and a `no_queue` one is dropped at once, even while the ring is full.
#[test]
fn too_large_and_no_queue_never_wait() {
    let ring = heap(4096);
    let w = ring.writer();
    let _r = ring.reader().unwrap();
    while w
        .try_allocate_for_send(0, 0, 0, false)
        .map(|s| s.send().unwrap())
        .is_ok()
    {}
    let max = ring.max_message();
    assert!(matches!(
        w.allocate_for_send_timeout(max - 47, 0, 1, false, LONG),
        Err(SendError::TooLarge { .. })
    ));
    assert!(matches!(
        w.allocate_for_send_timeout(0, 0, 0, true, LONG),
        Err(SendError::Dropped)
    ));
    assert!(matches!(
        w.try_allocate_for_send(u64::MAX - 10, 0, 1, false),
        Err(TrySendError::TooLarge { .. })
    ));
}
