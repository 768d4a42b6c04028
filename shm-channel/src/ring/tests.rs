//! Unit tests of the ring protocol over heap memory. The conformance suite
//! over heap and memfd lives in `tests/ring.rs`.

use super::*;

fn heap(max: u64) -> (Ring, RingWriter, RingReader) {
    let ring = Ring::create_heap(&RingConfig::new("Test", max)).unwrap();
    let w = ring.writer();
    let r = ring.reader().unwrap();
    (ring, w, r)
}

fn send(w: &RingWriter, id: u64, data: &[u8]) -> Result<(), TrySendError> {
    let size = shm_layout::object_size(data.len() as u64).unwrap();
    let mut slot = w.try_allocate_for_send(size, id, 1, false)?;
    slot.push_object(0, data).unwrap();
    slot.send()
        .map_err(|e| TrySendError::Corrupt(Corrupt::new(e)))
}

fn recv(r: &mut RingReader) -> Option<(u64, Vec<u8>)> {
    let m = r.try_receive().unwrap()?;
    Some((m.message_id(), m.object(0).unwrap().to_vec()))
}

#[test]
fn wraps_around_an_empty_ring_with_a_message_as_large_as_the_body() {
    let (ring, w, mut r) = heap(4096);
    // Move the positions to the middle of the body.
    send(&w, 1, &[1; 1000]).unwrap();
    assert_eq!(recv(&mut r).unwrap().0, 1);
    // A message filling the whole body: only fits by wrapping over the empty ring.
    let big = vec![7u8; (ring.max_message() - 48 - 16) as usize];
    send(&w, 2, &big).unwrap();
    assert_eq!(recv(&mut r), Some((2, big)));
    assert!(recv(&mut r).is_none());
    send(&w, 3, b"after").unwrap();
    assert_eq!(recv(&mut r), Some((3, b"after".to_vec())));
}

#[test]
fn full_then_drains() {
    let (_ring, w, mut r) = heap(4096);
    let mut sent = 0;
    while send(&w, sent, &[sent as u8; 200]).is_ok() {
        sent += 1;
    }
    assert!(
        sent >= 10,
        "a 3.5 KiB body holds more than 10 messages of 264 bytes: {sent}"
    );
    assert_eq!(send(&w, 99, &[0; 200]), Err(TrySendError::Full));
    for i in 0..sent {
        assert_eq!(recv(&mut r).unwrap(), (i, vec![i as u8; 200]));
    }
    assert!(recv(&mut r).is_none());
}

#[test]
fn too_large_names_size_and_limit() {
    let (ring, w, _r) = heap(8192);
    let err = w.try_allocate_for_send(8192, 1, 1, false).unwrap_err();
    assert_eq!(
        err,
        TrySendError::TooLarge {
            size: 8192 + 48,
            max: ring.max_message()
        }
    );
    assert_eq!(ring.max_message(), 8192 - 512);
}

#[test]
fn grows_only_when_needed_and_never_moves_data() {
    let (ring, w, mut r) = heap(1 << 20);
    assert_eq!(ring.capacity(), 4096);
    for i in 0..1000u64 {
        send(&w, i, &i.to_le_bytes()).unwrap();
        assert_eq!(recv(&mut r), Some((i, i.to_le_bytes().to_vec())));
    }
    assert_eq!(ring.capacity(), 4096, "small traffic keeps one page");
    // Unread data in place, then a message that needs growth.
    send(&w, 5000, &[5; 2000]).unwrap();
    send(&w, 5001, &[6; 100_000]).unwrap();
    assert!(ring.capacity() >= 100_000 && ring.capacity() <= 1 << 20);
    assert_eq!(recv(&mut r), Some((5000, vec![5; 2000])));
    assert_eq!(recv(&mut r), Some((5001, vec![6; 100_000])));
}

#[test]
fn no_queue_never_grows() {
    let (ring, w, _r) = heap(1 << 20);
    let size = shm_layout::object_size(10_000).unwrap();
    assert_eq!(
        w.try_allocate_for_send(size, 1, 1, true).unwrap_err(),
        TrySendError::Full
    );
    assert_eq!(ring.capacity(), 4096);
    assert!(matches!(
        w.allocate_for_send_timeout(size, 1, 1, true, Duration::from_secs(5)),
        Err(SendError::Dropped)
    ));
}

#[test]
fn dropped_slot_is_skipped_and_wrong_fill_is_refused() {
    let (_ring, w, mut r) = heap(1 << 16);
    let slot = w.try_allocate_for_send(24, 1, 1, false).unwrap();
    drop(slot);
    let mut slot = w.try_allocate_for_send(48, 2, 2, false).unwrap();
    slot.push_object(0, b"x").unwrap();
    assert!(matches!(slot.send(), Err(SendError::Layout(_))));
    send(&w, 3, b"ok").unwrap();
    assert_eq!(recv(&mut r), Some((3, b"ok".to_vec())));
}

#[test]
fn head_of_line_waits_for_allocated() {
    let (_ring, w, mut r) = heap(1 << 16);
    let mut first = w.try_allocate_for_send(24, 1, 1, false).unwrap();
    send(&w, 2, b"second").unwrap();
    assert!(
        recv(&mut r).is_none(),
        "the first reservation holds the line"
    );
    first.push_object(0, b"first").unwrap();
    first.send().unwrap();
    assert_eq!(recv(&mut r), Some((1, b"first".to_vec())));
    assert_eq!(recv(&mut r), Some((2, b"second".to_vec())));
}

#[test]
fn request_id_kind_and_flags_survive() {
    let (_ring, w, mut r) = heap(1 << 16);
    let mut slot = w.try_allocate_for_send(0, 9, 0, false).unwrap();
    slot.set_kind(Kind::Reply);
    slot.set_request_id(0xdead_beef);
    slot.set_app_flags(1 << 17);
    slot.send().unwrap();
    let m = r.try_receive().unwrap().unwrap();
    assert_eq!(m.kind(), Kind::Reply);
    assert_eq!(m.request_id(), 0xdead_beef);
    assert_eq!(m.flags() & flags::APP_MASK, 1 << 17);
    assert_eq!(m.objects().count(), 0);
}

#[test]
fn one_reader_only() {
    let (ring, _w, _r) = heap(1 << 16);
    assert!(matches!(ring.reader(), Err(RingError::ReaderTaken)));
}

#[test]
fn receive_timeout_times_out() {
    let (_ring, _w, mut r) = heap(1 << 16);
    assert!(matches!(
        r.receive_timeout(Duration::from_millis(20)),
        Err(RecvError::Timeout)
    ));
}

/// Two writer threads and a reader thread on a small heap ring: under Miri
/// this checks the reservation/publication protocol for data races and
/// aliasing violations (few messages there; more natively).
#[test]
fn two_writers_one_reader_threads() {
    let n: u64 = if cfg!(miri) { 30 } else { 20_000 };
    let (_ring, w, mut r) = heap(4096);
    let writers: Vec<_> = (0..2u64)
        .map(|p| {
            let w = w.clone();
            std::thread::spawn(move || {
                for i in 0..n {
                    let data = [p as u8; 100];
                    let size = shm_layout::object_size(100).unwrap();
                    let mut slot = w
                        .allocate_for_send_timeout(
                            size,
                            p * 1_000_000 + i,
                            1,
                            false,
                            Duration::from_secs(60),
                        )
                        .unwrap();
                    slot.push_object(0, &data).unwrap();
                    slot.send().unwrap();
                }
            })
        })
        .collect();
    let mut next = [0u64; 2];
    for _ in 0..2 * n {
        let m = r.receive_timeout(Duration::from_secs(60)).unwrap();
        let (p, i) = (m.message_id() / 1_000_000, m.message_id() % 1_000_000);
        assert_eq!(i, next[p as usize]);
        assert_eq!(m.object(0).unwrap(), &[p as u8; 100][..]);
        next[p as usize] += 1;
    }
    for t in writers {
        t.join().unwrap();
    }
}

#[test]
#[cfg_attr(miri, ignore = "memfd_create is not supported by Miri")]
fn shared_words_are_shared_and_bounded() {
    use std::os::fd::AsFd;
    let a = testing::SharedWords::create("shared-words-test").unwrap();
    let b = testing::SharedWords::open(a.fd().as_fd().try_clone_to_owned().unwrap()).unwrap();
    a.word(7).unwrap().store(42, Ordering::Relaxed);
    assert_eq!(b.word(7).unwrap().load(Ordering::Relaxed), 42);
    assert!(a.word(testing::SharedWords::LEN).is_none());
    assert!(a.word(testing::SharedWords::LEN - 1).is_some());
}
