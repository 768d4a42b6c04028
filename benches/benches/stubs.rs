//! The generated stubs' cost (issue 5): a typed two-way call
//! `add_one(x: u64) -> u64` (benches/idl/bench.idl) through the generated
//! blocking `Client` and the generated `AsyncClient`, against the same round
//! trip through the bare channel (a shm-channel `Channel` sending one 8-byte
//! object and receiving its echo, as `rtt`'s `shm-*` contenders do). The
//! server is a **separate process** (this binary re-executed, see
//! `benches::echo`), served by the generated `serve_channel` or by the bare
//! echo loop.
//!
//! Cases, all in one run so their ratios compare like with like:
//!
//! - `bare-park`, `typed-blocking-park`, `typed-async-park`: shm-channel's
//!   default wait policy (spin, then park) on both sides;
//! - `typed-async-nospin`: the async client with its channel on
//!   `WaitPolicy::PARK` (the server on the default): the async client
//!   without its spin phase, every reply a kernel wake-up, as before it had
//!   one;
//! - `bare-spin`, `typed-blocking-spin`: both sides polling
//!   (`WaitPolicy::SPIN`).
//!
//! Placements as in `rtt` (`BENCH_PLACEMENTS`; `QUICK=1`: `crosscore`,
//! `samecore`). One criterion iteration is one call, timed on its own; the
//! measurement's histogram (warm-up excluded) goes to
//! `<target>/criterion/stubs/<id>/u64/percentiles.json`, and the ratios
//! typed/bare of the median and the mean are printed as each typed case
//! ends and written to `<target>/criterion/stubs/ratios.json`. Target: a
//! typed call at most 10% over the bare round trip, judged on the median
//! (the mean, on a shared machine, is ruled by preempted calls).
//!
//! Run: `cargo bench -p benches --bench stubs`; `QUICK=1` for short samples.
#![forbid(unsafe_code)]

use benches::echo::{self, Client, Contender, Mode, Options};
use benches::percentiles::{self, Recorder};
use benches::settings;
use criterion::{BenchmarkId, Criterion};

/// Criterion's group: the first directory under `target/criterion`.
const GROUP: &str = "stubs";
/// The payload: one `u64`, the typed call's argument and result.
const LEN: usize = 8;
/// The target: typed at most this much slower than bare.
const TARGET_RATIO: f64 = 1.10;

/// One contender of the bench.
struct Case {
    id: &'static str,
    contender: Contender,
    /// Both sides poll (`WaitPolicy::SPIN`); the generated clients only, the
    /// bare ones choose by contender.
    stub_spin: bool,
    /// The async client parks at once (`WaitPolicy::PARK` on its side).
    async_nospin: bool,
    /// The bare case this one is compared with; `None` for a bare case.
    bare: Option<&'static str>,
}

const CASES: [Case; 6] = [
    Case {
        id: "bare-park",
        contender: Contender::ShmPark,
        stub_spin: false,
        async_nospin: false,
        bare: None,
    },
    Case {
        id: "typed-blocking-park",
        contender: Contender::GenBlocking,
        stub_spin: false,
        async_nospin: false,
        bare: Some("bare-park"),
    },
    Case {
        id: "typed-async-park",
        contender: Contender::GenAsync,
        stub_spin: false,
        async_nospin: false,
        bare: Some("bare-park"),
    },
    Case {
        id: "typed-async-nospin",
        contender: Contender::GenAsync,
        stub_spin: false,
        async_nospin: true,
        bare: Some("bare-park"),
    },
    Case {
        id: "bare-spin",
        contender: Contender::ShmSpin,
        stub_spin: false,
        async_nospin: false,
        bare: None,
    },
    Case {
        id: "typed-blocking-spin",
        contender: Contender::GenBlocking,
        stub_spin: true,
        async_nospin: false,
        bare: Some("bare-spin"),
    },
];

/// One finished case: its id with the placement, and its measurement's
/// mean and median, ns.
struct Measured {
    id: String,
    mean: f64,
    p50: u64,
}

fn stubs(c: &mut Criterion) {
    let placements = settings::placements().expect("stubs: BENCH_PLACEMENTS");
    let mut group = settings::group(c, GROUP);
    settings::record_run(GROUP, false).expect("recording the run");
    let mut measured: Vec<Measured> = Vec::new();
    let mut ratios = Vec::new();
    for placement in placements {
        eprintln!("stubs: placement {}", placement.describe());
        let before = echo::pin_client(placement).expect("stubs: pinning the client");
        for case in &CASES {
            let id = format!("{}{}", case.id, placement.suffix());
            let mut rec = Recorder::new();
            let mut client: Option<Client> = None;
            group.bench_with_input(BenchmarkId::new(&id, "u64"), &LEN, |b, &len| {
                let client = client.get_or_insert_with(|| {
                    let mut opts = Options::new(Mode::Echo, len);
                    opts.stub_spin = case.stub_spin;
                    opts.async_nospin = case.async_nospin;
                    Client::start(case.contender, placement, opts)
                        .unwrap_or_else(|e| panic!("stubs: starting {id}: {e}"))
                });
                b.iter_custom(|iters| {
                    rec.batch(iters, |each| match case.bare {
                        None => client.round_trips(len, iters, each),
                        Some(_) => client.typed_calls(iters, each),
                    })
                    .unwrap_or_else(|e| panic!("stubs: {id}: {e}"))
                });
            });
            if let Some(client) = client
                && let Err(e) = client.finish()
            {
                panic!("stubs: {id}: {e}");
            }
            if rec.hist.is_empty() {
                continue;
            }
            let notes = [
                ("case", case.id.to_owned()),
                ("placement", placement.describe()),
                ("warm_up_excluded", rec.measuring.to_string()),
            ];
            percentiles::write(GROUP, &id, "u64", &rec.hist, &notes)
                .unwrap_or_else(|e| panic!("stubs: writing the percentiles of {id}: {e}"));
            let this = Measured {
                id,
                mean: rec.hist.mean(),
                p50: rec.hist.value_at_quantile(0.5),
            };
            eprintln!(
                "stubs: {}: mean {:.0} ns, p50 {} ns, p99 {} ns ({} calls)",
                this.id,
                this.mean,
                this.p50,
                rec.hist.value_at_quantile(0.99),
                rec.hist.len()
            );
            let bare_id = case.bare.map(|b| format!("{b}{}", placement.suffix()));
            if let Some(bare) = bare_id.and_then(|b| measured.iter().find(|m| m.id == b)) {
                ratios.push(ratio(&this, bare));
            }
            measured.push(this);
        }
        echo::restore_affinity(before).expect("stubs: restoring the CPU affinity");
    }
    group.finish();
    settings::record_run(GROUP, true).expect("recording the run");
    let path = percentiles::criterion_dir().join(GROUP).join("ratios.json");
    let json = serde_json::to_string_pretty(&ratios).expect("ratios as JSON") + "\n";
    std::fs::write(&path, json).unwrap_or_else(|e| panic!("stubs: writing {path:?}: {e}"));
    eprintln!("stubs: ratios -> {}", path.display());
}

/// `typed` against `bare`: prints the ratios and returns them as JSON.
fn ratio(typed: &Measured, bare: &Measured) -> serde_json::Value {
    let mean = typed.mean / bare.mean;
    let p50 = typed.p50 as f64 / bare.p50 as f64;
    // Judged on the median: on a shared machine the mean is ruled by the
    // preempted calls' tail, which differs between two cases by chance.
    let verdict = if p50 <= TARGET_RATIO {
        "within"
    } else {
        "MISSES"
    };
    println!(
        "stubs: {} / {}: p50 {:.3} ({} / {} ns), mean {:.3} ({:.0} / {:.0} ns): {verdict} the {:.0}% target (p50)",
        typed.id,
        bare.id,
        p50,
        typed.p50,
        bare.p50,
        mean,
        typed.mean,
        bare.mean,
        (TARGET_RATIO - 1.0) * 100.0
    );
    serde_json::json!({
        "typed": typed.id,
        "bare": bare.id,
        "typed_mean_ns": typed.mean,
        "bare_mean_ns": bare.mean,
        "mean_ratio": mean,
        "typed_p50_ns": typed.p50,
        "bare_p50_ns": bare.p50,
        "p50_ratio": p50,
    })
}

fn main() {
    // Re-executed as a contender's server: serve, then exit.
    if let Some(code) = echo::serve_if_peer() {
        std::process::exit(code);
    }
    let mut c = Criterion::default().configure_from_args();
    stubs(&mut c);
    c.final_summary();
}
