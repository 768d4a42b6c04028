//! What a gateway pair adds to a call (issue 8): the same small `echo` call
//! made directly over shm, directly over the network (QUIC, TCP + TLS) to a
//! `NetServer`, through gateway B alone (QUIC), and through both gateways
//! (shm → gateway A → QUIC → gateway B → shm). The service and both gateways
//! are separate processes (this binary re-executed, see
//! `benches::gateway_peer`); nothing is pinned (five processes on the
//! machine's CPUs).
//!
//! One criterion iteration is one call, timed on its own, with HDR
//! percentiles in `<target>/criterion/gateway/<case>/<size>/percentiles.json`;
//! `cargo run -p benches --bin report` renders the added latency (p50, p99)
//! and the ratios into `docs/BENCHMARKS.md` (section `gateway`).
//!
//! Run: `QUICK=1 cargo bench -p benches --bench gateway` (about a minute).
#![forbid(unsafe_code)]

use benches::gateway_peer::{GatewayBench, GwCase};
use benches::percentiles::{self, Recorder};
use benches::settings;
use criterion::{BenchmarkId, Criterion, Throughput};

/// Criterion's group: the first directory under `target/criterion`.
const GROUP: &str = "gateway";
/// Payloads, bytes.
const SIZES: [usize; 2] = [8, 64 << 10];

fn gateway(c: &mut Criterion) {
    let mut group = settings::group(c, GROUP);
    settings::record_run(GROUP, false).expect("recording the run");
    // Started by the first case that runs (a filter may skip them all).
    let mut bench: Option<GatewayBench> = None;
    for case in GwCase::ALL {
        let id = case.id();
        for len in SIZES {
            let mut rec = Recorder::new();
            group.throughput(Throughput::Bytes(2 * len as u64));
            group.bench_with_input(BenchmarkId::new(id, len), &len, |b, &len| {
                let bench = bench.get_or_insert_with(|| {
                    GatewayBench::start().unwrap_or_else(|e| panic!("gateway: starting: {e}"))
                });
                b.iter_custom(|iters| {
                    rec.batch(iters, |each| bench.round_trips(case, len, iters, each))
                        .unwrap_or_else(|e| panic!("gateway: {id}/{len}: {e}"))
                });
            });
            if rec.hist.is_empty() {
                continue;
            }
            let notes = [
                ("case", id.to_owned()),
                ("placement", "unpinned".to_owned()),
                ("warm_up_excluded", rec.measuring.to_string()),
            ];
            match percentiles::write(GROUP, id, &len.to_string(), &rec.hist, &notes) {
                Ok(_) => eprintln!(
                    "gateway: {id}/{len}: p50 {} ns, p99 {} ns ({} calls)",
                    rec.hist.value_at_quantile(0.5),
                    rec.hist.value_at_quantile(0.99),
                    rec.hist.len()
                ),
                Err(e) => panic!("gateway: writing the percentiles of {id}/{len}: {e}"),
            }
        }
    }
    group.finish();
    if let Some(bench) = bench {
        bench
            .finish()
            .unwrap_or_else(|e| panic!("gateway: finishing: {e}"));
    }
    settings::record_run(GROUP, true).expect("recording the run");
}

fn main() {
    // Re-executed as the service or a gateway: serve, then exit.
    if let Some(code) = benches::gateway_peer::serve_if_gateway_peer() {
        std::process::exit(code);
    }
    let mut c = Criterion::default().configure_from_args();
    gateway(&mut c);
    c.final_summary();
}
