//! One-way streaming through one memfd ring between two threads (issue 2's
//! benchmark): a producer thread reserves, fills and sends messages of one
//! object each; the bench thread receives them and reads their payload.
//!
//! One criterion iteration is one message, so `Throughput::ElementsAndBytes`
//! reports messages/s and payload bytes/s side by side. The producer thread
//! lives for the whole of one payload size and is told how many messages to
//! send per batch over a channel, so thread spawning stays out of the
//! measurement; a batch is timed from the order to the last message received.
//!
//! Run: `cargo bench -p benches --bench ring`.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shm_channel::layout::object_size;
use shm_channel::{Ring, RingConfig, RingReader, RingWriter};

/// The ring's maximum: room for dozens of the largest messages in flight.
const RING_MAX: u64 = 4 << 20;
/// Payload sizes (one object per message).
const SIZES: [u64; 3] = [64, 4 << 10, 64 << 10];
/// Message id of the benchmark's messages.
const MESSAGE_ID: u64 = 1;
/// Object id of the payload.
const OBJECT_ID: u64 = 0;
/// A stuck peer should fail the bench, not hang it; nothing healthy waits
/// this long for one message.
const STUCK: Duration = Duration::from_secs(10);

/// Sends `count` messages of `payload` bytes, numbered from `first`.
///
/// The payload is written for real, in place: the sequence number in its
/// first 8 bytes and a fill byte in the rest (a `memset`, the cheapest honest
/// way to produce `payload` bytes).
fn produce(writer: &RingWriter, payload: u64, first: u64, count: u64) {
    // Cannot overflow: `payload` is one of `SIZES`.
    let size = object_size(payload).unwrap_or(u64::MAX);
    for seq in first..first + count {
        let mut slot = writer
            .allocate_for_send_timeout(size, MESSAGE_ID, 1, false, STUCK)
            .expect("bench producer: reserving a message failed");
        let data = slot
            .object_mut(OBJECT_ID, payload)
            .expect("bench producer: the reservation fits one object");
        data.fill(seq as u8);
        data[..8].copy_from_slice(&seq.to_le_bytes());
        slot.send().expect("bench producer: sending failed");
    }
}

/// Receives `count` messages numbered from `first`, checks each sequence
/// number (so a lost or duplicated message fails the bench) and reads the
/// last payload byte; returns a value the optimiser cannot drop.
fn consume(reader: &mut RingReader, first: u64, count: u64) -> u64 {
    let mut sink = 0u64;
    for expected in first..first + count {
        let msg = reader
            .receive_timeout(STUCK)
            .expect("bench consumer: no message within the stuck timeout");
        let data = msg
            .object(OBJECT_ID)
            .expect("bench consumer: the message carries its payload object");
        let seq = data
            .first_chunk::<8>()
            .map(|b| u64::from_le_bytes(*b))
            .expect("bench consumer: payloads are at least 8 bytes");
        assert_eq!(seq, expected, "bench consumer: message lost or reordered");
        sink = sink.wrapping_add(u64::from(data[data.len() - 1]));
    }
    sink
}

fn two_threads_one_way(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring_two_threads_one_way");
    // Two cores shared with other work: few, long-enough samples.
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));

    for payload in SIZES {
        let config = RingConfig::new("bench", RING_MAX);
        let ring = Ring::create_memfd("bench-ring", &config).expect("creating the bench ring");
        let mut reader = ring.reader().expect("the first reader of a new ring");
        let writer = ring.writer();

        // The producer waits for a batch size, sends that many messages and
        // waits again; it ends when the order channel closes.
        let (orders, order_rx) = mpsc::channel::<(u64, u64)>();
        let producer = thread::spawn(move || {
            while let Ok((first, count)) = order_rx.recv() {
                produce(&writer, payload, first, count);
            }
        });

        let mut next = 0u64;
        group.throughput(Throughput::ElementsAndBytes {
            elements: 1,
            bytes: payload,
        });
        group.bench_function(BenchmarkId::from_parameter(payload), |b| {
            b.iter_custom(|iters| {
                let first = next;
                next += iters;
                let start = Instant::now();
                orders
                    .send((first, iters))
                    .expect("bench: the producer thread is alive");
                black_box(consume(&mut reader, first, iters));
                start.elapsed()
            });
        });

        drop(orders);
        producer.join().expect("bench producer thread panicked");
        // Context for reading the numbers: how big the ring grew, and how
        // often a side slept (each sleep costs its peer a wake-up call).
        let waits = ring.wait_stats();
        eprintln!(
            "ring after {payload}-byte messages: capacity {} B of {} B max, \
             memfd allocated {:?} B; sleeps {} (timed out {}), wake-ups {}",
            ring.capacity(),
            ring.max_size(),
            ring.allocated_bytes(),
            waits.parks,
            waits.park_timeouts,
            waits.rings
        );
    }
    group.finish();
}

criterion_group!(benches, two_threads_one_way);
criterion_main!(benches);
