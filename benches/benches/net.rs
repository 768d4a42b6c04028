//! The network connectors (issues 7 and 8) over loopback, the server always
//! in a **separate process** (this binary re-executed, see
//! `benches::net_peer`):
//!
//! - `rtt-<contender>`: round trips of 8 B, 1 KiB and 64 KiB, each payload
//!   written, checked and echoed (a copy) by the server, checked by the
//!   client; one criterion iteration is one call, timed on its own, with HDR
//!   percentiles in `<target>/criterion/net/<id>/<size>/percentiles.json`;
//! - `thr-<contender>`: one-way streaming of 64 KiB and 1 MiB messages, each
//!   read and checked by the server, a batch ending when the server answered
//!   that it read the last (one criterion iteration is one message);
//! - `busy-<contender>` (`rpc-*` only): the 8-byte call while a 1 GiB
//!   one-way message (256 MiB with `QUICK=1`) is being written on the same
//!   connection (frames of up to 16 messages go out interleaved), against
//!   `rtt-<contender>/8`, the idle call on the same client.
//!
//! Contenders: `bare-tcp` (a bare tokio TCP echo, length-prefixed, the
//! yardstick), `rpc-tcp` (`rpc::Client` over a TCP `NetClient`), `rpc-tcp-lz4`
//! (LZ4 per frame: the bench's payloads are a sequence number and a fill
//! byte, so this is compression's best case), `rpc-tls` (TLS 1.3 over TCP),
//! `rpc-quic` (the same client over QUIC). Targets: the RPC client's streaming at least 80% of the bare
//! echo's bytes/s; the call during the huge transfer at most 3x the idle
//! call (p50). Ratios are printed and written to
//! `<target>/criterion/net/ratios.json`; `cargo run -p benches --bin report`
//! puts them in `docs/BENCHMARKS.md` (section `net`).
//!
//! Placements (`BENCH_PLACEMENTS`): `crosscore` (client process on the first
//! allowed CPU, server process on the second; every thread of each process
//! follows it), and in the full run also `unpinned`. `QUICK=1`: short
//! samples, `crosscore` only, the whole bench in about two minutes.
//! `NET_BENCH_BIG` overrides the huge message's size (bytes).
//!
//! Run: `cargo bench -p benches --bench net` (filter as usual, e.g.
//! `-- busy-`); build it with the release profile's optimisations, as all
//! benches are.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use benches::echo::{self, Placement};
use benches::net_peer::{NetBench, NetContender, Options};
use benches::percentiles::{self, Recorder};
use benches::settings;
use criterion::{BenchmarkId, Criterion, Throughput};

/// Criterion's group: the first directory under `target/criterion`.
const GROUP: &str = "net";
/// Round-trip payloads, bytes.
const RTT_SIZES: [usize; 3] = [8, 1 << 10, 64 << 10];
/// Streamed message sizes, bytes.
const THR_SIZES: [usize; 2] = [64 << 10, 1 << 20];
/// The small call of the busy case.
const SMALL: usize = 8;
/// The huge message in flight during the busy case (`QUICK=1`: 256 MiB,
/// so that the whole bench stays near two minutes).
const BIG: usize = 1 << 30;
const BIG_QUICK: usize = 256 << 20;
/// Target: the RPC client's streaming at least this share of the bare echo's.
const THROUGHPUT_TARGET: f64 = 0.8;
/// Target: the call during the huge transfer at most this many times the idle one.
const BUSY_TARGET: f64 = 3.0;

/// The placements: `BENCH_PLACEMENTS`, else `crosscore` (and `unpinned` in
/// the full run). `samecore` would put every thread of both processes on one
/// CPU: not a way anyone runs a network service.
fn placements() -> Vec<Placement> {
    let list = std::env::var("BENCH_PLACEMENTS").unwrap_or_else(|_| {
        if settings::quick() {
            "crosscore".to_owned()
        } else {
            "crosscore,unpinned".to_owned()
        }
    });
    Placement::parse_list(&list).expect("net: BENCH_PLACEMENTS")
}

/// Bytes per second of a streaming case, over its measurement (criterion's
/// warm-up excluded, as [`Recorder`] does).
#[derive(Default)]
struct Meter {
    last_iters: u64,
    measuring: bool,
    bytes: u64,
    time: Duration,
}

impl Meter {
    fn add(&mut self, iters: u64, bytes: u64, time: Duration) {
        if !self.measuring && iters < self.last_iters {
            self.measuring = true;
            self.bytes = 0;
            self.time = Duration::ZERO;
        }
        self.last_iters = iters;
        self.bytes += bytes;
        self.time += time;
    }

    fn rate(&self) -> f64 {
        self.bytes as f64 / self.time.as_secs_f64().max(1e-12)
    }
}

/// What the cases measured, by criterion id and size: the p50 of a call
/// (ns) or the bytes per second of a stream.
#[derive(Default)]
struct Measured {
    p50: HashMap<(String, usize), u64>,
    rate: HashMap<(String, usize), f64>,
}

fn write_percentiles(id: &str, len: usize, rec: &Recorder, notes: &[(&str, String)]) -> u64 {
    let p50 = rec.hist.value_at_quantile(0.5);
    match percentiles::write(GROUP, id, &len.to_string(), &rec.hist, notes) {
        Ok(_) => eprintln!(
            "net: {id}/{len}: p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns ({} calls)",
            p50,
            rec.hist.value_at_quantile(0.99),
            rec.hist.value_at_quantile(0.999),
            rec.hist.max(),
            rec.hist.len()
        ),
        Err(e) => panic!("net: writing the percentiles of {id}/{len}: {e}"),
    }
    p50
}

fn net(c: &mut Criterion) {
    let big: usize = std::env::var("NET_BENCH_BIG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if settings::quick() { BIG_QUICK } else { BIG });
    let mut group = settings::group(c, GROUP);
    settings::record_run(GROUP, false).expect("recording the run");
    let mut measured = Measured::default();
    let mut ratios = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for placement in placements() {
        eprintln!("net: placement {}", placement.describe());
        let before = echo::pin_client(placement).expect("net: pinning the client");
        let suffix = placement.suffix();
        for contender in NetContender::ALL {
            let name = contender.id();
            let opts = Options {
                max: 1 << 20,
                big: if contender.is_rpc() { big } else { 0 },
            };
            // Started by the first case that runs (a filter may skip them all).
            let mut client: Option<NetBench> = None;
            fn start(
                client: &mut Option<NetBench>,
                contender: NetContender,
                placement: Placement,
                opts: Options,
            ) -> &mut NetBench {
                client.get_or_insert_with(|| {
                    NetBench::start(contender, placement, opts)
                        .unwrap_or_else(|e| panic!("net: starting {}: {e}", contender.id()))
                })
            }
            let rtt_id = format!("rtt-{name}{suffix}");
            for len in RTT_SIZES {
                let mut rec = Recorder::new();
                group.throughput(Throughput::Bytes(2 * len as u64));
                group.bench_with_input(BenchmarkId::new(&rtt_id, len), &len, |b, &len| {
                    let client = start(&mut client, contender, placement, opts);
                    b.iter_custom(|iters| {
                        rec.batch(iters, |each| client.round_trips(len, iters, each))
                            .unwrap_or_else(|e| panic!("net: {rtt_id}/{len}: {e}"))
                    });
                });
                if !rec.hist.is_empty() {
                    let notes = [
                        ("contender", name.to_owned()),
                        ("placement", placement.describe()),
                        ("warm_up_excluded", rec.measuring.to_string()),
                    ];
                    let p50 = write_percentiles(&rtt_id, len, &rec, &notes);
                    measured.p50.insert((rtt_id.clone(), len), p50);
                }
            }
            let thr_id = format!("thr-{name}{suffix}");
            for len in THR_SIZES {
                let mut meter = Meter::default();
                group.throughput(Throughput::Bytes(len as u64));
                group.bench_with_input(BenchmarkId::new(&thr_id, len), &len, |b, &len| {
                    let client = start(&mut client, contender, placement, opts);
                    b.iter_custom(|iters| {
                        let t = Instant::now();
                        client
                            .stream(len, iters)
                            .unwrap_or_else(|e| panic!("net: {thr_id}/{len}: {e}"));
                        let took = t.elapsed();
                        meter.add(iters, iters * len as u64, took);
                        took
                    });
                });
                if meter.bytes > 0 {
                    eprintln!(
                        "net: {thr_id}/{len}: {:.0} MiB/s",
                        meter.rate() / f64::from(1 << 20)
                    );
                    measured.rate.insert((thr_id.clone(), len), meter.rate());
                }
            }
            if contender.is_rpc() {
                let busy_id = format!("busy-{name}{suffix}");
                let mut rec = Recorder::new();
                group.throughput(Throughput::Bytes(2 * SMALL as u64));
                group.bench_with_input(BenchmarkId::new(&busy_id, SMALL), &SMALL, |b, &len| {
                    let client = start(&mut client, contender, placement, opts);
                    b.iter_custom(|iters| {
                        rec.start_batch(iters);
                        let hist = &mut rec.hist;
                        let mut record = |d: Duration| {
                            hist.saturating_record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
                        };
                        client
                            .round_trips_during_big(len, iters, &mut record)
                            .unwrap_or_else(|e| panic!("net: {busy_id}/{len}: {e}"))
                    });
                });
                if !rec.hist.is_empty() {
                    let notes = [
                        ("contender", name.to_owned()),
                        ("placement", placement.describe()),
                        ("big_message_bytes", big.to_string()),
                        ("warm_up_excluded", rec.measuring.to_string()),
                    ];
                    let p50 = write_percentiles(&busy_id, SMALL, &rec, &notes);
                    measured.p50.insert((busy_id.clone(), SMALL), p50);
                }
            }
            // A failed finish (the server found a bad message, or did not read
            // the last huge one in time) fails the bench, after the ratios of
            // what was measured are written.
            if let Some(client) = client
                && let Err(e) = client.finish()
            {
                eprintln!("net: {name}{suffix}: finishing failed: {e}");
                failures.push(format!("{name}{suffix}: {e}"));
                ratios.push(serde_json::json!({
                    "kind": "error",
                    "case": format!("{name}{suffix}"),
                    "error": e.to_string(),
                }));
            }
        }
        echo::restore_affinity(before).expect("net: restoring the CPU affinity");
        ratios.extend(placement_ratios(&measured, suffix, big));
    }
    group.finish();
    settings::record_run(GROUP, true).expect("recording the run");
    let path = percentiles::criterion_dir().join(GROUP).join("ratios.json");
    let json = serde_json::to_string_pretty(&ratios).expect("ratios as JSON") + "\n";
    std::fs::write(&path, json).unwrap_or_else(|e| panic!("net: writing {path:?}: {e}"));
    eprintln!("net: ratios -> {}", path.display());
    assert!(failures.is_empty(), "net: failed: {failures:?}");
}

/// The ratios of one placement, printed and returned as JSON rows: each
/// contender's streaming against the bare echo's (target for `rpc-tcp`),
/// its round trips against the bare echo's, its busy call against its idle
/// call (target), and QUIC against TCP.
fn placement_ratios(m: &Measured, suffix: &str, big: usize) -> Vec<serde_json::Value> {
    let mut rows = Vec::new();
    let mut row = |kind: &str,
                   case: String,
                   base: String,
                   size: usize,
                   value: Option<f64>,
                   base_value: Option<f64>,
                   target: Option<(&str, f64)>| {
        let (Some(v), Some(b)) = (value, base_value) else {
            return;
        };
        let ratio = v / b;
        let met = target.map(|(op, t)| if op == ">=" { ratio >= t } else { ratio <= t });
        let verdict = match (met, target) {
            (Some(true), Some((op, t))) => format!(": meets {op} {t}"),
            (Some(false), Some((op, t))) => format!(": MISSES {op} {t}"),
            _ => String::new(),
        };
        println!("net: {kind} {case} / {base} ({size} B): {ratio:.3} ({v:.0} / {b:.0}){verdict}");
        rows.push(serde_json::json!({
            "kind": kind,
            "case": case,
            "base": base,
            "size": size,
            "value": v,
            "base_value": b,
            "ratio": ratio,
            "target": target.map(|(op, t)| format!("{op} {t}")),
            "met": met,
            "big_message_bytes": (kind == "busy").then_some(big),
        }));
    };
    let p50 = |id: String, len: usize| m.p50.get(&(id, len)).map(|&v| v as f64);
    let rate = |id: String, len: usize| m.rate.get(&(id, len)).copied();
    for contender in NetContender::ALL.into_iter().filter(|c| c.is_rpc()) {
        let name = contender.id();
        for len in THR_SIZES {
            let (case, base) = (
                format!("thr-{name}{suffix}"),
                format!("thr-bare-tcp{suffix}"),
            );
            let target = (contender == NetContender::RpcTcp).then_some((">=", THROUGHPUT_TARGET));
            let (v, b) = (rate(case.clone(), len), rate(base.clone(), len));
            row("throughput", case, base, len, v, b, target);
        }
        for len in RTT_SIZES {
            let (case, base) = (
                format!("rtt-{name}{suffix}"),
                format!("rtt-bare-tcp{suffix}"),
            );
            let (v, b) = (p50(case.clone(), len), p50(base.clone(), len));
            row("rtt", case, base, len, v, b, None);
        }
        let (case, base) = (
            format!("busy-{name}{suffix}"),
            format!("rtt-{name}{suffix}"),
        );
        let (v, b) = (p50(case.clone(), SMALL), p50(base.clone(), SMALL));
        row("busy", case, base, SMALL, v, b, Some(("<=", BUSY_TARGET)));
    }
    for len in RTT_SIZES {
        let (case, base) = (
            format!("rtt-rpc-quic{suffix}"),
            format!("rtt-rpc-tcp{suffix}"),
        );
        let (v, b) = (p50(case.clone(), len), p50(base.clone(), len));
        row("quic_vs_tcp_rtt", case, base, len, v, b, None);
    }
    for len in THR_SIZES {
        let (case, base) = (
            format!("thr-rpc-quic{suffix}"),
            format!("thr-rpc-tcp{suffix}"),
        );
        let (v, b) = (rate(case.clone(), len), rate(base.clone(), len));
        row("quic_vs_tcp_throughput", case, base, len, v, b, None);
    }
    rows
}

fn main() {
    // Re-executed as a contender's server: serve, then exit.
    if let Some(code) = benches::net_peer::serve_if_net_peer() {
        std::process::exit(code);
    }
    let mut c = Criterion::default().configure_from_args();
    net(&mut c);
    c.final_summary();
}
