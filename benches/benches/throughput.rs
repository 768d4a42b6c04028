//! One-way streaming between two processes (issue 6): the client (this
//! bench) writes and sends messages of 64 B, 4 KiB, 64 KiB and 1 MiB as
//! fast as the transport takes them; a server in a **separate process**
//! (this binary re-executed, see `benches::echo`, `Mode::Stream`) reads and
//! checks every byte of every message. The last message of each batch asks
//! for an acknowledgement, and the batch ends when it arrives, so a batch
//! is timed from its first send to the server having read everything.
//!
//! One criterion iteration is one message (`Throughput::Bytes`: bytes/s;
//! messages/s is that over the size). The contenders are those of `rtt`
//! (`raw-spin` is a bare single-producer ring of atomic words here), plus
//! `memcpy`: one `copy_from_slice` of the message's bytes in this process,
//! the yardstick of the large messages.
//!
//! Placements as in `rtt` (`BENCH_PLACEMENTS`, `QUICK=1`).
//!
//! Run: `cargo bench -p benches --bench throughput`.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use benches::echo::{self, Client, Contender, Mode, Options};
use benches::settings;
use criterion::{BenchmarkId, Criterion, Throughput};

/// Message sizes, bytes.
const SIZES: [usize; 4] = [64, 4 << 10, 64 << 10, 1 << 20];
/// Criterion's group: the first directory under `target/criterion`.
const GROUP: &str = "throughput";

fn throughput(c: &mut Criterion) {
    let placements = settings::placements().expect("throughput: BENCH_PLACEMENTS");
    let max = SIZES.into_iter().max().unwrap_or(64);
    let mut group = settings::group(c, GROUP);
    settings::record_run(GROUP, false).expect("recording the run");
    for placement in placements {
        eprintln!("throughput: placement {}", placement.describe());
        let before = echo::pin_client(placement).expect("throughput: pinning the client");
        let memcpy_id = format!("memcpy{}", placement.suffix());
        for len in SIZES {
            group.throughput(Throughput::Bytes(len as u64));
            let src = vec![0x5au8; len];
            let mut dst = vec![0u8; len];
            group.bench_with_input(BenchmarkId::new(&memcpy_id, len), &len, |b, _| {
                b.iter(|| {
                    dst.copy_from_slice(black_box(&src));
                    black_box(&mut dst);
                });
            });
        }
        for contender in Contender::ALL {
            let id = format!("{}{}", contender.id(), placement.suffix());
            let mut client: Option<Client> = None;
            for len in SIZES {
                group.throughput(Throughput::Bytes(len as u64));
                group.bench_with_input(BenchmarkId::new(&id, len), &len, |b, &len| {
                    let client = client.get_or_insert_with(|| {
                        Client::start(contender, placement, Options::new(Mode::Stream, max))
                            .unwrap_or_else(|e| panic!("throughput: starting {id}: {e}"))
                    });
                    b.iter_custom(|iters| batch(client, len, iters));
                });
            }
            if let Some(client) = client
                && let Err(e) = client.finish()
            {
                panic!("throughput: {id}: {e}");
            }
        }
        echo::restore_affinity(before).expect("throughput: restoring the CPU affinity");
    }
    group.finish();
    settings::record_run(GROUP, true).expect("recording the run");
}

/// Streams `iters` messages of `len` bytes; returns the time until the
/// server acknowledged the last.
fn batch(client: &mut Client, len: usize, iters: u64) -> Duration {
    let start = Instant::now();
    if let Err(e) = client.stream(len, iters) {
        panic!("throughput: streaming {iters} messages of {len} bytes failed: {e}");
    }
    start.elapsed()
}

fn main() {
    // Re-executed as a contender's server: serve, then exit.
    if let Some(code) = echo::serve_if_peer() {
        std::process::exit(code);
    }
    let mut c = Criterion::default().configure_from_args();
    throughput(&mut c);
    c.final_summary();
}
