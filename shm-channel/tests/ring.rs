//! The ring's conformance suite, run over heap memory and over a sealed
//! memfd, plus the memfd-only tests: growth and memory use, hostile
//! contents written through the file, and writers killed with SIGKILL.

mod support;

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shm_channel::layout::{self, object_size};
use shm_channel::ring::{RecvError, SendError, Slot, TrySendError};
use shm_channel::{Kind, Ring, RingConfig, RingReader, RingWriter};
use support::ring::{Rng, check_checked, checked_size, write_checked};
use support::{ChildGuard, child_role, thread_cpu_ticks, unique_name, with_watchdog};

const LONG: Duration = Duration::from_secs(30);

fn heap(max: u64) -> Ring {
    Ring::create_heap(&RingConfig::new("Conformance", max)).unwrap()
}

fn memfd(max: u64) -> Ring {
    Ring::create_memfd(&unique_name("ring"), &RingConfig::new("Conformance", max)).unwrap()
}

/// Sends a message of (producer, seq, payload, checksum) objects.
fn send_checked(w: &RingWriter, producer: u64, seq: u64, payload: &[u8]) -> Result<(), SendError> {
    let slot =
        w.allocate_for_send_timeout(checked_size(payload.len()), producer, 3, false, LONG)?;
    fill_checked(slot, producer, seq, payload)
}

fn fill_checked(
    mut slot: Slot<'_>,
    producer: u64,
    seq: u64,
    payload: &[u8],
) -> Result<(), SendError> {
    write_checked(&mut slot, producer, seq, payload);
    slot.send()
}

/// Receives one message sent by `send_checked`, checks it, returns (producer, seq, len).
fn recv_checked(r: &mut RingReader) -> (u64, u64, usize) {
    let m = r.receive_timeout(LONG).expect("receive");
    let (producer, seq, payload) = check_checked(&m);
    (producer, seq, payload.len())
}

mod suite {
    use super::*;

    pub fn round_trip_every_size(make: fn(u64) -> Ring) {
        let ring = make(1 << 20);
        let w = ring.writer();
        let mut r = ring.reader().unwrap();
        let mut rng = Rng(1);
        for len in (0..5000).chain([65_536, 500_000]) {
            let mut payload = vec![0u8; len];
            rng.fill(&mut payload);
            send_checked(&w, 1, len as u64, &payload).unwrap();
            assert_eq!(recv_checked(&mut r), (1, len as u64, len));
        }
        assert!(r.try_receive().unwrap().is_none());
    }

    pub fn fifo_through_many_wraps(make: fn(u64) -> Ring) {
        // A small ring, random sizes, the reader lagging by a random amount:
        // every wrap and "full" state is crossed many times.
        let ring = make(16 * 1024);
        let w = ring.writer();
        let mut r = ring.reader().unwrap();
        let mut rng = Rng(7);
        let (mut sent, mut received) = (0u64, 0u64);
        while received < 20_000 {
            let burst = rng.below(8);
            for _ in 0..burst {
                let len = rng.below(3000) as usize;
                let mut payload = vec![0u8; len];
                rng.fill(&mut payload);
                match w.try_allocate_for_send(checked_size(len), 0, 3, false) {
                    // Now and then a slot dropped unsent: published as skipped.
                    Ok(slot) if rng.below(10) == 0 => drop(slot),
                    Ok(slot) => {
                        fill_checked(slot, 0, sent, &payload).unwrap();
                        sent += 1;
                    }
                    Err(TrySendError::Full) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            for _ in 0..rng.below(8) {
                if received == sent {
                    break;
                }
                let (_, seq, _) = recv_checked(&mut r);
                assert_eq!(seq, received);
                received += 1;
            }
        }
        assert!(ring.capacity() <= 16 * 1024);
    }

    pub fn four_producers_one_consumer(make: fn(u64) -> Ring) {
        const PRODUCERS: u64 = 4;
        let total: u64 = 1_000_000;
        let per = total / PRODUCERS;
        let ring = make(256 * 1024);
        let mut reader = ring.reader().unwrap();
        let ring = Arc::new(ring);
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let w = ring.writer();
                std::thread::spawn(move || {
                    let mut rng = Rng(p + 100);
                    let mut payload = [0u8; 256];
                    for seq in 0..per {
                        let len = rng.below(256) as usize;
                        rng.fill(&mut payload[..len]);
                        send_checked(&w, p, seq, &payload[..len]).unwrap();
                    }
                })
            })
            .collect();
        let consumer = std::thread::spawn(move || {
            let mut next = [0u64; PRODUCERS as usize];
            let mut bytes = 0usize;
            for _ in 0..per * PRODUCERS {
                let (p, seq, len) = recv_checked(&mut reader);
                assert_eq!(
                    seq, next[p as usize],
                    "producer {p}: lost, duplicated or reordered"
                );
                next[p as usize] += 1;
                bytes += len;
            }
            assert!(
                reader.try_receive().unwrap().is_none(),
                "more messages than sent"
            );
            (next, bytes)
        });
        let (next, bytes) = with_watchdog(Duration::from_secs(240), move || {
            for p in producers {
                p.join().unwrap();
            }
            consumer.join().unwrap()
        });
        assert_eq!(next, [per; PRODUCERS as usize]);
        assert!(bytes > 0);
    }

    pub fn full_then_no_queue_drops_then_blocking_times_out(make: fn(u64) -> Ring) {
        let ring = make(4096);
        let w = ring.writer();
        let mut r = ring.reader().unwrap();
        let size = object_size(100).unwrap();
        let mut n = 0;
        while let Ok(mut slot) = w.try_allocate_for_send(size, n, 1, false) {
            slot.push_object(0, &[n as u8; 100]).unwrap();
            slot.send().unwrap();
            n += 1;
        }
        assert!(n > 0);
        assert!(matches!(
            w.allocate_for_send_timeout(size, 0, 1, true, LONG),
            Err(SendError::Dropped)
        ));
        assert!(matches!(
            w.allocate_for_send_timeout(size, 0, 1, false, Duration::from_millis(20)),
            Err(SendError::Timeout)
        ));
        for i in 0..n {
            let m = r.try_receive().unwrap().unwrap();
            assert_eq!(m.message_id(), i);
            assert_eq!(m.object(0).unwrap(), &[i as u8; 100][..]);
        }
    }

    pub fn too_large_is_refused_and_ring_still_works(make: fn(u64) -> Ring) {
        let ring = make(64 * 1024);
        let w = ring.writer();
        let mut r = ring.reader().unwrap();
        let err = w.try_allocate_for_send(64 * 1024, 1, 1, false).unwrap_err();
        assert_eq!(
            err,
            TrySendError::TooLarge {
                size: 64 * 1024 + 48,
                max: 64 * 1024 - 512
            }
        );
        assert!(
            err.to_string().contains("65584") && err.to_string().contains("65024"),
            "{err}"
        );
        // The largest message that fits, fits.
        let max_data = ring.max_message() - 48 - 16;
        let payload = vec![3u8; max_data as usize];
        w.send_objects(1, Kind::Raw, &[(0, &payload)], LONG)
            .unwrap();
        assert_eq!(
            r.try_receive().unwrap().unwrap().object(0).unwrap().len(),
            payload.len()
        );
    }

    pub fn blocking_send_waits_for_the_reader(make: fn(u64) -> Ring) {
        let ring = make(8192);
        let w = ring.writer();
        let mut r = ring.reader().unwrap();
        let t = std::thread::spawn(move || {
            for i in 0..2000u64 {
                w.send_objects(i, Kind::Raw, &[(0, &[i as u8; 700])], LONG)
                    .unwrap();
            }
        });
        with_watchdog(LONG, move || {
            for i in 0..2000u64 {
                let m = r.receive_timeout(LONG).unwrap();
                assert_eq!(m.message_id(), i);
            }
            t.join().unwrap();
        });
    }
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod over_heap {
            $( #[test] fn $test() { super::suite::$test(super::heap) } )*
        }
        mod over_memfd {
            $( #[test] fn $test() { super::suite::$test(super::memfd) } )*
        }
    };
}

conformance!(
    round_trip_every_size,
    fifo_through_many_wraps,
    four_producers_one_consumer,
    full_then_no_queue_drops_then_blocking_times_out,
    too_large_is_refused_and_ring_still_works,
    blocking_send_waits_for_the_reader,
);

/// The ring's memfd as a file, to read and write its bytes from outside the
/// ring's own code (as another process would).
fn ring_file(ring: &Ring) -> File {
    File::from(ring.fd().unwrap().try_clone_to_owned().unwrap())
}

#[test]
fn small_messages_keep_a_64mib_ring_at_one_page_and_a_10mib_message_grows_it() {
    let ring = memfd(64 << 20);
    let w = ring.writer();
    let mut r = ring.reader().unwrap();
    for i in 0..100_000u64 {
        w.send_objects(i, Kind::Raw, &[(0, &[i as u8; 100])], LONG)
            .unwrap();
        assert_eq!(r.try_receive().unwrap().unwrap().message_id(), i);
    }
    let allocated = ring.allocated_bytes().unwrap();
    eprintln!(
        "64 MiB ring after 100,000 100-byte messages: capacity {} B, memfd allocated {} B",
        ring.capacity(),
        allocated
    );
    assert!(ring.capacity() <= 8192, "capacity {}", ring.capacity());
    assert!(allocated <= 8192, "allocated {allocated}");

    let big = vec![0x5au8; 10 << 20];
    w.send_objects(1, Kind::Raw, &[(0, &big)], LONG).unwrap();
    assert!(ring.capacity() >= 10 << 20);
    let m = r.try_receive().unwrap().unwrap();
    assert!(m.object(0).unwrap() == &big[..]);
    drop(m);
    let allocated = ring.allocated_bytes().unwrap();
    eprintln!(
        "after one 10 MiB message: capacity {} B, memfd allocated {allocated} B",
        ring.capacity()
    );
    assert!(allocated >= 10 << 20);
}

/// The same ring mapped a second time, as the peer process maps it.
fn reopen(ring: &Ring, max: u64) -> Result<Ring, shm_channel::ring::RingError> {
    Ring::open_memfd(ring.fd().unwrap().try_clone_to_owned().unwrap(), max, LONG)
}

#[test]
fn reader_in_another_mapping_follows_growth() {
    let ring = memfd(4 << 20);
    let other = reopen(&ring, 4 << 20).unwrap();
    let w = ring.writer();
    let mut r = other.reader().unwrap();
    let big = vec![9u8; 1 << 20];
    w.send_objects(5, Kind::Raw, &[(0, &big)], LONG).unwrap();
    let m = r.try_receive().unwrap().unwrap();
    assert_eq!(m.object(0).unwrap(), &big[..]);
}

#[test]
fn open_refuses_a_larger_maximum_than_expected() {
    let ring = memfd(1 << 20);
    let err = reopen(&ring, 1 << 16).unwrap_err();
    assert!(err.to_string().contains("maximum"), "{err}");
}

/// Random bytes over the header and the messages: the reader and the writer
/// only ever return errors or validated messages; no panic, no hang, no
/// access outside the region (which would crash the test).
#[test]
fn hostile_contents_only_give_errors() {
    // HOSTILE_ROUNDS overrides the count for longer local runs.
    let rounds: u64 = std::env::var("HOSTILE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    with_watchdog(Duration::from_secs(300), move || {
        let ring = memfd(16 * 1024);
        let file = ring_file(&ring);
        let mut rng = Rng(0xbad);
        let mut garbage = vec![0u8; 16 * 1024];
        let (mut errors, mut messages) = (0u64, 0u64);
        for round in 0..rounds {
            // A valid state to start from: a few messages, some read.
            file.write_at(&vec![0u8; 16 * 1024 - 512], 512).unwrap();
            reset_header(&file);
            let w = ring.writer();
            for i in 0..rng.below(6) {
                let _ = w.send_objects(i, Kind::Raw, &[(0, &[1u8; 300])], Duration::ZERO);
            }
            // Garbage: everywhere (must give no message), or a few spans.
            let everywhere = round % 4 == 0;
            if everywhere {
                rng.fill(&mut garbage);
                file.write_at(&garbage[128..4096], 128).unwrap();
            } else {
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(4096);
                    let len = 1 + rng.below(64) as usize;
                    rng.fill(&mut garbage[..len]);
                    file.write_at(&garbage[..len], at).unwrap();
                }
            }
            let fd: OwnedFd = file.try_clone().unwrap().into();
            let Ok(opened) = Ring::open_memfd(fd, 16 * 1024, Duration::ZERO) else {
                errors += 1;
                continue;
            };
            let Ok(mut r) = opened.reader() else {
                errors += 1;
                continue;
            };
            for _ in 0..16 {
                match r.try_receive() {
                    Ok(Some(m)) => {
                        assert!(
                            !everywhere || m.bytes().is_empty(),
                            "garbage accepted as a message"
                        );
                        // What the reader hands out validates.
                        assert!(layout::MessageView::parse(m.bytes()).is_ok());
                        messages += 1;
                    }
                    Ok(None) => break,
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            // The writer side facing the same garbage.
            let _ = opened.writer().try_allocate_for_send(64, 1, 1, false);
        }
        eprintln!("hostile: {rounds} rounds, {errors} errors, {messages} valid messages");
        assert!(errors > rounds / 4, "garbage everywhere must give errors");
    });
}

/// Rewrites a fresh header (positions at the start, one page) through the file.
fn reset_header(file: &File) {
    let mut header = vec![0u8; 512];
    let h = layout::RingHeader {
        protocol_version: 1,
        protocol_name: "Conformance".into(),
        max_size: 16 * 1024,
    };
    h.encode(&mut header, 4096).unwrap();
    header[..8].copy_from_slice(&shm_channel::layout::RING_INITIALIZED.to_le_bytes());
    file.write_at(&header, 0).unwrap();
}

// ---- crashes: real child processes killed with SIGKILL ----

const RING_PATH_ENV: &str = "SHM_CHANNEL_RING_PATH";

/// The path through which a child process opens `ring`'s memfd.
fn proc_fd_path(ring: &Ring) -> String {
    format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        ring.fd().unwrap().as_raw_fd()
    )
}

/// The child side: maps the parent's ring through the path it was given.
fn open_parent_ring() -> Ring {
    let path = std::env::var(RING_PATH_ENV).unwrap();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    Ring::open_memfd(file.into(), 1 << 20, LONG).unwrap()
}

/// The child side: opens the parent's ring through /proc and does what its
/// role says, then waits to be killed.
#[test]
fn crash_child() {
    let Some(role) = child_role() else { return };
    let ring = open_parent_ring();
    let w = ring.writer();
    match role.as_str() {
        "hold-lock" => {
            shm_channel::ring::testing::hold_spinlock_forever(&w);
            println!("locked");
        }
        "allocate" => {
            let mut slot = w
                .try_allocate_for_send(object_size(5).unwrap(), 42, 1, false)
                .unwrap();
            slot.push_object(0, b"never").unwrap();
            std::mem::forget(slot); // dies before send
            println!("allocated");
        }
        other => panic!("unknown role {other}"),
    }
    std::thread::sleep(Duration::from_secs(60));
}

fn spawn_crash_child(ring: &Ring, role: &str) -> ChildGuard {
    let mut child = ChildGuard::spawn("crash_child", role, &[(RING_PATH_ENV, proc_fd_path(ring))]);
    child.wait_for_line(if role == "hold-lock" {
        "locked"
    } else {
        "allocated"
    });
    child
}

#[test]
fn writer_killed_holding_the_spinlock_is_recovered() {
    let ring = memfd(1 << 20);
    let child = spawn_crash_child(&ring, "hold-lock");
    let w = ring.writer();
    let mut r = ring.reader().unwrap();
    let pid = child.id();
    let status = child.kill9();
    assert!(!status.success());
    let start = Instant::now();
    with_watchdog(Duration::from_secs(10), move || {
        w.send_objects(1, Kind::Raw, &[(0, b"after")], LONG)
            .unwrap();
    });
    eprintln!(
        "lock of dead pid {pid} recovered after {:?}",
        start.elapsed()
    );
    assert_eq!(
        r.try_receive().unwrap().unwrap().object(0).unwrap(),
        b"after"
    );
}

#[test]
fn writer_killed_with_an_allocated_message_is_reported_and_skipped() {
    let ring = memfd(1 << 20);
    let child = spawn_crash_child(&ring, "allocate");
    let w = ring.writer();
    w.send_objects(7, Kind::Raw, &[(0, b"behind")], LONG)
        .unwrap();
    let mut r = ring.reader().unwrap();
    assert!(
        r.try_receive().unwrap().is_none(),
        "the reservation holds the line"
    );
    let pid = child.id();
    child.kill9();
    let err = with_watchdog(Duration::from_secs(10), move || {
        let e = r.receive_timeout(LONG).unwrap_err();
        let m = r.receive_timeout(LONG).unwrap();
        assert_eq!(m.object(0).unwrap(), b"behind");
        e
    });
    assert_eq!(
        err,
        RecvError::WriterDied {
            pid,
            message_id: 42
        }
    );
}

// ---- waiting: adaptive spin, then parking on the doorbells ----

mod parking {
    use super::*;
    use shm_channel::ring::WaitPolicy;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;

    /// A doorbell fd as a channel would create it.
    fn eventfd() -> OwnedFd {
        rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .unwrap()
    }

    /// Reader and writer on two threads, both parking at once (no spin):
    /// every message and every "room again" goes through a wake-up.
    fn ping_pong_parked(ring: Ring) {
        let stats = ring.clone();
        let mut w = ring.writer();
        w.set_wait_policy(WaitPolicy::PARK);
        let mut r = ring.reader().unwrap();
        r.set_wait_policy(WaitPolicy::PARK);
        let sender = std::thread::spawn(move || {
            for i in 0..300u64 {
                if i % 50 == 0 {
                    // Let the reader fall asleep now and then.
                    std::thread::sleep(Duration::from_millis(5));
                }
                w.send_objects(i, Kind::Raw, &[(0, &[i as u8; 1500])], LONG)
                    .unwrap();
            }
        });
        with_watchdog(LONG, move || {
            for i in 0..300u64 {
                let m = r.receive_timeout(LONG).unwrap();
                assert_eq!(m.message_id(), i);
                drop(m);
                if i % 97 == 0 {
                    // Let the ring fill up: the writer parks for room.
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            sender.join().unwrap();
        });
        // Every sleep ended by a ring: a lost wake-up would show as a sleep
        // that ran into its (250 ms) periodic timeout.
        let s = stats.wait_stats();
        eprintln!("{s:?}");
        assert!(s.parks >= 6 && s.rings >= 6, "{s:?}");
        assert_eq!(s.park_timeouts, 0, "{s:?}");
    }

    #[test]
    fn futex_doorbells_wake_reader_and_writer() {
        ping_pong_parked(heap(8192));
        ping_pong_parked(memfd(8192));
    }

    #[test]
    fn eventfd_doorbells_wake_reader_and_writer() {
        let ring = heap(8192);
        ring.attach_doorbells(eventfd(), eventfd(), None).unwrap();
        assert!(ring.attach_doorbells(eventfd(), eventfd(), None).is_err());
        ping_pong_parked(ring);
    }

    #[test]
    fn peer_death_ends_a_parked_receive_after_what_it_sent() {
        let ring = memfd(1 << 16);
        let (ours, theirs) = UnixStream::pair().unwrap();
        ring.attach_doorbells(eventfd(), eventfd(), Some(ours.into()))
            .unwrap();
        let w = ring.writer();
        let mut r = ring.reader().unwrap();
        w.send_objects(1, Kind::Raw, &[(0, b"last words")], LONG)
            .unwrap();
        let peer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            drop(theirs); // the peer's process ends: its socket closes
        });
        let (first, then) = with_watchdog(LONG, move || {
            let first = r
                .receive_timeout(LONG)
                .map(|m| m.object(0).unwrap().to_vec());
            let then = r.receive_timeout(LONG).map(|m| m.message_id());
            (first, then)
        });
        peer.join().unwrap();
        assert_eq!(first.unwrap(), b"last words");
        assert_eq!(then.unwrap_err(), RecvError::PeerDied);
    }

    #[test]
    fn writer_waiting_for_room_sees_peer_death() {
        let ring = memfd(4096);
        let (ours, theirs) = UnixStream::pair().unwrap();
        ring.attach_doorbells(eventfd(), eventfd(), Some(ours.into()))
            .unwrap();
        let w = ring.writer();
        let _r = ring.reader().unwrap();
        while w
            .try_allocate_for_send(object_size(500).unwrap(), 0, 1, false)
            .map(|mut s| {
                s.push_object(0, &[0; 500]).unwrap();
                s.send().unwrap();
            })
            .is_ok()
        {}
        drop(theirs);
        let err = with_watchdog(LONG, move || {
            w.send_objects(9, Kind::Raw, &[(0, &[0; 500])], LONG)
                .unwrap_err()
        });
        assert_eq!(err, SendError::PeerDied);
    }

    #[test]
    fn an_idle_parked_receiver_burns_no_cpu() {
        let ring = memfd(1 << 16);
        let _w = ring.writer();
        let mut r = ring.reader().unwrap();
        let ticks = with_watchdog(LONG, move || {
            let before = thread_cpu_ticks();
            assert_eq!(
                r.receive_timeout(Duration::from_secs(1)).unwrap_err(),
                RecvError::Timeout
            );
            thread_cpu_ticks() - before
        });
        eprintln!("idle receive of 1 s used {ticks} ticks (10 ms each) of CPU");
        // The default spin is at most 100 µs; parking wakes 4 times a second.
        assert!(
            ticks <= 5,
            "an idle receiver used {ticks} ticks of CPU in one second"
        );
    }

    /// Child for the cross-process test: sends slowly through the parent's ring.
    #[test]
    fn slow_sender_child() {
        if support::child_role().as_deref() != Some("slow-sender") {
            return;
        }
        let ring = open_parent_ring();
        let w = ring.writer();
        for i in 0..20u64 {
            std::thread::sleep(Duration::from_millis(3));
            w.send_objects(i, Kind::Raw, &[(0, &i.to_le_bytes())], LONG)
                .unwrap();
        }
    }

    #[test]
    fn a_parked_reader_is_woken_by_a_writer_in_another_process() {
        let ring = memfd(1 << 20);
        let mut r = ring.reader().unwrap();
        r.set_wait_policy(WaitPolicy::PARK);
        let child = ChildGuard::spawn(
            "parking::slow_sender_child",
            "slow-sender",
            &[(RING_PATH_ENV, proc_fd_path(&ring))],
        );
        let got = with_watchdog(LONG, move || {
            (0..20u64)
                .map(|_| r.receive_timeout(LONG).unwrap().message_id())
                .collect::<Vec<_>>()
        });
        assert_eq!(got, (0..20).collect::<Vec<_>>());
        assert!(child.wait().success());
    }
}
