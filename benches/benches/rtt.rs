//! Round trips between two processes (issues 3 and 6): the client (this
//! bench) sends a payload, a server in a **separate process** (this binary
//! re-executed, see `benches::echo`) reads it and echoes it, the client reads
//! the echo. Payloads of 8 B, 64 B, 1 KiB and 64 KiB are written and read on
//! both sides by every contender:
//!
//! - `raw-spin`: a bare atomic ping-pong on shared pages, no library (the
//!   physical limit);
//! - `shm-spin`, `shm-park`, `shm-park-nospin`: a shm-channel `Channel` with
//!   both sides on `WaitPolicy::SPIN`, the default adaptive spin-then-park,
//!   and `WaitPolicy::PARK` (a kernel wake-up per message);
//! - `iceoryx2` (publish-subscribe, polling) and `ipc-channel` (byte
//!   channels);
//! - `uds`, `pipe`, `tcp` (loopback, `TCP_NODELAY`): blocking byte streams
//!   with length-prefixed frames.
//!
//! Placements (`BENCH_PLACEMENTS`, default `unpinned,crosscore,samecore`;
//! `QUICK=1`: `crosscore,samecore`): `crosscore` pins the client to the
//! first allowed CPU and the server to the second, `samecore` both to the
//! first (ids with `-crosscore`, `-samecore`).
//!
//! One criterion iteration is one round trip, timed on its own, so besides
//! criterion's estimates every case writes latency percentiles from an HDR
//! histogram to `<target>/criterion/rtt/<id>/<size>/percentiles.json`. The
//! histogram is reset when criterion's warm-up ends (the first call with
//! fewer iterations than the one before), so it covers the measurement.
//!
//! Run: `cargo bench -p benches --bench rtt` (filter as usual, e.g.
//! `-- shm-spin/`); `QUICK=1` for short samples.
#![forbid(unsafe_code)]

use std::time::Duration;

use benches::echo::{self, Client, Contender, Mode, Options};
use benches::percentiles::{self, Recorder};
use benches::settings;
use criterion::{BenchmarkId, Criterion, Throughput};

/// Payload sizes, bytes.
const SIZES: [usize; 4] = [8, 64, 1 << 10, 64 << 10];
/// Criterion's group: the first directory under `target/criterion`.
const GROUP: &str = "rtt";

/// Runs `iters` round trips of `len` bytes; returns their total time and
/// records each one.
fn batch(client: &mut Client, len: usize, iters: u64, rec: &mut Recorder) -> Duration {
    rec.batch(iters, |each| client.round_trips(len, iters, each))
        .unwrap_or_else(|e| panic!("rtt: round trip of {len} bytes failed: {e}"))
}

fn rtt(c: &mut Criterion) {
    let placements = settings::placements().expect("rtt: BENCH_PLACEMENTS");
    eprintln!(
        "rtt: this process may run on CPUs {:?}",
        echo::allowed_cpus().unwrap_or_default()
    );
    let max = SIZES.into_iter().max().unwrap_or(8);
    let mut group = settings::group(c, GROUP);
    settings::record_run(GROUP, false).expect("recording the run");
    for placement in placements {
        eprintln!("rtt: placement {}", placement.describe());
        // The client's CPU now; the server's is set when it starts.
        let before = echo::pin_client(placement).expect("rtt: pinning the client");
        for contender in Contender::ALL {
            let id = format!("{}{}", contender.id(), placement.suffix());
            // Started by the first case that runs (a filter may skip them
            // all), then shared by this contender's sizes.
            let mut client: Option<Client> = None;
            for len in SIZES {
                let mut rec = Recorder::new();
                // Bytes through the transport per round trip: both ways.
                group.throughput(Throughput::Bytes(2 * len as u64));
                group.bench_with_input(BenchmarkId::new(&id, len), &len, |b, &len| {
                    let client = client.get_or_insert_with(|| {
                        Client::start(contender, placement, Options::new(Mode::Echo, max))
                            .unwrap_or_else(|e| panic!("rtt: starting {id}: {e}"))
                    });
                    b.iter_custom(|iters| batch(client, len, iters, &mut rec));
                });
                if rec.hist.is_empty() {
                    continue;
                }
                let notes = [
                    ("contender", contender.id().to_owned()),
                    ("placement", placement.describe()),
                    ("payload_bytes", len.to_string()),
                    ("warm_up_excluded", rec.measuring.to_string()),
                ];
                match percentiles::write(GROUP, &id, &len.to_string(), &rec.hist, &notes) {
                    Ok(path) => eprintln!(
                        "rtt: {id}/{len}: p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns ({} round trips) -> {}",
                        rec.hist.value_at_quantile(0.5),
                        rec.hist.value_at_quantile(0.99),
                        rec.hist.value_at_quantile(0.999),
                        rec.hist.max(),
                        rec.hist.len(),
                        path.display()
                    ),
                    Err(e) => panic!("rtt: writing the percentiles of {id}/{len}: {e}"),
                }
            }
            if let Some(client) = client
                && let Err(e) = client.finish()
            {
                panic!("rtt: {id}: {e}");
            }
        }
        echo::restore_affinity(before).expect("rtt: restoring the CPU affinity");
    }
    group.finish();
    settings::record_run(GROUP, true).expect("recording the run");
}

fn main() {
    // Re-executed as a contender's echo server: serve, then exit.
    if let Some(code) = echo::serve_if_peer() {
        std::process::exit(code);
    }
    let mut c = Criterion::default().configure_from_args();
    rtt(&mut c);
    c.final_summary();
}
