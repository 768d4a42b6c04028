//! Regression tests for bugs found in review of the ring (each failed
//! before its fix).

mod support;

use std::time::Duration;

use shm_channel::layout::object_size;
use shm_channel::ring::TrySendError;
use shm_channel::{Kind, Ring, RingConfig};
use support::dead_pid;

const LONG: Duration = Duration::from_secs(10);

fn memfd(max: u64) -> Ring {
    Ring::create_memfd("review-bugs", &RingConfig::new("Review", max)).unwrap()
}

fn reopen(ring: &Ring, max: u64) -> Ring {
    Ring::open_memfd(ring.fd().unwrap().try_clone_to_owned().unwrap(), max, LONG).unwrap()
}

/// A writer that maps the ring after it wrapped (a restarted writer
/// process) used to judge its stale per-process read cache as corruption.
#[test]
fn writer_in_a_second_mapping_after_a_wrap() {
    let ring = memfd(4096);
    let w = ring.writer();
    let mut r = ring.reader().unwrap();
    for i in 0..10u64 {
        w.send_objects(i, Kind::Raw, &[(0, &[i as u8; 1000])], LONG)
            .unwrap();
        assert_eq!(r.try_receive().unwrap().unwrap().message_id(), i);
    }
    let other = reopen(&ring, 4096);
    let writer = other.writer();
    let got = writer.try_allocate_for_send(object_size(5).unwrap(), 99, 1, false);
    assert!(
        !matches!(got, Err(TrySendError::Corrupt(_))),
        "healthy ring judged corrupt: {got:?}"
    );
}

#[test]
fn two_mappings_writing_alternately() {
    let ring = memfd(4096);
    let other = reopen(&ring, 4096);
    let (w1, w2) = (ring.writer(), other.writer());
    let mut r = ring.reader().unwrap();
    for round in 0..100u64 {
        let w = if round % 7 == 0 { &w2 } else { &w1 };
        let res = w.send_objects(round, Kind::Raw, &[(0, &[round as u8; 900])], LONG);
        assert!(res.is_ok(), "round {round}: {res:?}");
        assert_eq!(r.try_receive().unwrap().unwrap().message_id(), round);
    }
}

/// A writer killed after storing the wrap offset, before publishing its
/// write position: the live writers carry on.
#[test]
fn dead_writer_left_a_wrap_offset() {
    use shm_channel::layout::ring as off;
    use std::{fs::File, os::unix::fs::FileExt};
    let ring = memfd(1 << 16);
    let file = File::from(ring.fd().unwrap().try_clone_to_owned().unwrap());
    let w = ring.writer();
    let mut r = ring.reader().unwrap();
    for i in 0..10u64 {
        w.send_objects(i, Kind::Raw, &[(0, &[1; 300])], LONG)
            .unwrap();
        assert_eq!(r.try_receive().unwrap().unwrap().message_id(), i);
    }
    let mut b = [0u8; 8];
    file.read_exact_at(&mut b, off::WRITE_POS as u64).unwrap();
    let write_offset = u64::from_le_bytes(b) & ((1 << 40) - 1);
    let dead = dead_pid();
    file.write_all_at(
        &((u64::from(dead) << 32) | 1).to_le_bytes(),
        off::SPINLOCK as u64,
    )
    .unwrap();
    file.write_all_at(&write_offset.to_le_bytes(), off::WRAP_OFFSET as u64)
        .unwrap();
    let res = w.send_objects(99, Kind::Raw, &[(0, b"after")], LONG);
    assert!(res.is_ok(), "{res:?}");
    assert_eq!(r.try_receive().unwrap().unwrap().message_id(), 99);
}

#[test]
fn open_memfd_with_an_endless_timeout_does_not_panic() {
    let ring = memfd(1 << 16);
    let fd = ring.fd().unwrap().try_clone_to_owned().unwrap();
    let opened = std::panic::catch_unwind(|| Ring::open_memfd(fd, 1 << 16, Duration::MAX).is_ok());
    assert!(matches!(opened, Ok(true)), "open_memfd panicked");
}

/// Once the data wraps the ring cannot grow; a burst used to find it full
/// at its first page although its maximum was 16 times larger.
#[test]
fn a_wrapped_ring_still_grows_for_a_burst() {
    let ring = memfd(1 << 16);
    let w = ring.writer();
    let mut r = ring.reader().unwrap();
    for i in 0..3u64 {
        w.send_objects(i, Kind::Raw, &[(0, &[0; 800])], LONG)
            .unwrap();
        drop(r.try_receive().unwrap().unwrap());
    }
    let mut sent = 0;
    while w
        .try_allocate_for_send(object_size(768).unwrap(), 0, 1, false)
        .map(|mut s| {
            s.push_object(0, &[0; 768]).unwrap();
            s.send().unwrap();
        })
        .is_ok()
    {
        sent += 1;
    }
    assert!(
        sent >= 70,
        "Full after {sent} messages at capacity {} of {}",
        ring.capacity(),
        ring.max_size()
    );
}

/// A reader dropped (or one that failed to start) frees the ring for a new
/// reader of this process.
#[test]
fn a_dropped_reader_can_be_replaced() {
    let ring = memfd(1 << 16);
    let r = ring.reader().unwrap();
    assert!(ring.reader().is_err());
    drop(r);
    ring.writer()
        .send_objects(1, Kind::Raw, &[(0, b"x")], LONG)
        .unwrap();
    let mut r = ring.reader().unwrap();
    assert_eq!(r.try_receive().unwrap().unwrap().message_id(), 1);
}

/// A configuration that can never make a ring is refused before anything is
/// allocated (it used to abort the process on a 2 TiB heap allocation).
#[test]
fn an_impossible_maximum_is_an_error_not_an_abort() {
    let err = Ring::create_heap(&RingConfig::new("Huge", 2 << 40)).unwrap_err();
    assert!(err.to_string().contains("1 TiB"), "{err}");
    let err = Ring::create_heap(&RingConfig::new("x".repeat(65), 1 << 16)).unwrap_err();
    assert!(err.to_string().contains("64 bytes"), "{err}");
}

/// The bytes a message hands out are tied to the message (see the
/// `compile_fail` doctest on `Message`); dropping it by value is clean
/// (under Miri too: no slice of it is live while its space is released).
#[test]
fn dropping_a_message_by_value() {
    let ring = Ring::create_heap(&RingConfig::new("Review", 4096)).unwrap();
    let w = ring.writer();
    let mut r = ring.reader().unwrap();
    w.send_objects(1, Kind::Raw, &[(0, b"x")], LONG).unwrap();
    let m = r.try_receive().unwrap().unwrap();
    assert_eq!(m.object(0), Some(&b"x"[..]));
    drop(m);
    assert!(r.try_receive().unwrap().is_none());
}

/// A spinlock word that a live peer never releases (found by fuzzing): a
/// send with a zero timeout fails with `Timeout` after about one give-up of
/// the lock, not after dozens of them (it took 34 before the fix). Compared
/// as a ratio to one `try_allocate_for_send` measured in the same run.
#[test]
fn a_held_spinlock_does_not_stretch_a_send_timeout() {
    use shm_channel::layout::ring as off;
    use shm_channel::ring::SendError;
    use std::time::Instant;
    use std::{fs::File, os::unix::fs::FileExt};
    let ring = memfd(1 << 16);
    let file = File::from(ring.fd().unwrap().try_clone_to_owned().unwrap());
    // Held by this very process (alive) with a thread tag no thread has.
    let word = (u64::from(std::process::id()) << 32) | 0xffff_fff0;
    file.write_all_at(&word.to_le_bytes(), off::SPINLOCK as u64)
        .unwrap();
    let w = ring.writer();
    let start = Instant::now();
    assert_eq!(
        w.try_allocate_for_send(24, 1, 1, false).unwrap_err(),
        TrySendError::Full
    );
    let one_give_up = start.elapsed();
    let start = Instant::now();
    let err = w
        .send_objects(1, Kind::Raw, &[(0, b"x")], Duration::ZERO)
        .unwrap_err();
    let send = start.elapsed();
    assert_eq!(err, SendError::Timeout);
    eprintln!("one give-up {one_give_up:?}, a zero-timeout send {send:?}");
    assert!(
        send < one_give_up * 8,
        "a zero-timeout send took {send:?}, {:.1} lock give-ups of {one_give_up:?}",
        send.as_secs_f64() / one_give_up.as_secs_f64()
    );
}
